#include "io/bounded_json.hpp"

#include <nlohmann/json.hpp>
#include <unordered_set>

namespace modelcdr::io {

namespace {

using json = nlohmann::json;

// SAX handler: returning false stops the parse at once (no work past a limit).
class Inspector {
 public:
  Inspector(const JsonLimits& l, JsonShape& s) : lim_(l), s_(s) {}

  bool null() { return element(); }
  bool boolean(bool) { return element(); }
  bool number_integer(json::number_integer_t) { return element(); }
  bool number_unsigned(json::number_unsigned_t) { return element(); }
  bool number_float(json::number_float_t, const json::string_t&) { return element(); }
  bool string(json::string_t&) { return element(); }
  bool binary(json::binary_t&) { return element(); }
  bool start_object(std::size_t) { return open(true); }
  bool end_object() { return close(); }
  bool start_array(std::size_t) { return open(false); }
  bool end_array() { return close(); }
  bool key(json::string_t& k) {
    if (!element()) return false;
    auto& keys = objects_.back();
    if (!keys.insert(k).second) {
      s_.duplicate_key = k;
      return false;
    }
    if (objects_.size() == 1 && depth_ == 1) s_.root_keys.push_back(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }

 private:
  bool element() {
    if (++elements_ > lim_.max_elements) {
      s_.too_many = true;
      return false;
    }
    return true;
  }
  bool open(bool object) {
    if (!element()) return false;
    if (++depth_ > lim_.max_depth) {
      s_.too_deep = true;
      return false;
    }
    if (object) objects_.emplace_back();
    is_object_.push_back(object);
    return true;
  }
  bool close() {
    --depth_;
    if (is_object_.back()) objects_.pop_back();
    is_object_.pop_back();
    return true;
  }

  const JsonLimits& lim_;
  JsonShape& s_;
  uint64_t elements_ = 0;
  uint32_t depth_ = 0;
  std::vector<std::unordered_set<std::string>> objects_;  // keys of each open object
  std::vector<bool> is_object_;                            // per open container
};

}  // namespace

JsonShape inspect_json(std::string_view text, const JsonLimits& limits) {
  JsonShape shape;
  Inspector in(limits, shape);
  shape.valid = json::sax_parse(text.begin(), text.end(), &in, json::input_format_t::json, /*strict=*/true);
  return shape;
}

std::optional<Error> limit_error(const JsonShape& shape, const JsonLimits& limits) {
  if (shape.too_deep) return make_error("limits.depth", "JSON nests deeper than " + std::to_string(limits.max_depth) + " levels");
  if (shape.too_many)
    return make_error("limits.json-elements", "JSON has more than " + std::to_string(limits.max_elements) + " elements");
  if (shape.duplicate_key)
    return make_error("json.duplicate-key", "key '" + shape.duplicate_key->substr(0, 100) +
                                                "' appears twice in one object (parsers disagree on which wins)");
  return std::nullopt;
}

}  // namespace modelcdr::io
