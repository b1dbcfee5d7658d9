// Rebuilding bytes that hold a pickle (a nested pickle) with modelcdr's own writer.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "cdr/lifter.hpp"

namespace modelcdr::cdr {

// Pickles inside pickles inside pickles: deeper ones are dropped (a bounded recursion).
constexpr uint32_t kMaxNestedPickleLevel = 3;

struct NestedPickleOptions {
  std::string entry;
  uint64_t offset = 0;          // of the bytes value in the outer pickle
  uint32_t max_depth = limits::kMaxDepth;
  const ClassRegistry* registry = nullptr;
};

// The rebuilt pickle, or nullopt when `data` is not one decodable pickle whose lifted value the
// pickle writer can hold (the caller then drops the value). Findings of the inner pickle (what
// was dropped inside it) and one cdr.nested-pickle-rebuilt are appended on success only.
std::optional<std::string> rebuild_nested_pickle(std::string_view data, const NestedPickleOptions& options,
                                                 Findings& findings);

}  // namespace modelcdr::cdr
