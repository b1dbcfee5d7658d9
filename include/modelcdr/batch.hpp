// Batch processing as a library feature (docs/API.md): a folder or model repository disarmed
// into another (Engine::disarm_tree) and files, folders and standard input scanned
// (Engine::scan_paths). The walks are in src/engine/batch.cpp and src/engine/scan_walk.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "modelcdr/api.hpp"

namespace modelcdr::engine {

// Directory mode of `disarm`: one decision per file, by content; every output name decided and
// checked for collisions before anything is written; every write made relative to folder
// descriptors opened without following links (no link in the input redirects a write).
struct BatchOptions {
  DisarmOptions disarm;
  bool format_given = false;  // --to given: every model is written in disarm.output_format
  unsigned jobs = 1;
  bool copy_other = false;    // copy inert non-model files (text, JSON, the inert binary list)
  bool copy_code = false;     // with copy_other: copy source code and scripts too
  // Called from the worker threads after each entry (done, total); may be empty.
  std::function<void(size_t, size_t)> progress;
  // Disarms one model file (input, output, options); empty: disarm_file (the process-wide
  // default Engine). Engine::disarm_tree sets it to its own disarm. Called from worker threads.
  std::function<FileReport(const std::string&, const std::string&, const DisarmOptions&)> disarm_one;
};

// `scan` over what users have: files, folders (walked without following links; `.git/` and
// `excludes` left out; each file sorted by content: model files scanned, text/JSON/code/images
// reported as not a model file, unknown binaries named) and `-` (standard input). Files named
// directly are always scanned as model files.
struct ScanWalkOptions {
  ScanOptions scan;
  std::vector<std::string> excludes;  // globs (fnmatch, `*` crosses `/`) on the path relative to the folder
  uint64_t max_stdin_bytes = 16ull << 30;  // `-` is spooled to a private temporary file up to this size
  std::function<void(size_t done, const std::string& path)> progress;  // called before each file
  // Scans one model file; unset: scan_file (the process default policy). Engine::scan_paths
  // sets it to the Engine's own scan.
  std::function<FileReport(const std::string& path, const ScanOptions&)> scan_one;
};

// The table printed after a text scan: files per status and per format, and the wall time.
std::string scan_summary(const std::vector<FileReport>& reports, double seconds);

}  // namespace modelcdr::engine
