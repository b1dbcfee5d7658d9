// modelcdr::Engine (include/modelcdr/engine.hpp, docs/API.md): immutable per-Engine state
// (its own class registry and limits) over the one pipeline in cdr/pipeline.cpp. Nothing
// here is process-global, so Engines never see each other's policy and one Engine may be
// used from many threads: every call reads the shared state and owns everything it writes.
#include "modelcdr/engine.hpp"

#include <initializer_list>

#include "cdr/class_registry.hpp"
#include "engine/batch.hpp"
#include "engine/run.hpp"
#include "engine/scan_walk.hpp"
#include "engine/sink_access.hpp"
#include "mtd/mtd.hpp"

namespace modelcdr {

struct Engine::State {
  cdr::ClassRegistry registry = cdr::ClassRegistry::defaults();
  engine::RunContext context;  // points at `registry`: State never moves once shared
};

Source Source::file(std::string path) {
  Source s;
  s.name_ = std::move(path);
  return s;
}

Source Source::memory(std::span<const uint8_t> bytes, std::string name) {
  Source s;
  s.memory_ = true;
  s.bytes_ = bytes;
  s.name_ = std::move(name);
  return s;
}

Sink Sink::file(std::string path, bool replace, bool durable) {
  Sink s;
  s.name_ = std::move(path);
  s.replace_ = replace;
  s.durable_ = durable;
  return s;
}

Sink Sink::memory(std::string name) {
  Sink s;
  s.memory_ = true;
  s.name_ = std::move(name);
  return s;
}

const char* mtd_outcome_name(MtdOutcome o) {
  switch (o) {
    case MtdOutcome::ok: return "ok";
    case MtdOutcome::mismatch: return "mismatch";
    case MtdOutcome::error: return "error";
  }
  return "error";
}

namespace engine {
const RunContext& process_context() {
  static const RunContext ctx{&cdr::ClassRegistry::active(), EngineLimits{}};
  return ctx;
}
}  // namespace engine

Result<Engine> Engine::create(const EngineOptions& options) {
  auto state = std::make_shared<State>();
  for (const auto& c : options.allow_classes) MCDR_TRY(state->registry.allow(c, cdr::Construct::newobj));
  for (const auto& c : options.allow_reduce) MCDR_TRY(state->registry.allow(c, cdr::Construct::reduce));
  for (const auto& f : options.policy_files) MCDR_TRY(state->registry.load_policy_file(f));
  state->context.registry = &state->registry;
  state->context.limits = options.limits;
  return Engine(std::move(state));
}

FileReport Engine::scan(const Source& source, const ScanOptions& options) const {
  return engine::run_scan(source, options, state_->context);
}

FileReport Engine::disarm(const Source& source, Sink& sink, const DisarmOptions& options) const {
  return engine::run_disarm(source, sink, options, state_->context);
}

Result<LoadedModelPtr> Engine::load(const Source& source, const DisarmOptions& options, FileReport& report,
                                    bool defer_storage_crc) const {
  return engine::run_load(source, options, report, defer_storage_crc, state_->context);
}

namespace {

FileReport refused(const Source& source, const std::string& why) {
  FileReport r;
  r.input = source.name();
  r.format = "unknown";
  r.status = FileStatus::rejected;
  r.error = make_error(Rule::engine_unsupported, why);
  return r;
}

// One report type for every call: the MTD outcome, with its structured mismatches, goes into
// FileReport::mtd (the CLI renders its text and JSON reports from it).
FileReport to_report(mtd::MtdResult m, const std::string& map_path, bool verifying) {
  FileReport r = std::move(m.file);
  MtdReport x;
  x.outcome = m.outcome;
  x.code = m.code;
  x.state = m.state;
  x.map = map_path;
  x.signer = m.signer;
  x.signer_trusted = m.signer_trusted;
  x.storages = m.storages;
  x.permuted = m.permuted;
  x.swapped = m.swapped;
  x.mismatches = std::move(m.mismatches);
  r.mtd = std::move(x);
  r.output = m.output;
  switch (m.outcome) {
    case mtd::Outcome::ok: r.status = r.removed.empty() ? FileStatus::clean : FileStatus::removed; break;
    case mtd::Outcome::mismatch: r.status = FileStatus::findings; break;
    case mtd::Outcome::error:
      r.status = verifying ? FileStatus::error : FileStatus::rejected;
      r.error = m.error;
      r.output.clear();
      break;
  }
  return r;
}

// MTD never replaces an existing file (a protected model's map, a restored model): a file
// sink with replace is refused before anything is read. Memory sinks are emptied.
FileReport refused_replace(const Source& source, std::initializer_list<Sink*> sinks) {
  for (Sink* s : sinks)
    if (s->is_memory()) SinkAccess::clear(*s);
  FileReport r = refused(source, "protect/restore never replace an existing file: use a sink without replace");
  r.mtd = MtdReport{};  // outcome error: every MTD call's report has its MTD part
  return r;
}

bool any_replace(std::initializer_list<const Sink*> sinks) {
  for (const Sink* s : sinks)
    if (!s->is_memory() && s->replace()) return true;
  return false;
}

}  // namespace

FileReport Engine::protect(const Source& source, Sink& sink, Sink& map, const mtd::ProtectOptions& options) const {
  if (any_replace({&sink, &map})) return refused_replace(source, {&sink, &map});
  mtd::ProtectOptions o = options;
  o.context = &state_->context;
  return to_report(mtd::protect(source, sink, map, o), map.name(), false);
}

FileReport Engine::protect(const Source& source, Sink& sink, const std::string& map_path,
                           const mtd::ProtectOptions& options) const {
  Sink map = Sink::file(map_path);
  return protect(source, sink, map, options);
}

std::vector<FileReport> Engine::protect_copies(const std::string& input, const std::vector<mtd::ProtectCopy>& copies,
                                               const mtd::ProtectOptions& options) const {
  mtd::ProtectOptions o = options;
  o.context = &state_->context;
  auto results = mtd::protect_copies(input, copies, o);
  std::vector<FileReport> out;
  for (size_t i = 0; i < results.size(); ++i)
    out.push_back(to_report(std::move(results[i]), i < copies.size() ? copies[i].map : std::string(), false));
  return out;
}

FileReport Engine::restore(const Source& source, const Source& map, Sink& sink, const mtd::RestoreOptions& options) const {
  if (any_replace({&sink})) return refused_replace(source, {&sink});
  mtd::RestoreOptions o = options;
  o.context = &state_->context;
  return to_report(mtd::restore(source, map, sink, o), map.name(), false);
}

FileReport Engine::restore(const Source& source, const std::string& map_path, Sink& sink,
                           const mtd::RestoreOptions& options) const {
  return restore(source, Source::file(map_path), sink, options);
}

FileReport Engine::verify(const Source& source, const Source& map, const mtd::RestoreOptions& options) const {
  mtd::RestoreOptions o = options;
  o.context = &state_->context;
  return to_report(mtd::verify(source, map, o), map.name(), true);
}

FileReport Engine::restore_model(const Source& source, const Source& map, const mtd::RestoreOptions& options,
                                 LoadedModelPtr& restored) const {
  mtd::RestoreOptions o = options;
  o.context = &state_->context;
  FileReport r = to_report(mtd::restore_model(source, map, o, restored), map.name(), false);
  if (r.mtd->outcome != MtdOutcome::ok) restored.reset();  // a model only when it matched its map
  return r;
}

FileReport Engine::verify(const Source& source, const std::string& map_path, const mtd::RestoreOptions& options) const {
  return verify(source, Source::file(map_path), options);
}

Result<std::vector<FileReport>> Engine::disarm_tree(const std::string& in, const std::string& out,
                                                    engine::BatchOptions options) const {
  auto state = state_;  // the workers hold the state for the whole run
  options.disarm_one = [state](const std::string& i, const std::string& o, const DisarmOptions& d) {
    Sink sink = Sink::file(o, d.force, d.fsync);
    return engine::run_disarm(Source::file(i), sink, d, state->context);
  };
  return engine::disarm_directory(in, out, options);
}

std::vector<FileReport> Engine::scan_paths(const std::vector<std::string>& paths, engine::ScanWalkOptions options) const {
  options.scan_one = [this](const std::string& p, const ScanOptions& o) { return scan(Source::file(p), o); };
  return engine::scan_paths(paths, options);
}

std::vector<std::string> Engine::allowed_classes() const {
  std::vector<std::string> out;
  for (const auto& c : state_->registry.classes()) out.push_back(c.module + "." + c.name);
  return out;
}

const EngineLimits& Engine::limits() const { return state_->context.limits; }

}  // namespace modelcdr
