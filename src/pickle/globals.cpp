#include "pickle/globals.hpp"

#include <iterator>

namespace modelcdr::pickle {

namespace {
constexpr GlobalRow kRows[] = {
#define MCDR_EMIT(id, module, name, streams, roles) {module, name, streams, roles},
#define MCDR_GLOBAL(module, name, roles) {module, name, 0, roles},
#define MCDR_CLASS(module, name, construct, why) {module, name, 0, kGRegistry},
#define MCDR_CLASS_KNOWN(module, name, construct, why) {module, name, 0, kGRegistry | kGKnown},
#include "pickle/globals.def"
};
}  // namespace

std::span<const GlobalRow> globals_table() { return kRows; }

bool has_role(std::string_view module, std::string_view name, uint16_t roles) {
  for (const auto& r : kRows)
    if ((r.roles & roles) && r.name == name && r.module == module) return true;
  return false;
}

}  // namespace modelcdr::pickle
