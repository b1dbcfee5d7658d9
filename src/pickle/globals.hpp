// The one globals table (pickle/globals.def): every (module, name) Python global modelcdr knows,
// with the roles it plays. Lookups only compare names; nothing is imported.
#pragma once
#include <cstdint>
#include <span>
#include <string_view>

namespace modelcdr::pickle {

enum GlobalRole : uint16_t {
  kGKnown = 1 << 0,     // the lifter turns it into plain data or a tensor
  kGSafe = 1 << 1,      // the scan verdict's safe library classes
  kGData = 1 << 2,      // rebuilt from data in joblib / pickle files
  kGLifted = 1 << 3,    // matched by name in the lifter only
  kGDanger = 1 << 4,    // a builtin whose use is critical
  kGRegistry = 1 << 5,  // a class of the built-in class registry
};
inline constexpr uint8_t kEmitCheckpoint = 1, kEmitPlain = 2, kEmitBoth = 3;

struct GlobalRow {
  std::string_view module, name;
  uint8_t emit;    // kEmit* bits: which emitted streams may name it (0: never written)
  uint16_t roles;  // GlobalRole bits
};

std::span<const GlobalRow> globals_table();
// True when (module, name) is a row with any of `roles`.
bool has_role(std::string_view module, std::string_view name, uint16_t roles);

}  // namespace modelcdr::pickle
