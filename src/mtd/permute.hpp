// Keyed element permutation for MTD (docs/MTD.md §3). Not a cipher: it scrambles where each
// weight sits so that the model computes garbage without the key, at memory speed.
//
// Scheme "mtd-blockperm-v1" over a storage of n elements (element size 1, 2, 4 or 8 bytes):
//   - split into nb = n / B full blocks of B = 4096 elements (16 KiB of float32: fits L1/L2) and
//     a tail of n % B elements;
//   - draw K = min(64, nb) random permutations T_0..T_{K-1} of [0, B) ("tables"), a random
//     permutation pi of the nb blocks, and per output block j a table t_j in [0, K) and a mask
//     m_j in [0, B) (B is a power of two, so i -> i XOR m_j is itself a permutation);
//   - output block j = input block pi(j) with element i taken from T_{t_j}[i XOR m_j];
//   - the tail gets its own random permutation (a plain Fisher-Yates).
// Every element can land anywhere in the tensor (across rows and channels); within a block the
// order is one of K*B keyed permutations. Cost: one gather pass through a table that sits in
// L2 (K*B*2 bytes = 512 KiB), i.e. memcpy-like, instead of n random accesses for a global
// Fisher-Yates. All randomness is a ChaCha20 keystream (libsodium crypto_stream_chacha20) under
// the per-tensor key; bounded integers are drawn without bias (Lemire's method with rejection).
//
// Strength, honestly: this is not confidentiality (docs/MTD.md §3). The values of a tensor are
// unchanged as a multiset, so any reference copy undoes it by sorting; and with one input block
// per output block and only 64 tables, blocks sharing a table and their XOR offsets can be
// recovered from the protected file alone. `protect --encrypt` (mtd/cipher.hpp) adds real
// encryption on top.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace modelcdr::mtd {

inline constexpr uint32_t kPermBlock = 4096;  // elements; must be a power of two <= 65536
inline constexpr uint32_t kPermTables = 64;
inline constexpr const char* kPermScheme = "mtd-blockperm-v1";

// Produces the output of P_key (or P_key^-1) piece by piece, in order, so that a storage can be
// streamed through a small buffer: produce(in, out, first, count) writes output elements
// [first, first + count) to `out` (count elements), reading anywhere in the whole input `in`.
// `first` must be a multiple of kPermBlock and so must `count` unless the range ends at n.
// Every output block reads exactly one input block (and the tail only the input tail), so
// `load`, when given, may transform input on its way in: load(src, dst, nbytes, offset) copies
// nbytes of input at byte `offset` of the record to dst (restore of an encrypted record
// decrypts there; the keystream position is the input's).
class Permuter {
 public:
  using SourceLoad = std::function<void(const uint8_t* src, uint8_t* dst, size_t nbytes, size_t offset)>;
  Permuter(const uint8_t key[32], size_t n, size_t elem_size, bool inverse);
  void produce(const uint8_t* in, uint8_t* out, size_t first, size_t count, const SourceLoad* load = nullptr) const;
  // The input block that output block b reads (b < blocks(); the tail reads the input tail).
  size_t source_block(size_t b) const;
  size_t blocks() const { return p_.blocks; }
  // As produce, from `staged`: the source block of each output block of the range, one after
  // another in output order, then the input tail when the range ends at n (restore copies them
  // into a private buffer, hashes that copy and restores from it).
  void produce_staged(const uint8_t* staged, uint8_t* out, size_t first, size_t count) const;

  struct Plan {
    bool inverse = false;
    size_t n = 0, elem_size = 0, blocks = 0;
    std::vector<uint16_t> tables;  // K tables of kPermBlock entries (inverted when `inverse`)
    std::vector<uint32_t> pi, pi_inv;
    std::vector<uint16_t> pick, mask;
    std::vector<uint32_t> tail;  // output tail element i <- input tail element tail[i]
  };

 private:
  void produce_from(const uint8_t* in, uint8_t* out, size_t first, size_t count, const SourceLoad* load,
                    const uint8_t* staged) const;
  Plan p_;
};

// out = P_key(in) (forward) or P_key^-1(in) (inverse); in and out do not overlap; both hold
// n * elem_size bytes; elem_size is 1, 2, 4 or 8.
void permute(const uint8_t* in, uint8_t* out, size_t n, size_t elem_size, const uint8_t key[32], bool inverse);

}  // namespace modelcdr::mtd
