// Names for the tensors of a lifted model: dotted paths through the root's dicts, lists and
// tuples ("features.0.weight", "state_dict.fc.bias", "0"), in insertion order.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "modelcdr/model.hpp"

namespace modelcdr::stego {

struct NamedTensor {
  std::string name;
  model::TensorId tensor;
};

// Every tensor reachable from the root, first path wins for tensors reachable twice.
std::vector<NamedTensor> named_tensors(const model::Model& m);

// Elements of the storage a dense tensor covers when it is contiguous: [first, first + count).
// False for non-dense or non-contiguous tensors and for views outside their storage.
bool contiguous_span(const model::Model& m, const model::Tensor& t, uint64_t& first, uint64_t& count);

}  // namespace modelcdr::stego
