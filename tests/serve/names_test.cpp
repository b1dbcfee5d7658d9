// Names the gateway accepts (serve/names.hpp) and byte ranges it serves (serve/http_util.hpp).
#include <gtest/gtest.h>

#include "serve/http_util.hpp"
#include "serve/names.hpp"

using namespace modelcdr::serve;

TEST(ServeNames, RepoIdsAreTwoPlainNames) {
  EXPECT_TRUE(valid_repo_id("acme/tiny-bert"));
  EXPECT_TRUE(valid_repo_id("Org_1/model.v2"));
  for (const char* bad : {"acme", "acme/", "/x", "../x", "acme/..", "acme/../etc", "a/b/c", ".hidden/x", "a/.x",
                          "a/-x", "a b/c", "a\\b/c", "a/b\n", ""})
    EXPECT_FALSE(valid_repo_id(bad)) << bad;
  EXPECT_FALSE(valid_repo_id(std::string(200, 'a') + "/b"));
}

TEST(ServeNames, RevisionsAreOneName) {
  EXPECT_TRUE(valid_revision("main"));
  EXPECT_TRUE(valid_revision("0123456789abcdef0123456789abcdef01234567"));
  for (const char* bad : {"..", "refs/pr/1", "", ".", "a..b", "main\r"}) EXPECT_FALSE(valid_revision(bad)) << bad;
}

TEST(ServeNames, FilePathsStayInsideTheRepository) {
  EXPECT_TRUE(valid_file_path("config.json"));
  EXPECT_TRUE(valid_file_path("onnx/model.bin"));
  for (const char* bad : {"", "/etc/passwd", "../x", "a/../../x", "a//b", "a/", "./a", ".gitattributes", "a/.git/config",
                          "C:\\x"})
    EXPECT_FALSE(valid_file_path(bad)) << bad;
  EXPECT_FALSE(valid_file_path(std::string("a\0b", 3)));
  std::string deep;
  for (int i = 0; i < 20; ++i) deep += "d/";
  EXPECT_FALSE(valid_file_path(deep + "f"));
}

TEST(ServeRanges, SatisfiableRangesAreClampedToTheFile) {
  auto r = parse_range("bytes=3-10", 100);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 3u);
  EXPECT_EQ(r->last, 10u);
  r = parse_range("bytes=90-1000", 100);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->last, 99u);
  r = parse_range("bytes=-500", 100);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->first, 0u);
  r = parse_range("bytes=7-", 100);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->last, 99u);
}

TEST(ServeRanges, UnsatisfiableOrMalformedRangesAreRefused) {
  for (const char* bad : {"bytes=100-", "bytes=200-300", "bytes=5-2", "bytes=-0", "bytes=a-b", "bytes=1-2,4-5", "items=1-2",
                          "bytes=", "bytes=-", "bytes=99999999999999999999-"})
    EXPECT_FALSE(parse_range(bad, 100)) << bad;
  EXPECT_FALSE(parse_range("bytes=0-", 0));
}
