// The pipeline: sniff -> container/decode -> lift -> emit, with every finding collected.
// scan_file is the pipeline without emit; disarm_file writes atomically or not at all.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <new>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cdr/lifter.hpp"
#include "container/sniff.hpp"
#include "engine/classify.hpp"
#include "formats/parsed_model.hpp"
#include "formats/pickle_writer.hpp"
#include "formats/safetensors_writer.hpp"
#include "formats/torch_zip_writer.hpp"
#include "io/atomic_output.hpp"
#include "io/mapped_file.hpp"
#include "modelcdr/api.hpp"
#include "modelcdr/limits.hpp"

namespace modelcdr {

namespace {

using container::Format;

Result<formats::ParsedModel> parse(std::span<const uint8_t> bytes, Format format, bool defer_storage_crc = false,
                                   int input_fd = -1) {
  formats::ReadOptions options;
  formats::ReadOptions mapped = options;  // `bytes` is the MappedFile itself
  mapped.input_is_mapped = true;
  mapped.input_fd = input_fd;
  mapped.defer_storage_crc = defer_storage_crc;
  switch (format) {
    case Format::torch_zip: return formats::read_torch_zip(bytes, mapped);
    case Format::torch_legacy: return formats::read_torch_legacy(bytes, mapped);
    case Format::pickle: return formats::read_joblib(bytes, options);  // plain pickles too (inline joblib arrays)
    case Format::torch_tar: return formats::read_torch_tar(bytes, options);
    case Format::npy: return formats::read_npy(bytes, options);
    case Format::safetensors: return formats::read_safetensors(bytes, options);
    case Format::empty: return make_error(Rule::format_empty, "file is empty");
    case Format::gzip:
    case Format::bzip2:
    case Format::xz:
    case Format::zlib:
    case Format::lz4:
    case Format::lzma:
      // joblib's compressed files: decompressed with a capped output size and read as joblib;
      // any other content is rejected.
      return formats::read_compressed(bytes, options);
    case Format::seven_zip:
      return make_error(Rule::format_compressed, std::string("a ") + container::format_name(format) +
                                                 " container: torch.load cannot read it and modelcdr does not unpack it");
    default: return make_error(Rule::format_unknown, "not a pickle, PyTorch, NumPy or safetensors file");
  }
}

// Every reader's model is checked once, whatever reader built it, before any writer (or a
// transform) walks it: bounded depth, no cycles (limits.depth, limits.cycle).
Result<formats::ParsedModel> checked(Result<formats::ParsedModel> parsed) {
  if (parsed.ok()) MCDR_TRY(limits::check_value_graph(parsed->model));
  return parsed;
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

Status write_architecture(const model::Model& m, const std::string& path, bool force) {
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
  MCDR_ASSIGN(io::AtomicOutput out, io::AtomicOutput::create(path, false, force));
  // Names were vetted by the lifter; replace (never throw on) invalid UTF-8 all the same.
  MCDR_TRY(out.write(doc.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n"));
  return out.commit();
}

struct Loaded {
  io::MappedFile file;
  Format format = Format::unknown;
};

Result<Loaded> load(const std::string& path) {
  Loaded l;
  MCDR_ASSIGN(l.file, io::MappedFile::open(path));
  l.format = container::sniff(l.file.bytes().subspan(0, std::min<size_t>(l.file.size(), 4096)), l.file.size());
  return l;
}

}  // namespace

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

static FileReport scan_file_impl(const std::string& path, const ScanOptions& options) {
  FileReport r;
  r.input = path;
  auto loaded = load(path);
  if (!loaded.ok()) {
    r.status = FileStatus::error;
    r.error = loaded.error();
    r.format = "unknown";
    r.verdict = file_verdict(r.findings, &*r.error);
    return r;
  }
  r.format = container::format_name(loaded->format);
  auto parsed = checked(parse(loaded->file.bytes(), loaded->format));
  if (!parsed.ok()) {
    r.status = FileStatus::error;
    r.error = parsed.error();
    r.verdict = file_verdict(r.findings, &*r.error);
    return r;
  }
  r.format = container::format_name(parsed->format);
  if (loaded->file.changed()) {  // what was read may be zeros, not the file: no verdict
    r.status = FileStatus::error;
    r.error = make_error(Rule::io_input_changed, "the input file changed (truncated or resized) while it was being read");
    r.verdict = file_verdict(r.findings, &*r.error);
    return r;
  }
  r.findings = parsed->findings;
  r.findings.insert(r.findings.end(), parsed->model.findings.begin(), parsed->model.findings.end());
  cdr::fold_call_removals(r.findings);
  r.tensors = tensor_stats(parsed->model);
  if (options.inspect) options.inspect(parsed->model, r);
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

namespace {
Result<LoadedModelPtr> load_model_impl(const std::string& input, const DisarmOptions& options, FileReport& r,
                                       bool defer_storage_crc);
}  // namespace

Result<LoadedModelPtr> load_model(const std::string& input, const DisarmOptions& options, FileReport& r,
                                  bool defer_storage_crc) {
  return load_model_impl(input, options, r, defer_storage_crc);
}

namespace {
Result<LoadedModelPtr> load_model_impl(const std::string& input, const DisarmOptions& options, FileReport& r,
                                       bool defer_storage_crc) {
  r.input = input;
  r.format = "unknown";
  LoadedModelPtr m(new LoadedModel);
  MCDR_ASSIGN(m->input, load(input));
  m->input.file.advise_sequential();
  r.format = container::format_name(m->input.format);
  MCDR_ASSIGN(m->parsed, checked(parse(m->input.file.bytes(), m->input.format, defer_storage_crc, m->input.file.fd())));
  r.format = container::format_name(m->parsed.format);
  r.findings = m->parsed.findings;
  r.findings.insert(r.findings.end(), m->parsed.model.findings.begin(), m->parsed.model.findings.end());
  r.tensors = tensor_stats(m->parsed.model);
  if (m->parsed.not_disarmable) return make_error(Rule::format_not_disarmable, *m->parsed.not_disarmable);
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

Status check_input_unchanged(const LoadedModel& loaded) {
  if (!loaded.input.file.changed()) return ok_status();
  return make_error(Rule::io_input_changed,
                    "the input file changed (truncated or resized) while it was being read; nothing was written");
}

Status write_model(const model::Model& model, const std::string& output, const DisarmOptions& options, FileReport& r,
                   const LoadedModel* source) {
  report_torch_types(model, options, r);
  MCDR_ASSIGN(io::AtomicOutput out, io::AtomicOutput::create(output, options.fsync, options.force));
  switch (options.output_format) {
    case OutputFormat::safetensors: MCDR_TRY(formats::write_safetensors(model, out, r.findings)); break;
    case OutputFormat::npz: MCDR_TRY(formats::write_npz(model, out, r.findings)); break;
    case OutputFormat::npy: MCDR_TRY(formats::write_npy(model, out, r.findings)); break;
    case OutputFormat::joblib:
    case OutputFormat::pickle: {
      formats::PickleWriteOptions po;
      po.joblib = options.output_format == OutputFormat::joblib;
      MCDR_TRY(formats::write_pickle(model, po, out));
      if (!model.file_metadata.empty())
        add_finding(r.findings, Severity::low, Rule::convert_metadata_dropped,
                    std::to_string(model.file_metadata.size()) + " file metadata entries not written: a pickle has no place for them");
      break;
    }
    case OutputFormat::pt: {
      formats::TorchWriteOptions wo;
      wo.compat = options.compat == CompatTarget::torch1_13 ? formats::Compat::torch1_13 : formats::Compat::torch2;
      wo.reflink = options.reflink;
      wo.shared_bytes = &r.shared_bytes;
      MCDR_TRY(formats::write_torch_zip(model, wo, out));
      // Content the output lacks is content removed: it counts (exit 1, listed as removed).
      if (!model.file_metadata.empty())
        add_finding(r.findings, Severity::low, Rule::convert_metadata_dropped,
                    std::to_string(model.file_metadata.size()) +
                        " file metadata entries not written: a PyTorch checkpoint has no place for them (use --to safetensors)");
      break;
    }
  }
  if (!model.architecture.empty()) {
    r.architecture = output + ".architecture.json";
    MCDR_TRY(write_architecture(model, r.architecture, options.force));
  }
  // Last check before the output appears: a read of a truncated input saw zeros, not data.
  if (source) {
    if (auto s = check_input_unchanged(*source); !s.ok()) {
      if (!r.architecture.empty()) std::remove(r.architecture.c_str());
      r.architecture.clear();
      return s;
    }
  }
  if (auto s = out.commit(); !s.ok()) {
    if (!r.architecture.empty()) std::remove(r.architecture.c_str());
    r.architecture.clear();
    return s;
  }
  r.output = output;
  return ok_status();
}

// torch 1.13's weights_only loader has no quantized tensors and no 2.x-only dtypes: in
// compat mode they are dropped (reported) rather than written in a form 1.13 cannot read.
void drop_for_torch113(model::Model& m, FileReport& r) {
  for (auto& v : m.values) {
    if (v.kind != model::ValueKind::tensor) continue;
    const auto& t = m.tensors[v.tensor];
    bool quantized = t.kind == model::TensorKind::quantized_per_tensor || t.kind == model::TensorKind::quantized_per_channel;
    bool new_dtype = model::dtype_info(t.dtype).storage_class == nullptr;
    if (!quantized && !new_dtype) continue;
    std::string what = quantized ? "quantized tensor" : std::string("tensor of dtype ") + model::dtype_info(t.dtype).name;
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

static FileReport disarm_file_impl(const std::string& input, const std::string& output, const DisarmOptions& options) {
  FileReport r;
  auto reject = [&](Error e) {
    r.status = FileStatus::rejected;
    r.error = std::move(e);
    r.output.clear();
    remove_stale_output(input, output, options.force);
    return r;
  };
  // Plain disarm to a torch checkpoint reads each tensor byte once: the writer checks the
  // input's CRCs while copying. Transforms and other writers read payloads themselves, so
  // for them every CRC is checked up front.
  bool defer_crc = !options.transform && options.output_format == OutputFormat::pt;
  auto loaded = load_model_impl(input, options, r, defer_crc);
  if (!loaded.ok()) return reject(loaded.error());
  model::Model& m = model_of(**loaded);
  if (options.compat == CompatTarget::torch1_13 && options.output_format == OutputFormat::pt) drop_for_torch113(m, r);
  if (options.transform)
    if (auto s = options.transform(m, r); !s.ok()) return reject(s.error());
  // Exit 1 means "written, something minor removed": a file whose main object itself was
  // dropped (a class outside the registry at the top) would be an empty shell, so it is rejected.
  if (m.root != model::kNoValue && m.values[m.root].kind == model::ValueKind::dropped)
    return reject(make_error(Rule::cdr_main_object_dropped,
                             "the file's main object cannot be rebuilt (see the findings): nothing useful would be written"));
  if (auto s = write_model(m, output, options, r, loaded->get()); !s.ok()) {
    // A write from a truncated mapping fails in the kernel (EFAULT) or reads short: name the cause.
    if (auto changed = check_input_unchanged(**loaded); !changed.ok()) return reject(changed.error());
    return reject(s.error());
  }
  for (const auto& f : r.findings)
    if (counts(f)) r.removed.push_back(f);
  r.status = r.removed.empty() ? FileStatus::clean : FileStatus::removed;
  return r;
}

// The limits keep allocations proportional to the input, but a machine can still be smaller
// than the worst case they allow: an allocation that fails ends this file (rejected, its
// temporary output removed as the stack unwinds) instead of the process.
static Error out_of_memory() {
  return make_error(Rule::resource_out_of_memory, "not enough memory to process this file within its limits");
}

FileReport scan_file(const std::string& path, const ScanOptions& options) {
  try {
    return scan_file_impl(path, options);
  } catch (const std::bad_alloc&) {
    FileReport r;
    r.input = path;
    r.format = "unknown";
    r.status = FileStatus::error;
    r.error = out_of_memory();
    r.verdict = Verdict::unknown;
    return r;
  }
}

FileReport disarm_file(const std::string& input, const std::string& output, const DisarmOptions& options) {
  try {
    return disarm_file_impl(input, output, options);
  } catch (const std::bad_alloc&) {
    FileReport r;
    r.input = input;
    r.format = "unknown";
    r.status = FileStatus::rejected;
    r.error = out_of_memory();
    remove_stale_output(input, output, options.force);
    return r;
  }
}

}  // namespace modelcdr
