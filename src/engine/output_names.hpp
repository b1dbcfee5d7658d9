// Output names and the Hugging Face shard index, for single-file and directory mode.
// Format follows the name: x.safetensors is safetensors, x.joblib joblib, x.npz npz, x.pkl
// a pickle, x.pt/.pth/.bin/.ckpt a torch zip. In directory mode every output gets a name
// that matches what it holds (pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors
// with --to safetensors; model.safetensors -> model.pt with --to pt), and a shard index
// (*.bin.index.json, *.safetensors.index.json, ...) is checked and rewritten for those names.
#pragma once
#include <optional>
#include <span>
#include <string>

#include "modelcdr/api.hpp"

namespace modelcdr::engine {

// The format a file name asks for (compression suffixes such as .gz ignored), if any.
std::optional<OutputFormat> format_for_name(const std::string& name);
const char* format_flag(OutputFormat f);  // "pt", "safetensors", ... as --to spells it

// Directory mode: the output file name (no folder) for input `name` written as `format`.
std::string output_file_name(const std::string& name, OutputFormat format);

// "X.index.json" where X names a weights file: a shard index.
bool is_shard_index(const std::string& name);
// The index's output name, when the shards are written as `format` (nullopt: keep each
// shard's own format, as directory mode does without --to).
std::string index_output_name(const std::string& name, std::optional<OutputFormat> format);
// Checks the index (a JSON object whose weight_map values name plain files of the same folder)
// and returns it rewritten with the shards' output names. Nothing else of the input survives:
// metadata keeps only numbers and strings.
Result<std::string> rewrite_index(std::span<const uint8_t> bytes, std::optional<OutputFormat> format);

}  // namespace modelcdr::engine
