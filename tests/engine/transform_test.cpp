// The Transform interface (include/modelcdr/transform.hpp) through the Engine's pipeline, in
// memory: a toy record stage (bytes inverted) and a toy IR stage; no torch needed.
#include <gtest/gtest.h>
#include <libdeflate.h>

#include <cstring>
#include <string>
#include <vector>

#include "modelcdr/engine.hpp"
#include "modelcdr/transform.hpp"

using namespace modelcdr;

namespace {

// A safetensors file of one float32 tensor "t" of `elems` values (0.5, 1.5, ...).
std::vector<uint8_t> one_tensor(size_t elems) {
  std::string header = "{\"t\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(elems) + "],\"data_offsets\":[0," +
                       std::to_string(elems * 4) + "]}}";
  while (header.size() % 8) header += ' ';
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(uint64_t(header.size()) >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  for (size_t e = 0; e < elems; ++e) {
    float v = float(e) + 0.5f;
    uint8_t b[4];
    std::memcpy(b, &v, 4);
    out.insert(out.end(), b, b + 4);
  }
  return out;
}

// Record stage: writes every byte inverted, in chunks of 100; finish() sees the whole output.
struct Invert : Transform {
  size_t records = 0;
  uint64_t finished_size = 0;
  bool fail_finish = false;
  std::optional<bool> committed;
  const char* name() const override { return "invert"; }
  bool has_record_stage() const override { return true; }
  Status copy_record(const RecordCopy& rec, const PayloadSink& sink) override {
    ++records;
    std::span<const uint8_t> in = rec.storage->bytes;
    for (size_t off = 0; off < in.size(); off += 100) {
      std::vector<uint8_t> chunk(in.begin() + off, in.begin() + std::min(in.size(), off + 100));
      for (auto& b : chunk) b = static_cast<uint8_t>(~b);
      // Every other chunk comes with its CRC-32, as MTD's record stages hand it over.
      std::optional<uint32_t> crc;
      if ((off / 100) % 2 == 0) crc = libdeflate_crc32(0, chunk.data(), chunk.size());
      MCDR_TRY(sink(chunk, crc));
    }
    return ok_status();
  }
  Status finish(const WrittenOutput& out, FileReport&) override {
    finished_size = out.size;
    std::vector<uint8_t> head(4);
    MCDR_TRY(out.read(0, head));
    if (std::memcmp(head.data(), "PK\x03\x04", 4) != 0) return make_error(Rule::mtd_internal, "not a zip");
    if (fail_finish) return make_error(Rule::mtd_internal, "toy finish refuses");
    return ok_status();
  }
  void after_commit(bool ok) override { committed = ok; }
};

// IR stage: doubles every float32 element (an owned payload replaces the input's).
struct Twice : Transform {
  const char* name() const override { return "twice"; }
  bool has_model_stage() const override { return true; }
  Status apply(model::Model& m, FileReport&) override {
    for (auto& s : m.storages) {
      std::vector<uint8_t> b(s.bytes.begin(), s.bytes.end());
      for (size_t i = 0; i + 4 <= b.size(); i += 4) {
        float v;
        std::memcpy(&v, &b[i], 4);
        v *= 2;
        std::memcpy(&b[i], &v, 4);
      }
      s.set_owned(std::move(b));
    }
    return ok_status();
  }
};

// The payload of the single tensor of a checkpoint, read back as safetensors.
std::vector<uint8_t> payload_of(const Engine& e, const std::vector<uint8_t>& pt, size_t nbytes) {
  DisarmOptions o;
  o.output_format = OutputFormat::safetensors;
  Sink back = Sink::memory();
  auto r = e.disarm(Source::memory(pt, "out.pt"), back, o);
  EXPECT_NE(r.status, FileStatus::rejected) << (r.error ? r.error->describe() : "");
  if (back.bytes().size() < nbytes) return {};
  return {back.bytes().end() - nbytes, back.bytes().end()};
}

Engine make_engine() { return std::move(*Engine::create({})); }

}  // namespace

TEST(Transform, RecordStageWritesTheRecordsThroughTheWriter) {
  const size_t elems = 1000;
  const auto input = one_tensor(elems);
  Engine e = make_engine();
  auto invert = std::make_shared<Invert>();
  DisarmOptions o;
  o.transforms = {invert};
  Sink sink = Sink::memory("out.pt");
  auto r = e.disarm(Source::memory(input, "in.safetensors"), sink, o);
  ASSERT_NE(r.status, FileStatus::rejected) << (r.error ? r.error->describe() : "");
  EXPECT_EQ(invert->records, 1u);
  EXPECT_EQ(invert->finished_size, sink.bytes().size());
  EXPECT_EQ(invert->committed, std::optional<bool>(true));
  std::vector<uint8_t> want(input.end() - elems * 4, input.end());
  for (auto& b : want) b = static_cast<uint8_t>(~b);
  EXPECT_EQ(payload_of(e, sink.bytes(), elems * 4), want);
}

TEST(Transform, ModelStageThenRecordStage) {
  const size_t elems = 64;
  const auto input = one_tensor(elems);
  Engine e = make_engine();
  auto invert = std::make_shared<Invert>();
  DisarmOptions o;
  o.transforms = {std::make_shared<Twice>(), invert};
  Sink sink = Sink::memory("out.pt");
  auto r = e.disarm(Source::memory(input, "in.safetensors"), sink, o);
  ASSERT_NE(r.status, FileStatus::rejected) << (r.error ? r.error->describe() : "");
  std::vector<uint8_t> want(elems * 4);
  for (size_t i = 0; i < elems; ++i) {
    float v = (float(i) + 0.5f) * 2;
    std::memcpy(&want[i * 4], &v, 4);
  }
  for (auto& b : want) b = static_cast<uint8_t>(~b);
  EXPECT_EQ(payload_of(e, sink.bytes(), elems * 4), want);
}

TEST(Transform, FinishErrorLeavesNoOutput) {
  const auto input = one_tensor(16);
  Engine e = make_engine();
  auto invert = std::make_shared<Invert>();
  invert->fail_finish = true;
  DisarmOptions o;
  o.transforms = {invert};
  Sink sink = Sink::memory("out.pt");
  auto r = e.disarm(Source::memory(input, "in.safetensors"), sink, o);
  EXPECT_EQ(r.status, FileStatus::rejected);
  EXPECT_TRUE(sink.bytes().empty());
  EXPECT_FALSE(invert->committed.has_value());
}

TEST(Transform, RecordStageOnlyForCheckpointsAndOnlyOne) {
  const auto input = one_tensor(16);
  Engine e = make_engine();
  DisarmOptions o;
  o.transforms = {std::make_shared<Invert>()};
  o.output_format = OutputFormat::safetensors;
  Sink sink = Sink::memory();
  auto r = e.disarm(Source::memory(input, "in.safetensors"), sink, o);
  ASSERT_EQ(r.status, FileStatus::rejected);
  EXPECT_EQ(r.error->rule, Rule::engine_unsupported);
  DisarmOptions two;
  two.transforms = {std::make_shared<Invert>(), std::make_shared<Invert>()};
  Sink sink2 = Sink::memory();
  auto r2 = e.disarm(Source::memory(input, "in.safetensors"), sink2, two);
  ASSERT_EQ(r2.status, FileStatus::rejected);
  EXPECT_EQ(r2.error->rule, Rule::engine_unsupported);
  EXPECT_TRUE(sink2.bytes().empty());
}
