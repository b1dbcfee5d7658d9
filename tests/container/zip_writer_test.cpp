#include "container/zip_writer.hpp"

#include <gtest/gtest.h>
#include <libdeflate.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "container/zip_reader.hpp"

namespace modelcdr::container {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

fs::path make_temp_dir() {
  std::string tmpl = (fs::temp_directory_path() / "zip_writer_test-XXXXXX").string();
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return fs::path(tmpl);
}

Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string log_of(const fs::path& dir) {
  Bytes b = read_file(dir / "py.log");
  return std::string(b.begin(), b.end());
}

int run_python(const fs::path& dir, const std::string& script) {
  fs::path s = dir / "script.py";
  std::ofstream(s) << script;
  int rc = std::system(("/usr/bin/python3 " + s.string() + " > " + (dir / "py.log").string() + " 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::span<const uint8_t> span_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string dump(const Findings& f) {
  std::string s;
  for (const auto& x : f) s += std::string(severity_name(x.severity)) + " " + std::string(rule_id(x.rule)) + " " + x.entry + ": " + x.message + "\n";
  return s;
}

struct Item {
  std::string name, data;
};

std::vector<Item> sample_items() {
  std::vector<Item> items = {{"archive/data.pkl", "\x80\x02}q\x00."},
                             {"archive/.format_version", "1"},
                             {"archive/.storage_alignment", "64"},
                             {"archive/byteorder", "little"},
                             {"archive/data/0", std::string(1000, '\x01')},
                             {"archive/data/1", ""},
                             {"archive/version", "3\n"}};
  std::string big(300000, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 2654435761u) >> 13);
  items.push_back({"archive/data/2", big});
  return items;
}

// Writes items, the 2nd-last through chunked write_payload calls.
fs::path write_archive(const fs::path& dir, const std::vector<Item>& items, const std::string& name = "out.pt") {
  fs::path p = dir / name;
  auto out = io::AtomicOutput::create(p.string());
  EXPECT_TRUE(out.ok());
  ZipWriter w(*out);
  for (size_t i = 0; i < items.size(); ++i) {
    if (i % 2 == 1) {
      EXPECT_TRUE(w.begin_entry(items[i].name, items[i].data.size()).ok());
      auto sp = span_of(items[i].data);
      for (size_t off = 0; off < sp.size(); off += 777)
        EXPECT_TRUE(w.write_payload(sp.subspan(off, std::min<size_t>(777, sp.size() - off))).ok());
      EXPECT_TRUE(w.end_entry().ok());
    } else {
      EXPECT_TRUE(w.add(items[i].name, span_of(items[i].data)).ok());
    }
  }
  EXPECT_TRUE(w.finish().ok());
  EXPECT_TRUE(out->commit().ok());
  return p;
}

TEST(ZipWriter, RoundTripThroughOurReader) {
  fs::path dir = make_temp_dir();
  auto items = sample_items();
  Bytes z = read_file(write_archive(dir, items));
  Findings f;
  auto a = read_zip(z, f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_TRUE(f.empty()) << dump(f);
  ASSERT_EQ(a->entries.size(), items.size());
  std::vector<uint8_t> scratch;
  for (size_t i = 0; i < items.size(); ++i) {
    const ZipEntry& e = a->entries[i];
    EXPECT_EQ(e.name, items[i].name);
    EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
    EXPECT_EQ(e.method, 0);
    EXPECT_EQ(e.flags, items[i].data.empty() ? 0x0800 : 0x0808);
    EXPECT_EQ(e.crc32, ZipWriter::crc32(span_of(items[i].data)));
    auto b = entry_bytes(z, e, scratch);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(std::string(b->begin(), b->end()), items[i].data);
  }
  // Always zip64 end records, like torch: record, then locator, then the classic end record.
  ASSERT_GE(z.size(), 98u);
  const uint8_t* end = z.data() + z.size();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(end - 22), 4), std::string("PK\x05\x06", 4));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(end - 42), 4), std::string("PK\x06\x07", 4));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(end - 98), 4), std::string("PK\x06\x06", 4));
  fs::remove_all(dir);
}

TEST(ZipWriter, AlignmentForEveryNameLength) {
  fs::path dir = make_temp_dir();
  std::vector<Item> items;
  for (int n = 1; n <= 80; ++n) items.push_back({std::string(n, 'a' + n % 26) + std::to_string(n), std::string(n * 3, 'x')});
  Bytes z = read_file(write_archive(dir, items));
  Findings f;
  auto a = read_zip(z, f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_TRUE(f.empty()) << dump(f);
  for (const auto& e : a->entries) EXPECT_EQ(e.data_offset % 64, 0u) << e.name;
  fs::remove_all(dir);
}

TEST(ZipWriter, PythonZipfileAcceptsOutput) {
  fs::path dir = make_temp_dir();
  auto items = sample_items();
  fs::path p = write_archive(dir, items);
  std::string script = "import zipfile, zlib, sys\nz = zipfile.ZipFile('" + p.string() +
                       "')\nassert z.testzip() is None\nnames = z.namelist()\nprint(names)\n";
  script += "assert names == [" ;
  for (const auto& it : items) script += "'" + it.name + "',";
  script += "]\nassert len(z.read('archive/data/2')) == 300000\nassert z.read('archive/version') == b'3\\n'\n";
  EXPECT_EQ(run_python(dir, script), 0) << log_of(dir);
  fs::remove_all(dir);
}

TEST(ZipWriter, ByteIdenticalToTorchSave) {
  // Re-writing the records of a torch.save file must reproduce it byte for byte (docs/FORMATS.md §2.3).
  fs::path dir = make_temp_dir();
  fs::path t = dir / "torch.pt";
  ASSERT_EQ(run_python(dir, "import torch\ntorch.save({'w': torch.arange(10.), 'b': torch.zeros(0), 'c': torch.ones(7, dtype=torch.int16)}, '" +
                                t.string() + "')\n"),
            0)
      << log_of(dir);
  Bytes orig = read_file(t);
  Findings f;
  auto a = read_zip(orig, f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  std::vector<Item> items;
  std::vector<uint8_t> scratch;
  for (const auto& e : a->entries) {
    auto b = entry_bytes(orig, e, scratch);
    ASSERT_TRUE(b.ok());
    items.push_back({e.name, std::string(b->begin(), b->end())});
  }
  Bytes ours = read_file(write_archive(dir, items));
  EXPECT_EQ(ours.size(), orig.size());
  EXPECT_TRUE(ours == orig) << "first difference at "
                            << (std::mismatch(ours.begin(), ours.end(), orig.begin(), orig.end()).first - ours.begin());
  fs::remove_all(dir);
}

// A record stage that took each chunk's CRC-32 while the chunk was in its cache hands it over
// (write_payload with a CRC): the entry's CRC is combined from them, and the archive must be
// byte-identical to one whose writer computed every CRC itself, whatever the chunking.
TEST(ZipWriter, ChunkCrcsCombineToTheEntryCrc) {
  fs::path dir = make_temp_dir();
  auto items = sample_items();
  const Bytes plain = read_file(write_archive(dir, items, "plain.pt"));
  for (size_t chunk : {size_t(1), size_t(777), size_t(65536), size_t(1) << 20}) {
    fs::path p = dir / ("crc-" + std::to_string(chunk) + ".pt");
    auto out = io::AtomicOutput::create(p.string());
    ASSERT_TRUE(out.ok());
    ZipWriter w(*out);
    for (size_t i = 0; i < items.size(); ++i) {
      auto sp = span_of(items[i].data);
      if (i % 2 == 0) {
        ASSERT_TRUE(w.add(items[i].name, sp).ok());
        continue;
      }
      ASSERT_TRUE(w.begin_entry(items[i].name, sp.size()).ok());
      for (size_t off = 0, k = 0; off < sp.size(); off += chunk, ++k) {
        auto c = sp.subspan(off, std::min(chunk, sp.size() - off));
        // Every other chunk without a CRC: the two forms mix within one entry.
        ASSERT_TRUE((k % 2 ? w.write_payload(c) : w.write_payload(c, libdeflate_crc32(0, c.data(), c.size()))).ok());
      }
      ASSERT_TRUE(w.end_entry().ok());
    }
    ASSERT_TRUE(w.finish().ok());
    ASSERT_TRUE(out->commit().ok());
    EXPECT_TRUE(read_file(p) == plain) << "chunk " << chunk;
  }
  // A wrong chunk CRC is what the directory then says: the reader refuses the entry.
  {
    fs::path p = dir / "wrong.pt";
    auto out = io::AtomicOutput::create(p.string());
    ASSERT_TRUE(out.ok());
    ZipWriter w(*out);
    const std::string data(5000, 'x');
    ASSERT_TRUE(w.begin_entry("archive/data/0", data.size()).ok());
    ASSERT_TRUE(w.write_payload(span_of(data), libdeflate_crc32(0, data.data(), data.size()) ^ 1u).ok());
    ASSERT_TRUE(w.end_entry().ok());
    ASSERT_TRUE(w.finish().ok());
    ASSERT_TRUE(out->commit().ok());
    Bytes z = read_file(p);
    Findings f;
    auto a = read_zip(z, f);
    ASSERT_TRUE(a.ok());
    EXPECT_NE(a->entries[0].crc32, ZipWriter::crc32(span_of(data)));
  }
  fs::remove_all(dir);
}

TEST(ZipWriter, SizeContractIsEnforced) {
  fs::path dir = make_temp_dir();
  auto out = io::AtomicOutput::create((dir / "x.zip").string());
  ASSERT_TRUE(out.ok());
  ZipWriter w(*out);
  std::string five = "12345";
  ASSERT_TRUE(w.begin_entry("a", 4).ok());
  EXPECT_FALSE(w.write_payload(span_of(five)).ok());  // more than declared
  EXPECT_TRUE(w.write_payload(span_of(five).first(3)).ok());
  EXPECT_FALSE(w.end_entry().ok());                 // one byte short
  EXPECT_FALSE(w.begin_entry("b", 1).ok());         // still open
  EXPECT_FALSE(w.finish().ok());                    // still open
  EXPECT_TRUE(w.write_payload(span_of(five).first(1)).ok());
  EXPECT_TRUE(w.end_entry().ok());
  EXPECT_FALSE(w.end_entry().ok());
  EXPECT_FALSE(w.add("a", span_of(five)).ok());     // duplicate name
  EXPECT_FALSE(w.write_payload(span_of(five)).ok());  // no open entry
  EXPECT_TRUE(w.finish().ok());
  EXPECT_FALSE(w.add("c", span_of(five)).ok());     // after finish
  fs::remove_all(dir);
}

// A payload copied in the kernel from another file, at the same offset within a 64 KiB folio
// as in the source, with the CRC taken of what landed in the output.
TEST(ZipWriter, KernelCopiedPayloadKeepsPhaseAndCrc) {
  fs::path dir = make_temp_dir();
  Bytes src(3 * (64 << 10) + 12345);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>((i * 2654435761u) >> 11);
  std::ofstream(dir / "src.bin", std::ios::binary).write(reinterpret_cast<const char*>(src.data()), src.size());
  const uint64_t src_offset = 5 * 64 + 4096;  // 64-aligned, some phase
  const uint64_t size = src.size() - src_offset;
  int fd = ::open((dir / "src.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  auto out = io::AtomicOutput::create((dir / "out.zip").string());
  ASSERT_TRUE(out.ok());
  ZipWriter w(*out);
  ASSERT_TRUE(w.add("archive/data.pkl", span_of("x")).ok());
  ASSERT_TRUE(w.begin_entry("archive/data/0", size, src_offset % ZipWriter::kPhaseUnit).ok());
  auto copied = w.copy_payload_from(fd, src_offset, size);
  ASSERT_TRUE(copied.ok()) << copied.error().describe();
  if (!*copied) {  // a file system without copy_file_range: the caller would stream instead
    ::close(fd);
    fs::remove_all(dir);
    GTEST_SKIP() << "copy_file_range unsupported here";
  }
  const uint32_t expect_crc = ZipWriter::crc32(std::span<const uint8_t>(src).subspan(src_offset));
  EXPECT_EQ(w.entry_crc(), expect_crc);
  ASSERT_TRUE(w.end_entry().ok());
  ASSERT_TRUE(w.finish().ok());
  ASSERT_TRUE(out->commit().ok());
  ::close(fd);
  Bytes z = read_file(dir / "out.zip");
  Findings f;
  auto a = read_zip(z, f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_TRUE(f.empty()) << dump(f);
  const ZipEntry& e = a->entries.at(1);
  EXPECT_EQ(e.data_offset % ZipWriter::kPhaseUnit, src_offset % ZipWriter::kPhaseUnit);
  EXPECT_EQ(e.crc32, expect_crc);
  std::vector<uint8_t> scratch;
  auto b = entry_bytes(z, e, scratch);
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(std::equal(b->begin(), b->end(), src.begin() + src_offset, src.end()));
  fs::remove_all(dir);
}

// Where the 64 KiB phase would need more padding than the 16-bit extra field holds, the
// record still lands at the source's offset modulo 4 KiB, so its whole blocks can be shared.
TEST(ZipWriter, PhaseFallsBackToBlockPhaseWhenPaddingDoesNotFit) {
  fs::path dir = make_temp_dir();
  auto out = io::AtomicOutput::create((dir / "out.zip").string());
  ASSERT_TRUE(out.ok());
  ZipWriter w(*out, 1);  // alignment 1: any phase is allowed
  ASSERT_TRUE(w.add("archive/data.pkl", span_of("x")).ok());
  const std::string name = "archive/data/0";
  const uint64_t start = out->tell() + 30 + name.size() + 4;
  const uint64_t phase = (start + 0xFFFF) % ZipWriter::kPhaseUnit;  // needs 65535 bytes of padding
  Bytes payload(5000, 7);
  ASSERT_TRUE(w.begin_entry(name, payload.size(), phase).ok());
  ASSERT_TRUE(w.write_payload(payload).ok());
  ASSERT_TRUE(w.end_entry().ok());
  ASSERT_TRUE(w.finish().ok());
  ASSERT_TRUE(out->commit().ok());
  Bytes z = read_file(dir / "out.zip");
  Findings f;
  auto a = read_zip(z, f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_EQ(a->entries.at(1).data_offset % ZipWriter::kBlockPhaseUnit, phase % ZipWriter::kBlockPhaseUnit);
  fs::remove_all(dir);
}

// The sharing path hands the directory's CRC to the descriptor and checks the bytes read back
// from the output later: a wrong expected CRC must fail finish(), before anything is committed.
// (Where the file system cannot share, the same deferred check covers the copied record.)
TEST(ZipWriter, SharedPathChecksCrcBeforeFinish) {
  fs::path dir = make_temp_dir();
  Bytes src(3 * (1 << 20) + 777);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>((i * 2654435761u) >> 13);
  std::ofstream(dir / "src.bin", std::ios::binary).write(reinterpret_cast<const char*>(src.data()), src.size());
  const uint64_t src_offset = 64 * 7;
  const uint64_t size = src.size() - src_offset - 100;
  const uint32_t good = ZipWriter::crc32(std::span<const uint8_t>(src).subspan(src_offset, size));
  int fd = ::open((dir / "src.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  for (uint32_t expected : {good, good ^ 1u}) {
    auto out = io::AtomicOutput::create((dir / "out.zip").string());
    ASSERT_TRUE(out.ok());
    ZipWriter w(*out);
    ASSERT_TRUE(w.add("archive/data.pkl", span_of("x")).ok());
    ASSERT_TRUE(w.begin_entry("archive/data/0", size, src_offset % ZipWriter::kPhaseUnit).ok());
    auto copied = w.copy_payload_from(fd, src_offset, size, expected, "src.bin");
    ASSERT_TRUE(copied.ok()) << copied.error().describe();
    if (!*copied) GTEST_SKIP() << "copy_file_range unsupported here";
    ASSERT_TRUE(w.end_entry().ok());
    auto done = w.finish();
    if (expected == good) {
      ASSERT_TRUE(done.ok()) << done.error().describe();
      ASSERT_TRUE(out->commit().ok());
      Bytes z = read_file(dir / "out.zip");
      Findings f;
      auto a = read_zip(z, f);
      ASSERT_TRUE(a.ok()) << a.error().describe();
      EXPECT_EQ(a->entries.at(1).crc32, good);
      fs::remove(dir / "out.zip");
    } else {
      ASSERT_FALSE(done.ok());
      EXPECT_EQ(done.error().rule, Rule::zip_bad_crc);
      EXPECT_EQ(done.error().entry, "src.bin");
    }
  }
  ::close(fd);
  EXPECT_FALSE(fs::exists(dir / "out.zip"));
  fs::remove_all(dir);
}

TEST(ZipWriter, Crc32MatchesZlibAndChains) {
  std::string s = "123456789";
  EXPECT_EQ(ZipWriter::crc32(span_of(s)), 0xCBF43926u);
  uint32_t c = ZipWriter::crc32(span_of(s).first(4));
  EXPECT_EQ(ZipWriter::crc32(span_of(s).subspan(4), c), 0xCBF43926u);
}

// The reader takes the zip64 end record when present; sentinel values in the classic record
// must then be resolved from it, and disagreement must be reported.
TEST(ZipWriter, Zip64EndRecordPath) {
  fs::path dir = make_temp_dir();
  Bytes z = read_file(write_archive(dir, sample_items()));
  auto patch16 = [](Bytes& b, size_t at, uint16_t v) { b[at] = v & 0xFF, b[at + 1] = v >> 8; };
  auto patch32 = [](Bytes& b, size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
  };
  const size_t eocd = z.size() - 22;
  {
    Bytes s = z;  // classic record fully sentinel: everything must come from zip64
    patch16(s, eocd + 8, 0xFFFF);
    patch16(s, eocd + 10, 0xFFFF);
    patch32(s, eocd + 12, 0xFFFFFFFF);
    patch32(s, eocd + 16, 0xFFFFFFFF);
    Findings f;
    auto a = read_zip(s, f);
    ASSERT_TRUE(a.ok()) << a.error().describe();
    EXPECT_TRUE(f.empty()) << dump(f);
    EXPECT_EQ(a->entries.size(), sample_items().size());
  }
  {
    Bytes s = z;  // classic record disagrees with zip64 entry count
    patch16(s, eocd + 8, 3);
    patch16(s, eocd + 10, 3);
    Findings f;
    auto a = read_zip(s, f);
    ASSERT_TRUE(a.ok()) << a.error().describe();
    EXPECT_EQ(std::count_if(f.begin(), f.end(), [](const Finding& x) { return x.rule == Rule::zip_zip64_inconsistent; }), 1)
        << dump(f);
  }
  {
    Bytes s = z;  // zip64 record claims one more entry than the directory holds
    const size_t z64 = z.size() - 98;
    s[z64 + 24] += 1;
    s[z64 + 32] += 1;
    Findings f;
    auto a = read_zip(s, f);
    ASSERT_FALSE(a.ok());
    EXPECT_EQ(a.error().rule, Rule::zip_entry_count_mismatch);
  }
  {
    Bytes s = z;  // locator points somewhere else
    patch32(s, z.size() - 42 + 8, 12);
    Findings f;
    auto a = read_zip(s, f);
    ASSERT_FALSE(a.ok());
    EXPECT_EQ(a.error().rule, Rule::zip_zip64_inconsistent);
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace modelcdr::container
