// Strict ustar/PAX reader. Where the behaviour of Python's tarfile (the loader) matters, the
// comments name it: we accept exactly what it reads the same way, and reject what it reads
// differently or silently drops.
#include "container/tar_reader.hpp"

#include <algorithm>
#include <optional>
#include <string_view>
#include <unordered_set>

#include "io/byte_cursor.hpp"

namespace modelcdr::container {

namespace {

using io::ByteCursor;
using io::Bytes;

constexpr uint64_t kBlock = 512;

std::string_view field(Bytes header, size_t off, size_t len) {
  std::string_view s(reinterpret_cast<const char*>(header.data()) + off, len);
  size_t nul = s.find('\0');
  return nul == std::string_view::npos ? s : s.substr(0, nul);
}

// Number field: octal text (NUL-terminated, blank-padded) or GNU base-256 (leading 0x80).
Result<uint64_t> number(Bytes header, size_t off, size_t len, const char* what, uint64_t where) {
  auto bad = [&](const std::string& why) {
    return make_error(Rule::tar_bad_number, std::string(what) + " field " + why, where + off);
  };
  uint8_t lead = header[off];
  if (lead == 0x80) {
    uint64_t v = 0;
    for (size_t i = 1; i < len; ++i) {
      if (v >> 56) return bad("overflows 64 bits");
      v = (v << 8) | header[off + i];
    }
    if (v >> 63) return bad("overflows 63 bits");
    return v;
  }
  if (lead == 0xFF) return bad("is negative");
  std::string_view s = field(header, off, len);
  size_t b = s.find_first_not_of(" \t\n\r\v\f");
  if (b == std::string_view::npos) return uint64_t{0};
  size_t e = s.find_last_not_of(" \t\n\r\v\f");
  s = s.substr(b, e - b + 1);
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '7') return bad("is not octal");
    if (v >> 60) return bad("overflows 63 bits");
    v = v * 8 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

bool all_zero(Bytes b) {
  return std::all_of(b.begin(), b.end(), [](uint8_t x) { return x == 0; });
}

std::string unsafe_reason(std::string_view n) {
  if (n.empty()) return "empty name";
  if (n.front() == '/') return "absolute path";
  if (n.find('\\') != std::string_view::npos) return "backslash in name";
  if (n.size() >= 2 && n[1] == ':' && ((n[0] >= 'a' && n[0] <= 'z') || (n[0] >= 'A' && n[0] <= 'Z')))
    return "drive letter";
  size_t start = 0;
  while (true) {
    size_t slash = n.find('/', start);
    size_t end = slash == std::string_view::npos ? n.size() : slash;
    if (n.substr(start, end - start) == "..") return "'..' path component";
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return {};
}

struct PaxValues {
  std::optional<std::string> path;
  std::optional<uint64_t> size;
  bool sparse = false;
};

// Records "<len> <key>=<value>\n", len counting the whole record. A NUL ends the list (as in
// Python's tarfile).
Result<PaxValues> parse_pax(Bytes data, uint64_t where, const TarLimits& limits) {
  PaxValues v;
  ByteCursor c(data, {}, where);
  while (!c.at_end()) {
    MCDR_ASSIGN(uint8_t first, c.peek_u8());
    if (first == 0) break;
    const size_t record_start = c.pos();
    uint64_t len = 0;
    size_t digits = 0;
    while (true) {
      auto ch = c.u8();
      if (!ch) return make_error(Rule::tar_bad_pax, "PAX record length not terminated", c.abs_pos());
      if (*ch == ' ') break;
      if (*ch < '0' || *ch > '9' || ++digits > 18)
        return make_error(Rule::tar_bad_pax, "PAX record length is not a decimal number", c.abs_pos());
      len = len * 10 + static_cast<uint64_t>(*ch - '0');
    }
    const size_t header_len = c.pos() - record_start;
    if (digits == 0 || len < 5 || len <= header_len || len - header_len > c.remaining())
      return make_error(Rule::tar_bad_pax, "PAX record length " + std::to_string(len) + " is invalid", c.abs_pos());
    MCDR_ASSIGN(std::string_view body, c.take_view(len - header_len));
    if (body.back() != '\n') return make_error(Rule::tar_bad_pax, "PAX record not terminated by a newline", c.abs_pos());
    body.remove_suffix(1);
    size_t eq = body.find('=');
    if (eq == std::string_view::npos || eq == 0)
      return make_error(Rule::tar_bad_pax, "PAX record without keyword=value", c.abs_pos());
    std::string_view key = body.substr(0, eq), value = body.substr(eq + 1);
    if (key == "path") {
      if (value.size() > limits.max_name_bytes)
        return make_error(Rule::tar_bad_pax, "PAX path longer than " + std::to_string(limits.max_name_bytes), c.abs_pos());
      std::string p(value);
      while (!p.empty() && p.back() == '/') p.pop_back();  // tarfile strips it too
      v.path = std::move(p);
    } else if (key == "size") {
      uint64_t n = 0;
      if (value.empty() || value.size() > 18 ||
          !std::all_of(value.begin(), value.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
        return make_error(Rule::tar_bad_pax, "PAX size is not a decimal number", c.abs_pos());
      for (char ch : value) n = n * 10 + static_cast<uint64_t>(ch - '0');
      v.size = n;
    } else if (key.starts_with("GNU.sparse.")) {
      v.sparse = true;
    }
  }
  return v;
}

}  // namespace

Result<TarArchive> read_tar(std::span<const uint8_t> file, Findings& findings, const TarLimits& limits) {
  TarArchive archive;
  std::unordered_set<std::string> names;
  ByteCursor c(file);
  std::optional<PaxValues> pending;  // from an 'x' header, applies to the next member
  uint64_t pending_at = 0;
  bool first = true;

  while (true) {
    if (c.at_end()) {
      if (pending) return make_error(Rule::tar_truncated, "PAX header without a following member", pending_at);
      if (first) return make_error(Rule::tar_truncated, "empty tar file", 0);
      break;  // tarfile accepts an archive that simply ends after its last member
    }
    const uint64_t header_pos = c.pos();
    if (c.remaining() < kBlock)
      return make_error(Rule::tar_truncated, "partial tar header (" + std::to_string(c.remaining()) + " bytes)",
                        header_pos);
    MCDR_ASSIGN(Bytes h, c.take(kBlock));
    if (all_zero(h)) {
      // End of archive (tarfile stops at the first zero block). What follows should be zeros.
      if (pending) return make_error(Rule::tar_truncated, "PAX header without a following member", pending_at);
      if (first) return make_error(Rule::tar_truncated, "tar file starts with an end-of-archive block", 0);
      MCDR_ASSIGN(Bytes rest, c.take(c.remaining()));
      if (!all_zero(rest))
        add_finding(findings, Severity::medium, Rule::tar_trailing_bytes,
                    std::to_string(rest.size()) + " bytes after the end-of-archive block are not zero", {},
                    header_pos + kBlock);
      break;
    }
    first = false;

    // Checksum: the field itself counts as blanks; tarfile accepts the unsigned or signed sum.
    MCDR_ASSIGN(uint64_t stored_sum, number(h, 148, 8, "checksum", header_pos));
    int64_t unsigned_sum = 0, signed_sum = 0;
    for (size_t i = 0; i < kBlock; ++i) {
      uint8_t b = (i >= 148 && i < 156) ? uint8_t{' '} : h[i];
      unsigned_sum += b;
      signed_sum += static_cast<int8_t>(b);
    }
    if (static_cast<int64_t>(stored_sum) != unsigned_sum && static_cast<int64_t>(stored_sum) != signed_sum)
      return make_error(Rule::tar_bad_checksum, "tar header checksum mismatch", header_pos + 148);
    std::string_view magic = field(h, 257, 6);
    if (magic != "ustar")
      return make_error(Rule::tar_bad_magic, "not a ustar/PAX header (pre-POSIX tar is not accepted)", header_pos + 257);
    // Every number field: tarfile stops reading at the first bad one, so the rest would be unseen.
    MCDR_TRY(number(h, 100, 8, "mode", header_pos));
    MCDR_TRY(number(h, 108, 8, "uid", header_pos));
    MCDR_TRY(number(h, 116, 8, "gid", header_pos));
    MCDR_ASSIGN(uint64_t size, number(h, 124, 12, "size", header_pos));
    MCDR_TRY(number(h, 136, 12, "mtime", header_pos));
    MCDR_TRY(number(h, 329, 8, "devmajor", header_pos));
    MCDR_TRY(number(h, 337, 8, "devminor", header_pos));

    char type = static_cast<char>(h[156]);
    std::string name(field(h, 0, 100));
    std::string_view prefix = field(h, 345, 155);
    if (type == '\0' && !name.empty() && name.back() == '/') type = '5';  // V7 directory convention

    if (type == 'x' || type == 'X' || type == 'g') {
      if (pending) return make_error(Rule::tar_bad_pax, "two PAX headers in a row", header_pos);
      if (size > limits.max_pax_bytes)
        return make_error(Rule::tar_bad_pax, "PAX header of " + std::to_string(size) + " bytes exceeds the limit",
                          header_pos + 124);
      auto data = c.take(size);
      if (!data) return make_error(Rule::tar_truncated, "PAX header data runs past the end of the file", header_pos);
      MCDR_TRY(c.skip(std::min<uint64_t>((kBlock - size % kBlock) % kBlock, c.remaining())));
      MCDR_ASSIGN(PaxValues pax, parse_pax(*data, header_pos + kBlock, limits));
      if (pax.sparse) return make_error(Rule::tar_bad_member, "GNU sparse members are not supported", header_pos);
      if (type == 'g') {
        if (pax.path || pax.size)
          return make_error(Rule::tar_bad_pax, "global PAX header overrides path or size of every later member",
                            header_pos);
        add_finding(findings, Severity::medium, Rule::tar_pax_global, "global PAX header (ignored)", {}, header_pos);
        continue;
      }
      pending = std::move(pax);
      pending_at = header_pos;
      continue;
    }
    if (type == 'L' || type == 'K' || type == 'S')
      return make_error(Rule::tar_bad_member, std::string("GNU member type '") + type + "' is not supported", header_pos);

    if (type == '5') {
      while (!name.empty() && name.back() == '/') name.pop_back();
    }
    if (!prefix.empty()) name = std::string(prefix) + "/" + name;
    if (pending) {
      if (pending->path) name = *pending->path;
      if (pending->size) size = *pending->size;
      pending.reset();
    }
    if (name.size() > limits.max_name_bytes)
      return make_error(Rule::tar_bad_member, "member name longer than " + std::to_string(limits.max_name_bytes),
                        header_pos);

    const bool regular = type == '0' || type == '\0' || type == '7';
    const bool known_special = type == '1' || type == '2' || type == '3' || type == '4' || type == '5' || type == '6';
    // tarfile skips data only for regular and unknown types; a special member with a size
    // would have its "data" parsed as the next header there.
    if (known_special && size != 0)
      return make_error(Rule::tar_bad_member,
                        "member of type '" + std::string(1, type) + "' declares " + std::to_string(size) +
                            " data bytes",
                        header_pos + 124);
    const uint64_t data_offset = c.pos();
    if (regular || !known_special) {
      if (size > c.remaining())
        return make_error(Rule::tar_truncated,
                          "member data (" + std::to_string(size) + " bytes) runs past the end of the file", header_pos,
                          name);
      MCDR_TRY(c.skip(size));
      MCDR_TRY(c.skip(std::min<uint64_t>((kBlock - size % kBlock) % kBlock, c.remaining())));
    }

    if (auto why = unsafe_reason(name); !why.empty())
      add_finding(findings, Severity::high, Rule::tar_unsafe_name, why + ": '" + name + "'", name, header_pos);
    if (!names.insert(name).second)
      add_finding(findings, Severity::high, Rule::tar_duplicate_name, "duplicate member name '" + name + "'", name,
                  header_pos);
    if (!regular && type != '5') {
      add_finding(findings, Severity::high, Rule::tar_non_regular,
                  "member type '" + std::string(1, type) + "' (link, device, fifo or unknown) is not allowed", name,
                  header_pos);
      continue;
    }
    if (archive.members.size() >= limits.max_members)
      return make_error(Rule::tar_too_many_members, "more than " + std::to_string(limits.max_members) + " members",
                        header_pos);
    archive.members.push_back(TarMember{std::move(name), data_offset, regular ? size : 0, regular ? '0' : '5'});
  }
  return archive;
}

Result<std::span<const uint8_t>> tar_member_bytes(std::span<const uint8_t> file, const TarMember& member) {
  ByteCursor c(file);
  if (member.data_offset > file.size())
    return make_error(Rule::tar_truncated, "member offset beyond the end of the file", member.data_offset, member.name);
  MCDR_TRY(c.seek(static_cast<size_t>(member.data_offset)));
  return c.take(member.size);
}

}  // namespace modelcdr::container
