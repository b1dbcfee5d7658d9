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

namespace modelcdr::formats {

namespace {

using model::Model;
using model::Tensor;
using model::Value;
using model::ValueId;
using model::ValueKind;
using nlohmann::ordered_json;

constexpr size_t kChunk = 8 << 20;
constexpr int kMaxDepth = 256;

class Flattener {
 public:
  Flattener(const Model& m, const std::string& what, Findings& f) : m_(m), what_(what), f_(f) {}

  FlatModel run() {
    if (m_.root == model::kNoValue) return std::move(flat_);
    const Value& r = m_.values[m_.root];
    if (r.kind == ValueKind::tensor) add_tensor("arr_0", r.tensor);
    else visit(m_.root, "", 0);
    return std::move(flat_);
  }

 private:
  void drop(const std::string& path, const std::string& why) {
    add_finding(f_, Severity::low, "convert.dropped",
                "'" + (path.empty() ? std::string("<root>") : path) + "' dropped: " + why + " (" + what_ + " cannot hold it)");
  }
  static std::string join(const std::string& prefix, const std::string& key) {
    return prefix.empty() ? key : prefix + "." + key;
  }

  bool has_tensor(ValueId id, int depth) {
    if (id == model::kNoValue || depth > kMaxDepth) return false;
    if (auto it = has_.find(id); it != has_.end()) return it->second;
    has_[id] = false;  // cycle guard
    const Value& v = m_.values[id];
    bool r = v.kind == ValueKind::tensor || numeric_ndarray(v);
    for (auto i : v.items) r = r || has_tensor(i, depth + 1);
    for (auto [k, x] : v.entries) r = r || has_tensor(x, depth + 1);
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
      add_finding(f_, Severity::low, "convert.renamed", "tensor name '" + name + "' is taken; written as '" + n2 + "'");
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

  void visit(ValueId id, const std::string& path, int depth) {
    if (depth > kMaxDepth) return drop(path, "nested too deeply");
    const Value& v = m_.values[id];
    if (v.kind == ValueKind::tensor) return add_tensor(path, v.tensor);
    if (v.kind == ValueKind::ndarray) {
      if (numeric_ndarray(v)) return add_tensor(path, v.tensor);
      if (ndarray_code(v) != 'O') return drop(path, "a numpy array of a non-numeric dtype");
    }
    if (!has_tensor(id, 0)) {
      if (v.kind == ValueKind::dropped) return;  // already reported by the lifter
      std::string why;
      auto j = json(id, 0, why);
      if (!j) return drop(path, why);
      flat_.extra.emplace_back(path.empty() ? "<root>" : path, j->dump(-1, ' ', false, ordered_json::error_handler_t::replace));
      return;
    }
    switch (v.kind) {
      case ValueKind::dict:
      case ValueKind::ordered_dict:
        for (auto [k, x] : v.entries) {
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
        for (size_t i = 0; i < v.items.size(); ++i) visit(v.items[i], join(path, std::to_string(i)), depth + 1);
        return;
      default: return drop(path, "unexpected value");
    }
  }

  std::optional<ordered_json> json(ValueId id, int depth, std::string& why) {
    if (id == model::kNoValue) return ordered_json(nullptr);
    if (depth > kMaxDepth) return why = "nested too deeply", std::nullopt;
    const Value& v = m_.values[id];
    switch (v.kind) {
      case ValueKind::none: return ordered_json(nullptr);
      case ValueKind::boolean: return ordered_json(v.b);
      case ValueKind::integer: return ordered_json(v.i);
      case ValueKind::floating:
        if (!std::isfinite(v.f)) return why = "a non-finite float has no JSON form", std::nullopt;
        return ordered_json(v.f);
      case ValueKind::string: return ordered_json(v.text);
      case ValueKind::list:
      case ValueKind::tuple:
      case ValueKind::set: {
        ordered_json a = ordered_json::array();
        for (auto i : v.items) {
          auto j = json(i, depth + 1, why);
          if (!j) return std::nullopt;
          a.push_back(std::move(*j));
        }
        return a;
      }
      case ValueKind::dict:
      case ValueKind::ordered_dict: {
        ordered_json o = ordered_json::object();
        for (auto [k, x] : v.entries) {
          auto key = key_text(k);
          if (!key) return why = "a dict key that is neither a string nor an integer", std::nullopt;
          auto j = json(x, depth + 1, why);
          if (!j) return std::nullopt;
          o[*key] = std::move(*j);
        }
        return o;
      }
      case ValueKind::dropped: return ordered_json(nullptr);
      case ValueKind::bytes: return why = "bytes have no JSON form", std::nullopt;
      case ValueKind::big_integer: return why = "an integer beyond 64 bits", std::nullopt;
      case ValueKind::complex: return why = "a complex number has no JSON form", std::nullopt;
      case ValueKind::tensor: return why = "tensor", std::nullopt;
      case ValueKind::ndarray:
        if (ndarray_code(v) == 'O') {
          ordered_json a = ordered_json::array();
          for (auto i : v.items) {
            auto j = json(i, depth + 1, why);
            if (!j) return std::nullopt;
            a.push_back(std::move(*j));
          }
          return a;
        }
        return why = "a numpy array of a non-numeric dtype", std::nullopt;
      case ValueKind::numpy_dtype: return ordered_json(v.text);
      default: return why = "an object of a registry class", std::nullopt;
    }
    return why = "unknown value", std::nullopt;
  }

  const Model& m_;
  std::string what_;
  Findings& f_;
  FlatModel flat_;
  std::set<std::string> names_;
  std::map<ValueId, bool> has_;
};

}  // namespace

FlatModel flatten_model(const model::Model& m, const std::string& what, Findings& findings) {
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
    return make_error("convert.bad-view", "tensor view does not match its storage");
  const auto& bytes = m.storages[t.storage].bytes;
  const uint64_t es = model::dtype_info(t.dtype).element_size;
  uint64_t numel = 1;
  for (int64_t d : t.shape) {
    if (d < 0) return make_error("convert.bad-view", "negative dimension");
    numel *= static_cast<uint64_t>(d);
  }
  if (numel == 0) return ok_status();
  if (t.storage_offset < 0) return make_error("convert.bad-view", "negative storage offset");
  // Largest element index touched, overflow-checked against the storage size.
  uint64_t last = static_cast<uint64_t>(t.storage_offset);
  const uint64_t cap = bytes.size() / es;
  for (size_t i = 0; i < t.shape.size(); ++i) {
    if (t.stride[i] < 0) return make_error("convert.bad-view", "negative stride");
    uint64_t span = static_cast<uint64_t>(t.shape[i] - 1);
    if (span && static_cast<uint64_t>(t.stride[i]) > cap / span) return make_error("convert.bad-view", "view exceeds its storage");
    last += span * static_cast<uint64_t>(t.stride[i]);
    if (last >= cap) return make_error("convert.bad-view", "view exceeds its storage");
  }
  if (last >= cap) return make_error("convert.bad-view", "view exceeds its storage");
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
  FlatModel flat = flatten_model(m, "safetensors", findings);
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
  ordered_json aliases = ordered_json::object();
  for (const auto& nt : flat.tensors) {
    const Tensor& t = m.tensors[nt.tensor];
    if (!safetensors_dtype(t.dtype)) {
      add_finding(findings, Severity::low, "convert.dropped",
                  "tensor '" + nt.name + "' dropped: dtype " + model::dtype_info(t.dtype).name + " has no safetensors form");
      continue;
    }
    ViewKey key{t.storage, t.storage_offset, t.shape, is_c_contiguous(t) ? std::vector<int64_t>{} : t.stride, t.dtype};
    if (auto it = seen.find(key); it != seen.end()) {
      aliases[nt.name] = outs[it->second].name;
      continue;
    }
    seen[key] = outs.size();
    if (storage_users[t.storage]++ == 1)
      add_finding(findings, Severity::info, "convert.shared-storage",
                  "tensor '" + nt.name + "' shares storage with another view; written as its own copy");
    if (!is_c_contiguous(t))
      add_finding(findings, Severity::info, "convert.made-contiguous", "tensor '" + nt.name + "' was not contiguous; written in C order");
    outs.push_back({nt.name, &t});
  }
  if (!aliases.empty())
    add_finding(findings, Severity::info, "convert.aliases",
                std::to_string(aliases.size()) + " tensors share storage with another (tied weights): written once, the other names recorded in __metadata__['modelcdr.aliases']");
  // Deterministic order: element size descending (keeps every tensor aligned), then name.
  std::stable_sort(outs.begin(), outs.end(), [](const Out& a, const Out& b) {
    auto ea = model::dtype_info(a.t->dtype).element_size, eb = model::dtype_info(b.t->dtype).element_size;
    return ea != eb ? ea > eb : a.name < b.name;
  });
  ordered_json header = ordered_json::object();
  ordered_json meta = ordered_json::object();
  meta["format"] = "pt";
  for (const auto& [k, v] : m.file_metadata)
    if (k.rfind("modelcdr.", 0) != 0) meta[k] = v;
  if (!aliases.empty()) meta["modelcdr.aliases"] = aliases.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
  if (!flat.extra.empty()) {
    ordered_json extra = ordered_json::object();
    for (const auto& [k, v] : flat.extra) extra[k] = ordered_json::parse(v, nullptr, false);
    meta["modelcdr.extra"] = extra.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
    add_finding(findings, Severity::info, "convert.extra-metadata",
                std::to_string(flat.extra.size()) + " non-tensor entries written as JSON to __metadata__['modelcdr.extra']");
  }
  header["__metadata__"] = meta;
  uint64_t pos = 0;
  for (auto& o : outs) {
    o.begin = pos;
    pos += tensor_nbytes(*o.t);
    o.end = pos;
    header[o.name] = {{"dtype", safetensors_dtype(o.t->dtype)}, {"shape", o.t->shape}, {"data_offsets", {o.begin, o.end}}};
  }
  std::string text = header.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
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
    if (written != o.end - o.begin) return make_error("convert.bad-view", "tensor '" + o.name + "' streamed a wrong byte count");
  }
  return ok_status();
}

}  // namespace modelcdr::formats
