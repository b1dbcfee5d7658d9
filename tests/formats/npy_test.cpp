#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "formats/npy_header.hpp"
#include "formats/parsed_model.hpp"

using namespace modelcdr;

namespace {

std::vector<uint8_t> npy(std::string header, size_t data_bytes, uint16_t len_override = 0) {
  std::vector<uint8_t> f = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  uint16_t n = len_override ? len_override : static_cast<uint16_t>(header.size());
  f.push_back(n & 0xff);
  f.push_back(n >> 8);
  f.insert(f.end(), header.begin(), header.end());
  f.insert(f.end(), data_bytes, 0);
  return f;
}

std::string padded(std::string dict) {
  size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  return dict + "\n";
}

}  // namespace

TEST(NpyHeader, ParsesNumpyWrittenHeaders) {
  Findings f;
  auto h = formats::parse_npy_header(npy(padded("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"), 24), "", f);
  ASSERT_TRUE(h.ok()) << h.error().describe();
  EXPECT_EQ(h->descr, "<f4");
  EXPECT_EQ(h->shape, (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(h->data_offset % 64, 0u);
  EXPECT_TRUE(f.empty());
  auto s = formats::parse_npy_dict("{'descr': '<i8', 'fortran_order': True, 'shape': (), }\n", "", 0, f);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->shape.empty());
  EXPECT_TRUE(s->fortran_order);
  EXPECT_TRUE(formats::parse_npy_dict("{'descr': '<i8', 'fortran_order': False, 'shape': (3L,), }\n", "", 0, f).ok());
}

TEST(NpyHeader, RefusesNonLiterals) {
  Findings f;
  for (const char* bad : {"{'descr': '<f4', 'fortran_order': False, 'shape': (2*3,), }\n",
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (6), }\n",
                          "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (6,), }\n",
                          "{'descr': '<f4', 'fortran_order': 0, 'shape': (6,), }\n",
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (6,), 'x': 1}\n",
                          "{'descr': '\\x3cf4', 'fortran_order': False, 'shape': (6,), }\n",
                          "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }\n",
                          "{'descr': '<f4', 'fortran_order': False}\n",
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }\n",
                          "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }\n"})
    EXPECT_FALSE(formats::parse_npy_dict(bad, "", 0, f).ok()) << bad;
}

TEST(NpyHeader, FramingTricksAreFindings) {
  Findings f;
  // padding that is not spaces, no newline
  auto h = formats::parse_npy_dict("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }  #x", "", 0, f);
  ASSERT_TRUE(h.ok());
  bool pad = false, nl = false;
  for (auto& x : f) pad |= x.rule == Rule::npy_header_padding, nl |= x.rule == Rule::npy_header_newline;
  EXPECT_TRUE(pad);
  EXPECT_TRUE(nl);
  // a length field that does not reach the 64-byte boundary
  Findings g;
  auto l = formats::parse_npy_header(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }\n", 4), "", g);
  ASSERT_TRUE(l.ok());
  bool align = false;
  for (auto& x : g) align |= x.rule == Rule::npy_header_alignment;
  EXPECT_TRUE(align);
}

TEST(NpyReader, NumericAndTruncated) {
  auto ok = formats::read_npy(npy(padded("{'descr': '>i2', 'fortran_order': False, 'shape': (2,), }"), 4), {});
  ASSERT_TRUE(ok.ok()) << ok.error().describe();
  EXPECT_EQ(ok->model.tensors.size(), 1u);
  EXPECT_EQ(ok->model.tensors[0].dtype, model::DType::i16);
  auto trunc = formats::read_npy(npy(padded("{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }"), 8), {});
  EXPECT_FALSE(trunc.ok());
  auto date = formats::read_npy(npy(padded("{'descr': '<M8[s]', 'fortran_order': False, 'shape': (1,), }"), 8), {});
  ASSERT_FALSE(date.ok());
  EXPECT_EQ(date.error().rule, Rule::npy_unsupported_dtype);
}

TEST(NpyReader, FixedWidthStringsAreArrays) {
  auto str = formats::read_npy(npy(padded("{'descr': '>U3', 'fortran_order': False, 'shape': (2,), }"), 24), {});
  ASSERT_TRUE(str.ok()) << str.error().describe();
  const auto& m = str->model;
  const auto& v = m.values[m.root];
  EXPECT_EQ(v.kind, model::ValueKind::ndarray);
  EXPECT_EQ(m.values[v.state].text, "U3");
  EXPECT_EQ(v.array_shape, std::vector<int64_t>{2});
  EXPECT_EQ(m.storages[m.tensors[v.tensor].storage].nbytes, 24u);
  auto zero = formats::read_npy(npy(padded("{'descr': '|S0', 'fortran_order': False, 'shape': (1,), }"), 0), {});
  EXPECT_FALSE(zero.ok());
  auto order = formats::read_npy(npy(padded("{'descr': '<S2', 'fortran_order': False, 'shape': (1,), }"), 2), {});
  EXPECT_FALSE(order.ok());
}

TEST(NpyReader, ObjectArrayGoesThroughPicklePolicy) {
  std::string pkl = "cos\nsystem\n(S'echo hi'\ntR.";
  auto f = npy(padded("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"), 0);
  f.insert(f.end(), pkl.begin(), pkl.end());
  auto r = formats::read_npy(f, {});
  ASSERT_TRUE(r.ok()) << r.error().describe();
  bool global = false;
  for (auto& x : r->findings) global |= x.severity >= Severity::high;
  for (auto& x : r->model.findings) global |= x.severity >= Severity::high;
  EXPECT_TRUE(global);
  EXPECT_EQ(r->model.values[r->model.root].kind, model::ValueKind::dropped);
}
