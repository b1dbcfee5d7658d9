// Sparse tensor invariants, checked on the lifted model before anything is written.
//
// torch 2.x's weights_only loader rebuilds sparse tensors with check_invariants=False and
// validates them only when torch.sparse.check_sparse_tensor_invariants is enabled; an index
// outside the dense size then makes to_dense() (and most kernels) write out of bounds. So
// every sparse tensor modelcdr reads is held to what torch's _validate_sparse_coo_tensor_args
// and _validate_sparse_compressed_tensor_args check, reading the index payloads in place
// (no copy, no allocation proportional to the input). A violation is cdr.sparse-invalid:
// disarm rejects the file, scan reports it as dangerous.
#pragma once
#include <optional>
#include <string>

#include "modelcdr/finding.hpp"
#include "modelcdr/model.hpp"

namespace modelcdr::cdr {

// What is wrong with sparse tensor `t` of `m` (empty when it is valid or not sparse). The
// component tensors must already have passed the lifter's view check (inside their storages).
std::optional<std::string> sparse_violation(const model::Model& m, const model::Tensor& t);

// One cdr.sparse-invalid finding per invalid sparse tensor of `m`, naming the tensor by its
// path in the model ("layer.weight"); returns how many were found.
size_t check_sparse_tensors(const model::Model& m, Findings& out);

}  // namespace modelcdr::cdr
