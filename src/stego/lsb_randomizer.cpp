#include "stego/lsb_randomizer.hpp"

#include <sodium.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <set>
#include <sstream>
#include <stdexcept>

static_assert(std::endian::native == std::endian::little, "tensor payloads are little-endian");

namespace modelcdr::stego {

using model::DType;

int mantissa_bits(DType d) {
  switch (d) {
    case DType::f64:
    case DType::c128: return 52;
    case DType::f32:
    case DType::c64: return 23;
    case DType::f16:
    case DType::c32: return 10;
    case DType::bf16: return 7;
    default: return 0;
  }
}

uint32_t float_component_size(DType d) {
  switch (d) {
    case DType::f64:
    case DType::c128: return 8;
    case DType::f32:
    case DType::c64: return 4;
    case DType::f16:
    case DType::c32:
    case DType::bf16: return 2;
    default: return 0;
  }
}

namespace {

std::optional<int> parse_int(const std::string& s) {
  if (s.empty() || s.size() > 3) return std::nullopt;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

int LsbPolicy::bits_for(DType d) const {
  int n = 0;
  switch (d) {
    case DType::f64:
    case DType::c128: n = f64; break;
    case DType::f32:
    case DType::c64: n = f32; break;
    case DType::f16:
    case DType::c32: n = f16; break;
    case DType::bf16: n = bf16; break;
    default: return 0;
  }
  return std::clamp(n, 0, mantissa_bits(d));
}

std::string LsbPolicy::describe() const {
  return "float64=" + std::to_string(bits_for(DType::f64)) + ",float32=" + std::to_string(bits_for(DType::f32)) +
         ",float16=" + std::to_string(bits_for(DType::f16)) + ",bfloat16=" + std::to_string(bits_for(DType::bf16));
}

Result<LsbPolicy> parse_lsb_policy(const std::string& spec) {
  LsbPolicy p;
  if (spec.empty() || spec == "default") return p;
  if (auto n = parse_int(spec)) {
    // One N applies to every float type, so it must fit the smallest mantissa (bfloat16's 7
    // bits): a larger N would silently randomize whole mantissas of the narrower types.
    if (*n > 7)
      return make_error(Rule::cli_randomize_lsb, "--randomize-lsb: N applies to every float type and must be 0..7 "
                                             "(bfloat16 has 7 mantissa bits), got " + spec +
                                             "; give per-type limits instead, e.g. float32=16,float16=8");
    p.f64 = p.f32 = p.f16 = p.bf16 = *n;
    return p;
  }
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    auto eq = item.find('=');
    if (eq == std::string::npos)
      return make_error(Rule::cli_randomize_lsb, "--randomize-lsb: expected 'default', N or TYPE=N[,TYPE=N...], got '" + spec + "'");
    std::string key = item.substr(0, eq);
    auto n = parse_int(item.substr(eq + 1));
    int* slot = nullptr;
    int maxbits = 0;
    if (key == "float64" || key == "f64" || key == "double") slot = &p.f64, maxbits = 52;
    else if (key == "float32" || key == "f32" || key == "float") slot = &p.f32, maxbits = 23;
    else if (key == "float16" || key == "f16" || key == "half") slot = &p.f16, maxbits = 10;
    else if (key == "bfloat16" || key == "bf16") slot = &p.bf16, maxbits = 7;
    if (!slot) return make_error(Rule::cli_randomize_lsb, "--randomize-lsb: unknown float type '" + key + "'");
    if (!n || *n > maxbits)
      return make_error(Rule::cli_randomize_lsb, "--randomize-lsb: " + key + " takes 0.." + std::to_string(maxbits) + " bits");
    *slot = *n;
  }
  return p;
}

// ---- PRNG ------------------------------------------------------------------------------------

LaneRng::LaneRng() {
  if (sodium_init() < 0) throw std::runtime_error("libsodium initialisation failed");
  uint64_t w[4 * kLanes];
  do {
    randombytes_buf(w, sizeof w);
  } while (std::all_of(std::begin(w), std::end(w), [](uint64_t x) { return x == 0; }));
  seed_words(w);
  sodium_memzero(w, sizeof w);
}

LaneRng::LaneRng(uint64_t test_seed) {
  uint64_t w[4 * kLanes];
  uint64_t z = test_seed;
  for (auto& x : w) {  // SplitMix64 expansion
    z += 0x9e3779b97f4a7c15ull;
    uint64_t t = z;
    t = (t ^ (t >> 30)) * 0xbf58476d1ce4e5b9ull;
    t = (t ^ (t >> 27)) * 0x94d049bb133111ebull;
    x = t ^ (t >> 31);
  }
  seed_words(w);
}

void LaneRng::seed_words(const uint64_t* w) {
  for (int l = 0; l < kLanes; ++l) {
    s0_[l] = w[l];
    s1_[l] = w[kLanes + l];
    s2_[l] = w[2 * kLanes + l];
    s3_[l] = w[3 * kLanes + l];
    if ((s0_[l] | s1_[l] | s2_[l] | s3_[l]) == 0) s0_[l] = 1;  // xoshiro's only forbidden state
  }
}

// GCC/Clang vector extensions: two 64-bit lanes per SSE2 register on baseline x86-64 (wider with
// -march flags), four registers per state word, i.e. the 8 lanes of the state.
typedef uint64_t v2u64 __attribute__((vector_size(16)));

void LaneRng::fill(uint64_t* out, size_t n) { fill_bytes(reinterpret_cast<uint8_t*>(out), n); }

void LaneRng::fill_bytes(uint8_t* __restrict out, size_t n) {
  constexpr int G = kLanes / 2;
  v2u64 a[G], b[G], c[G], d[G];
  std::memcpy(a, s0_, sizeof a);
  std::memcpy(b, s1_, sizeof b);
  std::memcpy(c, s2_, sizeof c);
  std::memcpy(d, s3_, sizeof d);
  for (size_t i = 0; i + kLanes <= n; i += kLanes) {
    v2u64 r[G];
    for (int g = 0; g < G; ++g) {  // xoshiro256**: rotl(s1 * 5, 7) * 9, multiplications as shifts
      v2u64 x = b[g] + (b[g] << 2);
      x = (x << 7) | (x >> 57);
      r[g] = x + (x << 3);
      v2u64 t = b[g] << 17;
      c[g] ^= a[g];
      d[g] ^= b[g];
      b[g] ^= c[g];
      a[g] ^= d[g];
      c[g] ^= t;
      d[g] = (d[g] << 45) | (d[g] >> 19);
    }
    std::memcpy(out + i * 8, r, sizeof r);
  }
  std::memcpy(s0_, a, sizeof a);
  std::memcpy(s1_, b, sizeof b);
  std::memcpy(s2_, c, sizeof c);
  std::memcpy(s3_, d, sizeof d);
}

// ---- kernels -----------------------------------------------------------------------------------

namespace {

template <class U, int kMant>
struct Ieee {
  static constexpr int kBits = sizeof(U) * 8;
  static constexpr U kSign = U(U(1) << (kBits - 1));
  static constexpr U kMantMask = U((U(1) << kMant) - 1);
  static constexpr U kExpMask = U(~kSign & ~kMantMask);
  static constexpr U kQuiet = U(U(1) << (kMant - 1));
};

constexpr size_t kBlockBytes = 4096;

// One block of at most kBlockBytes / sizeof(U) elements, in L1. Branch-free and in one integer
// width (masks instead of bools, per-block counters of type U) so that GCC vectorises it.
template <class U, int kMant, class R>
inline void kernel(const uint8_t* __restrict in, uint8_t* __restrict out, const R* __restrict r, size_t n, U mask,
                   LsbCounters& c) {
  using F = Ieee<U, kMant>;
  U zeros = 0, infs = 0, nans = 0, subs = 0;  // n <= 2048 fits every U
  const U keep_mask = U(~mask);
  for (size_t i = 0; i < n; ++i) {
    U x;
    std::memcpy(&x, in + i * sizeof(U), sizeof(U));
    U mag = U(x & U(~F::kSign));
    U e = U(x & F::kExpMask);
    U special = U(-U(e == F::kExpMask));
    U nan = U(-U(mag > F::kExpMask));
    U zero = U(-U(mag == 0));
    U sub = U(U(-U(e == 0)) & U(~zero));
    U randomized = U((x & keep_mask) | (U(r[i]) & mask));
    U canon = U((x & F::kSign) | F::kExpMask | F::kQuiet);
    U kept = U((x & U(~nan)) | (canon & nan));
    U keep = U(special | zero);
    U y = U((kept & keep) | (randomized & U(~keep)));
    std::memcpy(out + i * sizeof(U), &y, sizeof(U));
    zeros = U(zeros + (zero & 1));
    nans = U(nans + (nan & 1));
    infs = U(infs + (special & U(~nan) & 1));
    subs = U(subs + (sub & 1));
  }
  c.zeros += zeros;
  c.nans += nans;
  c.infs += infs;
  c.subnormals += subs;
  c.randomized += n - zeros - nans - infs;
  c.elements += n;
}

// R: the narrowest random word that covers `bits` (fewer random bytes to generate per element).
template <class U, int kMant, class R>
void randomize_typed(const uint8_t* in, uint8_t* out, size_t n_elems, int bits, LaneRng& rng, LsbCounters& c) {
  constexpr size_t kPer = kBlockBytes / sizeof(U);
  alignas(64) uint8_t work[kBlockBytes];  // only for in-place calls (in == out)
  alignas(64) R rnd[kPer];
  static_assert(sizeof rnd % (8 * LaneRng::kLanes) == 0);
  const U mask = U((U(1) << bits) - 1);
  for (size_t done = 0; done < n_elems;) {
    size_t n = std::min(kPer, n_elems - done);
    size_t words = (n * sizeof(R) + 7) / 8;
    words = (words + LaneRng::kLanes - 1) / LaneRng::kLanes * LaneRng::kLanes;
    rng.fill_bytes(reinterpret_cast<uint8_t*>(rnd), words);
    const uint8_t* src = in + done * sizeof(U);
    if (in == out) {
      std::memcpy(work, src, n * sizeof(U));
      src = work;
    }
    kernel<U, kMant, R>(src, out + done * sizeof(U), rnd, n, mask, c);
    done += n;
  }
}

template <class U, int kMant>
void randomize_dispatch(const uint8_t* in, uint8_t* out, size_t n_elems, int bits, LaneRng& rng, LsbCounters& c) {
  if (bits <= 16 || sizeof(U) == 2) randomize_typed<U, kMant, uint16_t>(in, out, n_elems, bits, rng, c);
  else if (bits <= 32 || sizeof(U) == 4) randomize_typed<U, kMant, uint32_t>(in, out, n_elems, bits, rng, c);
  else randomize_typed<U, kMant, uint64_t>(in, out, n_elems, bits, rng, c);
}

}  // namespace

void randomize_copy(const uint8_t* in, uint8_t* out, size_t n_elems, uint32_t elem_size, int mant, int bits,
                    LaneRng& rng, LsbCounters& counters) {
  if (bits <= 0) {
    if (in != out) std::memmove(out, in, n_elems * elem_size);
    return;
  }
  bits = std::min(bits, mant);
  if (elem_size == 8 && mant == 52) randomize_dispatch<uint64_t, 52>(in, out, n_elems, bits, rng, counters);
  else if (elem_size == 4 && mant == 23) randomize_dispatch<uint32_t, 23>(in, out, n_elems, bits, rng, counters);
  else if (elem_size == 2 && mant == 10) randomize_dispatch<uint16_t, 10>(in, out, n_elems, bits, rng, counters);
  else if (elem_size == 2 && mant == 7) randomize_dispatch<uint16_t, 7>(in, out, n_elems, bits, rng, counters);
  else if (in != out) std::memmove(out, in, n_elems * elem_size);
}

// ---- model -------------------------------------------------------------------------------------

std::string LsbReport::summary() const {
  std::ostringstream s;
  if (storages == 0) {
    s << "nothing randomized (no float storages, or N=0 for their types)";
    return s.str();
  }
  s << "randomized the low mantissa bits of " << tensors << " tensors (" << storages << " float storages, "
    << total.randomized << " elements, " << bits_rewritten << " bits rewritten):";
  bool first = true;
  for (const auto& [name, st] : by_dtype) {
    s << (first ? " " : "; ") << name << " N=" << st.bits << " (" << st.tensors << " tensors, "
      << st.counters.randomized << " elements)";
    first = false;
  }
  s << "; kept " << total.zeros << " zeros and " << total.infs << " infinities, canonicalized " << total.nans
    << " NaNs, " << total.subnormals << " subnormals randomized";
  if (skipped_storages) s << "; " << skipped_storages << " non-float storages untouched";
  return s.str();
}

LsbReport randomize_model(model::Model& m, const LsbPolicy& policy, LaneRng* rng_in) {
  std::optional<LaneRng> own;
  if (!rng_in) own.emplace();
  LaneRng& rng = rng_in ? *rng_in : *own;
  LsbReport rep;
  std::vector<char> done(m.storages.size(), 0);
  for (size_t sid = 0; sid < m.storages.size(); ++sid) {
    auto& st = m.storages[sid];
    int bits = policy.bits_for(st.dtype);
    uint32_t esz = float_component_size(st.dtype);
    if (bits <= 0 || esz == 0) {
      ++rep.skipped_storages;
      continue;
    }
    size_t n = st.bytes.size() / esz;
    std::vector<uint8_t> out(st.bytes.size());
    LsbCounters c;
    randomize_copy(st.bytes.data(), out.data(), n, esz, mantissa_bits(st.dtype), bits, rng, c);
    if (n * esz < st.bytes.size())  // a torn trailing element is copied as is
      std::memcpy(out.data() + n * esz, st.bytes.data() + n * esz, st.bytes.size() - n * esz);
    st.set_owned(std::move(out));
    done[sid] = 1;
    auto& d = rep.by_dtype[model::dtype_info(st.dtype).name];
    d.bits = bits;
    d.storages++;
    d.counters.add(c);
    rep.total.add(c);
    rep.storages++;
    rep.bits_rewritten += c.randomized * uint64_t(bits);
  }
  for (const auto& t : m.tensors) {
    if (model::is_sparse(t.kind) || t.storage >= m.storages.size() || !done[t.storage]) continue;
    rep.tensors++;
    rep.by_dtype[model::dtype_info(m.storages[t.storage].dtype).name].tensors++;
  }
  return rep;
}

namespace {
// LSB randomisation as a transform: an IR stage only (it replaces float payloads).
class LsbTransform final : public Transform {
 public:
  explicit LsbTransform(LsbPolicy policy) : policy_(policy) {}
  const char* name() const override { return "lsb-randomize"; }
  bool has_model_stage() const override { return true; }
  Status apply(model::Model& m, FileReport& r) override {
    LsbReport rep = randomize_model(m, policy_);
    add_finding(r.findings, Severity::info, Rule::stego_lsb_randomized, rep.summary() + " [policy " + policy_.describe() + "]");
    return ok_status();
  }

 private:
  LsbPolicy policy_;
};
}  // namespace

std::shared_ptr<Transform> make_lsb_transform(LsbPolicy policy) { return std::make_shared<LsbTransform>(policy); }

}  // namespace modelcdr::stego
