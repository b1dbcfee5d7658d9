// Codecs (bounded decompression), the joblib array hook, and the class registry.
#include <gtest/gtest.h>
#include <zlib.h>

#include "cdr/class_registry.hpp"
#include "formats/codecs.hpp"
#include "formats/parsed_model.hpp"

using namespace modelcdr;

namespace {

std::vector<uint8_t> zlib_compress(const std::vector<uint8_t>& in) {
  uLongf n = compressBound(in.size());
  std::vector<uint8_t> out(n);
  EXPECT_EQ(compress2(out.data(), &n, in.data(), in.size(), 9), Z_OK);
  out.resize(n);
  return out;
}

// joblib-style pickle: {'a': NumpyArrayWrapper(...)} with 3 int64 values inline.
#define L(s) std::string(s, sizeof(s) - 1)
std::vector<uint8_t> joblib_stream(uint8_t pad, bool truncate = false) {
  std::string p = L("\x80\x02}q\x00X\x01\x00\x00\x00" "a");
  p += L("cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}(");
  p += L("X\x08\x00\x00\x00" "subclass" "cnumpy\nndarray\n");
  p += L("X\x05\x00\x00\x00" "shape" "K\x03\x85");
  p += L("X\x05\x00\x00\x00" "order" "X\x01\x00\x00\x00" "C");
  p += L("X\x05\x00\x00\x00" "dtype" "cnumpy\ndtype\nX\x02\x00\x00\x00" "i8" "\x89\x88\x87R");
  p += L("(K\x03X\x01\x00\x00\x00" "<" "NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
  p += L("X\x1b\x00\x00\x00" "numpy_array_alignment_bytes" "K\x10ub");
  std::vector<uint8_t> out(p.begin(), p.end());
  out.push_back(pad);
  out.insert(out.end(), pad, 0xFF);
  for (int64_t v : {7, 8, 9})
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  if (truncate) {
    out.resize(out.size() - 4);
    return out;
  }
  const char tail[] = "s.";
  out.insert(out.end(), tail, tail + 2);
  return out;
}

}  // namespace

TEST(Codecs, ZlibRoundTripAndCap) {
  std::vector<uint8_t> zeros(1 << 20, 0);
  auto z = zlib_compress(zeros);
  Findings f;
  auto out = formats::decompress(z, formats::Codec::zlib, {}, f);
  ASSERT_TRUE(out.ok()) << out.error().describe();
  EXPECT_EQ(out->size(), zeros.size());
  formats::DecompressLimits tight;
  tight.floor_bytes = 4096;
  tight.ratio = 2;
  auto capped = formats::decompress(z, formats::Codec::zlib, tight, f);
  ASSERT_FALSE(capped.ok());
  EXPECT_EQ(capped.error().rule, Rule::codec_too_large);
}

TEST(Codecs, TrailingBytesAreAnError) {
  auto z = zlib_compress({1, 2, 3});
  z.push_back(0x42);
  Findings f;
  auto out = formats::decompress(z, formats::Codec::zlib, {}, f);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.error().rule, Rule::codec_trailing_data);
}

TEST(Codecs, Detect) {
  EXPECT_EQ(formats::detect_codec(std::vector<uint8_t>{0x1f, 0x8b, 8}), formats::Codec::gzip);
  EXPECT_EQ(formats::detect_codec(std::vector<uint8_t>{0x5d, 0, 0, 0x40}), formats::Codec::lzma);
  EXPECT_FALSE(formats::detect_codec(std::vector<uint8_t>{0x80, 0x04}));
}

TEST(Joblib, InlineArrayIsRead) {
  auto bytes = joblib_stream(5);
  auto parsed = formats::read_joblib(bytes, {});
  ASSERT_TRUE(parsed.ok()) << parsed.error().describe();
  EXPECT_EQ(parsed->format, container::Format::joblib);
  const auto& m = parsed->model;
  const auto& root = m.values[m.root];
  ASSERT_EQ(root.kind, model::ValueKind::dict);
  ASSERT_EQ(root.entries.size(), 1u);
  const auto& arr = m.values[root.entries[0].second];
  ASSERT_EQ(arr.kind, model::ValueKind::ndarray);
  EXPECT_EQ(arr.array_shape, std::vector<int64_t>{3});
  const auto& t = m.tensors[arr.tensor];
  EXPECT_EQ(t.dtype, model::DType::i64);
  const auto& s = m.storages[t.storage];
  ASSERT_EQ(s.bytes.size(), 24u);
  EXPECT_EQ(s.bytes[0], 7);
  EXPECT_EQ(s.bytes[16], 9);
}

TEST(Joblib, TruncatedArrayIsAnError) {
  auto bytes = joblib_stream(5, true);
  auto parsed = formats::read_joblib(bytes, {});
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().rule, Rule::joblib_truncated);
}

TEST(Joblib, WithoutHookBytesAreOpcodes) {
  // read_bare_pickle has no hook: the array bytes are not consumed and the parse fails.
  auto bytes = joblib_stream(5);
  auto parsed = formats::read_bare_pickle(bytes, {});
  EXPECT_FALSE(parsed.ok());
}

TEST(Registry, AllowRejectsWildcardsAndJunk) {
  auto r = cdr::ClassRegistry::defaults();
  EXPECT_TRUE(r.find("sklearn.linear_model._base", "LinearRegression"));
  EXPECT_FALSE(r.find("os", "system"));
  EXPECT_FALSE(r.allow("os.*").ok());
  EXPECT_FALSE(r.allow("os").ok());
  EXPECT_FALSE(r.allow("a..b").ok());
  EXPECT_FALSE(r.allow("a.b c").ok());
  EXPECT_TRUE(r.allow("mypkg.models.Thing").ok());
  EXPECT_TRUE(r.find("mypkg.models", "Thing"));
}

TEST(Registry, NumpyCodes) {
  EXPECT_EQ(cdr::parse_numpy_code("f8")->itemsize, 8u);
  EXPECT_EQ(cdr::parse_numpy_code("U3")->itemsize, 12u);
  EXPECT_EQ(cdr::parse_numpy_code("V56")->itemsize, 56u);
  EXPECT_FALSE(cdr::parse_numpy_code("f3"));
  EXPECT_FALSE(cdr::parse_numpy_code("M8"));
}
