// `modelcdr scan` over what users have: files, folders (a Hugging Face model folder, a git
// checkout) and `-` (standard input). Folders are walked without following links; `.git/` and
// --exclude globs are left out; each file found in a folder is sorted by content
// (engine/classify.hpp): model files are scanned, text/JSON/code/images are reported as "not a
// model file" (info, status skipped), unknown binaries are named per file. Files named on the
// command line are always scanned as model files.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "modelcdr/api.hpp"
#include "modelcdr/batch.hpp"

namespace modelcdr::engine {

// ScanWalkOptions and scan_summary are public: include/modelcdr/batch.hpp.

std::vector<FileReport> scan_paths(const std::vector<std::string>& paths, const ScanWalkOptions& options);


// True for the glob list of ScanWalkOptions::excludes (exposed for tests).
bool excluded(const std::string& relative_path, const std::vector<std::string>& globs);

}  // namespace modelcdr::engine
