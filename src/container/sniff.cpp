#include "container/sniff.hpp"

#include <cstring>

namespace modelcdr::container {

namespace {
bool starts_with(std::span<const uint8_t> b, const void* magic, size_t n) {
  return b.size() >= n && std::memcmp(b.data(), magic, n) == 0;
}

constexpr uint8_t kLegacyMagic[] = {0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46,
                                    0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19, 0x2E};

// torch.load tries tarfile first (for real files), and Python's tarfile accepts any 512-byte
// block whose checksum field matches (signed or unsigned sum), with or without the ustar magic.
bool tar_header_checksum_ok(std::span<const uint8_t> b) {
  if (b.size() < 512) return false;
  bool all_zero = true;
  for (size_t i = 0; i < 512 && all_zero; ++i) all_zero = b[i] == 0;
  if (all_zero) return false;
  uint64_t stored = 0;
  bool digits = false;
  for (size_t i = 148; i < 156; ++i) {
    uint8_t c = b[i];
    if (c >= '0' && c <= '7') {
      stored = stored * 8 + (c - '0');
      digits = true;
    } else if (c == ' ' || c == 0) {
      if (digits) break;
    } else {
      return false;
    }
  }
  if (!digits) return false;
  int64_t unsigned_sum = 0, signed_sum = 0;
  for (size_t i = 0; i < 512; ++i) {
    uint8_t c = (i >= 148 && i < 156) ? ' ' : b[i];
    unsigned_sum += c;
    signed_sum += static_cast<int8_t>(c);
  }
  return static_cast<int64_t>(stored) == unsigned_sum || static_cast<int64_t>(stored) == signed_sum;
}

bool looks_like_safetensors(std::span<const uint8_t> b, uint64_t file_size) {
  if (b.size() < 9) return false;
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(b[i]) << (8 * i);
  if (n <= 1 || n > 100'000'000 || n + 8 > file_size) return false;
  // JSON may start with whitespace (the reference reader accepts it): skip it within the header.
  size_t i = 8;
  while (i < b.size() && i < 8 + n && std::strchr(" \t\r\n", b[i]) && b[i] != 0) ++i;
  return i < b.size() && b[i] == '{';
}

// The first byte of a pickle stream: PROTO, or one of the opcodes that start a protocol 0/1
// stream writing a container or scalar.
bool looks_like_pickle(std::span<const uint8_t> b) {
  if (b.empty()) return false;
  uint8_t c = b[0];
  if (c == 0x80) return b.size() >= 2 && b[1] <= 5;
  return std::strchr("(}]cdlNIJKLMFGSTUVXBC)\x8c\x95", c) != nullptr && c != 0;
}
}  // namespace

const char* format_name(Format f) {
  switch (f) {
    case Format::torch_zip: return "torch-zip";
    case Format::torchscript: return "torchscript";
    case Format::npz: return "npz";
    case Format::torch_legacy: return "torch-legacy";
    case Format::torch_tar: return "torch-tar";
    case Format::pickle: return "pickle";
    case Format::npy: return "npy";
    case Format::safetensors: return "safetensors";
    case Format::zip_not_at_start: return "zip-with-prefix";
    case Format::seven_zip: return "7z";
    case Format::gzip: return "gzip";
    case Format::bzip2: return "bzip2";
    case Format::xz: return "xz";
    case Format::zlib: return "zlib";
    case Format::lz4: return "lz4";
    case Format::empty: return "empty";
    case Format::unknown: return "unknown";
    case Format::joblib: return "joblib";
    case Format::lzma: return "lzma";
  }
  return "unknown";
}

Format sniff(std::span<const uint8_t> b, uint64_t file_size) {
  if (file_size == 0) return Format::empty;
  if (starts_with(b, "PK\x03\x04", 4)) return Format::torch_zip;
  if (tar_header_checksum_ok(b)) return Format::torch_tar;
  if (starts_with(b, kLegacyMagic, sizeof kLegacyMagic)) return Format::torch_legacy;
  if (starts_with(b, "\x93NUMPY", 6)) return Format::npy;
  if (starts_with(b, "7z\xBC\xAF\x27\x1C", 6)) return Format::seven_zip;
  if (starts_with(b, "\x1F\x8B", 2)) return Format::gzip;
  if (starts_with(b, "BZh", 3)) return Format::bzip2;
  if (starts_with(b, "\xFD" "7zXZ", 5)) return Format::xz;
  if (starts_with(b, "\x04\x22\x4D\x18", 4)) return Format::lz4;
  if (b.size() >= 2 && b[0] == 0x78 && (b[1] == 0x01 || b[1] == 0x5E || b[1] == 0x9C || b[1] == 0xDA))
    return Format::zlib;
  if (starts_with(b, "ZF0x", 4)) return Format::zlib;  // joblib < 0.10: "ZF" + hex length + zlib
  // lzma-alone (props 0x5D): not a pickle, since 0x00 is no opcode.
  if (starts_with(b, "\x5D\x00\x00", 3)) return Format::lzma;
  if (looks_like_safetensors(b, file_size)) return Format::safetensors;
  if (looks_like_pickle(b)) return Format::pickle;
  return Format::unknown;
}

}  // namespace modelcdr::container
