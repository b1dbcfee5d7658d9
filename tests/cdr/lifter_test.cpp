// The lifter's policy on hand-built pickle programs: what is kept, what is dropped, and what
// makes a file rejected. Programs are written with the emitter (for well-formed shapes) or as
// raw opcodes (for hostile ones); nothing is ever executed.
#include <gtest/gtest.h>

#include <cstring>

#include "cdr/lifter.hpp"
#include "pickle/pickle_emitter.hpp"
#include "pickle/pickle_machine.hpp"

using namespace modelcdr;
using pickle::EmitGlobal;
using pickle::PickleEmitter;

namespace {

struct Lifted {
  Result<model::Model> model;
  Findings findings;
};

// The container's table for a program: records of `size` bytes under `keys` ("data/<key>").
cdr::StorageTable zeros_table(std::initializer_list<const char*> keys, uint64_t size) {
  cdr::StorageTable t;
  t.kind = cdr::StorageTable::Kind::zip;
  for (const char* k : keys) t.add(k, cdr::StorageRecord{std::string("data/") + k, size});
  return t;
}

Lifted run(const std::vector<uint8_t>& bytes, const cdr::StorageTable& table = {}) {
  Findings f;
  pickle::DecodeOptions d;
  auto program = pickle::decode(bytes, d, f);
  EXPECT_TRUE(program.ok()) << (program.ok() ? "" : program.error().describe());
  if (!program.ok()) return {program.error(), f};
  cdr::scan_program(*program, "", f);
  return {cdr::lift(*program, table, cdr::LiftOptions{}), f};
}

// Literal bytes, NULs included (a string_view of a literal would stop at the first NUL).
template <size_t N>
std::vector<uint8_t> raw(const char (&s)[N]) {
  return {s, s + N - 1};
}

// ('storage', FloatStorage, key, 'cpu', numel) BINPERSID, then offset/size/stride.
void tensor(PickleEmitter& e, const std::string& key, int64_t numel, int64_t offset, std::vector<int64_t> shape,
            std::vector<int64_t> stride) {
  e.global(EmitGlobal::rebuild_tensor_v2);
  e.mark();
  e.mark();
  e.unicode("storage");
  e.storage_class(model::DType::f32);
  e.unicode(key);
  e.unicode("cpu");
  e.integer(numel);
  e.tuple();
  e.binpersid();
  e.integer(offset);
  e.mark();
  for (auto s : shape) e.integer(s);
  e.tuple();
  e.mark();
  for (auto s : stride) e.integer(s);
  e.tuple();
  e.boolean(false);
  e.global(EmitGlobal::ordered_dict);
  e.tuple_n(0);
  e.reduce();
  e.tuple();
  e.reduce();
}

bool has_rule(const Findings& f, Rule rule) {
  for (const auto& x : f)
    if (x.rule == rule) return true;
  return false;
}

}  // namespace

TEST(Lifter, StateDictWithSharedStorageAndTiedTensor) {
  PickleEmitter e;
  e.proto2();
  e.global(EmitGlobal::ordered_dict);
  e.tuple_n(0);
  e.reduce();
  e.put();  // 0
  e.mark();
  e.unicode("w");
  tensor(e, "0", 12, 0, {3, 4}, {4, 1});
  uint32_t w = e.put();
  e.unicode("w_view");
  tensor(e, "0", 12, 6, {2, 2}, {4, 1});
  e.put();
  e.unicode("tied");
  e.get(w);
  e.setitems();
  e.stop();
  auto l = run(e.bytes(), zeros_table({"0"}, 48));
  ASSERT_TRUE(l.model.ok()) << l.model.error().describe();
  const auto& m = *l.model;
  const auto& root = m.values[m.root];
  ASSERT_EQ(root.kind, model::ValueKind::ordered_dict);
  ASSERT_EQ(root.entries.size(), 3u);
  EXPECT_EQ(m.storages.size(), 1u) << "two views of key '0' share one storage";
  const auto& t0 = m.tensors[m.values[root.entries[0].second].tensor];
  const auto& t1 = m.tensors[m.values[root.entries[1].second].tensor];
  EXPECT_EQ(t0.storage, t1.storage);
  EXPECT_EQ(t1.storage_offset, 6);
  EXPECT_EQ(root.entries[0].second, root.entries[2].second) << "tied entries stay one value";
  EXPECT_TRUE(l.findings.empty());
}

TEST(Lifter, SystemCallIsDroppedAndReported) {
  auto l = run(raw("\x80\x02}q\x00X\x01\x00\x00\x00" "a" "cposix\nsystem\nX\x02\x00\x00\x00id\x85R" "s."));
  ASSERT_TRUE(l.model.ok());
  const auto& m = *l.model;
  const auto& v = m.values[m.values[m.root].entries[0].second];
  EXPECT_EQ(v.kind, model::ValueKind::dropped);
  // One finding per thing (issue 11): the call names the callable and its arguments; the
  // GLOBAL it calls is a detail of it, not a finding of its own.
  EXPECT_FALSE(has_rule(l.findings, Rule::pickle_global_not_allowed));
  ASSERT_TRUE(has_rule(l.findings, Rule::pickle_call));
  bool critical = false;
  for (const auto& f : l.findings) {
    critical |= f.severity == Severity::critical;
    if (f.rule == Rule::pickle_call) {
      EXPECT_NE(f.message.find("'posix system'"), std::string::npos) << f.message;
      EXPECT_NE(f.message.find("('id',)"), std::string::npos) << f.message;
    }
  }
  EXPECT_TRUE(critical);
  EXPECT_TRUE(has_rule(m.findings, Rule::cdr_dropped));
}

TEST(Lifter, UnreachablePayloadIsStillReported) {
  // The call runs during unpickling and is popped before STOP: the root is harmless.
  auto l = run(raw("\x80\x02" "cos\nsystem\nX\x02\x00\x00\x00id\x85R0K\x07."));
  ASSERT_TRUE(l.model.ok());
  EXPECT_EQ(l.model->values[l.model->root].kind, model::ValueKind::integer);
  EXPECT_TRUE(has_rule(l.findings, Rule::pickle_call));
}

TEST(Lifter, ViewOutsideStorageIsRejected) {
  PickleEmitter e;
  e.proto2();
  tensor(e, "0", 4, 2, {2, 2}, {2, 1});  // reaches element 5 of 4
  e.stop();
  auto l = run(e.bytes(), zeros_table({"0"}, 16));
  ASSERT_FALSE(l.model.ok());
  EXPECT_EQ(l.model.error().rule, Rule::cdr_tensor_out_of_bounds);
}

// Plain hand-offs (issue 14): lift reads the container's table only. A storage it lifts is
// named and sized from its record, holds no bytes (the container binds them afterwards) and
// the binding says which record it came from.
TEST(Lifter, StoragesComeFromTheTableUnbound) {
  PickleEmitter e;
  e.proto2();
  e.mark();
  tensor(e, "b", 4, 0, {4}, {1});
  tensor(e, "a", 2, 0, {2}, {1});
  e.tuple();
  e.stop();
  cdr::StorageTable t;
  t.kind = cdr::StorageTable::Kind::zip;
  t.add("a", cdr::StorageRecord{"archive/data/a", 8});
  t.add("b", cdr::StorageRecord{"archive/data/b", 16});
  t.add("unused", cdr::StorageRecord{"archive/data/unused", 4});
  Findings f;
  auto program = pickle::decode(e.bytes(), pickle::DecodeOptions{}, f);
  ASSERT_TRUE(program.ok());
  cdr::StorageBinding binding;
  auto m = cdr::lift(*program, t, cdr::LiftOptions{}, &binding);
  ASSERT_TRUE(m.ok()) << m.error().describe();
  ASSERT_EQ(m->storages.size(), 2u);
  ASSERT_EQ(binding.size(), 2u);
  EXPECT_EQ(m->storages[0].source, "archive/data/b");
  EXPECT_EQ(m->storages[0].nbytes, 16u);
  EXPECT_EQ(binding[0], 1u);
  EXPECT_EQ(m->storages[1].source, "archive/data/a");
  EXPECT_EQ(binding[1], 0u);
  for (const auto& s : m->storages) EXPECT_TRUE(s.bytes.empty()) << "the lifter reads no payload";
}

// The table's records are views (a zip's entry names); a duplicate key keeps the first record,
// as a lookup of the zip by name does, and two tensors on one key share one storage.
TEST(Lifter, StorageSharedByKeyAndFirstOfDuplicateRecordsWins) {
  PickleEmitter e;
  e.proto2();
  e.mark();
  tensor(e, "a", 2, 0, {2}, {1});
  tensor(e, "a", 2, 0, {1}, {1});
  e.tuple();
  e.stop();
  const std::string first = "archive/data/a", second = "archive/data/a (second)";
  cdr::StorageTable t;
  t.kind = cdr::StorageTable::Kind::zip;
  EXPECT_TRUE(t.add_view("a", first, 8));
  EXPECT_FALSE(t.add_view("a", second, 4));
  EXPECT_EQ(t.size(), 1u);
  EXPECT_EQ(t.find("b"), -1);
  Findings f;
  auto program = pickle::decode(e.bytes(), pickle::DecodeOptions{}, f);
  ASSERT_TRUE(program.ok());
  cdr::StorageBinding binding;
  auto m = cdr::lift(*program, t, cdr::LiftOptions{}, &binding);
  ASSERT_TRUE(m.ok()) << m.error().describe();
  ASSERT_EQ(m->storages.size(), 1u);
  ASSERT_EQ(m->tensors.size(), 2u);
  EXPECT_EQ(m->tensors[0].storage, m->tensors[1].storage);
  EXPECT_EQ(m->storages[0].source, first);
  EXPECT_EQ(m->storages[0].nbytes, 8u);
  EXPECT_EQ(binding[0], 0u);
}

TEST(Lifter, RecordMissingOrOfAnotherSizeIsRejected) {
  PickleEmitter e;
  e.proto2();
  tensor(e, "0", 4, 0, {4}, {1});
  e.stop();
  auto missing = run(e.bytes(), zeros_table({"1"}, 16));
  ASSERT_FALSE(missing.model.ok());
  EXPECT_EQ(missing.model.error().rule, Rule::torch_missing_storage);
  auto short_record = run(e.bytes(), zeros_table({"0"}, 12));
  ASSERT_FALSE(short_record.model.ok());
  EXPECT_EQ(short_record.model.error().rule, Rule::torch_storage_size_mismatch);
  auto none = run(e.bytes());  // a stream without records (bare pickle, joblib)
  ASSERT_FALSE(none.model.ok());
  EXPECT_EQ(none.model.error().rule, Rule::cdr_no_storage);
  cdr::StorageTable tar = zeros_table({"0"}, 12);
  tar.kind = cdr::StorageTable::Kind::tar;  // the tar format's record size is the storage's size
  auto tar_lift = run(e.bytes(), tar);
  ASSERT_FALSE(tar_lift.model.ok());
  EXPECT_EQ(tar_lift.model.error().rule, Rule::cdr_tensor_out_of_bounds) << "4 floats do not fit 12 bytes";
}

TEST(Lifter, HugeStrideOverflowIsRejected) {
  PickleEmitter e;
  e.proto2();
  tensor(e, "0", 4, 0, {3, 2}, {INT64_MAX / 2, 1});
  e.stop();
  auto l = run(e.bytes(), zeros_table({"0"}, 16));
  ASSERT_FALSE(l.model.ok());
  EXPECT_EQ(l.model.error().rule, Rule::cdr_tensor_out_of_bounds);
}

TEST(Lifter, StorageKeyWithTwoDtypesIsRejected) {
  PickleEmitter e;
  e.proto2();
  e.mark();
  tensor(e, "0", 4, 0, {4}, {1});
  // same key as int64
  e.global(EmitGlobal::rebuild_tensor_v2);
  e.mark();
  e.mark();
  e.unicode("storage");
  e.storage_class(model::DType::i64);
  e.unicode("0");
  e.unicode("cpu");
  e.integer(2);
  e.tuple();
  e.binpersid();
  e.integer(0);
  e.integer(2);
  e.tuple_n(1);
  e.integer(1);
  e.tuple_n(1);
  e.boolean(false);
  e.none();
  e.tuple();
  e.reduce();
  e.tuple();
  e.stop();
  auto l = run(e.bytes(), zeros_table({"0"}, 16));
  ASSERT_FALSE(l.model.ok());
  EXPECT_EQ(l.model.error().rule, Rule::cdr_storage_dtype_conflict);
}

TEST(Lifter, MetadataIsKeptOtherBuildStateDropped) {
  auto l = run(raw("\x80\x02" "ccollections\nOrderedDict\n)R}X\t\x00\x00\x00_metadata}X\x00\x00\x00\x00K\x01ssb."));
  ASSERT_TRUE(l.model.ok());
  const auto& root = l.model->values[l.model->root];
  EXPECT_EQ(root.kind, model::ValueKind::ordered_dict);
  EXPECT_NE(root.metadata, model::kNoValue);
  auto l2 = run(raw("\x80\x02" "ccollections\nOrderedDict\n)R}X\x04\x00\x00\x00" "evilK\x01sb."));
  ASSERT_TRUE(l2.model.ok());
  EXPECT_EQ(l2.model->values[l2.model->root].metadata, model::kNoValue);
  EXPECT_TRUE(has_rule(l2.model->findings, Rule::cdr_dropped));
}

TEST(Lifter, NumpyFloat64ScalarBecomesNumber) {
  // numpy.core.multiarray.scalar(numpy.dtype('f8'), _codecs.encode('\x00...\xf0?', 'latin1')) == 1.0
  using namespace std::string_literals;
  std::string payload = "\x00\x00\x00\x00\x00\x00\xc3\xb0?"s;  // latin-1 text of 00*6 F0 3F, UTF-8 encoded
  std::string p = "\x80\x02" "cnumpy.core.multiarray\nscalar\n" "cnumpy\ndtype\nX\x02\x00\x00\x00" "f8\x89\x88\x87R"
                  "(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
                  "c_codecs\nencode\nX"s;
  uint32_t n = static_cast<uint32_t>(payload.size());
  p += std::string(reinterpret_cast<const char*>(&n), 4) + payload + "X\x06\x00\x00\x00latin1\x86R\x86R."s;
  auto l = run(std::vector<uint8_t>(p.begin(), p.end()));
  ASSERT_TRUE(l.model.ok()) << l.model.error().describe();
  const auto& v = l.model->values[l.model->root];
  ASSERT_EQ(v.kind, model::ValueKind::floating);
  EXPECT_EQ(v.f, 1.0);
  EXPECT_TRUE(has_rule(l.model->findings, Rule::cdr_converted));
}

// Issue 12: bytes holding a pickle are rebuilt by our writer (never passed through); what the
// inner pickle imports is dropped inside it, so its GLOBAL does not survive.
TEST(Lifter, NestedPickleInBytesIsRebuiltWithoutItsGlobal) {
  auto l = run(raw("\x80\x03" "C\x0b\x80\x02" "cos\nsys\n." "\x85."));
  ASSERT_TRUE(l.model.ok());
  const auto& root = l.model->values[l.model->root];
  ASSERT_EQ(root.kind, model::ValueKind::tuple);
  const auto& inner = l.model->values[root.items[0]];
  ASSERT_EQ(inner.kind, model::ValueKind::bytes);
  EXPECT_NE(inner.text, std::string("\x80\x02" "cos\nsys\n."));
  EXPECT_EQ(inner.text.find("sys"), std::string::npos);
  EXPECT_TRUE(has_rule(l.model->findings, Rule::cdr_nested_pickle_rebuilt));
}

TEST(Lifter, EmbeddedPickleDetection) {
  EXPECT_TRUE(cdr::looks_like_embedded_pickle("gASVIAAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOU"));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle("80049520000000000000008c05706f736978"));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle("cos\nsystem\n(S'ls'\ntR."));
  EXPECT_FALSE(cdr::looks_like_embedded_pickle("conv1.weight"));
  EXPECT_FALSE(cdr::looks_like_embedded_pickle("a plain sentence ending in a period."));
  EXPECT_FALSE(cdr::looks_like_embedded_pickle("deadbeefcafe0123"));
}

TEST(Lifter, CycleIsDroppedNotLooped) {
  // l = []; l.append(l)
  auto l = run(raw("\x80\x02]q\x00h\x00" "a."));
  ASSERT_TRUE(l.model.ok());
  const auto& root = l.model->values[l.model->root];
  ASSERT_EQ(root.kind, model::ValueKind::list);
  ASSERT_EQ(root.items.size(), 1u);
  EXPECT_EQ(l.model->values[root.items[0]].kind, model::ValueKind::dropped);
}

TEST(Lifter, DeepNestingIsRejected) {
  std::string p = "\x80\x02";
  for (int i = 0; i < 600; ++i) p += "]";
  for (int i = 0; i < 599; ++i) p += "a";
  p += ".";
  auto l = run(std::vector<uint8_t>(p.begin(), p.end()));
  ASSERT_FALSE(l.model.ok());
  EXPECT_EQ(l.model.error().rule, Rule::limits_depth);
}

// LONG_BINPUT / LONG_BINGET with a 4-byte index.
void put_get(std::string& p, char op, uint32_t i) {
  p += op;
  for (int k = 0; k < 4; ++k) p += static_cast<char>(i >> (8 * k));
}

TEST(Lifter, DepthThroughCachedValuesIsBounded) {
  // L0 = []; for i: R.append({L(i-1): None}); L(i) = [L(i-1)]; finally R.append(L(n)).
  // Each L(i) is first lifted shallow (as a dropped dict key) and later nested through the
  // cache: the cached value's own height must count, or the chain reaches n levels.
  const uint32_t n = 20000;
  std::string p = "\x80\x02]";
  p += "]";
  put_get(p, 'r', 0);
  p += "0";
  for (uint32_t i = 1; i <= n; ++i) {
    p += "}";
    put_get(p, 'j', i - 1);
    p += "Nsa]";
    put_get(p, 'j', i - 1);
    p += "a";
    put_get(p, 'r', i);
    p += "0";
  }
  put_get(p, 'j', n);
  p += "a.";
  auto l = run(std::vector<uint8_t>(p.begin(), p.end()));
  ASSERT_FALSE(l.model.ok());
  EXPECT_EQ(l.model.error().rule, Rule::limits_depth);
}

TEST(Lifter, SharedSubmodulesDoNotExpandPerPath) {
  // m0 = Net(); m(i)._modules = {a: m(i-1), b: m(i-1)}: 2^60 paths through 60 modules.
  auto str = [](const std::string& t) {  // BINUNICODE
    std::string o = "X";
    for (int k = 0; k < 4; ++k) o += static_cast<char>(t.size() >> (8 * k));
    return o + t;
  };
  const std::string od = "ccollections\nOrderedDict\n)R";
  auto module = [&](std::string& p, int child) {
    p += "c__main__\nNet\n)\x81}";
    p += str("_parameters") + od + "s";
    p += str("_buffers") + od + "s";
    p += str("_modules") + od;
    if (child >= 0) {
      p += str("a");
      put_get(p, 'j', static_cast<uint32_t>(child));
      p += "s" + str("b");
      put_get(p, 'j', static_cast<uint32_t>(child));
      p += "s";
    }
    p += "sb";
  };
  std::string p = "\x80\x02";
  for (int i = 0; i < 60; ++i) {
    module(p, i - 1);
    put_get(p, 'r', static_cast<uint32_t>(i));
    if (i + 1 < 60) p += "0";
  }
  p += ".";
  auto l = run(std::vector<uint8_t>(p.begin(), p.end()));
  ASSERT_FALSE(l.model.ok());
  EXPECT_EQ(l.model.error().rule, Rule::limits_expansion);
}

TEST(Lifter, SharedKeyTuplesAreCheckedOnce) {
  // t0 = (); t(i) = (t(i-1), t(i-1)); {t(80): None}: the hashability walk is memoised.
  std::string p = "\x80\x02})";
  put_get(p, 'r', 0);
  for (uint32_t i = 1; i <= 80; ++i) {
    put_get(p, 'j', i - 1);
    put_get(p, 'j', i - 1);
    p += "\x86";
    put_get(p, 'r', i);
    p += "0";
  }
  p += "0";
  put_get(p, 'j', 80);
  p += "Ns.";
  auto l = run(std::vector<uint8_t>(p.begin(), p.end()));
  ASSERT_TRUE(l.model.ok());
  const auto& root = l.model->values[l.model->root];
  EXPECT_EQ(root.entries.size(), 1u);
}

TEST(Lifter, WholeModuleBecomesStateDict) {
  // __main__.Net NEWOBJ + BUILD {'_parameters': OrderedDict(w=tensor), '_buffers': OrderedDict(),
  //                             '_modules': OrderedDict(fc=<Linear NEWOBJ + BUILD {...}>)}
  PickleEmitter e;
  auto module_open = [&](const char* mod, const char* cls) {
    std::string g = std::string("c") + mod + "\n" + cls + "\n";
    e.bytes().insert(e.bytes().end(), g.begin(), g.end());
    e.tuple_n(0);
    e.bytes().push_back(0x81);  // NEWOBJ
    e.empty_dict();
    e.mark();
  };
  auto od_with_tensor = [&](const char* name, const char* key) {
    e.global(EmitGlobal::ordered_dict);
    e.tuple_n(0);
    e.reduce();
    if (name) {
      e.unicode(name);
      tensor(e, key, 4, 0, {4}, {1});
      e.setitem();
    }
  };
  e.proto2();
  module_open("__main__", "Net");
  e.unicode("_parameters");
  od_with_tensor("w", "0");
  e.unicode("_buffers");
  od_with_tensor(nullptr, nullptr);
  e.unicode("_modules");
  e.global(EmitGlobal::ordered_dict);
  e.tuple_n(0);
  e.reduce();
  e.unicode("fc");
  module_open("torch.nn.modules.linear", "Linear");
  e.unicode("_parameters");
  od_with_tensor("bias", "1");
  e.unicode("_buffers");
  od_with_tensor(nullptr, nullptr);
  e.unicode("_modules");
  od_with_tensor(nullptr, nullptr);
  e.setitems();
  e.build();
  e.setitem();
  e.setitems();
  e.build();
  e.stop();
  auto l = run(e.bytes(), zeros_table({"0", "1"}, 16));
  ASSERT_TRUE(l.model.ok()) << l.model.error().describe();
  const auto& m = *l.model;
  const auto& root = m.values[m.root];
  ASSERT_EQ(root.kind, model::ValueKind::ordered_dict);
  ASSERT_EQ(root.entries.size(), 2u);
  EXPECT_EQ(m.values[root.entries[0].first].text, "w");
  EXPECT_EQ(m.values[root.entries[1].first].text, "fc.bias");
  ASSERT_EQ(m.architecture.size(), 2u);
  EXPECT_EQ(m.architecture[0].class_name, "Net");
  EXPECT_EQ(m.architecture[1].path, "fc");
  EXPECT_EQ(m.architecture[1].class_module, "torch.nn.modules.linear");
}

// LiftOptions::scan_only: the floats of lists share one value, and nothing a scan reads
// changes: the same findings (or the same error) and list lengths, and the graph check agrees.
std::vector<uint8_t> nested_float_lists(int levels, bool memo_float, bool append_on_float) {
  std::vector<uint8_t> b = {0x80, 0x02};
  auto binfloat = [&](double d) {
    b.push_back('G');
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    for (int i = 7; i >= 0; --i) b.push_back(static_cast<uint8_t>(bits >> (8 * i)));
  };
  for (int l = 0; l < levels; ++l) {
    b.push_back(']');  // EMPTY_LIST
    b.push_back('(');  // MARK
    binfloat(1.5 + l);
    if (l == 0 && memo_float) b.insert(b.end(), {'q', 0});  // BINPUT 0: the float is shared below
    if (l == 1 && memo_float) b.insert(b.end(), {'h', 0});  // BINGET 0
    binfloat(-2.0 * l);
    if (l + 1 == levels && append_on_float) {  // APPEND onto a float: the lifter reports it
      binfloat(7.0);
      b.insert(b.end(), {']', 'a'});
    }
  }
  // APPENDS: each level's floats, and the list inside it, into that level's list.
  for (int l = 0; l < levels; ++l) b.push_back('e');
  b.push_back('.');
  return b;
}

TEST(Lifter, ScanOnlySharesListFloatsAndChangesNothingAScanReads) {
  for (int levels = 1; levels <= 6; ++levels)
    for (bool memo : {false, true})
      for (bool append : {false, true}) {
        SCOPED_TRACE(testing::Message() << "levels " << levels << " memo " << memo << " append " << append);
        auto bytes = nested_float_lists(levels, memo, append);
        Findings df;
        auto program = pickle::decode(bytes, pickle::DecodeOptions{}, df);
        if (!program.ok()) continue;  // a shape the machine refuses says nothing about the lifter
        cdr::LiftOptions full, scan;
        full.max_depth = scan.max_depth = 4;
        scan.scan_only = true;
        auto a = cdr::lift(*program, cdr::StorageTable{}, full);
        auto b = cdr::lift(*program, cdr::StorageTable{}, scan);
        ASSERT_EQ(a.ok(), b.ok());
        if (!a.ok()) {
          EXPECT_EQ(a.error().rule, b.error().rule);
          EXPECT_EQ(a.error().offset, b.error().offset);
          continue;
        }
        ASSERT_EQ(a->findings.size(), b->findings.size());
        for (size_t i = 0; i < a->findings.size(); ++i) {
          EXPECT_EQ(a->findings[i].rule, b->findings[i].rule);
          EXPECT_EQ(a->findings[i].message, b->findings[i].message);
          EXPECT_EQ(a->findings[i].offset, b->findings[i].offset);
        }
        EXPECT_EQ(limits::check_value_graph(*a).ok(), limits::check_value_graph(*b).ok());
        std::vector<size_t> la, lb;
        for (const auto& v : a->values)
          if (v.kind == model::ValueKind::list) la.push_back(v.items.size());
        for (const auto& v : b->values)
          if (v.kind == model::ValueKind::list) lb.push_back(v.items.size());
        EXPECT_EQ(la, lb);
        if (levels >= 2) EXPECT_LT(b->values.size(), a->values.size());  // the floats are shared
      }
}

// lift_consuming returns the program's pages to the kernel while a large root mapping is lifted
// (issue 14): what it builds must be what lift() builds, including for entries that reach back
// to nodes of much earlier entries (tied tensors and a shared string through the memo) and for
// the `_metadata` BUILD read after every entry. 20k tensors: a program of several MB, so that
// many batches of pages are released before the last entry.
TEST(Lifter, ConsumingLiftBuildsTheSameModel) {
  const int n = 20000;
  PickleEmitter e;
  cdr::StorageTable table;
  table.kind = cdr::StorageTable::Kind::zip;
  e.proto2();
  e.global(EmitGlobal::ordered_dict);
  e.tuple_n(0);
  e.reduce();
  e.mark();
  std::vector<uint32_t> tensors;
  uint32_t shared = 0;
  for (int k = 0; k < n; ++k) {
    e.unicode("layer" + std::to_string(k) + ".weight");
    if (k % 5 == 4) {
      e.get(tensors[tensors.size() / 3]);  // tied to a tensor lifted long before
    } else if (k % 11 == 10) {
      if (shared == 0) {
        e.unicode("a string shared by many entries");
        shared = e.put();
      } else {
        e.get(shared);
      }
    } else {
      const std::string key = std::to_string(k);
      tensor(e, key, 16, 0, {4, 4}, {4, 1});
      tensors.push_back(e.put());
      table.add(key, cdr::StorageRecord{"data/" + key, 64});
    }
    if (k % 1000 == 999) {
      e.setitems();
      e.mark();
    }
  }
  e.setitems();
  e.empty_dict();
  e.unicode("_metadata");
  e.empty_dict();
  e.unicode("");
  e.integer(1);
  e.setitem();
  e.setitem();
  e.build();
  e.stop();

  Findings f;
  auto a = pickle::decode(e.bytes(), pickle::DecodeOptions{}, f);
  auto b = pickle::decode(e.bytes(), pickle::DecodeOptions{}, f);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_GT(a->nodes.size() * sizeof(pickle::Node), size_t{4} << 20) << "large enough to release pages";
  cdr::StorageBinding bind_a, bind_b;
  auto ma = cdr::lift(*a, table, cdr::LiftOptions{}, &bind_a);
  auto mb = cdr::lift_consuming(std::move(*b), table, cdr::LiftOptions{}, &bind_b);
  ASSERT_TRUE(ma.ok() && mb.ok());
  EXPECT_TRUE(b->nodes.empty()) << "the consumed program is cleared";
  EXPECT_EQ(bind_a, bind_b);
  EXPECT_EQ(ma->root, mb->root);
  ASSERT_EQ(ma->values.size(), mb->values.size());
  for (size_t i = 0; i < ma->values.size(); ++i) {
    const auto &x = ma->values[i], &y = mb->values[i];
    ASSERT_TRUE(x.kind == y.kind && x.i == y.i && x.text == y.text && x.items == y.items && x.entries == y.entries &&
                x.metadata == y.metadata && x.tensor == y.tensor)
        << "value " << i;
  }
  ASSERT_EQ(ma->tensors.size(), mb->tensors.size());
  for (size_t i = 0; i < ma->tensors.size(); ++i) {
    const auto &x = ma->tensors[i], &y = mb->tensors[i];
    ASSERT_TRUE(x.storage == y.storage && x.shape == y.shape && x.stride == y.stride &&
                x.storage_offset == y.storage_offset && x.dtype == y.dtype)
        << "tensor " << i;
  }
  ASSERT_EQ(ma->storages.size(), mb->storages.size());
  for (size_t i = 0; i < ma->storages.size(); ++i)
    ASSERT_TRUE(ma->storages[i].source == mb->storages[i].source && ma->storages[i].nbytes == mb->storages[i].nbytes);
  EXPECT_EQ(ma->findings.size(), mb->findings.size());
  // The shape the test is about: tied entries share a value, `_metadata` is kept.
  const auto& root = mb->values[mb->root];
  ASSERT_EQ(root.entries.size(), static_cast<size_t>(n));
  EXPECT_EQ(root.entries[4].second, root.entries[1].second) << "entry 4 is tied to the tensor of entry 1";
  EXPECT_EQ(mb->tensors.size(), tensors.size());
  EXPECT_NE(root.metadata, model::kNoValue);
}
