// safetensors writer (and the flattening shared with the npz writer); see the header.
#include "formats/safetensors_writer.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "modelcdr/limits.hpp"

namespace modelcdr::formats {

namespace {

using model::Model;
using model::Tensor;
using model::Value;
using model::ValueId;
using model::ValueKind;
using nlohmann::ordered_json;

constexpr size_t kChunk = 8 << 20;

// A string as JSON text (escaped; invalid UTF-8 replaced, as everywhere in our JSON output).
std::string json_text(const std::string& s) { return ordered_json(s).dump(-1, ' ', false, ordered_json::error_handler_t::replace); }

// Writes a JSON object from (key, JSON text of the value) pairs in order: linear, where an
// ordered_json object finds every inserted key by linear search (quadratic in the keys).
// Keys must be distinct; callers guarantee it.
std::string json_object(const std::vector<std::pair<std::string, std::string>>& members) {
  std::string out = "{";
  for (size_t i = 0; i < members.size(); ++i) {
    if (i) out += ',';
    out += json_text(members[i].first);
    out += ':';
    out += members[i].second;
  }
  out += '}';
  return out;
}

// The flattener walks the value graph as a tree of paths: a value shared by two parents is
// visited (and its names or JSON written) once per path. Both the number of visits and the
// bytes of names and JSON produced are budgeted linearly in the model, so shared structure
// (a "billion laughs" DAG) is rejected (limits.expansion) instead of exhausting memory.
class Flattener {
 public:
  Flattener(const Model& m, const std::string& what, Findings& f)
      : m_(m), what_(what), f_(f), visits_(limits::expansion_budget(m.values.size())), bytes_(byte_budget(m)) {
    names_.insert("__metadata__");  // never a tensor name: it would replace the header's metadata
  }

  Result<FlatModel> run() {
    if (m_.root == model::kNoValue) return std::move(flat_);
    const Value& r = m_.values[m_.root];
    if (r.kind == ValueKind::tensor) add_tensor("arr_0", r.tensor);
    else visit(m_.root, "", 0);
    if (error_) return *error_;
    return std::move(flat_);
  }

 private:
  static uint64_t byte_budget(const Model& m) {
    uint64_t text = 0;
    for (const auto& v : m.values) text += v.text.size() + 16;
    return 4 * text + (64ull << 20);
  }

  // False (and the file rejected) once the walk has done more than its linear budget.
  bool spend(uint64_t bytes) {
    if (error_) return false;
    if (visits_.spend(1) && bytes_.spend(bytes)) return true;
    error_ = limits::too_much_expansion("flattening for " + what_);
    return false;
  }
  bool too_deep(uint32_t depth) {
    if (depth <= limits::kMaxDepth) return false;
    if (!error_) error_ = limits::too_deep("values written to " + what_);
    return true;
  }

  void drop(const std::string& path, const std::string& why) {
    add_finding(f_, Severity::low, Rule::convert_dropped,
                "'" + (path.empty() ? std::string("<root>") : path) + "' dropped: " + why + " (" + what_ + " cannot hold it)");
  }
  static std::string join(const std::string& prefix, const std::string& key) {
    return prefix.empty() ? key : prefix + "." + key;
  }

  // Memoised per value (linear over a DAG); depth-bounded like every walk.
  bool has_tensor(ValueId id, uint32_t depth) {
    if (id == model::kNoValue || too_deep(depth)) return false;
    if (auto it = has_.find(id); it != has_.end()) return it->second;
    has_[id] = false;  // cycle guard
    const Value& v = m_.values[id];
    bool r = v.kind == ValueKind::tensor || numeric_ndarray(v) || (string_ndarray(v) && numpy_target());
    for (auto i : v.items) r = has_tensor(i, depth + 1) || r;
    for (auto [k, x] : v.entries) r = has_tensor(x, depth + 1) || r;
    has_[id] = r;
    return r;
  }

  void add_tensor(const std::string& path, model::TensorId tid) {
    const Tensor& t = m_.tensors[tid];
    if (t.kind != model::TensorKind::dense) {
      drop(path, "quantized or sparse tensor");
      return;
    }
    std::string name = path.empty() ? "arr_0" : path;
    if (!names_.insert(name).second) {
      std::string n2;
      for (int i = 2;; ++i)
        if (names_.insert(n2 = name + "#" + std::to_string(i)).second) break;
      add_finding(f_, Severity::low, Rule::convert_renamed, "tensor name '" + name + "' is taken; written as '" + n2 + "'");
      name = n2;
    }
    flat_.tensors.push_back({name, tid});
  }

  std::optional<std::string> key_text(ValueId k) {
    const Value& v = m_.values[k];
    if (v.kind == ValueKind::string) return v.text;
    if (v.kind == ValueKind::integer) return std::to_string(v.i);
    return std::nullopt;
  }

  // numpy arrays lifted from pickles (ValueKind::ndarray): numeric ones are tensors, object
  // arrays hold their elements in `items`, string/structured ones have no tensor form here.
  char ndarray_code(const Value& v) const {
    if (v.state == model::kNoValue || v.state >= m_.values.size()) return '?';
    const Value& d = m_.values[v.state];
    return d.text.empty() ? '?' : d.text[0];
  }
  bool numeric_ndarray(const Value& v) const {
    char c = ndarray_code(v);
    return v.kind == ValueKind::ndarray && v.tensor < m_.tensors.size() && std::strchr("fiubc", c) != nullptr && c != 0;
  }

  bool numpy_target() const { return what_ == "npz" || what_ == "npy"; }
  bool string_ndarray(const Value& v) const {
    char c = ndarray_code(v);
    return v.kind == ValueKind::ndarray && v.items.empty() && v.tensor < m_.tensors.size() && (c == 'S' || c == 'U');
  }

  // numpy writes 'S' without and 'U' with a byte order; our IR holds 'U' little-endian.
  void add_string_array(const std::string& path, const Value& v) {
    size_t before = flat_.tensors.size();
    add_tensor(path, v.tensor);
    if (flat_.tensors.size() == before) return;
    const std::string& code = m_.values[v.state].text;
    auto& nt = flat_.tensors.back();
    nt.text_descr = (code[0] == 'S' ? "|" : "<") + code;
    nt.array_shape = v.array_shape.to_vector();
    nt.fortran_order = v.fortran_order;
  }

  void visit(ValueId id, const std::string& path, uint32_t depth) {
    if (too_deep(depth) || !spend(path.size())) return;
    const Value& v = m_.values[id];
    if (v.kind == ValueKind::tensor) return add_tensor(path, v.tensor);
    if (v.kind == ValueKind::ndarray) {
      if (numeric_ndarray(v)) return add_tensor(path, v.tensor);
      if (string_ndarray(v) && numpy_target()) return add_string_array(path, v);
      if (ndarray_code(v) != 'O') return drop(path, "a numpy array of a non-numeric dtype");
    }
    if (!has_tensor(id, 0)) {
      if (v.kind == ValueKind::dropped) return;  // already reported by the lifter
      std::string why, text;
      if (!json(id, 0, text, why)) {
        if (!error_) drop(path, why);
        return;
      }
      std::string key = path.empty() ? "<root>" : path;
      if (!extra_keys_.insert(key).second) return drop(path, "another entry has the same flattened name");
      flat_.extra.emplace_back(std::move(key), std::move(text));
      return;
    }
    switch (v.kind) {
      case ValueKind::dict:
      case ValueKind::ordered_dict:
        for (auto [k, x] : v.entries) {
          if (error_) return;
          auto key = key_text(k);
          if (!key) {
            drop(path, "a dict key that is neither a string nor an integer");
            continue;
          }
          visit(x, join(path, *key), depth + 1);
        }
        return;
      case ValueKind::list:
      case ValueKind::tuple:
      case ValueKind::set:
      case ValueKind::ndarray:
        for (size_t i = 0; i < v.items.size() && !error_; ++i) visit(v.items[i], join(path, std::to_string(i)), depth + 1);
        return;
      default: return drop(path, "unexpected value");
    }
  }

  // Appends the JSON text of a value to `out`; false with `why` when it has none (or the walk
  // ran out of budget: error_ is set then).
  bool json(ValueId id, uint32_t depth, std::string& out, std::string& why) {
    if (too_deep(depth)) return why = "nested too deeply", false;
    if (id == model::kNoValue) return out += "null", true;
    const Value& v = m_.values[id];
    if (!spend(v.text.size() + 8)) return why = "budget", false;
    switch (v.kind) {
      case ValueKind::none:
      case ValueKind::dropped: return out += "null", true;
      case ValueKind::boolean: return out += v.b ? "true" : "false", true;
      case ValueKind::integer: return out += std::to_string(v.i), true;
      case ValueKind::floating:
        if (!std::isfinite(v.f)) return why = "a non-finite float has no JSON form", false;
        return out += ordered_json(v.f).dump(), true;
      case ValueKind::string:
      case ValueKind::numpy_dtype: return out += json_text(v.text), true;
      case ValueKind::list:
      case ValueKind::tuple:
      case ValueKind::set: return json_array(v.items, depth, out, why);
      case ValueKind::dict:
      case ValueKind::ordered_dict: {
        out += '{';
        std::unordered_set<std::string> seen;
        for (size_t i = 0; i < v.entries.size(); ++i) {
          auto key = key_text(v.entries[i].first);
          if (!key) return why = "a dict key that is neither a string nor an integer", false;
          if (!seen.insert(*key).second) return why = "two dict keys with the same JSON name", false;
          if (i) out += ',';
          out += json_text(*key);
          out += ':';
          if (!json(v.entries[i].second, depth + 1, out, why)) return false;
        }
        return out += '}', true;
      }
      case ValueKind::bytes: return why = "bytes have no JSON form", false;
      case ValueKind::big_integer: return why = "an integer beyond 64 bits", false;
      case ValueKind::complex: return why = "a complex number has no JSON form", false;
      case ValueKind::tensor: return why = "tensor", false;
      case ValueKind::ndarray:
        if (ndarray_code(v) == 'O') return json_array(v.items, depth, out, why);
        return why = "a numpy array of a non-numeric dtype", false;
      default: return why = "an object of a registry class", false;
    }
  }

  bool json_array(std::span<const ValueId> items, uint32_t depth, std::string& out, std::string& why) {
    out += '[';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += ',';
      if (!json(items[i], depth + 1, out, why)) return false;
    }
    return out += ']', true;
  }

  const Model& m_;
  std::string what_;
  Findings& f_;
  FlatModel flat_;
  std::set<std::string> names_;
  std::unordered_set<std::string> extra_keys_;
  std::unordered_map<ValueId, bool> has_;
  limits::Budget visits_, bytes_;
  std::optional<Error> error_;
};

}  // namespace

Result<FlatModel> flatten_model(const model::Model& m, const std::string& what, Findings& findings) {
  return Flattener(m, what, findings).run();
}

uint64_t tensor_nbytes(const Tensor& t) {
  uint64_t n = model::dtype_info(t.dtype).element_size;
  for (int64_t d : t.shape) n *= static_cast<uint64_t>(std::max<int64_t>(d, 0));
  return n;
}

bool is_c_contiguous(const Tensor& t) {
  int64_t expect = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] == 0) return true;
    if (t.shape[i] != 1 && t.stride[i] != expect) return false;
    expect *= t.shape[i];
  }
  return true;
}

Status stream_tensor(const Model& m, const Tensor& t, const std::function<Status(std::span<const uint8_t>)>& sink) {
  if (t.storage >= m.storages.size() || t.shape.size() != t.stride.size())
    return make_error(Rule::convert_bad_view, "tensor view does not match its storage");
  const auto& bytes = m.storages[t.storage].bytes;
  const uint64_t es = model::dtype_info(t.dtype).element_size;
  uint64_t numel = 1;
  for (int64_t d : t.shape) {
    if (d < 0) return make_error(Rule::convert_bad_view, "negative dimension");
    numel *= static_cast<uint64_t>(d);
  }
  if (numel == 0) return ok_status();
  if (t.storage_offset < 0) return make_error(Rule::convert_bad_view, "negative storage offset");
  // Largest element index touched, overflow-checked against the storage size.
  uint64_t last = static_cast<uint64_t>(t.storage_offset);
  const uint64_t cap = bytes.size() / es;
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (t.stride[i] < 0) return make_error(Rule::convert_bad_view, "negative stride");
    uint64_t span = static_cast<uint64_t>(t.shape[i] - 1);
    if (span && static_cast<uint64_t>(t.stride[i]) > cap / span) return make_error(Rule::convert_bad_view, "view exceeds its storage");
    last += span * static_cast<uint64_t>(t.stride[i]);
    if (last >= cap) return make_error(Rule::convert_bad_view, "view exceeds its storage");
  }
  if (last >= cap) return make_error(Rule::convert_bad_view, "view exceeds its storage");
  if (is_c_contiguous(t)) {
    auto all = bytes.subspan(static_cast<size_t>(t.storage_offset) * es, numel * es);
    for (size_t off = 0; off < all.size(); off += kChunk) MCDR_TRY(sink(all.subspan(off, std::min(kChunk, all.size() - off))));
    return ok_status();
  }
  // Gather: odometer over the outer dimensions, the innermost dimension copied as a run.
  const size_t nd = t.shape.size();
  std::vector<int64_t> idx(nd, 0);
  std::vector<uint8_t> buf;
  buf.reserve(std::min<uint64_t>(kChunk + 4096, numel * es));
  const int64_t inner = t.shape[nd - 1], istride = t.stride[nd - 1];
  for (;;) {
    uint64_t base = static_cast<uint64_t>(t.storage_offset);
    for (size_t i = 0; i + 1 < nd; ++i) base += static_cast<uint64_t>(idx[i] * t.stride[i]);
    if (istride == 1) {
      auto run = bytes.subspan(base * es, static_cast<size_t>(inner) * es);
      buf.insert(buf.end(), run.begin(), run.end());
    } else {
      for (int64_t j = 0; j < inner; ++j) {
        auto el = bytes.subspan((base + static_cast<uint64_t>(j * istride)) * es, es);
        buf.insert(buf.end(), el.begin(), el.end());
      }
    }
    if (buf.size() >= kChunk) {
      MCDR_TRY(sink(buf));
      buf.clear();
    }
    size_t d = nd - 1;
    while (d > 0) {
      --d;
      if (++idx[d] < t.shape[d]) break;
      idx[d] = 0;
      if (d == 0) {
        d = SIZE_MAX;
        break;
      }
    }
    if (d == SIZE_MAX || nd == 1) break;
  }
  if (!buf.empty()) MCDR_TRY(sink(buf));
  return ok_status();
}

const char* safetensors_dtype(model::DType d) {
  using model::DType;
  switch (d) {
    case DType::boolean: return "BOOL";
    case DType::u8: return "U8";
    case DType::i8: return "I8";
    case DType::i16: return "I16";
    case DType::u16: return "U16";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::u32: return "U32";
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::i64: return "I64";
    case DType::u64: return "U64";
    case DType::c64: return "C64";
    case DType::f8_e5m2: return "F8_E5M2";
    case DType::f8_e4m3fn: return "F8_E4M3";
    case DType::f8_e4m3fnuz: return "F8_E4M3FNUZ";
    case DType::f8_e5m2fnuz: return "F8_E5M2FNUZ";
    default: return nullptr;
  }
}

Status write_safetensors(const Model& m, io::AtomicOutput& out, Findings& findings) {
  MCDR_ASSIGN(FlatModel flat, flatten_model(m, "safetensors", findings));
  // Identical views of one storage are one tensor with aliases; different views are copies.
  using ViewKey = std::tuple<model::StorageId, int64_t, std::vector<int64_t>, std::vector<int64_t>, model::DType>;
  std::map<ViewKey, size_t> seen;
  std::map<model::StorageId, size_t> storage_users;
  struct Out {
    std::string name;
    const Tensor* t;
    uint64_t begin = 0, end = 0;
  };
  std::vector<Out> outs;
  std::vector<std::pair<std::string, std::string>> aliases;  // name -> JSON text of the name written
  for (const auto& nt : flat.tensors) {
    const Tensor& t = m.tensors[nt.tensor];
    if (!safetensors_dtype(t.dtype)) {
      add_finding(findings, Severity::low, Rule::convert_dropped,
                  "tensor '" + nt.name + "' dropped: dtype " + model::dtype_info(t.dtype).name + " has no safetensors form");
      continue;
    }
    ViewKey key{t.storage, t.storage_offset, t.shape, is_c_contiguous(t) ? std::vector<int64_t>{} : t.stride, t.dtype};
    if (auto it = seen.find(key); it != seen.end()) {
      aliases.emplace_back(nt.name, json_text(outs[it->second].name));
      continue;
    }
    seen[key] = outs.size();
    if (storage_users[t.storage]++ == 1)
      add_finding(findings, Severity::info, Rule::convert_shared_storage,
                  "tensor '" + nt.name + "' shares storage with another view; written as its own copy");
    if (!is_c_contiguous(t))
      add_finding(findings, Severity::info, Rule::convert_made_contiguous, "tensor '" + nt.name + "' was not contiguous; written in C order");
    outs.push_back({nt.name, &t});
  }
  if (!aliases.empty())
    add_finding(findings, Severity::info, Rule::convert_aliases,
                std::to_string(aliases.size()) + " tensors share storage with another (tied weights): written once, the other names recorded in __metadata__['modelcdr.aliases']");
  // Deterministic order: element size descending (keeps every tensor aligned), then name.
  std::stable_sort(outs.begin(), outs.end(), [](const Out& a, const Out& b) {
    auto ea = model::dtype_info(a.t->dtype).element_size, eb = model::dtype_info(b.t->dtype).element_size;
    return ea != eb ? ea > eb : a.name < b.name;
  });
  // Header and metadata are written as JSON text directly (keys are distinct: tensor names are
  // unique and never "__metadata__"; metadata keys come from a map or are ours).
  std::vector<std::pair<std::string, std::string>> meta;
  meta.emplace_back("format", json_text("pt"));
  for (const auto& [k, v] : m.file_metadata) {
    if (k == "format") meta.front().second = json_text(v);  // the input's own value wins, in first place
    else if (k.rfind("modelcdr.", 0) != 0) meta.emplace_back(k, json_text(v));
  }
  if (!aliases.empty()) meta.emplace_back("modelcdr.aliases", json_text(json_object(aliases)));
  if (!flat.extra.empty()) {
    meta.emplace_back("modelcdr.extra", json_text(json_object(flat.extra)));
    add_finding(findings, Severity::info, Rule::convert_extra_metadata,
                std::to_string(flat.extra.size()) + " non-tensor entries written as JSON to __metadata__['modelcdr.extra']");
  }
  std::vector<std::pair<std::string, std::string>> header;
  header.reserve(outs.size() + 1);
  header.emplace_back("__metadata__", json_object(meta));
  uint64_t pos = 0;
  for (auto& o : outs) {
    o.begin = pos;
    pos += tensor_nbytes(*o.t);
    o.end = pos;
    ordered_json entry = {{"dtype", safetensors_dtype(o.t->dtype)}, {"shape", o.t->shape}, {"data_offsets", {o.begin, o.end}}};
    header.emplace_back(o.name, entry.dump());
  }
  std::string text = json_object(header);
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  MCDR_TRY(out.write(std::span<const uint8_t>(len, 8)));
  MCDR_TRY(out.write(text));
  for (const auto& o : outs) {
    uint64_t written = 0;
    MCDR_TRY(stream_tensor(m, *o.t, [&](std::span<const uint8_t> chunk) {
      written += chunk.size();
      return out.write(chunk);
    }));
    if (written != o.end - o.begin) return make_error(Rule::convert_bad_view, "tensor '" + o.name + "' streamed a wrong byte count");
  }
  return ok_status();
}

}  // namespace modelcdr::formats
