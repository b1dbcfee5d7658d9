// Writers for the flat tensor formats: safetensors (docs/FORMATS.md §6) and NumPy .npz (§7.2).
// Both flatten the Model IR into named tensors first (dict keys joined with '.', list items
// by index; a bare tensor is "arr_0"). Tensors that share storage as the identical view are
// written once, with the other names recorded as aliases (safetensors: `__metadata__`
// "modelcdr.aliases"); overlapping but different views are written as separate copies.
// Non-contiguous views are gathered in C order chunk-wise (never a whole-model buffer).
// Non-tensor data goes to `__metadata__` "modelcdr.extra" as JSON where it can be JSON;
// everything a target cannot hold (quantized/sparse tensors, dtypes it lacks, bytes, ...)
// is reported as dropped in the findings passed in. Nothing is dropped silently.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "io/atomic_output.hpp"
#include "modelcdr/finding.hpp"
#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::formats {

struct NamedTensor {
  std::string name;
  model::TensorId tensor = 0;
  // A fixed-width string array (npz/npy targets only): its .npy descr ("|S5", "<U3") and numpy
  // shape; `tensor` is then a flat u8 tensor of the raw bytes.
  std::string text_descr;
  std::vector<int64_t> array_shape;
  bool fortran_order = false;
};

struct FlatModel {
  std::vector<NamedTensor> tensors;                        // flatten order
  std::vector<std::pair<std::string, std::string>> extra;  // path -> JSON text of non-tensor data
};
// `what` names the target format in findings ("safetensors", "npz").
// Fails (limits.expansion, limits.depth) when shared structure would expand beyond a budget
// linear in the model, or values nest too deeply.
Result<FlatModel> flatten_model(const model::Model& m, const std::string& what, Findings& findings);

// Streams the tensor's elements in C (row-major) order to `sink`, in bounded chunks.
// Checks the view against its storage first.
Status stream_tensor(const model::Model& m, const model::Tensor& t,
                     const std::function<Status(std::span<const uint8_t>)>& sink);
bool is_c_contiguous(const model::Tensor& t);
uint64_t tensor_nbytes(const model::Tensor& t);

// Safetensors dtype string for an IR dtype, or nullptr when safetensors lacks it.
const char* safetensors_dtype(model::DType d);

Status write_safetensors(const model::Model& m, io::AtomicOutput& out, Findings& findings);
// The .npy header numpy writes (64-byte aligned, version 1.0).
std::string npy_header_text(const char* descr, const std::vector<int64_t>& shape, bool fortran_order = false);
Status write_npz(const model::Model& m, io::AtomicOutput& out, Findings& findings);
// A single array as a bare .npy (what an .npy input holds); more than one array is an error.
Status write_npy(const model::Model& m, io::AtomicOutput& out, Findings& findings);

}  // namespace modelcdr::formats
