#include "formats/pickle_writer.hpp"

#include "modelcdr/limits.hpp"

#include <cstring>
#include <string>
#include <unordered_map>

#include "cdr/class_registry.hpp"
#include "pickle/pickle_emitter.hpp"

namespace modelcdr::formats {

namespace {

using model::Model;
using model::Value;
using model::ValueId;
using model::ValueKind;

using pickle::EmitGlobal;
using pickle::PickleEmitter;

constexpr size_t kBatch = 1000;

// Walks the model and writes it through the one emitter (pickle/pickle_emitter.hpp): every
// global is an EmitGlobal or a class of the registry, by id.
class Walker {
 public:
  Walker(const Model& m, const PickleWriteOptions& o, const cdr::ClassRegistry& reg, PickleEmitter& e)
      : m_(m), opt_(o), reg_(reg), e_(e) {}

  Status run() {
    // joblib writes a shared array once per reference (below): the output is budgeted so a
    // list of a million references to one large array is rejected, not written out.
    uint64_t payload = 0;
    for (const auto& s : m_.storages) payload += s.nbytes;
    for (const auto& v : m_.values) payload += v.text.size() + 16;
    out_budget_ = 4 * payload + (64ull << 20);
    e_.proto(4);
    MCDR_TRY(value(m_.root, 0));
    e_.stop();
    return e_.finish();
  }

 private:
  static std::span<const uint8_t> as_bytes(std::string_view s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
  }

  Status value(ValueId id, uint32_t depth) {
    if (depth > limits::kMaxDepth) return limits::too_deep("values written to the pickle");
    if (id == model::kNoValue) {
      e_.none();
      return ok_status();
    }
    if (auto it = memo_.find(id); it != memo_.end()) {
      e_.get(it->second);
      return ok_status();
    }
    const Value& v = m_.values[id];
    switch (v.kind) {
      case ValueKind::none:
      case ValueKind::dropped: e_.none(); return ok_status();
      case ValueKind::boolean: e_.boolean(v.b); return ok_status();
      case ValueKind::integer: e_.integer(v.i); return ok_status();
      case ValueKind::big_integer: e_.long1(v.text); return ok_status();  // the lifter keeps it <= 255 bytes
      case ValueKind::floating: e_.binfloat(v.f); return ok_status();
      case ValueKind::complex:
        e_.global(EmitGlobal::builtins_complex);
        e_.binfloat(v.f);
        e_.binfloat(v.imag);
        e_.tuple_n(2);
        e_.reduce();
        break;
      case ValueKind::string: e_.unicode(v.text); return ok_status();
      case ValueKind::bytes: e_.binbytes(as_bytes(v.text)); break;
      case ValueKind::list:
        e_.empty_list();
        memo_[id] = e_.put();
        return items(v.items, List, depth);
      case ValueKind::tuple:
        e_.mark();
        for (ValueId c : v.items) MCDR_TRY(value(c, depth + 1));
        e_.tuple();
        break;
      case ValueKind::dict:
      case ValueKind::ordered_dict:
        if (v.kind == ValueKind::ordered_dict) {
          e_.global(EmitGlobal::ordered_dict);
          e_.tuple_n(0);
          e_.reduce();
        } else {
          e_.empty_dict();
        }
        memo_[id] = e_.put();
        for (size_t i = 0; i < v.entries.size(); i += kBatch) {
          e_.mark();
          for (size_t j = i; j < std::min(v.entries.size(), i + kBatch); ++j) {
            MCDR_TRY(value(v.entries[j].first, depth + 1));
            MCDR_TRY(value(v.entries[j].second, depth + 1));
          }
          e_.setitems();
        }
        return ok_status();
      case ValueKind::set:
        e_.empty_set();
        memo_[id] = e_.put();
        return items(v.items, Set, depth);
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
        e_.class_global(rc.module, rc.name);
        if (rc.construct == cdr::Construct::type_ref) break;  // the class itself (memoized below)
        if (rc.construct == cdr::Construct::newobj) {
          e_.tuple_n(0);
          e_.newobj();
        } else {
          e_.mark();
          for (ValueId c : v.items) MCDR_TRY(value(c, depth + 1));
          e_.tuple();
          e_.reduce();
        }
        memo_[id] = e_.put();
        if (v.state != model::kNoValue) {
          MCDR_TRY(value(v.state, depth + 1));
          e_.build();
        }
        return ok_status();
      }
    }
    memo_[id] = e_.put();
    return ok_status();
  }

  enum Batch { List, Set };
  Status items(std::span<const ValueId> xs, Batch batch, uint32_t depth) {
    for (size_t i = 0; i < xs.size(); i += kBatch) {
      e_.mark();
      for (size_t j = i; j < std::min(xs.size(), i + kBatch); ++j) MCDR_TRY(value(xs[j], depth + 1));
      if (batch == List) e_.appends();
      else e_.additems();
    }
    return ok_status();
  }

  Status dtype(const Value& v, uint32_t depth) {
    e_.global(EmitGlobal::numpy_dtype);
    e_.unicode(v.text);
    e_.boolean(false);
    e_.boolean(true);
    e_.tuple_n(3);
    e_.reduce();
    if (v.state != model::kNoValue) {
      MCDR_TRY(value(v.state, depth + 1));
      e_.build();
    }
    return ok_status();
  }

  Status shape_tuple(std::span<const int64_t> shape) {
    e_.mark();
    for (int64_t d : shape) e_.integer(d);
    e_.tuple();
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
      if (e_.tell() + data.size() > out_budget_)
        return limits::too_much_expansion("arrays shared by many references, written once per reference");
    }
    if (opt_.joblib && !object) {
      e_.global(EmitGlobal::joblib_array_wrapper);
      e_.tuple_n(0);
      e_.newobj();
      e_.empty_dict();
      e_.mark();
      e_.unicode("subclass");
      e_.global(EmitGlobal::numpy_ndarray);
      e_.unicode("shape");
      MCDR_TRY(shape_tuple(v.array_shape));
      e_.unicode("order");
      e_.unicode(v.fortran_order ? "F" : "C");
      e_.unicode("dtype");
      MCDR_TRY(value(v.state, depth + 1));
      e_.unicode("allow_mmap");
      e_.boolean(true);
      e_.unicode("numpy_array_alignment_bytes");
      e_.integer(16);
      e_.setitems();
      e_.build();
      // joblib: pad byte + that many 0xFF so the data starts 16-aligned, then the bytes.
      uint8_t pad[17];
      pad[0] = static_cast<uint8_t>(16 - ((e_.tell() + 1) % 16));
      std::memset(pad + 1, 0xFF, pad[0]);
      e_.payload(std::span<const uint8_t>(pad, 1 + pad[0]));
      e_.payload(data);
      return ok_status();
    }
    static const uint8_t kB[] = {'b'};
    e_.global(EmitGlobal::numpy_reconstruct);
    e_.global(EmitGlobal::numpy_ndarray);
    e_.integer(0);
    e_.tuple_n(1);
    e_.binbytes(kB);
    e_.tuple_n(3);
    e_.reduce();
    e_.mark();
    e_.integer(1);
    MCDR_TRY(shape_tuple(v.array_shape));
    MCDR_TRY(value(v.state, depth + 1));
    e_.boolean(v.fortran_order);
    if (object) {
      e_.empty_list();
      MCDR_TRY(items(v.items, List, depth));
    } else {
      e_.binbytes(data);
    }
    e_.tuple();
    e_.build();
    return ok_status();
  }

  const Model& m_;
  const PickleWriteOptions& opt_;
  const cdr::ClassRegistry& reg_;
  PickleEmitter& e_;
  std::unordered_map<ValueId, uint32_t> memo_;
  uint64_t out_budget_ = 0;
};

// The self-check for a plain pickle / joblib stream: protocol 4, the plain vocabulary, and
// classes only from the registry the walker used.
Status verify(std::span<const uint8_t> bytes, const PickleEmitter& e, const cdr::ClassRegistry& reg) {
  pickle::VerifyOptions check;
  check.stream = pickle::EmitStream::plain;
  check.protocol = 4;
  check.entry = "(emitted pickle)";
  check.payloads = e.payloads();
  check.registry_class = [&](std::string_view module, std::string_view name) {
    for (size_t i = 0; i < reg.size(); ++i)
      if (reg.at(i).module == module && reg.at(i).name == name) return true;
    return false;
  };
  return pickle::verify_emitted(bytes, check);
}

}  // namespace

Result<std::vector<uint8_t>> emit_pickle(const model::Model& model, const PickleWriteOptions& options) {
  const cdr::ClassRegistry& reg = options.registry ? *options.registry : cdr::ClassRegistry::active();
  PickleEmitter e;
  MCDR_TRY(Walker(model, options, reg, e).run());
  MCDR_TRY(verify(e.bytes(), e, reg));
  return std::move(e.bytes());
}

// Streams to the output, then re-reads what was written (a window on the temporary file, not a
// copy) for the self-check before the caller commits.
Status write_pickle(const model::Model& model, const PickleWriteOptions& options, io::AtomicOutput& out) {
  const cdr::ClassRegistry& reg = options.registry ? *options.registry : cdr::ClassRegistry::active();
  const uint64_t start = out.tell();
  PickleEmitter e([&](std::span<const uint8_t> chunk) { return out.write(chunk); });
  MCDR_TRY(Walker(model, options, reg, e).run());
  MCDR_TRY(out.flush());
  const uint64_t length = out.tell() - start;
  MCDR_ASSIGN(io::AtomicOutput::Window window, out.window(start, length));
  return verify(std::span<const uint8_t>(window.data(), length), e, reg);
}

}  // namespace modelcdr::formats
