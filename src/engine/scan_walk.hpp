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

namespace modelcdr::engine {

struct ScanWalkOptions {
  ScanOptions scan;
  std::vector<std::string> excludes;  // globs (fnmatch, `*` crosses `/`) on the path relative to the folder
  uint64_t max_stdin_bytes = 16ull << 30;  // `-` is spooled to a private temporary file up to this size
  std::function<void(size_t done, const std::string& path)> progress;  // called before each file
  // Scans one model file; unset: scan_file (the process default policy). The CLI passes its Engine.
  std::function<FileReport(const std::string& path, const ScanOptions&)> scan_one;
};

std::vector<FileReport> scan_paths(const std::vector<std::string>& paths, const ScanWalkOptions& options);

// The table printed after a text scan: files per status and per format, and the wall time.
std::string scan_summary(const std::vector<FileReport>& reports, double seconds);

// True for the glob list of ScanWalkOptions::excludes (exposed for tests).
bool excluded(const std::string& relative_path, const std::vector<std::string>& globs);

}  // namespace modelcdr::engine
