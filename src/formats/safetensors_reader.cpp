// safetensors input (docs/FORMATS.md §6), validated more strictly than the reference reader:
// header length capped and in bounds, header a UTF-8 JSON object (padding: spaces only),
// no duplicate keys at any level (nlohmann keeps the last duplicate silently, so a parse
// callback watches every key), `__metadata__` a map of strings (or null, as the reference allows), known dtype strings, shapes
// and offsets unsigned integers, data_offsets contiguous from 0 in offset order (no gaps, no
// overlap), END - BEGIN == numel x element size (overflow-checked), and the last END exactly
// at the end of the file. Tensors are spans of the mapped input; metadata values are data,
// reported when they look like shell commands, embedded pickles, or are oversized.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_set>

#include "cdr/lifter.hpp"
#include "formats/parsed_model.hpp"
#include "io/bounded_json.hpp"
#include "io/byte_cursor.hpp"

namespace modelcdr::formats {

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeader = 100'000'000;   // the reference reader's MAX_HEADER_SIZE
constexpr size_t kMaxMetadataValue = 64 * 1024;  // larger values are reported (and dropped on disarm)
constexpr uint32_t kMaxDepth = 8;              // the schema needs depth 3
// Values plus keys: a tensor entry is about 10; 8M elements bound the DOM (~80 bytes each)
// and the model built from it to well under a gigabyte.
constexpr uint64_t kMaxElements = 8u << 20;

std::optional<model::DType> st_dtype(const std::string& s) {
  using model::DType;
  static const std::pair<const char*, DType> table[] = {
      {"BOOL", DType::boolean}, {"U8", DType::u8},     {"I8", DType::i8},    {"I16", DType::i16},
      {"U16", DType::u16},      {"F16", DType::f16},   {"BF16", DType::bf16}, {"I32", DType::i32},
      {"U32", DType::u32},      {"F32", DType::f32},   {"F64", DType::f64},  {"I64", DType::i64},
      {"U64", DType::u64},      {"C64", DType::c64},   {"F8_E5M2", DType::f8_e5m2},
      {"F8_E4M3", DType::f8_e4m3fn}, {"F8_E4M3FNUZ", DType::f8_e4m3fnuz}, {"F8_E5M2FNUZ", DType::f8_e5m2fnuz}};
  for (auto [n, d] : table)
    if (s == n) return d;
  return std::nullopt;
}

bool known_but_unsupported(const std::string& s) {
  return s == "F8_E8M0" || s == "F4" || s == "F6_E2M3" || s == "F6_E3M2";
}

// Text that reads like a shell command line or an interpreter one-liner.
bool looks_like_shell(std::string_view v) {
  static const char* needles[] = {"rm -",      "wget ",      "curl ",     "chmod ",   "chown ",      "/bin/sh",
                                  "/bin/bash", "bash -",     "sh -c",     "| sh",     "|sh",         "| bash",
                                  "powershell", "cmd.exe",   "cmd /c",    "nc -e",    "/dev/tcp/",   "python -c",
                                  "python3 -c", "os.system", "subprocess", "eval(",   "exec(",       "__import__",
                                  "$(",        "base64 -d",  "mkfifo",    "sudo ",    "&& ",         "; rm",
                                  "`"};
  std::string lower(v.substr(0, 1 << 20));
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  for (const char* n : needles)
    if (lower.find(n) != std::string::npos) return true;
  return false;
}

Result<uint64_t> unsigned_of(const json& j, const std::string& what, const std::string& name) {
  if (!j.is_number_unsigned())
    return make_error(Rule::safetensors_bad_header, "tensor '" + name + "': " + what + " must be a non-negative integer");
  return j.get<uint64_t>();
}

}  // namespace

Result<ParsedModel> read_safetensors(std::span<const uint8_t> file, const ReadOptions& options) {
  ParsedModel parsed;
  parsed.format = container::Format::safetensors;
  io::ByteCursor c(file);
  MCDR_ASSIGN(uint64_t n, c.u64le());
  if (n > kMaxHeader) return make_error(Rule::safetensors_header_too_large, "header length " + std::to_string(n) + " exceeds 100 MB");
  if (n > c.remaining())
    return make_error(Rule::safetensors_bad_header_length,
                      "header length " + std::to_string(n) + " runs past the end of the file", 0);
  MCDR_ASSIGN(std::string_view header, c.take_view(n));
  const uint64_t data_start = c.pos();
  auto buffer = file.subspan(data_start);
  // JSON whitespace may precede the object (the reference reader's serde_json accepts it).
  size_t first = header.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos || header[first] != '{')
    return make_error(Rule::safetensors_bad_header, "header does not start with '{'", 8);

  // Padding: JSON whitespace is tolerated by JSON parsers, but writers pad with spaces only.
  size_t end = header.size();
  while (end > 0 && header[end - 1] == ' ') --end;
  if (end < header.size() && header.find_first_of("\t\r\n", end) != std::string_view::npos)
    add_finding(parsed.findings, Severity::low, Rule::safetensors_header_padding, "header padding is not plain spaces", "", 8 + end);
  // A raw NUL is never valid JSON (the reference reader rejects it); a parser may stop there.
  if (header.find('\0') != std::string_view::npos)
    return make_error(Rule::safetensors_bad_json, "header holds a NUL byte (not valid JSON)", 8 + header.find('\0'));
  // One bounded SAX pass (depth, element count, duplicate keys at any level) that builds a DOM
  // with std::map objects; tensors are taken in the header's order, recorded by the pass.
  io::JsonLimits jl;
  jl.max_depth = kMaxDepth;
  jl.max_elements = kMaxElements;
  io::JsonShape shape;
  json doc = io::parse_json(header, jl, shape);
  if (shape.too_deep) return make_error(Rule::safetensors_bad_header, "header JSON nests deeper than the format allows", 8);
  if (shape.too_many)
    return make_error(Rule::limits_json_elements, "header JSON has more than " + std::to_string(kMaxElements) + " elements", 8);
  if (shape.duplicate_key)
    return make_error(Rule::safetensors_duplicate_key,
                      "key '" + shape.duplicate_key->substr(0, 200) + "' appears twice in the header (readers disagree on which wins)", 8);
  if (!shape.valid) return make_error(Rule::safetensors_bad_json, "header is not valid UTF-8 JSON", 8);
  if (!doc.is_object()) return make_error(Rule::safetensors_bad_header, "header is not a JSON object", 8);

  struct Entry {
    std::string name;
    model::DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  entries.reserve(shape.root_keys.size());
  for (const std::string& name : shape.root_keys) {
    const json& v = doc.find(name).value();
    if (name == "__metadata__") {
      if (v.is_null()) continue;  // the reference reader's Option<HashMap>: null is no metadata
      if (!v.is_object()) return make_error(Rule::safetensors_bad_metadata, "__metadata__ is not an object", 8);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          return make_error(Rule::safetensors_bad_metadata, "__metadata__ value '" + m.key().substr(0, 100) + "' is not a string", 8);
        const std::string& text = m.value().get_ref<const std::string&>();
        std::string shown = "__metadata__['" + m.key().substr(0, 100) + "']";
        if (m.key().size() + text.size() > kMaxMetadataValue) {
          add_finding(parsed.findings, Severity::medium, Rule::safetensors_metadata_oversized,
                      shown + " is " + std::to_string(text.size()) + " bytes (over 64 KiB; dropped on disarm)", "", 8);
          continue;
        }
        if (cdr::looks_like_embedded_pickle(text)) {
          add_finding(parsed.findings, Severity::high, Rule::safetensors_metadata_pickle,
                      shown + " holds a serialized pickle (dropped on disarm)", "", 8);
          continue;
        }
        if (looks_like_shell(text) || looks_like_shell(m.key())) {
          add_finding(parsed.findings, Severity::medium, Rule::safetensors_metadata_shell,
                      shown + " reads like a shell command (dropped on disarm)", "", 8);
          continue;
        }
        parsed.model.file_metadata.emplace_back(m.key(), text);
      }
      continue;
    }
    if (!v.is_object()) return make_error(Rule::safetensors_bad_header, "tensor '" + name + "' is not a JSON object", 8);
    Entry e;
    e.name = name;
    for (auto f = v.begin(); f != v.end(); ++f)
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        add_finding(parsed.findings, Severity::low, Rule::safetensors_unknown_field,
                    "tensor '" + name + "' has unknown field '" + f.key().substr(0, 100) + "' (dropped)", "", 8);
    if (!v.contains("dtype") || !v["dtype"].is_string())
      return make_error(Rule::safetensors_bad_header, "tensor '" + name + "' has no dtype string", 8);
    const std::string& ds = v["dtype"].get_ref<const std::string&>();
    auto dt = st_dtype(ds);
    if (!dt)
      return make_error(known_but_unsupported(ds) ? Rule::safetensors_unsupported_dtype : Rule::safetensors_bad_dtype,
                        "tensor '" + name + "': dtype '" + ds.substr(0, 40) + "' " +
                            (known_but_unsupported(ds) ? "has no torch equivalent modelcdr can write" : "is not a safetensors dtype"),
                        8);
    e.dtype = *dt;
    if (!v.contains("shape") || !v["shape"].is_array())
      return make_error(Rule::safetensors_bad_header, "tensor '" + name + "' has no shape array", 8);
    if (v["shape"].size() > 64) return make_error(Rule::safetensors_bad_header, "tensor '" + name + "' has more than 64 dimensions", 8);
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      MCDR_ASSIGN(uint64_t dim, unsigned_of(d, "a shape entry", name));
      if (dim > static_cast<uint64_t>(INT64_MAX) || (dim != 0 && numel > UINT64_MAX / dim))
        return make_error(Rule::safetensors_bad_shape, "tensor '" + name + "': shape overflows", 8);
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t esize = model::dtype_info(e.dtype).element_size;
    if (numel > UINT64_MAX / esize) return make_error(Rule::safetensors_bad_shape, "tensor '" + name + "': size overflows", 8);
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      return make_error(Rule::safetensors_bad_header, "tensor '" + name + "' has no [begin, end] data_offsets", 8);
    MCDR_ASSIGN(e.begin, unsigned_of(v["data_offsets"][0], "data_offsets", name));
    MCDR_ASSIGN(e.end, unsigned_of(v["data_offsets"][1], "data_offsets", name));
    if (e.end < e.begin || e.end - e.begin != numel * esize)
      return make_error(Rule::safetensors_bad_offsets,
                        "tensor '" + name + "': data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                            ") do not hold shape x dtype = " + std::to_string(numel * esize) + " bytes",
                        8);
    entries.push_back(std::move(e));
  }

  // Offsets: sorted, contiguous from 0, covering the buffer exactly.
  std::vector<size_t> order(entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::tie(entries[a].begin, entries[a].end) < std::tie(entries[b].begin, entries[b].end);
  });
  uint64_t pos = 0;
  for (size_t i : order) {
    const Entry& e = entries[i];
    if (e.begin != pos)
      return make_error(Rule::safetensors_bad_offsets,
                        "tensor '" + e.name + "' starts at " + std::to_string(e.begin) + ", expected " + std::to_string(pos) +
                            (e.begin < pos ? " (overlaps the previous tensor)" : " (gap)"),
                        data_start + std::min<uint64_t>(e.begin, buffer.size()));
    pos = e.end;
  }
  if (pos > buffer.size())
    return make_error(Rule::safetensors_truncated,
                      "tensor data needs " + std::to_string(pos) + " bytes, the file holds " + std::to_string(buffer.size()),
                      data_start);
  if (pos != buffer.size())
    return make_error(Rule::safetensors_trailing_data,
                      std::to_string(buffer.size() - pos) + " bytes after the last tensor (the reference reader refuses the file)",
                      data_start + pos);

  model::Model& m = parsed.model;
  m.storages.reserve(entries.size());
  m.tensors.reserve(entries.size());
  m.values.reserve(2 * entries.size() + 1);
  model::Value root;
  root.kind = model::ValueKind::ordered_dict;
  root.entries.reserve(entries.size());
  for (const Entry& e : entries) {
    model::Storage s;
    s.dtype = e.dtype;
    s.nbytes = e.end - e.begin;
    s.bytes = buffer.subspan(e.begin, e.end - e.begin);
    s.source = e.name;
    m.storages.push_back(std::move(s));
    model::Tensor t;
    t.dtype = e.dtype;
    t.storage = static_cast<model::StorageId>(m.storages.size() - 1);
    t.shape = e.shape;
    t.stride.assign(t.shape.size(), 1);
    int64_t acc = 1;
    for (size_t i = t.shape.size(); i-- > 0;) t.stride[i] = acc, acc *= std::max<int64_t>(t.shape[i], 1);
    m.tensors.push_back(std::move(t));
    model::Value key;
    key.kind = model::ValueKind::string;
    key.text = e.name;
    model::Value tv;
    tv.kind = model::ValueKind::tensor;
    tv.tensor = static_cast<model::TensorId>(m.tensors.size() - 1);
    model::ValueId k = m.add(std::move(key));
    model::ValueId t_id = m.add(std::move(tv));
    root.entries.emplace_back(k, t_id);
  }
  m.root = m.add(std::move(root));
  (void)options;
  return parsed;
}

}  // namespace modelcdr::formats
