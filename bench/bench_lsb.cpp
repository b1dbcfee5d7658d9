// bench_lsb: single-core throughput of LSB randomisation (stego::randomize_copy, the kernel that
// `disarm --randomize-lsb` runs) against a plain memcpy of the same buffer, in the same run.
//
//   build-stego/bench_lsb [MiB=256] [repeats=5]
//
// Both copy IN -> OUT (distinct buffers, both pre-faulted); the best of `repeats` runs is reported.
// Target (bench/README.md): float32 randomisation >= 1 GB/s per core.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "stego/lsb_randomizer.hpp"

using namespace modelcdr;
using clk = std::chrono::steady_clock;

namespace {

template <class F>
double best_seconds(int repeats, F&& f) {
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = clk::now();
    f();
    double s = std::chrono::duration<double>(clk::now() - t0).count();
    if (s < best) best = s;
  }
  return best;
}

volatile uint8_t sink;

}  // namespace

int main(int argc, char** argv) {
  // Both arguments must be positive numbers: anything else (e.g. --help) prints the usage, since a
  // zero-sized buffer has no middle byte to read.
  char* end = nullptr;
  size_t mib = argc > 1 ? std::strtoull(argv[1], &end, 10) : 256;
  bool ok = argc <= 1 || (*end == '\0' && mib > 0 && mib <= (size_t{1} << 16));
  int repeats = 5;
  if (ok && argc > 2) {
    long r = std::strtol(argv[2], &end, 10);
    ok = *end == '\0' && r > 0 && r <= 1000;
    repeats = static_cast<int>(r);
  }
  if (!ok || argc > 3) {
    std::fprintf(stderr, "usage: bench_lsb [MiB=256 (1..65536)] [repeats=5 (1..1000)]\n");
    return 2;
  }
  size_t bytes = mib << 20;
  std::vector<uint8_t> in(bytes), out(bytes);
  {
    std::mt19937_64 g(42);
    std::normal_distribution<float> nd(0.f, 0.05f);
    for (size_t i = 0; i + 4 <= bytes; i += 4) {
      float f = nd(g);
      std::memcpy(&in[i], &f, 4);
    }
    std::memset(out.data(), 1, bytes);
  }
  stego::LaneRng rng;  // CSPRNG-seeded, as in disarm
  double t_memcpy = best_seconds(repeats, [&] {
    std::memcpy(out.data(), in.data(), bytes);
    sink = out[bytes / 2];
  });
  double gbps_memcpy = bytes / t_memcpy / 1e9;
  std::printf("buffer %zu MiB, best of %d, one thread\n", mib, repeats);
  std::printf("%-28s %8.3f GB/s\n", "memcpy", gbps_memcpy);
  struct Case {
    const char* type;
    uint32_t esz;
    int mant, bits;
    bool is_default;
  } cases[] = {
      {"float32", 4, 23, stego::LsbPolicy::kDefaultF32, true},
      {"float32", 4, 23, 23, false},
      {"float32", 4, 23, 1, false},
      {"float64", 8, 52, stego::LsbPolicy::kDefaultF64, true},
      {"float16", 2, 10, stego::LsbPolicy::kDefaultF16, true},
      {"bfloat16", 2, 7, stego::LsbPolicy::kDefaultBF16, true},
  };
  int rc = 0;
  for (const auto& c : cases) {
    char name[64];
    std::snprintf(name, sizeof name, "%s N=%d%s", c.type, c.bits, c.is_default ? " (default)" : "");
    stego::LsbCounters counters;
    double t = best_seconds(repeats, [&] {
      stego::randomize_copy(in.data(), out.data(), bytes / c.esz, c.esz, c.mant, c.bits, rng, counters);
      sink = out[bytes / 2];
    });
    double gbps = bytes / t / 1e9;
    std::printf("%-28s %8.3f GB/s  = %.2f x memcpy%s\n", name, gbps, gbps / gbps_memcpy,
                (c.esz == 4 && gbps < 1.0) ? "  BELOW 1 GB/s TARGET" : "");
    if (c.esz == 4 && gbps < 1.0) rc = 1;
  }
  return rc;
}
