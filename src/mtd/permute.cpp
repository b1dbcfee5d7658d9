#include "mtd/permute.hpp"

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

template <class E>
void run(const uint8_t* in_bytes, uint8_t* out_bytes, size_t n, KeyStream& ks, bool inverse) {
  const Elems<E> in{in_bytes};
  const OutElems<E> out{out_bytes};
  constexpr uint32_t B = kPermBlock;
  const size_t nb = n / B;
  const uint32_t tail = static_cast<uint32_t>(n % B);
  if (nb > 0xFFFFFFFFull) __builtin_trap();  // > 2^44 elements: not a tensor anyone has
  const uint32_t K = static_cast<uint32_t>(std::min<size_t>(kPermTables, nb));

  std::vector<uint16_t> tables(size_t(K) * B);
  for (uint32_t k = 0; k < K; ++k) fisher_yates(tables.data() + size_t(k) * B, B, ks);
  std::vector<uint32_t> pi(nb);
  fisher_yates(pi.data(), static_cast<uint32_t>(nb), ks);
  std::vector<uint16_t> pick(nb), mask(nb);
  for (size_t j = 0; j < nb; ++j) {
    pick[j] = static_cast<uint16_t>(ks.below(K));
    mask[j] = static_cast<uint16_t>(ks.below(B));
  }
  std::vector<uint32_t> tail_perm(tail);
  fisher_yates(tail_perm.data(), tail, ks);

  if (inverse) {  // gather through inverted tables: orig[pi(j)*B + q] = prot[j*B + (Tinv[q] ^ m)]
    std::vector<uint16_t> inv(tables.size());
    for (uint32_t k = 0; k < K; ++k)
      for (uint32_t i = 0; i < B; ++i) inv[size_t(k) * B + tables[size_t(k) * B + i]] = static_cast<uint16_t>(i);
    for (size_t j = 0; j < nb; ++j) {
      const uint16_t* t = inv.data() + size_t(pick[j]) * B;
      const Elems<E> src = in + j * B;
      const OutElems<E> dst = out + size_t(pi[j]) * B;
      const uint32_t m = mask[j];
      for (uint32_t q = 0; q < B; ++q) dst[q] = src[t[q] ^ m];
    }
    for (uint32_t i = 0; i < tail; ++i) out[nb * B + tail_perm[i]] = in[nb * B + i];
  } else {
    for (size_t j = 0; j < nb; ++j) {
      const uint16_t* t = tables.data() + size_t(pick[j]) * B;
      const Elems<E> src = in + size_t(pi[j]) * B;
      const OutElems<E> dst = out + j * B;
      const uint32_t m = mask[j];
      for (uint32_t i = 0; i < B; ++i) dst[i] = src[t[i ^ m]];
    }
    for (uint32_t i = 0; i < tail; ++i) out[nb * B + i] = in[nb * B + tail_perm[i]];
  }
}

}  // namespace

void permute(const uint8_t* in, uint8_t* out, size_t n, size_t elem_size, const uint8_t key[32], bool inverse) {
  KeyStream ks(key);
  switch (elem_size) {
    case 1: run<uint8_t>(in, out, n, ks, inverse); break;
    case 2: run<uint16_t>(in, out, n, ks, inverse); break;
    case 4: run<uint32_t>(in, out, n, ks, inverse); break;
    case 8: run<uint64_t>(in, out, n, ks, inverse); break;
    default: std::memcpy(out, in, n * elem_size); break;  // not reached: callers pass float sizes
  }
}

}  // namespace modelcdr::mtd
