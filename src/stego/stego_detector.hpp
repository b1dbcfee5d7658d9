// `scan --stego`: a per-tensor statistical test on the low mantissa bits of float tensors, looking
// for data hidden EvilModel-style without knowing the payload.
//
// What clean weights look like: in trained or randomly initialised float weights the lowest
// mantissa bits are rounding noise, i.e. close to independent fair coins, except for weights that
// came from a lower precision (bf16/fp16 upcast to fp32), whose lowest bits are all zero.
//
// Two tests per float storage, over its non-zero finite elements:
//  1. "stuck band": a mantissa bit plane that is (almost) constant lying *above* planes that vary.
//     Weights from a lower precision have all-zero low planes; data written into the lowest k
//     bits of such weights leaves a varying band below a zero band. Rounding never produces it.
//  2. "pair dependence": the low k' bits (k' in 1, 2, 4) of elements 2i and 2i+1 must be independent
//     (Pearson chi-square of the 2^k' x 2^k' table, any marginals: a fresh torch.normal_(0, s)
//     init leaves the lowest 2-3 planes biased, so these planes are not tested against uniform).
//     A payload read EvilModel-style is a byte stream spread over consecutive elements, and text,
//     code or tables make neighbouring chunks dependent.
//  3. "field-chi2" / "monobit": planes t+6 .. t+B-1 (t = constant low planes, B = min(16,
//     mantissa - 8 - t)) against fair coins (a histogram of up to 8 of those bits per element, and a
//     per-plane count); the lowest 6 planes, which fresh inits bias, per window against the
//     tensor's own frequencies. Payload bits above the lowest planes (k >= 7) and partial fills
//     are seen here.
//  Every test runs in windows from the start of the tensor (2048 / 32768 elements or pairs, 16384
//  for monobit), so a payload filling 1% of a tensor still stands out.
// The suspicion score is -log10 of the Bonferroni-corrected p-value of the most extreme test
// (so clean tensors score about 0 and a score of 6 means 1-in-a-million under the null); a
// finding is raised at score >= threshold.
//
// Limits (stated in the README): encrypted or compressed payloads written into bits that are
// already noise are statistically indistinguishable from clean weights and cannot be detected by
// this or any bit statistic; that is what `disarm --randomize-lsb` is for.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "modelcdr/api.hpp"
#include "modelcdr/model.hpp"
#include "modelcdr/stego.hpp"

namespace modelcdr::stego {

// StegoOptions and make_stego_inspector are public: include/modelcdr/stego.hpp.

struct StegoScore {
  bool tested = false;
  double score = 0.0;        // -log10(Bonferroni p), >= 0
  std::string test;          // "stuck-band", "byte-chi2 k'=8 ...", "monobit ..."
  std::string detail;        // human text about the most extreme test
  uint64_t usable = 0;       // non-zero finite elements
  int constant_low_planes = 0;
  uint64_t tests = 0;
};

// Scores one buffer of little-endian IEEE elements of storage dtype `dtype` (float dtypes only).
StegoScore score_elements(const uint8_t* data, size_t n_elems, model::DType dtype, const StegoOptions& options);

struct TensorStegoScore {
  std::string name;            // state-dict name, or the storage's source
  model::StorageId storage = 0;
  std::string dtype;
  uint64_t elements = 0;
  StegoScore score;
};

// One entry per float storage (named after the first tensor that views it).
std::vector<TensorStegoScore> score_model(const model::Model& m, const StegoOptions& options);


}  // namespace modelcdr::stego
