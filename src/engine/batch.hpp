// Directory mode of `disarm`: one decision per file, by content (engine/classify.hpp), every
// output name decided and checked for collisions before anything is written, and every write
// made relative to folder descriptors opened without following symbolic links, so that no
// link planted in the input (or in an output folder inside it) redirects a write, and the
// output can never be the input. The CLI prints; this library part only decides and writes.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "modelcdr/api.hpp"

namespace modelcdr::engine {

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

// Disarms the tree `in` into `out`: one report per input entry, in path order. An error means
// nothing was processed (the input cannot be opened, or the output folder is unusable: the
// input itself, inside the input through a link, ...).
Result<std::vector<FileReport>> disarm_directory(const std::string& in, const std::string& out,
                                                 const BatchOptions& options);

}  // namespace modelcdr::engine
