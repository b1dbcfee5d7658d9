// The one pickle emitter: its self-check (verify_emitted) refuses globals outside the vocabulary
// of the stream kind, and plain pickle / joblib outputs stream through it and read back intact.
#include "pickle/pickle_emitter.hpp"

#include <gtest/gtest.h>

#include "formats/parsed_model.hpp"
#include "formats/pickle_writer.hpp"
#include "io/atomic_output.hpp"

using namespace modelcdr;

namespace {

#define L(s) std::string(s, sizeof(s) - 1)

// A joblib.dump-style stream: {'a': int64 array of n values 0..n-1 inline}.
std::vector<uint8_t> joblib_array(uint32_t n) {
  std::string p = L("\x80\x02}q\x00X\x01\x00\x00\x00" "a");
  p += L("cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}(");
  p += L("X\x08\x00\x00\x00" "subclass" "cnumpy\nndarray\n");
  p += L("X\x05\x00\x00\x00" "shape" "J");
  for (int i = 0; i < 4; ++i) p += static_cast<char>(n >> (8 * i));
  p += L("\x85" "X\x05\x00\x00\x00" "order" "X\x01\x00\x00\x00" "C");
  p += L("X\x05\x00\x00\x00" "dtype" "cnumpy\ndtype\nX\x02\x00\x00\x00" "i8" "\x89\x88\x87R");
  p += L("(K\x03X\x01\x00\x00\x00" "<" "NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
  p += L("X\x1b\x00\x00\x00" "numpy_array_alignment_bytes" "K\x10ub");
  std::vector<uint8_t> out(p.begin(), p.end());
  uint8_t pad = static_cast<uint8_t>(16 - ((out.size() + 1) % 16));
  out.push_back(pad);
  out.insert(out.end(), pad, 0xFF);
  for (uint64_t v = 0; v < n; ++v)
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  out.push_back('s');
  out.push_back('.');
  return out;
}

std::span<const uint8_t> array_bytes(const formats::ParsedModel& p) {
  for (const auto& v : p.model.values)
    if (v.kind == model::ValueKind::ndarray && v.tensor < p.model.tensors.size())
      return p.model.storages[p.model.tensors[v.tensor].storage].bytes;
  return {};
}

std::vector<uint8_t> write_to_memory(const model::Model& m, bool joblib) {
  auto out = io::AtomicOutput::create_memory("out");
  EXPECT_TRUE(out.ok());
  formats::PickleWriteOptions o;
  o.joblib = joblib;
  auto s = formats::write_pickle(m, o, *out);
  EXPECT_TRUE(s.ok()) << s.error().message;
  EXPECT_TRUE(out->commit().ok());
  return out->memory_bytes();
}

TEST(PickleEmitter, SelfCheckRefusesGlobalsOutsideTheVocabulary) {
  pickle::PickleEmitter e;
  e.proto(4);
  e.class_global("os", "system");
  e.tuple_n(0);
  e.reduce();
  e.stop();
  pickle::VerifyOptions plain;
  plain.stream = pickle::EmitStream::plain;
  plain.protocol = 4;
  auto refused = pickle::verify_emitted(e.bytes(), plain);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().rule, Rule::emit_self_check);
  // The same stream passes only when the caller's registry vets the class.
  plain.registry_class = [](std::string_view m, std::string_view n) { return m == "os" && n == "system"; };
  EXPECT_TRUE(pickle::verify_emitted(e.bytes(), plain).ok());
}

TEST(PickleEmitter, SelfCheckKeepsStreamKindsApart) {
  pickle::PickleEmitter e;
  e.proto2();
  e.global(pickle::EmitGlobal::numpy_dtype);  // plain-pickle vocabulary, not a checkpoint's
  e.stop();
  auto r = pickle::verify_emitted(e.bytes(), pickle::VerifyOptions{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rule, Rule::emit_self_check);
  pickle::PickleEmitter t;
  t.proto2();
  t.global(pickle::EmitGlobal::torch_size);
  t.stop();
  EXPECT_TRUE(pickle::verify_emitted(t.bytes(), pickle::VerifyOptions{}).ok());
  pickle::VerifyOptions plain;
  plain.stream = pickle::EmitStream::plain;
  plain.protocol = 2;
  EXPECT_FALSE(pickle::verify_emitted(t.bytes(), plain).ok());
}

TEST(PickleEmitter, StreamedJoblibAndPickleOutputsReadBack) {
  const uint32_t n = 400'000;  // 3.2 MB of data: past the emitter's 1 MiB chunk, written straight through
  auto input = joblib_array(n);
  auto parsed = formats::read_joblib(input, {});
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  auto original = array_bytes(*parsed);
  ASSERT_EQ(original.size(), 8u * n);
  for (bool joblib : {true, false}) {
    SCOPED_TRACE(joblib ? "joblib" : "pickle");
    auto bytes = write_to_memory(parsed->model, joblib);
    auto back = formats::read_joblib(bytes, {});
    ASSERT_TRUE(back.ok()) << back.error().message;
    EXPECT_EQ(back->format, joblib ? container::Format::joblib : container::Format::pickle);
    auto got = array_bytes(*back);
    ASSERT_EQ(got.size(), original.size());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), original.begin()));
    // joblib aligns array data to 16 bytes in the file, as joblib.dump does.
    if (joblib) EXPECT_EQ((got.data() - bytes.data()) % 16, 0);
  }
}

}  // namespace
