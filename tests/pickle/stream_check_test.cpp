// Tests for the streaming self-check of emitted pickles (pickle/stream_check.hpp): what the
// emitter writes passes, and each thing the check exists to refuse is refused, with the same
// verdict the full decode gives on the same bytes where the machine can tell.
#include "pickle/stream_check.hpp"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

#include "pickle/pickle_emitter.hpp"
#include "pickle/pickle_machine.hpp"

namespace modelcdr::pickle {
namespace {

bool torch_only(std::string_view module, std::string_view name) {
  return (module == "collections" && name == "OrderedDict") || (module == "torch._utils" && name == "_rebuild_tensor_v2");
}

// An OrderedDict of two entries, one value memoised and read back, every emitter scalar kind.
std::vector<uint8_t> emitted() {
  PickleEmitter e;
  e.proto2();
  e.global(EmitGlobal::ordered_dict);
  e.tuple_n(0);
  e.reduce();
  e.put();
  e.mark();
  e.unicode("a\xc3\xa9");
  e.mark();
  e.integer(1);
  e.integer(300);
  e.integer(-70000);
  e.integer(int64_t{1} << 40);
  e.binfloat(0.5);
  e.boolean(true);
  e.none();
  e.tuple();
  e.put();
  e.unicode("b");
  e.get(1);
  e.setitems();
  e.stop();
  return e.bytes();
}

Status check(const std::vector<uint8_t>& b) { return check_emitted_stream(b, torch_only, "t"); }

TEST(StreamCheck, AcceptsWhatTheEmitterWritesAndTheMachineDecodes) {
  auto b = emitted();
  Findings f;
  ASSERT_TRUE(decode(b, DecodeOptions{}, f).ok());
  EXPECT_TRUE(check(b).ok());
}

TEST(StreamCheck, RefusesAGlobalOutsideTheVocabulary) {
  PickleEmitter e;
  e.proto2();
  e.global(EmitGlobal::codecs_encode);  // a real emitter global, but not in this predicate
  e.stop();
  auto r = check(e.bytes());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rule, Rule::emit_self_check);
  EXPECT_NE(r.error().message.find("global outside"), std::string::npos);
}

TEST(StreamCheck, RefusesOpcodesTheEmitterNeverWrites) {
  // INST os system: decodes fine in the machine, never written by the emitter.
  std::string s = "\x80\x02(ios\nsystem\n.";
  std::vector<uint8_t> b(s.begin(), s.end());
  auto r = check(b);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("opcode outside"), std::string::npos);
}

TEST(StreamCheck, RefusesMalformedStreams) {
  auto good = emitted();
  // Trailing bytes after STOP, a missing STOP, a truncated argument, protocol 3.
  auto trailing = good;
  trailing.push_back('N');
  EXPECT_FALSE(check(trailing).ok());
  auto no_stop = good;
  no_stop.pop_back();
  EXPECT_FALSE(check(no_stop).ok());
  std::vector<uint8_t> cut = {0x80, 2, 'X', 5, 0, 0, 0, 'a'};
  EXPECT_FALSE(check(cut).ok());
  auto proto3 = good;
  proto3[1] = 3;
  EXPECT_FALSE(check(proto3).ok());
  // Stack discipline: two values at STOP, a REDUCE with one, a read of an unset memo slot, a
  // SETITEMS with an odd item count, bad UTF-8.
  EXPECT_FALSE(check({0x80, 2, 'N', 'N', '.'}).ok());
  EXPECT_FALSE(check({0x80, 2, 'N', 'R', '.'}).ok());
  EXPECT_FALSE(check({0x80, 2, 'h', 0, '.'}).ok());
  EXPECT_FALSE(check({0x80, 2, '}', '(', 'N', 'u', '.'}).ok());
  EXPECT_FALSE(check({0x80, 2, 'X', 1, 0, 0, 0, 0xff, '.'}).ok());
  EXPECT_TRUE(check({0x80, 2, '}', '(', 'N', 'N', 'u', '.'}).ok());
}

}  // namespace
}  // namespace modelcdr::pickle
