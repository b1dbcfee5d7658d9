#include "cli/hf_layout.hpp"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/atomic_output.hpp"
#include "io/bounded_json.hpp"
#include "io/byte_cursor.hpp"
#include "io/mapped_file.hpp"

namespace fs = std::filesystem;

namespace modelcdr::cli {

namespace {

constexpr uint64_t kMaxText = 64ull << 20;
constexpr uint32_t kMaxJsonDepth = 64;             // configs and indexes nest under 10 levels
constexpr uint64_t kMaxJsonElements = 4u << 20;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// File name only: pytorch_model*.bin -> model*.safetensors; other checkpoint extensions keep the stem.
std::string rename_file(const std::string& name, OutputFormat format) {
  if (format != OutputFormat::safetensors && format != OutputFormat::npz) return name;
  std::string stem = name;
  static const char* exts[] = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".safetensors", ".npy", ".npz"};
  for (const char* e : exts)
    if (ends_with(stem, e)) {
      stem.resize(stem.size() - std::string(e).size());
      break;
    }
  if (format == OutputFormat::npz) return stem + ".npz";
  if (stem.rfind("pytorch_model", 0) == 0) stem = "model" + stem.substr(13);
  return stem + ".safetensors";
}

// Valid UTF-8 without NUL bytes (overlongs, surrogates and > U+10FFFF refused).
bool is_text(std::span<const uint8_t> bytes) {
  io::ByteCursor c(bytes);
  while (!c.at_end()) {
    uint8_t b = *c.u8();
    if (b == 0) return false;
    if (b < 0x80) continue;
    int n = (b & 0xE0) == 0xC0 ? 1 : (b & 0xF0) == 0xE0 ? 2 : (b & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0) return false;
    uint32_t cp = b & (0x3F >> n);
    for (int i = 0; i < n; ++i) {
      auto x = c.u8();
      if (!x.ok() || (*x & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (*x & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
  }
  return true;
}

FileReport base_report(const std::string& input, const char* format) {
  FileReport r;
  r.input = input;
  r.format = format;
  r.status = FileStatus::skipped;
  return r;
}

FileReport rejected(FileReport r, Error e) {
  r.status = FileStatus::rejected;
  r.error = std::move(e);
  r.output.clear();
  return r;
}

Status write_text(const std::string& path, std::string_view text) {
  MCDR_ASSIGN(io::AtomicOutput out, io::AtomicOutput::create(path));
  MCDR_TRY(out.write(text));
  return out.commit();
}

}  // namespace

std::string output_name(const std::string& path, OutputFormat format) {
  if (format != OutputFormat::safetensors && format != OutputFormat::npz) return path;
  fs::path p(path);
  return (p.parent_path() / rename_file(p.filename().string(), format)).string();
}

std::optional<FileReport> convert_other(const std::string& input, const std::string& target, OutputFormat format) {
  if (format != OutputFormat::safetensors) return std::nullopt;
  auto mapped = io::MappedFile::open(input);
  if (!mapped.ok() || mapped->size() > kMaxText || !is_text(mapped->bytes())) return std::nullopt;
  std::string_view text(reinterpret_cast<const char*>(mapped->bytes().data()), mapped->size());
  std::string name = fs::path(input).filename().string();
  bool json = ends_with(name, ".json");
  nlohmann::json doc;
  bool index = json && (ends_with(name, ".bin.index.json") || ends_with(name, ".pt.index.json"));
  if (json) {
    // Bounded SAX check (depth and size limited, no duplicate keys); a std::map DOM is built
    // in the same pass for shard indexes only.
    const io::JsonLimits limits{kMaxJsonDepth, kMaxJsonElements};
    io::JsonShape shape;
    if (index) doc = io::parse_json(text, limits, shape);
    else shape = io::inspect_json(text, limits);
    if (auto e = io::limit_error(shape, limits)) return rejected(base_report(input, "json"), *e);
    if (!shape.valid) return std::nullopt;  // not valid JSON: not copied as text
  }
  if (index) {
    FileReport r = base_report(input, "hf-index");
    if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object())
      return rejected(r, make_error("hf.bad-index", "shard index has no weight_map object"));
    nlohmann::json map = nlohmann::json::object();
    for (auto it = doc["weight_map"].begin(); it != doc["weight_map"].end(); ++it) {
      if (!it.value().is_string()) return rejected(r, make_error("hf.bad-index", "weight_map value for '" + it.key() + "' is not a string"));
      const std::string& shard = it.value().get_ref<const std::string&>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos || shard == "." ||
          shard == "..")
        return rejected(r, make_error("hf.bad-index", "weight_map names shard '" + shard.substr(0, 100) + "' outside the folder"));
      map[it.key()] = rename_file(shard, format);
    }
    nlohmann::json meta = nlohmann::json::object();
    if (doc.contains("metadata") && doc["metadata"].is_object())
      for (auto it = doc["metadata"].begin(); it != doc["metadata"].end(); ++it)
        if (it.value().is_number() || it.value().is_string()) meta[it.key()] = it.value();
    nlohmann::json out = {{"metadata", meta}, {"weight_map", map}};
    std::string stem = name.substr(0, name.size() - std::string(".index.json").size());
    std::string dest = (fs::path(target).parent_path() / (rename_file(stem, format) + ".index.json")).string();
    if (auto s = write_text(dest, out.dump(2) + "\n"); !s.ok()) return rejected(r, s.error());
    r.output = dest;
    r.note = "shard index rewritten for the safetensors shards";
    return r;
  }
  FileReport r = base_report(input, json ? "json" : "text");
  if (auto s = write_text(target, text); !s.ok()) return rejected(r, s.error());
  r.output = target;
  r.note = json ? "JSON text file: checked (UTF-8, parses) and copied" : "text file: checked (UTF-8, no NUL) and copied";
  return r;
}

}  // namespace modelcdr::cli
