// Weight-level CDR: overwrite the N least significant mantissa bits of every float element with
// fresh random bits, destroying anything hidden there (EvilModel-style payloads) while changing
// each weight by less than 2^N units in the last place.
//
// Special values (documented in README "Weight-level CDR"):
//   * ±Inf (exponent all ones, mantissa 0) are left untouched;
//   * NaN (exponent all ones, mantissa != 0) is replaced by the canonical quiet NaN of the same
//     sign: a NaN's mantissa is a 22/51-bit hiding place with no numeric meaning, and writing the
//     canonical NaN can never turn a NaN into an Inf (randomising its bits could);
//   * ±0 are left untouched (exact zeros are structural: pruning masks, zero biases, padding);
//   * subnormals have their low N bits randomised like normal numbers (they may become ±0; the
//     change is below 2^N times the smallest subnormal);
//   * normal numbers keep sign and exponent: only mantissa bits change, so a value never leaves
//     its binade and the relative change is below 2^(N - mantissa_bits).
// Non-float storages (ints, bool, quantized, float8) are never touched. Complex storages are
// treated as pairs of their real component type.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "modelcdr/api.hpp"
#include "modelcdr/model.hpp"
#include "modelcdr/stego.hpp"
#include "modelcdr/transform.hpp"

namespace modelcdr::stego {

// Mantissa width of the IEEE component type of `d` (52, 23, 10, 7), 0 when LSB randomisation
// does not apply to the dtype.
int mantissa_bits(model::DType d);
// Bytes of that IEEE component (8, 4, 2), 0 when mantissa_bits is 0.
uint32_t float_component_size(model::DType d);

// LsbPolicy, parse_lsb_policy and make_lsb_transform are public: include/modelcdr/stego.hpp.

// 256-bit-state xoshiro256** in 8 independent lanes (structure of arrays) so that the compiler
// vectorises it. Not cryptographic: its purpose is unpredictable filler, and its seed comes from
// the OS CSPRNG (libsodium randombytes_buf, i.e. getrandom(2)).
class LaneRng {
 public:
  static constexpr int kLanes = 8;
  LaneRng();                                  // seeded from the OS CSPRNG
  explicit LaneRng(uint64_t test_seed);       // deterministic, for tests and benchmarks only
  // Fills `n` words; n must be a multiple of kLanes.
  void fill(uint64_t* out, size_t n);
  // Same stream, written as bytes (8 per word, little-endian) to `out`.
  void fill_bytes(uint8_t* out, size_t n);

 private:
  void seed_words(const uint64_t* words);     // 4*kLanes words
  alignas(64) uint64_t s0_[kLanes], s1_[kLanes], s2_[kLanes], s3_[kLanes];
};

struct LsbCounters {
  uint64_t elements = 0;      // float elements seen
  uint64_t randomized = 0;    // elements whose low bits were replaced (normal + subnormal)
  uint64_t subnormals = 0;    // of which subnormal
  uint64_t zeros = 0;         // ±0 kept
  uint64_t infs = 0;          // ±Inf kept
  uint64_t nans = 0;          // NaN canonicalised
  void add(const LsbCounters& o) {
    elements += o.elements; randomized += o.randomized; subnormals += o.subnormals;
    zeros += o.zeros; infs += o.infs; nans += o.nans;
  }
};

// Copies `n_elems` elements of the IEEE type with `mant` mantissa bits and `elem_size` bytes
// (2, 4, 8) from `in` to `out`, replacing the low `bits` mantissa bits (0 <= bits <= mant) with
// random bits. `in` and `out` may be equal (or must not overlap otherwise); neither needs any
// alignment. Little-endian layout.
void randomize_copy(const uint8_t* in, uint8_t* out, size_t n_elems, uint32_t elem_size, int mant, int bits,
                    LaneRng& rng, LsbCounters& counters);

struct LsbDTypeStats {
  int bits = 0;
  uint64_t storages = 0, tensors = 0;
  LsbCounters counters;
};

struct LsbReport {
  std::map<std::string, LsbDTypeStats> by_dtype;  // "float32" -> ...
  uint64_t storages = 0, tensors = 0, skipped_storages = 0;
  LsbCounters total;
  uint64_t bits_rewritten = 0;                    // randomized elements x bits
  std::string summary() const;                    // one line for the report finding
};

// Randomises every float storage of `m` once (tensors sharing a storage are covered by it),
// replacing its payload with an owned buffer. `rng` defaults to a fresh CSPRNG-seeded one.
LsbReport randomize_model(model::Model& m, const LsbPolicy& policy, LaneRng* rng = nullptr);


}  // namespace modelcdr::stego
