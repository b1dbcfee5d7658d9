// The writer's output re-read by our own reader: same tensors, same sharing, and a pickle made
// only of the emit vocabulary. (The e2e suite loads the same files with real torch.)
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "formats/parsed_model.hpp"
#include "formats/torch_zip_writer.hpp"
#include "io/atomic_output.hpp"
#include "io/mapped_file.hpp"

using namespace modelcdr;

namespace {

model::Model sample_model(std::vector<float>& data) {
  data = {1, 2, 3, 4, 5, 6};
  model::Model m;
  model::Storage s;
  s.dtype = model::DType::f32;
  s.nbytes = data.size() * 4;
  s.bytes = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), s.nbytes);
  m.storages.push_back(s);
  model::Tensor t;
  t.storage = 0;
  t.shape = {2, 3};
  t.stride = {3, 1};
  m.tensors.push_back(t);
  model::Tensor v = t;  // transposed view of the same storage
  v.shape = {3, 2};
  v.stride = {1, 3};
  m.tensors.push_back(v);
  auto key = [&](const char* k) {
    model::Value x;
    x.kind = model::ValueKind::string;
    x.text = k;
    return m.add(x);
  };
  auto tensor = [&](model::TensorId id) {
    model::Value x;
    x.kind = model::ValueKind::tensor;
    x.tensor = id;
    return m.add(x);
  };
  model::Value f;
  f.kind = model::ValueKind::floating;
  f.f = 0.125;
  model::Value root;
  root.kind = model::ValueKind::ordered_dict;
  auto t0 = tensor(0);
  root.entries = {{key("a"), t0}, {key("a_t"), tensor(1)}, {key("tied"), t0}, {key("lr"), m.add(f)}};
  m.root = m.add(root);
  return m;
}

std::string temp_path(const char* name) {
  return (std::filesystem::temp_directory_path() / (std::string("modelcdr_test_") + std::to_string(::getpid()) + name)).string();
}

}  // namespace

TEST(TorchZipWriter, RoundTripKeepsTensorsSharingAndValues) {
  std::vector<float> data;
  auto m = sample_model(data);
  std::string path = temp_path("rt.pt");
  {
    auto out = io::AtomicOutput::create(path);
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE(formats::write_torch_zip(m, {}, *out).ok());
    ASSERT_TRUE(out->commit().ok());
  }
  auto file = io::MappedFile::open(path);
  ASSERT_TRUE(file.ok());
  auto parsed = formats::read_torch_zip(file->bytes(), {});
  ASSERT_TRUE(parsed.ok()) << parsed.error().describe();
  for (const auto& f : parsed->findings) ADD_FAILURE() << f.rule << ": " << f.message;
  const auto& r = parsed->model;
  ASSERT_EQ(r.storages.size(), 1u);
  EXPECT_EQ(std::memcmp(r.storages[0].bytes.data(), data.data(), 24), 0);
  const auto& root = r.values[r.root];
  ASSERT_EQ(root.entries.size(), 4u);
  EXPECT_EQ(root.entries[0].second, root.entries[2].second) << "tied tensor stays one object";
  const auto& tt = r.tensors[r.values[root.entries[1].second].tensor];
  EXPECT_EQ(tt.stride, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(r.values[root.entries[3].second].f, 0.125);
  std::filesystem::remove(path);
}

TEST(TorchZipWriter, Compat113WritesFloatsAsTensors) {
  std::vector<float> data;
  auto m = sample_model(data);
  std::vector<model::StorageId> order;
  std::vector<model::Storage> extra;
  formats::TorchWriteOptions o;
  o.compat = formats::Compat::torch1_13;
  auto pkl = formats::emit_data_pkl(m, o, order, extra);
  ASSERT_TRUE(pkl.ok());
  EXPECT_EQ(std::find(pkl->begin(), pkl->end(), 'G'), pkl->end()) << "no BINFLOAT opcode for torch 1.13";
  ASSERT_EQ(extra.size(), 1u);
  double v;
  std::memcpy(&v, extra[0].bytes.data(), 8);
  EXPECT_EQ(v, 0.125);
  EXPECT_EQ(order.size(), 2u);
}

TEST(TorchZipWriter, FailedWriteLeavesNothing) {
  std::string path = temp_path("abandoned.pt");
  {
    auto out = io::AtomicOutput::create(path);
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE(out->write(std::string_view("partial")).ok());
  }  // destroyed without commit
  EXPECT_FALSE(std::filesystem::exists(path));
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path()))
    EXPECT_EQ(e.path().filename().string().find("abandoned.pt.modelcdr-"), std::string::npos);
}

// Plain hand-offs (issue 14): the reader keeps where each payload lies (and the CRC it left
// unchecked) in ByteRanges beside the IR; the writer's copy is the one step that verifies it.
// A payload a transform replaced has no range any more, so the input's bytes (and their CRC)
// can never stand in for the transformed ones.
TEST(TorchZipWriter, DeferredCrcIsVerifiedWhileCopyingAndReplacedPayloadsHaveNoRange) {
  std::vector<float> data;
  auto m = sample_model(data);
  std::string path = temp_path("ranges.pt"), copy = temp_path("ranges_copy.pt");
  {
    auto out = io::AtomicOutput::create(path);
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE(formats::write_torch_zip(m, {}, *out).ok());
    ASSERT_TRUE(out->commit().ok());
  }
  auto file = io::MappedFile::open(path);
  ASSERT_TRUE(file.ok());
  formats::ReadOptions ro;
  ro.defer_storage_crc = true;
  ro.input_is_mapped = true;
  ro.input_fd = file->fd();
  auto parsed = formats::read_torch_zip(file->bytes(), ro);
  ASSERT_TRUE(parsed.ok()) << parsed.error().describe();
  auto& pm = parsed->model;
  ASSERT_EQ(pm.storages.size(), 1u);
  const ByteRange* r = parsed->ranges.of(pm, 0);
  ASSERT_NE(r, nullptr);
  ASSERT_TRUE(r->expected_crc.has_value()) << "the reader left the storage CRC to the copy";
  EXPECT_TRUE(r->in_file());
  EXPECT_EQ(file->bytes().data() + r->offset, pm.storages[0].bytes.data());
  auto write = [&](const ByteRanges* ranges) -> Status {
    formats::TorchWriteOptions o;
    o.ranges = ranges;
    auto out = io::AtomicOutput::create(copy, false, true);
    if (!out.ok()) return out.error();
    MCDR_TRY(formats::write_torch_zip(pm, o, *out));
    return out->commit();
  };
  EXPECT_TRUE(write(&parsed->ranges).ok());
  ByteRanges wrong;
  ByteRange bad = *r;
  bad.expected_crc = *r->expected_crc ^ 1u;  // what a record with a corrupted payload looks like
  wrong.set(0, bad);
  auto s = write(&wrong);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().rule, Rule::zip_bad_crc);
  // A transform's payload: the stale range (and its CRC) no longer applies.
  std::vector<float> other = {9, 8, 7, 6, 5, 4};
  const auto* b = reinterpret_cast<const uint8_t*>(other.data());
  pm.storages[0].set_owned(std::vector<uint8_t>(b, b + 24));
  EXPECT_EQ(wrong.of(pm, 0), nullptr);
  ASSERT_TRUE(write(&wrong).ok());
  auto back_file = io::MappedFile::open(copy);
  ASSERT_TRUE(back_file.ok());
  auto back = formats::read_torch_zip(back_file->bytes(), {});
  ASSERT_TRUE(back.ok()) << back.error().describe();
  EXPECT_EQ(std::memcmp(back->model.storages[0].bytes.data(), other.data(), 24), 0) << "the owned bytes were written";
  std::filesystem::remove(path);
  std::filesystem::remove(copy);
}
