#include "mtd/permute.hpp"

#include <immintrin.h>
#include <sodium.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace modelcdr::mtd {

namespace {

// Random words from the ChaCha20 keystream of `key` (nonce 0), generated 4 KiB at a time.
class KeyStream {
 public:
  explicit KeyStream(const uint8_t key[32]) { std::memcpy(key_, key, 32); }
  ~KeyStream() { sodium_memzero(key_, sizeof key_); }

  uint32_t next32() {
    if (pos_ == kWords) refill();
    return buf_[pos_++];
  }
  // Uniform in [0, bound), bound >= 1, without bias (Lemire 2019).
  uint32_t below(uint32_t bound) {
    uint64_t m = uint64_t(next32()) * bound;
    uint32_t low = static_cast<uint32_t>(m);
    if (low < bound) {
      uint32_t threshold = static_cast<uint32_t>(-bound) % bound;
      while (low < threshold) {
        m = uint64_t(next32()) * bound;
        low = static_cast<uint32_t>(m);
      }
    }
    return static_cast<uint32_t>(m >> 32);
  }

 private:
  static constexpr size_t kWords = 1024;
  void refill() {
    static const uint8_t nonce[crypto_stream_chacha20_NONCEBYTES] = {0};
    std::memset(buf_, 0, sizeof buf_);
    auto* p = reinterpret_cast<unsigned char*>(buf_);
    crypto_stream_chacha20_xor_ic(p, p, sizeof buf_, nonce, block_, key_);
    block_ += sizeof buf_ / 64;
    pos_ = 0;
  }
  uint8_t key_[32];
  uint32_t buf_[kWords];
  size_t pos_ = kWords;
  uint64_t block_ = 0;
};

template <class Index>
void fisher_yates(Index* p, uint32_t n, KeyStream& ks) {
  for (uint32_t i = 0; i < n; ++i) p[i] = static_cast<Index>(i);
  for (uint32_t i = n; i > 1; --i) {
    uint32_t j = ks.below(i);
    std::swap(p[i - 1], p[j]);
  }
}

// Element access through memcpy: storages of legacy-format inputs need not be aligned.
template <class E>
struct Elems {
  const uint8_t* p;
  E operator[](size_t i) const {
    E v;
    std::memcpy(&v, p + i * sizeof(E), sizeof(E));
    return v;
  }
  Elems operator+(size_t i) const { return {p + i * sizeof(E)}; }
};
template <class E>
struct OutElems {
  uint8_t* p;
  struct Ref {
    uint8_t* q;
    void operator=(E v) { std::memcpy(q, &v, sizeof(E)); }
  };
  Ref operator[](size_t i) const { return {p + i * sizeof(E)}; }
  OutElems operator+(size_t i) const { return {p + i * sizeof(E)}; }
};

// One block of 4-byte elements through AVX2 gathers (8 elements an instruction), where the CPU
// has them: the scalar loop ran at about 5 cycles an element (perf, protect of 1 GiB float32).
//   forward: dst[i] = src[t[i ^ m]]; inverse: dst[q] = src[t[q] ^ m].
// For forward, the 8 indices of an aligned group i = 8g..8g+7 are t[(8g ^ (m & ~7)) + (j ^ (m & 7))],
// a fixed lane shuffle of 8 consecutive table entries.
__attribute__((target("avx2"))) void gather_block4_avx2(const uint32_t* src, uint8_t* dst, const uint16_t* t, uint32_t m,
                                                        bool inverse) {
  constexpr uint32_t B = kPermBlock;
  if (!inverse) {
    const uint32_t s = m & 7, hi = m & ~7u;
    const __m256i lanes = _mm256_xor_si256(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(int(s)));
    for (uint32_t g = 0; g < B; g += 8) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + (g ^ hi)));
      const __m256i idx = _mm256_permutevar8x32_epi32(_mm256_cvtepu16_epi32(raw), lanes);
      const __m256i v = _mm256_i32gather_epi32(reinterpret_cast<const int*>(src), idx, 4);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + size_t(g) * 4), v);
    }
  } else {
    const __m256i mm = _mm256_set1_epi32(int(m));
    for (uint32_t q = 0; q < B; q += 8) {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + q));
      const __m256i idx = _mm256_xor_si256(_mm256_cvtepu16_epi32(raw), mm);
      const __m256i v = _mm256_i32gather_epi32(reinterpret_cast<const int*>(src), idx, 4);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + size_t(q) * 4), v);
    }
  }
}

bool have_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}

template <class E>
void gather_blocks(const Permuter::Plan& p, const uint8_t* in_bytes, uint8_t* out_bytes, size_t first_block,
                   size_t blocks, const Permuter::SourceLoad* load, const uint8_t* staged) {
  constexpr uint32_t B = kPermBlock;
  // The source block is first copied in order (the prefetcher streams it) and then gathered
  // from L1: gathering straight from the mapped input missed the cache on most first touches
  // (0.63 s per GiB of float32 against about 0.25 s this way, measured with perf on protect).
  // A staged block (restore) is already a private copy that was just read, so it is gathered
  // from where it lies rather than copied once more (0.03 s per GiB).
  E local[B];
  const uint8_t* from = nullptr;  // the source block being gathered: `local` or the staged copy
  auto fetch = [&](size_t src_block) {
    const size_t at = src_block * B * sizeof(E);
    from = reinterpret_cast<const uint8_t*>(local);
    if (staged) from = staged, staged += sizeof local;  // in output order
    else if (load) (*load)(in_bytes + at, reinterpret_cast<uint8_t*>(local), sizeof local, at);
    else std::memcpy(local, in_bytes + at, sizeof local);
  };
  for (size_t b = first_block; b < first_block + blocks; ++b) {
    uint8_t* dst = out_bytes + (b - first_block) * B * sizeof(E);
    if (!p.inverse) {  // protected block b = original block pi(b) through table T_pick(b), mask m_b
      fetch(p.pi[b]);
      const uint16_t* t = p.tables.data() + size_t(p.pick[b]) * B;
      const uint32_t m = p.mask[b];
      if constexpr (sizeof(E) == 4) {
        if (have_avx2()) {
          gather_block4_avx2(reinterpret_cast<const uint32_t*>(from), dst, t, m, false);
          continue;
        }
      }
      for (uint32_t i = 0; i < B; ++i) std::memcpy(dst + i * sizeof(E), from + size_t(t[i ^ m]) * sizeof(E), sizeof(E));
    } else {  // original block b sat in protected block j = pi^-1(b): gather through T^-1
      const uint32_t j = p.pi_inv[b];
      fetch(j);
      const uint16_t* t = p.tables.data() + size_t(p.pick[j]) * B;  // inverted tables
      const uint32_t m = p.mask[j];
      if constexpr (sizeof(E) == 4) {
        if (have_avx2()) {
          gather_block4_avx2(reinterpret_cast<const uint32_t*>(from), dst, t, m, true);
          continue;
        }
      }
      for (uint32_t q = 0; q < B; ++q) std::memcpy(dst + q * sizeof(E), from + size_t(t[q] ^ m) * sizeof(E), sizeof(E));
    }
  }
}

template <class E>
void gather_tail(const Permuter::Plan& p, const uint8_t* in_bytes, uint8_t* out_bytes, const Permuter::SourceLoad* load,
                 const uint8_t* staged_tail) {
  const size_t base = p.blocks * kPermBlock;
  std::vector<uint8_t> loaded;  // the tail is under one block: at most 32 KiB
  const uint8_t* tail_in = staged_tail ? staged_tail : in_bytes + base * sizeof(E);
  if (load && !staged_tail) {
    loaded.resize(p.tail.size() * sizeof(E));
    (*load)(tail_in, loaded.data(), loaded.size(), base * sizeof(E));
    tail_in = loaded.data();
  }
  const Elems<E> src{tail_in};
  const OutElems<E> dst{out_bytes};
  for (uint32_t i = 0; i < p.tail.size(); ++i) dst[i] = src[p.tail[i]];
}

}  // namespace

Permuter::Permuter(const uint8_t key[32], size_t n, size_t elem_size, bool inverse) {
  KeyStream ks(key);
  constexpr uint32_t B = kPermBlock;
  p_.inverse = inverse;
  p_.n = n;
  p_.elem_size = elem_size;
  p_.blocks = n / B;
  const uint32_t tail = static_cast<uint32_t>(n % B);
  if (p_.blocks > 0xFFFFFFFFull) __builtin_trap();  // > 2^44 elements: not a tensor anyone has
  const size_t nb = p_.blocks;
  const uint32_t K = static_cast<uint32_t>(std::min<size_t>(kPermTables, nb));
  // The keystream is consumed in this order: tables, pi, (pick, mask) per block, tail.
  p_.tables.resize(size_t(K) * B);
  for (uint32_t k = 0; k < K; ++k) fisher_yates(p_.tables.data() + size_t(k) * B, B, ks);
  p_.pi.resize(nb);
  fisher_yates(p_.pi.data(), static_cast<uint32_t>(nb), ks);
  p_.pick.resize(nb);
  p_.mask.resize(nb);
  for (size_t j = 0; j < nb; ++j) {
    p_.pick[j] = static_cast<uint16_t>(ks.below(K));
    p_.mask[j] = static_cast<uint16_t>(ks.below(B));
  }
  std::vector<uint32_t> tail_perm(tail);
  fisher_yates(tail_perm.data(), tail, ks);
  if (!inverse) {
    p_.tail = std::move(tail_perm);
    return;
  }
  // Inverse as a gather too, so that the original can be produced in order, block by block.
  std::vector<uint16_t> inv(p_.tables.size());
  for (uint32_t k = 0; k < K; ++k)
    for (uint32_t i = 0; i < B; ++i) inv[size_t(k) * B + p_.tables[size_t(k) * B + i]] = static_cast<uint16_t>(i);
  p_.tables = std::move(inv);
  p_.pi_inv.resize(nb);
  for (size_t j = 0; j < nb; ++j) p_.pi_inv[p_.pi[j]] = static_cast<uint32_t>(j);
  p_.tail.resize(tail);
  for (uint32_t i = 0; i < tail; ++i) p_.tail[tail_perm[i]] = i;
}

size_t Permuter::source_block(size_t b) const { return p_.inverse ? p_.pi_inv[b] : p_.pi[b]; }

void Permuter::produce_staged(const uint8_t* staged, uint8_t* out, size_t first, size_t count) const {
  produce_from(nullptr, out, first, count, nullptr, staged);
}

void Permuter::produce(const uint8_t* in, uint8_t* out, size_t first, size_t count, const SourceLoad* load) const {
  produce_from(in, out, first, count, load, nullptr);
}

void Permuter::produce_from(const uint8_t* in, uint8_t* out, size_t first, size_t count, const SourceLoad* load,
                            const uint8_t* staged) const {
  constexpr uint32_t B = kPermBlock;
  const size_t body = p_.blocks * B;
  const size_t end = first + count;
  if (first % B != 0 || end > p_.n || (end < body && end % B != 0) || (first > body)) __builtin_trap();  // caller bug
  const size_t body_end = std::min(end, body);
  if (body_end > first) {
    switch (p_.elem_size) {
      case 1: gather_blocks<uint8_t>(p_, in, out, first / B, (body_end - first) / B, load, staged); break;
      case 2: gather_blocks<uint16_t>(p_, in, out, first / B, (body_end - first) / B, load, staged); break;
      case 4: gather_blocks<uint32_t>(p_, in, out, first / B, (body_end - first) / B, load, staged); break;
      case 8: gather_blocks<uint64_t>(p_, in, out, first / B, (body_end - first) / B, load, staged); break;
      default: __builtin_trap();
    }
  }
  if (end == p_.n && p_.n > body) {
    uint8_t* tail_out = out + (body - first) * p_.elem_size;
    const uint8_t* staged_tail = staged ? staged + (body - first) * p_.elem_size : nullptr;
    switch (p_.elem_size) {
      case 1: gather_tail<uint8_t>(p_, in, tail_out, load, staged_tail); break;
      case 2: gather_tail<uint16_t>(p_, in, tail_out, load, staged_tail); break;
      case 4: gather_tail<uint32_t>(p_, in, tail_out, load, staged_tail); break;
      case 8: gather_tail<uint64_t>(p_, in, tail_out, load, staged_tail); break;
      default: __builtin_trap();
    }
  }
}

void permute(const uint8_t* in, uint8_t* out, size_t n, size_t elem_size, const uint8_t key[32], bool inverse) {
  if (elem_size != 1 && elem_size != 2 && elem_size != 4 && elem_size != 8) {
    std::memcpy(out, in, n * elem_size);  // not reached: callers pass float sizes
    return;
  }
  Permuter(key, n, elem_size, inverse).produce(in, out, 0, n);
}

}  // namespace modelcdr::mtd
