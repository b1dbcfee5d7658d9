// Weight-level steganography options of the public API: the `scan --stego` test as a
// ScanOptions::inspect, and LSB randomisation (`disarm --randomize-lsb`) as a Transform
// (modelcdr/transform.hpp). The statistics and the kernels are in src/stego/.
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "modelcdr/api.hpp"
#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr {
class Transform;
}

namespace modelcdr::stego {

struct StegoOptions {
  double threshold = 6.0;        // score for a finding (medium)
  double high_threshold = 20.0;  // score for severity high
  uint64_t min_elements = 1024;  // smaller tensors are not tested (too little evidence)
};

// ScanOptions::inspect: adds "stego.lsb-suspicious" findings (medium, high above high_threshold)
// for tensors at or above the threshold, and one info finding "stego.summary".
std::function<void(const model::Model&, FileReport&)> make_stego_inspector(StegoOptions options = {});

// How many low mantissa bits to randomise per float type. The defaults were chosen from the
// measurements in README "Weight-level CDR" (accuracy sweep N = 1..23 on a digits CNN).
struct LsbPolicy {
  static constexpr int kDefaultF64 = 29;
  static constexpr int kDefaultF32 = 14;
  static constexpr int kDefaultF16 = 2;
  static constexpr int kDefaultBF16 = 1;
  int f64 = kDefaultF64, f32 = kDefaultF32, f16 = kDefaultF16, bf16 = kDefaultBF16;

  int bits_for(model::DType d) const;   // 0 for non-float dtypes
  std::string describe() const;         // "float64=29,float32=14,float16=2,bfloat16=1"
};

// Parses the value of --randomize-lsb: "default" (or empty), one integer N applied to every float
// type (clamped at each type's mantissa width), or a comma list "float32=12,float16=2,..." where
// missing types keep their defaults (aliases f64/f32/f16/bf16, double/float/half).
Result<LsbPolicy> parse_lsb_policy(const std::string& spec);

// A Transform whose IR stage randomises the low mantissa bits and appends an info finding
// "stego.lsb-randomized" with the counts to the report. Safe to share between threads.
std::shared_ptr<Transform> make_lsb_transform(LsbPolicy policy);

}  // namespace modelcdr::stego
