#include "formats/torch_zip_writer.hpp"

#include "modelcdr/limits.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "container/zip_writer.hpp"
#include "io/mapped_file.hpp"
#include "pickle/pickle_emitter.hpp"
#include "pickle/pickle_machine.hpp"
#include "pickle/stream_check.hpp"

namespace modelcdr::formats {

namespace {

using model::DType;
using model::Model;
using model::Tensor;
using model::TensorKind;
using model::Value;
using model::ValueId;
using model::ValueKind;
using pickle::EmitGlobal;
using pickle::PickleEmitter;

constexpr size_t kBatch = 1000;  // items per APPENDS/SETITEMS, as CPython's pickler does

// Model ids (values, tensors, storages: numbered from 0) to numbers: a flat array, 4 bytes an
// id. A hash map per table cost an allocation and a cache miss per tensor (issue 14).
class IdTable {
 public:
  static constexpr uint32_t kNone = 0xFFFFFFFFu;
  uint32_t get(uint32_t id) const { return id < v_.size() ? v_[id] : kNone; }
  void set(uint32_t id, uint32_t n) {
    if (id >= v_.size()) v_.resize(std::max<size_t>(size_t{id} + 1, v_.size() * 2), kNone);
    v_[id] = n;
  }

 private:
  std::vector<uint32_t> v_;
};

// Emits the IR as a protocol-2 program. Shared values (same ValueId twice) and tensors are
// memoized so identity survives: tied weights come back as one object.
class DataPklEmitter {
 public:
  DataPklEmitter(const Model& m, const TorchWriteOptions& o, std::vector<model::StorageId>& order,
                 std::vector<model::Storage>& extra)
      : m_(m), opt_(o), order_(order), extra_(extra) {}

  Result<std::vector<uint8_t>> run() {
    // Room for the usual stream up front (a tensor takes about 150 bytes, a plain value a few
    // dozen), as address space only until written: growing by doubling left the smaller blocks
    // freed but resident on the heap, about 15 MB at 160k tensors (issue 14). A longer stream
    // still grows as before.
    e_.bytes().reserve(kTensorBytes * m_.tensors.size() + kValueBytes * m_.values.size() + 4096);
    e_.proto2();
    value(m_.root);
    e_.stop();
    if (too_deep_) return limits::too_deep("values written to data.pkl");
    return std::move(e_.bytes());
  }

 private:
  bool compat13() const { return opt_.compat == Compat::torch1_13; }

  // Depth-bounded like every walk (the pipeline checks the graph first; this holds anyway):
  // past the bound the walk stops descending and run() fails.
  void value(ValueId id) {
    if (depth_ >= limits::kMaxDepth) {
      too_deep_ = true;
      e_.none();
      return;
    }
    ++depth_;
    value_at_depth(id);
    --depth_;
  }

  void value_at_depth(ValueId id) {
    if (id == model::kNoValue) {
      e_.none();
      return;
    }
    if (uint32_t memo = memo_.get(id); memo != IdTable::kNone) {
      e_.get(memo);
      return;
    }
    const Value& v = m_.values[id];
    switch (v.kind) {
      case ValueKind::none:
      case ValueKind::dropped: e_.none(); return;
      case ValueKind::boolean: e_.boolean(v.b); return;
      case ValueKind::integer: e_.integer(v.i); return;
      case ValueKind::big_integer: e_.long1(v.text); return;
      case ValueKind::floating: floating(v.f); return;
      case ValueKind::complex: complex(v.f, v.imag); return;
      case ValueKind::string:
        if (v.torch_type != model::TorchType::device || compat13()) {
          e_.unicode(v.text);  // (compat: 1.13's loader has no torch.device; the pipeline reports it)
          return;
        }
        typed_call(EmitGlobal::torch_device, [&] { e_.unicode(v.text); });
        break;
      case ValueKind::bytes: bytes(v.text); break;
      case ValueKind::list: list(id, v.items); return;
      case ValueKind::tuple:
        if (v.torch_type == model::TorchType::size)
          typed_call(EmitGlobal::torch_size, [&] { tuple(v.items); });
        else
          tuple(v.items);
        break;
      case ValueKind::dict: dict(id, v, false); return;
      case ValueKind::ordered_dict: dict(id, v, true); return;
      case ValueKind::set: set(id, v.items); return;
      case ValueKind::tensor: tensor_value(v.tensor); break;
      // numpy / registry values (lifted from pickle/joblib inputs) as plain torch data:
      case ValueKind::ndarray:  // numeric arrays as tensors, object arrays as lists
        if (!v.items.empty() || m_.values[v.state].text.rfind("O", 0) == 0) {
          list(id, v.items);
          return;
        }
        if (is_string_code(m_.values[v.state].text)) {  // no tensor form: lists of str/bytes (reported)
          string_array(v);
          memo_.set(id, e_.put());
          return;
        }
        tensor_value(v.tensor);
        break;
      case ValueKind::numpy_dtype: e_.unicode(v.text); return;  // the dtype code, e.g. "f8"
      case ValueKind::object: value(v.state); return;           // its state dict
    }
    memo_.set(id, e_.put());
  }

  static bool is_string_code(const std::string& code) { return !code.empty() && (code[0] == 'S' || code[0] == 'U'); }

  // A numpy fixed-width string array ("S5" bytes / "U3" UTF-32LE, raw bytes in the array's C or
  // Fortran order) as nested lists of bytes / str, trailing NULs stripped as numpy does.
  void string_array(const Value& v) {
    const std::string& code = m_.values[v.state].text;
    bool unicode = code[0] == 'U';
    uint64_t item = std::stoull(code.substr(1)) * (unicode ? 4 : 1);
    const auto& bytes = m_.storages[m_.tensors[v.tensor].storage].bytes;
    const auto& shape = v.array_shape;
    std::vector<uint64_t> stride(shape.size(), 1);  // in elements
    uint64_t acc = 1;
    for (size_t k = 0; k < shape.size(); ++k) {
      size_t i = v.fortran_order ? k : shape.size() - 1 - k;
      stride[i] = acc;
      acc *= static_cast<uint64_t>(std::max<int64_t>(shape[i], 1));
    }
    auto element = [&](uint64_t index) {
      uint64_t at = index * item;
      if (at + item > bytes.size()) return e_.none();  // the reader checked the size; never reached
      const uint8_t* p = bytes.data() + at;
      if (!unicode) {
        uint64_t n = item;
        while (n > 0 && p[n - 1] == 0) --n;
        return this->bytes(std::string(reinterpret_cast<const char*>(p), n));
      }
      e_.unicode(utf8_from_utf32le(p, item / 4));
    };
    auto walk = [&](auto& self, size_t dim, uint64_t base) -> void {
      if (dim == shape.size()) return element(base);
      e_.empty_list();
      batched(static_cast<size_t>(shape[dim]), [&](size_t i) { self(self, dim + 1, base + i * stride[dim]); },
              [&] { e_.appends(); });
    };
    walk(walk, 0, 0);
  }

  // Code points from UTF-32LE, trailing NULs dropped; values beyond U+10FFFF become U+FFFD.
  // Surrogates are kept (surrogatepass, as Python's pickle reads them back).
  static std::string utf8_from_utf32le(const uint8_t* p, uint64_t n) {
    while (n > 0 && (p[4 * n - 4] | p[4 * n - 3] | p[4 * n - 2] | p[4 * n - 1]) == 0) --n;
    std::string out;
    for (uint64_t i = 0; i < n; ++i) {
      uint32_t c = p[4 * i] | (p[4 * i + 1] << 8) | (p[4 * i + 2] << 16) | (static_cast<uint32_t>(p[4 * i + 3]) << 24);
      if (c > 0x10FFFF) c = 0xFFFD;
      if (c < 0x80) {
        out.push_back(static_cast<char>(c));
      } else if (c < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (c >> 6)));
        out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
      } else if (c < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (c >> 12)));
        out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
      } else {
        out.push_back(static_cast<char>(0xF0 | (c >> 18)));
        out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
      }
    }
    return out;
  }

  // GLOBAL <type>, (<one argument>,), REDUCE: torch.Size(tuple) and torch.device(str).
  template <class EmitArg>
  void typed_call(EmitGlobal type, EmitArg emit_arg) {
    e_.global(type);
    emit_arg();
    e_.tuple_n(1);
    e_.reduce();
  }

  void floating(double f) {
    if (!compat13()) {
      e_.binfloat(f);
      return;
    }
    // torch 1.13's weights_only loader has no BINFLOAT: a 0-dim float64 tensor carries the
    // exact value instead (docs/FORMATS.md §5.4 item 5, option b).
    uint8_t raw[8];
    std::memcpy(raw, &f, 8);
    scalar_tensor(DType::f64, std::span<const uint8_t>(raw, 8), {});
  }

  void complex(double re, double im) {
    if (!compat13()) {
      e_.global(EmitGlobal::builtins_complex);
      e_.binfloat(re);
      e_.binfloat(im);
      e_.tuple_n(2);
      e_.reduce();
      return;
    }
    uint8_t raw[16];
    std::memcpy(raw, &re, 8);
    std::memcpy(raw + 8, &im, 8);
    scalar_tensor(DType::c128, std::span<const uint8_t>(raw, 16), {});
  }

  void bytes(const std::string& b) {
    if (compat13()) {
      scalar_tensor(DType::u8, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(b.data()), b.size()),
                    {static_cast<int64_t>(b.size())});
      return;
    }
    // Protocol 2 spelling of bytes: _codecs.encode(<latin-1 text>, 'latin1').
    std::string latin1_as_utf8;
    latin1_as_utf8.reserve(b.size() * 2);
    for (unsigned char c : b) {
      if (c < 0x80) {
        latin1_as_utf8.push_back(static_cast<char>(c));
      } else {
        latin1_as_utf8.push_back(static_cast<char>(0xC0 | (c >> 6)));
        latin1_as_utf8.push_back(static_cast<char>(0x80 | (c & 0x3F)));
      }
    }
    e_.global(EmitGlobal::codecs_encode);
    e_.unicode(latin1_as_utf8);
    e_.unicode("latin1");
    e_.tuple_n(2);
    e_.reduce();
  }

  // A tensor the writer makes itself (a scalar in compat mode): its storage is owned by
  // `extra_` and gets a key like any other.
  void scalar_tensor(DType d, std::span<const uint8_t> raw, std::vector<int64_t> shape) {
    model::Storage s;
    s.dtype = d;
    s.set_owned(std::vector<uint8_t>(raw.begin(), raw.end()));
    extra_.push_back(std::move(s));
    uint32_t sid = kNewStorageBase + static_cast<uint32_t>(extra_.size() - 1);
    std::vector<int64_t> stride;
    if (!shape.empty()) stride.push_back(1);
    e_.global(EmitGlobal::rebuild_tensor_v2);
    e_.mark();
    persistent_id(sid, d);
    e_.integer(0);
    int_tuple(shape);
    int_tuple(stride);
    e_.boolean(false);
    empty_ordered_dict();
    e_.tuple();
    e_.reduce();
  }

  void list(ValueId id, std::span<const ValueId> items) {
    e_.empty_list();
    memo_.set(id, e_.put());
    batched(items.size(), [&](size_t i) { value(items[i]); }, [&] { e_.appends(); });
  }

  void tuple(std::span<const ValueId> items) {
    if (items.size() <= 3) {
      for (auto it : items) value(it);
      e_.tuple_n(items.size());
      return;
    }
    e_.mark();
    for (auto it : items) value(it);
    e_.tuple();
  }

  void set(ValueId id, std::span<const ValueId> items) {
    if (compat13()) {  // 1.13 accepts no set at all: a list keeps the elements
      list(id, items);
      return;
    }
    e_.global(EmitGlobal::builtins_set);
    e_.empty_list();
    e_.put();
    batched(items.size(), [&](size_t i) { value(items[i]); }, [&] { e_.appends(); });
    e_.tuple_n(1);
    e_.reduce();
    memo_.set(id, e_.put());
  }

  void dict(ValueId id, const Value& v, bool ordered) {
    if (ordered) {
      empty_ordered_dict();
    } else {
      e_.empty_dict();
    }
    memo_.set(id, e_.put());
    batched(v.entries.size(),
            [&](size_t i) {
              value(v.entries[i].first);
              value(v.entries[i].second);
            },
            [&] { e_.setitems(); });
    if (ordered && v.metadata != model::kNoValue) {
      // state-dict `_metadata`, applied with BUILD exactly as torch.save writes it (docs/FORMATS.md §2.7).
      e_.empty_dict();
      e_.unicode("_metadata");
      value(v.metadata);
      e_.setitem();
      e_.build();
    }
  }

  template <class Item, class Close>
  void batched(size_t n, Item item, Close close) {
    for (size_t start = 0; start < n; start += kBatch) {
      e_.mark();
      size_t end = std::min(n, start + kBatch);
      for (size_t i = start; i < end; ++i) item(i);
      close();
    }
  }

  void empty_ordered_dict() {
    e_.global(EmitGlobal::ordered_dict);
    e_.tuple_n(0);
    e_.reduce();
  }

  void int_tuple(std::span<const int64_t> xs) {
    if (xs.size() <= 3) {
      for (auto x : xs) e_.integer(x);
      e_.tuple_n(xs.size());
      return;
    }
    e_.mark();
    for (auto x : xs) e_.integer(x);
    e_.tuple();
  }

  const model::Storage& storage(uint32_t sid) const {
    return sid >= kNewStorageBase ? extra_[sid - kNewStorageBase] : m_.storages[sid];
  }

  // ('storage', <class>, '<key>', 'cpu', numel) BINPERSID; keys in first-use order.
  void persistent_id(uint32_t sid, DType d) {
    IdTable& keys = sid >= kNewStorageBase ? new_keys_ : keys_;
    const uint32_t slot = sid >= kNewStorageBase ? sid - kNewStorageBase : sid;
    uint32_t key = keys.get(slot);
    if (key == IdTable::kNone) {
      key = key_count_++;
      keys.set(slot, key);
      order_.push_back(sid);
    }
    const auto& info = model::dtype_info(d);
    uint64_t nbytes = storage(sid).nbytes;
    e_.mark();
    e_.unicode("storage");
    if (info.storage_class) {
      e_.storage_class(d);
      e_.unicode(std::to_string(key));
      e_.unicode("cpu");
      e_.integer(static_cast<int64_t>(nbytes / info.element_size));
    } else {
      e_.global(EmitGlobal::untyped_storage);
      e_.unicode(std::to_string(key));
      e_.unicode("cpu");
      e_.integer(static_cast<int64_t>(nbytes));
    }
    e_.tuple();
    e_.binpersid();
  }

  void tensor_value(model::TensorId tid) {
    const Tensor& t = m_.tensors[tid];
    if (t.is_parameter) {
      e_.global(EmitGlobal::rebuild_parameter);
      e_.mark();
      bare_tensor(t);
      e_.boolean(t.param_requires_grad);
      empty_ordered_dict();
      e_.tuple();
      e_.reduce();
      return;
    }
    bare_tensor(t);
  }

  void tensor_ref(model::TensorId tid) {
    if (uint32_t memo = tensor_memo_.get(tid); memo != IdTable::kNone) {
      e_.get(memo);
      return;
    }
    bare_tensor(m_.tensors[tid]);
    tensor_memo_.set(tid, e_.put());
  }

  void bare_tensor(const Tensor& t) {
    switch (t.kind) {
      case TensorKind::dense: dense(t); return;
      case TensorKind::quantized_per_tensor:
      case TensorKind::quantized_per_channel: quantized(t); return;
      case TensorKind::sparse_coo:
      case TensorKind::sparse_csr:
      case TensorKind::sparse_csc:
      case TensorKind::sparse_bsr:
      case TensorKind::sparse_bsc: sparse(t); return;
    }
  }

  void dense(const Tensor& t) {
    bool v3 = model::dtype_info(t.dtype).storage_class == nullptr;
    e_.global(v3 ? EmitGlobal::rebuild_tensor_v3 : EmitGlobal::rebuild_tensor_v2);
    e_.mark();
    persistent_id(t.storage, t.dtype);
    e_.integer(t.storage_offset);
    int_tuple(t.shape);
    int_tuple(t.stride);
    e_.boolean(t.requires_grad);
    empty_ordered_dict();
    if (v3) e_.dtype_global(t.dtype);
    e_.tuple();
    e_.reduce();
  }

  void quantized(const Tensor& t) {
    e_.global(EmitGlobal::rebuild_qtensor);
    e_.mark();
    persistent_id(t.storage, t.dtype);
    e_.integer(t.storage_offset);
    int_tuple(t.shape);
    int_tuple(t.stride);
    if (t.kind == TensorKind::quantized_per_tensor) {
      e_.global(EmitGlobal::per_tensor_affine);
      e_.binfloat(t.q_scale);
      e_.integer(t.q_zero_point);
      e_.tuple_n(3);
    } else {
      e_.mark();
      e_.global(EmitGlobal::per_channel_affine);
      tensor_ref(t.q_scales);
      tensor_ref(t.q_zero_points);
      e_.integer(t.q_axis);
      e_.tuple();
    }
    e_.boolean(t.requires_grad);
    empty_ordered_dict();
    e_.tuple();
    e_.reduce();
  }

  // _rebuild_sparse_tensor(_get_layout(<name from the layout table>), data). torch 1.13 reads
  // CSR only through _rebuild_sparse_csr_tensor; the pipeline drops CSC/BSR/BSC for it.
  void sparse(const Tensor& t) {
    bool csr13 = compat13() && t.kind == TensorKind::sparse_csr;
    e_.global(csr13 ? EmitGlobal::rebuild_sparse_csr : EmitGlobal::rebuild_sparse_tensor);
    e_.global(EmitGlobal::get_layout);
    e_.unicode(model::sparse_layout_name(t.kind));
    e_.tuple_n(1);
    e_.reduce();
    e_.mark();
    tensor_ref(t.sparse_indices);
    if (model::is_sparse_compressed(t.kind)) tensor_ref(t.sparse_plain);
    tensor_ref(t.sparse_values);
    e_.global(EmitGlobal::torch_size);
    int_tuple(t.shape);
    e_.tuple_n(1);
    e_.reduce();
    if (t.kind == TensorKind::sparse_coo && t.sparse_coalesced.has_value() && !compat13())
      e_.boolean(*t.sparse_coalesced);
    e_.tuple();
    e_.tuple_n(2);
    e_.reduce();
  }

  static constexpr size_t kTensorBytes = 192, kValueBytes = 48;  // see run()
  const Model& m_;
  const TorchWriteOptions& opt_;
  std::vector<model::StorageId>& order_;
  std::vector<model::Storage>& extra_;
  PickleEmitter e_;
  IdTable memo_;         // by ValueId: its memo index once written
  IdTable tensor_memo_;  // by TensorId
  uint32_t depth_ = 0;
  bool too_deep_ = false;
  IdTable keys_, new_keys_;  // by StorageId (new_keys_: ids from kNewStorageBase): its record key
  uint32_t key_count_ = 0;
};

// 1 MiB chunks: measured here, 8 MiB read/write pairs cost 4x the kernel time of 1 MiB ones
// (dd bs=8M: 1.04 s sys for 512 MiB; bs=1M: 0.24 s), as the buffer no longer stays in cache.
constexpr size_t kChunk = 1 << 20;
// Payloads from this size up are copied in the kernel (copy_file_range, as cp does) while a
// second thread checksums them (bench/bench_disarm.sh, 1 GiB: from 1.57x the time of cp with
// pread/write to 1.24-1.34x). Below it, a thread start costs more than the copy saves.
constexpr size_t kKernelCopyMin = 4 << 20;

// Records below this size are copied from the input's mapping, not with pread: in a checkpoint
// of small tensors a pread a record was a system call a tensor (160k of 64 bytes: about 0.3 s of
// system time, bench/bench_tensor_count.sh), where the mapping's pages come back from the page
// cache many at a time (fault-around). SmallCopies drops them again every few MiB.
constexpr size_t kMappedCopyMax = 64 * 1024;

// The input pages that copies of small records faulted in since they were last dropped, so that
// the resident set stays bounded however many records there are. The span [lo, hi) is dropped
// as one range, so it only ever covers records of one mapping: between two mappings could lie
// heap memory, which dropping would zero. A mapping is told by its base (address minus file
// offset), the same for every record in it.
struct SmallCopies {
  const uint8_t* lo = nullptr;
  const uint8_t* hi = nullptr;
  uintptr_t base = 0;
  size_t bytes = 0;
  static constexpr size_t kReleaseEvery = 4 << 20;
  void touched(const ByteRange& r) {
    const uintptr_t from = reinterpret_cast<uintptr_t>(r.view.data()) - r.offset;
    if (lo && from != base) release();
    base = from;
    lo = lo ? std::min(lo, r.view.data()) : r.view.data();
    hi = std::max(hi, r.view.data() + r.view.size());
    // Counted as the span of the file touched, not as payload bytes: small records sit between
    // their zip headers and alignment padding (a record of 64 bytes spans about 360), and 4 MB
    // of payload was about 23 MB of input pages resident at 160k tensors (issue 14).
    bytes += r.view.size();
    if (bytes >= kReleaseEvery || static_cast<size_t>(hi - lo) >= kReleaseEvery) release();
  }
  void release() {
    if (lo) io::release_mapped_pages(std::span<const uint8_t>(lo, static_cast<size_t>(hi - lo)));
    lo = hi = nullptr;
    bytes = 0;
  }
};

// Output payloads from this size up get their blocks allocated in one call before they are
// written (fallocate with FALLOC_FL_KEEP_SIZE: the file's size and bytes are unchanged). Without
// it ext4's delayed allocation reserves and tracks each 4 KiB block of a buffered write on its
// own: writing 1 GiB in 256 KiB write() calls took 0.21-0.87 s of system time here, against
// 0.12-0.15 s into preallocated blocks (bench/README.md, bench_mtd.sh). Advisory only: where
// the file system cannot preallocate (tmpfs memory outputs are skipped) the writes do it.
constexpr uint64_t kPreallocateMin = 4 << 20;

void preallocate(io::AtomicOutput& out, uint64_t size) {
  if (size < kPreallocateMin || out.in_memory() || out.fd() < 0) return;
  (void)::fallocate(out.fd(), FALLOC_FL_KEEP_SIZE, static_cast<off_t>(out.tell()), static_cast<off_t>(size));
}

// Streams `size` bytes at `offset` of the input descriptor through one reused buffer: a
// pread/write pair per chunk costs about what cp costs, far less than faulting in a mapping.
Status stream_from_fd(container::ZipWriter& zip, int fd, uint64_t offset, uint64_t size, std::vector<uint8_t>& buffer,
                      const std::string& source) {
  buffer.resize(std::min<uint64_t>(kChunk, size));
  for (uint64_t done = 0; done < size;) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buffer.size(), size - done));
    ssize_t got = ::pread(fd, buffer.data(), want, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return make_error(Rule::io_read, "cannot read the input (changed while being disarmed?)", offset + done, source);
    MCDR_TRY(zip.write_payload(std::span<const uint8_t>(buffer.data(), static_cast<size_t>(got))));
    done += static_cast<uint64_t>(got);
  }
  return ok_status();
}

// Where a large record of the input lies within a page-cache folio (when that keeps the
// 64-byte alignment): the output puts it at the same phase so that the kernel copies whole
// folios. A function of the input record alone, so that protect (which streams, not copies)
// and restore lay records out exactly as disarm does, and a restored file is bit-identical
// to the disarmed original.
std::optional<uint64_t> folio_phase(const model::Storage& s, const ByteRange* r) {
  if (!r || !r->in_file() || s.bytes.size() < kKernelCopyMin || r->offset % 64 != 0) return std::nullopt;
  return r->offset % container::ZipWriter::kPhaseUnit;
}

// One storage record, its payload taken from the input in the cheapest way the storage allows:
// a kernel copy (large, mapped), pread chunks (mapped), or straight from memory (owned).
// `r` (may be null) is where the bytes lie in the input; its expected_crc, when the container
// stage left it to this copy, is the one "verify while copying" check.
Status copy_payload(container::ZipWriter& zip, const std::string& name, const model::Storage& s, const ByteRange* r,
                    std::vector<uint8_t>& buffer, SmallCopies& small) {
  const std::span<const uint8_t> bytes = s.bytes;
  const bool small_mapped = r && r->mapped && bytes.size() < kMappedCopyMax;
  const int fd = r && r->in_file() && !small_mapped ? r->fd : -1;
  const std::optional<uint32_t> expected_crc = r ? r->expected_crc : std::nullopt;
  MCDR_TRY(zip.begin_entry(name, bytes.size(), folio_phase(s, r)));
  bool copied = false;
  if (fd >= 0 && bytes.size() >= kKernelCopyMin) {
    auto c = zip.copy_payload_from(fd, r->offset, bytes.size(), expected_crc, s.source);
    if (!c) {
      Error e = c.error();
      e.entry = s.source;
      return e;
    }
    copied = *c;  // false: the kernel cannot copy between these files, so stream them below
  }
  if (!copied && fd >= 0) {
    MCDR_TRY(stream_from_fd(zip, fd, r->offset, bytes.size(), buffer, s.source));
  } else if (!copied) {
    const bool mapped = r && r->mapped && !small_mapped;
    if (small_mapped) small.touched(*r);
    for (size_t off = 0; off < bytes.size(); off += kChunk) {
      auto chunk = bytes.subspan(off, std::min(kChunk, bytes.size() - off));
      MCDR_TRY(zip.write_payload(chunk));
      if (mapped) io::release_mapped_pages(chunk);  // keeps RSS bounded whatever the model's size
    }
  }
  // The input directory's CRC for these same bytes, checked here instead of in a separate
  // read pass (the writer computes the CRC anyway); a mismatch aborts the output.
  if (expected_crc && zip.entry_crc() != *expected_crc)
    return make_error(Rule::zip_bad_crc, "CRC-32 of the storage record does not match the zip directory", 0, s.source);
  return zip.end_entry();
}

std::span<const uint8_t> text(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

Result<std::vector<uint8_t>> emit_data_pkl(const Model& model, const TorchWriteOptions& options,
                                           std::vector<model::StorageId>& storage_order,
                                           std::vector<model::Storage>& extra_storages) {
  DataPklEmitter emitter(model, options, storage_order, extra_storages);
  return emitter.run();
}

Status write_torch_zip(const Model& model, const TorchWriteOptions& options, io::AtomicOutput& out) {
  std::vector<model::StorageId> order;
  std::vector<model::Storage> extra;
  MCDR_ASSIGN(std::vector<uint8_t> pkl, emit_data_pkl(model, options, order, extra));
  // The emitter's self-check (invariant 2): one protocol-2 stream of the checkpoint vocabulary.
  pickle::VerifyOptions check;
  check.entry = "archive/data.pkl (emitted)";
  MCDR_TRY(pickle::verify_emitted(pkl, check));
  container::ZipWriter zip(out, 64);
  zip.set_reflink(options.reflink);
  zip.reserve_entries(order.size() + 5);
  MCDR_TRY(zip.add("archive/data.pkl", pkl));
  // Written: not held while the records are copied (a checkpoint of 160k small tensors has a
  // data.pkl of about 25 MB, 150 bytes a tensor; issue 14).
  std::vector<uint8_t>().swap(pkl);
  MCDR_TRY(zip.add("archive/.format_version", text("1")));
  MCDR_TRY(zip.add("archive/.storage_alignment", text("64")));
  MCDR_TRY(zip.add("archive/byteorder", text("little")));
  std::vector<uint8_t> copy_buffer;  // pread chunks of unchanged input payloads
  SmallCopies small;                 // input pages small records were copied from
  for (size_t key = 0; key < order.size(); ++key) {
    uint32_t sid = order[key];
    const auto& s = sid >= kNewStorageBase ? extra[sid - kNewStorageBase] : model.storages[sid];
    const ByteRange* range = sid < kNewStorageBase && options.ranges ? options.ranges->of(sid, s) : nullptr;
    const std::string name = "archive/data/" + std::to_string(key);
    if (options.records) {
      MCDR_TRY(zip.begin_entry(name, s.bytes.size(), folio_phase(s, range)));
      preallocate(out, s.bytes.size());  // the record stage writes every byte of it
      const RecordCopy rec{static_cast<uint32_t>(key), &s, range, out.tell()};
      MCDR_TRY(options.records->copy_record(rec, [&](std::span<const uint8_t> chunk, std::optional<uint32_t> crc) {
        return crc ? zip.write_payload(chunk, *crc) : zip.write_payload(chunk);
      }));
      MCDR_TRY(zip.end_entry());  // refuses a payload shorter than declared
      continue;
    }
    MCDR_TRY(copy_payload(zip, name, s, range, copy_buffer, small));
  }
  small.release();
  MCDR_TRY(zip.add("archive/version", text("3\n")));
  MCDR_TRY(zip.finish());  // waits for the checks of shared records
  if (options.shared_bytes) *options.shared_bytes = zip.shared_bytes();
  return ok_status();
}

}  // namespace modelcdr::formats
