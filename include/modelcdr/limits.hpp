// Bounds shared by every walk over input-driven structure (docs/RULES.md, "Limits").
// One nesting bound for all recursive walks (lifter, emitters, flatteners, module trees, JSON),
// one rule for shared structure that would be expanded once per path.
#pragma once
#include <cstdint>

#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr {

// Per-Engine bounds on input-driven work (docs/API.md). 0 keeps the built-in default; a
// value larger than the built-in default is clamped to it (an Engine can only be stricter).
struct EngineLimits {
  uint64_t max_input_bytes = 0;      // a larger source is rejected (limits.input-size); 0: no cap
  uint64_t max_pickle_ops = 0;       // opcodes executed per pickle stream (50M)
  uint64_t max_pickle_nodes = 0;     // value-graph nodes per pickle stream (5M; bounds memory)
  uint64_t max_container_items = 0;  // items appended across all containers of a stream (100M)
};

}  // namespace modelcdr

namespace modelcdr::limits {

// Values, modules and JSON nest at most this deep (`limits.depth`). Real checkpoints nest
// under 20 levels; each recursive walk spends a few small frames per level, so this stays far
// below an 8 MiB stack (and below 1 MiB for worker threads).
inline constexpr uint32_t kMaxDepth = 512;

// Work a walk may spend expanding shared structure (a value or module reached by two paths
// is visited once per path when it must be written out as a tree: flattened names, JSON,
// module state dicts). Linear in the graph it walks, so a DAG of n nodes (2^n paths) is
// rejected (`limits.expansion`) instead of exhausting time and memory.
// `floor` lets small inputs keep some slack; walks whose every step is costly (a module visit
// records a ModuleInfo and a path) use a small one.
inline constexpr uint64_t expansion_budget(uint64_t graph_size, uint64_t floor = 1ull << 20) {
  return 4 * graph_size + floor;
}
inline constexpr uint64_t kModuleBudgetFloor = 4096;

// A counted budget: spend() fails once more than the budget was asked for.
class Budget {
 public:
  explicit Budget(uint64_t units) : left_(units) {}
  bool spend(uint64_t units = 1) {
    if (units > left_) {
      left_ = 0;
      exhausted_ = true;
      return false;
    }
    left_ -= units;
    return true;
  }
  bool exhausted() const { return exhausted_; }

 private:
  uint64_t left_;
  bool exhausted_ = false;
};

Error too_deep(const std::string& what);          // limits.depth
Error too_much_expansion(const std::string& what); // limits.expansion

// Checks, without recursion and in time linear in the value graph, that no value of `m`
// nests deeper than kMaxDepth and that no value contains itself. Run on every model a reader
// produced, before any writer walks it.
Status check_value_graph(const model::Model& m);

}  // namespace modelcdr::limits
