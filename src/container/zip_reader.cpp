// Strict ZIP reader. The layout rules below follow what the two readers that matter do with
// the same bytes -- miniz inside torch.load and Python's zipfile (np.load, tooling) -- and
// report every place where they could disagree, so that what we scan is what they load.
#include "container/zip_reader.hpp"
#include "io/mapped_file.hpp"

#include <libdeflate.h>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_set>

#include "io/byte_cursor.hpp"

namespace modelcdr::container {

namespace {

using io::ByteCursor;
using io::Bytes;

constexpr uint32_t kLocalSig = 0x04034b50;       // PK\3\4
constexpr uint32_t kCentralSig = 0x02014b50;     // PK\1\2
constexpr uint32_t kEocdSig = 0x06054b50;        // PK\5\6
constexpr uint32_t kZip64EocdSig = 0x06064b50;   // PK\6\6
constexpr uint32_t kZip64LocatorSig = 0x07064b50;  // PK\6\7
constexpr uint32_t kDescriptorSig = 0x08074b50;  // PK\7\8

constexpr uint64_t kEocdSize = 22;
constexpr uint64_t kLocatorSize = 20;
constexpr uint64_t kZip64EocdFixed = 56;  // including signature and the size field
constexpr uint64_t kZip64EocdBody = 44;   // value of the record's own size field
constexpr uint64_t kLocalSize = 30;
constexpr uint64_t kCentralSize = 46;
constexpr uint64_t kMaxComment = 0xFFFF;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kFlagEncrypted = 0x0001;
constexpr uint16_t kFlagDescriptor = 0x0008;
constexpr uint16_t kFlagUtf8 = 0x0800;
constexpr uint16_t kDeflateOptionBits = 0x0006;  // deflate compression-level hints, harmless
// Ratio limits only matter for entries big enough to hurt; tiny zero-filled members of real
// .npz files legitimately compress beyond 1000:1.
constexpr uint64_t kRatioExemptBytes = 1u << 20;

std::string hex(uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  do {
    s.insert(s.begin(), digits[v & 0xF]);
    v >>= 4;
  } while (v);
  return "0x" + s;
}

std::string total_message(uint64_t file_size, const ZipLimits& limits) {
  return "deflated entries inflate to more than " + std::to_string(total_inflate_budget(file_size, limits)) +
         " bytes in all (" + std::to_string(limits.total_inflate_ratio) + " x the file size, within [" +
         std::to_string(limits.total_inflate_floor) + ", " + std::to_string(limits.total_inflate_ceiling) + "])";
}

Result<ByteCursor> cursor_at(Bytes file, uint64_t offset, const std::string& what) {
  if (offset > file.size())
    return make_error(Rule::zip_out_of_bounds, what + " offset " + std::to_string(offset) + " is beyond the end of the file (" +
                                               std::to_string(file.size()) + " bytes)",
                      offset);
  ByteCursor c(file);
  MCDR_TRY(c.seek(static_cast<size_t>(offset)));
  return c;
}

Result<uint32_t> u32_at(Bytes file, uint64_t offset) {
  MCDR_ASSIGN(ByteCursor c, cursor_at(file, offset, "signature"));
  return c.u32le();
}

bool checked_add(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_add_overflow(a, b, &out); }

std::string unsafe_name_reason(std::string_view n, uint16_t flags) {
  if (n.empty()) return "empty name";
  if (n.find('\0') != std::string_view::npos) return "NUL byte in name";
  if (n.find('\\') != std::string_view::npos) return "backslash in name";
  if (n.front() == '/') return "absolute path";
  if (n.size() >= 2 && n[1] == ':' && ((n[0] >= 'a' && n[0] <= 'z') || (n[0] >= 'A' && n[0] <= 'Z')))
    return "drive letter";
  size_t start = 0;
  while (start <= n.size()) {
    size_t slash = n.find('/', start);
    size_t end = slash == std::string_view::npos ? n.size() : slash;
    if (n.substr(start, end - start) == "..") return "'..' path component";
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return {};
}

bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

struct DecompressorDeleter {
  void operator()(libdeflate_decompressor* d) const { libdeflate_free_decompressor(d); }
};

// Inflate `compressed` into exactly `expected` bytes of `scratch`. The directory's size is the
// contract: a stream that ends early, runs long, or leaves compressed bytes unused is an error.
Status inflate_exact(Bytes compressed, uint64_t expected, std::vector<uint8_t>& scratch, const ZipLimits& limits,
                     const std::string& name, uint64_t offset) {
  if (expected > limits.max_inflated_bytes)
    return make_error(Rule::zip_inflate_limit,
                      "deflated entry declares " + std::to_string(expected) + " bytes, above the limit of " +
                          std::to_string(limits.max_inflated_bytes),
                      offset, name);
  if (expected > kRatioExemptBytes && limits.max_inflate_ratio != 0) {
    uint64_t allowed = 0;
    if (!__builtin_mul_overflow(static_cast<uint64_t>(compressed.size()), limits.max_inflate_ratio, &allowed) &&
        expected > allowed)
      return make_error(Rule::zip_inflate_limit,
                        "deflated entry expands " + std::to_string(compressed.size()) + " bytes to " +
                            std::to_string(expected) + ", above the ratio limit of " +
                            std::to_string(limits.max_inflate_ratio),
                        offset, name);
  }
  if (expected > SIZE_MAX - 1) return make_error(Rule::zip_inflate_limit, "entry too large for this platform", offset, name);
  scratch.resize(static_cast<size_t>(expected));
  std::unique_ptr<libdeflate_decompressor, DecompressorDeleter> d(libdeflate_alloc_decompressor());
  if (!d) return make_error(Rule::zip_inflate, "cannot allocate a deflate decompressor", offset, name);
  uint8_t dummy_in = 0, dummy_out = 0;
  const void* in = compressed.empty() ? &dummy_in : compressed.data();
  void* out = scratch.empty() ? &dummy_out : scratch.data();
  size_t consumed = 0;
  libdeflate_result r =
      libdeflate_deflate_decompress_ex(d.get(), in, compressed.size(), out, scratch.size(), &consumed, nullptr);
  switch (r) {
    case LIBDEFLATE_SUCCESS: break;
    case LIBDEFLATE_SHORT_OUTPUT:
      return make_error(Rule::zip_size_mismatch,
                        "deflate stream ends before the " + std::to_string(expected) + " bytes the directory declares",
                        offset, name);
    case LIBDEFLATE_INSUFFICIENT_SPACE:
      return make_error(Rule::zip_size_mismatch,
                        "deflate stream inflates beyond the " + std::to_string(expected) +
                            " bytes the directory declares",
                        offset, name);
    default: return make_error(Rule::zip_bad_deflate, "corrupt deflate stream", offset, name);
  }
  if (consumed != compressed.size())
    return make_error(Rule::zip_bad_deflate,
                      "deflate stream ends after " + std::to_string(consumed) + " of " +
                          std::to_string(compressed.size()) + " compressed bytes (hidden trailing data)",
                      offset, name);
  return ok_status();
}

// One extra field block: id + span of its data. Malformed blocks are reported once per entry.
struct ExtraField {
  uint16_t id;
  Bytes data;
};

bool parse_extras(Bytes extra, std::vector<ExtraField>& out) {
  out.clear();
  ByteCursor c(extra);
  while (!c.at_end()) {
    auto id = c.u16le();
    auto len = c.u16le();
    if (!id || !len) return false;
    auto data = c.take(*len);
    if (!data) return false;
    out.push_back({*id, *data});
  }
  return true;
}

// Zip64 extended information: each field is present only when the classic field holds the
// sentinel, in the order usize, csize, offset, disk (APPNOTE 4.5.3).
struct Zip64Fields {
  uint64_t usize, csize, offset;
  uint32_t disk;
};

Result<Zip64Fields> apply_zip64(Bytes data, Zip64Fields classic, bool want_offset_and_disk, const std::string& name,
                                uint64_t where) {
  ByteCursor c(data);
  Zip64Fields f = classic;
  auto need = [&](auto& field, auto sentinel, auto reader) -> Status {
    if (field != sentinel) return ok_status();
    auto v = reader();
    if (!v)
      return make_error(Rule::zip_zip64_inconsistent, "zip64 extra field is too short for the fields marked 0xFFFFFFFF",
                        where, name);
    field = *v;
    return ok_status();
  };
  MCDR_TRY(need(f.usize, uint64_t{0xFFFFFFFF}, [&] { return c.u64le(); }));
  MCDR_TRY(need(f.csize, uint64_t{0xFFFFFFFF}, [&] { return c.u64le(); }));
  if (want_offset_and_disk) {
    MCDR_TRY(need(f.offset, uint64_t{0xFFFFFFFF}, [&] { return c.u64le(); }));
    MCDR_TRY(need(f.disk, uint32_t{0xFFFF}, [&] { return c.u32le(); }));
  }
  return f;
}

struct EndRecords {
  uint64_t eocd_pos = 0;
  uint64_t eocd_end = 0;  // after the comment
  bool zip64 = false;
  uint64_t zip64_pos = 0, zip64_end = 0;
  uint64_t entries = 0, cd_size = 0, cd_offset = 0;
};

Result<EndRecords> read_end_records(Bytes file, Findings& findings) {
  const uint64_t size = file.size();
  if (size < kEocdSize)
    return make_error(Rule::zip_no_eocd, "file is too small to hold an end-of-central-directory record", 0);
  const uint64_t last = size - kEocdSize;
  const uint64_t lowest = last > kMaxComment ? last - kMaxComment : 0;
  std::optional<uint64_t> found;
  uint64_t misfits = 0, misfit_pos = 0;
  ByteCursor c(file);
  for (uint64_t p = last + 1; p-- > lowest;) {
    MCDR_TRY(c.seek(static_cast<size_t>(p)));
    MCDR_ASSIGN(uint32_t sig, c.u32le());
    if (sig != kEocdSig) continue;
    MCDR_TRY(c.seek(static_cast<size_t>(p + 20)));
    MCDR_ASSIGN(uint16_t comment_len, c.u16le());
    if (p + kEocdSize + comment_len <= size) {
      found = p;
      break;
    }
    ++misfits;
    misfit_pos = p;
  }
  if (!found)
    return make_error(Rule::zip_no_eocd, "no end-of-central-directory record in the last 65557 bytes", size);

  EndRecords er;
  er.eocd_pos = *found;
  MCDR_TRY(c.seek(static_cast<size_t>(er.eocd_pos + 4)));
  MCDR_ASSIGN(uint16_t disk, c.u16le());
  MCDR_ASSIGN(uint16_t cd_disk, c.u16le());
  MCDR_ASSIGN(uint16_t entries_disk, c.u16le());
  MCDR_ASSIGN(uint16_t entries_total, c.u16le());
  MCDR_ASSIGN(uint32_t cd_size, c.u32le());
  MCDR_ASSIGN(uint32_t cd_offset, c.u32le());
  MCDR_ASSIGN(uint16_t comment_len, c.u16le());
  er.eocd_end = er.eocd_pos + kEocdSize + comment_len;

  if (misfits)
    add_finding(findings, Severity::high, Rule::zip_ambiguous_eocd,
                std::to_string(misfits) +
                    " further end-of-central-directory signature(s) after the one used; other readers may pick them",
                {}, misfit_pos);
  if (disk != 0 || cd_disk != 0 || entries_disk != entries_total)
    return make_error(Rule::zip_multi_disk, "multi-disk (spanned) archives are not supported", er.eocd_pos);
  if (comment_len)
    add_finding(findings, Severity::low, Rule::zip_comment,
                "archive comment of " + std::to_string(comment_len) + " bytes", {}, er.eocd_pos + kEocdSize);
  if (er.eocd_end < size)
    add_finding(findings, Severity::medium, Rule::zip_trailing_bytes,
                std::to_string(size - er.eocd_end) + " bytes after the end-of-central-directory record", {},
                er.eocd_end);

  er.entries = entries_total;
  er.cd_size = cd_size;
  er.cd_offset = cd_offset;

  if (er.eocd_pos < kLocatorSize) return er;
  const uint64_t loc_pos = er.eocd_pos - kLocatorSize;
  MCDR_ASSIGN(uint32_t loc_sig, u32_at(file, loc_pos));
  if (loc_sig != kZip64LocatorSig) {
    if (entries_total == 0xFFFF || cd_size == 0xFFFFFFFF || cd_offset == 0xFFFFFFFF)
      add_finding(findings, Severity::medium, Rule::zip_zip64_inconsistent,
                  "end record holds 0xFFFF/0xFFFFFFFF values but there is no zip64 locator", {}, er.eocd_pos);
    return er;
  }
  MCDR_TRY(c.seek(static_cast<size_t>(loc_pos + 4)));
  MCDR_ASSIGN(uint32_t z64_disk, c.u32le());
  MCDR_ASSIGN(uint64_t z64_pos, c.u64le());
  MCDR_ASSIGN(uint32_t total_disks, c.u32le());
  if (z64_disk != 0 || total_disks > 1)
    return make_error(Rule::zip_multi_disk, "zip64 locator describes a multi-disk archive", loc_pos);
  uint64_t z64_fixed_end = 0;
  if (!checked_add(z64_pos, kZip64EocdFixed, z64_fixed_end) || z64_fixed_end > loc_pos)
    return make_error(Rule::zip_zip64_inconsistent, "zip64 locator points outside the archive (" + std::to_string(z64_pos) + ")",
                      loc_pos);
  MCDR_TRY(c.seek(static_cast<size_t>(z64_pos)));
  MCDR_ASSIGN(uint32_t z64_sig, c.u32le());
  if (z64_sig != kZip64EocdSig)
    return make_error(Rule::zip_zip64_inconsistent, "zip64 locator does not point at a zip64 end record", z64_pos);
  MCDR_ASSIGN(uint64_t rec_size, c.u64le());
  MCDR_TRY(c.skip(4));  // version made by, version needed
  MCDR_ASSIGN(uint32_t z_disk, c.u32le());
  MCDR_ASSIGN(uint32_t z_cd_disk, c.u32le());
  MCDR_ASSIGN(uint64_t z_entries_disk, c.u64le());
  MCDR_ASSIGN(uint64_t z_entries, c.u64le());
  MCDR_ASSIGN(uint64_t z_cd_size, c.u64le());
  MCDR_ASSIGN(uint64_t z_cd_offset, c.u64le());
  if (z_disk != 0 || z_cd_disk != 0 || z_entries_disk != z_entries)
    return make_error(Rule::zip_multi_disk, "zip64 end record describes a multi-disk archive", z64_pos);
  uint64_t z64_end = 0;
  if (rec_size < kZip64EocdBody || !checked_add(z64_pos, 12, z64_end) || !checked_add(z64_end, rec_size, z64_end) ||
      z64_end > loc_pos)
    return make_error(Rule::zip_zip64_inconsistent, "zip64 end record size " + std::to_string(rec_size) + " is invalid",
                      z64_pos);
  // Python's zipfile does not follow the locator: it expects a 56-byte record right before it
  // and derives all offsets from that position. Anything else means the two readers diverge.
  if (rec_size != kZip64EocdBody || z64_end != loc_pos)
    add_finding(findings, Severity::high, Rule::zip_zip64_inconsistent,
                "zip64 end record is not a 56-byte record immediately before the locator", {}, z64_pos);
  auto mismatch = [&](const char* what, uint64_t classic, uint64_t sentinel, uint64_t z64) {
    if (classic != sentinel && classic != z64)
      add_finding(findings, Severity::high, Rule::zip_zip64_inconsistent,
                  std::string("classic end record ") + what + " " + std::to_string(classic) +
                      " disagrees with zip64 value " + std::to_string(z64),
                  {}, er.eocd_pos);
  };
  mismatch("entry count", entries_total, 0xFFFF, z_entries);
  mismatch("central directory size", cd_size, 0xFFFFFFFF, z_cd_size);
  mismatch("central directory offset", cd_offset, 0xFFFFFFFF, z_cd_offset);
  er.zip64 = true;
  er.zip64_pos = z64_pos;
  er.zip64_end = z64_end;
  er.entries = z_entries;
  er.cd_size = z_cd_size;
  er.cd_offset = z_cd_offset;
  return er;
}

// Data-descriptor layouts a writer may have used: optional signature, 4- or 8-byte sizes.
// The data-descriptor forms, in the order they are tried: with signature 32/64-bit sizes, then
// without. Bit k of a form mask stands for kDescriptorLengths[k] (bytes after the entry's data).
constexpr uint64_t kDescriptorLengths[] = {16, 24, 12, 20};

// The forms that agree with the central directory, as a mask (a small value per entry, not a
// vector: a checkpoint may hold hundreds of thousands of entries). Reads straight from the bytes,
// no cursors or error text; a field past the end rules that form out.
uint8_t descriptor_forms(Bytes file, uint64_t at, const ZipEntry& e) {
  if (at > file.size()) return 0;
  const Bytes rest = file.subspan(static_cast<size_t>(at));
  auto field = [&rest](size_t off, size_t n, uint64_t& v) {
    if (off > rest.size() || n > rest.size() - off) return false;
    v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(rest[off + i]) << (8 * i);
    return true;
  };
  uint8_t mask = 0;
  for (int k = 0; k < 4; ++k) {
    const bool with_sig = k < 2;
    const size_t base = with_sig ? 4 : 0, width = (k % 2) ? 8 : 4;
    uint64_t sig = 0, crc = 0, cs = 0, us = 0;
    if (with_sig && (!field(0, 4, sig) || sig != kDescriptorSig)) continue;
    if (!field(base, 4, crc) || !field(base + 4, width, cs) || !field(base + 4 + width, width, us)) continue;
    if (crc == e.crc32 && cs == e.compressed_size && us == e.uncompressed_size) mask |= static_cast<uint8_t>(1u << k);
  }
  return mask;
}

struct Region {
  uint64_t start, end;
  std::string_view label;  // an entry's name (the entry list no longer grows) or a literal
  int kind;  // 0 entry, 1 central directory, 2 end records
};

}  // namespace

namespace {
// CRC of a stored entry in chunks; with `release`, the mapped pages are dropped behind the
// pass so checking a multi-gigabyte checkpoint keeps a small resident set.
uint32_t stored_crc32(std::span<const uint8_t> data, bool release) {
  constexpr size_t kChunk = 8 << 20;
  uint32_t crc = 0;
  for (size_t off = 0; off < data.size(); off += kChunk) {
    auto chunk = data.subspan(off, std::min(kChunk, data.size() - off));
    crc = libdeflate_crc32(crc, chunk.data(), chunk.size());
    if (release) io::release_mapped_pages(chunk);
  }
  return crc;
}
}  // namespace

Status check_entry_crc(std::span<const uint8_t> file, const ZipEntry& e, Findings& findings, const ZipLimits& limits) {
  if ((e.flags & kFlagEncrypted) || (e.method != 0 && e.method != 8)) return ok_status();  // reported elsewhere
  MCDR_ASSIGN(ByteCursor dc, cursor_at(file, e.data_offset, "entry data"));
  MCDR_ASSIGN(Bytes data, dc.take(e.compressed_size));
  std::optional<uint32_t> actual;
  if (e.method == 0) {
    actual = stored_crc32(data, limits.release_pages);
  } else {
    std::vector<uint8_t> scratch;
    auto s = inflate_exact(data, e.uncompressed_size, scratch, limits, e.name, e.local_header_offset);
    if (s)
      actual = libdeflate_crc32(0, scratch.data(), scratch.size());
    else
      add_finding(findings, Severity::high, s.error().rule, s.error().message, e.name, e.local_header_offset);
  }
  if (actual && *actual != e.crc32)
    add_finding(findings, Severity::high, Rule::zip_bad_crc,
                "CRC-32 " + hex(*actual) + " does not match the directory's " + hex(e.crc32), e.name,
                e.local_header_offset);
  return ok_status();
}

Status check_entry_crc(const ZipArchive& zip, std::span<const uint8_t> file, const ZipEntry& e, Findings& findings,
                       const ZipLimits& limits) {
  if (e.method == 8 && !(e.flags & kFlagEncrypted)) {
    if (e.uncompressed_size > zip.inflate_left) {
      // Stop inflating once the file's budget is spent; the finding rejects it on disarm.
      zip.inflate_left = 0;
      if (!zip.inflate_reported)
        add_finding(findings, Severity::high, Rule::zip_inflate_total, total_message(file.size(), limits), e.name,
                    e.local_header_offset);
      zip.inflate_reported = true;
      return ok_status();
    }
    zip.inflate_left -= e.uncompressed_size;
  }
  return check_entry_crc(file, e, findings, limits);
}

Result<ZipArchive> read_zip(std::span<const uint8_t> file, Findings& findings, const ZipLimits& limits,
                            bool verify_crc, const CrcDeferred& deferred) {
  MCDR_ASSIGN(EndRecords er, read_end_records(file, findings));
  const uint64_t end_records_start = er.zip64 ? er.zip64_pos : er.eocd_pos;

  uint64_t cd_end = 0;
  if (!checked_add(er.cd_offset, er.cd_size, cd_end) || cd_end > end_records_start)
    return make_error(Rule::zip_cd_out_of_bounds,
                      "central directory [" + std::to_string(er.cd_offset) + ", +" + std::to_string(er.cd_size) +
                          ") runs past the end records at " + std::to_string(end_records_start),
                      er.eocd_pos);
  if (cd_end < end_records_start)
    add_finding(findings, Severity::high, Rule::zip_cd_eocd_gap,
                std::to_string(end_records_start - cd_end) +
                    " bytes between the central directory and the end record; Python's zipfile would shift every "
                    "entry offset by that amount",
                {}, cd_end);
  if (er.entries > limits.max_entries)
    return make_error(Rule::zip_too_many_entries,
                      "archive declares " + std::to_string(er.entries) + " entries, above the limit of " +
                          std::to_string(limits.max_entries),
                      er.eocd_pos);
  if (er.entries > er.cd_size / kCentralSize)
    return make_error(Rule::zip_entry_count_mismatch,
                      "end record declares " + std::to_string(er.entries) + " entries but the central directory has " +
                          std::to_string(er.cd_size) + " bytes",
                      er.cd_offset);

  ZipArchive archive;
  archive.inflate_left = total_inflate_budget(file.size(), limits);
  archive.entries.reserve(static_cast<size_t>(er.entries));
  std::vector<uint8_t> descriptor_choices;  // per entry: descriptor_forms' mask
  descriptor_choices.reserve(static_cast<size_t>(er.entries));
  std::vector<uint64_t> data_ends;
  data_ends.reserve(static_cast<size_t>(er.entries));
  ZipNameIndex names;
  names.reserve(static_cast<size_t>(er.entries));
  std::vector<ExtraField> extras;

  MCDR_ASSIGN(ByteCursor cdc_full, cursor_at(file, er.cd_offset, "central directory"));
  MCDR_ASSIGN(Bytes cd_bytes, cdc_full.take(er.cd_size));
  ByteCursor cd(cd_bytes, {}, er.cd_offset);

  for (uint64_t i = 0; i < er.entries; ++i) {
    const uint64_t central_pos = cd.abs_pos();
    auto sig = cd.u32le();
    if (!sig || *sig != kCentralSig)
      return make_error(Rule::zip_entry_count_mismatch,
                        "central directory ends after " + std::to_string(i) + " of " + std::to_string(er.entries) +
                            " declared entries",
                        central_pos);
    MCDR_TRY(cd.skip(4));  // version made by, version needed
    MCDR_ASSIGN(uint16_t flags, cd.u16le());
    MCDR_ASSIGN(uint16_t method, cd.u16le());
    MCDR_TRY(cd.skip(4));  // time, date
    MCDR_ASSIGN(uint32_t crc, cd.u32le());
    MCDR_ASSIGN(uint32_t csize32, cd.u32le());
    MCDR_ASSIGN(uint32_t usize32, cd.u32le());
    MCDR_ASSIGN(uint16_t name_len, cd.u16le());
    MCDR_ASSIGN(uint16_t extra_len, cd.u16le());
    MCDR_ASSIGN(uint16_t comment_len, cd.u16le());
    MCDR_ASSIGN(uint16_t disk16, cd.u16le());
    MCDR_TRY(cd.skip(6));  // internal, external attributes
    MCDR_ASSIGN(uint32_t offset32, cd.u32le());
    MCDR_ASSIGN(std::string_view name_view, cd.take_view(name_len));
    MCDR_ASSIGN(Bytes extra, cd.take(extra_len));
    MCDR_TRY(cd.skip(comment_len));

    ZipEntry e;
    e.name = std::string(name_view);
    e.method = method;
    e.flags = flags;
    e.crc32 = crc;
    Zip64Fields f{usize32, csize32, offset32, disk16};
    if (!parse_extras(extra, extras))
      add_finding(findings, Severity::medium, Rule::zip_bad_extra, "malformed central extra field", e.name, central_pos);
    int zip64_count = 0;
    for (const auto& x : extras) {
      if (x.id != kZip64ExtraId) continue;
      if (++zip64_count > 1) {
        add_finding(findings, Severity::high, Rule::zip_zip64_inconsistent, "more than one zip64 extra field", e.name,
                    central_pos);
        break;
      }
      MCDR_ASSIGN(f, apply_zip64(x.data, f, true, e.name, central_pos));
    }
    if (zip64_count == 0 && (usize32 == 0xFFFFFFFF || csize32 == 0xFFFFFFFF || offset32 == 0xFFFFFFFF))
      add_finding(findings, Severity::medium, Rule::zip_zip64_inconsistent,
                  "central entry holds 0xFFFFFFFF without a zip64 extra field", e.name, central_pos);
    if (f.disk != 0) return make_error(Rule::zip_multi_disk, "entry lives on another disk", central_pos, e.name);
    e.uncompressed_size = f.usize;
    e.compressed_size = f.csize;
    e.local_header_offset = f.offset;

    // Per-entry policy findings.
    if (names.find(archive.entries, e.name) >= 0)
      add_finding(findings, Severity::high, Rule::zip_duplicate_name, "duplicate entry name '" + e.name + "'", e.name,
                  e.local_header_offset);
    if (auto why = unsafe_name_reason(e.name, flags); !why.empty())
      add_finding(findings, Severity::high, Rule::zip_unsafe_name, why + ": '" + e.name + "'", e.name,
                  e.local_header_offset);
    else if (!(flags & kFlagUtf8) && !is_ascii(e.name))
      add_finding(findings, Severity::medium, Rule::zip_unsafe_name,
                  "non-ASCII name without the UTF-8 flag (readers decode it differently)", e.name,
                  e.local_header_offset);
    if (flags & kFlagEncrypted)
      add_finding(findings, Severity::high, Rule::zip_encrypted, "entry is encrypted", e.name, e.local_header_offset);
    if (method != 0 && method != 8)
      add_finding(findings, Severity::high, Rule::zip_unsupported_method,
                  "compression method " + std::to_string(method) + " (only stored and deflate are allowed)", e.name,
                  e.local_header_offset);
    uint16_t allowed = kFlagEncrypted | kFlagDescriptor | kFlagUtf8 | (method == 8 ? kDeflateOptionBits : 0);
    if (flags & ~allowed)
      add_finding(findings, Severity::medium, Rule::zip_flag_bits,
                  "unexpected general-purpose flag bits " + hex(flags & ~allowed), e.name, e.local_header_offset);
    if (method == 0 && e.compressed_size != e.uncompressed_size)
      add_finding(findings, Severity::high, Rule::zip_size_mismatch,
                  "stored entry with compressed size " + std::to_string(e.compressed_size) +
                      " != uncompressed size " + std::to_string(e.uncompressed_size),
                  e.name, e.local_header_offset);

    // Local header: must exist in full and agree with the central entry.
    uint64_t lh_fixed_end = 0;
    if (!checked_add(e.local_header_offset, kLocalSize, lh_fixed_end) || lh_fixed_end > file.size())
      return make_error(Rule::zip_truncated_local_header, "local header lies beyond the end of the file",
                        e.local_header_offset, e.name);
    MCDR_ASSIGN(ByteCursor lc, cursor_at(file, e.local_header_offset, "local header"));
    MCDR_ASSIGN(uint32_t lsig, lc.u32le());
    if (lsig != kLocalSig)
      return make_error(Rule::zip_bad_local_header, "no local file header signature at the central entry's offset",
                        e.local_header_offset, e.name);
    MCDR_TRY(lc.skip(2));  // version needed
    MCDR_ASSIGN(uint16_t lflags, lc.u16le());
    MCDR_ASSIGN(uint16_t lmethod, lc.u16le());
    MCDR_TRY(lc.skip(4));  // time, date
    MCDR_ASSIGN(uint32_t lcrc, lc.u32le());
    MCDR_ASSIGN(uint32_t lcsize32, lc.u32le());
    MCDR_ASSIGN(uint32_t lusize32, lc.u32le());
    MCDR_ASSIGN(uint16_t lname_len, lc.u16le());
    MCDR_ASSIGN(uint16_t lextra_len, lc.u16le());
    auto lname = lc.take_view(lname_len);
    if (!lname) return make_error(Rule::zip_truncated_local_header, "local header name runs past the end of the file",
                                  e.local_header_offset, e.name);
    auto lextra = lc.take(lextra_len);
    if (!lextra) return make_error(Rule::zip_truncated_local_header, "local header extra runs past the end of the file",
                                   e.local_header_offset, e.name);
    e.data_offset = lc.pos();
    uint64_t data_end = 0;
    if (!checked_add(e.data_offset, e.compressed_size, data_end) || data_end > file.size())
      return make_error(Rule::zip_data_past_eof,
                        "entry data [" + std::to_string(e.data_offset) + ", +" + std::to_string(e.compressed_size) +
                            ") runs past the end of the file",
                        e.local_header_offset, e.name);

    auto mismatch = [&](const std::string& what) {
      add_finding(findings, Severity::high, Rule::zip_local_central_mismatch, "local header " + what + " disagrees with the central directory",
                  e.name, e.local_header_offset);
    };
    if (*lname != e.name) mismatch("name '" + std::string(*lname) + "'");
    if (lmethod != method) mismatch("method " + std::to_string(lmethod));
    if (lflags != flags) mismatch("flags " + hex(lflags));

    Zip64Fields lf{lusize32, lcsize32, 0, 0};
    bool local_zip64_ok = true;
    if (!parse_extras(*lextra, extras))
      add_finding(findings, Severity::medium, Rule::zip_bad_extra, "malformed local extra field", e.name,
                  e.local_header_offset);
    for (const auto& x : extras) {
      if (x.id != kZip64ExtraId) continue;
      // The local zip64 extra carries both sizes (APPNOTE 4.5.3) where a size field says
      // 0xFFFFFFFF. PyTorch's miniz and our writer put only the 8-byte header offset there for
      // a small entry past 4 GiB: nothing is read from it then, so it is no disagreement.
      ByteCursor zc(x.data);
      auto us = zc.u64le();
      auto cs = zc.u64le();
      if (!us || !cs) {
        local_zip64_ok = lusize32 != 0xFFFFFFFF && lcsize32 != 0xFFFFFFFF;
        break;
      }
      if (lusize32 == 0xFFFFFFFF) lf.usize = *us;
      if (lcsize32 == 0xFFFFFFFF) lf.csize = *cs;
      break;
    }
    if (!local_zip64_ok) mismatch("zip64 extra field");

    uint8_t choices = 0;
    if (lflags & kFlagDescriptor) {
      // Sizes and CRC live in the descriptor; the local fields are zero (or, from some writers, real).
      if (lcrc != 0 && lcrc != crc) mismatch("CRC-32");
      if (lusize32 != 0 && lf.usize != e.uncompressed_size) mismatch("uncompressed size");
      if (lcsize32 != 0 && lf.csize != e.compressed_size) mismatch("compressed size");
      choices = descriptor_forms(file, data_end, e);
      if (choices == 0)
        add_finding(findings, Severity::high, Rule::zip_local_central_mismatch,
                    "data descriptor missing or disagrees with the central directory", e.name, data_end);
    } else {
      if (lcrc != crc) mismatch("CRC-32");
      if (lf.usize != e.uncompressed_size) mismatch("uncompressed size");
      if (lf.csize != e.compressed_size) mismatch("compressed size");
    }

    if (verify_crc && !(deferred && deferred(e))) MCDR_TRY(check_entry_crc(archive, file, e, findings, limits));

    archive.entries.push_back(std::move(e));
    names.insert(archive.entries, static_cast<uint32_t>(archive.entries.size() - 1));  // false: a duplicate
    descriptor_choices.push_back(choices);
    data_ends.push_back(data_end);
  }
  if (!cd.at_end())
    return make_error(Rule::zip_entry_count_mismatch,
                      std::to_string(cd.remaining()) + " bytes of the central directory follow the " +
                          std::to_string(er.entries) + " declared entries",
                      cd.abs_pos());

  // Layout: every byte must belong to exactly one structure.
  std::vector<Region> regions;
  regions.reserve(archive.entries.size() + 3);
  for (size_t i = 0; i < archive.entries.size(); ++i)
    regions.push_back({archive.entries[i].local_header_offset, data_ends[i], archive.entries[i].name, 0});
  std::vector<size_t> order(archive.entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return archive.entries[a].local_header_offset < archive.entries[b].local_header_offset;
  });
  // Descriptor length: the variant that makes the next structure follow directly, if any.
  for (size_t k = 0; k < order.size(); ++k) {
    size_t i = order[k];
    const uint8_t choices = descriptor_choices[i];
    if (choices == 0) continue;
    uint64_t next = k + 1 < order.size() ? archive.entries[order[k + 1]].local_header_offset : er.cd_offset;
    uint64_t pick = 0;
    for (int f = 3; f >= 0; --f)  // the first form that agrees, unless a later one fits the layout
      if ((choices >> f) & 1) pick = kDescriptorLengths[f];
    for (int f = 0; f < 4; ++f)
      if (((choices >> f) & 1) && data_ends[i] + kDescriptorLengths[f] == next) pick = kDescriptorLengths[f];
    regions[i].end = data_ends[i] + pick;
  }
  regions.push_back({er.cd_offset, cd_end, "central directory", 1});
  if (er.zip64) {
    regions.push_back({er.zip64_pos, er.zip64_end, "zip64 end record", 2});
    regions.push_back({er.eocd_pos - kLocatorSize, er.eocd_pos, "zip64 locator", 2});
  }
  regions.push_back({er.eocd_pos, er.eocd_end, "end record", 2});
  std::stable_sort(regions.begin(), regions.end(), [](const Region& a, const Region& b) { return a.start < b.start; });

  archive.adopt_index(std::move(names));
  archive.prefix_bytes = regions.front().start;
  if (archive.prefix_bytes > 0)
    add_finding(findings, Severity::high, Rule::zip_prefix_bytes,
                std::to_string(archive.prefix_bytes) +
                    " bytes before the first zip structure (polyglot or self-extractor; torch.load only treats files "
                    "starting with PK\\3\\4 as zip)",
                {}, 0);
  uint64_t max_end = regions.front().end;
  const Region* max_region = &regions.front();
  for (size_t k = 1; k < regions.size(); ++k) {
    const Region& r = regions[k];
    if (r.start < max_end) {
      add_finding(findings, Severity::high, Rule::zip_overlap,
                  "'" + std::string(r.label) + "' at " + std::to_string(r.start) + " overlaps '" + std::string(max_region->label) +
                      "' which ends at " + std::to_string(max_end),
                  r.kind == 0 ? std::string(r.label) : std::string(), r.start);
    } else if (r.start > max_end) {
      bool reported = max_region->kind == 1 && r.kind == 2;  // zip.cd-eocd-gap above
      if (!reported)
        add_finding(findings, Severity::medium, Rule::zip_unreferenced_bytes,
                    std::to_string(r.start - max_end) + " unreferenced bytes after '" + std::string(max_region->label) + "'", {},
                    max_end);
    }
    if (r.end > max_end) {
      max_end = r.end;
      max_region = &r;
    }
  }
  return archive;
}

uint64_t total_inflate_budget(uint64_t file_size, const ZipLimits& limits) {
  uint64_t b = 0;
  if (__builtin_mul_overflow(file_size, limits.total_inflate_ratio, &b)) b = UINT64_MAX;
  return std::min(std::max(b, limits.total_inflate_floor), limits.total_inflate_ceiling);
}

Result<std::span<const uint8_t>> entry_bytes(const ZipArchive& zip, std::span<const uint8_t> file, const ZipEntry& entry,
                                             std::vector<uint8_t>& scratch, const ZipLimits& limits) {
  if (entry.method == 8) {
    if (entry.uncompressed_size > zip.inflate_left) {
      zip.inflate_left = 0;
      return make_error(Rule::zip_inflate_total, total_message(file.size(), limits), entry.local_header_offset, entry.name);
    }
    zip.inflate_left -= entry.uncompressed_size;
  }
  return entry_bytes(file, entry, scratch, limits);
}

Result<std::span<const uint8_t>> entry_bytes(std::span<const uint8_t> file, const ZipEntry& entry,
                                             std::vector<uint8_t>& scratch, const ZipLimits& limits) {
  if (entry.flags & kFlagEncrypted)
    return make_error(Rule::zip_encrypted, "entry is encrypted", entry.local_header_offset, entry.name);
  if (entry.method != 0 && entry.method != 8)
    return make_error(Rule::zip_unsupported_method, "compression method " + std::to_string(entry.method),
                      entry.local_header_offset, entry.name);
  uint64_t end = 0;
  if (!checked_add(entry.data_offset, entry.compressed_size, end) || end > file.size())
    return make_error(Rule::zip_data_past_eof, "entry data runs past the end of the file", entry.local_header_offset,
                      entry.name);
  MCDR_ASSIGN(ByteCursor c, cursor_at(file, entry.data_offset, "entry data"));
  MCDR_ASSIGN(Bytes data, c.take(entry.compressed_size));
  if (entry.method == 0) {
    if (entry.compressed_size != entry.uncompressed_size)
      return make_error(Rule::zip_size_mismatch, "stored entry's compressed and uncompressed sizes differ",
                        entry.local_header_offset, entry.name);
    return data;
  }
  MCDR_TRY(inflate_exact(data, entry.uncompressed_size, scratch, limits, entry.name, entry.local_header_offset));
  return std::span<const uint8_t>(scratch.data(), scratch.size());
}

}  // namespace modelcdr::container
