// modelcdr._core: the one file of glue between Python and the engine's public API
// (modelcdr::Engine in modelcdr/engine.hpp, MTD included; key handles from modelcdr/mtd.hpp). It converts reports to
// plain dicts and exposes a lifted model as flat tuples; the Python package (python/modelcdr)
// builds the user's objects from them. Bytes-like sources are borrowed as memory sources (no
// copy, no temporary file). Every engine call runs with the GIL released, so threads run in
// parallel; an Engine is immutable and shared by them.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <errno.h>
#include <libdeflate.h>
#include <sodium.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "modelcdr/api.hpp"
#include "modelcdr/engine.hpp"
#include "modelcdr/formats.hpp"
#include "modelcdr/mtd.hpp"
#include "modelcdr/stego.hpp"

namespace py = pybind11;
using namespace modelcdr;

namespace {

py::dict finding_dict(const Finding& f) {
  py::dict d;
  d["severity"] = severity_name(f.severity);
  d["rule"] = std::string(rule_id(f.rule));
  d["message"] = py::bytes(f.message).attr("decode")("utf-8", "replace");
  d["entry"] = py::bytes(f.entry).attr("decode")("utf-8", "replace");
  d["offset"] = f.offset;
  return d;
}

py::list findings_list(const Findings& fs) {
  py::list l;
  for (const auto& f : fs) l.append(finding_dict(f));
  return l;
}

py::dict report_dict(const FileReport& r) {
  py::dict d;
  d["input"] = r.input;
  d["output"] = r.output;
  d["format"] = r.format;
  d["status"] = status_name(r.status);
  if (r.error) {
    py::dict e;
    e["rule"] = std::string(rule_id(r.error->rule));
    e["message"] = py::bytes(r.error->message).attr("decode")("utf-8", "replace");
    e["entry"] = py::bytes(r.error->entry).attr("decode")("utf-8", "replace");
    e["offset"] = r.error->has_offset ? py::object(py::int_(r.error->offset)) : py::object(py::none());
    e["text"] = py::bytes(r.error->describe()).attr("decode")("utf-8", "replace");
    d["error"] = e;
  } else {
    d["error"] = py::none();
  }
  py::dict t;
  t["count"] = r.tensors.count;
  t["total_bytes"] = r.tensors.total_bytes;
  t["dtypes"] = r.tensors.dtypes;
  d["tensors"] = t;
  d["findings"] = findings_list(r.findings);
  d["removed"] = findings_list(r.removed);
  d["architecture"] = r.architecture;
  d["note"] = r.note;
  return d;
}

Result<CompatTarget> compat_of(const std::string& s) {
  if (s == "torch2") return CompatTarget::torch2;
  if (s == "torch1.13") return CompatTarget::torch1_13;
  return make_error(Rule::usage_option, "compat must be 'torch2' or 'torch1.13', not '" + s + "'");
}

// The names are the CLI's --to names, from the format table (modelcdr/formats.hpp).
Result<OutputFormat> format_of(const std::string& s) {
  if (auto f = output_format_named(s)) return *f;
  std::string names;
  for (const auto& n : output_format_names()) names += (names.empty() ? "" : ", ") + n;
  return make_error(Rule::usage_option, "output_format must be one of " + names + "; not '" + s + "'");
}

[[noreturn]] void throw_usage(const Error& e) { throw py::value_error(e.message); }

template <class T>
T or_throw(Result<T> r) {
  if (!r.ok()) throw_usage(r.error());
  return std::move(r).value();
}

// ---- sources, progress, cancellation ----------------------------------------------------

// A bytes-like object borrowed for an engine call (and, for load, for the model's life): the
// buffer stays exported, so a bytearray cannot be resized under the engine. Released with
// the GIL held (the holder is destroyed from Python or after the GIL is taken back).
// A writable buffer (bytearray, a writable memoryview) is copied first: the engine runs without
// the GIL, and another thread could otherwise change bytes between the reader's checks and its
// uses (a double fetch). Immutable bytes are borrowed without a copy.
struct HeldBuffer {
  Py_buffer view{};
  std::vector<uint8_t> copy;
  bool copied = false;
  explicit HeldBuffer(PyObject* obj) {
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) != 0) throw py::error_already_set();
    if (!view.readonly) {
      const auto* p = static_cast<const uint8_t*>(view.buf);
      copy.assign(p, p + view.len);
      PyBuffer_Release(&view);  // the copy is what the engine reads: the caller may resize again
      copied = true;
    }
  }
  std::span<const uint8_t> bytes() const {
    if (copied) return copy;
    return {static_cast<const uint8_t*>(view.buf), static_cast<size_t>(view.len)};
  }
  ~HeldBuffer() {
    if (!copied) PyBuffer_Release(&view);
  }
  HeldBuffer(const HeldBuffer&) = delete;
  HeldBuffer& operator=(const HeldBuffer&) = delete;
};

// `src` is a path (str) or a contiguous bytes-like object; `name` names the latter in reports.
struct PySource {
  std::shared_ptr<HeldBuffer> held;
  Source source;
};

PySource source_of(const py::object& src, const std::string& name) {
  PySource s;
  if (py::isinstance<py::str>(src)) {
    s.source = Source::file(src.cast<std::string>());
  } else if (PyObject_CheckBuffer(src.ptr())) {
    s.held = std::make_shared<HeldBuffer>(src.ptr());
    s.source = Source::memory(s.held->bytes(), name);
  } else {
    throw py::type_error("expected a path or a bytes-like object");
  }
  return s;
}

// A flag another thread sets to cancel a running call (engine.cancelled, no output).
struct CancelToken {
  std::atomic<bool> flag{false};
};

// Calls a Python progress function from the engine's (GIL-free) thread: progress(stage, done,
// total); returning False cancels. An exception it raises (KeyboardInterrupt included: signals
// are checked on each call) cancels the call and is re-raised once the engine returns.
struct ProgressBridge {
  py::object fn;
  std::optional<py::error_already_set> error;

  template <class Options>
  void install(Options& o, const std::optional<CancelToken*>& cancel) {
    if (cancel && *cancel) o.cancel = &(*cancel)->flag;
    if (fn.is_none()) return;
    o.progress = [this](const Progress& p) {
      py::gil_scoped_acquire gil;
      try {
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
        py::object r = fn(stage_name(p.stage), p.done, p.total);
        return !(py::isinstance<py::bool_>(r) && !r.cast<bool>());
      } catch (py::error_already_set& e) {
        if (!error) error.emplace(std::move(e));
        return false;
      }
    };
  }
  void rethrow() {
    if (error) throw std::move(*error);
  }
};

// ---- the lifted model ------------------------------------------------------------------

// A loaded (or restored) model: owns the input mapping the storages point into, or holds the
// borrowed bytes of a memory source. Python keeps it alive for as long as a tensor views one
// of its buffers (mmap=True, restored).
struct PyModel {
  std::shared_ptr<HeldBuffer> held;  // declared first: released after `loaded`
  LoadedModelPtr loaded;
  model::Model* m = nullptr;
};

py::tuple value_tuple(const model::Value& v) {
  py::list items, entries, shape;
  for (auto id : v.items) items.append(id);
  for (const auto& [k, x] : v.entries) entries.append(py::make_tuple(k, x));
  for (auto s : v.array_shape) shape.append(s);
  return py::make_tuple(static_cast<int>(v.kind), static_cast<int>(v.torch_type), v.b, v.i, v.f, v.imag,
                        py::bytes(v.text), items, entries, v.metadata, v.tensor, v.state, shape, v.fortran_order);
}

py::tuple tensor_tuple(const model::Tensor& t) {
  return py::make_tuple(static_cast<int>(t.kind), model::dtype_info(t.dtype).name, t.storage, t.storage_offset,
                        t.shape, t.stride, t.requires_grad, t.is_parameter, t.param_requires_grad, t.q_scale,
                        t.q_zero_point, t.q_scales, t.q_zero_points, t.q_axis, t.sparse_indices, t.sparse_values,
                        t.sparse_coalesced ? py::object(py::bool_(*t.sparse_coalesced)) : py::object(py::none()), t.sparse_plain);
}

// A writable buffer over an owned storage (an in-memory restore): torch.frombuffer views it
// without a copy, and the buffer keeps the model, which owns the bytes, alive.
struct OwnedBuffer {
  py::object owner;  // the PyModel
  uint8_t* data = nullptr;
  size_t size = 0;
};

py::object owned_buffer(py::object self_obj, size_t i) {
  PyModel& self = self_obj.cast<PyModel&>();
  if (i >= self.m->storages.size()) throw py::index_error("no such storage");
  auto& s = self.m->storages[i];
  if (s.owned.empty() || s.bytes.data() != s.owned.data()) return py::none();
  return py::cast(OwnedBuffer{self_obj, s.owned.data(), s.owned.size()});
}

// Reads `n` bytes at `offset` of `fd` into `dst` (pread, retried on EINTR and short reads).
bool pread_all(int fd, uint8_t* dst, size_t n, uint64_t offset) {
  while (n > 0) {
    ssize_t got = ::pread(fd, dst, std::min<size_t>(n, size_t(1) << 30), static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    dst += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

// Fresh destination memory faults in one 4 KiB page at a time (262144 traps per GiB) while
// pread copies into it. MADV_POPULATE_WRITE (Linux 5.14) allocates the same pages in one call
// without the traps: measured 0.68-0.91 s CPU per GiB against 0.88-0.94 s for plain faults.
// (Transparent huge pages were slower still in a fresh process: the kernel compacts memory
// to find them.) Only an optimisation: an older kernel refuses it and the pages fault in.
void prefault(uint8_t* dst, size_t n) {
#ifndef MADV_POPULATE_WRITE
  constexpr int MADV_POPULATE_WRITE = 23;
#endif
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(dst) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(dst) + n) & ~(page - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
}

// Copies bytes [begin, end) of storage `s` into dst + begin: prefaulted, pread from the input
// file (not through the mapping, so the resident set is the destination alone) or memcpy
// from a memory source, in chunks that stay in the CPU cache for the CRC. Returns the part's
// CRC-32 (0 when the record has none to check).
uint32_t read_part(const model::Storage& s, const ByteRange* in, uint8_t* dst, size_t begin, size_t end) {
  prefault(dst + begin, end - begin);
  constexpr size_t kChunk = size_t(256) << 10;
  bool use_pread = in && in->in_file();
  uint32_t crc = 0;
  for (size_t off = begin; off < end; off += kChunk) {
    const size_t len = std::min(kChunk, end - off);
    if (!(use_pread && pread_all(in->fd, dst + off, len, in->offset + off))) {
      use_pread = false;  // the mapping (or the memory source) holds the same bytes
      std::memcpy(dst + off, s.bytes.data() + off, len);
    }
    if (in && in->expected_crc) crc = libdeflate_crc32(crc, dst + off, len);
  }
  return crc;
}

// Reads storage `i` into `n` bytes at address `dst` (the memory of a torch storage the
// caller just allocated: the default loader, where tensors own their memory as with
// torch.load). One pass, no intermediate buffer, the zip CRC (left to us by load) checked on
// the way. A large storage is read by up to 4 threads, one part each (page population and
// the copy are per-core work); their CRCs are combined (zlib's crc32_combine). No GIL.
void storage_into(PyModel& self, size_t i, uintptr_t address, size_t n) {
  if (i >= self.m->storages.size()) throw py::index_error("no such storage");
  const auto& s = self.m->storages[i];
  const ByteRange* in = byte_ranges_of(*self.loaded).of(*self.m, static_cast<model::StorageId>(i));
  if (n != s.bytes.size()) throw py::value_error("storage_into: the destination is not the storage's size");
  if (n == 0) return;
  auto* dst = reinterpret_cast<uint8_t*>(address);
  bool crc_ok = true;
  {
    py::gil_scoped_release nogil;
    constexpr size_t kPerThread = size_t(16) << 20;
    const size_t cores = std::max(1u, std::thread::hardware_concurrency());
    const size_t parts = std::min<size_t>({4, cores, std::max<size_t>(1, n / kPerThread)});
    const size_t step = (n / parts + 4095) & ~size_t(4095);
    std::vector<uint32_t> crcs(parts);
    std::vector<size_t> lens(parts);
    std::vector<std::thread> workers;
    for (size_t p = 0; p < parts; ++p) {
      const size_t begin = std::min(n, p * step), end = p + 1 == parts ? n : std::min(n, (p + 1) * step);
      lens[p] = end - begin;
      if (p == 0) continue;
      workers.emplace_back([&, p, begin, end] { crcs[p] = read_part(s, in, dst, begin, end); });
    }
    crcs[0] = read_part(s, in, dst, 0, lens[0]);
    for (auto& w : workers) w.join();
    if (in && in->expected_crc) {
      uLong crc = crcs[0];
      for (size_t p = 1; p < parts; ++p) crc = crc32_combine(crc, crcs[p], static_cast<z_off_t>(lens[p]));
      crc_ok = static_cast<uint32_t>(crc) == *in->expected_crc;
    }
  }
  if (!crc_ok)
    throw py::value_error(s.source + ": CRC-32 of the storage record does not match the zip directory [zip.bad-crc]");
}

py::tuple storage_tuple(const model::Storage& s, const ByteRange* in) {
  // (dtype, nbytes, file offset or None, descriptor of the input or -1): mmap=True maps the
  // file itself (copy-on-write, as torch.load does) at that offset.
  const bool in_file = in && in->in_file();
  return py::make_tuple(model::dtype_info(s.dtype).name, s.bytes.size(),
                        in_file ? py::object(py::int_(in->offset)) : py::object(py::none()),
                        in_file ? in->fd : -1);
}

// ---- the Engine ----------------------------------------------------------------------------

struct PyEngine {
  Engine engine;

  py::dict scan(const py::object& src, const std::string& name, bool stego, py::object progress,
                std::optional<CancelToken*> cancel) const {
    PySource in = source_of(src, name);
    ScanOptions o;
    o.stego = stego;
    if (stego) o.inspect = stego::make_stego_inspector(stego::StegoOptions{});
    ProgressBridge bridge{std::move(progress), {}};
    bridge.install(o, cancel);
    FileReport r;
    {
      py::gil_scoped_release nogil;
      r = engine.scan(in.source, o);
    }
    bridge.rethrow();
    py::dict d = report_dict(r);
    d["verdict"] = verdict_name(r.verdict);  // scan only: what the findings imply (docs/RULES.md)
    return d;
  }

  // (report, the output's bytes when `output` is None, else None).
  py::tuple disarm(const py::object& src, const std::string& name, const std::optional<std::string>& output,
                   const std::string& compat, const std::string& output_format, bool allow_trailing_data, bool fsync,
                   bool force, bool reflink, py::object progress, std::optional<CancelToken*> cancel) const {
    PySource in = source_of(src, name);
    DisarmOptions o;
    o.compat = or_throw(compat_of(compat));
    o.output_format = or_throw(format_of(output_format));
    o.allow_trailing_data = allow_trailing_data;
    o.reflink = reflink;
    ProgressBridge bridge{std::move(progress), {}};
    bridge.install(o, cancel);
    Sink sink = output ? Sink::file(*output, force, fsync) : Sink::memory(name);
    FileReport r;
    {
      py::gil_scoped_release nogil;
      r = engine.disarm(in.source, sink, o);
    }
    bridge.rethrow();
    py::object data = py::none();
    if (!output && r.status != FileStatus::rejected) {
      const auto& b = sink.bytes();
      data = py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
    }
    return py::make_tuple(report_dict(r), data);
  }

  // load_model plus the checks disarm adds before writing (main object dropped). Storage CRCs
  // are left to the reader of the bytes (storage_into checks them on the copy; mmap=True does
  // not read the bytes at load time at all, as torch.load(mmap=True)). (Model | None, report).
  py::tuple load(const py::object& src, const std::string& name, const std::string& compat, bool allow_trailing_data,
                 py::object progress, std::optional<CancelToken*> cancel) const {
    DisarmOptions o;
    o.compat = or_throw(compat_of(compat));
    o.allow_trailing_data = allow_trailing_data;
    ProgressBridge bridge{std::move(progress), {}};
    bridge.install(o, cancel);
    std::unique_ptr<PyModel> pm(new PyModel);
    PySource in = source_of(src, name);
    pm->held = in.held;
    FileReport r;
    {
      py::gil_scoped_release nogil;
      auto loaded = engine.load(in.source, o, r, /*defer_storage_crc=*/true);
      if (!loaded.ok()) {
        r.status = FileStatus::rejected;
        r.error = loaded.error();
      } else {
        pm->loaded = std::move(*loaded);
        pm->m = &model_of(*pm->loaded);
        if (pm->m->root != model::kNoValue && pm->m->values[pm->m->root].kind == model::ValueKind::dropped) {
          r.status = FileStatus::rejected;
          r.error = make_error(Rule::cdr_main_object_dropped,
                               "the file's main object cannot be rebuilt (see the findings): nothing useful would be loaded");
        } else {
          for (const auto& f : r.findings)
            if (f.severity >= Severity::low) r.removed.push_back(f);
          r.status = r.removed.empty() ? FileStatus::clean : FileStatus::removed;
        }
      }
    }
    bridge.rethrow();
    if (r.status == FileStatus::rejected) return py::make_tuple(py::object(py::none()), report_dict(r));
    return py::make_tuple(py::cast(pm.release(), py::return_value_policy::take_ownership), report_dict(r));
  }
};

PyEngine make_engine(uint64_t max_input_bytes, uint64_t max_pickle_ops, uint64_t max_pickle_nodes,
                     uint64_t max_container_items, std::vector<std::string> allow_classes,
                     std::vector<std::string> allow_reduce, std::vector<std::string> policy_files) {
  EngineOptions o;
  o.limits = {max_input_bytes, max_pickle_ops, max_pickle_nodes, max_container_items};
  o.allow_classes = std::move(allow_classes);
  o.allow_reduce = std::move(allow_reduce);
  o.policy_files = std::move(policy_files);
  auto e = Engine::create(o);
  if (!e.ok()) throw py::value_error(e.error().describe());
  return PyEngine{std::move(*e)};
}

// ---- MTD ---------------------------------------------------------------------------------

// Key files loaded for one call, as mtd::Key handles (guarded memory, include/modelcdr/mtd.hpp).
struct KeyHolder {
  std::vector<mtd::Key> keep;
  const mtd::Key* read(const std::string& path, const char* option) {
    auto k = mtd::Key::load(path);
    if (!k.ok()) throw py::value_error(std::string(option) + ": " + path + ": " + k.error().message);
    keep.push_back(*k);
    return &keep.back();  // used before the next read
  }
};

// Read into guarded memory (include/modelcdr/mtd.hpp); the first line, not empty.
mtd::Secret<mtd::SecretString> read_passphrase(const std::string& path) {
  auto s = mtd::read_passphrase_file(path);
  if (!s.ok()) throw py::value_error("passphrase_file: " + s.error().message);
  return std::move(*s);
}

// The MtdResult dict of modelcdr._report from an Engine report (FileReport::mtd carries the
// MTD outcome and its structured mismatches; the rest of the report is the file's part).
py::dict mtd_dict(const FileReport& f) {
  static const MtdReport none;  // every Engine MTD call sets one; none reads as an error
  const MtdReport& r = f.mtd ? *f.mtd : none;
  py::dict d;
  d["outcome"] = mtd_outcome_name(r.outcome);
  d["code"] = r.code;
  d["state"] = r.state;
  d["output"] = f.output;
  d["signer"] = r.signer;
  d["signer_trusted"] = r.signer_trusted;
  d["storages"] = r.storages;
  d["permuted"] = r.permuted;
  d["swapped"] = r.swapped;
  if (r.outcome == MtdOutcome::error && f.error) {
    py::dict e;
    e["rule"] = std::string(rule_id(f.error->rule));
    e["message"] = py::bytes(f.error->message).attr("decode")("utf-8", "replace");
    e["text"] = py::bytes(f.error->describe()).attr("decode")("utf-8", "replace");
    d["error"] = e;
  } else {
    d["error"] = py::none();
  }
  py::list mism;
  for (const auto& m : r.mismatches) {
    py::dict x;
    x["what"] = m.what;
    x["name"] = py::bytes(m.name).attr("decode")("utf-8", "replace");
    x["key"] = m.key;
    x["against"] = m.against;
    x["expected"] = m.expected;
    x["actual"] = m.actual;
    x["detail"] = m.detail;
    mism.append(x);
  }
  d["mismatches"] = mism;
  d["file"] = report_dict(f);
  return d;
}

py::object bytes_of(const Sink& s) {
  const auto& b = s.bytes();
  return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
}

// The CLI's rules for opening a map: exactly one key; a pinned signer unless allow_unsigned.
mtd::RestoreOptions open_options(KeyHolder& keys, const std::optional<std::string>& key_file,
                                 const std::optional<std::string>& passphrase_file, const std::optional<std::string>& identity,
                                 const std::vector<std::string>& verify_signers, bool allow_unsigned, const std::string& expect) {
  mtd::RestoreOptions o;
  int given = key_file.has_value() + passphrase_file.has_value() + identity.has_value();
  if (given != 1) throw py::value_error("give exactly one of key_file, passphrase_file, identity");
  if (key_file) {
    const auto* k = keys.read(*key_file, "key_file");
    if (!k->has_symmetric()) throw py::value_error("key_file: not a symmetric key file");
    o.open.symmetric_key = k->symmetric();
  }
  if (passphrase_file) o.open.passphrase = read_passphrase(*passphrase_file);
  if (identity) {
    const auto* k = keys.read(*identity, "identity");
    if (!k->can_open()) throw py::value_error("identity: " + *identity + ": no x25519-secret key (give the .key file)");
    o.open.identity = k->file();
  }
  for (const auto& f : verify_signers) {
    const auto* k = keys.read(f, "verify_signer");
    if (!k->signer_public()) throw py::value_error("verify_signer: " + f + ": no ed25519-public key");
    o.open.trusted_signers.push_back(*k->signer_public());
  }
  if (verify_signers.empty() && !allow_unsigned)
    throw py::value_error("a trusted signer is required: give verify_signer=PUBLISHER.pub "
                          "(or allow_unsigned=True to accept a map that anyone could have made)");
  if (!verify_signers.empty() && allow_unsigned)
    throw py::value_error("allow_unsigned cannot be combined with verify_signer");
  o.open.allow_unsigned = allow_unsigned;
  if (expect != "auto" && expect != "protected" && expect != "restored")
    throw py::value_error("expect must be auto, protected or restored");
  o.expect = expect;
  return o;
}

void wipe(mtd::RestoreOptions& o) {
  if (o.open.passphrase) sodium_memzero(o.open.passphrase->data(), o.open.passphrase->size());
}

mtd::ProtectOptions protect_options(KeyHolder& keys, const std::vector<std::string>& key_files,
                                    const std::vector<std::string>& passphrase_files, const std::vector<std::string>& recipients,
                                    const std::optional<std::string>& sign, const std::string& compat, bool encrypt,
                                    bool allow_trailing_data) {
  if (key_files.empty() && passphrase_files.empty() && recipients.empty())
    throw py::value_error("protect: give at least one of key_file, passphrase_file, recipient");
  mtd::ProtectOptions o;
  o.compat = or_throw(compat_of(compat));
  o.encrypt = encrypt;
  o.allow_trailing_data = allow_trailing_data;
  for (const auto& f : key_files) {
    const auto* k = keys.read(f, "key_file");
    if (!k->has_symmetric()) throw py::value_error("key_file " + f + ": not a symmetric key file");
    o.seal.symmetric_keys.push_back(*k->symmetric());
  }
  for (const auto& f : passphrase_files) o.seal.passphrases.push_back(*read_passphrase(f));
  for (const auto& f : recipients) {
    const auto* k = keys.read(f, "recipient");
    if (!k->recipient()) throw py::value_error("recipient " + f + ": no x25519-public key");
    o.seal.recipients.push_back(*k->recipient());
  }
  if (sign) {
    const auto* k = keys.read(*sign, "sign");
    if (!k->can_sign()) throw py::value_error("sign " + *sign + ": no ed25519-secret key (give the .key file)");
    o.seal.signer = k->file();
  }
  return o;
}

// Engine::protect / restore / verify / restore_model for PyEngine (below). Model and map come
// from a path or a bytes-like object (borrowed, as for disarm); an output or map given as
// None is a memory sink whose bytes come back (None after a failure).
struct MtdCalls {
  // (result dict, protected bytes or None, map bytes or None)
  static py::tuple protect(const Engine& engine, const py::object& src, const std::string& name,
                           const std::optional<std::string>& output, const std::optional<std::string>& map,
                           const std::vector<std::string>& key_files, const std::vector<std::string>& passphrase_files,
                           const std::vector<std::string>& recipients, const std::optional<std::string>& sign,
                           const std::string& compat, bool encrypt, bool allow_trailing_data) {
    KeyHolder keys;
    auto o = protect_options(keys, key_files, passphrase_files, recipients, sign, compat, encrypt, allow_trailing_data);
    PySource in = source_of(src, name);
    Sink out = output ? Sink::file(*output) : Sink::memory(name);
    Sink m = map ? Sink::file(*map) : Sink::memory("<memory map>");
    FileReport r;
    {
      py::gil_scoped_release nogil;
      r = engine.protect(in.source, out, m, o);
      for (auto& p : o.seal.passphrases) sodium_memzero(p.data(), p.size());
    }
    const bool ok = r.mtd && r.mtd->outcome == MtdOutcome::ok;
    return py::make_tuple(mtd_dict(r), ok && !output ? bytes_of(out) : py::object(py::none()),
                          ok && !map ? bytes_of(m) : py::object(py::none()));
  }

  // (result dict, restored bytes or None)
  static py::tuple restore(const Engine& engine, const py::object& src, const std::string& name, const py::object& map,
                           const std::string& map_name, const std::optional<std::string>& output,
                           const std::optional<std::string>& key_file, const std::optional<std::string>& passphrase_file,
                           const std::optional<std::string>& identity, const std::vector<std::string>& verify_signers,
                           bool allow_unsigned) {
    KeyHolder keys;
    auto o = open_options(keys, key_file, passphrase_file, identity, verify_signers, allow_unsigned, "auto");
    o.check_expiry = true;  // as `modelcdr restore`: an expired map is refused
    PySource in = source_of(src, name), mp = source_of(map, map_name);
    Sink out = output ? Sink::file(*output) : Sink::memory(name);
    FileReport r;
    {
      py::gil_scoped_release nogil;
      r = engine.restore(in.source, mp.source, out, o);
      wipe(o);
    }
    const bool ok = r.mtd && r.mtd->outcome == MtdOutcome::ok;
    return py::make_tuple(mtd_dict(r), ok && !output ? bytes_of(out) : py::object(py::none()));
  }

  static py::dict verify(const Engine& engine, const py::object& src, const std::string& name, const py::object& map,
                         const std::string& map_name, const std::optional<std::string>& key_file,
                         const std::optional<std::string>& passphrase_file, const std::optional<std::string>& identity,
                         const std::vector<std::string>& verify_signers, bool allow_unsigned, const std::string& expect) {
    KeyHolder keys;
    auto o = open_options(keys, key_file, passphrase_file, identity, verify_signers, allow_unsigned, expect);
    PySource in = source_of(src, name), mp = source_of(map, map_name);
    FileReport r;
    {
      py::gil_scoped_release nogil;
      r = engine.verify(in.source, mp.source, o);
      wipe(o);
    }
    return mtd_dict(r);
  }

  // The in-memory restore behind modelcdr.load(protected, map=...): (Model | None, result).
  static py::tuple restore_model(const Engine& engine, const py::object& src, const std::string& name,
                                 const py::object& map, const std::string& map_name,
                                 const std::optional<std::string>& key_file, const std::optional<std::string>& passphrase_file,
                                 const std::optional<std::string>& identity, const std::vector<std::string>& verify_signers,
                                 bool allow_unsigned) {
    KeyHolder keys;
    auto o = open_options(keys, key_file, passphrase_file, identity, verify_signers, allow_unsigned, "auto");
    o.check_expiry = true;
    PySource in = source_of(src, name), mp = source_of(map, map_name);
    std::unique_ptr<PyModel> pm(new PyModel);
    pm->held = in.held;  // a memory source is borrowed for the model's life
    FileReport r;
    {
      py::gil_scoped_release nogil;
      r = engine.restore_model(in.source, mp.source, o, pm->loaded);
      wipe(o);
    }
    if (!r.mtd || r.mtd->outcome != MtdOutcome::ok || !pm->loaded) return py::make_tuple(py::object(py::none()), mtd_dict(r));
    pm->m = &model_of(*pm->loaded);
    return py::make_tuple(py::cast(pm.release(), py::return_value_policy::take_ownership), mtd_dict(r));
  }
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "modelcdr engine bindings (internal: use the modelcdr package)";
  m.attr("__version__") = kVersion;
  if (sodium_init() < 0) throw std::runtime_error("libsodium failed to initialise");

  m.def("is_model_file", [](const std::string& path) {
    py::gil_scoped_release nogil;
    return is_model_file(path);
  });

  py::class_<OwnedBuffer>(m, "OwnedBuffer", py::buffer_protocol())
      .def_buffer([](OwnedBuffer& b) {
        return py::buffer_info(b.data, 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.size)}, {1}, /*readonly=*/false);
      });

  py::class_<PyModel>(m, "Model")
      .def_property_readonly("root", [](PyModel& s) { return s.m->root; })
      .def("values", [](PyModel& s) {
        py::list l;
        for (const auto& v : s.m->values) l.append(value_tuple(v));
        return l;
      })
      .def("tensors", [](PyModel& s) {
        py::list l;
        for (const auto& t : s.m->tensors) l.append(tensor_tuple(t));
        return l;
      })
      .def("storages", [](PyModel& s) {
        py::list l;
        const ByteRanges& ranges = byte_ranges_of(*s.loaded);
        for (model::StorageId i = 0; i < s.m->storages.size(); ++i)
          l.append(storage_tuple(s.m->storages[i], ranges.of(*s.m, i)));
        return l;
      })
      .def("file_metadata", [](PyModel& s) { return s.m->file_metadata; })
      .def("owned_buffer", &owned_buffer)
      .def("storage_into", &storage_into, py::arg("i"), py::arg("address"), py::arg("nbytes"));

  py::class_<CancelToken>(m, "CancelToken")
      .def(py::init<>())
      .def("cancel", [](CancelToken& c) { c.flag.store(true); })
      .def_property_readonly("cancelled", [](const CancelToken& c) { return c.flag.load(); });

  py::class_<PyEngine>(m, "Engine")
      .def(py::init(&make_engine), py::arg("max_input_bytes") = 0, py::arg("max_pickle_ops") = 0,
           py::arg("max_pickle_nodes") = 0, py::arg("max_container_items") = 0,
           py::arg("allow_classes") = std::vector<std::string>{}, py::arg("allow_reduce") = std::vector<std::string>{},
           py::arg("policy_files") = std::vector<std::string>{})
      .def("scan", &PyEngine::scan, py::arg("src"), py::arg("name") = "<memory>", py::arg("stego") = false,
           py::arg("progress") = py::none(), py::arg("cancel") = py::none())
      .def("disarm", &PyEngine::disarm, py::arg("src"), py::arg("name") = "<memory>", py::arg("output") = py::none(),
           py::arg("compat") = "torch2", py::arg("output_format") = "pt", py::arg("allow_trailing_data") = false,
           py::arg("fsync") = false, py::arg("force") = false, py::arg("reflink") = true,
           py::arg("progress") = py::none(), py::arg("cancel") = py::none())
      .def("load", &PyEngine::load, py::arg("src"), py::arg("name") = "<memory>", py::arg("compat") = "torch2",
           py::arg("allow_trailing_data") = false, py::arg("progress") = py::none(), py::arg("cancel") = py::none())
      .def_property_readonly("limits", [](const PyEngine& e) {
        const auto& l = e.engine.limits();
        py::dict d;
        d["max_input_bytes"] = l.max_input_bytes;
        d["max_pickle_ops"] = l.max_pickle_ops;
        d["max_pickle_nodes"] = l.max_pickle_nodes;
        d["max_container_items"] = l.max_container_items;
        return d;
      })
      .def("allowed_classes", [](const PyEngine& e) { return e.engine.allowed_classes(); })
      .def("protect",
           [](const PyEngine& e, const py::object& src, const std::string& name, const std::optional<std::string>& output,
              const std::optional<std::string>& map, const std::vector<std::string>& key_files,
              const std::vector<std::string>& passphrase_files, const std::vector<std::string>& recipients,
              const std::optional<std::string>& sign, const std::string& compat, bool encrypt, bool allow_trailing_data) {
             return MtdCalls::protect(e.engine, src, name, output, map, key_files, passphrase_files, recipients, sign,
                                      compat, encrypt, allow_trailing_data);
           },
           py::arg("src"), py::arg("name"), py::arg("output"), py::arg("map"), py::arg("key_files"),
           py::arg("passphrase_files"), py::arg("recipients"), py::arg("sign"), py::arg("compat"), py::arg("encrypt"),
           py::arg("allow_trailing_data"))
      .def("restore",
           [](const PyEngine& e, const py::object& src, const std::string& name, const py::object& map,
              const std::string& map_name, const std::optional<std::string>& output, const std::optional<std::string>& key_file,
              const std::optional<std::string>& passphrase_file, const std::optional<std::string>& identity,
              const std::vector<std::string>& verify_signers, bool allow_unsigned) {
             return MtdCalls::restore(e.engine, src, name, map, map_name, output, key_file, passphrase_file, identity,
                                      verify_signers, allow_unsigned);
           })
      .def("verify",
           [](const PyEngine& e, const py::object& src, const std::string& name, const py::object& map,
              const std::string& map_name, const std::optional<std::string>& key_file,
              const std::optional<std::string>& passphrase_file, const std::optional<std::string>& identity,
              const std::vector<std::string>& verify_signers, bool allow_unsigned, const std::string& expect) {
             return MtdCalls::verify(e.engine, src, name, map, map_name, key_file, passphrase_file, identity,
                                     verify_signers, allow_unsigned, expect);
           })
      .def("restore_model",
           [](const PyEngine& e, const py::object& src, const std::string& name, const py::object& map,
              const std::string& map_name, const std::optional<std::string>& key_file,
              const std::optional<std::string>& passphrase_file, const std::optional<std::string>& identity,
              const std::vector<std::string>& verify_signers, bool allow_unsigned) {
             return MtdCalls::restore_model(e.engine, src, name, map, map_name, key_file, passphrase_file, identity,
                                            verify_signers, allow_unsigned);
           });

}
