#include "stego/stego_detector.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "stego/lsb_randomizer.hpp"
#include "stego/tensor_names.hpp"

namespace modelcdr::stego {

using model::DType;

namespace {

// log10 of the upper tail P(X >= x) of a chi-square with `df` degrees of freedom
// (Wilson-Hilferty normal approximation, with the normal tail's asymptotic form far out).
double chi2_log10_sf(double x, double df) {
  if (x <= 0) return 0.0;
  double h = 2.0 / (9.0 * df);
  double z = (std::cbrt(x / df) - (1.0 - h)) / std::sqrt(h);
  if (z < 30.0) {
    double p = 0.5 * std::erfc(z / std::sqrt(2.0));
    return p > 0 ? std::log10(p) : -300.0;
  }
  return (-0.5 * z * z - std::log(z * std::sqrt(2.0 * M_PI))) / std::log(10.0);
}

struct Extreme {
  double log10p = 0.0;
  std::string test, detail;
  uint64_t tests = 0;
  void offer(double lp, const std::string& t, const std::string& d) {
    ++tests;
    lp = std::max(lp, -300.0);
    if (lp < log10p) {
      log10p = lp;
      test = t;
      detail = d;
    }
  }
};

std::string fmt_p(double log10p) {
  char buf[64];
  if (log10p < -300) std::snprintf(buf, sizeof buf, "p<1e-300");
  else std::snprintf(buf, sizeof buf, "p=%.1e", std::pow(10.0, log10p));
  return buf;
}

// Pearson chi-square test of independence between the low-k-bit chunks of element pairs
// (2i, 2i+1), in windows of `window` pairs. Under the null (elements i.i.d., whatever the
// distribution of their low bits: fresh torch.normal_ init leaves the lowest 2-3 planes biased)
// the two chunks are independent; payload bytes spread over consecutive elements are not.
struct PairTest {
  int k;
  uint64_t window;
  std::vector<uint64_t> cells = std::vector<uint64_t>(size_t(1) << (2 * k), 0);
  uint64_t pairs = 0, start = 0, elems = 0;
  uint32_t first = 0;
  bool have_first = false;
  void push(uint64_t v, Extreme& ex) {
    uint32_t c = uint32_t(v & ((1u << k) - 1));
    ++elems;
    if (!have_first) {
      first = c;
      have_first = true;
      return;
    }
    have_first = false;
    cells[(size_t(first) << k) | c]++;
    if (++pairs == window) close(ex);
  }
  void close(Extreme& ex) {
    if (pairs >= 1024) {
      const size_t m = size_t(1) << k;
      std::vector<double> row(m, 0), col(m, 0);
      for (size_t a = 0; a < m; ++a)
        for (size_t b = 0; b < m; ++b) row[a] += double(cells[a * m + b]), col[b] += double(cells[a * m + b]);
      double chi = 0;
      size_t nr = 0, nc = 0;
      for (size_t a = 0; a < m; ++a) nr += row[a] > 0, nc += col[a] > 0;
      for (size_t a = 0; a < m; ++a)
        for (size_t b = 0; b < m; ++b) {
          double e = row[a] * col[b] / double(pairs);
          if (e > 0) chi += (double(cells[a * m + b]) - e) * (double(cells[a * m + b]) - e) / e;
        }
      double df = double((nr > 1 ? nr - 1 : 0) * (nc > 1 ? nc - 1 : 0));
      if (df > 0) {
        char d[200];
        std::snprintf(d, sizeof d,
                      "dependence between the low %d bits of neighbouring elements: chi-square %.0f (%.0f dof) over "
                      "elements %llu..%llu",
                      k, chi, df, (unsigned long long)start, (unsigned long long)elems);
        ex.offer(chi2_log10_sf(chi, df), "pair-dependence", d);
      }
    }
    std::fill(cells.begin(), cells.end(), 0);
    pairs = 0;
    start = elems;
  }
};

// Histogram of a w-bit field (planes above the lowest few) against uniform, windows of `window`
// elements.
struct FieldTest {
  int w;
  uint64_t window;
  std::vector<uint64_t> hist = std::vector<uint64_t>(size_t(1) << w, 0);
  uint64_t n = 0, start = 0, elems = 0;
  int lo = 0;
  void push(uint64_t field, Extreme& ex) {
    hist[field]++;
    ++elems;
    if (++n == window) close(ex);
  }
  void close(Extreme& ex) {
    const double bins = double(hist.size());
    if (double(n) >= 5 * bins && n >= 1024) {
      double e = double(n) / bins, chi = 0;
      for (uint64_t c : hist) chi += (double(c) - e) * (double(c) - e) / e;
      char d[200];
      std::snprintf(d, sizeof d, "mantissa bits %d..%d not uniform: chi-square %.0f (%.0f dof) over elements %llu..%llu",
                    lo, lo + w - 1, chi, bins - 1, (unsigned long long)start, (unsigned long long)elems);
      ex.offer(chi2_log10_sf(chi, bins - 1), "field-chi2", d);
    }
    std::fill(hist.begin(), hist.end(), 0);
    n = 0;
    start = elems;
  }
};

template <class U>
StegoScore score_typed(const uint8_t* data, size_t n, int mant, const StegoOptions& o) {
  StegoScore s;
  constexpr int kBits = sizeof(U) * 8;
  const U sign = U(U(1) << (kBits - 1));
  const U mmask = U((U(1) << mant) - 1);
  const U emask = U(~sign & ~mmask);
  auto load = [&](size_t i) {
    U x;
    std::memcpy(&x, data + i * sizeof(U), sizeof(U));
    return x;
  };
  auto usable = [&](U x) { return (x & U(~sign)) != 0 && (x & emask) != emask; };
  // Pass 1: bit-plane frequencies.
  std::vector<uint64_t> ones(mant, 0);
  uint64_t u = 0;
  for (size_t i = 0; i < n; ++i) {
    U x = load(i);
    if (!usable(x)) continue;
    ++u;
    for (int j = 0; j < mant; ++j) ones[j] += (x >> j) & 1u;
  }
  s.usable = u;
  if (u < o.min_elements) return s;
  s.tested = true;
  auto stuck = [&](int j) {
    double f = double(ones[j]) / double(u);
    return f < 0.002 || f > 0.998;
  };
  const int top = std::max(0, mant - 3);  // the top planes follow the weight distribution
  int t = 0;
  while (t < top && stuck(t)) ++t;
  s.constant_low_planes = t;
  Extreme ex;
  // Test 1: a stuck plane above a varying one.
  for (int j = t + 1; j < top; ++j) {
    ex.tests++;
    if (!stuck(j)) continue;
    double f = double(ones[j]) / double(u);
    double minority = std::min(f, 1 - f) * double(u);
    // P(at most `minority` of u fair coins on one side), Chernoff bound, as log10.
    double q = minority / double(u);
    double kl = (q > 0 ? q * std::log(2 * q) : 0) + (1 - q) * std::log(2 * (1 - q));
    double lp = std::max(-300.0, -double(u) * kl / std::log(10.0));
    char d[200];
    std::snprintf(d, sizeof d, "mantissa bit %d is constant in %.2f%% of %llu elements while bits %d..%d below it vary", j,
                  100.0 * (1 - q), (unsigned long long)u, t, j - 1);
    ex.offer(lp, "stuck-band", d);
    ex.tests--;  // counted once above
    break;
  }
  // Test 2: pair dependence on the lowest planes (any marginal distribution).
  // Test 3/4: bit-plane histograms per window (see below).
  int B = std::min(16, mant - 8 - t);
  if (B >= 1) {
    std::vector<PairTest> pairs;
    for (int k : {1, 2, 4})
      if (k <= B) {
        pairs.push_back(PairTest{k, 2048});
        pairs.push_back(PairTest{k, 32768});
      }
    // Fresh inits (torch normal_(0, s) computes in float) bias the lowest ~5 planes; above those,
    // weights are fair coins. Planes t .. t+kLow-1 are tested per window against the tensor's own
    // frequencies (homogeneity), planes t+kLow .. t+B-1 against 1/2.
    constexpr int kLow = 6;
    const int lo = t + kLow;
    const int w = std::min(8, B - kLow);
    std::vector<FieldTest> fields;
    if (w >= 1) {
      fields.push_back(FieldTest{w, 2048});
      fields.push_back(FieldTest{w, 32768});
      fields[0].lo = fields[1].lo = lo;
    }
    const int mb = B;  // monobit planes t .. t+B-1
    std::vector<double> expect(mb, 0.5);
    for (int j = 0; j < mb && j < kLow; ++j)
      expect[j] = std::clamp(double(ones[t + j]) / double(u), 0.01, 0.99);
    const uint64_t mono_window = 16384;
    std::vector<uint64_t> mono(std::max(0, mb), 0);
    uint64_t mono_n = 0, mono_start = 0, idx = 0;
    auto close_mono = [&] {
      if (mb >= 1 && mono_n >= 1024) {
        double chi = 0;
        for (int j = 0; j < mb; ++j) {
          double p = expect[j];
          double z = (double(mono[j]) - p * double(mono_n)) / std::sqrt(p * (1 - p) * double(mono_n));
          chi += z * z;
        }
        char d[200];
        std::snprintf(d, sizeof d,
                      "bit-plane frequencies (bits %d..%d; the lowest %d against the whole tensor, the rest against 1/2): "
                      "chi-square %.1f (%d dof) over elements %llu..%llu",
                      t, t + B - 1, std::min(kLow, mb), chi, mb, (unsigned long long)mono_start, (unsigned long long)idx);
        ex.offer(chi2_log10_sf(chi, mb), "monobit", d);
      }
      std::fill(mono.begin(), mono.end(), 0);
      mono_n = 0;
      mono_start = idx;
    };
    const uint64_t bmask = (uint64_t(1) << B) - 1;
    const uint64_t wmask = w >= 1 ? (uint64_t(1) << w) - 1 : 0;
    for (size_t i = 0; i < n; ++i) {
      U x = load(i);
      if (!usable(x)) continue;
      uint64_t v = (uint64_t(x) >> t) & bmask;
      for (auto& pt : pairs) pt.push(v, ex);
      for (auto& ft : fields) ft.push((v >> kLow) & wmask, ex);
      for (int j = 0; j < mb; ++j) mono[j] += (v >> j) & 1u;
      ++idx;
      if (++mono_n == mono_window) close_mono();
    }
    for (auto& pt : pairs) pt.close(ex);
    for (auto& ft : fields) ft.close(ex);
    close_mono();
  }
  s.tests = std::max<uint64_t>(1, ex.tests);
  double corrected = ex.log10p + std::log10(double(s.tests));
  s.score = std::max(0.0, -corrected);
  s.test = ex.test;
  s.detail = ex.detail.empty() ? "" : ex.detail + ", " + fmt_p(ex.log10p);
  return s;
}

}  // namespace

StegoScore score_elements(const uint8_t* data, size_t n_elems, DType dtype, const StegoOptions& options) {
  int mant = mantissa_bits(dtype);
  switch (mant) {
    case 52: return score_typed<uint64_t>(data, n_elems, 52, options);
    case 23: return score_typed<uint32_t>(data, n_elems, 23, options);
    case 10: return score_typed<uint16_t>(data, n_elems, 10, options);
    case 7: return score_typed<uint16_t>(data, n_elems, 7, options);
    default: return StegoScore{};
  }
}

std::vector<TensorStegoScore> score_model(const model::Model& m, const StegoOptions& options) {
  std::unordered_map<model::StorageId, std::string> names;
  for (const auto& nt : named_tensors(m)) {
    if (nt.tensor >= m.tensors.size()) continue;
    const auto& t = m.tensors[nt.tensor];
    if (model::is_sparse(t.kind)) continue;
    names.emplace(t.storage, nt.name);
  }
  std::vector<TensorStegoScore> out;
  for (size_t sid = 0; sid < m.storages.size(); ++sid) {
    const auto& st = m.storages[sid];
    uint32_t esz = float_component_size(st.dtype);
    if (esz == 0) continue;
    TensorStegoScore ts;
    auto it = names.find(model::StorageId(sid));
    ts.name = it != names.end() ? it->second : st.source;
    ts.storage = model::StorageId(sid);
    ts.dtype = model::dtype_info(st.dtype).name;
    ts.elements = st.bytes.size() / esz;
    ts.score = score_elements(st.bytes.data(), ts.elements, st.dtype, options);
    out.push_back(std::move(ts));
  }
  return out;
}

std::function<void(const model::Model&, FileReport&)> make_stego_inspector(StegoOptions options) {
  return [options](const model::Model& m, FileReport& r) {
    auto scores = score_model(m, options);
    size_t tested = 0, flagged = 0;
    double max_score = 0;
    for (const auto& s : scores) {
      if (!s.score.tested) continue;
      ++tested;
      max_score = std::max(max_score, s.score.score);
      if (s.score.score < options.threshold) continue;
      ++flagged;
      char msg[160];
      std::snprintf(msg, sizeof msg, "suspicion score %.1f (threshold %.1f)", s.score.score, options.threshold);
      add_finding(r.findings, s.score.score >= options.high_threshold ? Severity::high : Severity::medium,
                  Rule::stego_lsb_suspicious,
                  "tensor '" + s.name + "' (" + s.dtype + ", " + std::to_string(s.elements) +
                      " elements): low mantissa bits look like hidden data: " + msg + ": " + s.score.test + ": " +
                      s.score.detail,
                  m.storages[s.storage].source);
    }
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "stego test: %zu of %zu float tensors tested (>= %llu non-zero finite elements), %zu flagged, max score "
                  "%.1f; random (encrypted/compressed) payloads in low bits are undetectable by statistics: disarm "
                  "--randomize-lsb destroys them",
                  tested, scores.size(), (unsigned long long)options.min_elements, flagged, max_score);
    add_finding(r.findings, Severity::info, Rule::stego_summary, buf);
  };
}

}  // namespace modelcdr::stego
