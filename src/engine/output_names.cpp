#include "engine/output_names.hpp"

#include <array>
#include <nlohmann/json.hpp>

#include "io/bounded_json.hpp"

namespace modelcdr::engine {

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// joblib's compressed files carry the codec as an extra suffix: model.joblib.gz.
std::string strip_compression(const std::string& name) {
  for (std::string_view e : {".gz", ".bz2", ".xz", ".lzma", ".lz4", ".z", ".zlib"})
    if (ends_with(name, e) && name.size() > e.size()) return name.substr(0, name.size() - e.size());
  return name;
}

constexpr std::array<std::string_view, 11> kModelExts = {".safetensors", ".joblib", ".pickle", ".ckpt", ".pth",
                                                         ".pkl",         ".bin",    ".npz",    ".npy",  ".pt",
                                                         ".tar"};

// The name without its model extension, or nullopt when it has none.
std::optional<std::string> model_stem(const std::string& name) {
  for (auto e : kModelExts)
    if (ends_with(name, e) && name.size() > e.size()) return name.substr(0, name.size() - e.size());
  return std::nullopt;
}

const char* default_ext(OutputFormat f) {
  switch (f) {
    case OutputFormat::safetensors: return ".safetensors";
    case OutputFormat::npz: return ".npz";
    case OutputFormat::npy: return ".npy";
    case OutputFormat::joblib: return ".joblib";
    case OutputFormat::pickle: return ".pkl";
    case OutputFormat::pt: return ".pt";
  }
  return ".pt";
}

bool plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find_first_of(std::string("/\\\0", 3)) == std::string::npos;
}

}  // namespace

std::optional<OutputFormat> format_for_name(const std::string& name) {
  std::string n = strip_compression(name);
  if (ends_with(n, ".safetensors")) return OutputFormat::safetensors;
  if (ends_with(n, ".npz")) return OutputFormat::npz;
  if (ends_with(n, ".npy")) return OutputFormat::npy;
  if (ends_with(n, ".joblib")) return OutputFormat::joblib;
  if (ends_with(n, ".pkl") || ends_with(n, ".pickle")) return OutputFormat::pickle;
  for (std::string_view e : {".pt", ".pth", ".bin", ".ckpt"})
    if (ends_with(n, e)) return OutputFormat::pt;
  return std::nullopt;
}

const char* format_flag(OutputFormat f) {
  switch (f) {
    case OutputFormat::safetensors: return "safetensors";
    case OutputFormat::npz: return "npz";
    case OutputFormat::npy: return "npy";
    case OutputFormat::joblib: return "joblib";
    case OutputFormat::pickle: return "pickle";
    case OutputFormat::pt: return "pt";
  }
  return "pt";
}

std::string output_file_name(const std::string& name, OutputFormat format) {
  std::string base = strip_compression(name);
  if (format_for_name(base) == format) return base;
  auto stem = model_stem(base);
  if (!stem) return base + default_ext(format);  // model.sav -> model.sav.pt: never mistaken for the original
  if (format == OutputFormat::safetensors && stem->rfind("pytorch_model", 0) == 0) *stem = "model" + stem->substr(13);
  return *stem + default_ext(format);
}

bool is_shard_index(const std::string& name) {
  if (!ends_with(name, ".index.json")) return false;
  return model_stem(name.substr(0, name.size() - 11)).has_value();
}

std::string index_output_name(const std::string& name, std::optional<OutputFormat> format) {
  if (!format) return name;
  return output_file_name(name.substr(0, name.size() - 11), *format) + ".index.json";
}

Result<std::string> rewrite_index(std::span<const uint8_t> bytes, std::optional<OutputFormat> format) {
  // Bounded (depth, size, no duplicate keys) and std::map objects: ordered_json inserts by
  // linear search, quadratic in a large weight_map; the output is written in key order.
  const io::JsonLimits limits{64, 4u << 20};
  io::JsonShape shape;
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  nlohmann::json doc = io::parse_json(text, limits, shape);
  if (auto e = io::limit_error(shape, limits)) return *e;
  if (!shape.valid) return make_error(Rule::hf_bad_index, "shard index is not valid JSON");
  if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object())
    return make_error(Rule::hf_bad_index, "shard index has no weight_map object");
  nlohmann::json map = nlohmann::json::object();
  for (auto it = doc["weight_map"].begin(); it != doc["weight_map"].end(); ++it) {
    if (!it.value().is_string())
      return make_error(Rule::hf_bad_index, "weight_map value for '" + it.key().substr(0, 100) + "' is not a string");
    const std::string& shard = it.value().get_ref<const std::string&>();
    if (!plain_file_name(shard))
      return make_error(Rule::hf_bad_index, "weight_map names shard '" + shard.substr(0, 100) + "' outside the folder");
    auto f = format ? format : format_for_name(shard);
    map[it.key()] = output_file_name(shard, f.value_or(OutputFormat::pt));
  }
  nlohmann::json meta = nlohmann::json::object();
  if (doc.contains("metadata") && doc["metadata"].is_object())
    for (auto it = doc["metadata"].begin(); it != doc["metadata"].end(); ++it)
      if (it.value().is_number() || it.value().is_string()) meta[it.key()] = it.value();
  nlohmann::json out = {{"metadata", meta}, {"weight_map", map}};
  return out.dump(2) + "\n";
}

}  // namespace modelcdr::engine
