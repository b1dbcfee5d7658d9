// The lifter is the policy: it walks the pickle value graph from the root and recognises the
// few shapes a model is made of (tensors rebuilt from storages, parameters, state dicts with
// `_metadata`, primitives, containers, a handful of plain-data classes). Everything else is
// replaced by a Dropped value and reported. Arguments are checked, not only names.
#pragma once
#include <deque>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>
#include <string>

#include "container/name_index.hpp"
#include "modelcdr/limits.hpp"
#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"
#include "pickle/value_graph.hpp"

namespace modelcdr::cdr {

// The storage records the container stage found, as plain data built before lifting: what a
// storage persistent id may name. The lifter looks keys up here and checks the declared size;
// it reads no bytes and calls nothing back. The container then binds each lifted storage to
// its record's bytes (and keeps where they lie in a ByteRanges beside the model).
struct StorageRecord {
  std::string source;  // "archive/data/3", "storage 3", "storages/3": reports and the IR's Storage::source
  uint64_t size = 0;   // bytes the record holds
};
class StorageTable {
 public:
  // How the lifter words a missing or mis-sized record, per container.
  enum class Kind : uint8_t {
    none,    // a stream without storage records (pickle, joblib, npy): any storage pid is cdr.no-storage
    zip,     // torch zip / TorchScript: data/<key> records, sizes must match the pickle
    legacy,  // legacy (0.1.10-1.5) files: the data section after the pickles, sizes must match
    tar,     // tar format: the storages member; a record's size is its storage's size
  };
  Kind kind = Kind::none;
  const char* what = "a pickle";  // Kind::none: "a bare pickle has no storage records"
  std::string key_prefix;         // Kind::zip: "archive/data/", to name a missing record

  StorageTable() = default;
  StorageTable(StorageTable&&) = default;  // moving keeps the deque's strings where the views point
  StorageTable& operator=(StorageTable&&) = default;
  StorageTable(const StorageTable&) = delete;  // a copy's views would point into the original
  StorageTable& operator=(const StorageTable&) = delete;

  // A record whose key and source text the table keeps (copied).
  void add(std::string key, StorageRecord r) {
    const std::string& k = text_.emplace_back(std::move(key));
    const std::string& s = text_.emplace_back(std::move(r.source));
    add_view(k, s, r.size);
  }
  // A record whose key and source are views into text that outlives the table (a zip's entry
  // names): a checkpoint has one record per storage, 160k in a big one, and two std::strings
  // plus a string-keyed map node cost about 270 bytes a record (issue 14).
  // False (nothing added) when a record with this key is there already: the first one stays.
  bool add_view(std::string_view key, std::string_view source, uint64_t size) {
    recs_.push_back(Rec{key, source, size});
    if (index_.insert(static_cast<uint32_t>(recs_.size() - 1), Keys{recs_})) return true;
    recs_.pop_back();
    return false;
  }
  void reserve(size_t n) {
    recs_.reserve(n);
    index_.reserve(n);
  }
  // The index of the record with `key`, or -1.
  int64_t find(std::string_view key) const { return index_.find(key, Keys{recs_}); }
  size_t size() const { return recs_.size(); }
  std::string_view source(uint32_t i) const { return recs_[i].source; }
  uint64_t record_size(uint32_t i) const { return recs_[i].size; }

 private:
  struct Rec {
    std::string_view key, source;
    uint64_t size;
  };
  struct Keys {
    const std::vector<Rec>& recs;
    std::string_view operator()(uint32_t k) const { return recs[k].key; }
  };
  std::vector<Rec> recs_;
  container::NameIndex index_;
  std::deque<std::string> text_;  // add()'s copies: a deque, so views into them stay put
};
// Lift's output beside the model: the record each storage was lifted from, by StorageId
// (kNoRecord for payloads the program itself carries, e.g. joblib arrays).
constexpr uint32_t kNoRecord = 0xFFFFFFFFu;
using StorageBinding = std::vector<uint32_t>;

class ClassRegistry;

// A tensor record of PyTorch's pre-0.1.10 tar format (docs/FORMATS.md §3.3), addressed in the
// object pickle by a persistent id that is its key.
struct TarTensor {
  std::string storage_key;
  model::DType dtype = model::DType::f32;
  uint64_t storage_nbytes = 0;
  int64_t storage_offset = 0;
  std::vector<int64_t> shape, stride;
};

struct LiftOptions {
  std::string entry;          // for findings: "archive/data.pkl"
  uint32_t max_depth = limits::kMaxDepth;   // nesting of values (limits.depth)
  uint32_t max_dims = 64;
  // joblib: the decoded span that Node::payload_offset refers to (arrays stored after a
  // NumpyArrayWrapper's BUILD); must outlive the Model (storages are spans into it).
  std::span<const uint8_t> payload_bytes;
  // Vetted classes rebuilt as ValueKind::object; nullptr = none (torch checkpoints).
  const ClassRegistry* registry = nullptr;
  // Tar format: persistent ids that are tensor keys; class persistent ids (cls, file, source).
  const std::unordered_map<std::string, TarTensor>* tar_tensors = nullptr;
  // A scan's lift (no caller reads the values): the plain floats of a list all become one
  // shared float value. Lifting a float has no finding, and the list keeps its length and
  // height, so findings and the depth/cycle checks are the same; the 104 bytes a float are not.
  bool scan_only = false;
};

// A pure function of the program and the container's table: no callbacks, no I/O. The
// lifted storages carry source, dtype and nbytes but no bytes until the container binds them
// (`binding`, if given, receives the record of each storage).
Result<model::Model> lift(const pickle::Program& program, const StorageTable& storages, const LiftOptions& options,
                          StorageBinding* binding = nullptr);

// The same, for a caller that has no further use for the program (it is cleared): while the
// entries of a large root mapping (a state dict) are lifted, the pages of the program's nodes
// and text that no later entry reads are returned to the kernel, so that the Program and the
// Model are not both whole at the end (issue 14). The Model is the one lift() builds.
Result<model::Model> lift_consuming(pickle::Program&& program, const StorageTable& storages,
                                    const LiftOptions& options, StorageBinding* binding = nullptr);

// Appends `src` into `dst` (every id remapped) and returns the root of `src` in `dst`: a
// nested pickle (an object array's) lifted on its own joins the outer model.
model::ValueId graft(model::Model& dst, model::Model&& src);

// Findings about every global, call and BUILD in the program, reachable from the root or not
// (a payload can run during unpickling and be popped before STOP).
void scan_program(const pickle::Program& program, const std::string& entry, Findings& findings);
// One finding per thing: the lifter's removal of a reported call (cdr.dropped at the call's
// offset) becomes a detail of the call's finding instead of a finding of its own.
void fold_call_removals(Findings& findings);

// Replaces module paths, class names and tensor names of an architecture record that are not
// plain dotted Python identifiers (or that name a function that runs code) by "<rejected>",
// each with a cdr.architecture-name finding (docs/RULES.md).
void vet_architecture(model::ModuleInfo& info, Findings& findings, const std::string& entry, uint64_t offset);

// True when bytes look like a serialized pickle (raw, base64 or hex encoded): a dormant
// payload that an application might unpickle later.
bool looks_like_embedded_pickle(std::string_view data);

// For a stream the strict machine rejected with `strict`: what CPython's unpicklers would
// import and call reading the same bytes (pickle.cpython-view, cpython_view.cpp). Scan only.
void scan_cpython_view(std::span<const uint8_t> bytes, const std::string& entry, uint64_t base_offset,
                       const Error& strict, Findings& out);

}  // namespace modelcdr::cdr
