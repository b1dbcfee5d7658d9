// Directory mode helpers for output formats other than the PyTorch checkpoint: the output
// names a Hugging Face loader expects (pytorch_model-00001-of-00002.bin ->
// model-00001-of-00002.safetensors), the rewrite of the shard index
// (pytorch_model.bin.index.json -> model.safetensors.index.json, weight map pointed at the new
// file names), and the copy of plain-text files (config.json, tokenizer.json, ...) after a check
// that they are text: valid UTF-8, no NUL bytes, and JSON files must parse.
#pragma once
#include <optional>
#include <string>

#include "modelcdr/api.hpp"

namespace modelcdr::cli {

// The output path for a model file `path` when writing `format` (unchanged for pt).
std::string output_name(const std::string& path, OutputFormat format);

// Handles a non-model file in directory mode: the shard index (rewritten) and checked text
// files (copied) when writing safetensors. nullopt: not handled here (the caller skips it or
// copies it with --copy-other).
std::optional<FileReport> convert_other(const std::string& input, const std::string& target, OutputFormat format);

}  // namespace modelcdr::cli
