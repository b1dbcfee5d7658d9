#include "pickle/pickle_emitter.hpp"
#include "pickle/stream_check.hpp"

#include <cstring>
#include <iterator>

#include "io/byte_cursor.hpp"
#include "pickle/pickle_machine.hpp"

namespace modelcdr::pickle {

namespace {
// Indexed by EmitGlobal: the table's MCDR_EMIT rows, in order.
constexpr EmitGlobalName kNames[] = {
#define MCDR_EMIT(id, module, name, streams, roles) {module, name, streams},
#define MCDR_GLOBAL(module, name, roles)
#include "pickle/globals.def"
};

constexpr size_t kChunk = 1 << 20;
}  // namespace

const EmitGlobalName& emit_global_name(EmitGlobal g) { return kNames[static_cast<size_t>(g)]; }

void PickleEmitter::flush_if_full() {
  if (!sink_ || out_.size() < kChunk) return;
  if (status_.ok()) status_ = sink_(std::span<const uint8_t>(out_.data(), out_.size()));
  flushed_ += out_.size();
  out_.clear();
}

Status PickleEmitter::finish() {
  if (sink_ && !out_.empty()) {
    if (status_.ok()) status_ = sink_(std::span<const uint8_t>(out_.data(), out_.size()));
    flushed_ += out_.size();
    out_.clear();
  }
  return status_;
}

void PickleEmitter::raw_bytes(std::span<const uint8_t> b) {
  if (sink_ && b.size() >= kChunk) {  // a large payload is not copied through the buffer
    if (status_.ok() && !out_.empty()) status_ = sink_(std::span<const uint8_t>(out_.data(), out_.size()));
    flushed_ += out_.size();
    out_.clear();
    if (status_.ok()) status_ = sink_(b);
    flushed_ += b.size();
    return;
  }
  out_.insert(out_.end(), b.begin(), b.end());
  flush_if_full();
}

void PickleEmitter::u64(uint64_t v) {
  for (int i = 0; i < 8; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void PickleEmitter::proto(uint8_t version) {
  op(0x80);
  op(version);
}

void PickleEmitter::binbytes(std::span<const uint8_t> b) {
  if (b.size() <= 0xFFFFFFFFu) {
    op('B');
    u32(static_cast<uint32_t>(b.size()));
  } else {
    op(0x8e);
    u64(b.size());
  }
  raw_bytes(b);
}

void PickleEmitter::empty_set() { op(0x8f); }
void PickleEmitter::additems() { op(0x90); }
void PickleEmitter::newobj() { op(0x81); }

void PickleEmitter::class_global(std::string_view module, std::string_view name) {
  // One append for the whole opcode (1-2 per tensor), not five separate vector inserts.
  const size_t at = out_.size();
  out_.resize(at + module.size() + name.size() + 3);
  uint8_t* p = out_.data() + at;
  *p++ = 'c';
  std::memcpy(p, module.data(), module.size());
  p += module.size();
  *p++ = '\n';
  std::memcpy(p, name.data(), name.size());
  p += name.size();
  *p = '\n';
}

void PickleEmitter::payload(std::span<const uint8_t> b) {
  uint64_t at = tell();
  if (!payloads_.empty() && payloads_.back().offset + payloads_.back().size == at) payloads_.back().size += b.size();
  else payloads_.push_back({at, b.size()});
  raw_bytes(b);
}

void PickleEmitter::u32(uint32_t v) {
  for (int i = 0; i < 4; ++i) out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void PickleEmitter::proto2() {
  op(0x80);
  op(2);
}
void PickleEmitter::stop() { op('.'); }
void PickleEmitter::mark() { op('('); }
void PickleEmitter::tuple() { op('t'); }
void PickleEmitter::tuple_n(size_t n) {
  static const uint8_t ops[] = {')', 0x85, 0x86, 0x87};
  op(ops[n]);
}
void PickleEmitter::empty_list() { op(']'); }
void PickleEmitter::empty_dict() { op('}'); }
void PickleEmitter::appends() { op('e'); }
void PickleEmitter::setitem() { op('s'); }
void PickleEmitter::setitems() { op('u'); }
void PickleEmitter::none() { op('N'); }
void PickleEmitter::boolean(bool v) { op(v ? 0x88 : 0x89); }

void PickleEmitter::integer(int64_t v) {
  if (v >= 0 && v < 256) {
    op('K');
    op(static_cast<uint8_t>(v));
  } else if (v >= 0 && v < 65536) {
    op('M');
    op(static_cast<uint8_t>(v));
    op(static_cast<uint8_t>(v >> 8));
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    op('J');
    u32(static_cast<uint32_t>(static_cast<int32_t>(v)));
  } else {
    // LONG1 with the minimal little-endian two's-complement encoding.
    uint8_t buf[8];
    for (int i = 0; i < 8; ++i) buf[i] = static_cast<uint8_t>(static_cast<uint64_t>(v) >> (8 * i));
    int n = 8;
    while (n > 1 && ((buf[n - 1] == 0x00 && !(buf[n - 2] & 0x80)) || (buf[n - 1] == 0xFF && (buf[n - 2] & 0x80)))) --n;
    op(0x8A);
    op(static_cast<uint8_t>(n));
    out_.insert(out_.end(), buf, buf + n);
  }
}

void PickleEmitter::long1(std::string_view le) {
  // LONG1 holds at most 255 bytes; larger integers are clipped by the lifter (reported).
  size_t n = le.size() > 255 ? 255 : le.size();
  op(0x8A);
  op(static_cast<uint8_t>(n));
  raw(le.substr(0, n));
}

void PickleEmitter::unicode(std::string_view s) {
  if (s.size() <= 0xFFFFFFFFu) {
    op('X');
    u32(static_cast<uint32_t>(s.size()));
  } else {
    op(0x8d);
    u64(s.size());
  }
  raw_bytes(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

void PickleEmitter::binfloat(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  op('G');
  for (int i = 7; i >= 0; --i) op(static_cast<uint8_t>(bits >> (8 * i)));
}

void PickleEmitter::global(EmitGlobal g) {
  const auto& n = emit_global_name(g);
  class_global(n.module, n.name);
}

void PickleEmitter::storage_class(model::DType d) {
  const auto& info = model::dtype_info(d);
  op('c');
  raw("torch\n");
  raw(info.storage_class ? info.storage_class : "ByteStorage");
  op('\n');
}

void PickleEmitter::dtype_global(model::DType d) {
  op('c');
  raw("torch\n");
  raw(model::dtype_info(d).name);
  op('\n');
}

void PickleEmitter::reduce() { op('R'); }
void PickleEmitter::build() { op('b'); }
void PickleEmitter::binpersid() { op('Q'); }

uint32_t PickleEmitter::put() {
  uint32_t idx = next_memo_++;
  if (idx < 256) {
    op('q');
    op(static_cast<uint8_t>(idx));
  } else {
    op('r');
    u32(idx);
  }
  return idx;
}

void PickleEmitter::get(uint32_t idx) {
  if (idx < 256) {
    op('h');
    op(static_cast<uint8_t>(idx));
  } else {
    op('j');
    u32(idx);
  }
}

namespace {
bool in_vocabulary(const Node& g, const VerifyOptions& o) {
  const uint8_t stream = static_cast<uint8_t>(o.stream);
  for (const auto& n : kNames)
    if ((n.streams & stream) && g.text == n.module && g.name() == n.name) return true;
  if (o.stream == EmitStream::checkpoint) {
    // storage_class / dtype_global: GLOBAL torch <Storage class or dtype name> from the dtype table.
    if (g.text != "torch") return false;
    return model::dtype_from_storage_class(g.name()).has_value() || model::dtype_from_name(g.name()).has_value();
  }
  return o.registry_class && o.registry_class(g.text, g.name());
}

// A checkpoint's global: a kEmitCheckpoint row, or GLOBAL torch <Storage class or dtype name>.
bool checkpoint_global_ok(std::string_view module, std::string_view name) {
  for (const auto& n : kNames)
    if ((n.streams & static_cast<uint8_t>(EmitStream::checkpoint)) && module == n.module && name == n.name) return true;
  if (module != "torch") return false;
  const std::string s(name);
  return model::dtype_from_storage_class(s).has_value() || model::dtype_from_name(s).has_value();
}
}  // namespace

Status verify_emitted(std::span<const uint8_t> bytes, const VerifyOptions& o) {
  // A checkpoint's data.pkl (protocol 2, no raw payloads, no registry classes) is checked by the
  // streaming opcode walk (pickle/stream_check): every byte decoded, no second value graph, so the
  // check costs nothing per tensor. Plain pickle / joblib streams are decoded in full below.
  if (o.stream == EmitStream::checkpoint && o.protocol == 2 && o.payloads.empty() && !o.registry_class)
    return check_emitted_stream(bytes, checkpoint_global_ok, o.entry);
  Findings findings;
  DecodeOptions d;
  d.entry = o.entry;
  size_t next_payload = 0;
  if (!o.payloads.empty())
    d.on_array_build = [&](const Program&, NodeId, io::ByteCursor& cur) -> Result<RawPayload> {
      if (next_payload >= o.payloads.size() || o.payloads[next_payload].offset != cur.pos())
        return make_error(Rule::emit_self_check, "emitted pickle: array data where the emitter wrote none");
      const auto& p = o.payloads[next_payload++];
      MCDR_TRY(cur.skip(p.size));
      return RawPayload{p.offset, p.size, false};
    };
  auto program = decode(bytes, d, findings);
  if (!program.ok())
    return make_error(Rule::emit_self_check, "emitted pickle does not decode: " + program.error().message);
  const Program& p = *program;
  if (p.protocol != o.protocol || p.end_offset != bytes.size() || next_payload != o.payloads.size())
    return make_error(Rule::emit_self_check,
                      "emitted pickle is not a single protocol-" + std::to_string(o.protocol) + " stream");
  const bool plain = o.stream == EmitStream::plain;
  for (const auto& n : p.nodes) {
    if (n.kind == NodeKind::Global && !in_vocabulary(n, o))
      return make_error(Rule::emit_self_check, "emitted pickle names a global outside the emit vocabulary", n.offset);
    if (n.kind == NodeKind::Inst || n.kind == NodeKind::Ext || n.kind == NodeKind::Buffer ||
        (n.kind == NodeKind::NewObj && !plain))
      return make_error(Rule::emit_self_check, "emitted pickle holds an opcode outside the emit vocabulary", n.offset);
  }
  return ok_status();
}

}  // namespace modelcdr::pickle
