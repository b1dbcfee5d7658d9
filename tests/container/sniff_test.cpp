#include <gtest/gtest.h>

#include "formats/registry.hpp"

using modelcdr::container::Format;
using modelcdr::formats::sniff;

namespace {
Format of(std::string_view s) {
  return sniff(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}
}  // namespace

TEST(Sniff, DecidesLikeTorchLoad) {
  EXPECT_EQ(of(std::string_view("PK\x03\x04rest", 8)), Format::torch_zip);
  EXPECT_EQ(of(std::string_view("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e\x80\x02", 17)), Format::torch_legacy);
  EXPECT_EQ(of(std::string_view("\x80\x04\x95\x00", 4)), Format::pickle);
  EXPECT_EQ(of("(dp0\nS'a'\np1\nI1\ns."), Format::pickle);
  EXPECT_EQ(of(std::string_view("\x93NUMPY\x01\x00", 8)), Format::npy);
  EXPECT_EQ(of(std::string_view("7z\xbc\xaf\x27\x1c\x00\x04", 8)), Format::seven_zip);
  EXPECT_EQ(of(std::string_view("\x1f\x8b\x08\x00", 4)), Format::gzip);
  EXPECT_EQ(of(""), Format::empty);
  EXPECT_EQ(of("hello world"), Format::unknown);
  // a zip that does not start at offset 0 is not a zip to torch.load
  EXPECT_NE(of(std::string_view("xxxxPK\x03\x04", 8)), Format::torch_zip);
}

TEST(Sniff, SafetensorsHeader) {
  std::string s(8, '\0');
  s[0] = 2;
  s += "{}";
  EXPECT_EQ(of(s), Format::safetensors);
}

TEST(Sniff, TarChecksumDecidesTarFirst) {
  std::string block(512, '\0');
  block.replace(0, 5, "pickle");
  block.replace(148, 8, "        ");
  unsigned sum = 0;
  for (unsigned char c : block) sum += c;
  char chk[8];
  std::snprintf(chk, sizeof chk, "%06o", sum);
  block.replace(148, 6, chk);
  block[154] = '\0';
  EXPECT_EQ(of(block), Format::torch_tar);
  block[0] = 'X';  // checksum no longer matches
  EXPECT_NE(of(block), Format::torch_tar);
}
