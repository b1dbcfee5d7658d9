// Strict .npy header parser; see npy_header.hpp for why it is hand-written and what it accepts.
#include "formats/npy_header.hpp"

#include "io/byte_cursor.hpp"

namespace modelcdr::formats {

namespace {

constexpr uint64_t kMaxHeader = 1 << 20;  // numpy itself refuses > 10000 bytes by default
constexpr size_t kMaxDims = 64;

class DictParser {
 public:
  DictParser(std::span<const uint8_t> text, const std::string& entry, uint64_t base) : c_(text, entry, base) {}

  Result<NpyHeader> run() {
    NpyHeader h;
    bool have_descr = false, have_order = false, have_shape = false;
    skip_ws();
    MCDR_TRY(expect('{'));
    for (;;) {
      skip_ws();
      MCDR_ASSIGN(uint8_t c, c_.peek_u8());
      if (c == '}') break;
      uint64_t key_at = c_.abs_pos();
      MCDR_ASSIGN(std::string key, string_literal());
      skip_ws();
      MCDR_TRY(expect(':'));
      skip_ws();
      if (key == "descr") {
        if (have_descr) return dup(key, key_at);
        have_descr = true;
        MCDR_ASSIGN(uint8_t v, c_.peek_u8());
        if (v == '[')
          return c_.err(Rule::npy_unsupported_dtype, "structured dtypes (a list of fields) are not supported");
        MCDR_ASSIGN(h.descr, string_literal());
      } else if (key == "fortran_order") {
        if (have_order) return dup(key, key_at);
        have_order = true;
        MCDR_ASSIGN(h.fortran_order, boolean());
      } else if (key == "shape") {
        if (have_shape) return dup(key, key_at);
        have_shape = true;
        MCDR_ASSIGN(h.shape, shape());
      } else {
        return make_error(Rule::npy_bad_header, "unexpected header key '" + key.substr(0, 40) + "'", key_at, c_.entry());
      }
      skip_ws();
      MCDR_ASSIGN(uint8_t sep, c_.peek_u8());
      if (sep == ',') {
        MCDR_TRY(c_.skip(1));
        continue;
      }
      if (sep != '}') return c_.err(Rule::npy_bad_header, "expected ',' or '}' in the header dict");
    }
    MCDR_TRY(expect('}'));
    if (!have_descr || !have_order || !have_shape)
      return c_.err(Rule::npy_bad_header, "header dict lacks one of 'descr', 'fortran_order', 'shape'");
    end_ = c_.pos();
    return h;
  }
  size_t end() const { return end_; }

 private:
  Error dup(const std::string& key, uint64_t at) {
    return make_error(Rule::npy_duplicate_key, "header key '" + key + "' appears twice", at, c_.entry());
  }
  void skip_ws() {
    while (!c_.at_end()) {
      auto b = c_.peek_u8();
      if (*b != ' ') return;
      (void)c_.skip(1);
    }
  }
  Status expect(char ch) {
    MCDR_ASSIGN(uint8_t b, c_.u8());
    if (b != static_cast<uint8_t>(ch)) return c_.err(Rule::npy_bad_header, std::string("expected '") + ch + "' in the header dict");
    return ok_status();
  }
  Result<std::string> string_literal() {
    MCDR_ASSIGN(uint8_t q, c_.u8());
    if (q != '\'' && q != '"') return c_.err(Rule::npy_bad_header, "expected a quoted string in the header dict");
    std::string s;
    for (;;) {
      MCDR_ASSIGN(uint8_t b, c_.u8());
      if (b == q) return s;
      if (b == '\\' || b < 0x20 || b >= 0x7f)
        return c_.err(Rule::npy_bad_header, "header strings must be plain printable ASCII without escapes");
      if (s.size() > 256) return c_.err(Rule::npy_bad_header, "header string too long");
      s.push_back(static_cast<char>(b));
    }
  }
  Result<bool> boolean() {
    MCDR_ASSIGN(uint8_t b, c_.peek_u8());
    std::string_view want = b == 'T' ? "True" : "False";
    MCDR_ASSIGN(std::string_view got, c_.take_view(want.size()));
    if (got != want) return c_.err(Rule::npy_bad_header, "fortran_order must be True or False");
    return b == 'T';
  }
  Result<std::vector<uint64_t>> shape() {
    std::vector<uint64_t> dims;
    MCDR_TRY(expect('('));
    for (;;) {
      skip_ws();
      MCDR_ASSIGN(uint8_t b, c_.peek_u8());
      if (b == ')') break;
      if (b < '0' || b > '9') return c_.err(Rule::npy_bad_header, "shape must be a tuple of non-negative integers");
      uint64_t v = 0;
      size_t digits = 0;
      while (!c_.at_end() && *c_.peek_u8() >= '0' && *c_.peek_u8() <= '9') {
        uint8_t d = *c_.u8();
        if (digits == 1 && v == 0) return c_.err(Rule::npy_bad_header, "shape integer with a leading zero");
        if (v > (UINT64_MAX - (d - '0')) / 10) return c_.err(Rule::npy_bad_header, "shape integer overflows 64 bits");
        v = v * 10 + (d - '0');
        ++digits;
      }
      if (!c_.at_end() && *c_.peek_u8() == 'L') (void)c_.skip(1);  // Python 2 long literal
      dims.push_back(v);
      if (dims.size() > kMaxDims) return c_.err(Rule::npy_bad_header, "more than 64 dimensions");
      skip_ws();
      MCDR_ASSIGN(uint8_t sep, c_.peek_u8());
      if (sep == ',') {
        MCDR_TRY(c_.skip(1));
        continue;
      }
      if (sep != ')') return c_.err(Rule::npy_bad_header, "expected ',' or ')' in the shape tuple");
      // (n) without a comma is a parenthesised int, not a tuple: numpy would reject it too.
      if (dims.size() == 1) return c_.err(Rule::npy_bad_header, "shape '(n)' is not a tuple");
    }
    MCDR_TRY(expect(')'));
    return dims;
  }

  io::ByteCursor c_;
  size_t end_ = 0;
};

}  // namespace

Result<NpyHeader> parse_npy_dict(std::string_view text, const std::string& entry, uint64_t base, Findings& findings) {
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  DictParser p(bytes, entry, base);
  MCDR_ASSIGN(NpyHeader h, p.run());
  // After the dict: spaces, then exactly one '\n' as the last byte.
  io::ByteCursor rest(bytes, entry, base);
  MCDR_TRY(rest.seek(p.end()));
  bool bad_pad = false, newline = false;
  while (!rest.at_end()) {
    uint8_t b = *rest.u8();
    if (b == '\n' && rest.at_end()) newline = true;
    else if (b != ' ') bad_pad = true;
  }
  if (bad_pad)
    add_finding(findings, Severity::medium, Rule::npy_header_padding, "header padding holds bytes other than spaces", entry,
                base + p.end());
  if (!newline)
    add_finding(findings, Severity::low, Rule::npy_header_newline, "header does not end with a newline", entry,
                base + text.size());
  return h;
}

Result<NpyHeader> parse_npy_header(std::span<const uint8_t> file, const std::string& entry, Findings& findings) {
  io::ByteCursor c(file, entry);
  MCDR_ASSIGN(std::string_view magic, c.take_view(6));
  if (magic != "\x93NUMPY") return c.err(Rule::npy_bad_magic, "not a .npy file (magic)");
  MCDR_ASSIGN(uint8_t major, c.u8());
  MCDR_ASSIGN(uint8_t minor, c.u8());
  if (major < 1 || major > 3 || minor != 0)
    return c.err(Rule::npy_bad_version, "format version " + std::to_string(major) + "." + std::to_string(minor) + " is unknown");
  uint64_t len = 0;
  if (major == 1) {
    MCDR_ASSIGN(len, c.u16le());
  } else {
    MCDR_ASSIGN(len, c.u32le());
  }
  if (len > kMaxHeader) return c.err(Rule::npy_header_too_large, "header length " + std::to_string(len) + " exceeds 1 MiB");
  uint64_t text_at = c.pos();
  MCDR_ASSIGN(std::string_view text, c.take_view(len));
  if (major != 3)
    for (char ch : text)
      if (static_cast<uint8_t>(ch) >= 0x80)
        return make_error(Rule::npy_bad_header, "version 1/2 header is not ASCII", text_at, entry);
  MCDR_ASSIGN(NpyHeader h, parse_npy_dict(text, entry, text_at, findings));
  h.major = major;
  h.minor = minor;
  h.header_len = len;
  h.data_offset = c.pos();
  if (h.data_offset % 64 != 0 && h.data_offset % 16 != 0)
    add_finding(findings, Severity::low, Rule::npy_header_alignment,
                "data starts at offset " + std::to_string(h.data_offset) +
                    ", not 64/16-aligned as numpy writes it (the length field may not match the padded header)",
                entry, 6);
  return h;
}

}  // namespace modelcdr::formats
