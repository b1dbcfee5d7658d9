// Bounded decompression of the stream codecs joblib writes (docs/FORMATS.md §7.4): zlib, gzip,
// bz2, xz, lzma-alone, lz4 frame, and joblib < 0.10's "ZF" + hex length + zlib. All decoding is
// done by the codec libraries (zlib, libbz2, liblzma, liblz4); this file only drives them with
// an output cap, so a decompression bomb ends in an error, never in an unbounded allocation.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "modelcdr/finding.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::formats {

enum class Codec { zlib, gzip, bz2, xz, lzma, lz4, joblib_zfile };
const char* codec_name(Codec c);

// The codec whose magic starts `head`, if any.
std::optional<Codec> detect_codec(std::span<const uint8_t> head);

struct DecompressLimits {
  uint64_t ratio = 64;                        // output <= ratio x input ...
  uint64_t floor_bytes = 64ull << 20;         // ... but small inputs may always reach this much
  uint64_t absolute_max = 16ull << 30;        // and never more than this
  uint64_t cap_for(uint64_t input_size) const;
};

// Decompresses one stream. Errors: codec.too-large (cap reached), codec.corrupt, codec.truncated.
// Bytes after the end of the compressed stream are an error too (codec.trailing-data).
Result<std::vector<uint8_t>> decompress(std::span<const uint8_t> data, Codec codec, const DecompressLimits& limits,
                                        Findings& findings);

}  // namespace modelcdr::formats
