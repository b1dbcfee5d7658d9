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
#include <vector>

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

// inspect_json answers with RapidJSON first and leaves every doubt to nlohmann;
// parse_json always runs nlohmann's parser. Both must give the same shape for any text.
void expect_same_shape(const std::string& text, const JsonLimits& limits) {
  JsonShape fast = inspect_json(text, limits);
  JsonShape full;
  parse_json(text, limits, full);
  SCOPED_TRACE(text.substr(0, 200));
  EXPECT_EQ(fast.valid, full.valid);
  EXPECT_EQ(fast.too_deep, full.too_deep);
  EXPECT_EQ(fast.too_many, full.too_many);
  EXPECT_EQ(fast.duplicate_key, full.duplicate_key);
  EXPECT_EQ(fast.root_keys, full.root_keys);
}

TEST(BoundedJson, FastPassAgreesWithNlohmann) {
  const JsonLimits limits{8, 64};
  const std::vector<std::string> cases = {
      "", " ", "{}", "[]", "{} ", " \t\r\n[1] \n", "{", "}", "[", "[1,]", "[,1]", "{\"a\":1,}", "{\"a\"}", "{\"a\" 1}",
      "{\"a\":1 \"b\":2}", "{1:2}", "[1 2]", "[1][2]", "nul", "null", "true", "false", "truex", "tru", "[true,false,null]",
      "0", "-0", "01", "-", "-01", "1.", ".5", "1.5", "-1.25", "1e5", "1E-5", "1.5e+3", "1e999", "-1e999",
      std::string(400, '9'), "[" + std::string(299, '9') + "]", "[" + std::string(301, '9') + "]",
      "18446744073709551616", "-9223372036854775809", "\"a\"", "\"a", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\x\"",
      "\"\\u0041\"", "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"\\ud83d\\ude00\"", "\"a\\ude00\"", "\"\\udc00\"", "[[[[1]]], \"\\u00e9cud83d\\ude00\"]", "{\"\\u0061\":1,\"a\":2}",
      "{\"a\\n\":1}", "\"\t\"", std::string("\"\0\"", 3), std::string("[1]\0", 4), "\"\xc3\xa9\"", "\"\xff\"",
      "\"\xed\xa0\x80\"", "\xef\xbb\xbf{}", "\xef\xbb{}", "{\"a\":1,\"a\":2}", "{\"x\":{\"a\":1,\"a\":2}}",
      "[{\"a\":1,\"a\":2}]", "{\"a\":{\"b\":1},\"b\":{\"b\":1}}", "{\"b\":1,\"a\":2,\"c\":{\"z\":[]}}",
      "[[[[[[[[1]]]]]]]]", "[[[[[[[[[1]]]]]]]]]", "{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":1}}}}}}}}",
      "/*c*/{}", "{}//c", "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,"
      "33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64]",
  };
  for (const auto& c : cases) expect_same_shape(c, limits);
  // More than 16 keys in one nested object (the hashed key set), with and without a duplicate.
  std::string many = "{\"o\":{";
  for (int i = 0; i < 40; ++i) many += (i ? ",\"k" : "\"k") + std::to_string(i) + "\":" + std::to_string(i);
  expect_same_shape(many + "}}", JsonLimits{8, 1000});
  expect_same_shape(many + ",\"k7\":0}}", JsonLimits{8, 1000});
  expect_same_shape(many + "}}", JsonLimits{8, 80});  // past the element limit
}

TEST(BoundedJson, FastPassAgreesWithNlohmannOnMutations) {
  // Every position of a plain document replaced by each of a set of bytes that matter to the
  // grammar, and deleted, and doubled: the two passes must agree on every variant.
  const std::string seed =
      "{\"files\": [{\"path\": \"a/b.pkl\", \"label\": \"benign\", \"size\": 1024, \"ratio\": -0.5}, "
      "{\"path\": \"c\\\\d\\n\", \"tags\": [true, false, null], \"n\": 0}], \"k\": {\"x\": 1, \"y\": [[], {}]}}";
  const std::string alphabet = std::string("{}[],:\"\\ 0123456789.-+eEtfnul\t\n\r/abAz") + std::string("\0\x7f\x80\xc3\xff", 5);
  const JsonLimits limits{4, 40};
  for (size_t i = 0; i < seed.size(); ++i) {
    for (char c : alphabet) {
      std::string m = seed;
      m[i] = c;
      expect_same_shape(m, limits);
      expect_same_shape(m, JsonLimits{});
    }
    expect_same_shape(seed.substr(0, i) + seed.substr(i + 1), limits);
    expect_same_shape(seed.substr(0, i) + seed[i] + seed.substr(i), JsonLimits{});
    expect_same_shape(seed.substr(0, i), JsonLimits{});
  }
}

}  // namespace
}  // namespace modelcdr::io
