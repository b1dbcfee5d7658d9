// Directory mode of `disarm`: one decision per file, by content (engine/classify.hpp), every
// output name decided and checked for collisions before anything is written, and every write
// made relative to folder descriptors opened without following symbolic links, so that no
// link planted in the input (or in an output folder inside it) redirects a write, and the
// output can never be the input. A later "engine" issue moves this into the library; the
// interface is kept to this one call for that reason.
#pragma once
#include <string>
#include <vector>

#include "modelcdr/api.hpp"

namespace modelcdr::cli {

struct BatchOptions {
  DisarmOptions disarm;
  bool format_given = false;  // --to given: every model is written in disarm.output_format
  unsigned jobs = 1;
  bool copy_other = false;    // copy inert non-model files (text, JSON, the inert binary list)
  bool copy_code = false;     // with copy_other: copy source code and scripts too
  bool quiet = false;
};

// Disarms the tree `in` into `out`; `reports` gets one entry per input entry, in path order.
// Returns the exit code (docs/CLI.md).
int disarm_directory(const std::string& in, const std::string& out, const BatchOptions& options,
                     std::vector<FileReport>& reports);

}  // namespace modelcdr::cli
