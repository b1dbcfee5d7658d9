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
#include "modelcdr/batch.hpp"

namespace modelcdr::engine {

// BatchOptions is public: include/modelcdr/batch.hpp.

// Disarms the tree `in` into `out`: one report per input entry, in path order. An error means
// nothing was processed (the input cannot be opened, or the output folder is unusable: the
// input itself, inside the input through a link, ...).
Result<std::vector<FileReport>> disarm_directory(const std::string& in, const std::string& out,
                                                 const BatchOptions& options);

}  // namespace modelcdr::engine
