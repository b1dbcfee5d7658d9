#include "cdr/scan_keras.hpp"

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <string_view>

#include "cdr/globals_policy.hpp"
#include "container/zip_reader.hpp"
#include "io/bounded_json.hpp"
#include "modelcdr/render.hpp"

namespace modelcdr::cdr {

namespace {

using json = nlohmann::json;

bool has_magic(std::span<const uint8_t> b, uint64_t at) {
  static constexpr std::string_view kHdf5 = "\x89HDF\r\n\x1a\n";
  if (at > b.size() || b.size() - at < kHdf5.size()) return false;
  return std::equal(kHdf5.begin(), kHdf5.end(), b.begin() + static_cast<std::ptrdiff_t>(at),
                    [](char c, uint8_t x) { return static_cast<uint8_t>(c) == x; });
}

bool is_keras_module(std::string_view m) {
  for (std::string_view p : {"keras", "tf_keras", "tensorflow", "keras_nlp", "keras_hub", "keras_cv"})
    if (m == p || (m.size() > p.size() && m.substr(0, p.size()) == p && m[p.size()] == '.')) return true;
  return false;
}

std::string shown(const json& v) {
  std::string s = v.is_string() ? v.get<std::string>() : v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 300) s = s.substr(0, 300) + "...";
  return report::printable(s);
}

const std::string* string_at(const json& o, const char* key) {
  auto it = o.find(key);
  return it != o.end() && it->is_string() ? it->get_ptr<const std::string*>() : nullptr;
}

// One config object: a Lambda layer, or a class / function imported from outside Keras.
void check_object(const json& o, const std::string& entry, uint64_t offset, Findings& out) {
  const std::string* cls = string_at(o, "class_name");
  if (!cls) return;
  if (*cls == "Lambda") {
    auto cfg = o.find("config");
    std::string fn = "?";
    if (cfg != o.end() && cfg->is_object())
      if (auto f = cfg->find("function"); f != cfg->end()) fn = shown(*f);
    add_finding(out, Severity::critical, Rule::keras_lambda,
                "Keras Lambda layer: Keras rebuilds its function from the file and runs it; function = " + fn, entry,
                offset);
    return;
  }
  const std::string* module = string_at(o, "module");
  const std::string* registered = string_at(o, "registered_name");
  std::string name = *cls;
  if (*cls == "function")  // Keras 3 serializes a function as {module, class_name: "function", config: name}
    if (const std::string* fn = string_at(o, "config")) name = *fn;
  const bool foreign_module = module && !is_keras_module(*module);
  const bool custom_registered = registered && registered->find('>') != std::string::npos &&
                                 !is_keras_module(registered->substr(0, registered->find('>')));
  if (!foreign_module && !custom_registered) return;
  const std::string mod = module ? *module : "";
  add_finding(out, unknown_global_severity(mod, name), Rule::keras_custom_object,
              "Keras config object '" + report::printable(mod.empty() ? name : mod + "." + name) + "'" +
                  (registered ? " (registered as '" + report::printable(*registered) + "')" : "") +
                  ": Keras imports it from outside Keras on load",
              entry, offset);
}

// Every object of a parsed config, iteratively (depth is bounded by the parser, but the walk
// need not recurse at all).
void walk(const json& doc, const std::string& entry, uint64_t offset, Findings& out) {
  std::vector<const json*> todo{&doc};
  while (!todo.empty()) {
    const json* v = todo.back();
    todo.pop_back();
    if (v->is_object()) {
      check_object(*v, entry, offset, out);
      for (const auto& [k, child] : v->items()) todo.push_back(&child);
    } else if (v->is_array()) {
      for (const auto& child : *v) todo.push_back(&child);
    }
  }
}

bool holds_class_name(const json& doc) {
  std::vector<const json*> todo{&doc};
  while (!todo.empty()) {
    const json* v = todo.back();
    todo.pop_back();
    if (v->is_object() && string_at(*v, "class_name")) return true;
    if (v->is_structured())
      for (const auto& child : *v) todo.push_back(&child);
  }
  return false;
}

// One past the `}` that closes the object opening at `p`, or 0: strings (with escapes) are
// skipped; a NUL byte (never inside JSON text) or the end of the file stops it. `budget` counts
// the bytes looked at by every call together.
size_t object_end(std::span<const uint8_t> b, size_t p, uint64_t& budget) {
  uint32_t depth = 0;
  bool in_string = false;
  for (size_t i = p; i < b.size(); ++i) {
    if (budget == 0) return 0;
    --budget;
    const uint8_t c = b[i];
    if (c == 0) return 0;
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') {
      if (++depth > limits::kMaxDepth) return 0;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return 0;
}

bool opens_object(std::span<const uint8_t> b, size_t p) {
  if (b[p] != '{') return false;
  for (size_t i = p + 1; i < b.size() && i < p + 64; ++i) {
    if (b[i] == '"') return true;
    if (b[i] != ' ' && b[i] != '\n' && b[i] != '\r' && b[i] != '\t') return false;
  }
  return false;
}

// Parses `text` (a Keras config) and walks it; false when it is not a readable config.
bool scan_config(std::string_view text, const std::string& entry, uint64_t offset, Findings& out,
                 std::string* why = nullptr) {
  io::JsonShape shape;
  json doc = io::parse_json(text, {}, shape);
  if (!shape.ok()) {
    if (why) *why = shape.duplicate_key ? "a key appears twice: '" + report::printable(*shape.duplicate_key) + "'"
                    : shape.valid       ? "past the JSON depth or element limit"
                                        : "not valid JSON";
    return false;
  }
  if (!holds_class_name(doc)) {
    if (why) *why = "no Keras class_name in it";
    return false;
  }
  walk(doc, entry, offset, out);
  return true;
}

void scan_hdf5(std::span<const uint8_t> b, Findings& out) {
  uint64_t budget = 16 * static_cast<uint64_t>(b.size()) + (16u << 20);
  size_t configs = 0;
  std::string first_failure;
  for (size_t p = 0; p < b.size(); ++p) {
    if (!opens_object(b, p)) continue;
    const size_t end = object_end(b, p, budget);
    if (budget == 0) {
      add_finding(out, Severity::high, Rule::keras_config_unreadable,
                  "HDF5 file: the config scan reached its bound (16 x the file size) before the end of the file", "", p);
      return;
    }
    if (end == 0) continue;
    std::string why;
    const std::string_view text(reinterpret_cast<const char*>(b.data()) + p, end - p);
    if (scan_config(text, "", p, out, &why)) {
      ++configs;
      p = end - 1;  // its inner objects were walked with it
    } else if (first_failure.empty() && text.find("class_name") != std::string_view::npos) {
      first_failure = why + " (offset " + std::to_string(p) + ")";
    }
  }
  if (configs == 0)
    add_finding(out, Severity::high, Rule::keras_config_unreadable,
                "HDF5 file: no readable Keras model config" + (first_failure.empty() ? std::string() : ": " + first_failure) +
                    " (a weights-only file, a config compressed inside the file, or not a Keras file): what a loader "
                    "builds from it is not known");
}

void scan_keras_zip(std::span<const uint8_t> file, Findings& out) {
  Findings zip_findings;
  container::ZipLimits limits;
  auto zip = container::read_zip(file, zip_findings, limits, false);
  const container::ZipEntry* cfg = zip.ok() ? zip->find("config.json") : nullptr;
  std::vector<uint8_t> scratch;
  auto bytes = cfg ? container::entry_bytes(*zip, file, *cfg, scratch, limits)
                   : Result<std::span<const uint8_t>>(make_error(Rule::keras_config_unreadable, "no config.json"));
  std::string why = bytes.ok() ? "" : bytes.error().message;
  if (bytes.ok() && scan_config(std::string_view(reinterpret_cast<const char*>(bytes->data()), bytes->size()),
                                "config.json", 0, out, &why))
    return;
  add_finding(out, Severity::high, Rule::keras_config_unreadable,
              "Keras zip: config.json cannot be read as a Keras config: " + why, "config.json", 0);
}

}  // namespace

std::optional<uint64_t> hdf5_signature(std::span<const uint8_t> file) {
  if (has_magic(file, 0)) return 0;
  for (uint64_t at = 512; at < file.size(); at *= 2)  // a user block of 512 * 2^n bytes may come first
    if (has_magic(file, at)) return at;
  return std::nullopt;
}

std::optional<std::string> scan_keras(std::span<const uint8_t> file, const std::vector<std::string>& zip_entries,
                                      Findings& findings) {
  if (auto at = hdf5_signature(file)) {
    add_finding(findings, Severity::high, Rule::keras_not_disarmable,
                "HDF5 (Keras .h5) file: modelcdr grades its model config but does not rebuild HDF5, so it is never "
                "clean", "", *at);
    scan_hdf5(file, findings);
    return std::string("hdf5");
  }
  if (std::find(zip_entries.begin(), zip_entries.end(), "config.json") == zip_entries.end()) return std::nullopt;
  add_finding(findings, Severity::high, Rule::keras_not_disarmable,
              "zip with a root config.json (Keras v3 .keras): modelcdr grades its config but does not rebuild the "
              "format, so it is never clean", "config.json", 0);
  scan_keras_zip(file, findings);
  return std::string("keras");
}

}  // namespace modelcdr::cdr
