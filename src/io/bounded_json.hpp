// JSON from an input checked before any DOM is built: one SAX pass (nlohmann's parser is
// iterative) that bounds nesting and the number of elements, finds duplicate keys at any
// level, and records the root object's keys in document order. Callers that need a DOM then
// get plain nlohmann::json (std::map objects: O(log n) per key), built in the same pass, and
// use the recorded order where order matters; nlohmann::ordered_json finds each inserted key by linear search,
// which is quadratic on a header of 360 000 keys.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "modelcdr/limits.hpp"

namespace modelcdr::io {

struct JsonLimits {
  uint32_t max_depth = limits::kMaxDepth;  // nested arrays/objects
  uint64_t max_elements = 8u << 20;        // values plus keys
};

struct JsonShape {
  bool valid = false;        // well-formed UTF-8 JSON, nothing after the value
  bool too_deep = false;     // stopped: nesting beyond max_depth
  bool too_many = false;     // stopped: more elements than max_elements
  std::optional<std::string> duplicate_key;  // first key seen twice in one object
  std::vector<std::string> root_keys;        // the root object's keys, in document order
  bool ok() const { return valid && !too_deep && !too_many && !duplicate_key; }
};

JsonShape inspect_json(std::string_view text, const JsonLimits& limits = {});
// The same checks in the same pass that builds a DOM (std::map objects); the DOM is null
// unless shape.ok().
nlohmann::json parse_json(std::string_view text, const JsonLimits& limits, JsonShape& shape);

// The error for a shape past its limits or with a duplicate key (limits.depth,
// limits.json-elements, json.duplicate-key); nullopt when none (validity is the caller's).
std::optional<Error> limit_error(const JsonShape& shape, const JsonLimits& limits);

}  // namespace modelcdr::io
