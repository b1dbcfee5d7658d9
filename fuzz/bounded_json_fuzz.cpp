// libFuzzer target: the bounded JSON reader (src/io/bounded_json.cpp) with small limits, so
// the depth and element limits are reached. inspect_json and parse_json must agree, and no DOM is
// built for a shape that is not ok. Seeds: fuzz/seeds/bounded_json/.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "io/bounded_json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcdr::io;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  JsonLimits limits;
  limits.max_depth = 16;
  limits.max_elements = 2000;
  JsonShape seen = inspect_json(text, limits);
  JsonShape built;
  nlohmann::json dom = parse_json(text, limits, built);
  if (seen.ok() != built.ok() || seen.root_keys != built.root_keys) __builtin_trap();
  if (!built.ok() && !dom.is_null()) __builtin_trap();
  (void)limit_error(built, limits);
  return 0;
}
