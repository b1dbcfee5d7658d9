#include "container/tar_reader.hpp"

#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace modelcdr::container {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

size_t count_rule(const Findings& f, Rule rule) {
  return std::count_if(f.begin(), f.end(), [&](const Finding& x) { return x.rule == rule; });
}

std::string dump(const Findings& f) {
  std::string s;
  for (const auto& x : f) s += std::string(rule_id(x.rule)) + " " + x.entry + ": " + x.message + "\n";
  return s;
}

// One ustar header block + data + padding.
struct Member {
  std::string name;
  std::string data;
  char type = '0';
  std::string size_field;  // raw 12-byte size field override (e.g. base-256)
  std::string linkname;
};

void put_octal(Bytes& h, size_t off, size_t len, uint64_t v) {
  std::string s(len - 1, '0');
  for (size_t i = len - 1; i-- > 0; v >>= 3) s[i] = static_cast<char>('0' + (v & 7));
  std::memcpy(h.data() + off, s.data(), s.size());
  h[off + len - 1] = 0;
}

void finish_header(Bytes& h, size_t at = 0) {
  std::memset(h.data() + at + 148, ' ', 8);
  unsigned sum = 0;
  for (size_t i = 0; i < 512; ++i) sum += h[at + i];
  put_octal(h, at + 148, 7, sum);
  h[at + 155] = ' ';
}

Bytes header(const Member& m) {
  Bytes h(512, 0);
  std::memcpy(h.data(), m.name.data(), std::min<size_t>(m.name.size(), 100));
  put_octal(h, 100, 8, 0644);
  put_octal(h, 108, 8, 0);
  put_octal(h, 116, 8, 0);
  if (m.size_field.empty())
    put_octal(h, 124, 12, m.data.size());
  else
    std::memcpy(h.data() + 124, m.size_field.data(), 12);
  put_octal(h, 136, 12, 0);
  h[156] = static_cast<uint8_t>(m.type);
  std::memcpy(h.data() + 157, m.linkname.data(), std::min<size_t>(m.linkname.size(), 100));
  std::memcpy(h.data() + 257, "ustar\0" "00", 8);
  finish_header(h);
  return h;
}

Bytes build_tar(const std::vector<Member>& members, bool end_blocks = true) {
  Bytes t;
  for (const auto& m : members) {
    Bytes h = header(m);
    t.insert(t.end(), h.begin(), h.end());
    t.insert(t.end(), m.data.begin(), m.data.end());
    t.resize((t.size() + 511) / 512 * 512, 0);
  }
  if (end_blocks) t.resize(t.size() + 1024, 0);
  return t;
}

std::vector<Member> torch_members() {
  return {{"sys_info", "\x80\x02}q\x00."}, {"pickle", "\x80\x02K\x01."}, {"storages", std::string(700, 's')},
          {"tensors", "t"}};
}

TEST(TarReader, ReadsHandBuiltArchive) {
  Bytes t = build_tar(torch_members());
  Findings f;
  auto a = read_tar(t, f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_TRUE(f.empty()) << dump(f);
  ASSERT_EQ(a->members.size(), 4u);
  const TarMember* s = a->find("storages");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->size, 700u);
  EXPECT_EQ(s->data_offset, 2u * 1024 + 512);  // third member: two header+data pairs before it
  auto b = tar_member_bytes(t, *s);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(std::string(b->begin(), b->end()), std::string(700, 's'));
}

TEST(TarReader, ReadsPythonPaxArchive) {
  std::string tmpl = (fs::temp_directory_path() / "tar_reader_test-XXXXXX").string();
  ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
  fs::path dir(tmpl), p = dir / "old.tar";
  std::string long_name = "dir/" + std::string(150, 'n');
  std::string script = "import tarfile, io\n"
                       "with tarfile.open('" + p.string() + "', 'w', format=tarfile.PAX_FORMAT) as t:\n"
                       "    for name, data in [('sys_info', b'abc'), ('pickle', b'x' * 1000), ('" + long_name + "', b'L'), ('t\\u00e9', b'u')]:\n"
                       "        i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))\n"
                       "    d = tarfile.TarInfo('somedir'); d.type = tarfile.DIRTYPE; t.addfile(d)\n";
  std::ofstream(dir / "s.py") << script;
  ASSERT_EQ(std::system(("/usr/bin/python3 " + (dir / "s.py").string()).c_str()), 0);
  Bytes t = read_file(p);
  Findings f;
  auto a = read_tar(t, f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_TRUE(f.empty()) << dump(f);
  ASSERT_EQ(a->members.size(), 5u);
  EXPECT_EQ(a->members[2].name, long_name);
  EXPECT_EQ(a->members[3].name, "t\xc3\xa9");
  EXPECT_EQ(a->members[4].name, "somedir");
  EXPECT_EQ(a->members[4].typeflag, '5');
  auto b = tar_member_bytes(t, *a->find("pickle"));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(std::string(b->begin(), b->end()), std::string(1000, 'x'));
  fs::remove_all(dir);
}

TEST(TarReader, PaxSizeOverridesHeader) {
  std::string rec = "10 size=5\n";  // "10" + " " + "size=5" + "\n" = 10 bytes
  Bytes t = build_tar({{"pax", rec, 'x'}, {"data", "12345", '0', "00000000000"}});
  // The member header says 0 bytes, the PAX record 5: the data must be taken from PAX.
  Findings f;
  auto a = read_tar(t, f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  ASSERT_EQ(a->members.size(), 1u);
  EXPECT_EQ(a->members[0].size, 5u);
}

TEST(TarReader, Base256Size) {
  std::string field(12, '\0');
  field[0] = static_cast<char>(0x80);
  field[11] = 3;
  Bytes t = build_tar({{"b", "abc", '0', field}});
  Findings f;
  auto a = read_tar(t, f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_EQ(a->members[0].size, 3u);
  field[0] = static_cast<char>(0xFF);
  Bytes neg = build_tar({{"b", "abc", '0', field}});
  EXPECT_EQ(read_tar(neg, f).error().rule, Rule::tar_bad_number);
}

TEST(TarReader, BadChecksumIsError) {
  Bytes t = build_tar(torch_members());
  t[1024 + 5] ^= 1;  // second header's name
  Findings f;
  auto a = read_tar(t, f);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().rule, Rule::tar_bad_checksum);
  EXPECT_EQ(a.error().offset, 1024u + 148);
}

TEST(TarReader, NonRegularMembersAreFindings) {
  auto m = torch_members();
  m.push_back({"link", "", '2', "", "pickle"});
  m.push_back({"hard", "", '1', "", "pickle"});
  m.push_back({"fifo", "", '6'});
  Findings f;
  auto a = read_tar(build_tar(m), f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_EQ(count_rule(f, Rule::tar_non_regular), 3u) << dump(f);
  EXPECT_EQ(a->members.size(), 4u);
  EXPECT_EQ(a->find("link"), nullptr);
}

TEST(TarReader, DirectoryWithDataIsError) {
  Findings f;
  auto a = read_tar(build_tar({{"d", "hidden header", '5'}}), f);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().rule, Rule::tar_bad_member);
}

TEST(TarReader, DuplicateAndUnsafeNames) {
  auto m = torch_members();
  m.push_back({"pickle", "evil"});
  m.push_back({"../escape", "x"});
  m.push_back({"/abs", "x"});
  Findings f;
  auto a = read_tar(build_tar(m), f);
  ASSERT_TRUE(a.ok()) << a.error().describe();
  EXPECT_EQ(count_rule(f, Rule::tar_duplicate_name), 1u) << dump(f);
  EXPECT_EQ(count_rule(f, Rule::tar_unsafe_name), 2u) << dump(f);
  // Like Python's tarfile, lookups see the last member of a name.
  auto b = tar_member_bytes(build_tar(m), *a->find("pickle"));
  EXPECT_EQ(std::string(b->begin(), b->end()), "evil");
}

TEST(TarReader, TruncatedDataIsError) {
  Bytes t = build_tar(torch_members(), false);
  t.resize(t.size() - 1000);  // tensors gone, storages cut short
  Findings f;
  auto a = read_tar(t, f);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.error().rule, Rule::tar_truncated);
  Bytes h = build_tar({{"x", std::string(600, 'a')}}, false);
  h.resize(700);
  EXPECT_EQ(read_tar(h, f).error().rule, Rule::tar_truncated);
}

TEST(TarReader, TrailingGarbageAndBadMagic) {
  Bytes t = build_tar(torch_members());
  t.push_back('!');
  Findings f;
  ASSERT_TRUE(read_tar(t, f).ok());
  EXPECT_EQ(count_rule(f, Rule::tar_trailing_bytes), 1u);
  Bytes v7 = build_tar(torch_members());
  std::memset(v7.data() + 257, 0, 8);
  finish_header(v7);
  EXPECT_EQ(read_tar(v7, f).error().rule, Rule::tar_bad_magic);
  Bytes empty(1024, 0);
  EXPECT_FALSE(read_tar(empty, f).ok());
}

TEST(TarReader, BadPaxRecords) {
  Findings f;
  for (std::string rec : {"99 path=x\n", "5 a\n", "x path=y\n", "9 path=a"}) {
    SCOPED_TRACE(rec);
    auto a = read_tar(build_tar({{"pax", rec, 'x'}, {"data", "1"}}), f);
    ASSERT_FALSE(a.ok());
    EXPECT_EQ(a.error().rule, Rule::tar_bad_pax);
  }
  auto g = read_tar(build_tar({{"pax", "12 path=abc\n", 'g'}, {"data", "1"}}), f);
  EXPECT_FALSE(g.ok());
  auto chain = read_tar(build_tar({{"pax", "11 path=ab\n", 'x'}, {"pax", "11 path=cd\n", 'x'}, {"data", "1"}}), f);
  EXPECT_FALSE(chain.ok());
}

}  // namespace
}  // namespace modelcdr::container
