// The vetted class registry (docs/REGISTRY.md): classes whose pickled state is plain data, so
// an instance can be rebuilt from (class id, constructor arguments, state) with nothing run
// but the class's own __setstate__/__dict__ update. The lifter turns NEWOBJ/REDUCE + BUILD of
// a registered class into a model::Value of kind `object` that carries only the table index;
// the pickle writer emits the class global from this table, never from a string of the input.
// Users extend the table one class at a time with a policy file ({"allow_classes": [...]},
// the analogue of torch.serialization.add_safe_globals); wildcards are refused.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::cdr {

// How the pickle creates the instance:
//   newobj: cls.__new__(cls) -- NEWOBJ with an empty tuple (or copyreg._reconstructor(cls,
//           object, None) in protocols 0/1), then BUILD with a dict state.
//   reduce: cls(*args) -- REDUCE with an argument tuple of plain data, then BUILD (only for
//           classes whose constructor merely allocates from those arguments, e.g. sklearn's Tree).
//   type_ref: the class object itself, never instantiated (numpy.float64 as an estimator's
//           `dtype` hyper-parameter): written as a bare GLOBAL.
enum class Construct : uint8_t { newobj, reduce, type_ref };

struct RegistryClass {
  std::string module, name;
  Construct construct = Construct::newobj;
  std::string why;      // one line: why its state is plain data
  bool user = false;    // added by a policy file
  // BUILD state is a tuple its __setstate__ copies (Cython classes: sklearn's KDTree, its
  // distance metrics), not a __dict__ update.
  bool tuple_state = false;
};

class ClassRegistry {
 public:
  // The built-in vetted table.
  static ClassRegistry defaults();
  // The process-wide registry used by readers: defaults() plus what the CLI's --policy added.
  static ClassRegistry& active();

  std::optional<uint32_t> find(std::string_view module, std::string_view name) const;
  const RegistryClass& at(uint32_t id) const { return classes_[id]; }
  size_t size() const { return classes_.size(); }
  const std::vector<RegistryClass>& classes() const { return classes_; }

  // Adds "package.module.Class" (last dot splits module and name). Rejects wildcards, empty
  // parts and anything that is not a dotted Python identifier. Error rule: policy.bad-class.
  Status allow(const std::string& dotted, Construct construct = Construct::newobj);
  // Reads {"allow_classes": ["module.Class", ...]} (also accepts {"module.Class": "reduce"}
  // entries under "allow_reduce"). Error rules: policy.unreadable, policy.bad-json, policy.bad-class.
  Status load_policy_file(const std::string& path);

 private:
  std::vector<RegistryClass> classes_;
};

// numpy dtype codes as they appear in pickles: numpy.dtype('<code>', False, True).
struct NumpyCode {
  char kind = 0;           // 'b' 'i' 'u' 'f' 'c' 'O' 'V' 'S' 'U'
  uint64_t itemsize = 0;   // bytes per element
  std::optional<model::DType> dtype;  // the torch dtype of a numeric code
};
std::optional<NumpyCode> parse_numpy_code(std::string_view code);

}  // namespace modelcdr::cdr
