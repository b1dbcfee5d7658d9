// Content rules of issue 16: equal dict keys merge as in CPython's unpickler, and the nested-
// pickle check runs the pickle machine on every candidate (no-op prefixes, bytes after STOP,
// base64/hex layers). Programs are raw opcodes; nothing is executed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "cdr/lifter.hpp"
#include "cdr/nested_pickle.hpp"
#include "pickle/pickle_machine.hpp"

using namespace modelcdr;

namespace {

std::string evil() { return "cos\nsystem\n(S'echo pwned'\ntR."; }

std::string b64(const std::string& in, bool urlsafe = false, bool pad = true) {
  const char* tab = urlsafe ? "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
                            : "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = acc << 8 | c;
    bits += 8;
    while (bits >= 6) out.push_back(tab[(acc >> (bits -= 6)) & 63]);
  }
  if (bits) out.push_back(tab[(acc << (6 - bits)) & 63]);
  while (pad && out.size() % 4) out.push_back('=');
  return out;
}

std::string hex(const std::string& in) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : in) {
    out.push_back(d[c >> 4]);
    out.push_back(d[c & 15]);
  }
  return out;
}

TEST(EmbeddedPickle, BypassesOfThePrefixCheckAreCaught) {
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(evil()));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle("N0" + evil()));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(evil() + "\n"));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(b64("N0" + evil())));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(b64(evil() + "\n")));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(b64("N0" + evil(), true, false)));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(hex("N0" + evil())));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(b64(hex(evil() + "\n"))));
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(std::string("\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00N.\r\n", 15)));
  // the same protocol-4 bytes held in a str (latin-1 code points, UTF-8 text)
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(std::string("\xc2\x80\x04\xc2\x95\x02\x00\x00\x00\x00\x00\x00\x00N.", 15)));
}

TEST(EmbeddedPickle, FragmentsCount) {
  EXPECT_TRUE(cdr::looks_like_embedded_pickle("cos\nsystem\n"));            // only STOP missing
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(b64("\x80\x02" "cos\nsystem\n(S'ls")));  // header, cut, base64
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(evil().substr(0, evil().size() - 1)));
  EXPECT_FALSE(cdr::looks_like_embedded_pickle("cos\nsys"));                  // a cut argument without header
}

TEST(EmbeddedPickle, LongValidRunsFailClosed) {
  std::string run;
  for (int i = 0; i < 200000; ++i) run += "N0";
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(run + evil()));
}

TEST(EmbeddedPickle, PlainTextIsNotAPickle) {
  for (const char* s : {"", "N", ".", "conv1.weight", "layer.0.bias", "hello world", "abcd", "deadbeef", "QUFBQQ==",
                        "0.5", "cos", "((", "torch.float32", "aGVsbG8gd29ybGQ="})
    EXPECT_FALSE(cdr::looks_like_embedded_pickle(s)) << s;
}

struct Lifted {
  Result<model::Model> model;
};

Lifted lift_raw(const std::string& bytes) {
  Findings f;
  pickle::DecodeOptions d;
  std::vector<uint8_t> data(bytes.begin(), bytes.end());
  auto program = pickle::decode(data, d, f);
  EXPECT_TRUE(program.ok()) << (program.ok() ? "" : program.error().describe());
  if (!program.ok()) return {program.error()};
  return {cdr::lift(*program, cdr::StorageTable{}, cdr::LiftOptions{})};
}

std::string uni(const std::string& s) {
  uint32_t n = static_cast<uint32_t>(s.size());
  return "X" + std::string(reinterpret_cast<const char*>(&n), 4) + s;
}

std::string binfloat(double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, 8);
  std::string out = "G";
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>(bits >> (8 * i)));
  return out;
}

// {k1: v1, k2: v2, ...} via one SETITEMS
std::string dict_of(const std::vector<std::pair<std::string, std::string>>& kv) {
  std::string s = "\x80\x02}(";
  for (auto& [k, v] : kv) s += k + v;
  return s + "u.";
}

int duplicate_findings(const model::Model& m) {
  int n = 0;
  for (const auto& f : m.findings) n += f.rule == Rule::cdr_duplicate_key;
  return n;
}

TEST(DictKeys, EqualNumbersMergeFirstKeyLastValue) {
  auto l = lift_raw(dict_of({{"K\x01", uni("a")}, {"\x88", uni("b")}, {binfloat(1.0), uni("c")}, {uni("k"), uni("d")}}));
  ASSERT_TRUE(l.model.ok());
  const auto& m = *l.model;
  const auto& root = m.values[m.root];
  ASSERT_EQ(root.entries.size(), 2u);
  EXPECT_EQ(m.values[root.entries[0].first].kind, model::ValueKind::integer);  // the first key object stays
  EXPECT_EQ(m.values[root.entries[0].second].text, "c");                      // the last value wins
  EXPECT_EQ(m.values[root.entries[1].second].text, "d");
  EXPECT_EQ(duplicate_findings(m), 2);
}

TEST(DictKeys, ZeroSignTuplesAndTypes) {
  // -0.0 == 0; (1, 2) == (1.0, 2); 'a' != b'a'
  std::string tuple12 = "K\x01K\x02\x86", tuple12f = binfloat(1.0) + "K\x02\x86";
  auto l = lift_raw(dict_of({{binfloat(-0.0), uni("x")}, {std::string("K\x00", 2), uni("y")}, {tuple12, uni("t1")}, {tuple12f, uni("t2")},
                             {uni("a"), uni("s")}, {"C\x01" "a", uni("b")}}));
  ASSERT_TRUE(l.model.ok());
  const auto& m = *l.model;
  const auto& root = m.values[m.root];
  ASSERT_EQ(root.entries.size(), 4u);
  EXPECT_EQ(m.values[root.entries[0].second].text, "y");
  EXPECT_EQ(m.values[root.entries[1].second].text, "t2");
  EXPECT_EQ(duplicate_findings(m), 2);
}

TEST(DictKeys, NaNKeyRejectsTheFile) {
  auto l = lift_raw(dict_of({{binfloat(std::nan("")), uni("a")}, {uni("k"), uni("d")}}));
  ASSERT_FALSE(l.model.ok());
  EXPECT_EQ(l.model.error().rule, Rule::cdr_ambiguous_key);
}

TEST(DictKeys, OrderedDictPairsMerge) {
  // collections.OrderedDict([('w', 1), ('b', 2), ('w', 3)])
  std::string s = "\x80\x02" "ccollections\nOrderedDict\n" "](" + uni("w") + "K\x01\x86" + uni("b") + "K\x02\x86" + uni("w") +
                  "K\x03\x86" "e\x85R.";
  auto l = lift_raw(s);
  ASSERT_TRUE(l.model.ok());
  const auto& m = *l.model;
  const auto& root = m.values[m.root];
  ASSERT_EQ(root.entries.size(), 2u);
  EXPECT_EQ(m.values[root.entries[0].first].text, "w");
  EXPECT_EQ(m.values[root.entries[0].second].i, 3);
  EXPECT_EQ(duplicate_findings(m), 1);
}

}  // namespace

// Storage keys of persistent ids are decimal record names; "8002".."8005" read as hex are a
// protocol header (80 02), which made every state dict of 8003+ tensors lose tensors. The
// exemption is for that tuple slot only: the same text as a plain value is still a candidate.
TEST(EmbeddedPickle, StorageKeysAreNotCandidates) {
  auto findings_of = [](const std::string& bytes) {
    pickle::DecodeOptions o;
    o.entry = "data.pkl";
    Findings decode_findings, scan;
    auto prog = pickle::decode(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()),
                               o, decode_findings);
    EXPECT_TRUE(prog.ok());
    if (prog.ok()) cdr::scan_program(*prog, "data.pkl", scan);
    int nested = 0;
    for (const auto& f : scan) nested += f.rule == Rule::pickle_nested_pickle;
    return nested;
  };
  // A decimal record name whose hex reading is a pickle (PROTO 2, five NONE, STOP): 8+ bytes,
  // since shorter decodings are no candidates ("8002" alone is only a protocol header).
  const std::string key = std::string("X\x10\x00\x00\x00", 5) + "80024e4e4e4e4e2e";
  const std::string pid = std::string("\x80\x02(X\x07\x00\x00\x00storage", 15) + "ctorch\nFloatStorage\n" + key +
                          std::string("X\x03\x00\x00\x00" "cpuK\x01tQ.", 13);
  EXPECT_EQ(findings_of(pid), 0);
  EXPECT_EQ(findings_of("\x80\x02" + key + "."), 1);
}

namespace {

// The findings of scan_program over `bytes` (an outer pickle made of raw opcodes).
Findings scan_of(const std::string& bytes) {
  pickle::DecodeOptions o;
  Findings f;
  auto prog = pickle::decode(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), o, f);
  EXPECT_TRUE(prog.ok()) << bytes;
  if (prog.ok()) cdr::scan_program(*prog, "", f);
  return f;
}

// A protocol-3 pickle whose only value is `inner` as BINBYTES.
std::string holding(const std::string& inner) {
  std::string len(4, '\0');
  for (int i = 0; i < 4; ++i) len[i] = static_cast<char>((inner.size() >> (8 * i)) & 0xFF);
  return "\x80\x03" "B" + len + inner + ".";
}

const Finding* nested_finding(const Findings& fs) {
  for (const Finding& f : fs)
    if (f.rule == Rule::pickle_nested_pickle) return &f;
  return nullptr;
}

}  // namespace

// Issue 11: a nested pickle is graded by a scan of the inner stream; dangerous only when it is.
TEST(NestedPickleGrade, DangerousOnlyWhenTheInnerPickleIs) {
  using namespace std::string_literals;
  struct Case {
    std::string inner;
    Verdict verdict, inner_verdict;
  } cases[] = {
      {evil(), Verdict::dangerous, Verdict::dangerous},
      {b64(evil()), Verdict::dangerous, Verdict::dangerous},  // an encoded layer is graded as decoded
      {hex("N0" + evil()), Verdict::dangerous, Verdict::dangerous},
      {"cos\nsystem\n", Verdict::dangerous, Verdict::dangerous},  // a fragment: its imports before the break
      {"(dp0\nS'lr'\np1\nF0.5\ns.", Verdict::safe, Verdict::clean},  // plain data: disarm rebuilds it
      {"\x80\x02}q\x00X\x01\x00\x00\x00"s + "aK\x01s.", Verdict::safe, Verdict::clean},
      {"c__main__\nNet\n)R.", Verdict::unknown, Verdict::unknown},  // a project's own class
  };
  for (const Case& c : cases) {
    Findings fs = scan_of(holding(c.inner));
    const Finding* f = nested_finding(fs);
    ASSERT_NE(f, nullptr) << c.inner;
    EXPECT_EQ(file_verdict(fs), c.verdict) << c.inner << ": " << f->message;
    EXPECT_NE(f->message.find(std::string("verdict: ") + verdict_name(c.inner_verdict)), std::string::npos) << f->message;
  }
  // The inner call is named in the one finding.
  EXPECT_NE(nested_finding(scan_of(holding(evil())))->message.find("'os system' with arguments ('echo pwned',)"),
            std::string::npos);
}

TEST(NestedPickleGrade, DepthIsBounded) {
  std::string p = evil();
  for (uint32_t i = 0; i < cdr::kMaxNestedPickleLevel; ++i) p = holding(p);
  // Level 4 holds the payload: beyond the bound, so not graded but not passed as safe either.
  Findings fs = scan_of(holding(p));
  EXPECT_EQ(file_verdict(fs), Verdict::unknown);
  bool named = false;
  for (const Finding& f : fs) named |= f.message.find("not graded") != std::string::npos;
  EXPECT_TRUE(named);
  // Within the bound the payload is found through every level.
  EXPECT_EQ(file_verdict(scan_of(holding(holding(evil())))), Verdict::dangerous);
}

TEST(NestedPickleGrade, ShortWordsAreNotBase64Pickles) {
  // "groups" (a Conv2d attribute name) reads as base64 of EXT1 186, STOP: too short to be taken.
  EXPECT_FALSE(cdr::looks_like_embedded_pickle("groups"));
  EXPECT_EQ(file_verdict(scan_of(std::string("\x80\x02X\x06\x00\x00\x00groups.", 14))), Verdict::clean);
  EXPECT_TRUE(cdr::looks_like_embedded_pickle(b64("\x82\xba)R.xxx")));  // 8 bytes decoded: taken
}

// BUILD on an object of a class in the safe table is `safe`; on a project's class `unknown`.
TEST(BuildOnObject, SafeTableClassesAreSafe) {
  EXPECT_EQ(file_verdict(scan_of("ctorch.nn.modules.linear\nLinear\n)R}b.")), Verdict::safe);
  EXPECT_EQ(file_verdict(scan_of("ctorch.nn.parameter\nParameter\n)R}b.")), Verdict::safe);
  EXPECT_EQ(file_verdict(scan_of("ccopyreg\n_reconstructor\n(cargparse\nNamespace\ncbuiltins\nobject\nNtR}b.")),
            Verdict::safe);
  EXPECT_EQ(file_verdict(scan_of("cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR}b.")),
            Verdict::safe);
  EXPECT_EQ(file_verdict(scan_of("ccopyreg\n_reconstructor\n(cmodels.config\nmodel\ncbuiltins\nobject\nNtR}b.")),
            Verdict::unknown);
  EXPECT_EQ(file_verdict(scan_of("cnumpy.core.multiarray\n_reconstruct\n(cmymod\nArr\n(I0\ntS'b'\ntR}b.")),
            Verdict::unknown);
  Findings fs = scan_of("ccopyreg\n_reconstructor\n(cmodels.config\nmodel\ncbuiltins\nobject\nNtR}b.");
  bool named = false;
  for (const Finding& f : fs)
    named |= f.rule == Rule::pickle_build_on_object && f.message.find("of class 'models.config model'") != std::string::npos;
  EXPECT_TRUE(named);
}
