#include "io/bounded_json.hpp"

#include <algorithm>
#include <string>
#include <string_view>
#include <nlohmann/json.hpp>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <unordered_set>

namespace modelcdr::io {

namespace {

using json = nlohmann::json;

// SAX handler: returning false stops the parse at once (no work past a limit).
// The keys of one object: a few (most objects) in a vector searched linearly, more in a hash
// set; cleared, not freed, so a header of 360 000 small objects allocates almost nothing.
class KeySet {
 public:
  bool insert(const std::string& k) {
    if (big_.empty() && small_.size() < kSmall) {
      for (const auto& x : small_)
        if (x == k) return false;
      small_.push_back(k);
      return true;
    }
    if (big_.empty()) big_.insert(small_.begin(), small_.end());
    return big_.insert(k).second;
  }
  void clear() {
    small_.clear();
    if (!big_.empty()) big_ = {};
  }

 private:
  static constexpr size_t kSmall = 16;
  std::vector<std::string> small_;
  std::unordered_set<std::string> big_;
};

// The counting both passes share: elements against max_elements, nesting against max_depth,
// and the keys of each open object for the duplicate check. A false return stops the parse;
// too_many / too_deep say which limit stopped it.
class ShapeCounter {
 public:
  explicit ShapeCounter(const JsonLimits& l) : lim_(l) {}

  bool element() {
    if (++elements_ > lim_.max_elements) too_many = true;
    return !too_many;
  }
  bool open(bool object) {
    if (!element()) return false;
    if (++depth_ > lim_.max_depth) {
      too_deep = true;
      return false;
    }
    if (object && ++open_objects_ > objects_.size()) objects_.emplace_back();
    is_object_.push_back(object);
    return true;
  }
  bool close() {
    --depth_;
    if (is_object_.back()) objects_[--open_objects_].clear();
    is_object_.pop_back();
    return true;
  }
  // A key directly in the root object (its duplicates are found once, by sorting: finish()).
  bool in_root_object() const { return open_objects_ == 1 && depth_ == 1; }
  // False when the innermost open object already has the key.
  bool insert_key(const std::string& k) { return objects_[open_objects_ - 1].insert(k); }

  bool too_many = false;
  bool too_deep = false;

 private:
  const JsonLimits& lim_;
  uint64_t elements_ = 0;
  uint32_t depth_ = 0;
  std::vector<KeySet> objects_;  // keys of each open object; frames reused, not reallocated
  size_t open_objects_ = 0;
  std::vector<bool> is_object_;  // per open container
};

// Each event is checked first and then, when a DOM is wanted, handed to nlohmann's own DOM
// builder: one lexer pass for checks and DOM together.
using DomBuilder = nlohmann::detail::json_sax_dom_parser<json>;

class Inspector {
 public:
  Inspector(const JsonLimits& l, JsonShape& s, DomBuilder* dom) : c_(l), s_(s), dom_(dom) {}
  // Copies the limit flags into the shape; called once the parse has returned.
  void report_limits() {
    s_.too_many = c_.too_many;
    s_.too_deep = c_.too_deep;
  }

  bool null() { return c_.element() && (!dom_ || dom_->null()); }
  bool boolean(bool b) { return c_.element() && (!dom_ || dom_->boolean(b)); }
  bool number_integer(json::number_integer_t v) { return c_.element() && (!dom_ || dom_->number_integer(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return c_.element() && (!dom_ || dom_->number_unsigned(v)); }
  bool number_float(json::number_float_t v, const json::string_t& t) {
    return c_.element() && (!dom_ || dom_->number_float(v, t));
  }
  bool string(json::string_t& v) { return c_.element() && (!dom_ || dom_->string(v)); }
  bool binary(json::binary_t& v) { return c_.element() && (!dom_ || dom_->binary(v)); }
  bool start_object(std::size_t n) { return c_.open(true) && (!dom_ || dom_->start_object(n)); }
  bool end_object() { return c_.close() && (!dom_ || dom_->end_object()); }
  bool start_array(std::size_t n) { return c_.open(false) && (!dom_ || dom_->start_array(n)); }
  bool end_array() { return c_.close() && (!dom_ || dom_->end_array()); }
  bool key(json::string_t& k) {
    if (!c_.element()) return false;
    if (c_.in_root_object()) {
      s_.root_keys.push_back(k);
    } else if (!c_.insert_key(k)) {
      s_.duplicate_key = k;
      return false;
    }
    return !dom_ || dom_->key(k);
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }

 private:
  ShapeCounter c_;
  JsonShape& s_;
  DomBuilder* dom_;
};

// The root object's keys are not hashed while parsing (one hash node per key of a 360 000-key
// header costs more than the parse); a sort of views finds a duplicate among them afterwards.
void finish(JsonShape& shape) {
  if (!shape.valid || shape.duplicate_key || shape.root_keys.size() < 2) return;
  std::vector<std::string_view> keys(shape.root_keys.begin(), shape.root_keys.end());
  std::sort(keys.begin(), keys.end());
  auto dup = std::adjacent_find(keys.begin(), keys.end());
  if (dup != keys.end()) shape.duplicate_key = std::string(*dup);
}

// The fast first pass: RapidJSON's SAX reader (iterative, so no recursion on deep input;
// UTF-8 validated), with the same element, depth and duplicate-key counting as Inspector.
// nlohmann's lexer costs ~75 instructions a byte (10 M for a 135 KB manifest.json); RapidJSON
// about a tenth. It answers only "valid, within the limits, no duplicate key below the root":
// any parse error, limit or duplicate (and so any document the two parsers might judge
// differently, e.g. a number out of range or a byte-order mark) goes to nlohmann's pass, whose
// answer and diagnosis stand. tests/io/bounds_io_test.cpp checks that the two agree.
class FastInspector : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, FastInspector> {
 public:
  explicit FastInspector(const JsonLimits& l) : c_(l) {}

  bool Default() { return c_.element(); }  // null, bools and numbers
  bool String(const char*, rapidjson::SizeType, bool) { return c_.element(); }
  bool StartObject() { return c_.open(true); }
  bool EndObject(rapidjson::SizeType) { return c_.close(); }
  bool StartArray() { return c_.open(false); }
  bool EndArray(rapidjson::SizeType) { return c_.close(); }
  bool Key(const char* s, rapidjson::SizeType n, bool) {
    if (!c_.element()) return false;
    std::string k(s, n);
    if (!c_.in_root_object()) return c_.insert_key(k);
    root_keys_.push_back(std::move(k));
    return true;
  }
  std::vector<std::string>& root_keys() { return root_keys_; }

 private:
  ShapeCounter c_;
  std::vector<std::string> root_keys_;
};

// True (and the root keys in `shape`) when RapidJSON accepts the whole document within the
// limits; false leaves the answer to nlohmann's pass.
bool fast_inspect(std::string_view text, const JsonLimits& limits, JsonShape& shape) {
  // Both parsers read a raw NUL byte as the end of input; a text with one is left to nlohmann,
  // so that reading is its alone.
  if (text.find('\0') != std::string_view::npos) return false;
  // RapidJSON 1.1 (Debian's) takes a lone low surrogate ("\udc00") that nlohmann rejects; a
  // text with any \u escape is left to nlohmann (found by fuzz/bounded_json_fuzz.cpp).
  if (text.find("\\u") != std::string_view::npos) return false;
  FastInspector handler(limits);
  rapidjson::MemoryStream ms(text.data(), text.size());
  rapidjson::Reader reader;
  // UTF-8 validation is a third of RapidJSON's time; a text of ASCII bytes needs none.
  const bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  constexpr unsigned kFlags = rapidjson::kParseIterativeFlag;
  const bool parsed = ascii ? !reader.Parse<kFlags>(ms, handler).IsError()
                            : !reader.Parse<kFlags | rapidjson::kParseValidateEncodingFlag>(ms, handler).IsError();
  if (!parsed) return false;
  shape.valid = true;
  shape.root_keys = std::move(handler.root_keys());
  return true;
}

}  // namespace

JsonShape inspect_json(std::string_view text, const JsonLimits& limits) {
  JsonShape shape;
  if (fast_inspect(text, limits, shape)) {
    finish(shape);
    return shape;
  }
  Inspector in(limits, shape, nullptr);
  shape.valid = json::sax_parse(text.begin(), text.end(), &in, json::input_format_t::json, /*strict=*/true);
  in.report_limits();
  finish(shape);
  return shape;
}

nlohmann::json parse_json(std::string_view text, const JsonLimits& limits, JsonShape& shape) {
  shape = JsonShape{};
  json doc;
  DomBuilder dom(doc, /*allow_exceptions=*/false);
  Inspector in(limits, shape, &dom);
  shape.valid = json::sax_parse(text.begin(), text.end(), &in, json::input_format_t::json, /*strict=*/true) &&
                !doc.is_discarded();
  in.report_limits();
  finish(shape);
  if (!shape.ok()) return json();
  return doc;
}

std::optional<Error> limit_error(const JsonShape& shape, const JsonLimits& limits) {
  if (shape.too_deep) return make_error(Rule::limits_depth, "JSON nests deeper than " + std::to_string(limits.max_depth) + " levels");
  if (shape.too_many)
    return make_error(Rule::limits_json_elements, "JSON has more than " + std::to_string(limits.max_elements) + " elements");
  if (shape.duplicate_key)
    return make_error(Rule::json_duplicate_key, "key '" + shape.duplicate_key->substr(0, 100) +
                                                "' appears twice in one object (parsers disagree on which wins)");
  return std::nullopt;
}

}  // namespace modelcdr::io
