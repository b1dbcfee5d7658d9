// Input-driven bounds in src/io: a mapped input truncated while it is read (SIGBUS caught,
// zeros read, the mapping marked changed) and the bounded JSON inspection (depth, element
// count, duplicate keys, root key order) that replaces ordered_json parsing.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "io/bounded_json.hpp"
#include "io/mapped_file.hpp"

namespace modelcdr::io {
namespace {

namespace fs = std::filesystem;

fs::path temp_file(const std::string& content) {
  std::string tmpl = (fs::temp_directory_path() / "bounds_io_test-XXXXXX").string();
  int fd = ::mkstemp(tmpl.data());
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  ::close(fd);
  return tmpl;
}

TEST(MappedFileTruncation, ReadPastNewEndGivesZerosAndMarksChanged) {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  fs::path p = temp_file(std::string(8 * page, 'A'));
  auto m = MappedFile::open(p.string());
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->changed());
  ASSERT_EQ(::truncate(p.c_str(), static_cast<off_t>(page)), 0);  // another process's truncate
  // Without the handler this read raises SIGBUS and kills the process.
  volatile const uint8_t* data = m->bytes().data();
  EXPECT_EQ(data[0], 'A');                 // still inside the file
  EXPECT_EQ(data[5 * page + 17], 0);       // past the new end: a zero page
  EXPECT_EQ(data[8 * page - 1], 0);        // the whole tail was replaced in one fault
  EXPECT_TRUE(m->changed());
  fs::remove(p);
}

TEST(MappedFileTruncation, SizeChangeWithoutFaultIsChanged) {
  fs::path p = temp_file(std::string(10000, 'B'));
  auto m = MappedFile::open(p.string());
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(::truncate(p.c_str(), 20000), 0);
  EXPECT_TRUE(m->changed());
  fs::remove(p);
}

TEST(MappedFileBuffered, SmallFileIsReadIntoABufferLargeFileIsMapped) {
  std::string text(5000, 'C');
  text[4999] = 'D';
  fs::path p = temp_file(text);
  auto small = MappedFile::open(p.string(), 5001);
  ASSERT_TRUE(small.ok());
  EXPECT_TRUE(small->buffered());
  EXPECT_EQ(std::string(small->bytes().begin(), small->bytes().end()), text);
  EXPECT_FALSE(small->changed());
  auto mapped = MappedFile::open(p.string(), 5000);  // not below the bound: mapped as before
  ASSERT_TRUE(mapped.ok());
  EXPECT_FALSE(mapped->buffered());
  EXPECT_EQ(std::string(mapped->bytes().begin(), mapped->bytes().end()), text);
  MappedFile moved = std::move(*small);  // the buffer moves with it, the source is empty
  EXPECT_TRUE(moved.buffered());
  EXPECT_EQ(moved.bytes().back(), 'D');
  EXPECT_TRUE(small->bytes().empty());
  // A size change after the read is a changed input, as for a mapping.
  ASSERT_EQ(::truncate(p.c_str(), 100), 0);
  EXPECT_TRUE(moved.changed());
  EXPECT_EQ(moved.bytes().back(), 'D');  // the private copy itself is unaffected
  fs::remove(p);
}

TEST(MappedFileBuffered, NotARegularFileIsRefusedBeforeAnyRead) {
  auto dir = MappedFile::open(fs::temp_directory_path().string(), 1u << 20);
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.error().rule, Rule::io_not_regular);
}

TEST(MappedFileTruncation, OtherFaultsStillCrash) {
  // A SIGBUS outside every input mapping keeps the default action.
  EXPECT_DEATH(
      {
        MappedFile::open("/proc/self/exe");  // installs the handler
        ::raise(SIGBUS);
      },
      "");
}

TEST(BoundedJson, RecordsRootKeysInOrderAndFindsDuplicatesAnywhere) {
  auto s = inspect_json(R"({"b":1,"a":{"x":[1,2]},"c":null})");
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.root_keys, (std::vector<std::string>{"b", "a", "c"}));
  auto d = inspect_json(R"({"a":{"x":1,"x":2}})");
  EXPECT_FALSE(d.ok());
  ASSERT_TRUE(d.duplicate_key.has_value());
  EXPECT_EQ(*d.duplicate_key, "x");
  EXPECT_FALSE(inspect_json(R"({"a":1} x)").valid);
  EXPECT_FALSE(inspect_json("{\"a\":\"\xff\"}").valid);  // not UTF-8
}

TEST(BoundedJson, DepthAndElementLimitsStopTheParse) {
  std::string deep(1'000'000, '[');
  deep += std::string(1'000'000, ']');
  auto s = inspect_json(deep, JsonLimits{64, 1u << 30});
  EXPECT_TRUE(s.too_deep);
  EXPECT_FALSE(s.ok());
  ASSERT_TRUE(limit_error(s, JsonLimits{64, 1u << 30}).has_value());
  EXPECT_EQ(limit_error(s, JsonLimits{64, 1u << 30})->rule, Rule::limits_depth);
  std::string many = "[";
  for (int i = 0; i < 1000; ++i) many += "1,";
  many += "1]";
  auto m = inspect_json(many, JsonLimits{8, 100});
  EXPECT_TRUE(m.too_many);
  EXPECT_TRUE(inspect_json(many, JsonLimits{8, 10000}).ok());
}

TEST(BoundedJson, ManyKeysAreLinear) {
  // 360 000 root keys: ordered_json inserts each by linear search (minutes); this is O(n).
  std::string text = "{";
  for (int i = 0; i < 360000; ++i) text += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":1";
  text += "}";
  auto t0 = std::chrono::steady_clock::now();
  auto s = inspect_json(text);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.root_keys.size(), 360000u);
  EXPECT_LT(secs, 5.0);
}

}  // namespace
}  // namespace modelcdr::io
