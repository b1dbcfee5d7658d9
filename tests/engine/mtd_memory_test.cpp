// Engine::protect / restore / verify (include/modelcdr/engine.hpp, docs/API.md) on memory
// sources and sinks, the map included: the same checks as for files (layout digest of the
// whole input, per-record digests, atomic commit of output and map, nothing left on failure).
// Inputs are safetensors built by hand and disarmed by the engine into torch checkpoints; no
// torch needed.
#include <gtest/gtest.h>
#include <sodium.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "modelcdr/engine.hpp"
#include "safetensors_fixture.hpp"
#include "modelcdr/mtd.hpp"  // the public MTD options only: no private header
#include "modelcdr/mtd_tools.hpp"

using namespace modelcdr;
namespace fs = std::filesystem;
using modelcdr::testing::read_file;
using modelcdr::testing::safetensors_file;

namespace {



void write_file(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

struct TempDir {
  std::string path;
  TempDir() {
    static int n = 0;
    path = (fs::temp_directory_path() / ("modelcdr_mtd_memory_" + std::to_string(::getpid()) + "_" + std::to_string(n++)))
               .string();
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
  size_t entries() const { return static_cast<size_t>(std::distance(fs::directory_iterator(path), {})); }
};

std::string describe(const FileReport& r) {
  std::string s = std::string(status_name(r.status));
  if (r.error) s += ": " + r.error->describe();
  if (r.mtd) {
    s += " [" + r.mtd->code + "]";
    for (const auto& m : r.mtd->mismatches) s += "\n  " + m.what + " " + m.name + ": " + m.detail;
  }
  return s;
}

class MtdMemory : public ::testing::Test {
 protected:
  void SetUp() override {
    if (sodium_init() < 0) GTEST_SKIP() << "libsodium unavailable";
    auto e = Engine::create({});
    ASSERT_TRUE(e.ok());
    engine_ = std::make_unique<Engine>(std::move(*e));
    // The model to protect: a torch checkpoint the engine rebuilt from a safetensors upload.
    const auto upload = safetensors_file(3, 5000, 7.0f);
    Sink pt = Sink::memory();
    ASSERT_EQ(engine_->disarm(Source::memory(upload, "upload.safetensors"), pt).status, FileStatus::clean);
    model_ = pt.take_bytes();
    key_.fill(5);
    po_.seal.symmetric_keys = {key_};
    ro_.open.symmetric_key = key_;
    ro_.open.allow_unsigned = true;
  }

  // protect entirely in memory: the protected model and its map.
  void protect_in_memory(std::vector<uint8_t>& prot, std::vector<uint8_t>& map) {
    Sink out = Sink::memory("p.pt"), m = Sink::memory("p.map");
    auto r = engine_->protect(Source::memory(model_, "m.pt"), out, m, po_);
    ASSERT_TRUE(r.mtd.has_value());
    ASSERT_EQ(r.status, FileStatus::clean) << describe(r);
    EXPECT_EQ(r.mtd->code, "ok");
    EXPECT_EQ(r.mtd->storages, 3u);
    EXPECT_EQ(r.mtd->map, "p.map");
    ASSERT_FALSE(out.bytes().empty());
    ASSERT_FALSE(m.bytes().empty());
    prot = out.take_bytes();
    map = m.take_bytes();
  }

  std::unique_ptr<Engine> engine_;
  std::vector<uint8_t> model_;
  mtd::Key32 key_;
  mtd::ProtectOptions po_;
  mtd::RestoreOptions ro_;
};

TEST_F(MtdMemory, ProtectVerifyRestoreAllInMemory) {
  std::vector<uint8_t> prot, map;
  protect_in_memory(prot, map);
  EXPECT_NE(prot, model_);  // the payload is permuted

  auto v = engine_->verify(Source::memory(prot, "p.pt"), Source::memory(map, "p.map"), ro_);
  ASSERT_TRUE(v.mtd.has_value());
  EXPECT_EQ(v.status, FileStatus::clean) << describe(v);
  EXPECT_EQ(v.mtd->state, "protected");

  Sink restored = Sink::memory("r.pt");
  auto r = engine_->restore(Source::memory(prot, "p.pt"), Source::memory(map, "p.map"), restored, ro_);
  ASSERT_EQ(r.status, FileStatus::clean) << describe(r);
  EXPECT_EQ(r.mtd->state, "restored");
  EXPECT_EQ(r.output, "r.pt");
  // Restore undoes protect: the original checkpoint, byte for byte.
  EXPECT_EQ(restored.bytes(), model_);

  auto vr = engine_->verify(Source::memory(restored.bytes()), Source::memory(map), ro_);
  EXPECT_EQ(vr.status, FileStatus::clean) << describe(vr);
  EXPECT_EQ(vr.mtd->state, "restored");
}

// The layout digest of a memory input is the one of the same bytes in a file: a model
// protected in memory verifies from a file and the other way round, with either form of map.
TEST_F(MtdMemory, MemoryAndFileFormsAgree) {
  TempDir dir;
  std::vector<uint8_t> prot, map;
  protect_in_memory(prot, map);
  write_file(dir / "p.pt", prot);
  write_file(dir / "p.map", map);
  auto v = engine_->verify(Source::file(dir / "p.pt"), dir / "p.map", ro_);
  EXPECT_EQ(v.status, FileStatus::clean) << describe(v);
  EXPECT_EQ(v.mtd->state, "protected");

  // Protected to files from a memory source; verified and restored from memory.
  Sink fout = Sink::file(dir / "q.pt");
  auto p = engine_->protect(Source::memory(model_, "m.pt"), fout, dir / "q.map", po_);
  ASSERT_EQ(p.status, FileStatus::clean) << describe(p);
  const auto qpt = read_file(dir / "q.pt"), qmap = read_file(dir / "q.map");
  auto vm = engine_->verify(Source::memory(qpt), Source::memory(qmap), ro_);
  EXPECT_EQ(vm.status, FileStatus::clean) << describe(vm);
  Sink mem = Sink::memory();
  auto rm = engine_->restore(Source::memory(qpt), Source::file(dir / "q.map"), mem, ro_);
  ASSERT_EQ(rm.status, FileStatus::clean) << describe(rm);
  Sink file = Sink::file(dir / "r.pt");
  auto rf = engine_->restore(Source::file(dir / "q.pt"), Source::memory(qmap), file, ro_);
  ASSERT_EQ(rf.status, FileStatus::clean) << describe(rf);
  EXPECT_EQ(mem.bytes(), read_file(dir / "r.pt"));
  EXPECT_EQ(mem.bytes(), model_);
}

// A tensor byte changed in memory: verify names the tensor; restore writes nothing.
TEST_F(MtdMemory, TamperedMemoryInputIsNotRestored) {
  std::vector<uint8_t> prot, map;
  protect_in_memory(prot, map);
  prot[prot.size() / 2] ^= 0x40;  // inside the payload (60 KB of tensors in a 61 KB file)
  auto v = engine_->verify(Source::memory(prot), Source::memory(map), ro_);
  EXPECT_EQ(v.status, FileStatus::findings) << describe(v);
  ASSERT_TRUE(v.mtd.has_value());
  EXPECT_FALSE(v.mtd->mismatches.empty());
  EXPECT_NE(v.mtd->code, "ok");
  EXPECT_EQ(v.mtd->outcome, MtdOutcome::mismatch);
  // The structured diagnosis (what the CLI's --report lists): the tensor, its record and the
  // two digests of that record.
  const auto tensor = std::find_if(v.mtd->mismatches.begin(), v.mtd->mismatches.end(),
                                   [](const MtdMismatch& m) { return m.what == "tensor"; });
  ASSERT_NE(tensor, v.mtd->mismatches.end()) << describe(v);
  EXPECT_FALSE(tensor->name.empty());
  EXPECT_GE(tensor->key, 0);
  EXPECT_EQ(tensor->against, "protected");
  EXPECT_FALSE(tensor->expected.empty());
  EXPECT_NE(tensor->expected, tensor->actual);
  Sink out = Sink::memory();
  auto r = engine_->restore(Source::memory(prot), Source::memory(map), out, ro_);
  EXPECT_NE(r.status, FileStatus::clean) << describe(r);
  EXPECT_TRUE(out.bytes().empty());
  EXPECT_TRUE(r.output.empty());
}

// A byte outside every record (here the zip's central directory) is caught by the layout
// digest of the memory input, as for a file.
TEST_F(MtdMemory, LayoutOfMemoryInputIsChecked) {
  std::vector<uint8_t> prot, map;
  protect_in_memory(prot, map);
  // The last central-directory header's "version made by" field: read by nobody, covered by
  // the layout digest only.
  const uint8_t sig[] = {'P', 'K', 1, 2};
  auto at = std::find_end(prot.begin(), prot.end(), std::begin(sig), std::end(sig));
  ASSERT_NE(at, prot.end());
  at[4] ^= 0x01;
  auto v = engine_->verify(Source::memory(prot), Source::memory(map), ro_);
  EXPECT_EQ(v.status, FileStatus::findings) << describe(v);
  ASSERT_TRUE(v.mtd.has_value());
  ASSERT_EQ(v.mtd->mismatches.size(), 1u) << describe(v);
  EXPECT_EQ(v.mtd->outcome, MtdOutcome::mismatch);
  EXPECT_EQ(v.mtd->mismatches[0].what, "layout") << describe(v);
  EXPECT_EQ(v.mtd->code, "tampered");
  Sink out = Sink::memory();
  auto r = engine_->restore(Source::memory(prot), Source::memory(map), out, ro_);
  EXPECT_NE(r.status, FileStatus::clean) << describe(r);
  EXPECT_TRUE(out.bytes().empty());
}

TEST_F(MtdMemory, WrongKeyOrSwappedArgumentsFromMemory) {
  std::vector<uint8_t> prot, map;
  protect_in_memory(prot, map);
  mtd::RestoreOptions wrong = ro_;
  wrong.open.symmetric_key->fill(6);
  Sink out = Sink::memory();
  auto r = engine_->restore(Source::memory(prot), Source::memory(map), out, wrong);
  EXPECT_NE(r.status, FileStatus::clean) << describe(r);
  EXPECT_EQ(r.mtd->code, "wrong-key") << describe(r);
  EXPECT_TRUE(out.bytes().empty());
  // The model given as the map, and the map given as the model.
  auto swapped = engine_->verify(Source::memory(prot), Source::memory(prot, "m"), ro_);
  EXPECT_EQ(swapped.error.value_or(Error{}).rule, Rule::map_not_a_map) << describe(swapped);
  auto as_model = engine_->verify(Source::memory(map), Source::memory(map), ro_);
  EXPECT_EQ(as_model.error.value_or(Error{}).rule, Rule::mtd_input_is_map) << describe(as_model);
  // A map in memory is bounded as a map file is, before any key derivation.
  std::vector<uint8_t> huge(map);
  huge.resize((size_t(32) << 20) + 1, 0);
  auto big = engine_->verify(Source::memory(prot), Source::memory(huge), ro_);
  EXPECT_NE(big.status, FileStatus::clean);
  EXPECT_EQ(big.mtd->code, "bad-map") << describe(big);
}

// Output and map are committed together: when the model cannot be committed (its file
// appeared meanwhile, or exists), a memory map stays empty and a file map is not left behind.
TEST_F(MtdMemory, NoMapWithoutItsModel) {
  TempDir dir;
  write_file(dir / "exists.pt", {1, 2, 3});
  Sink out = Sink::file(dir / "exists.pt"), map = Sink::memory();
  auto p = engine_->protect(Source::memory(model_), out, map, po_);
  EXPECT_EQ(p.status, FileStatus::rejected) << describe(p);
  EXPECT_TRUE(map.bytes().empty());
  EXPECT_EQ(read_file(dir / "exists.pt"), (std::vector<uint8_t>{1, 2, 3}));

  // Not a model at all: neither sink gets anything, no file appears.
  const std::vector<uint8_t> junk(100, 'x');
  Sink mout = Sink::memory(), fmap = Sink::file(dir / "j.map");
  auto j = engine_->protect(Source::memory(junk), mout, fmap, po_);
  EXPECT_EQ(j.status, FileStatus::rejected) << describe(j);
  EXPECT_TRUE(mout.bytes().empty());
  EXPECT_FALSE(fs::exists(dir / "j.map"));
  EXPECT_EQ(dir.entries(), 1u);

  // A sink that may replace a file is refused before anything is read.
  Sink replacing = Sink::memory(), rmap = Sink::file(dir / "exists.pt", /*replace=*/true);
  auto x = engine_->protect(Source::memory(model_), replacing, rmap, po_);
  EXPECT_EQ(x.error.value_or(Error{}).rule, Rule::engine_unsupported);
  EXPECT_EQ(read_file(dir / "exists.pt"), (std::vector<uint8_t>{1, 2, 3}));
}

// protect / restore / verify use the Engine's limits, not the process-wide defaults: an
// Engine whose input limit is below the model's size refuses it in each of them.
TEST_F(MtdMemory, EngineLimitsApplyToMtd) {
  std::vector<uint8_t> prot, map;
  protect_in_memory(prot, map);
  EngineOptions small;
  small.limits.max_input_bytes = 4096;  // the model is about 61 KB
  auto strict = Engine::create(small);
  ASSERT_TRUE(strict.ok());
  Sink out = Sink::memory(), m = Sink::memory();
  auto p = strict->protect(Source::memory(model_), out, m, po_);
  EXPECT_EQ(p.status, FileStatus::rejected) << describe(p);
  EXPECT_EQ(p.error.value_or(Error{}).rule, Rule::limits_input_size) << describe(p);
  ASSERT_TRUE(p.mtd.has_value());
  EXPECT_EQ(p.mtd->outcome, MtdOutcome::error);
  EXPECT_TRUE(out.bytes().empty());
  EXPECT_TRUE(m.bytes().empty());
  auto v = strict->verify(Source::memory(prot), Source::memory(map), ro_);
  EXPECT_NE(v.status, FileStatus::clean) << describe(v);
  Sink r = Sink::memory();
  auto rs = strict->restore(Source::memory(prot), Source::memory(map), r, ro_);
  EXPECT_NE(rs.status, FileStatus::clean) << describe(rs);
  EXPECT_TRUE(r.bytes().empty());
  // The same calls on an Engine with the default limits succeed.
  EXPECT_EQ(engine_->verify(Source::memory(prot), Source::memory(map), ro_).status, FileStatus::clean);
  // One copy per customer (protect --recipients-dir) too: the input is refused once, nothing written.
  TempDir dir;
  write_file(dir / "m.pt", model_);
  std::vector<mtd::ProtectCopy> copies(2);
  for (size_t i = 0; i < copies.size(); ++i) {
    copies[i].name = "c" + std::to_string(i);
    copies[i].output = dir / (copies[i].name + ".pt");
    copies[i].map = dir / (copies[i].name + ".map");
    copies[i].seal = po_.seal;
  }
  auto refused = strict->protect_copies(dir / "m.pt", copies, po_);
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(refused[0].error.value_or(Error{}).rule, Rule::limits_input_size) << describe(refused[0]);
  EXPECT_EQ(dir.entries(), 1u);
  auto made = engine_->protect_copies(dir / "m.pt", copies, po_);
  ASSERT_EQ(made.size(), 2u);
  for (const auto& r : made) {
    EXPECT_EQ(r.status, FileStatus::clean) << describe(r);
    ASSERT_TRUE(r.mtd.has_value());
    EXPECT_EQ(r.mtd->outcome, MtdOutcome::ok);
  }
  EXPECT_EQ(made[1].mtd->map, copies[1].map);
  EXPECT_EQ(dir.entries(), 5u);
}

// A memory sink used before holds nothing of that earlier call after a failed one.
TEST_F(MtdMemory, MemorySinksAreEmptiedAtEveryCall) {
  std::vector<uint8_t> prot, map;
  protect_in_memory(prot, map);
  Sink out = Sink::memory(), m = Sink::memory();
  ASSERT_EQ(engine_->protect(Source::memory(model_), out, m, po_).status, FileStatus::clean);
  ASSERT_FALSE(out.bytes().empty());
  const std::vector<uint8_t> junk(100, 'x');
  auto j = engine_->protect(Source::memory(junk), out, m, po_);
  EXPECT_EQ(j.status, FileStatus::rejected);
  EXPECT_TRUE(out.bytes().empty());
  EXPECT_TRUE(m.bytes().empty());
  Sink r = Sink::memory();
  ASSERT_EQ(engine_->restore(Source::memory(prot), Source::memory(map), r, ro_).status, FileStatus::clean);
  prot[prot.size() / 2] ^= 1;
  EXPECT_NE(engine_->restore(Source::memory(prot), Source::memory(map), r, ro_).status, FileStatus::clean);
  EXPECT_TRUE(r.bytes().empty());
}

// Keys and passphrases through the public handles: a key file parsed into guarded memory
// opens the map it sealed; a public key file has no symmetric key; a signer is pinned.
TEST_F(MtdMemory, PublicKeyHandles) {
  TempDir dir;
  mtd::Key32 raw;
  raw.fill(9);
  char b64[64];
  sodium_bin2base64(b64, sizeof b64, raw.data(), raw.size(), sodium_base64_VARIANT_ORIGINAL);
  auto key = mtd::Key::parse("modelcdr-key-v1\nkind: symmetric\nkey: " + std::string(b64) + "\n", "ops.key");
  ASSERT_TRUE(key.ok()) << key.error().describe();
  EXPECT_EQ(key->kind(), "symmetric");
  ASSERT_TRUE(key->has_symmetric());
  EXPECT_FALSE(key->can_sign());
  auto bad = mtd::Key::parse("not a key file\n", "x.key");
  EXPECT_FALSE(bad.ok());

  write_file(dir / "pass.txt", {'h', 'u', 'n', 't', 'e', 'r', '2', '\n', 'x'});
  auto pass = mtd::read_passphrase_file(dir / "pass.txt");
  ASSERT_TRUE(pass.ok()) << pass.error().describe();
  EXPECT_EQ(std::string_view(**pass), "hunter2");  // the first line only
  write_file(dir / "empty.txt", {'\n'});
  auto empty = mtd::read_passphrase_file(dir / "empty.txt");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.error().rule, Rule::key_passphrase);

  mtd::ProtectOptions po;
  po.seal.symmetric_keys.push_back(*key->symmetric());
  po.seal.passphrases.push_back(**pass);
  po.seal.pwhash_ops = 1;                 // the minimum Argon2id cost keeps the test fast
  po.seal.pwhash_mem = size_t(8) << 20;
  Sink out = Sink::memory(), map = Sink::memory();
  ASSERT_EQ(engine_->protect(Source::memory(model_), out, map, po).status, FileStatus::clean);
  mtd::RestoreOptions by_key, by_pass;
  by_key.open.symmetric_key = key->symmetric();
  by_pass.open.passphrase = std::move(*pass);
  for (auto* o : {&by_key, &by_pass}) {
    o->open.allow_unsigned = true;
    auto v = engine_->verify(Source::memory(out.bytes()), Source::memory(map.bytes()), *o);
    EXPECT_EQ(v.status, FileStatus::clean) << describe(v);
  }
  // A Secret copy is a separate guarded copy; reset wipes and frees it.
  mtd::Secret<mtd::Key32> a = raw, b = a;
  a.reset();
  EXPECT_FALSE(a);
  ASSERT_TRUE(b);
  EXPECT_EQ(*b, raw);
}

// restore_model (the Python loader's in-memory restore) goes through the same record stage as
// restore: from memory, the restored payloads are the original's; a tampered record is a
// mismatch and nothing is handed back.
TEST_F(MtdMemory, RestoreModelInMemory) {
  std::vector<uint8_t> prot, map;
  protect_in_memory(prot, map);
  LoadedModelPtr restored;
  auto r = mtd::restore_model(Source::memory(prot), Source::memory(map), ro_, restored);
  ASSERT_EQ(r.outcome, mtd::Outcome::ok) << (r.error ? r.error->describe() : r.code);
  ASSERT_TRUE(restored);
  FileReport lr;
  auto original = engine_->load(Source::memory(model_), {}, lr);
  ASSERT_TRUE(original.ok());
  const auto& a = model_of(*restored).storages;
  const auto& b = model_of(**original).storages;
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i)
    EXPECT_TRUE(std::equal(a[i].bytes.begin(), a[i].bytes.end(), b[i].bytes.begin(), b[i].bytes.end())) << i;
  prot[prot.size() / 2] ^= 0x10;
  LoadedModelPtr none;
  auto t = mtd::restore_model(Source::memory(prot), Source::memory(map), ro_, none);
  EXPECT_NE(t.outcome, mtd::Outcome::ok);
  EXPECT_FALSE(none);
}

// One Engine serving protect / verify / restore in memory from several threads at once (a
// service's use): every call owns its sinks; each thread's round trip gives the original back.
TEST_F(MtdMemory, ThreadsShareOneEngine) {
  constexpr int kThreads = 4;
  std::vector<int> ok(kThreads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t)
    pool.emplace_back([&, t] {
      for (int round = 0; round < 3; ++round) {
        Sink out = Sink::memory(), map = Sink::memory(), back = Sink::memory();
        if (engine_->protect(Source::memory(model_), out, map, po_).status != FileStatus::clean) return;
        if (engine_->verify(Source::memory(out.bytes()), Source::memory(map.bytes()), ro_).status != FileStatus::clean) return;
        if (engine_->restore(Source::memory(out.bytes()), Source::memory(map.bytes()), back, ro_).status != FileStatus::clean)
          return;
        if (back.bytes() != model_) return;
      }
      ok[t] = 1;
    });
  for (auto& th : pool) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(ok[t], 1) << "thread " << t;
}

}  // namespace
