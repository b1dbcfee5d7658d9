#include "pickle/stream_check.hpp"

#include <cstring>
#include <vector>

#include "pickle/opcodes.hpp"
#include "pickle/pickle_machine.hpp"

namespace modelcdr::pickle {
namespace {

class StreamCheck {
 public:
  StreamCheck(std::span<const uint8_t> pkl, GlobalPredicate ok, const std::string& entry)
      : p_(pkl), global_ok_(ok), entry_(entry) {}

  Status run() {
    if (p_.size() < 2 || p_[0] != static_cast<uint8_t>(Op::PROTO) || p_[1] != 2)
      return bad("emitted pickle does not start with PROTO 2");
    pos_ = 2;
    while (pos_ < p_.size()) {
      op_pos_ = pos_;
      const auto op = static_cast<Op>(p_[pos_++]);
      if (op == Op::STOP) {
        if (depth_ != 1 || !marks_.empty()) return bad("emitted pickle does not end with exactly one value");
        if (pos_ != p_.size()) return bad("emitted pickle is not a single protocol-2 stream");
        return ok_status();
      }
      MCDR_TRY(step(op));
    }
    return bad("emitted pickle ended without STOP");
  }

 private:
  Error bad(std::string why) const { return make_error(Rule::emit_self_check, std::move(why), op_pos_, entry_); }

  Result<std::span<const uint8_t>> take(uint64_t n) {
    if (n > p_.size() - pos_) return bad("emitted pickle is truncated inside an opcode");
    auto s = p_.subspan(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  Status skip(uint64_t n) {
    MCDR_ASSIGN(auto s, take(n));
    (void)s;
    return ok_status();
  }
  Result<uint32_t> u32() {
    MCDR_ASSIGN(auto b, take(4));
    return static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 | static_cast<uint32_t>(b[2]) << 16 |
           static_cast<uint32_t>(b[3]) << 24;
  }
  Result<std::string_view> line() {
    const void* nl = std::memchr(p_.data() + pos_, '\n', p_.size() - pos_);
    if (nl == nullptr) return bad("emitted GLOBAL has no newline");
    const auto* end = static_cast<const uint8_t*>(nl);
    std::string_view s(reinterpret_cast<const char*>(p_.data() + pos_), static_cast<size_t>(end - (p_.data() + pos_)));
    pos_ += s.size() + 1;
    return s;
  }

  size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }
  // `n` values above the topmost mark are consumed and `m` pushed.
  Status pops(uint64_t n, uint64_t m) {
    if (depth_ < fence() + n) return bad("emitted pickle underflows its stack");
    depth_ = depth_ - n + m;
    return ok_status();
  }
  Status from_mark(uint64_t keep_below, bool pairs, uint64_t push) {
    if (marks_.empty()) return bad("emitted pickle pops a MARK it never pushed");
    const uint64_t m = marks_.back();
    marks_.pop_back();
    if (m < fence() + keep_below) return bad("emitted pickle has no target below its MARK");
    if (pairs && (depth_ - m) % 2 != 0) return bad("emitted pickle has an odd number of dict items");
    depth_ = m + push;
    return ok_status();
  }
  Status put(uint64_t idx) {
    MCDR_TRY(pops(1, 1));
    if (idx > memo_.size()) return bad("emitted pickle skips memo slots");  // the emitter numbers them in order
    if (idx == memo_.size()) memo_.push_back(true);
    return ok_status();
  }
  Status get(uint64_t idx) {
    if (idx >= memo_.size()) return bad("emitted pickle reads a memo slot it never stored");
    return pops(0, 1);
  }

  Status step(Op op) {
    switch (op) {
      case Op::MARK: marks_.push_back(depth_); return ok_status();
      case Op::TUPLE: return from_mark(0, false, 1);
      case Op::APPENDS: return from_mark(1, false, 0);
      case Op::SETITEMS: return from_mark(1, true, 0);
      case Op::EMPTY_TUPLE: case Op::EMPTY_LIST: case Op::EMPTY_DICT: case Op::NONE:
      case Op::NEWTRUE: case Op::NEWFALSE:
        return pops(0, 1);
      case Op::TUPLE1: return pops(1, 1);
      case Op::TUPLE2: return pops(2, 1);
      case Op::TUPLE3: return pops(3, 1);
      case Op::SETITEM: return pops(3, 1);
      case Op::REDUCE: case Op::BUILD: return pops(2, 1);
      case Op::BINPERSID: return pops(1, 1);
      case Op::BININT1: MCDR_TRY(skip(1)); return pops(0, 1);
      case Op::BININT2: MCDR_TRY(skip(2)); return pops(0, 1);
      case Op::BININT: MCDR_TRY(skip(4)); return pops(0, 1);
      case Op::BINFLOAT: MCDR_TRY(skip(8)); return pops(0, 1);
      case Op::LONG1: {
        MCDR_ASSIGN(auto n, take(1));
        MCDR_TRY(skip(n[0]));
        return pops(0, 1);
      }
      case Op::BINUNICODE: {
        MCDR_ASSIGN(uint32_t n, u32());
        MCDR_ASSIGN(auto s, take(n));
        if (!valid_utf8_text({reinterpret_cast<const char*>(s.data()), s.size()}, true))
          return bad("emitted pickle holds text that is not UTF-8");
        return pops(0, 1);
      }
      case Op::GLOBAL: {
        MCDR_ASSIGN(std::string_view module, line());
        MCDR_ASSIGN(std::string_view name, line());
        if (!global_ok_(module, name)) return bad("emitted pickle names a global outside the emit vocabulary");
        return pops(0, 1);
      }
      case Op::BINPUT: {
        MCDR_ASSIGN(auto b, take(1));
        return put(b[0]);
      }
      case Op::LONG_BINPUT: {
        MCDR_ASSIGN(uint32_t i, u32());
        return put(i);
      }
      case Op::BINGET: {
        MCDR_ASSIGN(auto b, take(1));
        return get(b[0]);
      }
      case Op::LONG_BINGET: {
        MCDR_ASSIGN(uint32_t i, u32());
        return get(i);
      }
      default: return bad("emitted pickle holds an opcode outside the emit vocabulary");
    }
  }

  std::span<const uint8_t> p_;
  GlobalPredicate global_ok_;
  const std::string& entry_;
  size_t pos_ = 0, op_pos_ = 0;
  uint64_t depth_ = 0;
  std::vector<uint64_t> marks_;
  std::vector<bool> memo_;
};

}  // namespace

Status check_emitted_stream(std::span<const uint8_t> pkl, GlobalPredicate global_ok, const std::string& entry) {
  return StreamCheck(pkl, global_ok, entry).run();
}

}  // namespace modelcdr::pickle
