#include "pickle/pickle_emitter.hpp"

#include <cstring>

namespace modelcdr::pickle {

namespace {
const char* global_text(EmitGlobal g) {
  switch (g) {
    case EmitGlobal::ordered_dict: return "collections\nOrderedDict\n";
    case EmitGlobal::rebuild_tensor_v2: return "torch._utils\n_rebuild_tensor_v2\n";
    case EmitGlobal::rebuild_tensor_v3: return "torch._utils\n_rebuild_tensor_v3\n";
    case EmitGlobal::rebuild_parameter: return "torch._utils\n_rebuild_parameter\n";
    case EmitGlobal::rebuild_qtensor: return "torch._utils\n_rebuild_qtensor\n";
    case EmitGlobal::rebuild_sparse_tensor: return "torch._utils\n_rebuild_sparse_tensor\n";
    case EmitGlobal::rebuild_sparse_csr: return "torch._utils\n_rebuild_sparse_csr_tensor\n";
    case EmitGlobal::get_layout: return "torch.serialization\n_get_layout\n";
    case EmitGlobal::torch_size: return "torch\nSize\n";
    case EmitGlobal::torch_device: return "torch\ndevice\n";
    case EmitGlobal::per_tensor_affine: return "torch\nper_tensor_affine\n";
    case EmitGlobal::per_channel_affine: return "torch\nper_channel_affine\n";
    case EmitGlobal::untyped_storage: return "torch.storage\nUntypedStorage\n";
    case EmitGlobal::codecs_encode: return "_codecs\nencode\n";
    case EmitGlobal::builtins_set: return "builtins\nset\n";
    case EmitGlobal::builtins_complex: return "builtins\ncomplex\n";
  }
  return "collections\nOrderedDict\n";
}
}  // namespace

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
  op('X');
  u32(static_cast<uint32_t>(s.size()));
  raw(s);
}

void PickleEmitter::binfloat(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  op('G');
  for (int i = 7; i >= 0; --i) op(static_cast<uint8_t>(bits >> (8 * i)));
}

void PickleEmitter::global(EmitGlobal g) {
  op('c');
  raw(global_text(g));
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

}  // namespace modelcdr::pickle
