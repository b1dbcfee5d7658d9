// Sparse tensor invariants (sparse_check.hpp). The checks and their wording follow torch's
// _validate_sparse_coo_tensor_args and _validate_sparse_compressed_tensor_args (ATen's
// SparseTensor.cpp, SparseCsrTensor.cpp, ValidateCompressedIndicesCommon.h): a file torch
// itself wrote always passes, so nothing valid is refused.
#include "cdr/sparse_check.hpp"

#include <cstring>
#include <unordered_map>

#include "stego/tensor_names.hpp"

namespace modelcdr::cdr {

namespace {

using model::DType;
using model::Model;
using model::Tensor;
using model::TensorKind;

std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

const char* dtype_name(DType d) { return model::dtype_info(d).name; }

// The integer elements of a dense index tensor, read in place from its storage. Element
// offsets use the tensor's own strides, so a non-contiguous view reads what torch would.
class Ints {
 public:
  Ints(const Model& m, const Tensor& t) : t_(t) {
    if (t.storage < m.storages.size()) bytes_ = m.storages[t.storage].bytes;
    esz_ = t.dtype == DType::i64 ? 8 : 4;
  }
  // Storage element of entry 0 of batch `b` (the leading `batch_ndim` dims, C order).
  int64_t batch_base(uint64_t b, size_t batch_ndim) const {
    int64_t off = t_.storage_offset;
    for (size_t k = batch_ndim; k-- > 0;) {
      uint64_t n = static_cast<uint64_t>(t_.shape[k]);
      off += static_cast<int64_t>(b % n) * t_.stride[k];
      b /= n;
    }
    return off;
  }
  // Entry `i` along dim `d` from `base`; false when it lies outside the storage (the lifter's
  // view check makes that impossible; a short storage is refused all the same).
  bool get(int64_t base, size_t d, int64_t i, int64_t& v) const {
    int64_t e = base + i * t_.stride[d];
    if (e < 0 || static_cast<uint64_t>(e) >= bytes_.size() / esz_) return false;
    const uint8_t* p = bytes_.data() + static_cast<uint64_t>(e) * esz_;
    if (esz_ == 8) {
      int64_t x;
      std::memcpy(&x, p, 8);
      v = x;
    } else {
      int32_t x;
      std::memcpy(&x, p, 4);
      v = x;
    }
    return true;
  }

 private:
  const Tensor& t_;
  std::span<const uint8_t> bytes_;
  uint32_t esz_ = 8;
};

const char* kOutsideStorage = "an index element lies outside its storage";

std::optional<std::string> negative_size(const Tensor& t) {
  for (size_t d = 0; d < t.shape.size(); ++d)
    if (t.shape[d] < 0) return "size " + shape_text(t.shape) + " has a negative dimension";
  return std::nullopt;
}

// COO: indices (sparse_dim x nnz, int64) in [0, size[d]); values (nnz, *dense size).
std::optional<std::string> coo(const Model& m, const Tensor& t) {
  const Tensor& idx = m.tensors[t.sparse_indices];
  const Tensor& val = m.tensors[t.sparse_values];
  if (auto e = negative_size(t)) return e;
  if (idx.dtype != DType::i64) return std::string("indices must be an int64 tensor, got ") + dtype_name(idx.dtype);
  if (idx.shape.size() != 2) return "indices must be sparse_dim x nnz, but got: " + shape_text(idx.shape);
  const int64_t sparse_dim = idx.shape[0], nnz = idx.shape[1];
  // torch expands 0-dim values to shape [1] (expand_values_if_needed).
  std::vector<int64_t> vshape = val.shape.empty() ? std::vector<int64_t>{1} : val.shape;
  const int64_t dense_dim = static_cast<int64_t>(vshape.size()) - 1;
  if (static_cast<int64_t>(t.shape.size()) != sparse_dim + dense_dim)
    return "number of dimensions must be sparse_dim (" + std::to_string(sparse_dim) + ") + dense_dim (" +
           std::to_string(dense_dim) + "), but got " + std::to_string(t.shape.size());
  if (vshape[0] != nnz)
    return "indices and values must have same nnz, but got nnz from indices: " + std::to_string(nnz) +
           ", nnz from values: " + std::to_string(vshape[0]);
  for (int64_t k = 0; k < dense_dim; ++k)
    if (vshape[1 + k] != t.shape[sparse_dim + k])
      return "values has incorrect size " + shape_text(vshape) + " for size " + shape_text(t.shape);
  Ints ix(m, idx);
  const int64_t base = idx.storage_offset;
  // Row by row: the order the bytes lie in for a contiguous indices tensor.
  for (int64_t d = 0; d < sparse_dim; ++d) {
    for (int64_t j = 0; j < nnz; ++j) {
      int64_t v = 0;
      if (!ix.get(base + d * idx.stride[0], 1, j, v)) return std::string(kOutsideStorage);
      if (v < 0) return "found negative index " + std::to_string(v) + " for dim " + std::to_string(d);
      if (v >= t.shape[d])
        return "size is inconsistent with indices: for dim " + std::to_string(d) + ", size is " +
               std::to_string(t.shape[d]) + " but found index " + std::to_string(v);
    }
  }
  // A tensor marked coalesced must have sorted, distinct index columns (kernels rely on it).
  if (t.sparse_coalesced.value_or(false) && nnz > 1) {
    for (int64_t j = 1; j < nnz; ++j) {
      int order = 0;  // -1: column j-1 < column j
      for (int64_t d = 0; d < sparse_dim && order == 0; ++d) {
        int64_t a = 0, b = 0;
        int64_t row = base + d * idx.stride[0];
        if (!ix.get(row, 1, j - 1, a) || !ix.get(row, 1, j, b)) return std::string(kOutsideStorage);
        order = a < b ? -1 : a > b ? 1 : 0;
      }
      if (order >= 0) return std::string("cannot set is_coalesced to true if indices correspond to uncoalesced COO tensor");
    }
  }
  return std::nullopt;
}

struct CompressedNames {
  const char* compressed;  // crow_indices / ccol_indices
  const char* plain;       // col_indices / row_indices
  const char* plain_dim;   // ncols / nrows
};

CompressedNames names_of(TensorKind k) {
  bool row = k == TensorKind::sparse_csr || k == TensorKind::sparse_bsr;
  return row ? CompressedNames{"crow_indices", "col_indices", "ncols"}
             : CompressedNames{"ccol_indices", "row_indices", "nrows"};
}

// Shapes of a compressed tensor: dtypes, dimensionalities, batch and block sizes, nnz.
struct CompressedShape {
  size_t batch_ndim = 0;
  int64_t ncompressed = 0, nplain = 0, nnz = 0;
  uint64_t batches = 1;
};

std::optional<std::string> compressed_shape(const Tensor& t, const Tensor& ci, const Tensor& pi, const Tensor& val,
                                            CompressedShape& s) {
  const CompressedNames n = names_of(t.kind);
  const bool row = t.kind == TensorKind::sparse_csr || t.kind == TensorKind::sparse_bsr;
  const bool blocked = t.kind == TensorKind::sparse_bsr || t.kind == TensorKind::sparse_bsc;
  if (auto e = negative_size(t)) return e;
  if (ci.dtype != pi.dtype)
    return std::string("compressed_indices and plain_indices must have the same dtype, but got ") + dtype_name(ci.dtype) +
           " and " + dtype_name(pi.dtype);
  if (ci.dtype != DType::i32 && ci.dtype != DType::i64)
    return std::string("compressed_indices and plain_indices dtype must be Int or Long, but got ") + dtype_name(ci.dtype);
  if (ci.shape.empty()) return std::string(n.compressed) + " must have dimensionality >= 1 but got 0";
  if (pi.shape.size() != ci.shape.size())
    return std::string("compressed_indices and plain_indices dimensionalities must be equal but got ") +
           std::to_string(ci.shape.size()) + " and " + std::to_string(pi.shape.size());
  s.batch_ndim = ci.shape.size() - 1;
  const size_t b = s.batch_ndim, block_ndim = blocked ? 2 : 0;
  if (t.shape.size() < b + 2)
    return "tensor dimensionality must be at least batch (" + std::to_string(b) + ") + 2, but got " +
           std::to_string(t.shape.size());
  const size_t dense_ndim = t.shape.size() - b - 2;
  if (val.shape.size() != b + 1 + block_ndim + dense_ndim)
    return "values dimensionality must be " + std::to_string(b + 1 + block_ndim + dense_ndim) + " but got " +
           std::to_string(val.shape.size());
  if (ci.shape.back() > 1 && ci.stride.back() != 1)
    return std::string("expected ") + n.compressed + " to be a contiguous tensor per batch";
  if (pi.shape.back() > 1 && pi.stride.back() != 1)
    return std::string("expected ") + n.plain + " to be a contiguous tensor per batch";
  for (size_t k = 0; k < b; ++k) {
    if (ci.shape[k] != t.shape[k] || pi.shape[k] != t.shape[k] || val.shape[k] != t.shape[k])
      return "all batch dimensions of compressed_indices " + shape_text(ci.shape) + ", plain_indices " +
             shape_text(pi.shape) + ", values " + shape_text(val.shape) + " and size " + shape_text(t.shape) +
             " must be equal";
    s.batches *= static_cast<uint64_t>(t.shape[k]);
  }
  int64_t bs0 = blocked ? val.shape[b + 1] : 1, bs1 = blocked ? val.shape[b + 2] : 1;
  if (bs0 <= 0 || bs1 <= 0) return "blocksize (" + std::to_string(bs0) + ", " + std::to_string(bs1) + ") must be positive";
  if (t.shape[b] % bs0 != 0 || t.shape[b + 1] % bs1 != 0)
    return "size " + shape_text(t.shape) + " is not divisible by the blocksize (" + std::to_string(bs0) + ", " +
           std::to_string(bs1) + ")";
  const int64_t rows = t.shape[b] / bs0, cols = t.shape[b + 1] / bs1;
  s.ncompressed = row ? rows : cols;
  s.nplain = row ? cols : rows;
  if (ci.shape.back() != s.ncompressed + 1)
    return std::string(n.compressed) + ".shape[-1] must be " + std::to_string(s.ncompressed + 1) + ", but got " +
           std::to_string(ci.shape.back());
  s.nnz = pi.shape.back();
  if (val.shape[b] != s.nnz)
    return "number of " + std::string(n.plain) + " and values must be equal (nnz), but got " + std::to_string(s.nnz) +
           " and " + std::to_string(val.shape[b]);
  for (size_t k = 0; k < dense_ndim; ++k)
    if (val.shape[b + 1 + block_ndim + k] != t.shape[b + 2 + k])
      return "values' dense dimensions " + shape_text(val.shape) + " do not match size " + shape_text(t.shape);
  return std::nullopt;
}

// Per batch, in one pass: compressed[0] == 0, 0 <= compressed[i] - compressed[i-1] <= nplain,
// compressed[-1] == nnz, plain in [0, nplain) and strictly increasing within each row (only
// the previous value is kept).
std::optional<std::string> compressed_indices(const Model& m, const Tensor& t, const Tensor& ci, const Tensor& pi,
                                              const CompressedShape& s) {
  const CompressedNames n = names_of(t.kind);
  const std::string cn = n.compressed, pn = n.plain;
  Ints c(m, ci), p(m, pi);
  const size_t cd = ci.shape.size() - 1, pd = pi.shape.size() - 1;
  for (uint64_t b = 0; b < s.batches; ++b) {
    const int64_t cbase = c.batch_base(b, s.batch_ndim), pbase = p.batch_base(b, s.batch_ndim);
    int64_t prev = 0;
    if (!c.get(cbase, cd, 0, prev)) return std::string(kOutsideStorage);
    if (prev != 0) return "`" + cn + "[..., 0] == 0` is not satisfied (got " + std::to_string(prev) + ")";
    for (int64_t i = 1; i <= s.ncompressed; ++i) {
      int64_t cur = 0;
      if (!c.get(cbase, cd, i, cur)) return std::string(kOutsideStorage);
      if (cur - prev < 0 || cur - prev > s.nplain)
        return "`0 <= " + cn + "[..., 1:] - " + cn + "[..., :-1] <= " + n.plain_dim + "` is not satisfied (at " +
               std::to_string(i) + ": " + std::to_string(prev) + " then " + std::to_string(cur) + ")";
      if (cur > s.nnz)
        return "`" + cn + "[..., -1] == nnz` is not satisfied (" + std::to_string(cur) + " > nnz " + std::to_string(s.nnz) + ")";
      int64_t last = -1;
      for (int64_t j = prev; j < cur; ++j) {
        int64_t v = 0;
        if (!p.get(pbase, pd, j, v)) return std::string(kOutsideStorage);
        if (v < 0 || v >= s.nplain)
          return "`0 <= " + pn + " < " + n.plain_dim + "` is not satisfied (" + pn + " " + std::to_string(v) + ", " +
                 n.plain_dim + " " + std::to_string(s.nplain) + ")";
        if (v <= last)
          return "`" + pn + "` is not sorted and distinct within " + (cn == "crow_indices" ? "row " : "column ") +
                 std::to_string(i - 1) + " (" + std::to_string(last) + " then " + std::to_string(v) + ")";
        last = v;
      }
      prev = cur;
    }
    if (prev != s.nnz)
      return "`" + cn + "[..., -1] == nnz` is not satisfied (" + std::to_string(prev) + " != " + std::to_string(s.nnz) + ")";
  }
  return std::nullopt;
}

bool dense_part(const Model& m, model::TensorId id) {
  return id < m.tensors.size() && m.tensors[id].kind == TensorKind::dense &&
         m.tensors[id].storage < m.storages.size() && m.tensors[id].shape.size() == m.tensors[id].stride.size();
}

}  // namespace

std::optional<std::string> sparse_violation(const Model& m, const Tensor& t) {
  if (!model::is_sparse(t.kind)) return std::nullopt;
  bool compressed = model::is_sparse_compressed(t.kind);
  if (!dense_part(m, t.sparse_indices) || !dense_part(m, t.sparse_values) ||
      (compressed && !dense_part(m, t.sparse_plain)))
    return std::string("a component is not a dense tensor");
  if (!compressed) return coo(m, t);
  const Tensor& ci = m.tensors[t.sparse_indices];
  const Tensor& pi = m.tensors[t.sparse_plain];
  CompressedShape s;
  if (auto e = compressed_shape(t, ci, pi, m.tensors[t.sparse_values], s)) return e;
  return compressed_indices(m, t, ci, pi, s);
}

size_t check_sparse_tensors(const Model& m, Findings& out) {
  constexpr size_t kMaxReported = 32;  // one line per tensor, then a count
  size_t bad = 0;
  std::optional<std::unordered_map<model::TensorId, std::string>> names;  // built on the first violation
  for (model::TensorId id = 0; id < m.tensors.size(); ++id) {
    const Tensor& t = m.tensors[id];
    auto why = sparse_violation(m, t);
    if (!why) continue;
    if (++bad > kMaxReported) continue;
    if (!names) {
      names.emplace();
      for (auto& nt : stego::named_tensors(m)) names->emplace(nt.tensor, std::move(nt.name));
    }
    auto it = names->find(id);
    std::string name = it != names->end() ? it->second : "#" + std::to_string(id);
    std::string layout = model::sparse_layout_name(t.kind);
    std::string entry = t.sparse_indices < m.tensors.size() && m.tensors[t.sparse_indices].storage < m.storages.size()
                            ? m.storages[m.tensors[t.sparse_indices].storage].source
                            : std::string();
    add_finding(out, Severity::high, Rule::cdr_sparse_invalid,
                "sparse tensor '" + name + "' (" + layout + ", size " + shape_text(t.shape) + ") breaks torch's sparse invariants: " + *why +
                    "; a loader that trusts it writes out of bounds",
                entry);
  }
  if (bad > kMaxReported)
    add_finding(out, Severity::high, Rule::cdr_sparse_invalid,
                std::to_string(bad - kMaxReported) + " more invalid sparse tensor(s) not listed");
  return bad;
}

}  // namespace modelcdr::cdr
