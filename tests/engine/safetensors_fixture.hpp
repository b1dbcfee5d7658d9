// Test inputs the engine tests share: small safetensors files built in memory, so the API can be
// driven from memory sources with no torch and no files from the corpus.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace modelcdr::testing {

// A safetensors file of `n` float32 tensors t0..t(n-1) of `elems` values each, derived from `seed`.
inline std::vector<uint8_t> safetensors_file(int n, size_t elems, float seed) {
  std::string header = "{";
  std::vector<uint8_t> data;
  for (int i = 0; i < n; ++i) {
    const size_t from = data.size(), to = from + elems * 4;
    header += (i ? "," : "") + std::string("\"t") + std::to_string(i) + "\":{\"dtype\":\"F32\",\"shape\":[" +
              std::to_string(elems) + "],\"data_offsets\":[" + std::to_string(from) + "," + std::to_string(to) + "]}";
    for (size_t e = 0; e < elems; ++e) {
      float v = seed + float(i) * 1000.0f + float(e) * 0.25f;
      uint8_t b[4];
      std::memcpy(b, &v, 4);
      data.insert(data.end(), b, b + 4);
    }
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(uint64_t(header.size()) >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

inline std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace modelcdr::testing
