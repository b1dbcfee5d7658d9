// Writes a Model IR as a fresh pickle (--to pickle) or joblib file (--to joblib) for models
// lifted from pickles/joblib files: plain data, numpy arrays and dtypes, and objects of vetted
// registry classes. It walks the model; the opcodes come from the one emitter
// (pickle/pickle_emitter.hpp): every global is an EmitGlobal or a class of the class registry
// (cdr/class_registry.hpp) by id, never a string of the input, and every stream passes the
// emitter's self-check (verify_emitted) before it is returned or committed.
//   pickle: numpy arrays as numpy.core.multiarray._reconstruct + BUILD (1, shape, dtype,
//           fortran, bytes); registry objects as GLOBAL + NEWOBJ () / REDUCE args + BUILD state.
//   joblib: the same, but numeric arrays as joblib.numpy_pickle.NumpyArrayWrapper + BUILD with
//           the array bytes inline after 16-byte alignment padding, as joblib.dump writes them.
// Protocol 4 without frames. Torch tensors (from PyTorch inputs) are not expressible: error.
#pragma once
#include <cstdint>
#include <vector>

#include "io/atomic_output.hpp"
#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::cdr {
class ClassRegistry;
}

namespace modelcdr::formats {

struct PickleWriteOptions {
  bool joblib = false;
  const cdr::ClassRegistry* registry = nullptr;  // nullptr = cdr::ClassRegistry::active()
};

// In memory (nested pickles inside another output).
Result<std::vector<uint8_t>> emit_pickle(const model::Model& model, const PickleWriteOptions& options);
// Streamed to `out`, then checked through a window on what was written; the caller commits.
Status write_pickle(const model::Model& model, const PickleWriteOptions& options, io::AtomicOutput& out);

}  // namespace modelcdr::formats
