#include "container/zip_reader.hpp"

// Designated initializers leave the remaining knobs at their defaults on purpose.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#include <gtest/gtest.h>
#include <libdeflate.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

namespace modelcdr::container {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

fs::path make_temp_dir() {
  std::string tmpl = (fs::temp_directory_path() / "zip_reader_test-XXXXXX").string();
  char* d = ::mkdtemp(tmpl.data());
  EXPECT_NE(d, nullptr);
  return fs::path(tmpl);
}

Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int run_python(const fs::path& dir, const std::string& script) {
  fs::path s = dir / "script.py";
  std::ofstream(s) << script;
  int rc = std::system(("/usr/bin/python3 " + s.string() + " > " + (dir / "py.log").string() + " 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::span<const uint8_t> as_span(const Bytes& b) { return {b.data(), b.size()}; }

size_t count_rule(const Findings& f, Rule rule, std::optional<Severity> sev = std::nullopt) {
  return std::count_if(f.begin(), f.end(), [&](const Finding& x) { return x.rule == rule && (!sev || x.severity == *sev); });
}

size_t count_at_least(const Findings& f, Severity s) {
  return std::count_if(f.begin(), f.end(), [&](const Finding& x) { return x.severity >= s; });
}

std::string dump(const Findings& f) {
  std::string s;
  for (const auto& x : f) s += std::string(severity_name(x.severity)) + " " + std::string(rule_id(x.rule)) + " " + x.entry + " @" + std::to_string(x.offset) + ": " + x.message + "\n";
  return s;
}

// ---- A classic (non-zip64) ZIP builder with knobs for every hostile variant. ----
struct TEntry {
  std::string name;
  std::string data;
  std::optional<std::string> local_name;
  uint16_t flags = 0;
  uint16_t method = 0;
  std::optional<uint32_t> crc;            // central and local CRC override
  std::string gap_before;                 // bytes written before this entry's local header
  std::optional<uint32_t> central_offset; // central directory's idea of the local header offset
  std::string local_extra;                // extra field bytes of the local header
  std::optional<uint32_t> local_sizes;    // local header size fields override
};
struct TOpts {
  std::string prefix;
  std::string gap_before_cd;
  int extra_declared_entries = 0;
  std::string comment;
  std::string trailing;
};

void put16(Bytes& b, uint16_t v) {
  b.push_back(v & 0xFF);
  b.push_back(v >> 8);
}
void put32(Bytes& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put(Bytes& b, const std::string& s) { b.insert(b.end(), s.begin(), s.end()); }

std::string deflate(const std::string& s) {
  libdeflate_compressor* c = libdeflate_alloc_compressor(6);
  std::string out(libdeflate_deflate_compress_bound(c, s.size()), '\0');
  size_t n = libdeflate_deflate_compress(c, s.data(), s.size(), out.data(), out.size());
  libdeflate_free_compressor(c);
  out.resize(n);
  return out;
}

Bytes build_zip(const std::vector<TEntry>& entries, const TOpts& o = {}) {
  Bytes b;
  put(b, o.prefix);
  std::vector<uint32_t> offsets;
  std::vector<std::string> payloads;
  for (const auto& e : entries) {
    put(b, e.gap_before);
    offsets.push_back(static_cast<uint32_t>(b.size()));
    std::string payload = e.method == 8 ? deflate(e.data) : e.data;
    payloads.push_back(payload);
    uint32_t crc = e.crc.value_or(libdeflate_crc32(0, e.data.data(), e.data.size()));
    std::string lname = e.local_name.value_or(e.name);
    put32(b, 0x04034b50);
    put16(b, 20);
    put16(b, e.flags);
    put16(b, e.method);
    put16(b, 0);
    put16(b, 0);
    put32(b, crc);
    put32(b, e.local_sizes.value_or(static_cast<uint32_t>(payload.size())));
    put32(b, e.local_sizes.value_or(static_cast<uint32_t>(e.data.size())));
    put16(b, static_cast<uint16_t>(lname.size()));
    put16(b, static_cast<uint16_t>(e.local_extra.size()));
    put(b, lname);
    put(b, e.local_extra);
    put(b, payload);
  }
  put(b, o.gap_before_cd);
  uint32_t cd_offset = static_cast<uint32_t>(b.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    uint32_t crc = e.crc.value_or(libdeflate_crc32(0, e.data.data(), e.data.size()));
    put32(b, 0x02014b50);
    put16(b, 20);
    put16(b, 20);
    put16(b, e.flags);
    put16(b, e.method);
    put16(b, 0);
    put16(b, 0);
    put32(b, crc);
    put32(b, static_cast<uint32_t>(payloads[i].size()));
    put32(b, static_cast<uint32_t>(e.data.size()));
    put16(b, static_cast<uint16_t>(e.name.size()));
    put16(b, 0);
    put16(b, 0);
    put16(b, 0);
    put16(b, 0);
    put32(b, 0);
    put32(b, e.central_offset.value_or(offsets[i]));
    put(b, e.name);
  }
  uint32_t cd_size = static_cast<uint32_t>(b.size()) - cd_offset;
  uint16_t n = static_cast<uint16_t>(entries.size() + o.extra_declared_entries);
  put32(b, 0x06054b50);
  put16(b, 0);
  put16(b, 0);
  put16(b, n);
  put16(b, n);
  put32(b, cd_size);
  put32(b, cd_offset);
  put16(b, static_cast<uint16_t>(o.comment.size()));
  put(b, o.comment);
  put(b, o.trailing);
  return b;
}

std::vector<TEntry> two_entries() {
  return {TEntry{.name = "archive/data.pkl", .data = "pickle-bytes"}, TEntry{.name = "archive/data/0", .data = "0123456789abcdef"}};
}

// ---- Clean archives ----

TEST(ZipReader, BuilderBaselineIsClean) {
  Bytes z = build_zip(two_entries());
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_TRUE(f.empty()) << dump(f);
  ASSERT_EQ(a->entries.size(), 2u);
  EXPECT_EQ(a->prefix_bytes, 0u);
  std::vector<uint8_t> scratch;
  auto b = entry_bytes(as_span(z), a->entries[1], scratch);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(std::string(b->begin(), b->end()), "0123456789abcdef");
}

TEST(ZipReader, PythonStoredDeflatedAndDescriptor) {
  fs::path dir = make_temp_dir();
  ASSERT_EQ(run_python(dir, R"(
import zipfile, io, sys
class Unseekable(io.RawIOBase):
    def __init__(self, f): self.f = f
    def writable(self): return True
    def write(self, b): return self.f.write(b)
    def flush(self): self.f.flush()
big = bytes(range(256)) * 40
with zipfile.ZipFile(sys.argv[0].replace('script.py', 'plain.zip'), 'w') as z:
    z.writestr('a.txt', 'hello world')
    z.writestr(zipfile.ZipInfo('dir/big.bin'), big, compress_type=zipfile.ZIP_DEFLATED)
    z.writestr('empty', b'')
with open(sys.argv[0].replace('script.py', 'stream.zip'), 'wb') as raw:
    with zipfile.ZipFile(Unseekable(raw), 'w') as z:
        with z.open('s1', 'w') as w: w.write(b'streamed one')
        with z.open('s2', 'w') as w: w.write(big)
with zipfile.ZipFile(sys.argv[0].replace('script.py', 'z64.zip'), 'w', compression=zipfile.ZIP_DEFLATED) as z:
    with z.open('forced', 'w', force_zip64=True) as w: w.write(big)
    z.writestr('small', b'x')
)"),
            0)
      << read_file(dir / "py.log").data();
  std::string big;
  for (int r = 0; r < 40; ++r)
    for (int i = 0; i < 256; ++i) big.push_back(static_cast<char>(i));

  for (const char* file : {"plain.zip", "stream.zip", "z64.zip"}) {
    SCOPED_TRACE(file);
    Bytes z = read_file(dir / file);
    Findings f;
    auto a = read_zip(as_span(z), f);
    ASSERT_TRUE(a.ok()) << a.error().describe();
    EXPECT_EQ(count_at_least(f, Severity::low), 0u) << dump(f);
    std::vector<uint8_t> scratch;
    for (const auto& e : a->entries) {
      auto b = entry_bytes(as_span(z), e, scratch);
      ASSERT_TRUE(b.ok()) << b.error().describe();
      EXPECT_EQ(libdeflate_crc32(0, b->data(), b->size()), e.crc32);
      if (e.name == "dir/big.bin" || e.name == "s2" || e.name == "forced") {
        EXPECT_EQ(std::string(b->begin(), b->end()), big);
      }
    }
  }
  Bytes s = read_file(dir / "stream.zip");
  Findings f;
  auto a = read_zip(as_span(s), f);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(a->entries[0].flags & 0x8) << "python should have used data descriptors";
  fs::remove_all(dir);
}

TEST(ZipReader, TorchSaveReadsCleanly) {
  fs::path dir = make_temp_dir();
  fs::path p = dir / "model.pt";
  ASSERT_EQ(run_python(dir, "import torch\ntorch.save({'a': torch.arange(6.), 'b': torch.ones(3, 3)}, '" + p.string() + "')\n"), 0)
      << read_file(dir / "py.log").data();
  Bytes z = read_file(p);
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_EQ(count_at_least(f, Severity::high), 0u) << dump(f);
  EXPECT_TRUE(f.empty()) << dump(f);
  ASSERT_NE(a->find("model/data.pkl"), nullptr);
  ASSERT_NE(a->find("model/version"), nullptr);
  const ZipEntry* d0 = a->find("model/data/0");
  ASSERT_NE(d0, nullptr);
  EXPECT_EQ(d0->data_offset % 64, 0u);
  EXPECT_EQ(d0->uncompressed_size, 24u);
  EXPECT_EQ(d0->flags, 0x0808);
  fs::remove_all(dir);
}

// ---- Hostile archives ----

TEST(ZipReader, DuplicateNames) {
  auto e = two_entries();
  e[1].name = e[0].name;
  Bytes z = build_zip(e);
  Findings f;
  ASSERT_TRUE(read_zip(as_span(z), f).ok());
  EXPECT_EQ(count_rule(f, Rule::zip_duplicate_name, Severity::high), 1u) << dump(f);
}

// find() goes through the name index read_zip builds while it checks names (issue 14: no
// std::string map per entry): every name of a many-entry archive is found, a duplicate name
// finds its first entry, a missing name finds nothing, and a copied archive finds the same.
TEST(ZipReader, NameIndexFindsEveryEntryAndTheFirstDuplicate) {
  std::vector<TEntry> e;
  for (int i = 0; i < 3000; ++i) e.push_back(TEntry{.name = "archive/data/" + std::to_string(i), .data = std::to_string(i)});
  e.push_back(TEntry{.name = "archive/data/7", .data = "second"});
  Bytes z = build_zip(e);
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_EQ(count_rule(f, Rule::zip_duplicate_name, Severity::high), 1u) << dump(f);
  const ZipArchive copy = *a;
  for (const ZipArchive* z2 : {static_cast<const ZipArchive*>(&*a), &copy}) {
    for (int i = 0; i < 3000; ++i) {
      const ZipEntry* hit = z2->find("archive/data/" + std::to_string(i));
      ASSERT_NE(hit, nullptr) << i;
      EXPECT_EQ(hit - z2->entries.data(), i);
    }
    EXPECT_EQ(z2->find("archive/data/3000"), nullptr);
    EXPECT_EQ(z2->find("archive/data/"), nullptr);
  }
  // An archive built by hand (no index handed over) is indexed on first use.
  ZipArchive manual;
  manual.entries.push_back(ZipEntry{.name = "b"});
  manual.entries.push_back(ZipEntry{.name = "a"});
  manual.entries.push_back(ZipEntry{.name = "b"});
  ASSERT_NE(manual.find("b"), nullptr);
  EXPECT_EQ(manual.find("b"), &manual.entries[0]);
  EXPECT_EQ(manual.find("a"), &manual.entries[1]);
  manual.entries.push_back(ZipEntry{.name = "c"});
  EXPECT_EQ(manual.find("c"), &manual.entries[3]);
}

TEST(ZipReader, LocalCentralNameMismatch) {
  auto e = two_entries();
  e[1].local_name = "archive/data/X";
  Bytes z = build_zip(e);
  Findings f;
  ASSERT_TRUE(read_zip(as_span(z), f).ok());
  ASSERT_EQ(count_rule(f, Rule::zip_local_central_mismatch, Severity::high), 1u) << dump(f);
}

// torch.save (miniz) and modelcdr's writer give a small entry that starts past 4 GiB a local
// zip64 extra holding only its 8-byte header offset; with real 32-bit sizes in the local header
// nothing is read from it, so checkpoints over 4 GiB must not be rejected for it. An extra too
// short for the sizes that the local header defers to it still is.
TEST(ZipReader, LocalZip64ExtraWithOnlyTheOffset) {
  std::string offset_only = std::string("\x01\x00\x08\x00", 4) + std::string("\x10\x00\x00\x00\x01\x00\x00\x00", 8);
  auto entries = two_entries();
  entries[1].local_extra = offset_only;
  Bytes z = build_zip(entries);
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_EQ(count_rule(f, Rule::zip_local_central_mismatch), 0u) << dump(f);

  entries[1].local_sizes = 0xFFFFFFFF;  // sizes deferred to an extra that does not hold them
  Bytes bad = build_zip(entries);
  Findings g;
  auto b = read_zip(as_span(bad), g);
  EXPECT_TRUE(!b.ok() || count_rule(g, Rule::zip_local_central_mismatch) > 0) << dump(g);
}

TEST(ZipReader, BadCrcFromFlippedByte) {
  Bytes z = build_zip(two_entries());
  Findings clean;
  auto a = read_zip(as_span(z), clean);
  ASSERT_TRUE(a.ok());
  z[a->entries[1].data_offset + 3] ^= 0x40;
  Findings f;
  ASSERT_TRUE(read_zip(as_span(z), f).ok());
  EXPECT_EQ(count_rule(f, Rule::zip_bad_crc, Severity::high), 1u) << dump(f);
  Findings g;
  ASSERT_TRUE(read_zip(as_span(z), g, {}, /*verify_crc=*/false).ok());
  EXPECT_EQ(count_rule(g, Rule::zip_bad_crc), 0u);
}

TEST(ZipReader, BadCrcInDeflatedEntry) {
  auto e = two_entries();
  e[1].method = 8;
  e[1].crc = 0x12345678;
  Bytes z = build_zip(e);
  Findings f;
  ASSERT_TRUE(read_zip(as_span(z), f).ok());
  EXPECT_EQ(count_rule(f, Rule::zip_bad_crc, Severity::high), 1u) << dump(f);
}

TEST(ZipReader, PrefixBytes) {
  Bytes z = build_zip(two_entries(), TOpts{.prefix = "#!/bin/sh\nexit 0\n"});
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_EQ(a->prefix_bytes, 17u);
  EXPECT_EQ(count_rule(f, Rule::zip_prefix_bytes, Severity::high), 1u) << dump(f);
}

TEST(ZipReader, GapBytes) {
  auto e = two_entries();
  e[1].gap_before = "HIDDEN";
  Bytes z = build_zip(e, TOpts{.gap_before_cd = "XY"});
  Findings f;
  ASSERT_TRUE(read_zip(as_span(z), f).ok());
  ASSERT_EQ(count_rule(f, Rule::zip_unreferenced_bytes, Severity::medium), 2u) << dump(f);
  EXPECT_NE(f[0].message.find("6 unreferenced"), std::string::npos) << dump(f);
  EXPECT_EQ(count_at_least(f, Severity::high), 0u) << dump(f);
}

TEST(ZipReader, EncryptedFlag) {
  auto e = two_entries();
  e[0].flags = 1;
  Bytes z = build_zip(e);
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(count_rule(f, Rule::zip_encrypted, Severity::high), 1u) << dump(f);
  EXPECT_EQ(count_rule(f, Rule::zip_bad_crc), 0u);
  std::vector<uint8_t> scratch;
  EXPECT_FALSE(entry_bytes(as_span(z), a->entries[0], scratch).ok());
}

TEST(ZipReader, UnsupportedMethod) {
  auto e = two_entries();
  e[0].method = 12;
  Bytes z = build_zip(e);
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(count_rule(f, Rule::zip_unsupported_method, Severity::high), 1u) << dump(f);
  std::vector<uint8_t> scratch;
  auto b = entry_bytes(as_span(z), a->entries[0], scratch);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().rule, Rule::zip_unsupported_method);
}

TEST(ZipReader, UnsafeNames) {
  for (const std::string& n : std::vector<std::string>{"../x", "a/../../x", "/etc/passwd", "a\\b", "C:evil", std::string("a\0b", 3)}) {
    SCOPED_TRACE(n);
    Bytes z = build_zip({TEntry{.name = n, .data = "x"}});
    Findings f;
    ASSERT_TRUE(read_zip(as_span(z), f).ok());
    EXPECT_EQ(count_rule(f, Rule::zip_unsafe_name, Severity::high), 1u) << dump(f);
  }
  Bytes ok = build_zip({TEntry{.name = "a/..b/c..", .data = "x"}});
  Findings f;
  ASSERT_TRUE(read_zip(as_span(ok), f).ok());
  EXPECT_TRUE(f.empty()) << dump(f);
}

TEST(ZipReader, FlagBits) {
  auto e = two_entries();
  e[0].flags = 0x0040;
  Bytes z = build_zip(e);
  Findings f;
  ASSERT_TRUE(read_zip(as_span(z), f).ok());
  EXPECT_EQ(count_rule(f, Rule::zip_flag_bits, Severity::medium), 1u) << dump(f);
}

TEST(ZipReader, TruncatedFile) {
  Bytes z = build_zip(two_entries());
  for (size_t cut : {size_t{1}, size_t{10}, size_t{30}, z.size() / 2, z.size() - 1}) {
    Bytes t(z.begin(), z.end() - static_cast<long>(cut));
    Findings f;
    auto a = read_zip(as_span(t), f);
    EXPECT_FALSE(a.ok()) << "cut " << cut;
    if (!a.ok()) {
      EXPECT_EQ(std::string(rule_id(a.error().rule)).rfind("zip.", 0), 0u) << a.error().rule;
    }
  }
  // Bytes removed from the middle: the end records survive, the offsets no longer fit.
  Bytes mid(z.begin(), z.begin() + 20);
  mid.insert(mid.end(), z.begin() + 40, z.end());
  Findings m;
  auto r = read_zip(as_span(mid), m);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rule, Rule::zip_cd_out_of_bounds);
  // A local header offset pointing past the end of the file.
  auto e = two_entries();
  e[1].central_offset = 0x7FFFFFFF;
  Bytes far = build_zip(e);
  auto fr = read_zip(as_span(far), m);
  ASSERT_FALSE(fr.ok());
  EXPECT_EQ(fr.error().rule, Rule::zip_truncated_local_header);
  Bytes empty;
  Findings f;
  EXPECT_EQ(read_zip(as_span(empty), f).error().rule, Rule::zip_no_eocd);
}

TEST(ZipReader, EocdClaimsMoreEntries) {
  Bytes z = build_zip(two_entries(), TOpts{.extra_declared_entries = 1});
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().rule, Rule::zip_entry_count_mismatch);
  Bytes fewer = build_zip(two_entries(), TOpts{.extra_declared_entries = -1});
  auto b = read_zip(as_span(fewer), f);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.error().rule, Rule::zip_entry_count_mismatch);
}

TEST(ZipReader, TooManyEntries) {
  Bytes z = build_zip(two_entries());
  Findings f;
  ZipLimits lim;
  lim.max_entries = 1;
  auto a = read_zip(as_span(z), f, lim);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().rule, Rule::zip_too_many_entries);
}

TEST(ZipReader, OverlappingEntries) {
  auto e = two_entries();
  e.push_back(TEntry{.name = "archive/data.pkl", .data = "pickle-bytes", .central_offset = 0});
  e[2].name = "alias";
  e[2].local_name = "alias";
  Bytes z = build_zip(e);
  Findings f;
  ASSERT_TRUE(read_zip(as_span(z), f).ok());
  EXPECT_GE(count_rule(f, Rule::zip_overlap, Severity::high), 1u) << dump(f);
  EXPECT_EQ(count_rule(f, Rule::zip_local_central_mismatch), 1u) << dump(f);
}

TEST(ZipReader, CommentAndTrailingBytes) {
  Bytes z = build_zip(two_entries(), TOpts{.comment = "hi", .trailing = "junk"});
  Findings f;
  ASSERT_TRUE(read_zip(as_span(z), f).ok());
  EXPECT_EQ(count_rule(f, Rule::zip_comment, Severity::low), 1u) << dump(f);
  EXPECT_EQ(count_rule(f, Rule::zip_trailing_bytes, Severity::medium), 1u) << dump(f);
}

TEST(ZipReader, SecondEocdInCommentIsAmbiguous) {
  // A comment that itself contains an end-record signature whose comment runs past EOF.
  std::string fake = std::string("PK\x05\x06", 4) + std::string(16, '\0') + "\xff\xff";
  Bytes z = build_zip(two_entries(), TOpts{.comment = fake});
  Findings f;
  ASSERT_TRUE(read_zip(as_span(z), f).ok());
  EXPECT_EQ(count_rule(f, Rule::zip_ambiguous_eocd, Severity::high), 1u) << dump(f);
}

TEST(ZipReader, DeflateBoundsAndMismatch) {
  std::string zeros(4 << 20, '\0');  // period-251 pattern: compresses ~100:1, under the default ratio
  for (size_t i = 0; i < zeros.size(); ++i) zeros[i] = static_cast<char>(i % 251);
  Bytes z = build_zip({TEntry{.name = "z", .data = zeros, .method = 8}});
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(f.empty()) << dump(f);
  std::vector<uint8_t> scratch;
  auto ok = entry_bytes(as_span(z), a->entries[0], scratch);
  ASSERT_TRUE(ok.ok()) << ok.error().describe();
  EXPECT_EQ(ok->size(), zeros.size());

  ZipLimits small;
  small.max_inflated_bytes = 1 << 20;
  auto lim = entry_bytes(as_span(z), a->entries[0], scratch, small);
  ASSERT_FALSE(lim.ok());
  EXPECT_EQ(lim.error().rule, Rule::zip_inflate_limit);
  ZipLimits ratio;
  ratio.max_inflate_ratio = 10;
  EXPECT_EQ(entry_bytes(as_span(z), a->entries[0], scratch, ratio).error().rule, Rule::zip_inflate_limit);

  ZipEntry wrong = a->entries[0];
  wrong.uncompressed_size -= 1;
  EXPECT_EQ(entry_bytes(as_span(z), wrong, scratch).error().rule, Rule::zip_size_mismatch);
  wrong.uncompressed_size += 2;
  EXPECT_EQ(entry_bytes(as_span(z), wrong, scratch).error().rule, Rule::zip_size_mismatch);
}

TEST(ZipReader, StoredEntryPastEof) {
  Bytes z = build_zip(two_entries());
  Findings f;
  auto a = read_zip(as_span(z), f);
  ASSERT_TRUE(a.ok());
  ZipEntry e = a->entries[0];
  e.compressed_size = e.uncompressed_size = z.size();
  std::vector<uint8_t> scratch;
  EXPECT_EQ(entry_bytes(as_span(z), e, scratch).error().rule, Rule::zip_data_past_eof);
  e.data_offset = ~uint64_t{0} - 2;
  EXPECT_EQ(entry_bytes(as_span(z), e, scratch).error().rule, Rule::zip_data_past_eof);
}


// Data descriptors in each of the four forms (signature or not, 32- or 64-bit sizes): the reader
// picks the form that makes the next structure follow directly, so nothing is left unreferenced;
// a descriptor that disagrees with the central directory is a finding (issue 14 rewrote this check).
std::string descriptor(const std::string& data, bool with_sig, bool wide, uint32_t crc_delta = 0) {
  Bytes d;
  if (with_sig) put32(d, 0x08074b50);
  put32(d, libdeflate_crc32(0, data.data(), data.size()) + crc_delta);
  for (int k = 0; k < 2; ++k) {
    put32(d, static_cast<uint32_t>(data.size()));
    if (wide) put32(d, 0);
  }
  return std::string(d.begin(), d.end());
}

TEST(ZipReader, DataDescriptorFormsFitTheLayout) {
  for (bool with_sig : {true, false}) {
    for (bool wide : {false, true}) {
      TEntry a{"a.bin", "first entry data"}, b{"b.bin", "second"};
      a.flags = b.flags = 0x8;
      b.gap_before = descriptor(a.data, with_sig, wide);
      TOpts o;
      o.gap_before_cd = descriptor(b.data, with_sig, wide);
      Bytes z = build_zip({a, b}, o);
      Findings f;
      auto r = read_zip(as_span(z), f);
      ASSERT_TRUE(r.ok()) << r.error().message;
      EXPECT_EQ(count_rule(f, Rule::zip_local_central_mismatch), 0u) << with_sig << wide << dump(f);
      EXPECT_EQ(count_rule(f, Rule::zip_unreferenced_bytes), 0u) << with_sig << wide << dump(f);
      EXPECT_EQ(count_rule(f, Rule::zip_overlap), 0u) << with_sig << wide << dump(f);
    }
  }
  TEntry a{"a.bin", "first entry data"};
  a.flags = 0x8;
  TOpts o;
  o.gap_before_cd = descriptor(a.data, true, false, 1);  // wrong CRC in the descriptor
  Bytes z = build_zip({a}, o);
  Findings f;
  auto r = read_zip(as_span(z), f);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(count_rule(f, Rule::zip_local_central_mismatch), 1u) << dump(f);
  EXPECT_EQ(count_rule(f, Rule::zip_unreferenced_bytes), 1u) << dump(f);
}

}  // namespace
}  // namespace modelcdr::container
