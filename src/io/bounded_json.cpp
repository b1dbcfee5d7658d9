#include "io/bounded_json.hpp"

#include <algorithm>
#include <optional>
#include <string_view>
#include <nlohmann/json.hpp>
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

// Each event is checked first and then, when a DOM is wanted, handed to nlohmann's own DOM
// builder: one lexer pass for checks and DOM together.
using DomBuilder = nlohmann::detail::json_sax_dom_parser<json>;

class Inspector {
 public:
  Inspector(const JsonLimits& l, JsonShape& s, DomBuilder* dom) : lim_(l), s_(s), dom_(dom) {}

  bool null() { return element() && (!dom_ || dom_->null()); }
  bool boolean(bool b) { return element() && (!dom_ || dom_->boolean(b)); }
  bool number_integer(json::number_integer_t v) { return element() && (!dom_ || dom_->number_integer(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return element() && (!dom_ || dom_->number_unsigned(v)); }
  bool number_float(json::number_float_t v, const json::string_t& t) {
    return element() && (!dom_ || dom_->number_float(v, t));
  }
  bool string(json::string_t& v) { return element() && (!dom_ || dom_->string(v)); }
  bool binary(json::binary_t& v) { return element() && (!dom_ || dom_->binary(v)); }
  bool start_object(std::size_t n) { return open(true) && (!dom_ || dom_->start_object(n)); }
  bool end_object() { return close() && (!dom_ || dom_->end_object()); }
  bool start_array(std::size_t n) { return open(false) && (!dom_ || dom_->start_array(n)); }
  bool end_array() { return close() && (!dom_ || dom_->end_array()); }
  bool key(json::string_t& k) {
    if (!element()) return false;
    if (open_objects_ == 1 && depth_ == 1) {
      s_.root_keys.push_back(k);  // duplicates among these are found once, by sorting (finish)
    } else if (!objects_[open_objects_ - 1].insert(k)) {
      s_.duplicate_key = k;
      return false;
    }
    return !dom_ || dom_->key(k);
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

  const JsonLimits& lim_;
  JsonShape& s_;
  DomBuilder* dom_;
  uint64_t elements_ = 0;
  uint32_t depth_ = 0;
  std::vector<KeySet> objects_;  // keys of each open object; frames reused, not reallocated
  size_t open_objects_ = 0;
  std::vector<bool> is_object_;                            // per open container
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

// A strict checker for the plain documents a model folder is full of (configs, indexes, a
// corpus manifest): ASCII, no \u escapes, no escapes in keys, no exponents. It answers only
// "valid, within the limits, no duplicate key below the root" and leaves every other document
// (and every doubt) to nlohmann's parser, so its answers are a subset of nlohmann's: it
// accepts a strict subset of the JSON grammar, counts elements and depth as Inspector does,
// and compares keys byte for byte (unescaped ASCII keys are their decoded text). nlohmann's
// lexer costs ~75 instructions a byte (10 M for a 135 KB manifest.json); this about a tenth.
class PlainJson {
 public:
  PlainJson(std::string_view t, const JsonLimits& l) : p_(t.data()), end_(t.data() + t.size()), lim_(l) {}

  // True when the document is valid and within the limits; root_keys() then holds the root
  // object's keys in document order.
  bool check() {
    ws();
    if (!value()) return false;
    while (!stack_.empty()) {
      ws();
      if (p_ == end_) return false;
      Frame& f = stack_.back();
      const char closer = f.object ? '}' : ']';
      if (*p_ == closer) {
        close();
        continue;
      }
      if (!f.first) {
        if (*p_ != ',') return false;
        ++p_;
        ws();
      }
      f.first = false;
      if (f.object && !member_key(stack_.size() == 1 ? nullptr : &stack_.back())) return false;
      if (!value()) return false;
    }
    ws();
    return p_ == end_;
  }
  const std::vector<std::string_view>& root_keys() const { return root_keys_; }

 private:
  struct Frame {
    bool object = false;
    bool first = true;
    std::vector<std::string_view> keys;  // few: searched linearly
    std::unordered_set<std::string_view> many;
  };

  void ws() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  bool element() { return ++elements_ <= lim_.max_elements; }

  bool value() {
    if (p_ == end_ || !element()) return false;
    switch (*p_) {
      case '{':
      case '[':
        if (++depth_ > lim_.max_depth) return false;
        stack_.emplace_back().object = *p_ == '{';
        ++p_;
        return true;
      case '"': return string(false).has_value();
      case 't': return literal("true");
      case 'f': return literal("false");
      case 'n': return literal("null");
      default: return number();
    }
  }
  void close() {
    --depth_;
    stack_.pop_back();
    ++p_;
  }
  // `frame`: the object's frame for the duplicate check; nullptr for the root object, whose
  // keys the caller sorts afterwards (as for nlohmann's pass, finish()).
  bool member_key(Frame* frame) {
    if (p_ == end_ || *p_ != '"' || !element()) return false;
    auto k = string(true);
    if (!k) return false;
    if (!frame) {
      root_keys_.push_back(*k);
    } else if (frame->many.empty() && frame->keys.size() < 16) {
      for (auto x : frame->keys)
        if (x == *k) return false;  // a duplicate: nlohmann's pass names it
      frame->keys.push_back(*k);
    } else {
      if (frame->many.empty()) frame->many.insert(frame->keys.begin(), frame->keys.end());
      if (!frame->many.insert(*k).second) return false;
    }
    ws();
    if (p_ == end_ || *p_ != ':') return false;
    ++p_;
    ws();
    return true;
  }
  // A string of printable ASCII; in values also the escapes that stand for one ASCII byte.
  std::optional<std::string_view> string(bool key) {
    const char* start = ++p_;
    for (; p_ != end_; ++p_) {
      const unsigned char c = static_cast<unsigned char>(*p_);
      if (c == '"') return std::string_view(start, static_cast<size_t>(p_++ - start));
      if (c < 0x20 || c >= 0x80) return std::nullopt;
      if (c == '\\') {
        if (key || ++p_ == end_) return std::nullopt;
        const char e = *p_;
        if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' && e != 't') return std::nullopt;
      }
    }
    return std::nullopt;
  }
  bool literal(std::string_view word) {
    if (static_cast<size_t>(end_ - p_) < word.size() || std::string_view(p_, word.size()) != word) return false;
    p_ += word.size();
    return true;
  }
  static bool digit(char c) { return c >= '0' && c <= '9'; }
  // -?(0|[1-9][0-9]*)(.[0-9]+)? and at most 300 characters: always finite as a double, so
  // nlohmann accepts it (an exponent or a longer number could overflow: its parser decides).
  bool number() {
    const char* start = p_;
    if (*p_ == '-') ++p_;
    if (p_ == end_) return false;
    if (*p_ == '0') {
      ++p_;
    } else if (*p_ >= '1' && *p_ <= '9') {
      while (p_ != end_ && digit(*p_)) ++p_;
    } else {
      return false;
    }
    if (p_ != end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !digit(*p_)) return false;
      while (p_ != end_ && digit(*p_)) ++p_;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) return false;
    return p_ - start <= 300;
  }

  const char* p_;
  const char* end_;
  const JsonLimits& lim_;
  uint64_t elements_ = 0;
  uint32_t depth_ = 0;
  std::vector<Frame> stack_;
  std::vector<std::string_view> root_keys_;
};

}  // namespace

JsonShape inspect_json(std::string_view text, const JsonLimits& limits) {
  JsonShape shape;
  if (PlainJson plain(text, limits); plain.check()) {
    shape.valid = true;
    shape.root_keys.assign(plain.root_keys().begin(), plain.root_keys().end());
    finish(shape);
    return shape;
  }
  Inspector in(limits, shape, nullptr);
  shape.valid = json::sax_parse(text.begin(), text.end(), &in, json::input_format_t::json, /*strict=*/true);
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
