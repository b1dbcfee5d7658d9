// The symbolic pickle machine. It mirrors CPython's C unpickler (Modules/_pickle.c) opcode by
// opcode, except that nothing is imported, called or hashed: every value becomes a Node.
//
// Choices where CPython's two unpicklers (C `_pickle` and pure-Python `pickle._Unpickler`) differ,
// or where we are stricter than both:
//  * Marks: an integer mark stack with a "fence" like _pickle.c: no opcode may pop below the
//    topmost mark. POP with nothing above the topmost mark discards the mark (both agree).
//  * INT text: Python's int(text, 0) grammar (what pickle.py uses). _pickle.c first tries
//    strtol(base 0), which reads "010" as octal 8 where pickle.py raises; such text is rejected.
//  * FLOAT text: the grammar of PyOS_string_to_double (C): no surrounding whitespace, no
//    underscores; an overflowing literal ("1e999") is an error, as in C.
//  * Integer text longer than 4300 decimal digits is rejected, as CPython >= 3.11 does.
//  * FRAME: parsed linearly; nested frames and opcodes crossing a frame end (errors in pickle.py,
//    accepted by _pickle.c) are findings.
//  * Python-2 name remapping runs for GLOBAL, INST and STACK_GLOBAL while protocol < 3, because
//    CPython applies it inside find_class, which all three use.
//  * Repeated findings of one rule are reported once (first offset) with an occurrence count, so a
//    hostile stream cannot turn 50 million PUTs into 50 million findings.
//
// Program::stop_offset / end_offset are positions inside `data` (not shifted by base_offset):
// the caller slices `data` with them. Node::offset, Error::offset and Finding::offset are
// absolute (base_offset added) because they are shown to people.
#include "io/huge_pages.hpp"
#include "pickle/pickle_machine.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <unordered_map>
#include <vector>

#include "io/byte_cursor.hpp"
#include "pickle/opcodes.hpp"
#include "pickle/py2_names.hpp"

namespace modelcdr::pickle {
namespace {

constexpr size_t kMaxDecimalDigits = 4300;  // sys.int_info.default_max_str_digits (CPython >= 3.11)

std::string hex_byte(uint8_t b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[b >> 4] + kDigits[b & 15];
}

// Printable rendering of untrusted text for messages: printable ASCII kept, the rest \xNN,
// at most `max` input bytes.
std::string quote(std::string_view s, size_t max = 80) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    auto c = static_cast<uint8_t>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex_byte(c).substr(2);
    }
  }
  if (s.size() > max) out += "...";
  return out;
}

// ---------------------------------------------------------------------------------------------
// UTF-8

// Validates UTF-8. With `allow_surrogates`, the 3-byte encodings of U+D800..U+DFFF are accepted
// (Python's "surrogatepass", used for BINUNICODE*); otherwise strict (GLOBAL/INST names).
bool valid_utf8(std::string_view s, bool allow_surrogates) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    uint8_t c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED && !allow_surrogates) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (n - i < len) return false;
    if (p[i + 1] < lo || p[i + 1] > hi) return false;
    for (size_t k = 2; k < len; ++k)
      if ((p[i + k] & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

// Encodes a code point; surrogates get their 3-byte form, as "surrogatepass" would write them.
void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Python 3 `raw-unicode-escape` decoding (UNICODE opcode): \uXXXX and \UXXXXXXXX are escapes,
// a backslash before anything else is literal (and is consumed with that character), every other
// byte is a Latin-1 code point. Result is UTF-8 (surrogates in surrogatepass form).
bool decode_raw_unicode_escape(std::string_view in, std::string& out, std::string& why) {
  out.clear();
  out.reserve(in.size());
  size_t i = 0;
  while (i < in.size()) {
    auto c = static_cast<uint8_t>(in[i++]);
    if (c != '\\' || i >= in.size()) {
      append_utf8(out, c);
      continue;
    }
    auto e = static_cast<uint8_t>(in[i++]);
    int count = e == 'u' ? 4 : e == 'U' ? 8 : 0;
    if (count == 0) {
      append_utf8(out, c);
      append_utf8(out, e);
      continue;
    }
    uint32_t cp = 0;
    for (int k = 0; k < count; ++k) {
      int h = i < in.size() ? hex_value(in[i]) : -1;
      if (h < 0) {
        why = count == 4 ? "truncated \\uXXXX escape" : "truncated \\UXXXXXXXX escape";
        return false;
      }
      cp = (cp << 4) | static_cast<uint32_t>(h);
      ++i;
    }
    if (cp > 0x10FFFF) {
      why = "\\Uxxxxxxxx out of range";
      return false;
    }
    append_utf8(out, cp);
  }
  return true;
}

// codecs.escape_decode of the text between the quotes of a STRING argument.
bool decode_escapes(std::string_view in, std::string& out, std::string& why) {
  out.clear();
  out.reserve(in.size());
  size_t i = 0;
  while (i < in.size()) {
    char c = in[i++];
    if (c != '\\') {
      out += c;
      continue;
    }
    if (i >= in.size()) {
      why = "trailing \\ in string";
      return false;
    }
    char e = in[i++];
    switch (e) {
      case '\n': break;  // line continuation (cannot occur inside one line; kept for fidelity)
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': {
        unsigned v = static_cast<unsigned>(e - '0');
        for (int k = 0; k < 2 && i < in.size() && in[i] >= '0' && in[i] <= '7'; ++k)
          v = (v << 3) | static_cast<unsigned>(in[i++] - '0');
        out += static_cast<char>(v & 0xFF);  // CPython keeps the low byte of \400..\777
        break;
      }
      case 'x': {
        int h1 = i < in.size() ? hex_value(in[i]) : -1;
        int h2 = i + 1 < in.size() ? hex_value(in[i + 1]) : -1;
        if (h1 < 0 || h2 < 0) {
          why = "invalid \\x escape";
          return false;
        }
        out += static_cast<char>((h1 << 4) | h2);
        i += 2;
        break;
      }
      default:  // unknown escapes are kept verbatim (CPython warns, then keeps them)
        out += '\\';
        out += e;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Integers

bool is_py_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string_view strip_space(std::string_view s) {
  while (!s.empty() && is_py_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_py_space(s.back())) s.remove_suffix(1);
  return s;
}

// Strips sign bytes that do not change the value of a little-endian two's-complement number.
void normalize_twos(std::string& le) {
  while (le.size() >= 2) {
    auto last = static_cast<uint8_t>(le.back());
    auto prev = static_cast<uint8_t>(le[le.size() - 2]);
    if ((last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80)))
      le.pop_back();
    else
      break;
  }
}

// Sign-extends a little-endian two's-complement number of at most 8 bytes.
int64_t twos_to_int64(std::string_view le) {
  if (le.empty()) return 0;
  uint64_t v = 0;
  for (size_t k = 0; k < le.size(); ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(le[k])) << (8 * k);
  if (le.size() < 8 && (static_cast<uint8_t>(le.back()) & 0x80)) v |= ~uint64_t{0} << (8 * le.size());
  return static_cast<int64_t>(v);
}

struct IntText {
  bool negative = false;
  std::vector<uint32_t> limbs;  // magnitude, least significant limb first
};

enum class IntSyntax {
  PythonBase0,  // int(text, 0): prefixes 0x/0o/0b, no leading zeros on decimals
  Base10,       // int(text): decimal, leading zeros allowed (memo indices)
};

// Python's int() text grammar: surrounding whitespace, a sign, optional base prefix, single
// underscores between digits (and right after a prefix).
bool parse_int_text(std::string_view s, IntSyntax syntax, IntText& out, std::string& why) {
  s = strip_space(s);
  out = IntText{};
  if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
    out.negative = s[0] == '-';
    s.remove_prefix(1);
  }
  unsigned base = 10;
  bool underscore_ok = false;  // an underscore may follow a base prefix
  if (syntax == IntSyntax::PythonBase0 && s.size() >= 2 && s[0] == '0') {
    char p = static_cast<char>(s[1] | 0x20);
    base = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 10;
    if (base != 10) {
      s.remove_prefix(2);
      underscore_ok = true;
    }
  }
  std::vector<uint8_t> digits;
  digits.reserve(s.size());
  bool prev_underscore = false;
  for (char c : s) {
    if (c == '_') {
      if (prev_underscore || (digits.empty() && !underscore_ok)) {
        why = "misplaced underscore";
        return false;
      }
      prev_underscore = true;
      continue;
    }
    int d = hex_value(c);
    if (d < 0 || static_cast<unsigned>(d) >= base) {
      why = "invalid digit";
      return false;
    }
    digits.push_back(static_cast<uint8_t>(d));
    prev_underscore = false;
  }
  if (digits.empty() || prev_underscore) {
    why = digits.empty() ? "no digits" : "misplaced underscore";
    return false;
  }
  if (base == 10) {
    if (syntax == IntSyntax::PythonBase0 && digits[0] == 0 &&
        std::any_of(digits.begin(), digits.end(), [](uint8_t d) { return d != 0; })) {
      why = "leading zeros in a decimal integer";
      return false;
    }
    if (digits.size() > kMaxDecimalDigits) {
      why = std::to_string(digits.size()) + " digits exceed the " + std::to_string(kMaxDecimalDigits) +
            " CPython accepts";
      return false;
    }
    // limbs = limbs * 10^k + chunk, nine digits at a time; quadratic, but bounded by 4300 digits.
    size_t first = digits.size() % 9 ? digits.size() % 9 : 9;
    for (size_t pos = 0; pos < digits.size();) {
      size_t take = pos == 0 ? first : 9;
      uint32_t chunk = 0, mul = 1;
      for (size_t k = 0; k < take; ++k) {
        chunk = chunk * 10 + digits[pos + k];
        mul *= 10;
      }
      pos += take;
      uint64_t carry = chunk;
      for (auto& limb : out.limbs) {
        uint64_t v = static_cast<uint64_t>(limb) * mul + carry;
        limb = static_cast<uint32_t>(v);
        carry = v >> 32;
      }
      if (carry) out.limbs.push_back(static_cast<uint32_t>(carry));
    }
  } else {
    // Power-of-two base: pack bits from the least significant digit; linear in the length.
    unsigned bits = base == 16 ? 4 : base == 8 ? 3 : 1;
    uint64_t acc = 0;
    unsigned have = 0;
    for (auto it = digits.rbegin(); it != digits.rend(); ++it) {
      acc |= static_cast<uint64_t>(*it) << have;
      have += bits;
      if (have >= 32) {
        out.limbs.push_back(static_cast<uint32_t>(acc));
        acc >>= 32;
        have -= 32;
      }
    }
    if (have) out.limbs.push_back(static_cast<uint32_t>(acc));
  }
  while (!out.limbs.empty() && out.limbs.back() == 0) out.limbs.pop_back();
  return true;
}

// Minimal little-endian two's complement of a sign + magnitude.
std::string twos_from_magnitude(const IntText& v) {
  std::string le;
  le.reserve(v.limbs.size() * 4 + 1);
  for (uint32_t limb : v.limbs)
    for (int k = 0; k < 4; ++k) le += static_cast<char>((limb >> (8 * k)) & 0xFF);
  le += '\0';  // room for the sign bit
  if (v.negative) {
    unsigned carry = 1;
    for (auto& ch : le) {
      unsigned b = (~static_cast<unsigned>(static_cast<uint8_t>(ch)) & 0xFF) + carry;
      ch = static_cast<char>(b & 0xFF);
      carry = b >> 8;
    }
  }
  normalize_twos(le);
  return le;
}

// ---------------------------------------------------------------------------------------------
// Floats

bool ieq(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t k = 0; k < a.size(); ++k)
    if ((a[k] | 0x20) != b[k]) return false;
  return true;
}

// PyOS_string_to_double grammar: [sign] (digits [. digits] | . digits) [e [sign] digits],
// or [sign] inf / infinity / nan (any case). Overflow is an error, underflow is not.
bool parse_float_text(std::string_view s, double& out, std::string& why) {
  why = "not a float literal";
  bool negative = false;
  std::string_view body = s;
  if (!body.empty() && (body[0] == '+' || body[0] == '-')) {
    negative = body[0] == '-';
    body.remove_prefix(1);
  }
  if (ieq(body, "inf") || ieq(body, "infinity")) {
    out = negative ? -HUGE_VAL : HUGE_VAL;
    return true;
  }
  if (ieq(body, "nan")) {
    out = std::copysign(std::nan(""), negative ? -1.0 : 1.0);
    return true;
  }
  size_t i = 0, int_digits = 0, frac_digits = 0;
  while (i < body.size() && body[i] >= '0' && body[i] <= '9') ++i, ++int_digits;
  if (i < body.size() && body[i] == '.') {
    ++i;
    while (i < body.size() && body[i] >= '0' && body[i] <= '9') ++i, ++frac_digits;
  }
  if (int_digits + frac_digits == 0) return false;
  if (i < body.size() && (body[i] == 'e' || body[i] == 'E')) {
    ++i;
    if (i < body.size() && (body[i] == '+' || body[i] == '-')) ++i;
    size_t exp_digits = 0;
    while (i < body.size() && body[i] >= '0' && body[i] <= '9') ++i, ++exp_digits;
    if (exp_digits == 0) return false;
  }
  if (i != body.size()) return false;
  double v = 0;
  auto [ptr, ec] = std::from_chars(body.data(), body.data() + body.size(), v, std::chars_format::general);
  if (ec == std::errc::result_out_of_range) {
    // from_chars reports both overflow and underflow; strtod tells them apart. The text is already
    // validated, so locale-dependent parts of strtod (decimal point aside) cannot apply.
    std::string copy(body);
    v = std::strtod(copy.c_str(), nullptr);
    if (std::isinf(v)) {
      why = "float literal out of range";
      return false;
    }
  } else if (ec != std::errc() || ptr != body.data() + body.size()) {
    return false;
  }
  out = negative ? -v : v;
  return true;
}

// ---------------------------------------------------------------------------------------------

enum class Repeat : uint8_t { MemoOverwrite, FrameNested, FrameStraddle, Py2Remap, Ext, OutOfBand, kCount };

// The memo: pickle writers number entries 0, 1, 2, ... so a dense array holds them in 4 bytes
// each (a node-based hash map cost about 50 bytes and one allocation per entry: torch memoizes
// about 8 objects per tensor). Indices far beyond what has been stored go to a sparse map, so
// the array stays within about twice the entry count whatever indices a hostile stream uses.
class Memo {
 public:
  // Stores id at index; false when it replaced an earlier entry.
  bool put(uint64_t index, NodeId id) {
    if (index >= dense_.size()) {
      uint64_t want = std::max<uint64_t>(index + 1, dense_.size() * 2);
      if (want <= 2 * (count_ + 1) + kSlack) dense_.resize(want, kNoNode);
    }
    if (index < dense_.size()) {
      bool fresh = dense_[index] == kNoNode;
      dense_[index] = id;
      count_ += fresh;
      return fresh;
    }
    auto [it, fresh] = sparse_.try_emplace(index, id);
    if (!fresh) it->second = id;
    count_ += fresh;
    return fresh;
  }
  NodeId get(uint64_t index) const {
    if (index < dense_.size()) return dense_[index];
    auto it = sparse_.find(index);
    return it == sparse_.end() ? kNoNode : it->second;
  }
  size_t size() const { return count_; }

 private:
  static constexpr uint64_t kSlack = 4096;
  std::vector<NodeId> dense_;
  std::unordered_map<uint64_t, NodeId> sparse_;
  size_t count_ = 0;
};

class Machine {
 public:
  Machine(std::span<const uint8_t> data, const DecodeOptions& options, Findings& findings)
      : cur_(data, options.entry, options.base_offset), opt_(options), lim_(options.limits), findings_(findings) {}

  Result<Program> run() {
    auto r = execute();
    finish_repeats();
    if (!r.ok()) {
      if (opt_.partial) *opt_.partial = std::move(prog_);
      return r.error();
    }
    return std::move(prog_);
  }

 private:
  // ------------------------------------------------------------------ errors and findings
  Error fail(Rule rule, std::string message) const {
    return make_error(std::move(rule), std::move(message), opt_.base_offset + op_pos_, opt_.entry);
  }
  std::string op_name() const { return opcode_name(op_); }

  // `message` is a callable so that repeats cost no string building.
  template <class MakeMessage>
  void note(Repeat kind, Severity sev, Rule rule, MakeMessage&& message) {
    auto& r = repeats_[static_cast<size_t>(kind)];
    if (r.count++ == 0) {
      r.index = findings_.size();
      add_finding(findings_, sev, rule, message(), opt_.entry, opt_.base_offset + op_pos_);
    }
  }
  // One finding per distinct remapped name (the user wants to see each), up to a cap; the rest
  // are folded into one counted finding.
  void note_remap(const std::string& old_name, const std::string& new_name) {
    std::string key = old_name + '\n' + new_name;
    if (auto it = remaps_.find(key); it != remaps_.end()) {
      ++it->second.count;
      return;
    }
    if (remaps_.size() < kMaxRemapFindings) {
      remaps_.emplace(std::move(key), RepeatState{findings_.size(), 1});
      add_finding(findings_, Severity::info, Rule::pickle_py2_name_remap,
                  "Python-2 name '" + quote(old_name) + "' read as '" + quote(new_name) + "' (protocol < 3)", opt_.entry,
                  opt_.base_offset + op_pos_);
      return;
    }
    note(Repeat::Py2Remap, Severity::info, Rule::pickle_py2_name_remap,
         [] { return std::string("more Python-2 names remapped (protocol < 3)"); });
  }

  void finish_repeats() {
    for (auto& [key, r] : remaps_)
      if (r.count > 1 && r.index < findings_.size())
        findings_[r.index].message += " (first of " + std::to_string(r.count) + " occurrences)";
    for (auto& r : repeats_)
      if (r.count > 1 && r.index < findings_.size())
        findings_[r.index].message += " (first of " + std::to_string(r.count) + " occurrences)";
  }

  // ------------------------------------------------------------------ argument readers
  Error truncated(uint64_t need) const {
    return fail(Rule::pickle_truncated, op_name() + " argument needs " + std::to_string(need) + " bytes, only " +
                                        std::to_string(cur_.remaining()) + " left");
  }
  template <class T>
  Result<T> fixed() {
    auto r = cur_.le<T>();
    if (!r.ok()) return truncated(sizeof(T));
    return *r;
  }
  Result<std::string_view> line() {
    const size_t start = cur_.pos();
    auto r = cur_.line(static_cast<size_t>(std::min<uint64_t>(lim_.max_line_bytes, SIZE_MAX - 1)));
    // CPython's C unpickler reading a file without peek() (the io.BytesIO torch.load reads a zip
    // checkpoint's data.pkl from) drops the part of a line left in its FRAME buffer and reads the
    // line afresh from the frame's end: what it runs is what follows, so CPython's view does that.
    if (opt_.cpython_view && in_frame_ && start < frame_end_ && cur_.pos() > frame_end_) {
      straddle();
      MCDR_TRY(cur_.seek(frame_end_));
      in_frame_ = false;
      r = cur_.line(static_cast<size_t>(std::min<uint64_t>(lim_.max_line_bytes, SIZE_MAX - 1)));
    }
    if (!r.ok()) {
      if (r.error().rule == Rule::io_line_too_long)
        return fail(Rule::pickle_line_too_long,
                    op_name() + " text argument is longer than " + std::to_string(lim_.max_line_bytes) + " bytes");
      return fail(Rule::pickle_truncated, op_name() + " text argument is not terminated by a newline before the end of data");
    }
    return *r;
  }
  // A length-prefixed payload: the length is checked against the limit and what remains before
  // anything is allocated.
  Result<std::string_view> payload(uint64_t len) {
    if (len > cur_.remaining())
      return fail(Rule::pickle_bad_length, op_name() + " length " + std::to_string(len) + " exceeds the " +
                                           std::to_string(cur_.remaining()) + " bytes left");
    if (len > lim_.max_text_bytes)
      return fail(Rule::pickle_limit_text, op_name() + " length " + std::to_string(len) + " exceeds the limit of " +
                                           std::to_string(lim_.max_text_bytes) + " bytes");
    auto r = cur_.take_view(len);
    if (!r.ok()) return truncated(len);
    return *r;
  }

  // ------------------------------------------------------------------ graph and stack
  Result<NodeId> make(NodeKind kind) {
    if (prog_.nodes.size() >= lim_.max_nodes)
      return fail(Rule::pickle_limit_nodes, "more than " + std::to_string(lim_.max_nodes) + " values");
    auto id = static_cast<NodeId>(prog_.nodes.size());
    Node& n = prog_.nodes.emplace_back();
    n.kind = kind;
    n.offset = opt_.base_offset + op_pos_;
    return id;
  }
  Node& node(NodeId id) { return prog_.nodes[id]; }

  Status count_items(uint64_t n) {
    items_total_ += n;
    if (items_total_ > lim_.max_container_items)
      return fail(Rule::pickle_limit_items, "more than " + std::to_string(lim_.max_container_items) +
                                            " container items in total");
    return ok_status();
  }
  Status check_depth(size_t adding) {
    if (stack_.size() + marks_.size() + adding > lim_.max_stack_depth)
      return fail(Rule::pickle_limit_stack, "stack depth (values plus marks) exceeds " + std::to_string(lim_.max_stack_depth));
    return ok_status();
  }
  Status push(NodeId id) {
    MCDR_TRY(check_depth(1));
    stack_.push_back(id);
    return ok_status();
  }
  size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }
  Error underflow() const {
    return fail(Rule::pickle_stack_underflow, op_name() + " needs more values than the stack holds" +
                                              (marks_.empty() ? std::string() : std::string(" above the topmost MARK")));
  }
  // Ensures `n` values above the fence.
  Status need(size_t n) {
    if (stack_.size() < fence() + n) return underflow();
    return ok_status();
  }
  NodeId pop_unchecked() {
    NodeId id = stack_.back();
    stack_.pop_back();
    return id;
  }
  Result<size_t> pop_mark() {
    if (marks_.empty()) return fail(Rule::pickle_no_mark, op_name() + " could not find MARK");
    size_t m = marks_.back();
    marks_.pop_back();
    return m;
  }
  // Moves everything above stack position `from` into `dst` and truncates the stack.
  template <class List>  // a NodeIds or a node's items
  Status take_from(size_t from, List& dst) {
    size_t n = stack_.size() - from;
    MCDR_TRY(count_items(n));
    dst.append(*prog_.arena, stack_.data() + from, n);
    stack_.resize(from);
    return ok_status();
  }
  Status take_pairs(size_t from, NodePairs& dst, const char* what) {
    size_t n = stack_.size() - from;
    if (n % 2) return fail(Rule::pickle_odd_items, std::string("odd number of items for ") + what);
    MCDR_TRY(count_items(n));
    pairs_.clear();
    for (size_t k = from; k < stack_.size(); k += 2) pairs_.emplace_back(stack_[k], stack_[k + 1]);
    dst.append(*prog_.arena, pairs_.data(), pairs_.size());
    stack_.resize(from);
    return ok_status();
  }

  // ------------------------------------------------------------------ value constructors
  Status push_int(int64_t v) {
    MCDR_ASSIGN(NodeId id, make(NodeKind::Int));
    node(id).i = v;
    return push(id);
  }
  // From minimal little-endian two's complement.
  Status push_twos(std::string le) {
    normalize_twos(le);
    if (le.size() <= 8) return push_int(twos_to_int64(le));
    MCDR_ASSIGN(NodeId id, make(NodeKind::BigInt));
    prog_.set_text(node(id), NodeKind::BigInt, le);
    return push(id);
  }
  Status push_text(NodeKind kind, std::string_view s) {
    MCDR_ASSIGN(NodeId id, make(kind));
    prog_.set_text(node(id), kind, s);
    return push(id);
  }
  Status push_simple(NodeKind kind) {
    MCDR_ASSIGN(NodeId id, make(kind));
    return push(id);
  }
  Status push_bool(bool b) {
    MCDR_ASSIGN(NodeId id, make(NodeKind::Bool));
    node(id).b = b;
    return push(id);
  }
  // CPython's C unpickler reads INT with strtol(line, &end, 0) and accepts it when `end` stops at
  // the newline or at a NUL (C string semantics): "\x001" is 0, "017" is 15, " 5" is 5. Only the
  // scan's CPython view reads INT this way; disarm keeps the strict reading (and rejects these).
  static std::optional<int64_t> c_unpickler_int(std::string_view text) {
    const std::string c(text.substr(0, text.find('\0')));  // what strtol sees
    errno = 0;
    char* end = nullptr;
    const long long x = std::strtoll(c.c_str(), &end, 0);
    if (errno != 0 || end == nullptr || *end != '\0') return std::nullopt;
    return static_cast<int64_t>(x);
  }
  Status push_int_text(std::string_view text, IntSyntax syntax) {
    IntText v;
    std::string why;
    if (!parse_int_text(text, syntax, v, why))
      return fail(Rule::pickle_bad_int, op_name() + " argument '" + quote(text) + "' is not an integer: " + why);
    return push_twos(twos_from_magnitude(v));
  }
  Result<NodeId> make_global(std::string module, std::string name) {
    bool remapped = false;
    if (prog_.protocol < 3) {
      std::string old = module + " " + name;
      remapped = remap_py2_name(module, name);
      if (remapped) note_remap(old, module + " " + name);
    }
    MCDR_ASSIGN(NodeId id, make(NodeKind::Global));
    Node& g = node(id);
    prog_.set_global(g, module, name);
    g.remapped = remapped;
    return id;
  }
  // ------------------------------------------------------------------ CPython's view
  // A str operand as CPython sees it: str, or a STRING CPython decodes to str, or an attribute
  // a BUILD on a module replaced earlier (looked up through `module_attrs_`).
  const Node* as_cpython_str(NodeId id) const {
    const Node* n = &prog_.nodes[id];
    if (n->kind == NodeKind::Global)
      if (auto it = module_attrs_.find(std::string(n->text) + "." + std::string(n->name())); it != module_attrs_.end()) n = &prog_.nodes[it->second];
    if (n->kind == NodeKind::Str || (n->kind == NodeKind::Py2Str && valid_utf8(n->text, false))) return n;
    return nullptr;
  }
  Status cpython_stack_global(NodeId module, NodeId name) {
    const Node* m = as_cpython_str(module);
    const Node* n = as_cpython_str(name);
    if (m == nullptr || n == nullptr)
      return fail(Rule::pickle_stack_global_operand, "STACK_GLOBAL requires two str operands (module and name)");
    // A global whose attribute was replaced is that value (find_class returns getattr's result).
    if (auto it = module_attrs_.find(std::string(m->text) + "." + std::string(n->text)); it != module_attrs_.end()) return push(it->second);
    MCDR_ASSIGN(NodeId id, make_global(std::string(m->text), std::string(n->text)));
    return push(id);
  }
  // BUILD with a dict state on a global (a module or class) sets its attributes: remember
  // them, so later lookups of module.attr see the new value as CPython would.
  void note_module_setattr(NodeId target, NodeId state) {
    const Node& t = node(target);
    const Node& st = node(state);
    if (t.kind != NodeKind::Global || st.kind != NodeKind::Dict) return;
    for (const auto& [k, v] : st.entries())
      if (const Node* key = as_cpython_str(k)) module_attrs_[std::string(t.text) + "." + std::string(t.name()) + "." + std::string(key->text)] = v;
  }

  Result<std::pair<std::string, std::string>> global_lines() {
    MCDR_ASSIGN(std::string_view module, line());
    MCDR_ASSIGN(std::string_view name, line());
    if (!valid_utf8(module, false) || !valid_utf8(name, false))
      return fail(Rule::pickle_bad_utf8, op_name() + " name '" + quote(module) + " " + quote(name) + "' is not valid UTF-8");
    return std::pair(std::string(module), std::string(name));
  }

  // ------------------------------------------------------------------ memo
  Status memo_put(uint64_t index) {
    MCDR_TRY(need(1));
    if (index > lim_.max_memo_index)
      return fail(Rule::pickle_limit_memo_index, op_name() + " index " + std::to_string(index) + " exceeds the limit of " +
                                                 std::to_string(lim_.max_memo_index));
    if (!memo_.put(index, stack_.back())) {
      note(Repeat::MemoOverwrite, Severity::low, Rule::pickle_memo_overwrite,
           [&] { return std::string(op_name() + " overwrites memo index " + std::to_string(index)); });
    } else if (memo_.size() > lim_.max_memo_entries) {
      return fail(Rule::pickle_limit_memo, "more than " + std::to_string(lim_.max_memo_entries) + " memo entries");
    }
    return ok_status();
  }
  Status memo_get(uint64_t index) {
    NodeId id = memo_.get(index);
    if (id == kNoNode)
      return fail(Rule::pickle_memo_missing, op_name() + " memo index " + std::to_string(index) + " was never stored");
    return push(id);
  }
  // GET/PUT text argument: int(text) in base 10. A negative GET cannot match (memo-missing),
  // a negative PUT is an error as in CPython.
  Result<uint64_t> memo_index_text(bool is_put) {
    MCDR_ASSIGN(std::string_view text, line());
    IntText v;
    std::string why;
    if (!parse_int_text(text, IntSyntax::Base10, v, why))
      return fail(Rule::pickle_bad_int, op_name() + " argument '" + quote(text) + "' is not an integer: " + why);
    bool zero = v.limbs.empty();
    if (v.negative && !zero) {
      if (is_put) return fail(Rule::pickle_bad_memo_index, "negative PUT argument '" + quote(text) + "'");
      return fail(Rule::pickle_memo_missing, "GET memo index '" + quote(text) + "' was never stored");
    }
    if (v.limbs.size() > 2) {
      if (is_put)
        return fail(Rule::pickle_limit_memo_index, "PUT index '" + quote(text) + "' exceeds the limit of " +
                                                   std::to_string(lim_.max_memo_index));
      return fail(Rule::pickle_memo_missing, "GET memo index '" + quote(text) + "' was never stored");
    }
    uint64_t idx = 0;
    for (size_t k = v.limbs.size(); k-- > 0;) idx = (idx << 32) | v.limbs[k];
    return idx;
  }

  // ------------------------------------------------------------------ the interpreter
  Status execute() {
    stack_.reserve(256);
    marks_.reserve(64);
    // The whole node budget up front: address space only until used, and no doubling copy that
    // briefly holds 3x the nodes (24 bytes each) on a stream of millions of objects.
    prog_.nodes.reserve(static_cast<size_t>(std::min<uint64_t>({cur_.size() + 16, lim_.max_nodes})));
    io::advise_huge_pages(prog_.nodes.data(), prog_.nodes.capacity() * sizeof(Node));
    while (true) {
      op_pos_ = cur_.pos();
      if (cur_.at_end()) return fail(Rule::pickle_truncated, "pickle data ended without STOP");
      if (in_frame_ && op_pos_ >= frame_end_) in_frame_ = false;
      const bool framed = in_frame_;
      const size_t frame_end = frame_end_;
      if (++prog_.op_count > lim_.max_ops)
        return fail(Rule::pickle_limit_ops, "more than " + std::to_string(lim_.max_ops) + " opcodes");
      MCDR_ASSIGN(op_, cur_.u8());
      if (op_ == static_cast<uint8_t>(Op::STOP)) {
        if (framed && cur_.pos() > frame_end) straddle();
        return stop();
      }
      array_consumed_ = false;
      MCDR_TRY(step());
      if (framed && !array_consumed_ && cur_.pos() > frame_end) straddle();
    }
  }

  void straddle() {
    note(Repeat::FrameStraddle, Severity::medium, Rule::pickle_frame_straddle,
         [&] { return std::string(op_name() + " crosses the end of its FRAME (pickle.py rejects this)"); });
  }

  Status stop() {
    if (stack_.size() <= fence()) return underflow();
    prog_.root = pop_unchecked();
    prog_.stop_offset = op_pos_;
    prog_.end_offset = cur_.pos();
    if (!stack_.empty() || !marks_.empty())
      add_finding(findings_, Severity::low, Rule::pickle_leftover_stack,
                  "STOP left " + std::to_string(stack_.size()) + " value(s) and " + std::to_string(marks_.size()) +
                      " MARK(s) on the stack",
                  opt_.entry, opt_.base_offset + op_pos_);
    return ok_status();
  }

  Status step() {
    switch (static_cast<Op>(op_)) {
      // ---- framing and protocol
      case Op::PROTO: {
        MCDR_ASSIGN(uint8_t v, fixed<uint8_t>());
        if (v > kHighestProtocol)
          return fail(Rule::pickle_bad_protocol, "unsupported pickle protocol " + std::to_string(v) + " (highest is 5)");
        prog_.protocol = v;
        return ok_status();
      }
      case Op::FRAME: {
        bool nested = in_frame_ && op_pos_ < frame_end_;
        MCDR_ASSIGN(uint64_t len, fixed<uint64_t>());
        if (len > cur_.remaining() && opt_.cpython_view) len = cur_.remaining();  // pickle.py reads what is there
        if (len > cur_.remaining())
          return fail(Rule::pickle_frame_too_long,
                      "FRAME length " + std::to_string(len) + " exceeds the " + std::to_string(cur_.remaining()) + " bytes left");
        if (nested)
          note(Repeat::FrameNested, Severity::medium, Rule::pickle_frame_nested,
               [&] { return std::string("FRAME starts while the previous frame still has " + std::to_string(frame_end_ - op_pos_) + " unread bytes"); });
        in_frame_ = true;
        frame_end_ = cur_.pos() + static_cast<size_t>(len);
        return ok_status();
      }

      // ---- scalars
      case Op::NONE: return push_simple(NodeKind::None);
      case Op::NEWTRUE: return push_bool(true);
      case Op::NEWFALSE: return push_bool(false);
      case Op::INT: {
        MCDR_ASSIGN(std::string_view text, line());
        if (text == "00") return push_bool(false);
        if (text == "01") return push_bool(true);
        if (opt_.cpython_view)
          if (auto v = c_unpickler_int(text)) return text.size() == 2 && (*v == 0 || *v == 1) ? push_bool(*v == 1) : push_int(*v);
        return push_int_text(text, IntSyntax::PythonBase0);
      }
      case Op::BININT: {
        MCDR_ASSIGN(int32_t v, fixed<int32_t>());
        return push_int(v);
      }
      case Op::BININT1: {
        MCDR_ASSIGN(uint8_t v, fixed<uint8_t>());
        return push_int(v);
      }
      case Op::BININT2: {
        MCDR_ASSIGN(uint16_t v, fixed<uint16_t>());
        return push_int(v);
      }
      case Op::LONG: {
        MCDR_ASSIGN(std::string_view text, line());
        if (!text.empty() && text.back() == 'L') text.remove_suffix(1);
        return push_int_text(text, IntSyntax::PythonBase0);
      }
      case Op::LONG1: {
        MCDR_ASSIGN(uint8_t n, fixed<uint8_t>());
        MCDR_ASSIGN(std::string_view le, payload(n));
        return push_twos(std::string(le));
      }
      case Op::LONG4: {
        MCDR_ASSIGN(int32_t n, fixed<int32_t>());
        if (n < 0) return fail(Rule::pickle_negative_length, "LONG4 has negative byte count " + std::to_string(n));
        MCDR_ASSIGN(std::string_view le, payload(static_cast<uint64_t>(n)));
        return push_twos(std::string(le));
      }
      case Op::FLOAT: {
        MCDR_ASSIGN(std::string_view text, line());
        double v = 0;
        std::string why;
        if (!parse_float_text(text, v, why))
          return fail(Rule::pickle_bad_float, "FLOAT argument '" + quote(text) + "': " + why);
        MCDR_ASSIGN(NodeId id, make(NodeKind::Float));
        node(id).f = v;
        return push(id);
      }
      case Op::BINFLOAT: {
        auto r = cur_.f64be();
        if (!r.ok()) return truncated(8);
        MCDR_ASSIGN(NodeId id, make(NodeKind::Float));
        node(id).f = *r;
        return push(id);
      }

      // ---- text and bytes
      case Op::STRING: {
        MCDR_ASSIGN(std::string_view text, line());
        if (text.size() < 2 || text.front() != text.back() || (text.front() != '\'' && text.front() != '"'))
          return fail(Rule::pickle_bad_string, "the STRING opcode argument must be quoted: '" + quote(text) + "'");
        std::string out, why;
        if (!decode_escapes(text.substr(1, text.size() - 2), out, why))
          return fail(Rule::pickle_bad_string, "STRING argument '" + quote(text) + "': " + why);
        return push_text(NodeKind::Py2Str, out);
      }
      case Op::BINSTRING: {
        MCDR_ASSIGN(int32_t n, fixed<int32_t>());
        if (n < 0) return fail(Rule::pickle_negative_length, "BINSTRING has negative byte count " + std::to_string(n));
        MCDR_ASSIGN(std::string_view s, payload(static_cast<uint64_t>(n)));
        return push_text(NodeKind::Py2Str, s);
      }
      case Op::SHORT_BINSTRING: {
        MCDR_ASSIGN(uint8_t n, fixed<uint8_t>());
        MCDR_ASSIGN(std::string_view s, payload(n));
        return push_text(NodeKind::Py2Str, s);
      }
      case Op::SHORT_BINBYTES: {
        MCDR_ASSIGN(uint8_t n, fixed<uint8_t>());
        MCDR_ASSIGN(std::string_view s, payload(n));
        return push_text(NodeKind::Bytes, s);
      }
      case Op::BINBYTES: {
        MCDR_ASSIGN(uint32_t n, fixed<uint32_t>());
        MCDR_ASSIGN(std::string_view s, payload(n));
        return push_text(NodeKind::Bytes, s);
      }
      case Op::BINBYTES8: {
        MCDR_ASSIGN(uint64_t n, fixed<uint64_t>());
        MCDR_ASSIGN(std::string_view s, payload(n));
        return push_text(NodeKind::Bytes, s);
      }
      case Op::BYTEARRAY8: {
        MCDR_ASSIGN(uint64_t n, fixed<uint64_t>());
        MCDR_ASSIGN(std::string_view s, payload(n));
        return push_text(NodeKind::ByteArray, s);
      }
      case Op::UNICODE: {
        MCDR_ASSIGN(std::string_view text, line());
        std::string out, why;
        if (!decode_raw_unicode_escape(text, out, why))
          return fail(Rule::pickle_bad_unicode, "UNICODE argument '" + quote(text) + "': " + why);
        return push_text(NodeKind::Str, out);
      }
      case Op::SHORT_BINUNICODE: {
        MCDR_ASSIGN(uint8_t n, fixed<uint8_t>());
        return push_utf8(n);
      }
      case Op::BINUNICODE: {
        MCDR_ASSIGN(uint32_t n, fixed<uint32_t>());
        return push_utf8(n);
      }
      case Op::BINUNICODE8: {
        MCDR_ASSIGN(uint64_t n, fixed<uint64_t>());
        return push_utf8(n);
      }

      // ---- out-of-band buffers
      case Op::NEXT_BUFFER: {
        note(Repeat::OutOfBand, Severity::high, Rule::pickle_out_of_band_buffer,
             [&] { return std::string("NEXT_BUFFER refers to an out-of-band buffer, which a file cannot carry"); });
        return push_simple(NodeKind::Buffer);
      }
      case Op::READONLY_BUFFER: return need(1);

      // ---- containers
      case Op::EMPTY_LIST: return push_simple(NodeKind::List);
      case Op::EMPTY_TUPLE: return push_simple(NodeKind::Tuple);
      case Op::EMPTY_DICT: return push_simple(NodeKind::Dict);
      case Op::EMPTY_SET: return push_simple(NodeKind::Set);
      case Op::LIST: return from_mark(NodeKind::List);
      case Op::TUPLE: return from_mark(NodeKind::Tuple);
      case Op::FROZENSET: return from_mark(NodeKind::FrozenSet);
      case Op::DICT: {
        MCDR_ASSIGN(size_t m, pop_mark());
        MCDR_ASSIGN(NodeId id, make(NodeKind::Dict));
        MCDR_TRY(take_pairs(m, node(id).mutations(*prog_.arena).entries, "DICT"));
        return push(id);
      }
      case Op::TUPLE1: return small_tuple(1);
      case Op::TUPLE2: return small_tuple(2);
      case Op::TUPLE3: return small_tuple(3);
      case Op::APPEND: {
        MCDR_TRY(need(2));
        MCDR_TRY(count_items(1));
        NodeId v = pop_unchecked();
        Node& target = node(stack_.back());
        if (target.kind == NodeKind::List) target.items.push_back(*prog_.arena, v);
        else target.mutations(*prog_.arena).appended.push_back(*prog_.arena, v);
        return ok_status();
      }
      case Op::APPENDS: {
        MCDR_ASSIGN(size_t m, pop_mark());
        if (m <= fence() || m > stack_.size()) return underflow();
        Node& target = node(stack_[m - 1]);
        if (target.kind == NodeKind::List) return take_from(m, target.items);
        return take_from(m, target.mutations(*prog_.arena).appended);
      }
      case Op::ADDITEMS: {
        MCDR_ASSIGN(size_t m, pop_mark());
        if (m <= fence() || m > stack_.size()) return underflow();
        Node& target = node(stack_[m - 1]);
        if (target.kind == NodeKind::Set) return take_from(m, target.items);
        return take_from(m, target.mutations(*prog_.arena).appended);
      }
      case Op::SETITEM: {
        MCDR_TRY(need(3));
        MCDR_TRY(count_items(2));
        NodeId v = pop_unchecked();
        NodeId k = pop_unchecked();
        node(stack_.back()).mutations(*prog_.arena).entries.push_back(*prog_.arena, {k, v});
        return ok_status();
      }
      case Op::SETITEMS: {
        MCDR_ASSIGN(size_t m, pop_mark());
        if (m <= fence() || m > stack_.size()) return underflow();
        return take_pairs(m, node(stack_[m - 1]).mutations(*prog_.arena).entries, "SETITEMS");
      }

      // ---- stack manipulation
      case Op::MARK: {
        MCDR_TRY(check_depth(1));
        marks_.push_back(stack_.size());
        return ok_status();
      }
      case Op::POP: {
        if (!marks_.empty() && marks_.back() == stack_.size()) {
          marks_.pop_back();
          return ok_status();
        }
        MCDR_TRY(need(1));
        stack_.pop_back();
        return ok_status();
      }
      case Op::POP_MARK: {
        MCDR_ASSIGN(size_t m, pop_mark());
        stack_.resize(m);
        return ok_status();
      }
      case Op::DUP: {
        MCDR_TRY(need(1));
        return push(stack_.back());
      }

      // ---- memo
      case Op::GET: {
        MCDR_ASSIGN(uint64_t idx, memo_index_text(false));
        return memo_get(idx);
      }
      case Op::BINGET: {
        MCDR_ASSIGN(uint8_t idx, fixed<uint8_t>());
        return memo_get(idx);
      }
      case Op::LONG_BINGET: {
        MCDR_ASSIGN(uint32_t idx, fixed<uint32_t>());
        return memo_get(idx);
      }
      case Op::PUT: {
        MCDR_ASSIGN(uint64_t idx, memo_index_text(true));
        return memo_put(idx);
      }
      case Op::BINPUT: {
        MCDR_ASSIGN(uint8_t idx, fixed<uint8_t>());
        return memo_put(idx);
      }
      case Op::LONG_BINPUT: {
        MCDR_ASSIGN(uint32_t idx, fixed<uint32_t>());
        return memo_put(idx);
      }
      case Op::MEMOIZE: return memo_put(memo_.size());

      // ---- names, calls, objects
      case Op::GLOBAL: {
        MCDR_ASSIGN(auto names, global_lines());
        if (opt_.cpython_view)
          if (auto it = module_attrs_.find(names.first + "." + names.second); it != module_attrs_.end()) return push(it->second);
        MCDR_ASSIGN(NodeId id, make_global(std::move(names.first), std::move(names.second)));
        return push(id);
      }
      case Op::STACK_GLOBAL: {
        MCDR_TRY(need(2));
        NodeId name = pop_unchecked();
        NodeId module = pop_unchecked();
        if (opt_.cpython_view) return cpython_stack_global(module, name);
        if (node(module).kind != NodeKind::Str || node(name).kind != NodeKind::Str)
          return fail(Rule::pickle_stack_global_operand, "STACK_GLOBAL requires two str operands (module and name)");
        MCDR_ASSIGN(NodeId id, make_global(std::string(node(module).text), std::string(node(name).text)));
        return push(id);
      }
      case Op::EXT1: {
        MCDR_ASSIGN(uint8_t code, fixed<uint8_t>());
        return ext(code);
      }
      case Op::EXT2: {
        MCDR_ASSIGN(uint16_t code, fixed<uint16_t>());
        return ext(code);
      }
      case Op::EXT4: {
        MCDR_ASSIGN(int32_t code, fixed<int32_t>());
        return ext(code);
      }
      case Op::REDUCE: return call(NodeKind::Call, 2);
      case Op::NEWOBJ: return call(NodeKind::NewObj, 2);
      case Op::NEWOBJ_EX: return call(NodeKind::NewObj, 3);
      case Op::BUILD: {
        MCDR_TRY(need(2));
        MCDR_TRY(count_items(1));
        NodeId state = pop_unchecked();
        node(stack_.back()).mutations(*prog_.arena).build_states.push_back(*prog_.arena, state);
        if (opt_.cpython_view) note_module_setattr(stack_.back(), state);
        if (opt_.on_array_build && is_array_wrapper(stack_.back())) return array_payload(stack_.back());
        return ok_status();
      }
      case Op::INST: {
        MCDR_ASSIGN(auto names, global_lines());
        MCDR_ASSIGN(size_t m, pop_mark());
        MCDR_ASSIGN(NodeId cls, make_global(std::move(names.first), std::move(names.second)));
        MCDR_ASSIGN(NodeId id, make(NodeKind::Inst));
        MCDR_TRY(count_items(1));
        node(id).items.push_back(*prog_.arena, cls);
        MCDR_TRY(take_from(m, node(id).items));
        return push(id);
      }
      case Op::OBJ: {
        MCDR_ASSIGN(size_t m, pop_mark());
        if (stack_.size() < m + 1) return underflow();
        MCDR_ASSIGN(NodeId id, make(NodeKind::Inst));
        MCDR_TRY(take_from(m, node(id).items));
        return push(id);
      }
      case Op::PERSID: {
        MCDR_ASSIGN(std::string_view pid, line());
        if (std::any_of(pid.begin(), pid.end(), [](char c) { return static_cast<uint8_t>(c) >= 0x80; }))
          return fail(Rule::pickle_bad_persid, "persistent IDs in protocol 0 must be ASCII strings: '" + quote(pid) + "'");
        MCDR_ASSIGN(NodeId str, make(NodeKind::Str));
        prog_.set_text(node(str), NodeKind::Str, pid);
        MCDR_ASSIGN(NodeId id, make(NodeKind::PersId));
        MCDR_TRY(count_items(1));
        node(id).items.push_back(*prog_.arena, str);
        return push(id);
      }
      case Op::BINPERSID: return call(NodeKind::PersId, 1);

      case Op::STOP: break;  // handled by execute()
    }
    return fail(Rule::pickle_unknown_opcode, "unknown opcode " + hex_byte(op_) + " (invalid load key)");
  }

  Status push_utf8(uint64_t n) {
    MCDR_ASSIGN(std::string_view s, payload(n));
    if (!valid_utf8(s, true))
      return fail(Rule::pickle_bad_utf8, op_name() + " payload of " + std::to_string(n) + " bytes is not valid UTF-8");
    return push_text(NodeKind::Str, s);
  }

  Status from_mark(NodeKind kind) {
    MCDR_ASSIGN(size_t m, pop_mark());
    MCDR_ASSIGN(NodeId id, make(kind));
    MCDR_TRY(take_from(m, node(id).items));
    return push(id);
  }

  Status small_tuple(size_t n) {
    MCDR_TRY(need(n));
    MCDR_ASSIGN(NodeId id, make(NodeKind::Tuple));
    MCDR_TRY(take_from(stack_.size() - n, node(id).items));
    return push(id);
  }

  // Pops `n` operands (first pushed = items[0]) into a new node of `kind`.
  Status call(NodeKind kind, size_t n) {
    MCDR_TRY(need(n));
    MCDR_ASSIGN(NodeId id, make(kind));
    MCDR_TRY(take_from(stack_.size() - n, node(id).items));
    return push(id);
  }

  // BUILD target whose class is joblib's NumpyArrayWrapper (what joblib's unpickler checks
  // with isinstance after BUILD, whichever opcode created the object).
  bool is_array_wrapper(NodeId id) const {
    const Node& n = prog_.nodes[id];
    if ((n.kind != NodeKind::NewObj && n.kind != NodeKind::Call && n.kind != NodeKind::Inst) || n.items.empty())
      return false;
    const Node& cls = prog_.nodes[n.items[0]];
    return cls.kind == NodeKind::Global && cls.name() == "NumpyArrayWrapper" &&
           (cls.text == "joblib.numpy_pickle" || cls.text == "sklearn.externals.joblib.numpy_pickle");
  }

  Status array_payload(NodeId id) {
    if (node(id).has_payload) return fail(Rule::joblib_double_build, "a second BUILD on one NumpyArrayWrapper");
    // joblib reads the array from the file, after the current frame: bytes left in the frame
    // would be read by the two sides differently.
    if (in_frame_ && cur_.pos() != frame_end_)
      return fail(Rule::joblib_array_inside_frame, "NumpyArrayWrapper BUILD is not the last opcode of its FRAME");
    size_t before = cur_.pos();
    MCDR_ASSIGN(RawPayload p, opt_.on_array_build(prog_, id, cur_));
    if (p.offset != before || cur_.pos() != before + p.size)
      return fail(Rule::joblib_bad_hook, "array hook reported a span it did not consume");
    Node& n = node(id);
    n.has_payload = true;
    prog_.payloads[id] = NodePayload{p.offset, p.size, p.is_pickle};
    in_frame_ = false;
    array_consumed_ = true;
    return ok_status();
  }

  Status ext(int64_t code) {
    if (code <= 0) return fail(Rule::pickle_bad_ext_code, op_name() + " specifies code " + std::to_string(code) + " <= 0");
    note(Repeat::Ext, Severity::high, Rule::pickle_ext_opcode,
         [&] { return std::string(op_name() + " code " + std::to_string(code) +
             " names a global through the copyreg extension registry (stock CPython registers none)"); });
    MCDR_ASSIGN(NodeId id, make(NodeKind::Ext));
    node(id).i = code;
    return push(id);
  }

  struct RepeatState {
    size_t index = 0;
    uint64_t count = 0;
  };

  io::ByteCursor cur_;
  const DecodeOptions& opt_;
  const MachineLimits& lim_;
  Findings& findings_;
  Program prog_;
  std::vector<NodeId> stack_;
  std::vector<std::pair<NodeId, NodeId>> pairs_;  // take_pairs' scratch
  std::vector<size_t> marks_;  // stack depths at each MARK, innermost last
  Memo memo_;
  std::unordered_map<std::string, NodeId> module_attrs_;  // cpython_view: "module.name.attr" -> value set by BUILD
  std::array<RepeatState, static_cast<size_t>(Repeat::kCount)> repeats_{};
  static constexpr size_t kMaxRemapFindings = 32;
  std::unordered_map<std::string, RepeatState> remaps_;
  size_t op_pos_ = 0;
  uint8_t op_ = 0;
  uint64_t items_total_ = 0;
  bool in_frame_ = false;
  size_t frame_end_ = 0;
  bool array_consumed_ = false;  // the last BUILD consumed array bytes (not a frame straddle)
};

}  // namespace

bool valid_utf8_text(std::string_view s, bool allow_surrogates) { return valid_utf8(s, allow_surrogates); }

Result<Program> decode(std::span<const uint8_t> data, const DecodeOptions& options, Findings& findings) {
  return Machine(data, options, findings).run();
}

}  // namespace modelcdr::pickle
