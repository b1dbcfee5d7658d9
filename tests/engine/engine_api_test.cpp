// The public Engine API (include/modelcdr/engine.hpp, docs/API.md) driven with in-memory
// sources and sinks: inputs are built here (safetensors headers by hand, hand-assembled
// pickles, and torch checkpoints the engine itself rebuilt from those); no torch needed.
#include <gtest/gtest.h>
#include <sodium.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "engine/batch.hpp"
#include "modelcdr/engine.hpp"
#include "safetensors_fixture.hpp"
#include "mtd/mtd.hpp"

using namespace modelcdr;
namespace fs = std::filesystem;
using modelcdr::testing::read_file;
using modelcdr::testing::safetensors_file;

namespace {


// Protocol 2: module.Class.__new__(module.Class) with BUILD state {'alpha': 1.5} (NEWOBJ + BUILD).
std::vector<uint8_t> object_pickle(const std::string& module, const std::string& name) {
  std::string p = "\x80\x02";
  p += "c" + module + "\n" + name + "\n";
  p += ")\x81";                       // EMPTY_TUPLE NEWOBJ
  p += std::string("}(X\x05\x00\x00\x00" "alpha", 12);        // EMPTY_DICT MARK BINUNICODE 'alpha'
  p += std::string("G\x3f\xf8\x00\x00\x00\x00\x00\x00", 9);  // BINFLOAT 1.5
  p += "ub.";                         // SETITEMS BUILD STOP
  return {p.begin(), p.end()};
}


struct TempDir {
  std::string path;
  TempDir() {
    static int n = 0;
    path = (fs::temp_directory_path() / ("modelcdr_engine_api_" + std::to_string(::getpid()) + "_" + std::to_string(n++)))
               .string();
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

Engine engine_or_die(const EngineOptions& o = {}) {
  auto e = Engine::create(o);
  if (!e.ok()) throw std::runtime_error(e.error().describe());
  return std::move(*e);
}

std::string describe(const FileReport& r) { return r.error ? r.error->describe() : std::string(status_name(r.status)); }

}  // namespace

TEST(EngineApi, MemorySourceToMemorySinkThenScanTheOutput) {
  const auto input = safetensors_file(3, 64, 1.0f);
  Engine engine = engine_or_die();
  Sink sink = Sink::memory("out.pt");
  auto r = engine.disarm(Source::memory(input, "upload.safetensors"), sink);
  ASSERT_EQ(r.status, FileStatus::clean) << describe(r);
  EXPECT_EQ(r.input, "upload.safetensors");
  EXPECT_EQ(r.format, "safetensors");
  EXPECT_EQ(r.tensors.count, 3u);
  ASSERT_GT(sink.bytes().size(), 4u);
  EXPECT_EQ(std::memcmp(sink.bytes().data(), "PK\x03\x04", 4), 0);  // a zip checkpoint
  // The output is itself a model the engine reads back from memory, tensors and bytes intact.
  auto scan = engine.scan(Source::memory(sink.bytes(), "out.pt"));
  ASSERT_NE(scan.status, FileStatus::error) << describe(scan);
  EXPECT_EQ(scan.format, "torch-zip");
  EXPECT_EQ(scan.tensors.count, 3u);
  EXPECT_EQ(scan.tensors.total_bytes, 3u * 64 * 4);
  // And back to safetensors: the payload bytes are the input's.
  DisarmOptions to_st;
  to_st.output_format = OutputFormat::safetensors;
  Sink back = Sink::memory();
  auto r2 = engine.disarm(Source::memory(sink.bytes(), "out.pt"), back, to_st);
  ASSERT_NE(r2.status, FileStatus::rejected) << describe(r2);
  const std::vector<uint8_t> payload(input.end() - 3 * 64 * 4, input.end());
  ASSERT_GE(back.bytes().size(), payload.size());
  EXPECT_TRUE(std::equal(payload.begin(), payload.end(), back.bytes().end() - payload.size()));
}

TEST(EngineApi, MemoryAndFileSinksWriteIdenticalBytes) {
  TempDir dir;
  const auto input = safetensors_file(4, 300000, 2.0f);  // > 1 MiB of payload: large-write paths too
  { std::ofstream(dir / "in.safetensors", std::ios::binary).write(reinterpret_cast<const char*>(input.data()), input.size()); }
  Engine engine = engine_or_die();
  for (auto format : {OutputFormat::pt, OutputFormat::safetensors, OutputFormat::npz}) {
    DisarmOptions o;
    o.output_format = format;
    Sink mem = Sink::memory();
    auto a = engine.disarm(Source::memory(input, "in.safetensors"), mem, o);
    ASSERT_NE(a.status, FileStatus::rejected) << describe(a);
    const std::string out = dir / ("out" + std::to_string(int(format)));
    Sink file = Sink::file(out);
    auto b = engine.disarm(Source::file(dir / "in.safetensors"), file, o);  // the mapped/kernel-copy path
    ASSERT_NE(b.status, FileStatus::rejected) << describe(b);
    EXPECT_EQ(b.output, out);
    EXPECT_TRUE(file.bytes().empty());  // a file sink holds nothing in memory
    EXPECT_EQ(read_file(out), mem.bytes()) << "format " << int(format);
    // The same file source into a memory sink: the kernel-copy path of the file sink and the
    // streamed path of the memfd lay the output out alike.
    Sink mem2 = Sink::memory();
    ASSERT_NE(engine.disarm(Source::file(dir / "in.safetensors"), mem2, o).status, FileStatus::rejected);
    EXPECT_EQ(mem2.bytes(), mem.bytes());
  }
  // A mapped torch checkpoint (folio-phase layout, copy_file_range / reflink into a file sink)
  // rebuilt into a file and into memory.
  const std::string pt = dir / "out" + std::to_string(int(OutputFormat::pt));
  Sink file = Sink::file(dir / "again.pt");
  auto a = engine.disarm(Source::file(pt), file);
  ASSERT_EQ(a.status, FileStatus::clean) << describe(a);
  Sink mem = Sink::memory();
  auto b = engine.disarm(Source::file(pt), mem);
  ASSERT_EQ(b.status, FileStatus::clean) << describe(b);
  EXPECT_EQ(read_file(dir / "again.pt"), mem.bytes());
}

TEST(EngineApi, RejectionLeavesNoOutput) {
  TempDir dir;
  auto input = safetensors_file(2, 16, 0.0f);
  input.resize(input.size() - 4);  // truncated payload: safetensors.truncated
  Engine engine = engine_or_die();
  Sink mem = Sink::memory();
  // A sink that held an earlier result is emptied by a rejected call.
  const auto good = safetensors_file(1, 4, 0.0f);
  ASSERT_NE(engine.disarm(Source::memory(good), mem).status, FileStatus::rejected);
  ASSERT_FALSE(mem.bytes().empty());
  auto r = engine.disarm(Source::memory(input, "bad.safetensors"), mem);
  EXPECT_EQ(r.status, FileStatus::rejected);
  ASSERT_TRUE(r.error.has_value());
  EXPECT_EQ(r.error->rule, Rule::safetensors_truncated);
  EXPECT_TRUE(mem.bytes().empty());
  EXPECT_TRUE(r.output.empty());
  Sink file = Sink::file(dir / "out.pt");
  auto f = engine.disarm(Source::memory(input, "bad.safetensors"), file);
  EXPECT_EQ(f.status, FileStatus::rejected);
  EXPECT_TRUE(fs::is_empty(dir.path)) << "no output, no temporary file";
  // Nor does an existing file get replaced unless the sink says so.
  { std::ofstream(dir / "kept.pt") << "mine"; }
  Sink keep = Sink::file(dir / "kept.pt");
  auto k = engine.disarm(Source::memory(good), keep);
  EXPECT_EQ(k.status, FileStatus::rejected);
  EXPECT_EQ(k.error->rule, Rule::io_exists);
  EXPECT_EQ(read_file(dir / "kept.pt"), (std::vector<uint8_t>{'m', 'i', 'n', 'e'}));
  Sink replace = Sink::file(dir / "kept.pt", /*replace=*/true);
  EXPECT_NE(engine.disarm(Source::memory(good), replace).status, FileStatus::rejected);
  EXPECT_NE(read_file(dir / "kept.pt"), (std::vector<uint8_t>{'m', 'i', 'n', 'e'}));
}

TEST(EngineApi, ProgressIsMonotonicAndEndsDone) {
  const auto input = safetensors_file(8, 200000, 3.0f);  // 6.4 MB: several write chunks
  Engine engine = engine_or_die();
  std::vector<Progress> seen;
  DisarmOptions o;
  o.progress = [&](const Progress& p) {
    seen.push_back(p);
    return true;
  };
  Sink sink = Sink::memory();
  auto r = engine.disarm(Source::memory(input), sink, o);
  ASSERT_EQ(r.status, FileStatus::clean) << describe(r);
  ASSERT_GE(seen.size(), 4u);
  size_t writes = 0;
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_LE(seen[i].done, seen[i].total);
    if (i == 0) continue;
    EXPECT_GE(int(seen[i].stage), int(seen[i - 1].stage)) << "stages run in order";
    if (seen[i].stage == seen[i - 1].stage) {
      EXPECT_GE(seen[i].done, seen[i - 1].done) << "event " << i;
    }
    writes += seen[i].stage == Stage::write;
  }
  EXPECT_EQ(seen.front().stage, Stage::read);
  EXPECT_EQ(seen.front().total, input.size());
  EXPECT_GE(writes, 3u) << "write progress between chunks";
  EXPECT_EQ(seen.back().stage, Stage::done);
  EXPECT_EQ(seen.back().done, seen.back().total);
  EXPECT_EQ(seen.back().total, 8u * 200000 * 4);
}

TEST(EngineApi, CancellationReturnsCancelledAndLeavesNoOutput) {
  TempDir dir;
  const auto input = safetensors_file(8, 200000, 4.0f);
  Engine engine = engine_or_die();
  // Cancelled from the progress callback in the middle of the write stage.
  for (bool to_file : {false, true}) {
    DisarmOptions o;
    int writes = 0;
    o.progress = [&](const Progress& p) { return !(p.stage == Stage::write && ++writes == 2); };
    Sink sink = to_file ? Sink::file(dir / "out.pt") : Sink::memory();
    auto r = engine.disarm(Source::memory(input), sink, o);
    EXPECT_EQ(r.status, FileStatus::rejected);
    ASSERT_TRUE(r.error.has_value());
    EXPECT_EQ(r.error->rule, Rule::engine_cancelled);
    EXPECT_TRUE(sink.bytes().empty());
    EXPECT_TRUE(fs::is_empty(dir.path));
  }
  // Cancelled through the flag, set from another "thread" (here: before the call).
  std::atomic<bool> stop{true};
  DisarmOptions o;
  o.cancel = &stop;
  Sink sink = Sink::memory();
  auto r = engine.disarm(Source::memory(input), sink, o);
  EXPECT_EQ(r.error.value_or(Error{}).rule, Rule::engine_cancelled);
  EXPECT_TRUE(sink.bytes().empty());
  ScanOptions so;
  so.cancel = &stop;
  auto s = engine.scan(Source::memory(input), so);
  EXPECT_EQ(s.status, FileStatus::error);
  EXPECT_EQ(s.error.value_or(Error{}).rule, Rule::engine_cancelled);
  stop = false;
  EXPECT_EQ(engine.disarm(Source::memory(input), sink, o).status, FileStatus::clean);
  EXPECT_FALSE(sink.bytes().empty());
}

TEST(EngineApi, PerEnginePolicyIsIsolated) {
  const auto pickle = object_pickle("mypkg.models", "Thing");
  DisarmOptions o;
  o.output_format = OutputFormat::pickle;
  Engine plain = engine_or_die();
  EngineOptions opts;
  opts.allow_classes = {"mypkg.models.Thing"};
  Engine allowing = engine_or_die(opts);
  Engine plain_after = engine_or_die();  // made after the allowing one: still the defaults only

  Sink a = Sink::memory();
  auto ra = allowing.disarm(Source::memory(pickle, "thing.pkl"), a, o);
  ASSERT_NE(ra.status, FileStatus::rejected) << describe(ra);
  const std::string out(a.bytes().begin(), a.bytes().end());
  EXPECT_NE(out.find("mypkg.models"), std::string::npos) << "the class global, written from the registry";
  EXPECT_NE(out.find("alpha"), std::string::npos);

  for (const Engine* e : {&plain, &plain_after}) {
    Sink s = Sink::memory();
    auto r = e->disarm(Source::memory(pickle, "thing.pkl"), s, o);
    EXPECT_EQ(r.status, FileStatus::rejected);
    EXPECT_EQ(r.error.value_or(Error{}).rule, Rule::cdr_main_object_dropped);
    EXPECT_TRUE(s.bytes().empty());
  }
  // Nor did the allowing Engine extend the process-wide registry of the api.hpp wrappers.
  TempDir dir;
  { std::ofstream(dir / "thing.pkl", std::ios::binary).write(reinterpret_cast<const char*>(pickle.data()), pickle.size()); }
  auto w = disarm_file(dir / "thing.pkl", dir / "out.pkl", o);
  EXPECT_EQ(w.status, FileStatus::rejected);
  EXPECT_FALSE(fs::exists(dir / "out.pkl"));

  const auto classes = allowing.allowed_classes();
  EXPECT_EQ(classes.back(), "mypkg.models.Thing");
  EXPECT_EQ(classes.size(), plain.allowed_classes().size() + 1);
  EngineOptions bad;
  bad.allow_classes = {"mypkg.*"};
  auto e = Engine::create(bad);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().rule, Rule::policy_bad_class);
}

TEST(EngineApi, EngineLimitsApplyPerEngine) {
  const auto input = safetensors_file(2, 1024, 0.0f);
  EngineOptions small;
  small.limits.max_input_bytes = 4096;
  Engine strict = engine_or_die(small);
  Engine loose = engine_or_die();
  Sink s = Sink::memory();
  auto r = strict.disarm(Source::memory(input, "big.safetensors"), s);
  EXPECT_EQ(r.status, FileStatus::rejected);
  EXPECT_EQ(r.error.value_or(Error{}).rule, Rule::limits_input_size);
  EXPECT_EQ(strict.scan(Source::memory(input)).error->rule, Rule::limits_input_size);
  EXPECT_EQ(loose.disarm(Source::memory(input), s).status, FileStatus::clean);
  // A pickle node budget of this Engine only.
  EngineOptions few;
  few.limits.max_pickle_nodes = 2;
  few.allow_classes = {"mypkg.models.Thing"};
  auto tight = engine_or_die(few).scan(Source::memory(object_pickle("mypkg.models", "Thing")));
  EXPECT_EQ(tight.status, FileStatus::error);
}

TEST(EngineApi, EightThreadsShareOneEngine) {
  Engine engine = engine_or_die();
  constexpr int kThreads = 8, kRounds = 6;
  std::vector<std::vector<uint8_t>> inputs, expected;
  for (int t = 0; t < kThreads; ++t) {
    inputs.push_back(safetensors_file(3 + t, 2000 + 500 * t, float(t)));
    Sink s = Sink::memory();
    auto r = engine.disarm(Source::memory(inputs.back()), s);
    ASSERT_EQ(r.status, FileStatus::clean) << describe(r);
    expected.push_back(s.take_bytes());
  }
  // The pickle case too: objects rebuilt from the Engine's own registry.
  EngineOptions opts;
  opts.allow_classes = {"mypkg.models.Thing"};
  Engine with_policy = engine_or_die(opts);
  const auto pickle = object_pickle("mypkg.models", "Thing");
  DisarmOptions to_pickle;
  to_pickle.output_format = OutputFormat::pickle;
  Sink ps = Sink::memory();
  ASSERT_NE(with_policy.disarm(Source::memory(pickle), ps, to_pickle).status, FileStatus::rejected);
  const std::vector<uint8_t> expected_pickle = ps.bytes();

  std::atomic<int> mismatches{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        const int which = (t + round) % kThreads;  // every thread touches every input
        Sink s = Sink::memory();
        auto r = engine.disarm(Source::memory(inputs[which]), s);
        if (r.status != FileStatus::clean) ++failures;
        else if (s.bytes() != expected[which]) ++mismatches;
        Sink p = Sink::memory();
        auto rp = with_policy.disarm(Source::memory(pickle), p, to_pickle);
        if (rp.status == FileStatus::rejected) ++failures;
        else if (p.bytes() != expected_pickle) ++mismatches;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(EngineApi, DisarmTreeUsesTheEngine) {
  TempDir in, out_parent;
  const auto st = safetensors_file(2, 8, 0.0f);
  const auto pickle = object_pickle("mypkg.models", "Thing");
  { std::ofstream(in / "model.safetensors", std::ios::binary).write(reinterpret_cast<const char*>(st.data()), st.size()); }
  { std::ofstream(in / "thing.pkl", std::ios::binary).write(reinterpret_cast<const char*>(pickle.data()), pickle.size()); }
  EngineOptions opts;
  opts.allow_classes = {"mypkg.models.Thing"};
  for (bool allow : {false, true}) {
    Engine engine = engine_or_die(allow ? opts : EngineOptions{});
    const std::string out = out_parent / (allow ? "allowed" : "plain");
    engine::BatchOptions b;
    b.jobs = 2;
    auto reports = engine.disarm_tree(in.path, out, b);
    ASSERT_TRUE(reports.ok()) << reports.error().describe();
    ASSERT_EQ(reports->size(), 2u);
    for (const auto& r : *reports) {
      if (r.input.find("thing.pkl") != std::string::npos)
        EXPECT_EQ(r.status == FileStatus::rejected, !allow) << describe(r);
      else
        EXPECT_EQ(r.status, FileStatus::clean) << describe(r);
    }
  }
}

TEST(EngineApi, ProtectVerifyRestoreThroughTheEngine) {
  if (sodium_init() < 0) GTEST_SKIP() << "libsodium unavailable";
  TempDir dir;
  Engine engine = engine_or_die();
  const auto input = safetensors_file(3, 5000, 7.0f);
  Sink model = Sink::file(dir / "m.pt");
  ASSERT_EQ(engine.disarm(Source::memory(input), model).status, FileStatus::clean);
  mtd::Key32 key;
  key.fill(5);
  mtd::ProtectOptions po;
  po.seal.symmetric_keys = {key};
  Sink prot = Sink::file(dir / "p.pt");
  auto p = engine.protect(Source::file(dir / "m.pt"), prot, dir / "p.map", po);
  ASSERT_TRUE(p.mtd.has_value());
  ASSERT_NE(p.status, FileStatus::rejected) << describe(p);
  EXPECT_EQ(p.mtd->code, "ok");
  EXPECT_EQ(p.mtd->storages, 3u);
  EXPECT_TRUE(fs::exists(dir / "p.pt"));
  mtd::RestoreOptions ro;
  ro.open.symmetric_key = key;
  ro.open.allow_unsigned = true;
  auto v = engine.verify(Source::file(dir / "p.pt"), dir / "p.map", ro);
  EXPECT_EQ(v.status, FileStatus::clean) << describe(v);
  EXPECT_EQ(v.mtd->state, "protected");
  Sink restored = Sink::file(dir / "r.pt");
  auto rr = engine.restore(Source::file(dir / "p.pt"), dir / "p.map", restored, ro);
  ASSERT_NE(rr.status, FileStatus::rejected) << describe(rr);
  // The restored file holds the original payload again.
  auto back = engine.scan(Source::file(dir / "r.pt"));
  EXPECT_EQ(back.tensors.total_bytes, 3u * 5000 * 4);
  auto vr = engine.verify(Source::file(dir / "r.pt"), dir / "p.map", ro);
  EXPECT_EQ(vr.mtd->state, "restored") << describe(vr);
  // MTD never replaces a file: a sink with replace is refused before anything is written.
  Sink replacing = Sink::file(dir / "p.pt", /*replace=*/true);
  auto m = engine.protect(Source::file(dir / "m.pt"), replacing, dir / "q.map", po);
  EXPECT_EQ(m.error.value_or(Error{}).rule, Rule::engine_unsupported);
  EXPECT_FALSE(fs::exists(dir / "q.map"));
}
