// The pipeline: sniff -> container/decode -> lift -> emit, with every finding collected.
// scan_file is the pipeline without emit; disarm_file writes atomically or not at all.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cdr/class_registry.hpp"
#include "cdr/lifter.hpp"
#include "cdr/scan_keras.hpp"
#include "cdr/scan_salvage.hpp"
#include "cdr/sparse_check.hpp"
#include "container/sniff.hpp"
#include "container/tar_reader.hpp"
#include "container/zip_reader.hpp"
#include "engine/classify.hpp"
#include "engine/run.hpp"
#include "engine/sink_access.hpp"
#include "formats/parsed_model.hpp"
#include "formats/registry.hpp"
#include "io/atomic_output.hpp"
#include "io/free_memory.hpp"
#include "io/mapped_file.hpp"
#include "modelcdr/api.hpp"
#include "modelcdr/engine.hpp"
#include "modelcdr/limits.hpp"
#include "modelcdr/transform.hpp"

namespace modelcdr {

namespace {

using container::Format;
using engine::RunContext;

// An Engine limit of 0 keeps the built-in default; others can only tighten it.
void tighten(uint64_t& bound, uint64_t engine_limit) {
  if (engine_limit != 0 && engine_limit < bound) bound = engine_limit;
}

formats::ReadOptions read_options(const RunContext& ctx) {
  formats::ReadOptions o;
  o.registry = ctx.registry;
  tighten(o.limits.max_ops, ctx.limits.max_pickle_ops);
  tighten(o.limits.max_nodes, ctx.limits.max_pickle_nodes);
  tighten(o.limits.max_container_items, ctx.limits.max_container_items);
  return o;
}

// `mapped`: `bytes` is an io::MappedFile (its pages may be released, its descriptor read);
// otherwise they are a caller's buffer, read through the span only. The sniffed format's row
// in the format table (formats/registry.hpp) opens it.
Result<formats::ParsedModel> parse(std::span<const uint8_t> bytes, Format format, const RunContext& ctx,
                                   bool defer_storage_crc = false, bool is_mapped = false, int input_fd = -1,
                                   Findings* salvage = nullptr, bool scan_only = false) {
  formats::ReadOptions options = read_options(ctx);
  options.salvage = salvage;
  options.scan_only = scan_only;
  options.input_is_mapped = is_mapped;
  options.input_fd = is_mapped ? input_fd : -1;
  options.defer_storage_crc = defer_storage_crc;
  return formats::open(format, bytes, options);
}

// Every reader's model is checked once, whatever reader built it, before any writer (or a
// transform) walks it: bounded depth, no cycles (limits.depth, limits.cycle), and sparse
// tensors that hold torch's invariants (cdr.sparse-invalid findings: disarm rejects them).
Result<formats::ParsedModel> checked(Result<formats::ParsedModel> parsed) {
  if (!parsed.ok()) return parsed;
  MCDR_TRY(limits::check_value_graph(parsed->model));
  cdr::check_sparse_tensors(parsed->model, parsed->model.findings);
  return parsed;
}

// The first invalid sparse tensor, as the error that rejects the file (named by its own rule,
// not wrapped in cdr.ambiguous-input: the verdict is dangerous).
std::optional<Error> sparse_error(const Findings& fs) {
  for (const auto& f : fs)
    if (f.rule == Rule::cdr_sparse_invalid) {
      Error e = make_error(f.rule, f.message);  // about a tensor, not a byte offset
      e.entry = f.entry;
      return e;
    }
  return std::nullopt;
}

// A numeric numpy array lifted from a pickle/joblib is written as a tensor as well (object arrays
// become lists), so the report counts it with the tensors whose bytes it already sums.
bool is_numeric_array(const model::Model& m, const model::Value& v) {
  return v.kind == model::ValueKind::ndarray && v.items.empty() && v.tensor < m.tensors.size() &&
         v.state < m.values.size() &&
         m.values[v.state].text.rfind("O", 0) != 0;
}

TensorStats tensor_stats(const model::Model& m) {
  TensorStats s;
  for (const auto& v : m.values) {
    if (v.kind != model::ValueKind::tensor && !is_numeric_array(m, v)) continue;
    ++s.count;
    s.dtypes[model::dtype_info(m.tensors[v.tensor].dtype).name]++;
  }
  for (const auto& st : m.storages) s.total_bytes += st.nbytes;
  return s;
}

// Findings that mean the file cannot be parsed with certainty: disarm rejects them. The
// catalogue's disposition column decides (src/report/rules.def).
bool is_ambiguity(const Finding& f, const DisarmOptions& o) {
  switch (rule_info(f.rule).disposition) {
    case Disposition::reject: return true;
    case Disposition::reject_high: return f.severity >= Severity::high;
    case Disposition::reject_trailing: return !o.allow_trailing_data;
    default: return false;
  }
}

bool counts(const Finding& f) { return f.severity >= Severity::low; }

Status write_architecture(const model::Model& m, io::AtomicOutput& out) {
  nlohmann::ordered_json modules = nlohmann::ordered_json::array();
  for (const auto& info : m.architecture) {
    modules.push_back({{"path", info.path},
                       {"class", info.class_name.empty() ? info.class_module : info.class_module + "." + info.class_name},
                       {"parameters", info.parameters},
                       {"buffers", info.buffers}});
  }
  nlohmann::ordered_json doc = {{"schema", "modelcdr.architecture/1"},
                                {"note", "module classes recorded as data; nothing here is imported. Names that are not "
                                         "plain dotted Python identifiers are recorded as <rejected> (cdr.architecture-name)"},
                                {"modules", modules}};
  // Names were vetted by the lifter; replace (never throw on) invalid UTF-8 all the same.
  MCDR_TRY(out.write(doc.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n"));
  return out.commit();
}

// The input: a file mapped once (or, for scan, read into a buffer when small), or a caller's
// buffer (borrowed, never copied).
struct Loaded {
  io::MappedFile file;
  std::span<const uint8_t> bytes;
  bool from_file = false;
  bool mapped = false;  // bytes are a file mapping: its pages may be released, its descriptor read
  Format format = Format::unknown;
  // A caller's buffer cannot shrink under us; a file can (io.input-changed).
  bool changed() const { return from_file && file.changed(); }
};

// Scan reads files below this size with one read() instead of mapping them (io::MappedFile):
// most files of a model folder or a scanner corpus are a few KiB. Disarm always maps (its
// writers copy from the descriptor and release pages).
constexpr size_t kScanReadBelow = 64u << 10;
// Scan lets the readers release a mapped file's pages from this size on (see scan_file_impl).
constexpr uint64_t kScanReleaseFrom = 64ull << 20;

// The input opened, not yet checked against the limits nor sniffed.
Result<Loaded> open_input(const Source& source, size_t read_below) {
  Loaded l;
  if (source.is_memory()) {
    l.bytes = source.bytes();
  } else {
    MCDR_ASSIGN(l.file, io::MappedFile::open(source.name(), read_below));
    l.bytes = l.file.bytes();
    l.from_file = true;
    l.mapped = !l.file.buffered();
  }
  return l;
}

Status check_and_sniff(Loaded& l, const RunContext& ctx) {
  if (ctx.limits.max_input_bytes != 0 && l.bytes.size() > ctx.limits.max_input_bytes)
    return make_error(Rule::limits_input_size, "the input is " + std::to_string(l.bytes.size()) +
                                               " bytes, more than this engine's limit of " +
                                               std::to_string(ctx.limits.max_input_bytes));
  l.format = formats::sniff(l.bytes);  // once: the reader gets the result
  return ok_status();
}

Result<Loaded> load(const Source& source, const RunContext& ctx, size_t read_below = 0) {
  MCDR_ASSIGN(Loaded l, open_input(source, read_below));
  MCDR_TRY(check_and_sniff(l, ctx));
  return l;
}

bool cancelled(const std::atomic<bool>* flag) { return flag && flag->load(std::memory_order_relaxed); }

Error cancelled_error() { return make_error(Rule::engine_cancelled, "cancelled by the caller; nothing was written"); }

// Reports one step; false when the caller asked to stop (callback or flag).
bool step(const ProgressFn& progress, const std::atomic<bool>* cancel, Stage stage, uint64_t done, uint64_t total) {
  if (cancelled(cancel)) return false;
  return !progress || progress(Progress{stage, std::min(done, total), total});
}

}  // namespace

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::read: return "read";
    case Stage::transform: return "transform";
    case Stage::write: return "write";
    case Stage::done: return "done";
  }
  return "done";
}

const char* status_name(FileStatus s) {
  switch (s) {
    case FileStatus::clean: return "clean";
    case FileStatus::findings: return "findings";
    case FileStatus::error: return "error";
    case FileStatus::removed: return "removed";
    case FileStatus::rejected: return "rejected";
    case FileStatus::skipped: return "skipped";
  }
  return "error";
}

bool is_model_file(const std::string& path) { return engine::classify(path).kind == engine::Kind::model; }

// Where each entry of a zip or tar container (or a compressed file's one stream) lies: the
// central directory or headers only, read again, under the readers' own limits.
std::vector<EntryLocation> entry_locations(std::span<const uint8_t> bytes, Format sniffed) {
  std::vector<EntryLocation> out;
  Findings ignored;
  switch (sniffed) {
    case Format::torch_zip: case Format::torchscript: case Format::npz: case Format::zip_not_at_start:
      if (auto zip = container::read_zip(bytes, ignored, {}, false); zip.ok())
        for (const auto& e : zip->entries) out.push_back({e.name, e.data_offset, e.method != 0});
      break;
    case Format::torch_tar:
      if (auto tar = container::read_tar(bytes, ignored); tar.ok())
        for (const auto& m : tar->members) out.push_back({m.name, m.data_offset, false});
      break;
    case Format::gzip: case Format::bzip2: case Format::xz: case Format::zlib: case Format::lz4: case Format::lzma:
      out.push_back({"", 0, true});
      break;
    default: break;
  }
  return out;
}

static FileReport scan_file_impl(const Source& source, const ScanOptions& options, const RunContext& ctx) {
  FileReport r;
  r.input = source.name();
  auto fail = [&](Error e) {
    r.status = FileStatus::error;
    r.error = std::move(e);
    return r;
  };
  auto loaded = open_input(source, kScanReadBelow);
  if (loaded.ok() && options.triage)
    if (auto early = options.triage(loaded->bytes)) return std::move(*early);
  if (loaded.ok())
    if (auto s = check_and_sniff(*loaded, ctx); !s.ok()) loaded = s.error();
  if (!loaded.ok()) {
    r.status = FileStatus::error;
    r.error = loaded.error();
    r.format = "unknown";
    r.verdict = file_verdict(r.findings, &*r.error);
    return r;
  }
  r.format = formats::format_name(loaded->format);
  r.entries = entry_locations(loaded->bytes, loaded->format);
  const uint64_t size = loaded->bytes.size();
  if (!step(options.progress, options.cancel, Stage::read, 0, size)) return fail(cancelled_error());
  // A Keras model (HDF5, or a zip with a root config.json), graded from its config whether or not
  // a reader below also accepts the bytes (an HDF5 user block may hold a pickle): scan_keras.hpp.
  std::vector<std::string> entry_names;
  for (const auto& e : r.entries) entry_names.push_back(e.name);
  Findings keras;
  const std::optional<std::string> keras_format = cdr::scan_keras(loaded->bytes, entry_names, keras);
  Findings salvage;
  // The readers drop a mapped input's pages behind them (MADV_DONTNEED), which keeps a 20 GB
  // model's resident set bounded; on a smaller file each drop is only a syscall and a TLB
  // flush (an IPI per call with a second thread), and munmap frees the pages when the file is
  // done. Scan reads nothing through the descriptor, so below the bound it says "not mapped".
  const bool release = loaded->mapped && size >= kScanReleaseFrom;
  // Without an inspect callback nothing reads the lifted values (LiftOptions::scan_only).
  auto parsed = checked(parse(loaded->bytes, loaded->format, ctx, false, release, loaded->file.fd(), &salvage, !options.inspect));
  if (!parsed.ok()) {
    r.status = FileStatus::error;
    r.error = parsed.error();
    // Still say what the broken file would run under CPython (scan_salvage.hpp).
    if (!loaded->changed()) {
      cdr::salvage_zip_members(loaded->bytes, salvage);
      if (parsed.error().rule == Rule::format_unknown) cdr::salvage_unsniffed_pickle(loaded->bytes, salvage);
    }
    r.findings = std::move(salvage);
    if (keras_format && !loaded->changed()) {  // read for a verdict, not an unreadable file
      r.findings.insert(r.findings.end(), keras.begin(), keras.end());
      r.status = FileStatus::findings;
      r.error.reset();
      r.format = *keras_format;
      r.verdict = file_verdict(r.findings);
      return r;
    }
    r.verdict = file_verdict(r.findings, &*r.error);
    return r;
  }
  r.format = formats::format_name(parsed->format);
  if (loaded->changed()) {  // what was read may be zeros, not the file: no verdict
    r.status = FileStatus::error;
    r.error = make_error(Rule::io_input_changed, "the input file changed (truncated or resized) while it was being read");
    r.verdict = file_verdict(r.findings, &*r.error);
    return r;
  }
  r.findings = parsed->findings;
  r.findings.insert(r.findings.end(), parsed->model.findings.begin(), parsed->model.findings.end());
  cdr::fold_call_removals(r.findings);
  r.findings.insert(r.findings.end(), keras.begin(), keras.end());
  r.tensors = tensor_stats(parsed->model);
  if (!step(options.progress, options.cancel, Stage::read, size, size)) return fail(cancelled_error());
  if (options.inspect) options.inspect(parsed->model, r);
  if (!step(options.progress, options.cancel, Stage::done, size, size)) return fail(cancelled_error());
  r.status = std::any_of(r.findings.begin(), r.findings.end(), counts) ? FileStatus::findings : FileStatus::clean;
  r.verdict = file_verdict(r.findings);
  return r;
}

}  // namespace modelcdr

struct modelcdr::LoadedModel {
  Loaded input;
  formats::ParsedModel parsed;
};

namespace modelcdr {

void LoadedModelDeleter::operator()(LoadedModel* m) const { delete m; }
model::Model& model_of(LoadedModel& loaded) { return loaded.parsed.model; }
const ByteRanges& byte_ranges_of(const LoadedModel& loaded) { return loaded.parsed.ranges; }

namespace {
constexpr size_t kTrimObjects = 100'000;  // values and tensors of a model: see load_model_impl

Result<LoadedModelPtr> load_model_impl(const Source& source, const DisarmOptions& options, FileReport& r,
                                       bool defer_storage_crc, const RunContext& ctx);
}  // namespace

Result<LoadedModelPtr> load_model(const std::string& input, const DisarmOptions& options, FileReport& r,
                                  bool defer_storage_crc) {
  return load_model_impl(Source::file(input), options, r, defer_storage_crc, engine::process_context());
}

Result<LoadedModelPtr> engine::run_load(const Source& source, const DisarmOptions& options, FileReport& r,
                                        bool defer_storage_crc, const RunContext& ctx) {
  return load_model_impl(source, options, r, defer_storage_crc, ctx);
}

namespace {
Result<LoadedModelPtr> load_model_impl(const Source& source, const DisarmOptions& options, FileReport& r,
                                       bool defer_storage_crc, const RunContext& ctx) {
  r.input = source.name();
  r.format = "unknown";
  LoadedModelPtr m(new LoadedModel);
  MCDR_ASSIGN(m->input, load(source, ctx));
  if (m->input.mapped) m->input.file.advise_sequential();
  r.format = formats::format_name(m->input.format);
  const uint64_t size = m->input.bytes.size();
  if (!step(options.progress, options.cancel, Stage::read, 0, size)) return cancelled_error();
  MCDR_ASSIGN(m->parsed, checked(parse(m->input.bytes, m->input.format, ctx, defer_storage_crc, m->input.mapped,
                                       m->input.file.fd())));
  // The reader's directory, program and working arrays are freed: for a model of many objects
  // give their pages back before the writer's stage allocates its own (issue 14). Not for small
  // ones: a trim walks every arena of the process, which a batch of small files need not pay.
  if (m->parsed.model.values.size() + m->parsed.model.tensors.size() >= kTrimObjects) io::return_free_memory();
  if (!step(options.progress, options.cancel, Stage::read, size, size)) return cancelled_error();
  r.format = formats::format_name(m->parsed.format);
  r.findings = m->parsed.findings;
  r.findings.insert(r.findings.end(), m->parsed.model.findings.begin(), m->parsed.model.findings.end());
  r.tensors = tensor_stats(m->parsed.model);
  if (m->parsed.not_disarmable) return make_error(Rule::format_not_disarmable, *m->parsed.not_disarmable);
  if (auto e = sparse_error(r.findings)) return *e;
  for (const auto& f : r.findings)
    if (is_ambiguity(f, options))
      return make_error(Rule::cdr_ambiguous_input, "cannot be parsed with certainty: " + f.message + " [" + std::string(rule_id(f.rule)) + "]",
                        f.offset, f.entry);
  return m;
}
}  // namespace

// torch.Size and torch.device values are written as such only into a torch 2.x checkpoint
// (1.13's weights_only loader knows torch.Size but not torch.device); every other output
// holds the plain tuple or string, which is a conversion the report names.
void report_torch_types(const model::Model& m, const DisarmOptions& options, FileReport& r) {
  bool pt = options.output_format == OutputFormat::pt;
  bool keeps_device = pt && options.compat != CompatTarget::torch1_13;
  size_t sizes = 0, devices = 0;
  for (const auto& v : m.values) {
    sizes += v.torch_type == model::TorchType::size && !pt;
    devices += v.torch_type == model::TorchType::device && !keeps_device;
  }
  const char* why = pt ? " (torch 1.13's weights_only loader has no torch.device)" : " (this output format has no such type)";
  if (sizes)
    add_finding(r.findings, Severity::low, Rule::cdr_converted, std::to_string(sizes) + " torch.Size value(s) written as tuples" + why);
  if (devices)
    add_finding(r.findings, Severity::low, Rule::cdr_converted, std::to_string(devices) + " torch.device value(s) written as strings" + why);
}

// numpy fixed-width string arrays have no tensor form: a torch checkpoint holds them as
// (nested) lists of str / bytes. The npy/npz and pickle outputs keep the arrays themselves.
void report_string_arrays(const model::Model& m, const DisarmOptions& options, FileReport& r) {
  if (options.output_format != OutputFormat::pt) return;
  size_t n = 0;
  for (const auto& v : m.values)
    if (v.kind == model::ValueKind::ndarray && v.items.empty() && v.state < m.values.size() &&
        (m.values[v.state].text.rfind("S", 0) == 0 || m.values[v.state].text.rfind("U", 0) == 0))
      ++n;
  if (n)
    add_finding(r.findings, Severity::low, Rule::cdr_converted,
                std::to_string(n) + " numpy string array(s) written as lists of str/bytes (a checkpoint has no string tensors)");
}

engine::InputView engine::input_of(const LoadedModel& loaded) {
  return {loaded.input.bytes, loaded.input.mapped ? loaded.input.file.fd() : -1};
}

Status check_input_unchanged(const LoadedModel& loaded) {
  if (!loaded.input.changed()) return ok_status();
  return make_error(Rule::io_input_changed,
                    "the input file changed (truncated or resized) while it was being read; nothing was written");
}

namespace {

Result<io::AtomicOutput> open_output(const Sink& sink, const std::string& suffix) {
  if (sink.is_memory()) return io::AtomicOutput::create_memory(sink.name() + suffix);
  // The architecture document is never fsynced (as before): it is a note, not the model.
  return io::AtomicOutput::create(sink.name() + suffix, suffix.empty() && sink.durable(), sink.replace());
}

// The one transform whose record stage the torch writer calls (transform.hpp), or nullptr.
Result<Transform*> record_stage(const DisarmOptions& options) {
  Transform* found = nullptr;
  for (const auto& t : options.transforms) {
    if (!t || !t->has_record_stage()) continue;
    if (found) return make_error(Rule::engine_unsupported, "more than one transform with a record stage");
    found = t.get();
  }
  if (found && options.output_format != OutputFormat::pt)
    return make_error(Rule::engine_unsupported, std::string("transform ") + found->name() + " writes PyTorch checkpoints only");
  return found;
}

// The output as written so far, read back for a transform's finish() (through a mapping of it).
// One mapping of the whole output, made at the first read (finish() reads many small pieces).
WrittenOutput written_view(io::AtomicOutput& out) {
  WrittenOutput w;
  w.size = out.tell();
  auto window = std::make_shared<std::optional<io::AtomicOutput::Window>>();
  w.read = [&out, window, size = w.size](uint64_t offset, std::span<uint8_t> into) -> Status {
    if (offset > size || into.size() > size - offset)
      return make_error(Rule::io_read, "read past the end of the output");
    if (into.empty()) return ok_status();
    if (!*window) {
      MCDR_ASSIGN(*window, out.window(0, size));
    }
    std::memcpy(into.data(), (*window)->data() + offset, into.size());
    return ok_status();
  };
  return w;
}

Status finish_transforms(const DisarmOptions& options, io::AtomicOutput& out, FileReport& r) {
  if (options.transforms.empty()) return ok_status();
  MCDR_TRY(out.flush());
  const WrittenOutput w = written_view(out);
  for (const auto& t : options.transforms)
    if (t) MCDR_TRY(t->finish(w, r));
  return ok_status();
}

void after_commit(const DisarmOptions& options, bool committed) {
  for (const auto& t : options.transforms)
    if (t) t->after_commit(committed);
}

Status write_model_impl(const model::Model& model, Sink& sink, const DisarmOptions& options, FileReport& r,
                        const LoadedModel* source, const RunContext& ctx) {
  MCDR_ASSIGN(Transform* records, record_stage(options));
  report_torch_types(model, options, r);
  report_string_arrays(model, options, r);
  MCDR_ASSIGN(io::AtomicOutput out, open_output(sink, ""));
  if (records && records->confidential_output()) MCDR_TRY(out.set_mode(0600));
  const uint64_t total = r.tensors.total_bytes;
  if (options.progress || options.cancel)
    out.set_progress([&](uint64_t written) { return step(options.progress, options.cancel, Stage::write, written, total); });
  const ByteRanges* ranges = source ? &source->parsed.ranges : nullptr;
  MCDR_TRY(formats::write(options.output_format, formats::WriteRequest{model, options, ctx.registry, r, ranges}, out));
  std::optional<io::AtomicOutput> arch;
  auto drop_architecture = [&] {
    if (!r.architecture.empty() && !sink.is_memory()) std::remove(r.architecture.c_str());
    r.architecture.clear();
  };
  if (!model.architecture.empty()) {
    MCDR_ASSIGN(arch, open_output(sink, ".architecture.json"));
    MCDR_TRY(write_architecture(model, *arch));  // commits it
    r.architecture = sink.name() + ".architecture.json";
  }
  // Last checks before the output appears: a read of a truncated input saw zeros, not data;
  // a caller who cancelled gets nothing.
  if (source) {
    if (auto s = check_input_unchanged(*source); !s.ok()) {
      drop_architecture();
      return s;
    }
  }
  if (!step(options.progress, options.cancel, Stage::write, total, total)) {
    drop_architecture();
    return cancelled_error();
  }
  if (auto s = finish_transforms(options, out, r); !s.ok()) {
    drop_architecture();
    return s;
  }
  if (auto s = out.commit(); !s.ok()) {
    drop_architecture();
    after_commit(options, false);
    return s;
  }
  after_commit(options, true);
  if (sink.is_memory())
    SinkAccess::fill(sink, std::move(out.memory_bytes()),
                     arch ? std::move(arch->memory_bytes()) : std::vector<uint8_t>{});
  r.output = sink.name();
  return ok_status();
}

}  // namespace

Status engine::run_write(const model::Model& model, Sink& sink, const DisarmOptions& options, FileReport& report,
                         const LoadedModel* source, const RunContext& ctx) {
  return write_model_impl(model, sink, options, report, source, ctx);
}

Status write_model(const model::Model& model, const std::string& output, const DisarmOptions& options, FileReport& r,
                   const LoadedModel* source) {
  Sink sink = Sink::file(output, options.force, options.fsync);
  return write_model_impl(model, sink, options, r, source, engine::process_context());
}

// torch 1.13's weights_only loader has no quantized tensors, no 2.x-only dtypes and no
// CSC/BSR/BSC layouts: in
// compat mode they are dropped (reported) rather than written in a form 1.13 cannot read.
void drop_for_torch113(model::Model& m, FileReport& r) {
  for (auto& v : m.values) {
    if (v.kind != model::ValueKind::tensor) continue;
    const auto& t = m.tensors[v.tensor];
    bool quantized = t.kind == model::TensorKind::quantized_per_tensor || t.kind == model::TensorKind::quantized_per_channel;
    bool new_dtype = model::dtype_info(t.dtype).storage_class == nullptr;
    // 1.13 pickles CSR only (_rebuild_sparse_csr_tensor); CSC/BSR/BSC have no 1.13 form.
    bool new_layout = model::is_sparse_compressed(t.kind) && t.kind != model::TensorKind::sparse_csr;
    if (!quantized && !new_dtype && !new_layout) continue;
    std::string what = quantized    ? std::string("quantized tensor")
                       : new_layout ? std::string("sparse tensor of layout ") + model::sparse_layout_name(t.kind)
                                    : std::string("tensor of dtype ") + model::dtype_info(t.dtype).name;
    add_finding(r.findings, Severity::medium, Rule::cdr_compat_dropped,
                what + " removed: torch 1.13's weights_only loader cannot read it (--compat torch1.13)");
    v = model::Value{};
    v.kind = model::ValueKind::dropped;
  }
}

// A rejected file leaves no output behind: not ours, and, where the user allowed replacing
// outputs (--force), not a stale one from an earlier run either. Without --force an existing
// file was never ours to touch.
void remove_stale_output(const std::string& input, const std::string& output, bool force) {
  if (!force) return;
  struct stat si{}, so{};
  if (::lstat(output.c_str(), &so) != 0 || !S_ISREG(so.st_mode)) return;
  if (::stat(input.c_str(), &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino) return;
  ::unlink(output.c_str());
  ::unlink((output + ".architecture.json").c_str());
}

// What a rejected file leaves: nothing in a memory sink, no stale file (see above).
void clear_sink(const Source& source, Sink& sink) {
  if (sink.is_memory()) SinkAccess::clear(sink);
  else remove_stale_output(source.is_memory() ? std::string() : source.name(), sink.name(), sink.replace());
}

static FileReport disarm_file_impl(const Source& source, Sink& sink, const DisarmOptions& options,
                                   const RunContext& ctx) {
  FileReport r;
  if (sink.is_memory()) SinkAccess::clear(sink);
  auto reject = [&](Error e) {
    r.status = FileStatus::rejected;
    r.error = std::move(e);
    r.output.clear();
    clear_sink(source, sink);
    return r;
  };
  // Plain disarm to a torch checkpoint reads each tensor byte once: the writer checks the
  // input's CRCs while copying. Transforms and other writers read payloads themselves, so
  // for them every CRC is checked up front.
  bool defer_crc = options.transforms.empty() && options.output_format == OutputFormat::pt;
  auto loaded = load_model_impl(source, options, r, defer_crc, ctx);
  if (!loaded.ok()) return reject(loaded.error());
  model::Model& m = model_of(**loaded);
  if (options.compat == CompatTarget::torch1_13 && options.output_format == OutputFormat::pt) drop_for_torch113(m, r);
  if (auto records = record_stage(options); !records.ok()) return reject(records.error());
  if (std::any_of(options.transforms.begin(), options.transforms.end(), [](const TransformPtr& t) { return t && t->has_model_stage(); })) {
    if (!step(options.progress, options.cancel, Stage::transform, 0, 1)) return reject(cancelled_error());
    for (const auto& t : options.transforms)
      if (t && t->has_model_stage())
        if (auto s = t->apply(m, r); !s.ok()) return reject(s.error());
    // A transform rewrites payloads: what is written must still be proven valid.
    Findings after;
    if (cdr::check_sparse_tensors(m, after)) return reject(*sparse_error(after));
    if (!step(options.progress, options.cancel, Stage::transform, 1, 1)) return reject(cancelled_error());
  }
  // Exit 1 means "written, something minor removed": a file whose main object itself was
  // dropped (a class outside the registry at the top) would be an empty shell, so it is rejected.
  if (m.root != model::kNoValue && m.values[m.root].kind == model::ValueKind::dropped)
    return reject(make_error(Rule::cdr_main_object_dropped,
                             "the file's main object cannot be rebuilt (see the findings): nothing useful would be written"));
  if (auto s = write_model_impl(m, sink, options, r, loaded->get(), ctx); !s.ok()) {
    // A write from a truncated mapping fails in the kernel (EFAULT) or reads short: name the cause.
    if (auto changed = check_input_unchanged(**loaded); !changed.ok()) return reject(changed.error());
    return reject(s.error());
  }
  cdr::fold_call_removals(r.findings);  // one line per removed call, as scan reports it
  for (const auto& f : r.findings)
    if (counts(f)) r.removed.push_back(f);
  r.status = r.removed.empty() ? FileStatus::clean : FileStatus::removed;
  // Reported after the commit: the caller may stop listening, the output stays.
  const uint64_t total = r.tensors.total_bytes;
  if (options.progress) options.progress(Progress{Stage::done, total, total});
  return r;
}

// The limits keep allocations proportional to the input, but a machine can still be smaller
// than the worst case they allow: an allocation that fails ends this file (rejected, its
// temporary output removed as the stack unwinds) instead of the process.
static Error out_of_memory() {
  return make_error(Rule::resource_out_of_memory, "not enough memory to process this file within its limits");
}

FileReport engine::run_scan(const Source& source, const ScanOptions& options, const RunContext& ctx) {
  try {
    return scan_file_impl(source, options, ctx);
  } catch (const std::bad_alloc&) {
    FileReport r;
    r.input = source.name();
    r.format = "unknown";
    r.status = FileStatus::error;
    r.error = out_of_memory();
    r.verdict = Verdict::unknown;
    return r;
  }
}

FileReport engine::run_disarm(const Source& source, Sink& sink, const DisarmOptions& options, const RunContext& ctx) {
  try {
    return disarm_file_impl(source, sink, options, ctx);
  } catch (const std::bad_alloc&) {
    FileReport r;
    r.input = source.name();
    r.format = "unknown";
    r.status = FileStatus::rejected;
    r.error = out_of_memory();
    clear_sink(source, sink);
    return r;
  }
}

FileReport scan_file(const std::string& path, const ScanOptions& options) {
  return engine::run_scan(Source::file(path), options, engine::process_context());
}

FileReport disarm_file(const std::string& input, const std::string& output, const DisarmOptions& options) {
  Sink sink = Sink::file(output, options.force, options.fsync);
  return engine::run_disarm(Source::file(input), sink, options, engine::process_context());
}

}  // namespace modelcdr
