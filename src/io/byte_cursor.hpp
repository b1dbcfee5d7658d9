// ByteCursor: the one bounds-checked reader of untrusted bytes. Every parser reads input
// through it; nothing else does pointer arithmetic on input. Reads past the end return an
// error value instead of touching memory, and lengths are checked against what remains
// *before* any arithmetic that could overflow.
#pragma once
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "modelcdr/result.hpp"

namespace modelcdr::io {

using Bytes = std::span<const uint8_t>;

class ByteCursor {
 public:
  ByteCursor() = default;
  ByteCursor(Bytes data, std::string entry = {}, uint64_t base = 0)
      : data_(data), entry_(std::move(entry)), base_(base) {}

  size_t pos() const { return pos_; }
  size_t size() const { return data_.size(); }
  size_t remaining() const { return data_.size() - pos_; }
  bool at_end() const { return pos_ >= data_.size(); }
  uint64_t abs_pos() const { return base_ + pos_; }
  const std::string& entry() const { return entry_; }
  Bytes data() const { return data_; }

  Status seek(size_t p) {
    if (p > data_.size()) return err(Rule::io_seek_out_of_range, "seek beyond end of data");
    pos_ = p;
    return ok_status();
  }
  Status skip(uint64_t n) {
    if (n > remaining()) return err(Rule::io_truncated, "data truncated: need " + std::to_string(n) +
                                                        " bytes, " + std::to_string(remaining()) + " left");
    pos_ += static_cast<size_t>(n);
    return ok_status();
  }

  Result<uint8_t> u8() {
    if (remaining() < 1) return err(Rule::io_truncated, "data truncated: need 1 byte");
    return data_[pos_++];
  }
  Result<uint8_t> peek_u8() const {
    if (remaining() < 1) return err(Rule::io_truncated, "data truncated: need 1 byte");
    return data_[pos_];
  }
  template <class T>
  Result<T> le() {
    static_assert(std::is_integral_v<T>);
    if (remaining() < sizeof(T)) return err(Rule::io_truncated, "data truncated: need " + std::to_string(sizeof(T)) + " bytes");
    using U = std::make_unsigned_t<T>;
    U v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<U>(static_cast<U>(data_[pos_ + i]) << (8 * i));
    pos_ += sizeof(T);
    return static_cast<T>(v);
  }
  Result<uint16_t> u16le() { return le<uint16_t>(); }
  Result<uint32_t> u32le() { return le<uint32_t>(); }
  Result<uint64_t> u64le() { return le<uint64_t>(); }
  Result<int32_t> i32le() { return le<int32_t>(); }
  Result<int64_t> i64le() { return le<int64_t>(); }

  Result<double> f64be() {
    if (remaining() < 8) return err(Rule::io_truncated, "data truncated: need 8 bytes");
    uint64_t v = 0;
    for (size_t i = 0; i < 8; ++i) v = (v << 8) | data_[pos_ + i];
    pos_ += 8;
    double d;
    std::memcpy(&d, &v, 8);
    return d;
  }

  // A span of n bytes; n is checked against what remains before anything else.
  Result<Bytes> take(uint64_t n) {
    if (n > remaining()) return err(Rule::io_truncated, "data truncated: length " + std::to_string(n) +
                                                        " exceeds the " + std::to_string(remaining()) + " bytes left");
    Bytes s = data_.subspan(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  Result<std::string_view> take_view(uint64_t n) {
    MCDR_ASSIGN(Bytes b, take(n));
    return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
  }
  // Bytes up to (not including) '\n', consuming the newline. Bounded by max_len.
  Result<std::string_view> line(size_t max_len) {
    size_t limit = std::min(remaining(), max_len + 1);
    const uint8_t* start = data_.data() + pos_;
    const void* nl = std::memchr(start, '\n', limit);
    if (!nl) {
      if (limit <= max_len) return err(Rule::io_truncated, "line not terminated before end of data");
      return err(Rule::io_line_too_long, "text line longer than " + std::to_string(max_len) + " bytes");
    }
    size_t n = static_cast<const uint8_t*>(nl) - start;
    pos_ += n + 1;
    return std::string_view(reinterpret_cast<const char*>(start), n);
  }

  Error err(Rule rule, std::string message) const {
    return make_error(std::move(rule), std::move(message), abs_pos(), entry_);
  }

 private:
  Bytes data_;
  size_t pos_ = 0;
  std::string entry_;
  uint64_t base_ = 0;
};

}  // namespace modelcdr::io
