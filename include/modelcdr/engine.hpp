// modelcdr::Engine: the library's public API (docs/API.md has the full contract).
//
//   auto engine = modelcdr::Engine::create({});            // or with limits and a class policy
//   auto sink = modelcdr::Sink::memory();
//   auto report = engine->disarm(modelcdr::Source::memory(bytes, "upload.pt"), sink, {});
//   if (report.status != modelcdr::FileStatus::rejected) use(sink.bytes());
//
// An Engine owns its limits and its vetted class registry (defaults plus its own policy);
// it is immutable after create(), cheap to copy (copies share state), and safe to call from
// several threads at once. Every call returns one FileReport; errors are values in it, never
// exceptions (allocation failure included: resource.out-of-memory).
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "modelcdr/api.hpp"
#include "modelcdr/batch.hpp"
#include "modelcdr/limits.hpp"
#include "modelcdr/mtd.hpp"

namespace modelcdr {

namespace mtd {
struct ProtectCopy;  // include/modelcdr/mtd_tools.hpp
}

// Where a model comes from. A memory source borrows the bytes: the caller keeps them alive
// and unchanged until the call that uses the Source returns. `name` appears in reports and
// messages in place of a path.
class Source {
 public:
  static Source file(std::string path);
  static Source memory(std::span<const uint8_t> bytes, std::string name = "<memory>");
  bool is_memory() const { return memory_; }
  const std::string& name() const { return name_; }
  std::span<const uint8_t> bytes() const { return bytes_; }  // memory sources only

 private:
  bool memory_ = false;
  std::string name_;
  std::span<const uint8_t> bytes_;
};

// Where an output goes. A file sink is written to a temporary file next to `path` and
// renamed into place only on success; an existing file is replaced only with `replace`;
// `durable` fsyncs before the rename. A memory sink holds the result after a successful
// call; after a rejected one it is empty. A Sink belongs to one call at a time.
class Sink {
 public:
  static Sink file(std::string path, bool replace = false, bool durable = false);
  static Sink memory(std::string name = "<memory>");
  bool is_memory() const { return memory_; }
  const std::string& name() const { return name_; }  // the path of a file sink
  bool replace() const { return replace_; }
  bool durable() const { return durable_; }
  // Memory sinks: the output file and, when the model had a module tree, the
  // OUT.architecture.json document (empty otherwise). A file sink writes the latter next to
  // its path, as disarm_file does.
  const std::vector<uint8_t>& bytes() const { return bytes_; }
  std::vector<uint8_t> take_bytes() { return std::move(bytes_); }
  const std::vector<uint8_t>& architecture() const { return architecture_; }

 private:
  friend struct SinkAccess;  // the pipeline fills memory sinks
  bool memory_ = false, replace_ = false, durable_ = false;
  std::string name_;
  std::vector<uint8_t> bytes_, architecture_;
};

struct EngineOptions {
  EngineLimits limits;
  // Extra vetted classes for this Engine only (docs/REGISTRY.md), "module.Class" each, no
  // wildcards: allow_classes are rebuilt from NEWOBJ + BUILD, allow_reduce from REDUCE with
  // plain-data arguments + BUILD. policy_files are JSON files in load_class_policy's format.
  std::vector<std::string> allow_classes, allow_reduce, policy_files;
};

class Engine {
 public:
  // Fails (policy.unreadable, policy.bad-json, policy.bad-class) when the policy is invalid.
  static Result<Engine> create(const EngineOptions& options = {});

  FileReport scan(const Source& source, const ScanOptions& options = {}) const;
  // DisarmOptions::force and ::fsync are ignored here: the Sink says (replace, durable).
  FileReport disarm(const Source& source, Sink& sink, const DisarmOptions& options = {}) const;
  // load_model (api.hpp) with this Engine's policy and limits, from any source: the parsed,
  // checked and lifted model, for callers that build their own objects from it (the Python
  // loader). A memory source is borrowed for the LoadedModel's whole life.
  Result<LoadedModelPtr> load(const Source& source, const DisarmOptions& options, FileReport& report,
                              bool defer_storage_crc = false) const;

  // MTD (docs/MTD.md) on any source and sink: the model and the map each from a file or
  // from memory, the protected / restored model and the new map each to an atomic file or to
  // memory. A file sink with replace is refused (engine.unsupported): MTD never replaces an
  // existing file. protect commits the map before the model (a file map is removed again if
  // the model cannot be committed; a memory map is filled only once the model is). On failure
  // memory sinks are empty. The outcome is in FileReport::mtd, an error in FileReport::error.
  // The path forms are Sink::file(map_path) / Source::file(map_path).
  FileReport protect(const Source& source, Sink& sink, Sink& map, const mtd::ProtectOptions& options) const;
  FileReport restore(const Source& source, const Source& map, Sink& sink, const mtd::RestoreOptions& options) const;
  FileReport verify(const Source& source, const Source& map, const mtd::RestoreOptions& options) const;
  // restore without an output (the Python loader): the same checks as restore; on success
  // `restored` holds the restored model, its records in owned buffers (the plain weights
  // never touch a file). A memory source is borrowed for the restored model's whole life, as
  // for load.
  FileReport restore_model(const Source& source, const Source& map, const mtd::RestoreOptions& options,
                           LoadedModelPtr& restored) const;
  FileReport protect(const Source& source, Sink& sink, const std::string& map_path,
                     const mtd::ProtectOptions& options) const;
  FileReport restore(const Source& source, const std::string& map_path, Sink& sink,
                     const mtd::RestoreOptions& options) const;
  FileReport verify(const Source& source, const std::string& map_path, const mtd::RestoreOptions& options) const;
  // mtd::protect_copies (include/modelcdr/mtd_tools.hpp) with this Engine's policy and limits:
  // `input` read and disarmed once, then one protected copy and map per entry; stops at the
  // first failure. One report per copy written or failed (a load failure gives one report).
  std::vector<FileReport> protect_copies(const std::string& input, const std::vector<mtd::ProtectCopy>& copies,
                                         const mtd::ProtectOptions& options) const;

  // Directory mode (include/modelcdr/batch.hpp): every model file under `in` disarmed into
  // `out` with this Engine's policy and limits; BatchOptions::disarm_one is set by the Engine.
  Result<std::vector<FileReport>> disarm_tree(const std::string& in, const std::string& out,
                                              engine::BatchOptions options) const;
  // `scan` over files, folders and "-" (standard input) with this Engine's policy and limits
  // (include/modelcdr/batch.hpp): one report per file, in walk order; ScanWalkOptions::scan_one
  // is set by the Engine.
  std::vector<FileReport> scan_paths(const std::vector<std::string>& paths, engine::ScanWalkOptions options) const;

  // "module.Class" of every class this Engine rebuilds (the defaults, then its policy).
  std::vector<std::string> allowed_classes() const;
  const EngineLimits& limits() const;

  struct State;  // the immutable shared state (src/engine/engine.cpp)

 private:
  explicit Engine(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  std::shared_ptr<const State> state_;
};

}  // namespace modelcdr
