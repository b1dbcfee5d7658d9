#include "formats/pickle_writer.hpp"

#include "modelcdr/limits.hpp"

#include <cstring>
#include <string>
#include <unordered_map>

#include "cdr/class_registry.hpp"

namespace modelcdr::formats {

namespace {

using model::Model;
using model::Value;
using model::ValueId;
using model::ValueKind;

// The only globals this writer knows besides registry classes.
enum class G { ordered_dict, builtins_complex, reconstruct, ndarray, dtype, array_wrapper };

const char* const kGlobals[][2] = {
    {"collections", "OrderedDict"},       {"builtins", "complex"}, {"numpy.core.multiarray", "_reconstruct"},
    {"numpy", "ndarray"},                 {"numpy", "dtype"},      {"joblib.numpy_pickle", "NumpyArrayWrapper"},
};

constexpr size_t kBatch = 1000;

class Emitter {
 public:
  Emitter(const Model& m, const PickleWriteOptions& o, const cdr::ClassRegistry& reg) : m_(m), opt_(o), reg_(reg) {}

  Result<std::vector<uint8_t>> run() {
    // joblib writes a shared array once per reference (below): the output is budgeted so a
    // list of a million references to one large array is rejected, not written out.
    uint64_t payload = 0;
    for (const auto& s : m_.storages) payload += s.nbytes;
    for (const auto& v : m_.values) payload += v.text.size() + 16;
    out_budget_ = 4 * payload + (64ull << 20);
    op(0x80);
    op(4);
    MCDR_TRY(value(m_.root, 0));
    op('.');
    return std::move(out_);
  }

 private:
  void op(uint8_t c) { out_.push_back(c); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void raw(const void* p, size_t n) {
    auto* b = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }

  void none() { op('N'); }
  void boolean(bool b) { op(b ? 0x88 : 0x89); }
  void integer(int64_t v) {
    if (v >= 0 && v < 256) {
      op('K');
      op(static_cast<uint8_t>(v));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      u32(static_cast<uint32_t>(static_cast<int32_t>(v)));
    } else {
      op(0x8a);
      op(8);
      u64(static_cast<uint64_t>(v));
    }
  }
  void floating(double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    op('G');
    for (int i = 7; i >= 0; --i) out_.push_back(static_cast<uint8_t>(bits >> (8 * i)));
  }
  void unicode(const std::string& s) {
    if (s.size() <= 0xFFFFFFFFu) {
      op('X');
      u32(static_cast<uint32_t>(s.size()));
    } else {
      op(0x8d);
      u64(s.size());
    }
    raw(s.data(), s.size());
  }
  void bytes(const uint8_t* p, size_t n) {
    if (n <= 0xFFFFFFFFu) {
      op('B');
      u32(static_cast<uint32_t>(n));
    } else {
      op(0x8e);
      u64(n);
    }
    raw(p, n);
  }
  void global(const std::string& module, const std::string& name) {
    op('c');
    raw(module.data(), module.size());
    op('\n');
    raw(name.data(), name.size());
    op('\n');
  }
  void global(G g) { global(kGlobals[static_cast<int>(g)][0], kGlobals[static_cast<int>(g)][1]); }
  uint32_t put() {
    uint32_t i = next_memo_++;
    if (i < 256) {
      op('q');
      op(static_cast<uint8_t>(i));
    } else {
      op('r');
      u32(i);
    }
    return i;
  }
  void get(uint32_t i) {
    if (i < 256) {
      op('h');
      op(static_cast<uint8_t>(i));
    } else {
      op('j');
      u32(i);
    }
  }

  Status value(ValueId id, uint32_t depth) {
    if (depth > limits::kMaxDepth) return limits::too_deep("values written to the pickle");
    if (id == model::kNoValue) {
      none();
      return ok_status();
    }
    if (auto it = memo_.find(id); it != memo_.end()) {
      get(it->second);
      return ok_status();
    }
    const Value& v = m_.values[id];
    switch (v.kind) {
      case ValueKind::none:
      case ValueKind::dropped: none(); return ok_status();
      case ValueKind::boolean: boolean(v.b); return ok_status();
      case ValueKind::integer: integer(v.i); return ok_status();
      case ValueKind::big_integer:
        op(0x8a);
        op(static_cast<uint8_t>(v.text.size()));
        raw(v.text.data(), v.text.size());
        return ok_status();
      case ValueKind::floating: floating(v.f); return ok_status();
      case ValueKind::complex:
        global(G::builtins_complex);
        floating(v.f);
        floating(v.imag);
        op(0x86);
        op('R');
        break;
      case ValueKind::string: unicode(v.text); return ok_status();
      case ValueKind::bytes: bytes(reinterpret_cast<const uint8_t*>(v.text.data()), v.text.size()); break;
      case ValueKind::list:
        op(']');
        memo_[id] = put();
        return items(v.items, 'e', depth);
      case ValueKind::tuple:
        op('(');
        for (ValueId c : v.items) MCDR_TRY(value(c, depth + 1));
        op('t');
        break;
      case ValueKind::dict:
      case ValueKind::ordered_dict:
        if (v.kind == ValueKind::ordered_dict) {
          global(G::ordered_dict);
          op(')');
          op('R');
        } else {
          op('}');
        }
        memo_[id] = put();
        for (size_t i = 0; i < v.entries.size(); i += kBatch) {
          op('(');
          for (size_t j = i; j < std::min(v.entries.size(), i + kBatch); ++j) {
            MCDR_TRY(value(v.entries[j].first, depth + 1));
            MCDR_TRY(value(v.entries[j].second, depth + 1));
          }
          op('u');
        }
        return ok_status();
      case ValueKind::set:
        op(0x8f);
        memo_[id] = put();
        return items(v.items, 0x90, depth);
      case ValueKind::tensor:
        return make_error(Rule::output_unsupported,
                          "a torch tensor cannot be written as a pickle/joblib file (use --to pt or safetensors)");
      case ValueKind::numpy_dtype: MCDR_TRY(dtype(v, depth)); break;
      case ValueKind::ndarray:
        MCDR_TRY(array(v, depth));
        // joblib's unpickler replaces the wrapper by the array after BUILD, so a memo entry
        // would name the wrapper: arrays are written again where they are shared (as joblib does).
        if (opt_.joblib && !m_.values[v.state].text.empty() && m_.values[v.state].text[0] != 'O') return ok_status();
        break;
      case ValueKind::object: {
        if (v.class_id >= reg_.size()) return make_error(Rule::output_bad_class, "object with an unknown registry class id");
        const auto& rc = reg_.at(v.class_id);
        global(rc.module, rc.name);
        if (rc.construct == cdr::Construct::type_ref) break;  // the class itself (memoized below)
        if (rc.construct == cdr::Construct::newobj) {
          op(')');
          op(0x81);
        } else {
          op('(');
          for (ValueId c : v.items) MCDR_TRY(value(c, depth + 1));
          op('t');
          op('R');
        }
        memo_[id] = put();
        if (v.state != model::kNoValue) {
          MCDR_TRY(value(v.state, depth + 1));
          op('b');
        }
        return ok_status();
      }
    }
    memo_[id] = put();
    return ok_status();
  }

  Status items(const std::vector<ValueId>& xs, uint8_t batch_op, uint32_t depth) {
    for (size_t i = 0; i < xs.size(); i += kBatch) {
      op('(');
      for (size_t j = i; j < std::min(xs.size(), i + kBatch); ++j) MCDR_TRY(value(xs[j], depth + 1));
      op(batch_op);
    }
    return ok_status();
  }

  Status dtype(const Value& v, uint32_t depth) {
    global(G::dtype);
    unicode(v.text);
    boolean(false);
    boolean(true);
    op(0x87);
    op('R');
    if (v.state != model::kNoValue) {
      MCDR_TRY(value(v.state, depth + 1));
      op('b');
    }
    return ok_status();
  }

  Status shape_tuple(const std::vector<int64_t>& shape) {
    op('(');
    for (int64_t d : shape) integer(d);
    op('t');
    return ok_status();
  }

  Status array(const Value& v, uint32_t depth) {
    const Value& dt = m_.values[v.state];
    if (dt.kind != ValueKind::numpy_dtype) return make_error(Rule::output_bad_array, "array without a numpy dtype");
    bool object = dt.text.size() > 0 && dt.text[0] == 'O';
    std::span<const uint8_t> data;
    if (!object) {
      const auto& t = m_.tensors[v.tensor];
      const auto& s = m_.storages[t.storage];
      data = s.bytes;
      if (out_.size() + data.size() > out_budget_)
        return limits::too_much_expansion("arrays shared by many references, written once per reference");
    }
    if (opt_.joblib && !object) {
      global(G::array_wrapper);
      op(')');
      op(0x81);
      op('}');
      op('(');
      unicode("subclass");
      global(G::ndarray);
      unicode("shape");
      MCDR_TRY(shape_tuple(v.array_shape));
      unicode("order");
      unicode(v.fortran_order ? "F" : "C");
      unicode("dtype");
      MCDR_TRY(value(v.state, depth + 1));
      unicode("allow_mmap");
      boolean(true);
      unicode("numpy_array_alignment_bytes");
      integer(16);
      op('u');
      op('b');
      // joblib: pad byte + that many 0xFF so the data starts 16-aligned, then the bytes.
      uint8_t pad = static_cast<uint8_t>(16 - ((out_.size() + 1) % 16));
      op(pad);
      out_.insert(out_.end(), pad, 0xFF);
      raw(data.data(), data.size());
      return ok_status();
    }
    global(G::reconstruct);
    global(G::ndarray);
    op('K');
    op(0);
    op(0x85);
    bytes(reinterpret_cast<const uint8_t*>("b"), 1);
    op(0x87);
    op('R');
    op('(');
    integer(1);
    MCDR_TRY(shape_tuple(v.array_shape));
    MCDR_TRY(value(v.state, depth + 1));
    boolean(v.fortran_order);
    if (object) {
      op(']');
      MCDR_TRY(items(v.items, 'e', depth));
    } else {
      bytes(data.data(), data.size());
    }
    op('t');
    op('b');
    return ok_status();
  }

  const Model& m_;
  const PickleWriteOptions& opt_;
  const cdr::ClassRegistry& reg_;
  std::vector<uint8_t> out_;
  std::unordered_map<ValueId, uint32_t> memo_;
  uint32_t next_memo_ = 0;
  uint64_t out_budget_ = 0;
};

}  // namespace

Result<std::vector<uint8_t>> emit_pickle(const model::Model& model, const PickleWriteOptions& options) {
  const cdr::ClassRegistry& reg = options.registry ? *options.registry : cdr::ClassRegistry::active();
  return Emitter(model, options, reg).run();
}

Status write_pickle(const model::Model& model, const PickleWriteOptions& options, io::AtomicOutput& out) {
  MCDR_ASSIGN(std::vector<uint8_t> bytes, emit_pickle(model, options));
  return out.write(std::span<const uint8_t>(bytes.data(), bytes.size()));
}

}  // namespace modelcdr::formats
