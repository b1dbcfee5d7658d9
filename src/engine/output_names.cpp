#include "engine/output_names.hpp"

#include <array>
#include <nlohmann/json.hpp>

#include "formats/registry.hpp"
#include "io/bounded_json.hpp"

namespace modelcdr::engine {

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

using formats::model_stem;
using formats::strip_compression;

bool plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find_first_of(std::string("/\\\0", 3)) == std::string::npos;
}

}  // namespace

// Names, extensions and the output name rule are columns of the format table.
std::optional<OutputFormat> format_for_name(const std::string& name) { return formats::output_for_name(name); }

const char* format_flag(OutputFormat f) { return formats::output_row(f).to_flag; }

std::string output_file_name(const std::string& name, OutputFormat format) {
  const formats::FormatRow& row = formats::output_row(format);
  std::string base = strip_compression(name);
  if (format_for_name(base) == format) return base;
  auto stem = model_stem(base);
  if (!stem) return base + row.extensions[0];  // model.sav -> model.sav.pt: never mistaken for the original
  if (row.stem_from && stem->rfind(row.stem_from, 0) == 0)
    *stem = row.stem_to + stem->substr(std::string_view(row.stem_from).size());
  return *stem + row.extensions[0];
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
