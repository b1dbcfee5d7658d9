// The bounded byte scan of src/cdr/scan_keras.cpp on hand-laid bytes (tests/e2e/test_scan_keras.py
// covers real h5py files): signature offsets, a config found amid binary bytes, decoys and
// duplicate keys, and the work bound on a file of unclosed objects.
#include "cdr/scan_keras.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace modelcdr::cdr {
namespace {

const std::string kSig("\x89HDF\r\n\x1a\n", 8);

std::vector<uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

bool has(const Findings& fs, Rule r) {
  for (const auto& f : fs)
    if (f.rule == r) return true;
  return false;
}

Findings scan(const std::string& s, std::optional<std::string>* format = nullptr) {
  Findings out;
  auto b = bytes_of(s);
  auto f = scan_keras(b, {}, out);
  if (format) *format = f;
  return out;
}

TEST(ScanKeras, NotHdf5NotZipIsLeftAlone) {
  std::optional<std::string> format;
  EXPECT_TRUE(scan("{\"class_name\": \"Lambda\"}", &format).empty());
  EXPECT_FALSE(format);
}

TEST(ScanKeras, SignatureAtZeroOrUserBlockOffsets) {
  EXPECT_EQ(hdf5_signature(bytes_of(kSig + std::string(100, '\0'))), 0u);
  EXPECT_EQ(hdf5_signature(bytes_of(std::string(1024, 'x') + kSig)), 1024u);
  EXPECT_FALSE(hdf5_signature(bytes_of(std::string(700, 'x') + kSig)));  // not 512 * 2^n
}

TEST(ScanKeras, LambdaAmidBinaryIsCritical) {
  std::string f = kSig + std::string("\x01\x02{\x03model_config\0", 17) +
                  "{\"class_name\": \"Model\", \"config\": {\"layers\": [{\"class_name\": \"Lambda\", "
                  "\"config\": {\"function\": \"lambda x: x\"}}]}}" + std::string(8, '\0');
  std::optional<std::string> format;
  Findings out = scan(f, &format);
  EXPECT_EQ(format, "hdf5");
  EXPECT_TRUE(has(out, Rule::keras_not_disarmable));
  ASSERT_TRUE(has(out, Rule::keras_lambda));
  EXPECT_FALSE(has(out, Rule::keras_config_unreadable));
}

TEST(ScanKeras, DuplicateKeyConfigIsUnreadableNotClean) {
  // json.loads keeps the last "class_name": a parser that kept the first would see a Dense
  std::string f = kSig + "{\"class_name\": \"Dense\", \"class_name\": \"Lambda\"}" + std::string(4, '\0');
  Findings out = scan(f);
  EXPECT_TRUE(has(out, Rule::keras_not_disarmable));
  EXPECT_TRUE(has(out, Rule::keras_config_unreadable));
}

TEST(ScanKeras, UnclosedObjectsStopAtTheBound) {
  // every `{"` opens an object that never closes: without the bound this is quadratic
  std::string f = kSig;
  for (int i = 0; i < 200000; ++i) f += "{\"a\":[";
  Findings out = scan(f);
  EXPECT_TRUE(has(out, Rule::keras_config_unreadable));
  EXPECT_FALSE(has(out, Rule::keras_lambda));
}

TEST(ScanKeras, ZipWithRootConfigIsKeras) {
  Findings out;
  std::vector<uint8_t> not_a_zip = bytes_of("PK not really");
  auto f = scan_keras(not_a_zip, {"metadata.json", "config.json"}, out);
  EXPECT_EQ(f, "keras");
  EXPECT_TRUE(has(out, Rule::keras_not_disarmable));
  EXPECT_TRUE(has(out, Rule::keras_config_unreadable));
}

}  // namespace
}  // namespace modelcdr::cdr
