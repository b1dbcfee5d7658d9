// Model IR: what a model *is*, with everything executable stripped away. The lifter builds it
// from the pickle value graph; every writer (torch zip, safetensors, ...) emits from it alone.
// Tensor payloads are never copied into the IR: a Storage holds a span of the mapped input,
// or an owned buffer once a transform (LSB randomisation, MTD) has rewritten it.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "modelcdr/finding.hpp"

namespace modelcdr::model {

enum class DType : uint8_t {
  f64, f32, f16, bf16, c64, c128, i64, i32, i16, i8, u8, boolean,
  qint8, quint8, qint32, quint4x2, quint2x4,
  // torch 2.x-only dtypes (no legacy storage class; written with _rebuild_tensor_v3)
  u16, u32, u64, f8_e4m3fn, f8_e5m2, f8_e4m3fnuz, f8_e5m2fnuz, c32,
  // torch 2.x dtypes without arithmetic meaning to us (kept as bytes): the MX scale format, packed
  // fp4 pairs and the raw bit containers
  f8_e8m0fnu, f4_e2m1fn_x2, bits8, bits16, bits1x8, bits2x4, bits4x2,
};

struct DTypeInfo {
  DType dtype;
  const char* name;          // torch name without "torch.", e.g. "float32"
  const char* storage_class; // legacy class, e.g. "FloatStorage"; nullptr for 2.x-only dtypes
  uint32_t element_size;
  bool is_float;             // IEEE-style binary float (f64/f32/f16/bf16/f8*), not complex
};

const DTypeInfo& dtype_info(DType d);
std::optional<DType> dtype_from_storage_class(const std::string& class_name);  // "FloatStorage"
std::optional<DType> dtype_from_name(const std::string& torch_name);           // "float32"

// A vector in one pointer: its size and capacity sit in front of its elements on the heap, and
// an empty one (most of them) holds no block. A Value has three lists that are empty for nearly
// every value and is built once per pickle object; as std::vectors (three words each) they made
// a Value 152 bytes (issue 14). Reads like a std::vector; for elements that copy as bytes.
template <class T>
class CompactVec {
  // std::pair is not trivially copyable (its assignment is user-written) but copies as bytes.
  static_assert(std::is_trivially_copy_constructible_v<T> && std::is_trivially_destructible_v<T>);

 public:
  using value_type = T;
  using iterator = T*;
  using const_iterator = const T*;

  CompactVec() = default;
  CompactVec(std::initializer_list<T> xs) { assign(xs.begin(), xs.end()); }
  CompactVec(const std::vector<T>& xs) { assign(xs.data(), xs.data() + xs.size()); }  // NOLINT: reads like a vector
  CompactVec(const CompactVec& o) { assign(o.begin(), o.end()); }
  CompactVec(CompactVec&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  CompactVec& operator=(const CompactVec& o) {
    if (this != &o) assign(o.begin(), o.end());
    return *this;
  }
  CompactVec& operator=(CompactVec&& o) noexcept {
    if (this != &o) {
      std::free(h_);
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  CompactVec& operator=(const std::vector<T>& xs) {
    assign(xs.data(), xs.data() + xs.size());
    return *this;
  }
  CompactVec& operator=(std::initializer_list<T> xs) {
    assign(xs.begin(), xs.end());
    return *this;
  }
  ~CompactVec() { std::free(h_); }

  size_t size() const { return h_ ? h_->size : 0; }
  bool empty() const { return size() == 0; }
  size_t capacity() const { return h_ ? h_->cap : 0; }
  T* data() { return h_ ? reinterpret_cast<T*>(h_ + 1) : nullptr; }
  const T* data() const { return h_ ? reinterpret_cast<const T*>(h_ + 1) : nullptr; }
  T* begin() { return data(); }
  T* end() { return data() + size(); }
  const T* begin() const { return data(); }
  const T* end() const { return data() + size(); }
  T& operator[](size_t k) { return data()[k]; }
  const T& operator[](size_t k) const { return data()[k]; }
  T& front() { return data()[0]; }
  const T& front() const { return data()[0]; }
  T& back() { return data()[size() - 1]; }
  const T& back() const { return data()[size() - 1]; }
  operator std::span<const T>() const { return {data(), size()}; }  // NOLINT: reads like a vector
  std::vector<T> to_vector() const { return {begin(), end()}; }
  friend bool operator==(const CompactVec& a, const CompactVec& b) {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
  }

  void reserve(size_t n) {
    if (n > capacity()) regrow(n);
  }
  void push_back(const T& x) {
    const T copy = x;  // x may be an element of this vector
    if (size() == capacity()) regrow(std::max<size_t>(4, capacity() * 2));
    std::memcpy(static_cast<void*>(data() + h_->size), &copy, sizeof(T));
    ++h_->size;
  }
  template <class... A>
  T& emplace_back(A&&... args) {
    push_back(T(std::forward<A>(args)...));
    return back();
  }
  void pop_back() { --h_->size; }
  void clear() {
    if (h_) h_->size = 0;
  }
  void resize(size_t n) {
    reserve(n);
    if (n == 0 && !h_) return;
    for (size_t k = h_->size; k < n; ++k) new (data() + k) T();
    h_->size = n;
  }
  void assign(const T* first, const T* last) {
    const size_t n = static_cast<size_t>(last - first);
    if (n == 0) {
      clear();
      return;
    }
    if (n > capacity()) {
      std::free(h_);
      h_ = nullptr;
      regrow(n);
    }
    std::memmove(static_cast<void*>(data()), first, n * sizeof(T));
    h_->size = n;
  }

 private:
  struct Head {
    size_t size, cap;
  };
  void regrow(size_t cap) {
    auto* h = static_cast<Head*>(std::realloc(static_cast<void*>(h_), sizeof(Head) + cap * sizeof(T)));
    if (!h) throw std::bad_alloc();
    if (!h_) h->size = 0;
    h->cap = cap;
    h_ = h;
  }
  Head* h_ = nullptr;
};

using StorageId = uint32_t;
using TensorId = uint32_t;
using ValueId = uint32_t;
constexpr ValueId kNoValue = 0xFFFFFFFFu;

struct Storage {
  DType dtype = DType::f32;
  uint64_t nbytes = 0;
  std::span<const uint8_t> bytes;   // into the mapped input (or into `owned`)
  std::vector<uint8_t> owned;       // set when a transform rewrote the payload
  std::string source;               // where it came from, e.g. "archive/data/3"
  // Where `bytes` lie in the input (file descriptor, offset, the CRC left to check) is the
  // container's business, not the model's: see modelcdr/byte_ranges.hpp.
  void set_owned(std::vector<uint8_t> data) {
    owned = std::move(data);
    bytes = std::span<const uint8_t>(owned.data(), owned.size());
    nbytes = owned.size();
  }
};

enum class TensorKind : uint8_t {
  dense, quantized_per_tensor, quantized_per_channel, sparse_coo,
  sparse_csr, sparse_csc, sparse_bsr, sparse_bsc,  // compressed: torch 2.x's _rebuild_sparse_tensor
};
inline bool is_sparse(TensorKind k) { return k >= TensorKind::sparse_coo; }
inline bool is_sparse_compressed(TensorKind k) { return k > TensorKind::sparse_coo; }
// The one table of sparse layouts: the string torch pickles through _get_layout("torch.sparse_csr").
// The lifter maps an input's string to a kind with it; the writer emits the string from it.
inline const char* sparse_layout_name(TensorKind k) {
  switch (k) {
    case TensorKind::sparse_coo: return "torch.sparse_coo";
    case TensorKind::sparse_csr: return "torch.sparse_csr";
    case TensorKind::sparse_csc: return "torch.sparse_csc";
    case TensorKind::sparse_bsr: return "torch.sparse_bsr";
    case TensorKind::sparse_bsc: return "torch.sparse_bsc";
    default: return nullptr;
  }
}

struct Tensor {
  TensorKind kind = TensorKind::dense;
  DType dtype = DType::f32;
  StorageId storage = 0;             // dense and quantized
  int64_t storage_offset = 0;        // elements
  std::vector<int64_t> shape, stride;
  bool requires_grad = false;
  bool is_parameter = false;         // rebuilt via _rebuild_parameter
  bool param_requires_grad = true;
  // quantized
  double q_scale = 0.0;
  int64_t q_zero_point = 0;
  TensorId q_scales = 0, q_zero_points = 0;  // per-channel: tensors
  int64_t q_axis = 0;
  // sparse COO: indices / values tensors and coalesced flag; shape holds the dense size.
  // Compressed (CSR/CSC/BSR/BSC): sparse_indices = compressed (crow/ccol), sparse_plain = plain (col/row).
  TensorId sparse_indices = 0, sparse_values = 0, sparse_plain = 0;
  std::optional<bool> sparse_coalesced;
};

enum class ValueKind : uint8_t {
  none, boolean, integer, big_integer, floating, complex, string, bytes,
  list, tuple, dict, ordered_dict, set, tensor, dropped,
  // Appended for numpy / scikit-learn models (cdr/class_registry.hpp, docs/REGISTRY.md):
  ndarray,      // numpy array: numeric/structured data in `tensor`, object arrays in `items`
  numpy_dtype,  // numpy dtype: `text` = dtype code ("f8", "V56", "O8"), `state` = its state tuple
  object,       // instance of a vetted registry class: `class_id`, constructor `items`, `state`
};

// A torch value type that is plain data plus a type the output may name (torch 2.x's
// weights_only loader constructs both): a tuple of ints that is a torch.Size, a string that is
// a torch.device ("cuda:0"). Writers that cannot name the type write the plain value (reported).
enum class TorchType : uint8_t { none, size, device };

struct Value {  // 104 bytes: one per lifted pickle object (the lists are CompactVecs)
  ValueKind kind = ValueKind::none;
  TorchType torch_type = TorchType::none;  // tuple: torch.Size; string: torch.device
  bool b = false;
  bool fortran_order = false;       // ndarray: bytes are in Fortran (column-major) order
  int64_t i = 0;
  double f = 0.0, imag = 0.0;
  std::string text;                 // string / bytes / big_integer (LE two's complement bytes)
  CompactVec<ValueId> items;        // list / tuple / set
  CompactVec<std::pair<ValueId, ValueId>> entries;  // dict / ordered_dict (insertion order)
  ValueId metadata = kNoValue;      // ordered_dict: the state dict's `_metadata` attribute
  TensorId tensor = 0;              // tensor
  // (kind dropped: emitted as None; what and why are in the finding that dropped it, not here:
  // a Value is one per pickle node, and two strings per node cost 64 bytes each.)
  // numpy and registry objects (appended; zero/empty for every other kind):
  uint32_t class_id = 0;            // object: index into cdr::ClassRegistry (never a name from the input)
  ValueId state = kNoValue;         // object: BUILD state; ndarray: its numpy_dtype; numpy_dtype: state tuple
  CompactVec<int64_t> array_shape;  // ndarray: numpy shape
};

// A module tree lifted from a whole-model pickle: paths and class names as data only.
struct ModuleInfo {
  std::string path;        // "" for the root, "layer1.0" ...
  std::string class_module, class_name;
  std::vector<std::string> parameters, buffers;
};

// ndarray values: `tensor` views the array bytes as a contiguous tensor (numeric dtypes: same
// dtype and shape, strides of the numpy order; structured/string dtypes: a flat uint8 tensor of
// numel x itemsize bytes). Object arrays (dtype 'O') hold their elements in `items`, C order.

struct Model {
  std::vector<Storage> storages;
  std::vector<Tensor> tensors;
  std::vector<Value> values;        // arena; a value referenced twice is shared (same object)
  ValueId root = kNoValue;
  std::vector<ModuleInfo> architecture;  // non-empty when a whole module was converted
  Findings findings;                // what the lifter dropped or converted, with locations
  // String key/value metadata of the input file (safetensors `__metadata__`), kept as data;
  // writers that can hold it (safetensors) write it back, the others report it as dropped.
  std::vector<std::pair<std::string, std::string>> file_metadata;

  ValueId add(Value v) {
    values.push_back(std::move(v));
    return static_cast<ValueId>(values.size() - 1);
  }
};

}  // namespace modelcdr::model
