#include "formats/codecs.hpp"

#include <bzlib.h>
#include <lz4frame.h>
#include <lzma.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "io/byte_cursor.hpp"

namespace modelcdr::formats {

namespace {

bool starts(std::span<const uint8_t> b, const char* magic, size_t n) {
  return b.size() >= n && std::memcmp(b.data(), magic, n) == 0;
}

// Output buffer that grows geometrically up to `cap`.
class Sink {
 public:
  explicit Sink(uint64_t cap, uint64_t hint) : cap_(cap) { out_.resize(static_cast<size_t>(std::min<uint64_t>(cap, std::max<uint64_t>(hint, 1 << 16)))); }
  // Free space after `used`; grows the buffer when full. Empty span = cap reached.
  std::span<uint8_t> space(size_t used) {
    if (used == out_.size()) {
      if (out_.size() >= cap_) return {};
      out_.resize(static_cast<size_t>(std::min<uint64_t>(cap_, static_cast<uint64_t>(out_.size()) * 2)));
    }
    return std::span<uint8_t>(out_.data() + used, out_.size() - used);
  }
  std::vector<uint8_t> finish(size_t used) {
    out_.resize(used);
    out_.shrink_to_fit();
    return std::move(out_);
  }

 private:
  uint64_t cap_;
  std::vector<uint8_t> out_;
};

Error too_large(Codec c, uint64_t cap) {
  return make_error(Rule::codec_too_large, std::string(codec_name(c)) + " stream decompresses to more than " +
                                           std::to_string(cap) + " bytes (decompression-bomb cap)");
}

Error corrupt(Codec c, const std::string& why) {
  return make_error(Rule::codec_corrupt, std::string(codec_name(c)) + " stream is corrupt: " + why);
}

// Bytes after the end of the stream: a second member that some readers would decode and
// others not, so the file cannot be parsed with certainty.
Status trailing(Codec c, uint64_t consumed, uint64_t total, Findings&) {
  if (consumed < total)
    return make_error(Rule::codec_trailing_data,
                      std::to_string(total - consumed) + " bytes after the end of the " + codec_name(c) + " stream", consumed);
  return ok_status();
}

Result<std::vector<uint8_t>> inflate_zlib(std::span<const uint8_t> in, Codec c, uint64_t cap, uint64_t base,
                                          Findings& findings) {
  z_stream z{};
  int window = c == Codec::gzip ? 15 + 16 : 15;
  if (inflateInit2(&z, window) != Z_OK) return corrupt(c, "zlib init failed");
  Sink sink(cap, in.size() * 4);
  size_t used = 0;
  size_t in_pos = 0;
  int rc = Z_OK;
  while (true) {
    auto space = sink.space(used);
    if (space.empty()) {
      inflateEnd(&z);
      return too_large(c, cap);
    }
    size_t in_chunk = std::min<size_t>(in.size() - in_pos, 1u << 30);
    z.next_in = const_cast<Bytef*>(in.data() + in_pos);
    z.avail_in = static_cast<uInt>(in_chunk);
    size_t out_chunk = std::min<size_t>(space.size(), 1u << 30);
    z.next_out = space.data();
    z.avail_out = static_cast<uInt>(out_chunk);
    rc = inflate(&z, Z_NO_FLUSH);
    in_pos += in_chunk - z.avail_in;
    used += out_chunk - z.avail_out;
    if (rc == Z_STREAM_END) break;
    if (rc == Z_BUF_ERROR && z.avail_out != 0 && in_pos == in.size()) {
      inflateEnd(&z);
      return make_error(Rule::codec_truncated, std::string(codec_name(c)) + " stream is truncated");
    }
    if (rc != Z_OK && rc != Z_BUF_ERROR) {
      std::string why = z.msg ? z.msg : "inflate error " + std::to_string(rc);
      inflateEnd(&z);
      return corrupt(c, why);
    }
  }
  inflateEnd(&z);
  MCDR_TRY(trailing(c, base + in_pos, base + in.size(), findings));
  return sink.finish(used);
}

Result<std::vector<uint8_t>> bunzip(std::span<const uint8_t> in, uint64_t cap, Findings& findings) {
  bz_stream s{};
  if (BZ2_bzDecompressInit(&s, 0, 0) != BZ_OK) return corrupt(Codec::bz2, "init failed");
  Sink sink(cap, in.size() * 4);
  size_t used = 0, in_pos = 0;
  while (true) {
    auto space = sink.space(used);
    if (space.empty()) {
      BZ2_bzDecompressEnd(&s);
      return too_large(Codec::bz2, cap);
    }
    size_t in_chunk = std::min<size_t>(in.size() - in_pos, 1u << 30);
    size_t out_chunk = std::min<size_t>(space.size(), 1u << 30);
    s.next_in = reinterpret_cast<char*>(const_cast<uint8_t*>(in.data() + in_pos));
    s.avail_in = static_cast<unsigned>(in_chunk);
    s.next_out = reinterpret_cast<char*>(space.data());
    s.avail_out = static_cast<unsigned>(out_chunk);
    int rc = BZ2_bzDecompress(&s);
    in_pos += in_chunk - s.avail_in;
    used += out_chunk - s.avail_out;
    if (rc == BZ_STREAM_END) break;
    if (rc != BZ_OK) {
      BZ2_bzDecompressEnd(&s);
      return corrupt(Codec::bz2, "error " + std::to_string(rc));
    }
    if (in_pos == in.size() && s.avail_out != 0) {
      BZ2_bzDecompressEnd(&s);
      return make_error(Rule::codec_truncated, "bz2 stream is truncated");
    }
  }
  BZ2_bzDecompressEnd(&s);
  MCDR_TRY(trailing(Codec::bz2, in_pos, in.size(), findings));
  return sink.finish(used);
}

Result<std::vector<uint8_t>> unxz(std::span<const uint8_t> in, Codec c, uint64_t cap, Findings& findings) {
  lzma_stream s = LZMA_STREAM_INIT;
  const uint64_t memlimit = 1ull << 30;  // decoder dictionary memory
  lzma_ret r = c == Codec::xz ? lzma_stream_decoder(&s, memlimit, 0) : lzma_alone_decoder(&s, memlimit);
  if (r != LZMA_OK) return corrupt(c, "decoder init failed");
  Sink sink(cap, in.size() * 4);
  size_t used = 0;
  s.next_in = in.data();
  s.avail_in = in.size();
  while (true) {
    auto space = sink.space(used);
    if (space.empty()) {
      lzma_end(&s);
      return too_large(c, cap);
    }
    s.next_out = space.data();
    s.avail_out = space.size();
    r = lzma_code(&s, LZMA_FINISH);
    used += space.size() - s.avail_out;
    if (r == LZMA_STREAM_END) break;
    if (r == LZMA_BUF_ERROR) {
      lzma_end(&s);
      return make_error(Rule::codec_truncated, std::string(codec_name(c)) + " stream is truncated");
    }
    if (r != LZMA_OK) {
      lzma_end(&s);
      return corrupt(c, r == LZMA_MEMLIMIT_ERROR ? "dictionary larger than 1 GiB" : "error " + std::to_string(r));
    }
  }
  size_t consumed = in.size() - s.avail_in;
  lzma_end(&s);
  MCDR_TRY(trailing(c, consumed, in.size(), findings));
  return sink.finish(used);
}

Result<std::vector<uint8_t>> unlz4(std::span<const uint8_t> in, uint64_t cap, Findings& findings) {
  LZ4F_dctx* ctx = nullptr;
  if (LZ4F_isError(LZ4F_createDecompressionContext(&ctx, LZ4F_VERSION))) return corrupt(Codec::lz4, "init failed");
  Sink sink(cap, in.size() * 4);
  size_t used = 0, in_pos = 0;
  size_t hint = 1;
  while (hint != 0) {
    auto space = sink.space(used);
    if (space.empty()) {
      LZ4F_freeDecompressionContext(ctx);
      return too_large(Codec::lz4, cap);
    }
    size_t src = in.size() - in_pos, dst = space.size();
    hint = LZ4F_decompress(ctx, space.data(), &dst, in.data() + in_pos, &src, nullptr);
    if (LZ4F_isError(hint)) {
      std::string why = LZ4F_getErrorName(hint);
      LZ4F_freeDecompressionContext(ctx);
      return corrupt(Codec::lz4, why);
    }
    in_pos += src;
    used += dst;
    if (hint != 0 && src == 0 && dst == 0 && in_pos == in.size()) {
      LZ4F_freeDecompressionContext(ctx);
      return make_error(Rule::codec_truncated, "lz4 stream is truncated");
    }
  }
  LZ4F_freeDecompressionContext(ctx);
  MCDR_TRY(trailing(Codec::lz4, in_pos, in.size(), findings));
  return sink.finish(used);
}

}  // namespace

const char* codec_name(Codec c) {
  switch (c) {
    case Codec::zlib: return "zlib";
    case Codec::gzip: return "gzip";
    case Codec::bz2: return "bz2";
    case Codec::xz: return "xz";
    case Codec::lzma: return "lzma";
    case Codec::lz4: return "lz4";
    case Codec::joblib_zfile: return "joblib-zfile";
  }
  return "?";
}

std::optional<Codec> detect_codec(std::span<const uint8_t> b) {
  if (starts(b, "\x1F\x8B", 2)) return Codec::gzip;
  if (starts(b, "BZh", 3)) return Codec::bz2;
  if (starts(b, "\xFD" "7zXZ\x00", 6)) return Codec::xz;
  if (starts(b, "\x04\x22\x4D\x18", 4)) return Codec::lz4;
  if (starts(b, "ZF0x", 4)) return Codec::joblib_zfile;
  // lzma-alone: properties byte 0x5D (lc=3 lp=0 pb=2, what Python's lzma writes) then a
  // 4-byte dictionary size; a pickle cannot start with 5D 00 (0x00 is not an opcode).
  if (starts(b, "\x5D\x00\x00", 3)) return Codec::lzma;
  if (b.size() >= 2 && b[0] == 0x78 && (b[1] == 0x01 || b[1] == 0x5E || b[1] == 0x9C || b[1] == 0xDA)) return Codec::zlib;
  return std::nullopt;
}

uint64_t DecompressLimits::cap_for(uint64_t input_size) const {
  uint64_t scaled = 0;
  if (__builtin_mul_overflow(input_size, ratio, &scaled)) scaled = UINT64_MAX;
  return std::min(absolute_max, std::max(scaled, floor_bytes));
}

Result<std::vector<uint8_t>> decompress(std::span<const uint8_t> data, Codec codec, const DecompressLimits& limits,
                                        Findings& findings) {
  uint64_t cap = limits.cap_for(data.size());
  switch (codec) {
    case Codec::zlib:
    case Codec::gzip: return inflate_zlib(data, codec, cap, 0, findings);
    case Codec::bz2: return bunzip(data, cap, findings);
    case Codec::xz:
    case Codec::lzma: return unxz(data, codec, cap, findings);
    case Codec::lz4: return unlz4(data, cap, findings);
    case Codec::joblib_zfile: {
      // "ZF" + hex(length) left-justified in 19 (Python 3) or 20 (Python 2, "...L") chars,
      // then zlib data (joblib < 0.10).
      io::ByteCursor cur(data);
      MCDR_TRY(cur.skip(2));
      std::string h;
      while (true) {
        MCDR_ASSIGN(uint8_t c, cur.peek_u8());
        if (c == ' ' || cur.pos() >= 22) break;
        h.push_back(static_cast<char>(c));
        MCDR_TRY(cur.skip(1));
      }
      while (true) {
        MCDR_ASSIGN(uint8_t c, cur.peek_u8());
        if (c != ' ' || cur.pos() >= 22) break;
        MCDR_TRY(cur.skip(1));
      }
      if (!h.empty() && h.back() == 'L') h.pop_back();
      if (h.size() < 3 || h.compare(0, 2, "0x") != 0 || h.size() > 18 ||
          h.find_first_not_of("0123456789abcdefABCDEF", 2) != std::string::npos)
        return make_error(Rule::codec_corrupt, "joblib ZF header length is not a hex number", 2);
      uint64_t declared = std::stoull(h.substr(2), nullptr, 16);
      size_t start = cur.pos();
      MCDR_ASSIGN(std::vector<uint8_t> out, inflate_zlib(data.subspan(start), Codec::zlib, cap, start, findings));
      if (out.size() != declared)
        return make_error(Rule::codec_corrupt, "joblib ZF header declares " + std::to_string(declared) + " bytes, the stream holds " +
                                               std::to_string(out.size()));
      return out;
    }
  }
  return make_error(Rule::codec_unknown, "unknown codec");
}

}  // namespace modelcdr::formats
