// PickleEmitter: writes protocol-2 pickle opcodes from a fixed, small vocabulary (docs/FORMATS.md
// §5.4). Globals are chosen from the EmitGlobal enum, never from strings, so no name read from
// an input can reach an output: a global outside the table is not expressible.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "modelcdr/model.hpp"

namespace modelcdr::pickle {

enum class EmitGlobal : uint8_t {
  ordered_dict,          // collections OrderedDict
  rebuild_tensor_v2,     // torch._utils _rebuild_tensor_v2
  rebuild_tensor_v3,     // torch._utils _rebuild_tensor_v3 (2.x-only dtypes)
  rebuild_parameter,     // torch._utils _rebuild_parameter
  rebuild_qtensor,       // torch._utils _rebuild_qtensor
  rebuild_sparse_tensor, // torch._utils _rebuild_sparse_tensor
  rebuild_sparse_csr,    // torch._utils _rebuild_sparse_csr_tensor (CSR for torch 1.13, --compat)
  get_layout,            // torch.serialization _get_layout
  torch_size,            // torch Size
  torch_device,          // torch device (torch 2.x; an inert value: a device type and index)
  per_tensor_affine,     // torch per_tensor_affine
  per_channel_affine,    // torch per_channel_affine
  untyped_storage,       // torch.storage UntypedStorage
  codecs_encode,         // _codecs encode (bytes, torch 2.x)
  builtins_set,          // builtins set (torch 2.x)
  builtins_complex,      // builtins complex (torch 2.x)
};

class PickleEmitter {
 public:
  std::vector<uint8_t>& bytes() { return out_; }

  void proto2();
  void stop();
  void mark();
  void tuple();  // from mark
  void tuple_n(size_t n);  // EMPTY_TUPLE / TUPLE1..3 for n <= 3 (caller emitted the items)
  void empty_list();
  void empty_dict();
  void appends();
  void setitem();
  void setitems();
  void none();
  void boolean(bool v);
  void integer(int64_t v);
  void long1(std::string_view le_twos_complement);  // arbitrary-size int
  void unicode(std::string_view utf8);
  void binfloat(double v);
  void global(EmitGlobal g);
  void storage_class(model::DType d);  // GLOBAL torch <Legacy>Storage; d must have one
  void dtype_global(model::DType d);   // GLOBAL torch <dtype name>
  void reduce();
  void build();
  void binpersid();
  uint32_t put();                // memoize top of stack under the next index
  void get(uint32_t index);

 private:
  void op(uint8_t c) { out_.push_back(c); }
  void u32(uint32_t v);
  void raw(std::string_view s) { out_.insert(out_.end(), s.begin(), s.end()); }
  std::vector<uint8_t> out_;
  uint32_t next_memo_ = 0;
};

}  // namespace modelcdr::pickle
