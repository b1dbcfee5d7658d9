// Tests for the symbolic pickle machine. Inputs are hand-written byte strings, plus streams that
// CPython 3.11's pickle.dumps produced from plain data (hex literals below; generator shown).
#include "pickle/pickle_machine.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "pickle/opcodes.hpp"
#include "pickle/py2_names.hpp"

namespace modelcdr::pickle {
namespace {

using namespace std::string_view_literals;
using namespace std::string_literals;

std::vector<uint8_t> bytes(std::string_view s) { return std::vector<uint8_t>(s.begin(), s.end()); }

std::vector<uint8_t> unhex(std::string_view h) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out.push_back(static_cast<uint8_t>(std::stoi(std::string(h.substr(i, 2)), nullptr, 16)));
  return out;
}

struct Run {
  Result<Program> result;
  Findings findings;
  const Program& prog() const { return result.value(); }
  const Node& root() const { return prog().at(prog().root); }
  const Node& at(NodeId id) const { return prog().at(id); }
  const Error& error() const { return result.error(); }
  bool has_finding(Rule rule) const {
    for (auto& f : findings)
      if (f.rule == rule) return true;
    return false;
  }
  const Finding* finding(Rule rule) const {
    for (auto& f : findings)
      if (f.rule == rule) return &f;
    return nullptr;
  }
};

Run run(const std::vector<uint8_t>& data, DecodeOptions options = {}) {
  Findings f;
  auto r = decode(data, options, f);
  return Run{std::move(r), std::move(f)};
}
Run run(std::string_view s, DecodeOptions options = {}) { return run(bytes(s), std::move(options)); }

DecodeOptions with_limits(MachineLimits limits) {
  DecodeOptions o;
  o.limits = limits;
  return o;
}

#define EXPECT_OK(r) ASSERT_TRUE((r).result.ok()) << (r).result.error().describe()
#define EXPECT_ERR(r, rule_id)                                  \
  do {                                                          \
    ASSERT_FALSE((r).result.ok());                              \
    EXPECT_EQ((r).result.error().rule, rule_id) << (r).result.error().describe(); \
  } while (0)

// ---------------------------------------------------------------------------------------------
// CPython output: l = [1]; obj = [l, l, 'héllo', 2**70, -1, 3.25, {7}, True];
// pickle.dumps(obj, protocol=p).hex() for p in 0..5 (Python 3.11).
constexpr std::string_view kCpython[6] = {
    "286c70300a286c70310a49310a616167310a615668e96c6c6f0a70320a614c313138303539313632303731373431313330333432344c0a"
    "61492d310a6146332e32350a61635f5f6275696c74696e5f5f0a7365740a70330a28286c70340a49370a617470350a5270360a61493031"
    "0a612e",
    "5d7100285d71014b01616801580600000068c3a96c6c6f71024c313138303539313632303731373431313330333432344c0a4affffffff"
    "47400a000000000000635f5f6275696c74696e5f5f0a7365740a7103285d71044b07617471055271064930310a652e",
    "80025d7100285d71014b01616801580600000068c3a96c6c6f71028a090000000000000000404affffffff47400a000000000000635f5f"
    "6275696c74696e5f5f0a7365740a71035d71044b076185710552710688652e",
    "80035d7100285d71014b01616801580600000068c3a96c6c6f71028a090000000000000000404affffffff47400a000000000000636275"
    "696c74696e730a7365740a71035d71044b076185710552710688652e",
    "80049535000000000000005d94285d944b016168018c0668c3a96c6c6f948a090000000000000000404affffffff47400a000000000000"
    "8f94284b079088652e",
    "80059535000000000000005d94285d944b016168018c0668c3a96c6c6f948a090000000000000000404affffffff47400a000000000000"
    "8f94284b079088652e",
};

TEST(PickleMachine, CpythonProtocols0To5GiveTheSameGraph) {
  for (int p = 0; p < 6; ++p) {
    SCOPED_TRACE("protocol " + std::to_string(p));
    auto data = unhex(kCpython[p]);
    auto r = run(data);
    EXPECT_OK(r);
    EXPECT_EQ(r.prog().protocol, p >= 2 ? p : 0);
    EXPECT_EQ(r.prog().end_offset, data.size());
    EXPECT_EQ(r.prog().stop_offset, data.size() - 1);
    EXPECT_FALSE(r.has_finding(Rule::pickle_leftover_stack));
    const Node& root = r.root();
    ASSERT_EQ(root.kind, NodeKind::List);
    ASSERT_EQ(root.items.size(), 8u);
    // The same list twice: one node, referenced twice (memo identity).
    EXPECT_EQ(root.items[0], root.items[1]);
    const Node& inner = r.at(root.items[0]);
    ASSERT_EQ(inner.kind, NodeKind::List);
    ASSERT_EQ(inner.items.size(), 1u);
    EXPECT_EQ(r.at(inner.items[0]).i, 1);
    EXPECT_EQ(r.at(root.items[2]).kind, NodeKind::Str);
    EXPECT_EQ(r.at(root.items[2]).text, "h\xc3\xa9llo");
    const Node& big = r.at(root.items[3]);
    ASSERT_EQ(big.kind, NodeKind::BigInt);
    EXPECT_EQ(big.text, "\0\0\0\0\0\0\0\0\x40"sv);  // 2**70
    EXPECT_EQ(r.at(root.items[4]).kind, NodeKind::Int);
    EXPECT_EQ(r.at(root.items[4]).i, -1);
    EXPECT_EQ(r.at(root.items[5]).kind, NodeKind::Float);
    EXPECT_EQ(r.at(root.items[5]).f, 3.25);
    const Node& set = r.at(root.items[6]);
    if (p >= 4) {
      ASSERT_EQ(set.kind, NodeKind::Set);
      ASSERT_EQ(set.items.size(), 1u);
      EXPECT_EQ(r.at(set.items[0]).i, 7);
    } else {
      // set([7]) is builtins.set called with a tuple holding a list.
      ASSERT_EQ(set.kind, NodeKind::Call);
      const Node& callee = r.at(set.items[0]);
      ASSERT_EQ(callee.kind, NodeKind::Global);
      EXPECT_EQ(callee.text, "builtins");
      EXPECT_EQ(callee.name(), "set");
      EXPECT_EQ(callee.remapped, p < 3);  // protocols 0-2 write "__builtin__"
      EXPECT_EQ(r.has_finding(Rule::pickle_py2_name_remap), p < 3);
      const Node& args = r.at(set.items[1]);
      ASSERT_EQ(args.kind, NodeKind::Tuple);
      ASSERT_EQ(args.items.size(), 1u);
      EXPECT_EQ(r.at(args.items[0]).kind, NodeKind::List);
    }
    EXPECT_EQ(r.at(root.items[7]).kind, NodeKind::Bool);
    EXPECT_TRUE(r.at(root.items[7]).b);
  }
}

// ---------------------------------------------------------------------------------------------
// Names

TEST(PickleMachine, GlobalPy2RemapOnlyBelowProtocol3) {
  auto r = run("c__builtin__\nset\n.");
  EXPECT_OK(r);
  EXPECT_EQ(r.root().kind, NodeKind::Global);
  EXPECT_EQ(r.root().text, "builtins");
  EXPECT_EQ(r.root().name(), "set");
  EXPECT_TRUE(r.root().remapped);
  const Finding* f = r.finding(Rule::pickle_py2_name_remap);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->severity, Severity::info);

  auto p3 = run("\x80\x03" "c__builtin__\nset\n.");
  EXPECT_OK(p3);
  EXPECT_EQ(p3.root().text, "__builtin__");
  EXPECT_FALSE(p3.root().remapped);
  EXPECT_TRUE(p3.findings.empty());
}

TEST(PickleMachine, Py2NameTable) {
  struct Case {
    const char *m, *n, *want_m, *want_n;
  } cases[] = {
      {"__builtin__", "xrange", "builtins", "range"},
      {"__builtin__", "unicode", "builtins", "str"},
      {"copy_reg", "_reconstructor", "copyreg", "_reconstructor"},
      {"exceptions", "ValueError", "builtins", "ValueError"},
      {"exceptions", "StandardError", "builtins", "Exception"},
      {"UserDict", "UserDict", "collections", "UserDict"},
      {"UserDict", "IterableUserDict", "collections", "UserDict"},
      {"cPickle", "loads", "pickle", "loads"},
      {"urllib", "urlopen", "urllib.request", "urlopen"},
  };
  for (auto& c : cases) {
    std::string m = c.m, n = c.n;
    EXPECT_TRUE(remap_py2_name(m, n)) << c.m << " " << c.n;
    EXPECT_EQ(m, c.want_m);
    EXPECT_EQ(n, c.want_n);
  }
  std::string m = "torch._utils", n = "_rebuild_tensor_v2";
  EXPECT_FALSE(remap_py2_name(m, n));
  EXPECT_EQ(m, "torch._utils");
  std::string m2 = "posix", n2 = "system";
  EXPECT_FALSE(remap_py2_name(m2, n2));
}

TEST(PickleMachine, InstRemapsAndCollectsArgs) {
  auto r = run("(S'a'\nI2\nicopy_reg\n_reconstructor\n.");
  EXPECT_OK(r);
  const Node& inst = r.root();
  ASSERT_EQ(inst.kind, NodeKind::Inst);
  ASSERT_EQ(inst.items.size(), 3u);
  const Node& cls = r.at(inst.items[0]);
  EXPECT_EQ(cls.kind, NodeKind::Global);
  EXPECT_EQ(cls.text, "copyreg");
  EXPECT_TRUE(cls.remapped);
  EXPECT_EQ(r.at(inst.items[1]).text, "a");
  EXPECT_EQ(r.at(inst.items[2]).i, 2);
}

TEST(PickleMachine, ObjTakesClassFromTheStack) {
  auto r = run("(cfoo\nBar\nK\x05o.");
  EXPECT_OK(r);
  ASSERT_EQ(r.root().kind, NodeKind::Inst);
  ASSERT_EQ(r.root().items.size(), 2u);
  EXPECT_EQ(r.at(r.root().items[0]).name(), "Bar");
  EXPECT_EQ(r.at(r.root().items[1]).i, 5);
  EXPECT_ERR(run("(o."), Rule::pickle_stack_underflow);
}

TEST(PickleMachine, StackGlobalNeedsTwoStrs) {
  auto ok = run("\x80\x04\x8c\x02os\x8c\x06system\x93."sv);
  EXPECT_OK(ok);
  EXPECT_EQ(ok.root().kind, NodeKind::Global);
  EXPECT_EQ(ok.root().text, "os");
  EXPECT_EQ(ok.root().name(), "system");
  EXPECT_FALSE(ok.root().remapped);

  auto bad = run("\x80\x04\x8c\x02osK\x01\x93."sv);
  EXPECT_ERR(bad, Rule::pickle_stack_global_operand);
  EXPECT_EQ(bad.error().offset, 8u);
  // Py2Str (BINSTRING) is not a str for STACK_GLOBAL either.
  EXPECT_ERR(run("\x80\x04U\x02os\x8c\x06system\x93."sv), Rule::pickle_stack_global_operand);
  // CPython's find_class remaps for STACK_GLOBAL too when protocol < 3.
  auto p2 = run("\x80\x02\x8c\x0b__builtin__\x8c\x06xrange\x93."sv);
  EXPECT_OK(p2);
  EXPECT_EQ(p2.root().text, "builtins");
  EXPECT_EQ(p2.root().name(), "range");
}

TEST(PickleMachine, GlobalNamesMustBeStrictUtf8) {
  EXPECT_ERR(run("cos\xff\nsystem\n."sv), Rule::pickle_bad_utf8);
  EXPECT_ERR(run("cos\nsys\xed\xa0\x80\n."sv), Rule::pickle_bad_utf8);  // no surrogates in names
  EXPECT_ERR(run("cos\nsystem"sv), Rule::pickle_truncated);
}

// ---------------------------------------------------------------------------------------------
// Calls and mutations: nothing is executed, everything is recorded.

TEST(PickleMachine, ReduceBecomesACallNode) {
  auto r = run("cposix\nsystem\n(S'touch /tmp/pwned'\ntR.");
  EXPECT_OK(r);
  const Node& call = r.root();
  ASSERT_EQ(call.kind, NodeKind::Call);
  ASSERT_EQ(call.items.size(), 2u);
  const Node& callee = r.at(call.items[0]);
  EXPECT_EQ(callee.kind, NodeKind::Global);
  EXPECT_EQ(callee.text, "posix");
  EXPECT_EQ(callee.name(), "system");
  const Node& args = r.at(call.items[1]);
  ASSERT_EQ(args.kind, NodeKind::Tuple);
  ASSERT_EQ(args.items.size(), 1u);
  EXPECT_EQ(r.at(args.items[0]).kind, NodeKind::Py2Str);
  EXPECT_EQ(r.at(args.items[0]).text, "touch /tmp/pwned");
  EXPECT_EQ(call.offset, 36u);  // the REDUCE byte
}

TEST(PickleMachine, NewObjAndNewObjEx) {
  auto r = run("\x80\x04\x8c\x03mod\x8c\x03" "Cls\x93)}\x92."sv);
  EXPECT_OK(r);
  ASSERT_EQ(r.root().kind, NodeKind::NewObj);
  ASSERT_EQ(r.root().items.size(), 3u);
  EXPECT_EQ(r.at(r.root().items[0]).kind, NodeKind::Global);
  EXPECT_EQ(r.at(r.root().items[1]).kind, NodeKind::Tuple);
  EXPECT_EQ(r.at(r.root().items[2]).kind, NodeKind::Dict);
  auto two = run("cmod\nCls\n)\x81."sv);
  EXPECT_OK(two);
  EXPECT_EQ(two.root().kind, NodeKind::NewObj);
  EXPECT_EQ(two.root().items.size(), 2u);
}

TEST(PickleMachine, BuildRecordsStateAndKeepsTarget) {
  auto r = run("cfoo\nBar\n)\x81}X\x01\x00\x00\x00" "aK\x01sb."sv);
  EXPECT_OK(r);
  const Node& obj = r.root();
  ASSERT_EQ(obj.kind, NodeKind::NewObj);
  ASSERT_EQ(obj.build_states().size(), 1u);
  const Node& state = r.at(obj.build_states()[0]);
  ASSERT_EQ(state.kind, NodeKind::Dict);
  ASSERT_EQ(state.entries().size(), 1u);
  EXPECT_EQ(r.at(state.entries()[0].first).text, "a");
  EXPECT_EQ(r.at(state.entries()[0].second).i, 1);
  EXPECT_ERR(run("}b."), Rule::pickle_stack_underflow);
}

TEST(PickleMachine, SetItemsOnACallNodeAreEntries) {
  auto r = run("ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00kK\x01X\x01\x00\x00\x00mK\x02uX\x01\x00\x00\x00zK\x03s."sv);
  EXPECT_OK(r);
  const Node& od = r.root();
  ASSERT_EQ(od.kind, NodeKind::Call);
  ASSERT_EQ(od.entries().size(), 3u);
  EXPECT_EQ(r.at(od.entries()[0].first).text, "k");
  EXPECT_EQ(r.at(od.entries()[1].second).i, 2);
  EXPECT_EQ(r.at(od.entries()[2].first).text, "z");
  EXPECT_TRUE(od.appended().empty());
}

TEST(PickleMachine, AppendsOnNonListGoToAppended) {
  auto r = run("cfoo\nBag\n)RK\x01" "a(K\x02K\x03" "e."sv);
  EXPECT_OK(r);
  EXPECT_EQ(r.root().kind, NodeKind::Call);
  EXPECT_EQ(r.root().appended().size(), 3u);
  EXPECT_EQ(r.at(r.root().items[1]).kind, NodeKind::Tuple);
  auto list = run("](K\x02K\x03" "eK\x04" "a."sv);
  EXPECT_OK(list);
  EXPECT_EQ(list.root().items.size(), 3u);
  EXPECT_TRUE(list.root().appended().empty());
}

TEST(PickleMachine, AddItemsAndFrozenSet) {
  auto r = run("\x80\x04\x8f(K\x01K\x02\x90."sv);
  EXPECT_OK(r);
  EXPECT_EQ(r.root().kind, NodeKind::Set);
  EXPECT_EQ(r.root().items.size(), 2u);
  auto other = run("](K\x01\x90."sv);  // ADDITEMS on a list: set.update semantics -> appended
  EXPECT_OK(other);
  EXPECT_TRUE(other.root().items.empty());
  EXPECT_EQ(other.root().appended().size(), 1u);
  auto fs = run("(K\x01K\x02\x91."sv);
  EXPECT_OK(fs);
  EXPECT_EQ(fs.root().kind, NodeKind::FrozenSet);
  EXPECT_EQ(fs.root().items.size(), 2u);
}

TEST(PickleMachine, DictAndSetItemsRejectOddCounts) {
  auto d = run("(K\x01K\x02K\x03K\x04" "d."sv);
  EXPECT_OK(d);
  EXPECT_EQ(d.root().kind, NodeKind::Dict);
  EXPECT_EQ(d.root().entries().size(), 2u);
  EXPECT_ERR(run("(K\x01" "d."sv), Rule::pickle_odd_items);
  EXPECT_ERR(run("}(K\x01u."sv), Rule::pickle_odd_items);
}

TEST(PickleMachine, PersistentIds) {
  auto text = run("Pstorage0\n.");
  EXPECT_OK(text);
  ASSERT_EQ(text.root().kind, NodeKind::PersId);
  ASSERT_EQ(text.root().items.size(), 1u);
  EXPECT_EQ(text.at(text.root().items[0]).kind, NodeKind::Str);
  EXPECT_EQ(text.at(text.root().items[0]).text, "storage0");
  EXPECT_ERR(run("Pst\xc3\xa9\n."sv), Rule::pickle_bad_persid);

  auto bin = run("(X\x07\x00\x00\x00storageK\x00tQ."sv);
  EXPECT_OK(bin);
  ASSERT_EQ(bin.root().kind, NodeKind::PersId);
  EXPECT_EQ(bin.at(bin.root().items[0]).kind, NodeKind::Tuple);
}

// ---------------------------------------------------------------------------------------------
// Memo

TEST(PickleMachine, MemoIdentity) {
  auto r = run("]q\x00h\x00h\x00\x87."sv);
  EXPECT_OK(r);
  ASSERT_EQ(r.root().kind, NodeKind::Tuple);
  ASSERT_EQ(r.root().items.size(), 3u);
  EXPECT_EQ(r.root().items[0], r.root().items[1]);
  EXPECT_EQ(r.root().items[1], r.root().items[2]);
  // A self-referencing list (cycle) is representable.
  auto cyc = run("]q\x00h\x00" "a."sv);
  EXPECT_OK(cyc);
  ASSERT_EQ(cyc.root().items.size(), 1u);
  EXPECT_EQ(cyc.root().items[0], cyc.prog().root);
}

TEST(PickleMachine, HugeMemoIndexIsAMapKeyNotAnAllocation) {
  auto r = run("]r\xff\xff\xff\xff" "0j\xff\xff\xff\xff."sv);
  EXPECT_OK(r);
  EXPECT_EQ(r.root().kind, NodeKind::List);
  EXPECT_EQ(r.prog().nodes.size(), 1u);
  // Text PUT/GET with a big decimal index.
  auto t = run("]p4294967295\n0g4294967295\n.");
  EXPECT_OK(t);
  EXPECT_EQ(t.root().kind, NodeKind::List);
  MachineLimits lim;
  lim.max_memo_index = 1000;
  EXPECT_ERR(run("]r\xff\xff\xff\xff."sv, with_limits(lim)), Rule::pickle_limit_memo_index);
  EXPECT_ERR(run("]p99999999999999999999999\n."), Rule::pickle_limit_memo_index);
  EXPECT_ERR(run("]p-1\n."), Rule::pickle_bad_memo_index);
}

TEST(PickleMachine, MemoMissingAndOverwrite) {
  DecodeOptions o;
  o.entry = "archive/data.pkl";
  o.base_offset = 1000;
  auto miss = run("]q\x01h\x02."sv, o);
  EXPECT_ERR(miss, Rule::pickle_memo_missing);
  EXPECT_EQ(miss.error().offset, 1003u);
  EXPECT_EQ(miss.error().entry, "archive/data.pkl");
  EXPECT_NE(miss.error().message.find("2"), std::string::npos);

  auto over = run("]q\x00]q\x00q\x00h\x00."sv);
  EXPECT_OK(over);
  const Finding* f = over.finding(Rule::pickle_memo_overwrite);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->severity, Severity::low);
  EXPECT_EQ(f->offset, 4u);
  EXPECT_NE(f->message.find("2 occurrences"), std::string::npos) << f->message;
  EXPECT_EQ(over.findings.size(), 2u);  // overwrite (deduplicated) + leftover stack
  EXPECT_EQ(over.prog().root, 1u);      // the second list
}

// The memo is a dense array for the indices writers use (0, 1, 2, ...) and a map for far
// ones (issue 14): both read back what was stored, overwrites in either are found, MEMOIZE
// numbers by the entry count, and indices that leap ahead stay correct.
TEST(PickleMachine, MemoDenseAndSparseIndices) {
  std::string s = "\x80\x04"s;
  auto u32 = [&](uint32_t v) { for (int k = 0; k < 4; ++k) s += static_cast<char>(v >> (8 * k)); };
  auto put_int = [&](uint32_t value, uint32_t index) {  // BININT value, LONG_BINPUT index, POP
    s += 'J';
    u32(value);
    s += 'r';
    u32(index);
    s += '0';
  };
  const uint32_t n = 20000;
  for (uint32_t i = 0; i < n; ++i) put_int(i * 3, i);
  const std::vector<uint32_t> far = {3'000'000'000u, 100'000, 400'000, 1'600'000, 6'400'000};
  for (uint32_t k = 0; k < far.size(); ++k) put_int(700 + k, far[k]);
  put_int(111, 5);                 // overwrite, dense
  put_int(222, 3'000'000'000u);    // overwrite, sparse
  s += "J"; u32(999); s += "\x94";  // MEMOIZE: index = entries so far = n + far.size()
  s += '0';
  s += '(';
  auto get = [&](uint32_t index) { s += 'j'; u32(index); };
  for (uint32_t i : {0u, 1u, 5u, n - 1}) get(i);
  for (uint32_t i : far) get(i);
  get(n + static_cast<uint32_t>(far.size()));
  s += "t.";
  auto r = run(s);
  EXPECT_OK(r);
  ASSERT_EQ(r.root().kind, NodeKind::Tuple);
  std::vector<int64_t> got;
  for (NodeId id : r.root().items) got.push_back(r.at(id).i);
  EXPECT_EQ(got, (std::vector<int64_t>{0, 3, 111, (n - 1) * 3, 222, 701, 702, 703, 704, 999}));
  const Finding* f = r.finding(Rule::pickle_memo_overwrite);
  ASSERT_NE(f, nullptr);
  EXPECT_NE(f->message.find("2 occurrences"), std::string::npos) << f->message;
  // A GET of an index never stored, below and above the dense part, is still missing.
  EXPECT_ERR(run("\x80\x04]r\x00\x00\x01\x00j\x05\x00\x00\x00."sv), Rule::pickle_memo_missing);
  EXPECT_ERR(run("\x80\x04]q\x00j\x00\x00\x01\x00."sv), Rule::pickle_memo_missing);
}

TEST(PickleMachine, MemoizeUsesMemoSize) {
  auto r = run("\x80\x04]\x94K\x01\x94h\x00h\x01\x86."sv);
  EXPECT_OK(r);
  const Node& t = r.root();
  EXPECT_EQ(r.at(t.items[0]).kind, NodeKind::List);
  EXPECT_EQ(r.at(t.items[1]).i, 1);
  EXPECT_ERR(run("\x94."sv), Rule::pickle_stack_underflow);
}

// ---------------------------------------------------------------------------------------------
// Scalars

TEST(PickleMachine, IntText) {
  auto f = run("I00\n.");
  EXPECT_OK(f);
  EXPECT_EQ(f.root().kind, NodeKind::Bool);
  EXPECT_FALSE(f.root().b);
  auto t = run("I01\n.");
  EXPECT_EQ(t.root().kind, NodeKind::Bool);
  EXPECT_TRUE(t.root().b);
  EXPECT_EQ(run("I-42\n.").root().i, -42);
  EXPECT_EQ(run("I0x10\n.").root().i, 16);
  EXPECT_EQ(run("I 1_000 \n.").root().i, 1000);
  EXPECT_EQ(run("I0\n.").root().i, 0);
  EXPECT_ERR(run("I010\n."), Rule::pickle_bad_int);  // C's strtol says 8, pickle.py says error
  EXPECT_ERR(run("I1__0\n."), Rule::pickle_bad_int);
  EXPECT_ERR(run("Iabc\n."), Rule::pickle_bad_int);
  EXPECT_ERR(run("I\n."), Rule::pickle_bad_int);
  auto big = run("I9223372036854775808\n.");
  EXPECT_OK(big);
  EXPECT_EQ(big.root().kind, NodeKind::BigInt);
  EXPECT_EQ(big.root().text, "\0\0\0\0\0\0\0\x80\0"sv);
  EXPECT_EQ(run("I-9223372036854775808\n.").root().i, INT64_MIN);
}

TEST(PickleMachine, LongTextAndBinary) {
  auto l = run("L12345678901234567890123L\n.");
  EXPECT_OK(l);
  ASSERT_EQ(l.root().kind, NodeKind::BigInt);
  // 12345678901234567890123 = 0x29D42B64E76714244CB
  EXPECT_EQ(l.root().text, "\xcb\x44\x42\x71\x76\x4e\xb6\x42\x9d\x02"sv);
  auto neg = run("L-9223372036854775809L\n.");
  ASSERT_EQ(neg.root().kind, NodeKind::BigInt);
  EXPECT_EQ(neg.root().text, "\xff\xff\xff\xff\xff\xff\xff\x7f\xff"sv);
  EXPECT_EQ(run("L5\n.").root().i, 5);
  EXPECT_EQ(run("L0xffL\n.").root().i, 255);
  EXPECT_EQ(run("L-0b101L\n.").root().i, -5);
  EXPECT_ERR(run("L" + std::string(4301, '7') + "\n."), Rule::pickle_bad_int);
  EXPECT_OK(run("L" + std::string(4300, '7') + "\n."));

  auto one = run("\x8a\x01\xff."sv);
  EXPECT_EQ(one.root().kind, NodeKind::Int);
  EXPECT_EQ(one.root().i, -1);
  auto zero = run("\x8a\x00."sv);
  EXPECT_EQ(zero.root().i, 0);
  // Redundant sign bytes: 9 bytes but the value fits int64.
  auto padded = run("\x8a\x09\x05\x00\x00\x00\x00\x00\x00\x00\x00."sv);
  EXPECT_EQ(padded.root().kind, NodeKind::Int);
  EXPECT_EQ(padded.root().i, 5);
  auto big4 = run("\x8b\x09\x00\x00\x00" "\x00\x00\x00\x00\x00\x00\x00\x00\x80."sv);
  ASSERT_EQ(big4.root().kind, NodeKind::BigInt);
  EXPECT_EQ(big4.root().text.size(), 9u);
  EXPECT_ERR(run("\x8b\xff\xff\xff\xff."sv), Rule::pickle_negative_length);
  EXPECT_ERR(run("\x8b\x00\x00\x00\x7f\x00."sv), Rule::pickle_bad_length);
}

TEST(PickleMachine, Floats) {
  auto g = run("G\x3f\xf8\x00\x00\x00\x00\x00\x00."sv);
  EXPECT_OK(g);
  EXPECT_EQ(g.root().kind, NodeKind::Float);
  EXPECT_EQ(g.root().f, 1.5);
  EXPECT_EQ(run("G\xc0\x09\x21\xfb\x54\x44\x2d\x18."sv).root().f, -3.141592653589793);
  EXPECT_ERR(run("G\x3f\xf8."sv), Rule::pickle_truncated);
  EXPECT_EQ(run("F-2.5e3\n.").root().f, -2500.0);
  EXPECT_EQ(run("F.5\n.").root().f, 0.5);
  EXPECT_TRUE(std::isinf(run("Finf\n.").root().f));
  EXPECT_LT(run("F-Infinity\n.").root().f, 0);
  EXPECT_TRUE(std::isnan(run("Fnan\n.").root().f));
  EXPECT_EQ(run("F1e-400\n.").root().f, 0.0);  // underflow is fine
  EXPECT_ERR(run("F1e999\n."), Rule::pickle_bad_float);
  EXPECT_ERR(run("F1.5x\n."), Rule::pickle_bad_float);
  EXPECT_ERR(run("F 1.5\n."), Rule::pickle_bad_float);
  EXPECT_ERR(run("F0x1p3\n."), Rule::pickle_bad_float);
}

TEST(PickleMachine, Py2Strings) {
  auto s = run("S'a\\x41\\n\\101\\q\"'\n.");
  EXPECT_OK(s);
  EXPECT_EQ(s.root().kind, NodeKind::Py2Str);
  EXPECT_EQ(s.root().text, "aA\nA\\q\"");
  EXPECT_EQ(run("S\"it's\"\n.").root().text, "it's");
  EXPECT_ERR(run("Sabc\n."), Rule::pickle_bad_string);
  EXPECT_ERR(run("S'abc\"\n."), Rule::pickle_bad_string);
  EXPECT_ERR(run("S'\n."), Rule::pickle_bad_string);
  EXPECT_ERR(run("S'a\\'\n."), Rule::pickle_bad_string);  // trailing backslash inside the quotes
  EXPECT_ERR(run("S'\\x4'\n."), Rule::pickle_bad_string);
  auto bin = run("T\x03\x00\x00\x00\xff\x00z."sv);
  EXPECT_EQ(bin.root().kind, NodeKind::Py2Str);
  EXPECT_EQ(bin.root().text, "\xff\0z"sv);
  EXPECT_ERR(run("T\xff\xff\xff\xff."sv), Rule::pickle_negative_length);
  EXPECT_EQ(run("U\x02hi."sv).root().text, "hi");
}

TEST(PickleMachine, UnicodeAndBytes) {
  auto v = run("V\\u20ac\\\\u0041\xe9\\x\\U0001F600\n."sv);
  EXPECT_OK(v);
  EXPECT_EQ(v.root().kind, NodeKind::Str);
  EXPECT_EQ(v.root().text, "\xe2\x82\xac\\\\u0041\xc3\xa9\\x\xf0\x9f\x98\x80");
  EXPECT_ERR(run("V\\u12\n."), Rule::pickle_bad_unicode);
  EXPECT_ERR(run("V\\U00110000\n."), Rule::pickle_bad_unicode);
  EXPECT_EQ(run("V\\ud800\n.").root().text, "\xed\xa0\x80");  // lone surrogate, surrogatepass form

  EXPECT_EQ(run("X\x03\x00\x00\x00\xed\xa0\x80."sv).root().text, "\xed\xa0\x80");  // surrogatepass
  EXPECT_ERR(run("X\x02\x00\x00\x00\xc3\x28."sv), Rule::pickle_bad_utf8);
  EXPECT_ERR(run("X\x02\x00\x00\x00\xc0\x80."sv), Rule::pickle_bad_utf8);  // overlong
  EXPECT_ERR(run("\x8c\x04\xf4\x90\x80\x80."sv), Rule::pickle_bad_utf8);   // > U+10FFFF
  EXPECT_EQ(run("\x8d\x01\x00\x00\x00\x00\x00\x00\x00z."sv).root().text, "z");

  auto b = run("C\x03\x00\x01\x02."sv);
  EXPECT_EQ(b.root().kind, NodeKind::Bytes);
  EXPECT_EQ(b.root().text, "\0\1\2"sv);
  EXPECT_EQ(run("B\x01\x00\x00\x00q."sv).root().kind, NodeKind::Bytes);
  EXPECT_EQ(run("\x8e\x01\x00\x00\x00\x00\x00\x00\x00q."sv).root().kind, NodeKind::Bytes);
  auto ba = run("\x96\x02\x00\x00\x00\x00\x00\x00\x00xy."sv);
  EXPECT_EQ(ba.root().kind, NodeKind::ByteArray);
  EXPECT_EQ(ba.root().text, "xy");
}

// ---------------------------------------------------------------------------------------------
// Errors and bounds

TEST(PickleMachine, LengthsAreCheckedAgainstRemainingInput) {
  auto r = run("X\xff\xff\xff\xff" "abcdefghijkl"sv);
  EXPECT_ERR(r, Rule::pickle_bad_length);
  EXPECT_EQ(r.error().message, "BINUNICODE length 4294967295 exceeds the 12 bytes left");
  EXPECT_EQ(r.error().offset, 0u);
  EXPECT_ERR(run("\x8e\xff\xff\xff\xff\xff\xff\xff\xff."sv), Rule::pickle_bad_length);
  EXPECT_ERR(run("\x96\xff\xff\xff\xff\xff\xff\xff\x7f."sv), Rule::pickle_bad_length);
  EXPECT_ERR(run("\x8d\x00\x00\x00\x00\x01\x00\x00\x00."sv), Rule::pickle_bad_length);
  MachineLimits lim;
  lim.max_text_bytes = 2;
  EXPECT_ERR(run("C\x03\x00\x01\x02."sv, with_limits(lim)), Rule::pickle_limit_text);
}

TEST(PickleMachine, Truncation) {
  auto eof = run("K\x01");
  EXPECT_ERR(eof, Rule::pickle_truncated);
  EXPECT_EQ(eof.error().offset, 2u);
  auto arg = run("K\x01J\x01\x02");
  EXPECT_ERR(arg, Rule::pickle_truncated);
  EXPECT_EQ(arg.error().offset, 2u);
  EXPECT_NE(arg.error().message.find("BININT"), std::string::npos);
  EXPECT_ERR(run(""), Rule::pickle_truncated);
  EXPECT_ERR(run("I12"), Rule::pickle_truncated);
  MachineLimits lim;
  lim.max_line_bytes = 4;
  EXPECT_ERR(run("I123456\n.", with_limits(lim)), Rule::pickle_line_too_long);
  EXPECT_OK(run("I1234\n.", with_limits(lim)));
}

TEST(PickleMachine, ProtocolAndUnknownOpcodes) {
  auto p = run("\x80\x06N."sv);
  EXPECT_ERR(p, Rule::pickle_bad_protocol);
  auto u = run("N\xff."sv);
  EXPECT_ERR(u, Rule::pickle_unknown_opcode);
  EXPECT_NE(u.error().message.find("0xff"), std::string::npos);
  EXPECT_EQ(u.error().offset, 1u);
  // Exactly the 68 opcodes are known; every other byte is rejected on its own.
  int known = 0;
  for (int b = 0; b < 256; ++b) {
    std::vector<uint8_t> one{static_cast<uint8_t>(b)};
    auto r = run(one);
    bool unknown = !r.result.ok() && r.error().rule == Rule::pickle_unknown_opcode;
    EXPECT_EQ(unknown, opcode_name(static_cast<uint8_t>(b)) == nullptr) << b;
    known += !unknown;
  }
  EXPECT_EQ(known, 68);
}

TEST(PickleMachine, MarksBehaveLikeTheCUnpickler) {
  auto left = run("K\x01K\x02.");
  EXPECT_OK(left);
  EXPECT_EQ(left.root().i, 2);
  EXPECT_TRUE(left.has_finding(Rule::pickle_leftover_stack));
  auto mark = run("(K\x01.");
  EXPECT_OK(mark);
  EXPECT_EQ(mark.root().i, 1);
  EXPECT_EQ(mark.finding(Rule::pickle_leftover_stack)->severity, Severity::low);
  EXPECT_ERR(run("(."), Rule::pickle_stack_underflow);
  EXPECT_ERR(run("K\x01(."), Rule::pickle_stack_underflow);  // STOP cannot pop below a mark
  EXPECT_ERR(run("."), Rule::pickle_stack_underflow);
  // POP with nothing above the topmost mark discards the mark.
  auto pop = run("K\x01(0.");
  EXPECT_OK(pop);
  EXPECT_EQ(pop.root().i, 1);
  EXPECT_FALSE(pop.has_finding(Rule::pickle_leftover_stack));
  EXPECT_ERR(run("0."), Rule::pickle_stack_underflow);
  EXPECT_ERR(run("]K\x01(a."), Rule::pickle_stack_underflow);  // APPEND cannot reach below a mark
  EXPECT_ERR(run("]((e."), Rule::pickle_stack_underflow);  // APPENDS: the list is below the outer mark
  EXPECT_ERR(run("K\x01(2."), Rule::pickle_stack_underflow);
  EXPECT_ERR(run("t."), Rule::pickle_no_mark);
  EXPECT_ERR(run("N\x86."sv), Rule::pickle_stack_underflow);
  auto pm = run("K\x07(K\x01K\x02" "1.");
  EXPECT_OK(pm);
  EXPECT_EQ(pm.root().i, 7);
  auto dup = run("]2\x86."sv);
  EXPECT_OK(dup);
  EXPECT_EQ(dup.root().items[0], dup.root().items[1]);
}

TEST(PickleMachine, StackDepthLimit) {
  MachineLimits lim;
  lim.max_stack_depth = 1000;
  EXPECT_ERR(run(std::string(2000, '('), with_limits(lim)), Rule::pickle_limit_stack);
  EXPECT_ERR(run(std::string(2000, ']'), with_limits(lim)), Rule::pickle_limit_stack);
  std::string mixed;
  for (int k = 0; k < 600; ++k) mixed += "(]";
  EXPECT_ERR(run(mixed, with_limits(lim)), Rule::pickle_limit_stack);
  // 999 nested lists fit.
  std::string nested(999, ']');
  nested += std::string(998, 'a') + ".";
  auto ok = run(nested, with_limits(lim));
  EXPECT_OK(ok);
}

TEST(PickleMachine, OpNodeAndItemLimits) {
  MachineLimits ops;
  ops.max_ops = 3;
  auto r = run("K\x01K\x02K\x03K\x04.", with_limits(ops));
  EXPECT_ERR(r, Rule::pickle_limit_ops);
  EXPECT_EQ(r.error().offset, 6u);
  EXPECT_OK(run("K\x01K\x02.", with_limits(ops)));

  MachineLimits nodes;
  nodes.max_nodes = 2;
  EXPECT_ERR(run("NNN.", with_limits(nodes)), Rule::pickle_limit_nodes);

  MachineLimits items;
  items.max_container_items = 3;
  EXPECT_ERR(run("](NNNNe.", with_limits(items)), Rule::pickle_limit_items);
  EXPECT_OK(run("](NNNe.", with_limits(items)));

  MachineLimits memo;
  memo.max_memo_entries = 2;
  EXPECT_ERR(run("Nq\x00q\x01q\x02."sv, with_limits(memo)), Rule::pickle_limit_memo);
  EXPECT_OK(run("Nq\x00q\x01q\x01."sv, with_limits(memo)));
}

// ---------------------------------------------------------------------------------------------
// Protocol 2+/5 oddities

TEST(PickleMachine, ExtOpcodesAreHighFindings) {
  auto r = run("\x80\x02\x82\x05\x83\x00\x01\x86."sv);
  EXPECT_OK(r);
  ASSERT_EQ(r.root().kind, NodeKind::Tuple);
  EXPECT_EQ(r.at(r.root().items[0]).kind, NodeKind::Ext);
  EXPECT_EQ(r.at(r.root().items[0]).i, 5);
  EXPECT_EQ(r.at(r.root().items[1]).i, 256);
  const Finding* f = r.finding(Rule::pickle_ext_opcode);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->severity, Severity::high);
  EXPECT_EQ(f->offset, 2u);
  EXPECT_EQ(run("\x84\xff\xff\xff\x7f."sv).root().i, 0x7fffffff);
  EXPECT_ERR(run("\x82\x00."sv), Rule::pickle_bad_ext_code);
  EXPECT_ERR(run("\x84\xff\xff\xff\xff."sv), Rule::pickle_bad_ext_code);
}

TEST(PickleMachine, OutOfBandBuffers) {
  auto r = run("\x80\x05\x97\x98."sv);
  EXPECT_OK(r);
  EXPECT_EQ(r.root().kind, NodeKind::Buffer);
  const Finding* f = r.finding(Rule::pickle_out_of_band_buffer);
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->severity, Severity::high);
  EXPECT_ERR(run("\x98."sv), Rule::pickle_stack_underflow);
}

TEST(PickleMachine, Frames) {
  // A proper frame: no findings.
  auto good = run("\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x01."sv);
  EXPECT_OK(good);
  EXPECT_TRUE(good.findings.empty());
  // A frame followed by data outside any frame (how large payloads are written) is fine.
  auto after = run("\x95\x02\x00\x00\x00\x00\x00\x00\x00K\x01" "C\x01z\x86."sv);
  EXPECT_OK(after);
  EXPECT_TRUE(after.findings.empty());

  auto nested = run("\x95\x0c\x00\x00\x00\x00\x00\x00\x00\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x01."sv);
  EXPECT_OK(nested);
  const Finding* n = nested.finding(Rule::pickle_frame_nested);
  ASSERT_NE(n, nullptr);
  EXPECT_EQ(n->severity, Severity::medium);
  EXPECT_EQ(n->offset, 9u);

  auto straddle = run("\x95\x01\x00\x00\x00\x00\x00\x00\x00K\x01."sv);
  EXPECT_OK(straddle);
  const Finding* s = straddle.finding(Rule::pickle_frame_straddle);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->offset, 9u);
  EXPECT_EQ(straddle.root().i, 1);

  auto too_long = run("\x95\x10\x00\x00\x00\x00\x00\x00\x00K\x01."sv);
  EXPECT_ERR(too_long, Rule::pickle_frame_too_long);
  EXPECT_ERR(run("\x95\xff\xff\xff\xff\xff\xff\xff\xff."sv), Rule::pickle_frame_too_long);
  EXPECT_ERR(run("\x95\x01\x00"sv), Rule::pickle_truncated);
}

TEST(PickleMachine, TrailingBytesAreLeftToTheCaller) {
  DecodeOptions o;
  o.base_offset = 500;
  auto r = run("K\x01.garbage", o);
  EXPECT_OK(r);
  EXPECT_EQ(r.prog().stop_offset, 2u);   // relative to the span
  EXPECT_EQ(r.prog().end_offset, 3u);
  EXPECT_EQ(r.root().offset, 500u);      // absolute
  EXPECT_TRUE(r.findings.empty());
  // Two concatenated pickles: the second starts at end_offset.
  auto two = bytes("K\x01.K\x02.");
  auto first = run(two);
  EXPECT_OK(first);
  std::vector<uint8_t> rest(two.begin() + static_cast<ptrdiff_t>(first.prog().end_offset), two.end());
  EXPECT_EQ(run(rest).root().i, 2);
}

TEST(PickleMachine, RepeatedFindingsAreCountedNotRepeated) {
  std::string s = "\x80\x02";
  for (int k = 0; k < 100; ++k) s += "c__builtin__\nlong\n0";
  s += "N.";
  auto r = run(s);
  EXPECT_OK(r);
  ASSERT_EQ(r.findings.size(), 1u);
  EXPECT_NE(r.findings[0].message.find("100 occurrences"), std::string::npos) << r.findings[0].message;
}

TEST(PickleMachine, DistinctRemapsAreReportedUpToACap) {
  std::string s = "\x80\x02";
  for (int k = 0; k < 40; ++k) s += "ccPickle\nf" + std::to_string(k) + "\n0";
  s += "N.";
  auto r = run(s);
  EXPECT_OK(r);
  ASSERT_EQ(r.findings.size(), 33u);
  EXPECT_EQ(r.findings[0].message, "Python-2 name 'cPickle f0' read as 'pickle f0' (protocol < 3)");
  EXPECT_NE(r.findings[32].message.find("8 occurrences"), std::string::npos) << r.findings[32].message;
}

TEST(PickleMachine, LargeStreamDecodesQuickly) {
  // 2 MB of protocol-2 ints in APPENDS batches of 1000, as pickle.dumps(list(range(N))) writes
  // them. The bound is loose on purpose (sanitizer builds run this too); it catches quadratic
  // behaviour, not constant factors.
  std::string s("\x80\x02]q\x00", 5);
  const int batches = 400;
  for (int b = 0; b < batches; ++b) {
    s += '(';
    for (int k = 0; k < 1000; ++k) {
      uint32_t v = static_cast<uint32_t>(b * 1000 + k);
      s += 'J';
      for (int i = 0; i < 4; ++i) s += static_cast<char>((v >> (8 * i)) & 0xFF);
    }
    s += 'e';
  }
  s += '.';
  auto data = bytes(s);
  auto t0 = std::chrono::steady_clock::now();
  auto r = run(data);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_OK(r);
  ASSERT_EQ(r.root().items.size(), static_cast<size_t>(batches) * 1000);
  EXPECT_EQ(r.at(r.root().items.back()).i, batches * 1000 - 1);
  EXPECT_LT(ms, 5000) << "decode of " << data.size() << " bytes took " << ms << " ms";
}

}  // namespace
}  // namespace modelcdr::pickle
