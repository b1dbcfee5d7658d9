#include "io/huge_pages.hpp"
#include "cdr/lifter.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <unordered_map>
#include <unordered_set>

#include <sys/mman.h>
#include <unistd.h>

#include "cdr/class_registry.hpp"
#include "cdr/globals_policy.hpp"
#include "cdr/nested_pickle.hpp"
#include "pickle/pickle_machine.hpp"
#include "io/byte_cursor.hpp"
#include "modelcdr/limits.hpp"

namespace modelcdr::cdr {

namespace {

// Stands in for a name in the architecture JSON that is not a plain Python name.
constexpr const char* kRejectedName = "<rejected>";

using model::DType;
using model::Model;
using model::Tensor;
using model::TensorId;
using model::TensorKind;
using model::TorchType;
using model::Value;
using model::ValueId;
using model::ValueKind;
using pickle::kNoNode;
using pickle::Node;
using pickle::NodeId;
using pickle::NodeKind;
using pickle::Program;

bool is_global(const Node& n, std::string_view module, std::string_view name) {
  return n.kind == NodeKind::Global && n.text == module && n.name() == name;
}

std::string global_text(const Node& n) { return n.text + "." + n.name(); }

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = s[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += len;
  }
  return true;
}

// Overflow-checked a*b and a+b for sizes that come from the input.
bool mul_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }
bool add_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_add_overflow(a, b, &out); }

// NodeId -> TensorId: open addressing in one array of 8-byte slots, at most half full. A
// checkpoint has one entry a tensor; a std::unordered_map cost an allocation and about 40 bytes
// each (issue 14).
class IdMap {
 public:
  std::optional<uint32_t> find(uint32_t key) const {
    if (slots_.empty()) return std::nullopt;
    const size_t mask = slots_.size() - 1;
    for (size_t s = home(key, mask);; s = (s + 1) & mask) {
      if (slots_[s] == kEmpty) return std::nullopt;
      if (static_cast<uint32_t>(slots_[s] >> 32) == key) return static_cast<uint32_t>(slots_[s]);
    }
  }
  void set(uint32_t key, uint32_t value) {  // key: never 0xFFFFFFFF (kNoNode)
    if ((used_ + 1) * 2 > slots_.size()) grow();
    const size_t mask = slots_.size() - 1;
    for (size_t s = home(key, mask);; s = (s + 1) & mask) {
      if (slots_[s] == kEmpty) ++used_;
      if (slots_[s] == kEmpty || static_cast<uint32_t>(slots_[s] >> 32) == key) {
        slots_[s] = (uint64_t{key} << 32) | value;
        return;
      }
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static size_t home(uint32_t key, size_t mask) { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 32) & mask; }
  void grow() {
    std::vector<uint64_t> old = std::move(slots_);
    slots_.assign(std::max<size_t>(16, old.size() * 2), kEmpty);
    used_ = 0;
    for (uint64_t k : old)
      if (k != kEmpty) set(static_cast<uint32_t>(k >> 32), static_cast<uint32_t>(k));
  }
  std::vector<uint64_t> slots_;
  size_t used_ = 0;
};

// A consuming lift's plan (issue 14): which pages of the program (its node array and its arena
// chunks) each entry of the root mapping is the last to read, so that they go back to the
// kernel while the Model grows, instead of the whole Program and the whole Model being resident
// together at the end of the lift (a state dict of 160k tensors: about 84 MB of program).
//
// The lifter reads a node only by following a reference (items, entries, appended, BUILD
// states) from a node it reads, starting at the root. So, walking the graph from the root's
// entries in reverse order, the first entry that reaches a node is the last one to read it; the
// root itself and what it reaches other than through its entries (the OrderedDict callee,
// `_metadata`) are read to the end. A page is released once every node on it, and every node
// pointing into it, has its last reader behind the lift. Nodes no path reaches are never read.
class ReleasePlan {
 public:
  // Only for a root mapping with many entries: below that the whole program is small.
  static constexpr size_t kMinEntries = 1024;

  void build(const Program& p) {
    const Node& root = p.nodes[p.root];
    const auto& entries = root.entries();
    if (entries.size() < kMinEntries || entries.size() >= kKeep) return;
    std::vector<uint32_t> last(p.nodes.size(), kUnread);
    std::vector<NodeId> stack;
    auto visit = [&](NodeId start, uint32_t label) {
      if (start >= p.nodes.size() || last[start] != kUnread) return;
      last[start] = label;
      stack.push_back(start);
      auto reach = [&](NodeId c) {
        if (c < p.nodes.size() && last[c] == kUnread) {
          last[c] = label;
          stack.push_back(c);
        }
      };
      while (!stack.empty()) {
        const Node& n = p.nodes[stack.back()];
        stack.pop_back();
        for (NodeId c : n.items) reach(c);
        for (auto [a, b] : n.entries()) {
          reach(a);
          reach(b);
        }
        for (NodeId c : n.appended()) reach(c);
        for (NodeId c : n.build_states()) reach(c);
      }
    };
    // The root and what it reaches outside its entries: read to the end.
    last[p.root] = kKeep;
    for (NodeId c : root.items) visit(c, kKeep);
    for (NodeId c : root.appended()) visit(c, kKeep);
    for (NodeId c : root.build_states()) visit(c, kKeep);
    for (size_t k = entries.size(); k-- > 0;) {
      visit(entries[k].second, static_cast<uint32_t>(k));
      visit(entries[k].first, static_cast<uint32_t>(k));
    }
    // Pages of the node array, then of each arena chunk (sorted by address, to find the chunk
    // of a block), each with the latest reader of anything on it.
    add_region(p.nodes.data(), p.nodes.size() * sizeof(Node));
    std::vector<std::pair<uintptr_t, size_t>> chunks;
    p.arena->for_each_chunk([&](const void* c, size_t bytes) { chunks.emplace_back(reinterpret_cast<uintptr_t>(c), bytes); });
    std::sort(chunks.begin(), chunks.end());
    std::vector<size_t> chunk_region(chunks.size());
    for (size_t c = 0; c < chunks.size(); ++c) {
      chunk_region[c] = regions_.size();
      add_region(reinterpret_cast<const void*>(chunks[c].first), chunks[c].second);
    }
    size_t hint = 0;  // blocks come mostly in address order
    auto region_of = [&](uintptr_t a) -> const Region* {
      if (hint >= chunks.size() || a < chunks[hint].first || a >= chunks[hint].first + chunks[hint].second) {
        auto it = std::upper_bound(chunks.begin(), chunks.end(), std::make_pair(a, SIZE_MAX));
        if (it == chunks.begin()) return nullptr;
        hint = static_cast<size_t>(it - chunks.begin()) - 1;
        if (a >= chunks[hint].first + chunks[hint].second) return nullptr;
      }
      return &regions_[chunk_region[hint]];
    };
    for (size_t i = 0; i < p.nodes.size(); ++i) {
      if (last[i] == kUnread) continue;
      const uintptr_t at = reinterpret_cast<uintptr_t>(&p.nodes[i]);
      mark(regions_[0], at, at + sizeof(Node), last[i]);
      p.nodes[i].for_each_block([&](const void* b, size_t bytes) {
        const uintptr_t lo = reinterpret_cast<uintptr_t>(b);
        if (const Region* r = region_of(lo)) mark(*r, lo, lo + bytes, last[i]);
      });
    }
    // Pages in the order they can go.
    for (const Region& r : regions_)
      for (size_t k = 0; k < r.pages; ++k)
        if (pages_[r.first_page + k].last != kKeep) order_.push_back(r.first_page + k);
    std::stable_sort(order_.begin(), order_.end(), [&](size_t a, size_t b) { return pages_[a].last + 1 < pages_[b].last + 1; });
    active_ = true;
  }

  bool active() const { return active_; }

  // Entry `k` of the root mapping is lifted (or dropped): return what only it and earlier
  // entries read.
  void entry_done(size_t k) {
    if (!active_) return;
    while (next_ < order_.size() && (pages_[order_[next_]].last == kUnread || pages_[order_[next_]].last <= k))
      pending_.push_back(pages_[order_[next_++]].start);
    // In batches of whole runs: one call per run rather than one a page, and whole huge pages
    // of the node array (io/huge_pages.hpp) where the runs cover them.
    if (pending_.size() * page_ < kBatch) return;
    std::sort(pending_.begin(), pending_.end());
    for (size_t a = 0; a < pending_.size();) {
      size_t b = a + 1;
      while (b < pending_.size() && pending_[b] == pending_[b - 1] + page_) ++b;
      (void)::madvise(reinterpret_cast<void*>(pending_[a]), (b - a) * page_, MADV_DONTNEED);
      a = b;
    }
    pending_.clear();
  }

 private:
  static constexpr uint32_t kUnread = 0xFFFFFFFFu;  // no path reaches it (sorts first: +1 wraps to 0)
  static constexpr uint32_t kKeep = 0xFFFFFFFEu;    // read to the end
  static constexpr size_t kBatch = 2u << 20;  // bytes released at a time
  const size_t page_ = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  struct Page {
    uintptr_t start;
    uint32_t last = kUnread;
  };
  struct Region {
    uintptr_t begin;    // of the first whole page
    size_t first_page;  // index into pages_
    size_t pages;
  };

  // The whole page_-aligned pages inside [data, data + bytes): the partial ones at the edges are
  // never released (they may hold the allocator's bookkeeping or a neighbour's bytes).
  void add_region(const void* data, size_t bytes) {
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(data) + page_ - 1) & ~(page_ - 1);
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(page_ - 1);
    Region r{lo, pages_.size(), hi > lo ? (hi - lo) / page_ : 0};
    for (size_t k = 0; k < r.pages; ++k) pages_.push_back(Page{lo + k * page_});
    regions_.push_back(r);
  }
  // Bytes [lo, hi) are read until entry `label` is lifted.
  void mark(const Region& r, uintptr_t lo, uintptr_t hi, uint32_t label) {
    if (r.pages == 0 || hi <= r.begin || lo >= r.begin + r.pages * page_) return;
    const size_t first = lo <= r.begin ? 0 : (lo - r.begin) / page_;
    const size_t end = std::min(r.pages, (hi - r.begin + page_ - 1) / page_);
    for (size_t k = first; k < end; ++k) {
      uint32_t& l = pages_[r.first_page + k].last;
      if (l == kUnread || (label != kUnread && label > l)) l = label;
    }
  }

  std::vector<Page> pages_;
  std::vector<Region> regions_;
  std::vector<size_t> order_;
  std::vector<uintptr_t> pending_;  // released pages not yet handed back
  size_t next_ = 0;
  bool active_ = false;
};

class Lifter {
 public:
  Lifter(const Program& p, const StorageTable& t, const LiftOptions& o) : p_(p), table_(t), opt_(o) {}
  // The program is used up by this lift (lift_consuming): its pages go back as the root
  // mapping's entries are lifted (ReleasePlan).
  void consume_program() { release_.build(p_); }

  Result<Model> run(StorageBinding* binding) {
    if (p_.root == kNoNode) return err(0, Rule::cdr_no_root, "pickle has no root value");
    // About one value per node: reserving avoids the vector's doubling, whose copy briefly holds
    // the old and the new array (up to 3x the values) on pickles of millions of objects.
    m_.values.reserve(p_.nodes.size() + 64);
    io::advise_huge_pages(m_.values.data(), m_.values.capacity() * sizeof(Value));
    done_.assign(p_.nodes.size(), model::kNoValue);
    // At most one storage a record, and usually one tensor a storage: no doubling copies (and
    // first touches of their pages) for checkpoints of many small tensors. Address space only
    // until used.
    m_.storages.reserve(table_.size());
    m_.tensors.reserve(table_.size());
    MCDR_ASSIGN(m_.root, lift(p_.root, 0));
    if (binding) {
      binding->assign(m_.storages.size(), kNoRecord);
      for (size_t record = 0; record < storage_of_record_.size(); ++record)
        if (storage_of_record_[record] != kNoStorage) (*binding)[storage_of_record_[record]] = static_cast<uint32_t>(record);
    }
    return std::move(m_);
  }

 private:
  // ---- small helpers -------------------------------------------------------------------
  const Node& at(NodeId id) const { return p_.nodes[id]; }

  Error err(uint64_t offset, Rule rule, std::string message) const {
    return make_error(std::move(rule), std::move(message), offset, opt_.entry);
  }

  void note(Severity s, Rule rule, std::string message, uint64_t offset) {
    add_finding(m_.findings, s, std::move(rule), std::move(message), opt_.entry, offset);
  }

  ValueId dropped(const Node& n, std::string what, std::string why, Severity s = Severity::high) {
    note(s, Rule::cdr_dropped, what + " removed: " + why, n.offset);
    Value v;
    v.kind = ValueKind::dropped;
    return m_.add(std::move(v));
  }

  ValueId scalar(ValueKind k) {
    leaf(k);
    return last_id();
  }

  // Scalars are made in place in the arena, not as a temporary Value moved twice into it: a
  // list of 61 000 floats (benign/modelaudit/safe_large_model.pkl) spent a third of its lift
  // in those moves. The arena is reserved for every node up front (the constructor).
  Value& leaf(ValueKind k) {
    Value& v = m_.values.emplace_back();
    v.kind = k;
    return v;
  }
  ValueId last_id() const { return static_cast<ValueId>(m_.values.size() - 1); }

  // The items of a Tuple node (the argument tuple of a call), or nothing.
  pickle::MaybeIds tuple_items(NodeId id) const {
    if (id == kNoNode) return std::nullopt;
    const Node& n = at(id);
    if (n.kind != NodeKind::Tuple) return std::nullopt;
    return pickle::Ids(n.items);
  }

  // An (key, value) item of a mapping constructor: a 2-tuple, or a 2-element list, as Python 2's
  // OrderedDict.__reduce__ wrote them (CPython accepts any pair).
  pickle::MaybeIds pair_items(NodeId id) const {
    const Node& n = at(id);
    if (n.kind != NodeKind::Tuple && n.kind != NodeKind::List) return std::nullopt;
    if (n.items.size() != 2) return std::nullopt;
    return pickle::Ids(n.items);
  }

  std::optional<int64_t> as_int(NodeId id) const {
    const Node& n = at(id);
    if (n.kind == NodeKind::Int) return n.i;
    if (n.kind == NodeKind::Bool) return n.b ? 1 : 0;
    return std::nullopt;
  }

  std::optional<std::string> as_text(NodeId id) const {
    const Node& n = at(id);
    if (n.kind == NodeKind::Str || n.kind == NodeKind::Py2Str || n.kind == NodeKind::Bytes) return n.text;
    return std::nullopt;
  }

  std::optional<double> as_number(NodeId id) const {
    const Node& n = at(id);
    if (n.kind == NodeKind::Float) return n.f;
    if (n.kind == NodeKind::Int) return static_cast<double>(n.i);
    return std::nullopt;
  }

  // Value of key `key` in a Dict node (entries), or kNoNode. The last SETITEM of a key wins,
  // as in CPython's unpickler.
  NodeId dict_get(const Node& d, std::string_view key) const {
    NodeId found = kNoNode;
    for (auto [k, v] : d.entries()) {
      const Node& kn = at(k);
      if ((kn.kind == NodeKind::Str || kn.kind == NodeKind::Py2Str) && kn.text == key) found = v;
    }
    return found;
  }

  bool is_empty_ordered_dict_call(NodeId id) const {
    const Node& n = at(id);
    if (n.kind != NodeKind::Call || !is_global(at(n.items[0]), "collections", "OrderedDict")) return false;
    auto args = tuple_items(n.items[1]);
    return args && args->empty() && n.entries().empty() && n.build_states().empty();
  }

  // ---- the walk ------------------------------------------------------------------------
  Result<ValueId> lift(NodeId id, uint32_t depth) {
    if (depth > opt_.max_depth) return too_deep(id);
    if (const ValueId seen = done_[id]; seen != model::kNoValue && seen != kInProgress) {
      // A value lifted once keeps its height wherever it is referenced again: the bound is on
      // depth + height, or chains of cached values (lifted shallow, e.g. as dropped dict keys,
      // then nested through the cache) would reach any depth.
      if (depth + height(seen, 0) > opt_.max_depth + 1) return too_deep(id);
      return seen;
    }
    if (done_[id] == kInProgress) return dropped(at(id), "reference cycle", "cycles are not plain data");
    done_[id] = kInProgress;
    auto r = lift_uncached(id, depth);
    done_[id] = r.ok() ? *r : model::kNoValue;
    return r;
  }

  bool is_dense(TensorId t) const { return m_.tensors[t].kind == TensorKind::dense; }

  Error too_deep(NodeId id) const {
    return err(at(id).offset, Rule::limits_depth, "values nested deeper than " + std::to_string(opt_.max_depth) + " levels");
  }

  // Nesting height of a lifted value (1 for a leaf), memoised: linear over a DAG. Values the
  // lifter returns are at most max_depth high (every cache hit is checked), so the recursion
  // is bounded; `guard` stops it regardless.
  uint32_t height(ValueId id, uint32_t guard) {
    if (id == model::kNoValue) return 0;
    if (id < heights_.size() && heights_[id] != 0) return heights_[id];
    if (guard > opt_.max_depth + 1) return guard;
    const Value& v = m_.values[id];
    uint32_t h = 0;
    auto child = [&](ValueId c) { h = std::max(h, height(c, guard + 1)); };
    for (ValueId c : v.items) child(c);
    for (auto [k, x] : v.entries) {
      child(k);
      child(x);
    }
    if (v.metadata != model::kNoValue) child(v.metadata);
    if (v.state != model::kNoValue) child(v.state);
    if (heights_.size() <= id) heights_.resize(m_.values.size(), 0);
    heights_[id] = h + 1;
    return h + 1;
  }

  Result<ValueId> lift_uncached(NodeId id, uint32_t depth) {
    const Node& n = at(id);
    if (n.kind != NodeKind::List && n.kind != NodeKind::Set && !n.appended().empty())
      note(Severity::high, Rule::cdr_dropped, "APPEND on a non-list object removed", n.offset);
    if (n.kind != NodeKind::Dict && n.kind != NodeKind::Call && !n.entries().empty())
      note(Severity::high, Rule::cdr_dropped, "SETITEM on a non-dict object removed", n.offset);
    switch (n.kind) {
      case NodeKind::None: return scalar(ValueKind::none);
      case NodeKind::Bool: {
        Value v;
        v.kind = ValueKind::boolean;
        v.b = n.b;
        return m_.add(std::move(v));
      }
      case NodeKind::Int: return integer(n.i);
      case NodeKind::BigInt: {
        Value v;
        v.kind = ValueKind::big_integer;
        v.text = n.text;
        if (v.text.size() > 255) return dropped(n, "integer", "larger than 2040 bits");
        return m_.add(std::move(v));
      }
      case NodeKind::Float: return floating(n.f);
      case NodeKind::Str: return text_value(n, ValueKind::string, n.text);
      case NodeKind::Py2Str:
        // torch.load decodes protocol-2 strings as UTF-8; anything else would not load.
        if (valid_utf8(n.text)) return text_value(n, ValueKind::string, n.text);
        note(Severity::info, Rule::cdr_converted, "non-UTF-8 Python 2 string kept as bytes", n.offset);
        return text_value(n, ValueKind::bytes, n.text);
      case NodeKind::Bytes:
      case NodeKind::ByteArray: return text_value(n, ValueKind::bytes, n.text);
      case NodeKind::List: return sequence(n, ValueKind::list, n.items, depth);
      case NodeKind::Tuple: return sequence(n, ValueKind::tuple, n.items, depth);
      case NodeKind::Set:
      case NodeKind::FrozenSet: return sequence(n, ValueKind::set, n.items, depth);
      case NodeKind::Dict: return dict(n, ValueKind::dict, depth);
      case NodeKind::Global: return bare_global(n);
      case NodeKind::Call: return call(id, depth);
      case NodeKind::NewObj: return new_object(id, depth);
      case NodeKind::Inst:
        return dropped(n, "object of class " + (n.items.empty() ? std::string("?") : global_text(at(n.items[0]))),
                       "INST/OBJ instances are not plain data", Severity::critical);
      case NodeKind::PersId:
        if (opt_.tar_tensors) return tar_tensor(id);
        return dropped(n, "persistent id", "outside a tensor");
      case NodeKind::Ext: return dropped(n, "extension-registry reference", "EXT opcodes are never plain data", Severity::critical);
      case NodeKind::Buffer: return dropped(n, "out-of-band buffer", "no buffers travel with a file", Severity::high);
    }
    return dropped(n, "value", "unknown node");
  }

  ValueId integer(int64_t i) {
    leaf(ValueKind::integer).i = i;
    return last_id();
  }

  ValueId floating(double f) {
    leaf(ValueKind::floating).f = f;
    return last_id();
  }

  ValueId text_value(const Node& n, ValueKind k, const std::string& s) {
    if (looks_like_embedded_pickle(s)) {
      if (k == ValueKind::bytes)
        if (auto rebuilt = nested_pickle(n, s)) return m_.add(Value{.kind = ValueKind::bytes, .text = std::move(*rebuilt)});
      return dropped(n, k == ValueKind::string ? "string" : "bytes",
                     "it holds a serialized pickle that could not be rebuilt (a dormant payload)", Severity::high);
    }
    Value v;
    v.kind = k;
    v.text = s;
    return m_.add(std::move(v));
  }

  // Bytes holding a pickle: disarmed and rebuilt by our writer (cdr/nested_pickle.hpp).
  std::optional<std::string> nested_pickle(const Node& n, const std::string& s) {
    NestedPickleOptions o;
    o.entry = opt_.entry;
    o.offset = n.offset;
    o.max_depth = opt_.max_depth;
    o.registry = opt_.registry;
    return rebuild_nested_pickle(s, o, m_.findings);
  }

  Result<ValueId> sequence(const Node& n, ValueKind k, pickle::Ids items, uint32_t depth) {
    Value v;
    v.kind = k;
    v.items.reserve(items.size() + n.appended().size());
    for (NodeId c : items) {
      ValueId cv;
      if (k == ValueKind::list && opt_.scan_only && plain_float(c, depth + 1)) {
        cv = shared_float(at(c).f);
      } else {
        MCDR_ASSIGN(cv, lift(c, depth + 1));
      }
      v.items.push_back(cv);
    }
    if (k == ValueKind::set)
      for (NodeId c : n.appended()) {
        MCDR_ASSIGN(ValueId cv, lift(c, depth + 1));
        v.items.push_back(cv);
      }
    if (!n.build_states().empty()) note(Severity::high, Rule::cdr_dropped, "BUILD state on a container removed", n.offset);
    return m_.add(std::move(v));
  }

  // A float node whose lift would be exactly floating(n.f): within the depth bound, not lifted
  // before, nothing appended or set on it (those add findings), no BUILD state.
  bool plain_float(NodeId c, uint32_t depth) const {
    const Node& n = at(c);
    return n.kind == NodeKind::Float && depth <= opt_.max_depth && done_[c] == model::kNoValue && n.appended().empty() &&
           n.entries().empty() && n.build_states().empty();
  }
  ValueId shared_float(double f) {  // LiftOptions::scan_only
    if (shared_float_ == model::kNoValue) shared_float_ = floating(f);
    return shared_float_;
  }

  // Memoised per value: a key tuple may share sub-tuples (a DAG), which a plain walk would
  // visit once per path.
  bool is_hashable_key(ValueId id) {
    if (id < hashable_.size() && hashable_[id] != 0) return hashable_[id] == 1;
    bool r = is_hashable_key_uncached(id);
    if (hashable_.size() <= id) hashable_.resize(m_.values.size(), 0);
    hashable_[id] = r ? 1 : 2;
    return r;
  }

  bool is_hashable_key_uncached(ValueId id) {
    const Value& v = m_.values[id];
    switch (v.kind) {
      case ValueKind::none:
      case ValueKind::boolean:
      case ValueKind::integer:
      case ValueKind::big_integer:
      case ValueKind::floating:
      case ValueKind::complex:
      case ValueKind::string:
      case ValueKind::bytes: return true;
      case ValueKind::tuple:
        for (auto c : v.items)
          if (!is_hashable_key(c)) return false;
        return true;
      default: return false;
    }
  }

  Result<ValueId> dict(const Node& n, ValueKind k, uint32_t depth) {
    Value v;
    v.kind = k;
    MCDR_TRY(add_entries(n, v, depth));
    MCDR_TRY(merge_equal_keys(v, n.offset));
    if (!n.build_states().empty()) note(Severity::high, Rule::cdr_dropped, "BUILD state on a dict removed", n.offset);
    return m_.add(std::move(v));
  }

  // Python's equality of plain dict keys as a byte string: two keys are equal exactly when
  // their forms are. 1 == 1.0 == True == (1+0j) share one form; str and bytes never equal.
  // nullopt when equality cannot be decided without Python: NaN (unequal to itself, yet equal
  // by identity when the memo shares it) and integral floats beyond int64 (equal to big ints).
  std::optional<std::string> key_form(ValueId id) const {
    const Value& v = m_.values[id];
    auto sized = [](char tag, const std::string& t) { return tag + std::to_string(t.size()) + ":" + t; };
    switch (v.kind) {
      case ValueKind::none: return std::string("N");
      case ValueKind::boolean: return std::string(v.b ? "I1;" : "I0;");
      case ValueKind::integer: return "I" + std::to_string(v.i) + ";";
      case ValueKind::big_integer: return sized('B', v.text);  // normalized, never fits int64
      case ValueKind::floating: return float_form(v.f);
      case ValueKind::complex:
        if (std::isnan(v.imag)) return std::nullopt;
        if (v.imag == 0) return float_form(v.f);
        if (auto re = float_form(v.f)) {
          std::string out = "C" + *re;  // a non-zero imaginary part equals only itself
          out.append(reinterpret_cast<const char*>(&v.imag), sizeof v.imag);
          return out;
        }
        return std::nullopt;
      case ValueKind::string: return sized('S', v.text);
      case ValueKind::bytes: return sized('Y', v.text);
      case ValueKind::tuple: {
        std::string out = "T" + std::to_string(v.items.size()) + "(";
        for (ValueId c : v.items) {
          auto f = key_form(c);
          if (!f) return std::nullopt;
          out += *f;
        }
        return out + ")";
      }
      default: return std::nullopt;
    }
  }

  static std::optional<std::string> float_form(double f) {
    if (std::isnan(f)) return std::nullopt;
    if (std::isfinite(f) && std::trunc(f) == f) {
      if (std::fabs(f) >= 9223372036854775808.0) return std::nullopt;
      return "I" + std::to_string(static_cast<int64_t>(f)) + ";";  // -0.0 == 0 too
    }
    std::string out = "F";
    out.append(reinterpret_cast<const char*>(&f), sizeof f);
    return out;
  }

  // SETITEM(S) on a key equal to one already in the dict replaces its value in place, as
  // CPython's unpickler (and so torch.load) does: the first key and its position stay, the
  // last value wins. Done on every finished dict, so every writer sees what torch.load sees.
  Status merge_equal_keys(Value& v, uint64_t offset) {
    if (v.entries.size() < 2) return ok_status();
    // First a sorted vector of hashes (8 bytes a key): a state dict of a million names has
    // no equal keys, and then no copy of the forms is kept.
    std::vector<uint64_t> hashes;
    hashes.reserve(v.entries.size());
    for (auto [k, val] : v.entries) {
      auto form = key_form(k);
      if (!form)
        return err(offset, Rule::cdr_ambiguous_key,
                   "a dict key is NaN or an integral float beyond 64 bits: which keys are equal depends on object identity");
      hashes.push_back(std::hash<std::string>{}(*form));
    }
    std::sort(hashes.begin(), hashes.end());
    if (std::adjacent_find(hashes.begin(), hashes.end()) == hashes.end()) return ok_status();
    std::unordered_map<std::string, size_t> seen;
    seen.reserve(v.entries.size());
    std::vector<std::pair<ValueId, ValueId>> merged;
    merged.reserve(v.entries.size());
    for (auto [k, val] : v.entries) {
      auto [it, fresh] = seen.emplace(*key_form(k), merged.size());
      if (fresh) {
        merged.emplace_back(k, val);
        continue;
      }
      merged[it->second].second = val;
      note(Severity::medium, Rule::cdr_duplicate_key,
           "dict key " + key_text(k) + " is set more than once: the last value is kept, as pickle does (earlier ones removed)",
           offset);
    }
    v.entries = std::move(merged);
    return ok_status();
  }

  std::string key_text(ValueId k) const {
    const Value& v = m_.values[k];
    if (v.kind == ValueKind::string || v.kind == ValueKind::bytes) return "'" + v.text.substr(0, 100) + "'";
    if (v.kind == ValueKind::integer) return std::to_string(v.i);
    if (v.kind == ValueKind::boolean) return v.b ? "True" : "False";
    if (v.kind == ValueKind::floating) return std::to_string(v.f);
    if (v.kind == ValueKind::tuple) return "(a tuple of " + std::to_string(v.items.size()) + ")";
    return "(None or a number)";
  }

  Status add_entries(const Node& n, Value& v, uint32_t depth) {
    v.entries.reserve(n.entries().size());
    // The root mapping of a consumed program: after each entry, the pages only it still read go.
    const bool releasing = release_.active() && &n == &at(p_.root);
    const auto& entries = n.entries();
    for (size_t j = 0; j < entries.size(); ++j) {
      MCDR_TRY(add_entry(entries[j].first, entries[j].second, v, depth));
      if (releasing) release_.entry_done(j);
    }
    return ok_status();
  }

  Status add_entry(NodeId kn, NodeId vn, Value& v, uint32_t depth) {
    ValueId kv;
    if (at(kn).kind == NodeKind::Global) {
      kv = class_key(at(kn));
    } else {
      MCDR_ASSIGN(kv, lift(kn, depth + 1));
    }
    if (!is_hashable_key(kv)) {
      note(Severity::high, Rule::cdr_dropped, "dict entry with a non-plain key removed", at(kn).offset);
      return ok_status();
    }
    MCDR_ASSIGN(ValueId vv, lift(vn, depth + 1));
    v.entries.emplace_back(kv, vv);
    return ok_status();
  }

  // A dict keyed by a class (Lightning < 1.5 keys callback state by the callback's type): the
  // key becomes the class's dotted name as a string, so each entry keeps its own key. Nothing
  // is imported; the name is only text.
  ValueId class_key(const Node& n) {
    note(Severity::low, Rule::cdr_converted, "dict key " + global_text(n) + " (a class) written as the string '" +
         global_text(n) + "'", n.offset);
    Value v;
    v.kind = ValueKind::string;
    v.text = global_text(n);
    return m_.add(std::move(v));
  }

  // Modules whose newObj(cls) helper only calls cls.__new__(cls) (scikit-learn's Cython sources).
  static bool is_newobj_helper(std::string_view mod) {
    return mod == "sklearn.neighbors._kd_tree" || mod == "sklearn.neighbors._ball_tree" ||
           mod == "sklearn.metrics._dist_metrics" || mod == "sklearn.neighbors.kd_tree" ||
           mod == "sklearn.neighbors.ball_tree" || mod == "sklearn.neighbors.dist_metrics";
  }

  ValueId bare_global(const Node& n) {
    if (opt_.registry)
      if (auto cid = opt_.registry->find(n.text, n.name()); cid && opt_.registry->at(*cid).construct == Construct::type_ref) {
        Value v;  // the class object itself (numpy.float64 as a `dtype` hyper-parameter)
        v.kind = ValueKind::object;
        v.class_id = *cid;
        return m_.add(std::move(v));
      }
    if (is_torch_dtype(n.text, n.name())) {
      note(Severity::low, Rule::cdr_converted, "dtype object torch." + n.name() + " written as the string 'torch." + n.name() + "'",
           n.offset);
      Value v;
      v.kind = ValueKind::string;
      v.text = "torch." + n.name();
      return m_.add(std::move(v));
    }
    return dropped(n, "reference to " + global_text(n), "globals are not plain data",
                   is_known_global(n.text, n.name()) ? Severity::medium : unknown_global_severity(n.text, n.name()));
  }

  // ---- calls (REDUCE) --------------------------------------------------------------------
  static bool bit_generator_name(const Node& a) {
    return a.kind == NodeKind::Str &&
           (a.text == "MT19937" || a.text == "PCG64" || a.text == "PCG64DXSM" || a.text == "Philox" || a.text == "SFC64");
  }

  // Registry helpers whose arguments are themselves callables or classes: numpy's
  // __randomstate_ctor(name, ctor) calls its second argument and __bit_generator_ctor(cls)
  // instantiates any class it is given, so only the exact shapes numpy writes are accepted.
  const char* reduce_args_problem(std::string_view mod, std::string_view name, pickle::Ids args) const {
    if (mod == "numpy.random._pickle" && name == "__bit_generator_ctor") {
      if (args.size() != 1) return "it does not take exactly one argument";
      const Node& a = at(args[0]);
      if (bit_generator_name(a) || is_global(a, "numpy.random._mt19937", "MT19937") ||
          is_global(a, "numpy.random._pcg64", "PCG64") || is_global(a, "numpy.random._pcg64", "PCG64DXSM") ||
          is_global(a, "numpy.random._philox", "Philox") || is_global(a, "numpy.random._sfc64", "SFC64"))
        return nullptr;
      return "its argument is not a known bit generator name or class";
    }
    if (mod == "numpy.random._pickle" && (name == "__randomstate_ctor" || name == "__generator_ctor")) {
      if (args.size() == 1 && (bit_generator_name(at(args[0])) ||
                               (at(args[0]).kind == NodeKind::Call &&
                                is_global(at(at(args[0]).items[0]), "numpy.random._pickle", "__bit_generator_ctor"))))
        return nullptr;
      return "its argument is not a bit generator or its name (a constructor argument is never kept)";
    }
    if (name.starts_with("__pyx_unpickle_")) {
      // Cython's helper(cls, checksum, state): cls must be the helper's own class
      if (args.size() == 3 && is_global(at(args[0]), mod, name.substr(15)) && at(args[1]).kind == NodeKind::Int &&
          (at(args[2]).kind == NodeKind::Tuple || at(args[2]).kind == NodeKind::None))
        return nullptr;
      return "its arguments are not (its class, checksum, state)";
    }
    return nullptr;
  }

  Result<ValueId> call(NodeId id, uint32_t depth) {
    const Node& n = at(id);
    const Node& callee = at(n.items[0]);
    NodeId args_id = n.items[1];
    if (callee.kind != NodeKind::Global)
      return dropped(n, "call of a computed callable", "only named, known functions are recognised", Severity::critical);
    const std::string& mod = callee.text;
    const std::string& name = callee.name();
    auto args = tuple_items(args_id);
    if (!args) return dropped(n, "call of " + global_text(callee), "arguments are not a tuple", Severity::high);

    if (mod == "collections" && (name == "OrderedDict" || name == "Counter" || name == "defaultdict"))
      return mapping_call(n, name, *args, depth);
    if (mod == "torch._utils") {
      if (name == "_rebuild_tensor_v2" || name == "_rebuild_tensor" || name == "_rebuild_tensor_v3" ||
          name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state" || name == "_rebuild_qtensor" ||
          name == "_rebuild_sparse_tensor" || name == "_rebuild_sparse_csr_tensor")
        return tensor_call(id, name, *args, depth);
    }
    if (mod == "torch._tensor" && name == "_rebuild_from_type_v2") return rebuild_from_type(n, *args, depth);
    if (mod == "torch" && name == "Size") return size_call(n, *args, depth);
    if (opt_.tar_tensors && mod == "torch.nn.parameter" && name == "Parameter") return tar_parameter(n, *args, depth);
    if (mod == "_codecs" && name == "encode") return codecs_encode(n, *args);
    if (mod == "builtins") return builtin_call(n, name, *args, depth);
    if ((mod == "numpy.core.multiarray" || mod == "numpy._core.multiarray") && name == "scalar")
      return numpy_scalar(n, *args);
    if (mod == "torch" && name == "device") return device_call(n, *args);
    if ((mod == "numpy.core.multiarray" || mod == "numpy._core.multiarray") && name == "_reconstruct")
      return numpy_reconstruct(n, *args, depth);
    if (mod == "numpy" && name == "dtype") return numpy_dtype(n, *args, depth);
    if ((mod == "numpy.core.numeric" || mod == "numpy._core.numeric") && name == "_frombuffer")
      return numpy_frombuffer(n, *args, depth);
    if (opt_.registry && mod == "copyreg" && name == "_reconstructor" && args->size() == 3 &&
        at((*args)[0]).kind == NodeKind::Global && is_global(at((*args)[1]), "builtins", "object") &&
        at((*args)[2]).kind == NodeKind::None) {
      const Node& cls = at((*args)[0]);
      if (auto cid = opt_.registry->find(cls.text, cls.name()); cid && opt_.registry->at(*cid).construct == Construct::newobj)
        return registry_object(n, *cid, std::nullopt, depth);
    }
    if (opt_.registry && name == "newObj" && is_newobj_helper(mod) && args->size() == 1 &&
        at((*args)[0]).kind == NodeKind::Global) {
      // Cython's newObj(cls) = cls.__new__(cls) (sklearn's KDTree/BallTree and distance
      // metrics): the same as NEWOBJ with no arguments, and written as that.
      const Node& cls = at((*args)[0]);
      if (auto cid = opt_.registry->find(cls.text, cls.name()); cid && opt_.registry->at(*cid).construct == Construct::newobj)
        return registry_object(n, *cid, std::nullopt, depth);
    }
    if (opt_.registry)
      if (auto cid = opt_.registry->find(mod, name); cid && opt_.registry->at(*cid).construct == Construct::reduce) {
        if (const char* why = reduce_args_problem(mod, name, *args)) return dropped(n, "call of " + global_text(callee), why);
        return registry_object(n, *cid, args, depth);
      }
    if (mod == "pathlib" && (name == "PosixPath" || name == "WindowsPath" || name == "Path"))
      return path_call(n, *args, name == "WindowsPath" ? '\\' : '/');
    Severity s = is_known_global(mod, name) ? Severity::medium : unknown_global_severity(mod, name);
    return dropped(n, "call of " + global_text(callee), "not a recognised data constructor", s);
  }

  Result<ValueId> mapping_call(const Node& n, const std::string& name, pickle::Ids args,
                               uint32_t depth) {
    Value v;
    v.kind = name == "OrderedDict" ? ValueKind::ordered_dict : ValueKind::dict;
    if (name != "OrderedDict")
      note(Severity::low, Rule::cdr_converted, "collections." + name + " written as a plain dict", n.offset);
    // Constructor argument: a dict (Counter) or a list of pairs (OrderedDict, protocol 0).
    if (name != "defaultdict" && !args.empty()) {
      const Node& a = at(args[0]);
      if (a.kind == NodeKind::Dict) {
        MCDR_TRY(add_entries(a, v, depth));
      } else if (a.kind == NodeKind::List || a.kind == NodeKind::Tuple) {
        for (NodeId pair : a.items) {
          auto kv = pair_items(pair);
          if (!kv) {
            note(Severity::high, Rule::cdr_dropped, "mapping item that is not a pair removed", at(pair).offset);
            continue;
          }
          MCDR_ASSIGN(ValueId k, lift((*kv)[0], depth + 1));
          MCDR_ASSIGN(ValueId val, lift((*kv)[1], depth + 1));
          v.entries.emplace_back(k, val);
        }
      }
    }
    if (name == "defaultdict" && !args.empty() && at(args[0]).kind != NodeKind::None)
      note(Severity::low, Rule::cdr_dropped, "defaultdict default factory removed", n.offset);
    MCDR_TRY(add_entries(n, v, depth));
    for (NodeId s : n.build_states()) MCDR_TRY(apply_dict_state(n, s, v, depth));
    MCDR_TRY(merge_equal_keys(v, n.offset));
    return m_.add(std::move(v));
  }

  // BUILD on an OrderedDict: torch state dicts carry `_metadata` this way (docs/FORMATS.md §2.7).
  Status apply_dict_state(const Node& n, NodeId state_id, Value& v, uint32_t depth) {
    const Node& st = at(state_id);
    if (st.kind != NodeKind::Dict || v.kind != ValueKind::ordered_dict) {
      note(Severity::high, Rule::pickle_build_on_object, "BUILD with a non-dict state removed", st.offset);
      return ok_status();
    }
    for (auto [kn, vn] : st.entries()) {
      const Node& k = at(kn);
      if (k.kind == NodeKind::Str && k.text == "_metadata" &&
          (at(vn).kind == NodeKind::Dict || at(vn).kind == NodeKind::Call)) {
        MCDR_ASSIGN(ValueId mv, lift(vn, depth + 1));
        const auto kind = m_.values[mv].kind;
        if (kind == ValueKind::dict || kind == ValueKind::ordered_dict) {
          v.metadata = mv;
          continue;
        }
      }
      note(Severity::high, Rule::cdr_dropped, "attribute set by BUILD on a dict removed", k.offset);
    }
    return ok_status();
  }

  // torch.Size((ints...)): kept as a Size (its own value, so that the plain tuple it was built
  // from stays a tuple). A Size of anything but ints would not load: it is written as a tuple.
  Result<ValueId> size_call(const Node& n, pickle::Ids args, uint32_t depth) {
    if (args.size() != 1 || at(args[0]).kind != NodeKind::Tuple)
      return dropped(n, "torch.Size", "argument is not a tuple");
    MCDR_ASSIGN(ValueId inner, lift(args[0], depth + 1));
    Value v = m_.values[inner];
    bool ints = v.kind == ValueKind::tuple;
    for (ValueId c : v.items) ints = ints && m_.values[c].kind == ValueKind::integer;
    if (!ints) {
      note(Severity::low, Rule::cdr_converted, "torch.Size of non-integers written as a tuple", n.offset);
      return inner;
    }
    v.torch_type = TorchType::size;
    return m_.add(std::move(v));
  }

  Result<ValueId> codecs_encode(const Node& n, pickle::Ids args) {
    // Protocol 2 spelling of bytes: encode(<text with code points <= 0xFF>, 'latin1').
    if (args.size() != 2 || at(args[0]).kind != NodeKind::Str || !as_text(args[1]) ||
        (*as_text(args[1]) != "latin1" && *as_text(args[1]) != "latin-1"))
      return dropped(n, "call of _codecs.encode", "only encode(str, 'latin1') is plain data");
    MCDR_ASSIGN(std::string raw, latin1_from_utf8(at(args[0])));
    return text_value(n, ValueKind::bytes, raw);
  }

  Result<std::string> latin1_from_utf8(const Node& s) {
    std::string out;
    out.reserve(s.text.size());
    const auto& t = s.text;
    for (size_t i = 0; i < t.size(); ++i) {
      unsigned char c = t[i];
      if (c < 0x80) {
        out.push_back(static_cast<char>(c));
      } else if ((c == 0xC2 || c == 0xC3) && i + 1 < t.size()) {
        out.push_back(static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(t[i + 1]) & 0x3F)));
        ++i;
      } else {
        return err(s.offset, Rule::cdr_bad_latin1, "bytes spelled with a code point above 0xFF");
      }
    }
    return out;
  }

  Result<ValueId> builtin_call(const Node& n, const std::string& name, pickle::Ids args,
                               uint32_t depth) {
    if ((name == "set" || name == "frozenset") && args.size() <= 1) {
      Value v;
      v.kind = ValueKind::set;
      if (!args.empty()) {
        const Node& a = at(args[0]);
        if (a.kind != NodeKind::List && a.kind != NodeKind::Tuple) return dropped(n, "builtins." + name, "argument is not a list");
        for (NodeId c : a.items) {
          MCDR_ASSIGN(ValueId cv, lift(c, depth + 1));
          v.items.push_back(cv);
        }
      }
      if (name == "frozenset") note(Severity::info, Rule::cdr_converted, "frozenset written as a set", n.offset);
      return m_.add(std::move(v));
    }
    if ((name == "bytearray" || name == "bytes") && args.size() <= 1) {
      if (args.empty()) return text_value(n, ValueKind::bytes, "");
      MCDR_ASSIGN(ValueId inner, lift(args[0], depth + 1));
      if (m_.values[inner].kind == ValueKind::bytes) return inner;
      return dropped(n, "builtins." + name, "argument is not bytes");
    }
    if (name == "complex" && args.size() == 2 && as_number(args[0]) && as_number(args[1])) {
      Value v;
      v.kind = ValueKind::complex;
      v.f = *as_number(args[0]);
      v.imag = *as_number(args[1]);
      return m_.add(std::move(v));
    }
    if (name == "slice" && opt_.registry && args.size() == 3 &&
        std::all_of(args.begin(), args.end(), [&](NodeId x) { return as_int(x) || at(x).kind == NodeKind::None; }))
      if (auto cid = opt_.registry->find("builtins", "slice"))  // ColumnTransformer.output_indices_
        return registry_object(n, *cid, args, depth);
    Severity s = is_known_global("builtins", name) ? Severity::medium : unknown_global_severity("builtins", name);
    return dropped(n, "call of builtins." + name, "not a recognised data constructor", s);
  }

  // torch.device(type) / torch.device(type, index): kept as a device when the type is a plain
  // identifier and the index a small int (torch rejects anything else at load), else a string.
  Result<ValueId> device_call(const Node& n, pickle::Ids args) {
    if (args.empty() || args.size() > 2 || !as_text(args[0])) return dropped(n, "torch.device", "unexpected arguments");
    std::string s = *as_text(args[0]);
    auto index = args.size() == 2 ? as_int(args[1]) : std::nullopt;
    if (args.size() == 2 && !index && at(args[1]).kind != NodeKind::None)
      return dropped(n, "torch.device", "the index is not an integer");
    if (index) s += ":" + std::to_string(*index);
    Value v;
    v.kind = ValueKind::string;
    v.text = s;
    if (plain_device_text(s)) {
      v.torch_type = TorchType::device;
    } else {
      note(Severity::low, Rule::cdr_converted, "torch.device written as the string '" + s + "'", n.offset);
    }
    return m_.add(std::move(v));
  }

  // "cpu", "cuda:0", "privateuseone:3": lower-case letters/digits/underscores, an optional
  // ":<index>" of at most 6 digits.
  static bool plain_device_text(const std::string& s) {
    size_t colon = s.find(':');
    std::string type = s.substr(0, colon);
    if (type.empty() || type.size() > 32 || !std::islower(static_cast<unsigned char>(type[0]))) return false;
    for (unsigned char c : type)
      if (!std::islower(c) && !std::isdigit(c) && c != '_') return false;
    if (colon == std::string::npos) return true;
    std::string idx = s.substr(colon + 1);
    if (idx.empty() || idx.size() > 6) return false;
    for (unsigned char c : idx)
      if (!std::isdigit(c)) return false;
    return true;
  }

  Result<ValueId> path_call(const Node& n, pickle::Ids args, char sep) {
    std::string s;
    for (NodeId a : args) {
      auto t = as_text(a);
      if (!t) return dropped(n, "path object", "a path part is not a string");
      if (!s.empty() && s.back() != sep) s.push_back(sep);
      s += *t;
    }
    note(Severity::low, Rule::cdr_converted, "path object written as the string '" + s + "'", n.offset);
    Value v;
    v.kind = ValueKind::string;
    v.text = s;
    return m_.add(std::move(v));
  }

  // numpy scalar(dtype, raw bytes): e.g. best_acc saved as np.float64. Becomes the equal
  // Python number (reported). The dtype is numpy.dtype('<code>', False, True) + BUILD state.
  Result<ValueId> numpy_scalar(const Node& n, pickle::Ids args) {
    if (args.size() != 2) return dropped(n, "numpy scalar", "unexpected arguments");
    const Node& dt = at(args[0]);
    std::string raw;
    if (at(args[1]).kind == NodeKind::Call) {
      const Node& enc = at(args[1]);
      const Node& callee = at(enc.items[0]);
      auto eargs = tuple_items(enc.items[1]);
      if (!is_global(callee, "_codecs", "encode") || !eargs || eargs->size() != 2 || at((*eargs)[0]).kind != NodeKind::Str)
        return dropped(n, "numpy scalar", "payload is not bytes");
      MCDR_ASSIGN(raw, latin1_from_utf8(at((*eargs)[0])));
    } else if (auto t = as_text(args[1])) {
      raw = *t;
    } else {
      return dropped(n, "numpy scalar", "payload is not bytes");
    }
    auto code = numpy_dtype_code(dt);
    if (!code) return dropped(n, "numpy scalar", "dtype is not a plain numeric numpy dtype");
    char order = code->first;
    const std::string& c = code->second;
    auto value = numpy_number(c, order, raw);
    if (!value) return dropped(n, "numpy scalar of dtype " + c, "not a numeric scalar of matching size");
    note(Severity::low, Rule::cdr_converted, "numpy scalar of dtype '" + c + "' written as a Python number", n.offset);
    return *value;
  }

  // ('f8' | 'i8' | ..., byte order) from numpy.dtype(code, False, True) with BUILD state.
  std::optional<std::pair<char, std::string>> numpy_dtype_code(const Node& dt) const {
    if (dt.kind != NodeKind::Call || !is_global(at(dt.items[0]), "numpy", "dtype")) return std::nullopt;
    auto a = tuple_items(dt.items[1]);
    if (!a || a->empty() || !as_text((*a)[0])) return std::nullopt;
    char order = '<';
    if (!dt.build_states().empty()) {
      auto st = tuple_items(dt.build_states().back());
      if (st && st->size() >= 2 && as_text((*st)[1]) && as_text((*st)[1])->size() == 1) order = (*as_text((*st)[1]))[0];
    }
    return std::make_pair(order, *as_text((*a)[0]));
  }

  std::optional<ValueId> numpy_number(const std::string& code, char order, const std::string& raw) {
    if (code.size() < 2) return std::nullopt;
    char kind = code[0];
    int size = std::atoi(code.c_str() + 1);
    if (size <= 0 || static_cast<size_t>(size) != raw.size() || size > 8) return std::nullopt;
    uint64_t bits = 0;
    for (int i = 0; i < size; ++i) {
      int idx = order == '>' ? size - 1 - i : i;
      bits |= static_cast<uint64_t>(static_cast<unsigned char>(raw[idx])) << (8 * i);
    }
    if (kind == 'f' && size == 8) {
      double d;
      std::memcpy(&d, &bits, 8);
      return floating(d);
    }
    if (kind == 'f' && size == 4) {
      float f;
      uint32_t b32 = static_cast<uint32_t>(bits);
      std::memcpy(&f, &b32, 4);
      return floating(f);
    }
    if (kind == 'i') {
      int shift = 64 - 8 * size;
      return integer(static_cast<int64_t>(bits << shift) >> shift);
    }
    if (kind == 'u' && (size < 8 || bits <= static_cast<uint64_t>(INT64_MAX))) return integer(static_cast<int64_t>(bits));
    if (kind == 'b' && size == 1) {
      Value v;
      v.kind = ValueKind::boolean;
      v.b = bits != 0;
      return m_.add(std::move(v));
    }
    return std::nullopt;
  }

  // ---- tensors -------------------------------------------------------------------------
  Result<ValueId> tensor_call(NodeId id, const std::string& fn, pickle::Ids args, uint32_t depth) {
    MCDR_ASSIGN(std::optional<TensorId> tid, tensor_from_call(id, fn, args, depth));
    if (!tid) {
      std::string why = unsupported_.empty() ? "its rebuild call has unexpected arguments" : unsupported_;
      unsupported_.clear();
      return dropped(at(id), "tensor", why);
    }
    Value v;
    v.kind = ValueKind::tensor;
    v.tensor = *tid;
    return m_.add(std::move(v));
  }

  // A tensor node (a rebuild call, possibly wrapped) to a TensorId; nullopt = unrecognised.
  Result<std::optional<TensorId>> tensor_of(NodeId id, uint32_t depth) {
    if (auto t = tensor_nodes_.find(id)) return std::optional<TensorId>(*t);
    const Node& n = at(id);
    if (n.kind != NodeKind::Call || at(n.items[0]).kind != NodeKind::Global || !tuple_items(n.items[1]))
      return std::optional<TensorId>();
    const Node& callee = at(n.items[0]);
    if (callee.text != "torch._utils") return std::optional<TensorId>();
    return tensor_from_call(id, callee.name(), *tuple_items(n.items[1]), depth);
  }

  Result<std::optional<TensorId>> tensor_from_call(NodeId id, const std::string& fn, pickle::Ids a,
                                                   uint32_t depth) {
    if (depth > opt_.max_depth) return too_deep(id);
    std::optional<TensorId> result;
    if (fn == "_rebuild_tensor_v2" || fn == "_rebuild_tensor" || fn == "_rebuild_tensor_v3") {
      MCDR_ASSIGN(result, dense_tensor(id, fn, a));
    } else if (fn == "_rebuild_parameter" || fn == "_rebuild_parameter_with_state") {
      MCDR_ASSIGN(result, parameter(id, fn, a, depth));
    } else if (fn == "_rebuild_qtensor") {
      MCDR_ASSIGN(result, quantized_tensor(id, a, depth));
    } else if (fn == "_rebuild_sparse_tensor" || fn == "_rebuild_sparse_csr_tensor") {
      MCDR_ASSIGN(result, sparse_tensor(id, a, depth));
    }
    if (result) tensor_nodes_.set(id, *result);
    return result;
  }

  struct StorageView {
    model::StorageId storage;
    DType dtype;
  };

  // ('storage', <class>, key, location, numel[, view_metadata]) -> a storage, shared by key.
  Result<std::optional<StorageView>> storage_of(NodeId pid_node, std::optional<DType> explicit_dtype) {
    const Node& pn = at(pid_node);
    if (pn.kind != NodeKind::PersId) return std::optional<StorageView>();
    auto t = tuple_items(pn.items[0]);
    if (!t || t->size() < 5 || t->size() > 6 || as_text((*t)[0]) != std::optional<std::string>("storage"))
      return err(pn.offset, Rule::cdr_bad_persistent_id, "persistent id is not ('storage', class, key, location, numel)");
    const Node& cls = at((*t)[1]);
    auto key = as_text((*t)[2]);
    auto location = as_text((*t)[3]);
    auto numel = as_int((*t)[4]);
    if (cls.kind != NodeKind::Global || !key || !location || !numel || *numel < 0)
      return err(pn.offset, Rule::cdr_bad_persistent_id, "persistent id fields have unexpected types");
    if (t->size() == 6 && at((*t)[5]).kind != NodeKind::None)
      return err(pn.offset, Rule::cdr_unsupported, "legacy storage views (view_metadata) are not supported");
    if (key->empty() || key->size() > 64)
      return err(pn.offset, Rule::cdr_bad_persistent_id, "storage key is empty or longer than 64 bytes");
    std::optional<DType> dtype;
    bool untyped = false;
    if ((cls.text == "torch" || cls.text == "torch.cuda") ) dtype = model::dtype_from_storage_class(cls.name());
    if (cls.text == "torch.storage" && (cls.name() == "UntypedStorage" || cls.name() == "TypedStorage")) {
      untyped = true;
      dtype = explicit_dtype ? explicit_dtype : std::optional<DType>(DType::u8);
    }
    if (!dtype)
      return err(pn.offset, Rule::cdr_bad_storage_type, "storage type " + global_text(cls) + " is not a torch storage class");
    uint64_t elsize = model::dtype_info(*dtype).element_size;
    uint64_t nbytes = 0;
    if (untyped) {
      nbytes = static_cast<uint64_t>(*numel);
      if (nbytes % elsize != 0)
        return err(pn.offset, Rule::cdr_bad_storage_size, "untyped storage size is not a multiple of the element size");
    } else if (!mul_ok(static_cast<uint64_t>(*numel), elsize, nbytes)) {
      return err(pn.offset, Rule::cdr_bad_storage_size, "storage size overflows");
    }
    const int64_t record = find_record(*key);
    if (auto shared = lifted_storage(record)) {
      const auto& s = m_.storages[*shared];
      if (s.dtype != *dtype)
        return err(pn.offset, Rule::cdr_storage_dtype_conflict,
                   "storage '" + *key + "' is used as " + model::dtype_info(s.dtype).name + " and as " +
                       model::dtype_info(*dtype).name);
      return std::optional<StorageView>(StorageView{*shared, *dtype});
    }
    if (*location != "cpu")
      note(Severity::info, Rule::cdr_converted, "storage '" + *key + "' location '" + *location + "' written as 'cpu'", pn.offset);
    MCDR_ASSIGN(auto sid, add_storage(*key, record, *dtype, nbytes, pn.offset));
    return std::optional<StorageView>(StorageView{sid, *dtype});
  }

  Result<std::vector<int64_t>> int_tuple(NodeId id, const char* what) {
    const Node& n = at(id);
    pickle::MaybeIds items;
    if (n.kind == NodeKind::Tuple || n.kind == NodeKind::List) items = pickle::Ids(n.items);
    // torch.Size((...)) appears in some writers
    if (n.kind == NodeKind::Call && is_global(at(n.items[0]), "torch", "Size")) {
      auto a = tuple_items(n.items[1]);
      if (a && a->size() == 1 && at((*a)[0]).kind == NodeKind::Tuple) items = pickle::Ids(at((*a)[0]).items);
    }
    if (!items) return err(n.offset, Rule::cdr_bad_tensor, std::string(what) + " is not a tuple of integers");
    if (items->size() > opt_.max_dims)
      return err(n.offset, Rule::cdr_bad_tensor, std::string(what) + " has more than " + std::to_string(opt_.max_dims) + " dimensions");
    std::vector<int64_t> out;
    for (NodeId c : *items) {
      auto v = as_int(c);
      if (!v || *v < 0) return err(n.offset, Rule::cdr_bad_tensor, std::string(what) + " holds a negative or non-integer value");
      out.push_back(*v);
    }
    return out;
  }

  // The view must lie inside its storage: offset + sum((size_i - 1) * stride_i) < numel.
  Status check_view(const Tensor& t, uint64_t offset_of_call) {
    if (t.shape.size() != t.stride.size())
      return err(offset_of_call, Rule::cdr_bad_tensor, "size and stride have different lengths");
    const auto& s = m_.storages[t.storage];
    uint64_t numel = s.nbytes / model::dtype_info(t.dtype).element_size;
    uint64_t elements = 1;
    uint64_t last = static_cast<uint64_t>(t.storage_offset);
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (!mul_ok(elements, static_cast<uint64_t>(t.shape[i]), elements))
        return err(offset_of_call, Rule::cdr_bad_tensor, "tensor size overflows");
    }
    if (elements == 0) {
      if (static_cast<uint64_t>(t.storage_offset) > numel)
        return err(offset_of_call, Rule::cdr_tensor_out_of_bounds, "storage offset beyond the storage");
      return ok_status();
    }
    for (size_t i = 0; i < t.shape.size(); ++i) {
      uint64_t span = 0;
      if (!mul_ok(static_cast<uint64_t>(t.shape[i] - 1), static_cast<uint64_t>(t.stride[i]), span) || !add_ok(last, span, last))
        return err(offset_of_call, Rule::cdr_tensor_out_of_bounds, "tensor view overflows");
    }
    if (last >= numel)
      return err(offset_of_call, Rule::cdr_tensor_out_of_bounds,
                 "tensor view reaches element " + std::to_string(last) + " of a storage of " + std::to_string(numel) +
                     " elements (" + s.source + ")");
    return ok_status();
  }

  Result<std::optional<TensorId>> dense_tensor(NodeId id, const std::string& fn, pickle::Ids a) {
    const Node& n = at(id);
    bool v3 = fn == "_rebuild_tensor_v3";
    size_t min_args = fn == "_rebuild_tensor" ? 4 : v3 ? 7 : 6;
    size_t max_args = fn == "_rebuild_tensor" ? 4 : v3 ? 8 : 7;
    if (a.size() < min_args || a.size() > max_args)
      return err(n.offset, Rule::cdr_bad_tensor, fn + " called with " + std::to_string(a.size()) + " arguments");
    std::optional<DType> explicit_dtype;
    if (v3) {
      const Node& d = at(a[6]);
      if (d.kind != NodeKind::Global || !is_torch_dtype(d.text, d.name()))
        return err(n.offset, Rule::cdr_bad_tensor, "_rebuild_tensor_v3 dtype is not a torch dtype");
      explicit_dtype = model::dtype_from_name(d.name());
    }
    MCDR_ASSIGN(std::optional<StorageView> sv, storage_of(a[0], explicit_dtype));
    if (!sv) return std::optional<TensorId>();
    Tensor t;
    t.dtype = sv->dtype;
    t.storage = sv->storage;
    auto off = as_int(a[1]);
    if (!off || *off < 0) return err(n.offset, Rule::cdr_bad_tensor, "storage offset is not a non-negative integer");
    t.storage_offset = *off;
    MCDR_ASSIGN(t.shape, int_tuple(a[2], "size"));
    MCDR_ASSIGN(t.stride, int_tuple(a[3], "stride"));
    if (a.size() > 4) {
      auto rg = as_int(a[4]);
      if (!rg) return err(n.offset, Rule::cdr_bad_tensor, "requires_grad is not a bool");
      t.requires_grad = *rg != 0;
      if (!is_empty_ordered_dict_call(a[5]) && at(a[5]).kind != NodeKind::None)
        note(Severity::medium, Rule::cdr_dropped, "tensor backward hooks removed", at(a[5]).offset);
    }
    size_t meta_index = v3 ? 7 : 6;
    if (a.size() > meta_index) {
      const Node& meta = at(a[meta_index]);
      if (meta.kind != NodeKind::Dict && meta.kind != NodeKind::None)
        return err(n.offset, Rule::cdr_bad_tensor, "tensor metadata is not a dict");
      for (auto [k, v] : meta.entries())
        if (as_int(v).value_or(0) != 0)
          return err(n.offset, Rule::cdr_unsupported, "tensor with conj/neg bits set is not supported");
    }
    MCDR_TRY(check_view(t, n.offset));
    m_.tensors.push_back(std::move(t));
    return std::optional<TensorId>(static_cast<TensorId>(m_.tensors.size() - 1));
  }

  Result<std::optional<TensorId>> parameter(NodeId id, const std::string& fn, pickle::Ids a, uint32_t depth) {
    const Node& n = at(id);
    if (a.size() != (fn == "_rebuild_parameter" ? 3u : 4u))
      return err(n.offset, Rule::cdr_bad_tensor, fn + " called with " + std::to_string(a.size()) + " arguments");
    MCDR_ASSIGN(std::optional<TensorId> inner, tensor_of(a[0], depth + 1));
    if (!inner) return std::optional<TensorId>();
    auto rg = as_int(a[1]);
    if (!rg) return err(n.offset, Rule::cdr_bad_tensor, "parameter requires_grad is not a bool");
    if (!is_empty_ordered_dict_call(a[2]) && at(a[2]).kind != NodeKind::None)
      note(Severity::medium, Rule::cdr_dropped, "parameter backward hooks removed", at(a[2]).offset);
    if (a.size() == 4) {
      const Node& st = at(a[3]);
      bool empty = st.kind == NodeKind::None || (st.kind == NodeKind::Dict && st.entries().empty());
      if (!empty) note(Severity::medium, Rule::cdr_dropped, "Python attributes of a parameter removed", st.offset);
    }
    Tensor t = m_.tensors[*inner];
    t.is_parameter = true;
    t.param_requires_grad = *rg != 0;
    m_.tensors.push_back(std::move(t));
    return std::optional<TensorId>(static_cast<TensorId>(m_.tensors.size() - 1));
  }

  Result<std::optional<TensorId>> quantized_tensor(NodeId id, pickle::Ids a, uint32_t depth) {
    const Node& n = at(id);
    if (a.size() != 7) return err(n.offset, Rule::cdr_bad_tensor, "_rebuild_qtensor called with " + std::to_string(a.size()) + " arguments");
    MCDR_ASSIGN(std::optional<StorageView> sv, storage_of(a[0], std::nullopt));
    if (!sv) return std::optional<TensorId>();
    Tensor t;
    t.dtype = sv->dtype;
    t.storage = sv->storage;
    auto off = as_int(a[1]);
    if (!off || *off < 0) return err(n.offset, Rule::cdr_bad_tensor, "storage offset is not a non-negative integer");
    t.storage_offset = *off;
    MCDR_ASSIGN(t.shape, int_tuple(a[2], "size"));
    MCDR_ASSIGN(t.stride, int_tuple(a[3], "stride"));
    auto q = tuple_items(a[4]);
    if (!q || q->empty() || at((*q)[0]).kind != NodeKind::Global)
      return err(n.offset, Rule::cdr_bad_tensor, "quantizer parameters are not (scheme, ...)");
    const std::string& scheme = at((*q)[0]).name();
    if ((scheme == "per_tensor_affine") && q->size() == 3 && as_number((*q)[1]) && as_int((*q)[2])) {
      t.kind = TensorKind::quantized_per_tensor;
      t.q_scale = *as_number((*q)[1]);
      t.q_zero_point = *as_int((*q)[2]);
    } else if ((scheme == "per_channel_affine" || scheme == "per_channel_affine_float_qparams") && q->size() == 4 &&
               as_int((*q)[3])) {
      MCDR_ASSIGN(std::optional<TensorId> scales, tensor_of((*q)[1], depth + 1));
      MCDR_ASSIGN(std::optional<TensorId> zps, tensor_of((*q)[2], depth + 1));
      if (!scales || !zps) return err(n.offset, Rule::cdr_bad_tensor, "per-channel scales/zero points are not tensors");
      // torch's are dense; a quantized or sparse one would chain tensors through the cache.
      if (!is_dense(*scales) || !is_dense(*zps))
        return err(n.offset, Rule::cdr_bad_tensor, "per-channel scales/zero points are not dense tensors");
      t.kind = TensorKind::quantized_per_channel;
      t.q_scales = *scales;
      t.q_zero_points = *zps;
      t.q_axis = *as_int((*q)[3]);
      if (scheme != "per_channel_affine")
        return err(n.offset, Rule::cdr_unsupported, "quantization scheme " + scheme + " is not supported");
    } else {
      return err(n.offset, Rule::cdr_unsupported, "quantization scheme " + scheme + " is not supported");
    }
    auto rg = as_int(a[5]);
    t.requires_grad = rg.value_or(0) != 0;
    MCDR_TRY(check_view(t, n.offset));
    m_.tensors.push_back(std::move(t));
    return std::optional<TensorId>(static_cast<TensorId>(m_.tensors.size() - 1));
  }

  // _get_layout("torch.sparse_csr") to its kind, through the one layout table in model.hpp.
  std::optional<TensorKind> sparse_layout(const Node& layout) const {
    if (layout.kind != NodeKind::Call || !is_global(at(layout.items[0]), "torch.serialization", "_get_layout"))
      return std::nullopt;
    auto la = tuple_items(layout.items[1]);
    if (!la || la->size() != 1) return std::nullopt;
    auto text = as_text((*la)[0]);
    if (!text) return std::nullopt;
    for (auto k : {TensorKind::sparse_coo, TensorKind::sparse_csr, TensorKind::sparse_csc, TensorKind::sparse_bsr,
                   TensorKind::sparse_bsc})
      if (*text == model::sparse_layout_name(k)) return k;
    return std::nullopt;
  }

  // A component of a sparse tensor: a dense tensor node.
  Result<TensorId> sparse_part(const Node& n, NodeId id, const char* what, uint32_t depth) {
    MCDR_ASSIGN(std::optional<TensorId> t, tensor_of(id, depth + 1));
    if (!t || !is_dense(*t)) return err(n.offset, Rule::cdr_bad_tensor, std::string("sparse ") + what + " is not a dense tensor");
    return *t;
  }

  // _rebuild_sparse_tensor(layout, data) (torch >= 1.8) and 1.x's _rebuild_sparse_csr_tensor:
  //   COO: data = (indices, values, size[, is_coalesced])
  //   CSR/CSC/BSR/BSC: data = (compressed_indices, plain_indices, values, size)
  Result<std::optional<TensorId>> sparse_tensor(NodeId id, pickle::Ids a, uint32_t depth) {
    const Node& n = at(id);
    if (a.size() != 2) return err(n.offset, Rule::cdr_bad_tensor, "_rebuild_sparse_tensor called with unexpected arguments");
    auto kind = sparse_layout(at(a[0]));
    if (!kind) {
      unsupported_ = "sparse tensor of an unknown layout";
      return std::optional<TensorId>();
    }
    auto d = tuple_items(a[1]);
    Tensor t;
    t.kind = *kind;
    if (*kind == TensorKind::sparse_coo) {
      if (!d || d->size() < 3 || d->size() > 4) return err(n.offset, Rule::cdr_bad_tensor, "sparse COO data is not (indices, values, size)");
      MCDR_ASSIGN(t.sparse_indices, sparse_part(n, (*d)[0], "indices", depth));
      MCDR_ASSIGN(t.sparse_values, sparse_part(n, (*d)[1], "values", depth));
      MCDR_ASSIGN(t.shape, int_tuple((*d)[2], "sparse size"));
      if (d->size() == 4 && as_int((*d)[3])) t.sparse_coalesced = *as_int((*d)[3]) != 0;
    } else {
      if (!d || d->size() != 4)
        return err(n.offset, Rule::cdr_bad_tensor, "sparse compressed data is not (compressed_indices, plain_indices, values, size)");
      MCDR_ASSIGN(t.sparse_indices, sparse_part(n, (*d)[0], "compressed indices", depth));
      MCDR_ASSIGN(t.sparse_plain, sparse_part(n, (*d)[1], "plain indices", depth));
      MCDR_ASSIGN(t.sparse_values, sparse_part(n, (*d)[2], "values", depth));
      MCDR_ASSIGN(t.shape, int_tuple((*d)[3], "sparse size"));
    }
    t.dtype = m_.tensors[t.sparse_values].dtype;
    m_.tensors.push_back(std::move(t));
    return std::optional<TensorId>(static_cast<TensorId>(m_.tensors.size() - 1));
  }

  Result<ValueId> rebuild_from_type(const Node& n, pickle::Ids a, uint32_t depth) {
    // _rebuild_from_type_v2(func, new_type, args, state): keep the tensor, drop the subclass.
    if (a.size() != 4 || at(a[0]).kind != NodeKind::Global || at(a[1]).kind != NodeKind::Global || !tuple_items(a[2]))
      return dropped(n, "tensor subclass", "unexpected _rebuild_from_type_v2 arguments");
    const Node& fn = at(a[0]);
    const Node& type = at(a[1]);
    bool plain = is_global(type, "torch", "Tensor") || is_global(type, "torch.nn.parameter", "Parameter");
    if (!plain) note(Severity::medium, Rule::cdr_converted, "tensor subclass " + global_text(type) + " written as a plain tensor", n.offset);
    const Node& st = at(a[3]);
    if (!(st.kind == NodeKind::None || (st.kind == NodeKind::Dict && st.entries().empty())))
      note(Severity::medium, Rule::cdr_dropped, "Python attributes of a tensor removed", st.offset);
    if (fn.text != "torch._utils") return dropped(n, "tensor subclass", "inner rebuild function is not torch._utils");
    MCDR_ASSIGN(std::optional<TensorId> tid, tensor_from_call(a[2], fn.name(), *tuple_items(a[2]), depth + 1));
    if (!tid) return dropped(n, "tensor subclass", "inner rebuild call not recognised");
    Value v;
    v.kind = ValueKind::tensor;
    v.tensor = *tid;
    return m_.add(std::move(v));
  }

  // ---- objects (NEWOBJ) ------------------------------------------------------------------
  Result<ValueId> new_object(NodeId id, uint32_t depth) {
    const Node& n = at(id);
    NodeId cls_id = n.items[0];
    const Node* cls = &at(cls_id);
    // Legacy-format whole models replace the class by ('module', class, file, source).
    if (cls->kind == NodeKind::PersId) {
      auto t = tuple_items(cls->items[0]);
      if (t && t->size() >= 2 && as_text((*t)[0]) == std::optional<std::string>("module")) {
        note(Severity::info, Rule::cdr_dropped, "module source code stored with the class removed", cls->offset);
        cls = &at((*t)[1]);
      } else if (opt_.tar_tensors && t && t->size() == 3 && at((*t)[0]).kind == NodeKind::Global) {
        // tar format: (class, source file, source code)
        note(Severity::info, Rule::cdr_dropped, "module source code stored with the class removed", cls->offset);
        cls = &at((*t)[0]);
      }
    }
    if (cls->kind != NodeKind::Global) return dropped(n, "object of a computed class", "not plain data", Severity::critical);
    const Node& state = n.build_states().empty() ? n : at(n.build_states().back());
    bool has_state_dict = !n.build_states().empty() && state.kind == NodeKind::Dict;
    if (has_state_dict && dict_get(state, "_parameters") != kNoNode && dict_get(state, "_modules") != kNoNode)
      return module_state_dict(id, *cls, depth);
    if (has_state_dict && (is_global(*cls, "argparse", "Namespace") || is_global(*cls, "types", "SimpleNamespace"))) {
      note(Severity::low, Rule::cdr_converted, global_text(*cls) + " written as a plain dict", n.offset);
      Value v;
      v.kind = ValueKind::dict;
      MCDR_TRY(add_entries(state, v, depth));
      MCDR_TRY(merge_equal_keys(v, n.offset));
      return m_.add(std::move(v));
    }
    if (is_global(*cls, "collections", "OrderedDict")) return mapping_call(n, "OrderedDict", {}, depth);
    if (cls->name() == "NumpyArrayWrapper" &&
        (cls->text == "joblib.numpy_pickle" || cls->text == "sklearn.externals.joblib.numpy_pickle"))
      return joblib_array(n, depth);
    if (opt_.registry) {
      auto args = n.items.size() == 2 ? tuple_items(n.items[1]) : std::nullopt;
      if (auto cid = opt_.registry->find(cls->text, cls->name()); cid) {
        if (opt_.registry->at(*cid).construct == Construct::newobj && args && args->empty())
          return registry_object(n, *cid, std::nullopt, depth);
        return dropped(n, "object of class " + global_text(*cls), "created with unexpected constructor arguments");
      }
    }
    Severity s = is_known_global(cls->text, cls->name()) ? Severity::medium : unknown_global_severity(cls->text, cls->name());
    return dropped(n, "object of class " + global_text(*cls), "not a recognised data class", s);
  }

  // A whole nn.Module (torch.save(model)) becomes the state dict model.state_dict() would give:
  // per module its parameters, then its persistent buffers, then its children, recursively.
  Result<ValueId> module_state_dict(NodeId id, const Node& cls, uint32_t depth) {
    note(Severity::medium, Rule::cdr_module_converted,
         "whole-model object of class " + global_text(cls) + " converted to a state dict (architecture kept as data)",
         at(id).offset);
    Value sd;
    sd.kind = ValueKind::ordered_dict;
    std::string root_prefix = module_roots_++ == 0 ? "" : "#" + std::to_string(module_roots_ - 1) + "/";
    size_t first_module = m_.architecture.size();
    MCDR_TRY(flatten_module(id, "", root_prefix, sd, depth, 0));
    report_module_attributes(at(id).offset);
    MCDR_TRY(merge_equal_keys(sd, at(id).offset));  // state_dict() assigns each name: the last wins
    for (size_t i = first_module; i < m_.architecture.size(); ++i)
      vet_architecture(m_.architecture[i], m_.findings, opt_.entry, at(id).offset);
    return m_.add(std::move(sd));
  }

  // Attributes of the modules (self.hidden = 32, a config dict, nn.Linear's in_features) are not
  // part of a state dict: one finding names them (the first few), so nothing goes silently.
  void report_module_attributes(uint64_t offset) {
    if (module_attributes_.empty()) return;
    std::string names;
    for (size_t i = 0; i < module_attributes_.size() && i < 12; ++i) names += (i ? ", " : "") + module_attributes_[i];
    if (module_attributes_.size() > 12) names += ", ...";
    note(Severity::low, Rule::cdr_module_attributes, std::to_string(module_attributes_.size()) +
         " module attribute(s) not kept (a state dict holds tensors only): " + names, offset);
    module_attributes_.clear();
  }

  // Python attributes of one module's __dict__ that nn.Module does not manage itself.
  void collect_module_attributes(const Node& state, const std::string& prefix) {
    for (auto [kn, vn] : last_value_wins_of(state)) {
      auto name = as_text(kn);
      if (!name || name->empty() || (*name)[0] == '_' || *name == "training") continue;
      if (module_attributes_.size() < 10000) module_attributes_.push_back(prefix + *name);
    }
  }

  std::vector<std::pair<NodeId, NodeId>> last_value_wins_of(const Node& d) const {
    std::vector<std::pair<NodeId, NodeId>> out;
    std::unordered_map<std::string, size_t> seen;
    for (auto [kn, vn] : d.entries()) {
      auto t = as_text(kn);
      if (!t) continue;
      auto [it, fresh] = seen.emplace(*t, out.size());
      if (fresh) out.emplace_back(kn, vn);
      else out[it->second].second = vn;
    }
    return out;
  }

  // Entries of a str-keyed dict node as CPython's unpickler leaves them: a repeated key keeps
  // its first position and its last value.
  std::vector<std::pair<NodeId, NodeId>> last_value_wins(NodeId holder) const {
    std::vector<std::pair<NodeId, NodeId>> out;
    std::unordered_map<std::string, size_t> seen;
    for (auto [kn, vn] : at(holder).entries()) {
      const Node& k = at(kn);
      bool text = k.kind == NodeKind::Str || k.kind == NodeKind::Py2Str || k.kind == NodeKind::Bytes;
      if (!text) {
        out.emplace_back(kn, vn);
        continue;
      }
      std::string key = (k.kind == NodeKind::Bytes ? "Y" : "S") + k.text;
      auto [it, fresh] = seen.emplace(std::move(key), out.size());
      if (fresh) out.emplace_back(kn, vn);
      else out[it->second].second = vn;
    }
    return out;
  }

  Status flatten_module(NodeId id, const std::string& prefix, const std::string& root_prefix, Value& sd,
                        uint32_t depth, uint32_t module_depth) {
    if (module_depth > opt_.max_depth) return too_deep(id);
    // A submodule shared by two parents is flattened under both paths, as state_dict() does;
    // the budget keeps a DAG of shared modules (2^n paths) from expanding exponentially.
    if (!module_budget_.spend(1) || prefix.size() > kMaxModulePath)
      return err(at(id).offset, Rule::limits_expansion,
                 "module tree: shared submodules would be expanded once per path, beyond a budget linear in the file");
    const Node& n = at(id);
    const Node* cls = &at(n.items[0]);
    if (cls->kind == NodeKind::PersId) {
      auto t = tuple_items(cls->items[0]);
      if (t && t->size() >= 2) cls = &at((*t)[at((*t)[0]).kind == NodeKind::Global ? 0 : 1]);
    }
    const Node& state = at(n.build_states().back());
    model::ModuleInfo info;
    info.path = root_prefix + (prefix.empty() ? "" : prefix.substr(0, prefix.size() - 1));
    if (cls->kind == NodeKind::Global) {
      info.class_module = cls->text;
      info.class_name = cls->name();
    }
    std::unordered_set<std::string> non_persistent;
    NodeId np = dict_get(state, "_non_persistent_buffers_set");
    if (np != kNoNode) collect_strings(np, non_persistent);
    auto add_tensors = [&](const char* key, std::vector<std::string>& names, bool buffers) -> Status {
      NodeId holder = dict_get(state, key);
      if (holder == kNoNode) return ok_status();
      for (auto [kn, vn] : last_value_wins(holder)) {
        auto name = as_text(kn);
        if (!name || at(vn).kind == NodeKind::None) continue;
        if (buffers && non_persistent.count(*name)) continue;
        if (!module_budget_.spend(1))
          return err(at(vn).offset, Rule::limits_expansion,
                     "module tree: shared submodules would be expanded once per path, beyond a budget linear in the file");
        MCDR_ASSIGN(ValueId v, lift(vn, depth + 1));
        MCDR_ASSIGN(ValueId k, lift(kn, depth + 1));
        Value key_value;
        key_value.kind = ValueKind::string;
        key_value.text = prefix + *name;
        (void)k;
        sd.entries.emplace_back(m_.add(std::move(key_value)), v);
        names.push_back(*name);  // unique: last_value_wins merged repeated names
      }
      return ok_status();
    };
    MCDR_TRY(add_tensors("_parameters", info.parameters, false));
    MCDR_TRY(add_tensors("_buffers", info.buffers, true));
    collect_module_attributes(state, root_prefix + prefix);
    m_.architecture.push_back(info);
    NodeId children = dict_get(state, "_modules");
    if (children == kNoNode) return ok_status();  // a child module is recognised by _parameters alone
    for (auto [kn, vn] : last_value_wins(children)) {
      auto name = as_text(kn);
      const Node& child = at(vn);
      if (!name || child.kind == NodeKind::None) continue;
      bool is_module = child.kind == NodeKind::NewObj && !child.build_states().empty() &&
                       at(child.build_states().back()).kind == NodeKind::Dict &&
                       dict_get(at(child.build_states().back()), "_parameters") != kNoNode;
      if (!is_module) {
        note(Severity::high, Rule::cdr_dropped, "submodule '" + prefix + *name + "' is not a module object", child.offset);
        continue;
      }
      MCDR_TRY(flatten_module(vn, prefix + *name + ".", root_prefix, sd, depth + 1, module_depth + 1));
    }
    return ok_status();
  }

  void collect_strings(NodeId id, std::unordered_set<std::string>& out) const {
    const Node& n = at(id);
    pickle::MaybeIds items = pickle::Ids(n.items);
    if (n.kind == NodeKind::Call) {
      auto a = tuple_items(n.items[1]);
      if (!a || a->empty()) return;
      items = pickle::Ids(at((*a)[0]).items);
    }
    for (NodeId c : *items)
      if (auto s = as_text(c)) out.insert(*s);
  }

  // ---- tar format (docs/FORMATS.md §3.3) ------------------------------------------------------
  Result<ValueId> tar_tensor(NodeId id) {
    const Node& n = at(id);
    const Node& k = at(n.items[0]);
    std::string key = k.kind == NodeKind::Int ? std::to_string(k.i) : as_text(n.items[0]).value_or("");
    auto it = opt_.tar_tensors->find(key);
    if (it == opt_.tar_tensors->end()) return err(n.offset, Rule::torch_missing_tensor, "tensor '" + key.substr(0, 64) + "' is not in the tensors member");
    const TarTensor& tt = it->second;
    model::StorageId sid;
    const int64_t record = find_record(tt.storage_key);
    if (auto shared = lifted_storage(record)) {
      sid = *shared;
      if (m_.storages[sid].dtype != tt.dtype)
        return err(n.offset, Rule::cdr_storage_dtype_conflict, "storage '" + tt.storage_key + "' is used with two dtypes");
    } else {
      MCDR_ASSIGN(sid, add_storage(tt.storage_key, record, tt.dtype, tt.storage_nbytes, n.offset));
    }
    Tensor t;
    t.dtype = tt.dtype;
    t.storage = sid;
    t.storage_offset = tt.storage_offset;
    t.shape = tt.shape;
    t.stride = tt.stride;
    MCDR_TRY(check_view(t, n.offset));
    m_.tensors.push_back(std::move(t));
    Value v;
    v.kind = ValueKind::tensor;
    v.tensor = static_cast<TensorId>(m_.tensors.size() - 1);
    return m_.add(std::move(v));
  }

  // torch.nn.parameter.Parameter(<tensor pid>) + BUILD (requires_grad, volatile, hooks).
  Result<ValueId> tar_parameter(const Node& n, pickle::Ids args, uint32_t depth) {
    if (args.empty() || args.size() > 2) return dropped(n, "parameter", "unexpected arguments");
    MCDR_ASSIGN(ValueId inner, lift(args[0], depth + 1));
    if (m_.values[inner].kind != ValueKind::tensor) return dropped(n, "parameter", "its data is not a tensor");
    bool rg = true;
    if (args.size() == 2 && as_int(args[1])) rg = *as_int(args[1]) != 0;
    if (!n.build_states().empty()) {
      auto st = tuple_items(n.build_states().back());
      if (st && !st->empty() && as_int((*st)[0])) rg = *as_int((*st)[0]) != 0;
      if (st && st->size() >= 3 && at((*st)[2]).kind != NodeKind::None && !is_empty_ordered_dict_call((*st)[2]))
        note(Severity::medium, Rule::cdr_dropped, "parameter backward hooks removed", n.offset);
    }
    Tensor t = m_.tensors[m_.values[inner].tensor];
    t.is_parameter = true;
    t.param_requires_grad = rg;
    m_.tensors.push_back(std::move(t));
    Value v;
    v.kind = ValueKind::tensor;
    v.tensor = static_cast<TensorId>(m_.tensors.size() - 1);
    return m_.add(std::move(v));
  }

  // ---- numpy arrays and registry objects ------------------------------------------------
  // numpy.dtype(code, False, True) [+ BUILD (3, order, None, names, fields, elsize, align, flags)]
  Result<ValueId> numpy_dtype(const Node& n, pickle::Ids args, uint32_t depth) {
    auto code = args.size() == 3 ? as_text(args[0]) : std::nullopt;
    if (!code || !parse_numpy_code(*code)) return dropped(n, "numpy dtype", "not a plain numpy dtype code");
    Value v;
    v.kind = ValueKind::numpy_dtype;
    v.text = *code;
    if (n.build_states().size() > 1) return dropped(n, "numpy dtype", "more than one BUILD");
    if (!n.build_states().empty()) {
      NodeId sid = n.build_states().back();
      auto st = tuple_items(sid);
      if (!st || st->size() != 8 || as_int((*st)[0]) != std::optional<int64_t>(3) || !as_text((*st)[1]) ||
          at((*st)[2]).kind != NodeKind::None)
        return dropped(n, "numpy dtype " + *code, "state is not a version-3 dtype state without subarray");
      std::string order = *as_text((*st)[1]);
      if (order != "<" && order != "|" && order != "=")
        return dropped(n, "numpy dtype " + *code, "byte order '" + order.substr(0, 4) + "' is not little-endian");
      for (int i = 5; i < 8; ++i)
        if (!as_int((*st)[i])) return dropped(n, "numpy dtype " + *code, "state holds a non-integer size field");
      MCDR_ASSIGN(ValueId state, lift(sid, depth + 1));
      v.state = state;
      if (!valid_fields(*code, state)) return dropped(n, "numpy dtype " + *code, "structured fields are not plain numeric fields");
    }
    return m_.add(std::move(v));
  }

  // names/fields of a structured dtype: every field a simple numeric dtype inside the item.
  bool valid_fields(const std::string& code, ValueId state) const {
    const Value& st = m_.values[state];
    if (st.kind != ValueKind::tuple || st.items.size() != 8) return false;
    const Value& names = m_.values[st.items[3]];
    const Value& fields = m_.values[st.items[4]];
    if (names.kind == ValueKind::none && fields.kind == ValueKind::none) return true;
    auto nc = parse_numpy_code(code);
    if (!nc || nc->kind != 'V' || names.kind != ValueKind::tuple || fields.kind != ValueKind::dict) return false;
    if (names.items.size() != fields.entries.size()) return false;
    for (auto [k, fv] : fields.entries) {
      const Value& f = m_.values[fv];
      if (m_.values[k].kind != ValueKind::string || f.kind != ValueKind::tuple || f.items.size() != 2) return false;
      const Value& fd = m_.values[f.items[0]];
      const Value& off = m_.values[f.items[1]];
      if (fd.kind != ValueKind::numpy_dtype || off.kind != ValueKind::integer || off.i < 0) return false;
      auto fc = parse_numpy_code(fd.text);
      if (!fc || !fc->dtype) return false;
      if (fd.state != model::kNoValue) {
        const Value& fs = m_.values[fd.state];
        if (m_.values[fs.items[3]].kind != ValueKind::none) return false;  // nested structure
      }
      if (static_cast<uint64_t>(off.i) + fc->itemsize > nc->itemsize) return false;
    }
    return true;
  }

  // The dtype node of an array: lifted and checked. nullopt (with a reason) when unusable.
  struct ArrayDtype {
    ValueId value;
    NumpyCode code;
  };
  Result<std::optional<ArrayDtype>> array_dtype(NodeId id, uint32_t depth, std::string& why) {
    MCDR_ASSIGN(ValueId dv, lift(id, depth + 1));
    const Value& d = m_.values[dv];
    if (d.kind != ValueKind::numpy_dtype) {
      why = "its dtype is not a plain numpy dtype";
      return std::optional<ArrayDtype>();
    }
    auto code = parse_numpy_code(d.text);
    if (code->kind == 'V' && (d.state == model::kNoValue || m_.values[m_.values[d.state].items[3]].kind == ValueKind::none)) {
      why = "void dtypes without fields are not supported";
      return std::optional<ArrayDtype>();
    }
    return std::optional<ArrayDtype>(ArrayDtype{dv, *code});
  }

  Result<std::optional<std::vector<int64_t>>> array_shape(NodeId id) {
    auto items = tuple_items(id);
    if (!items) return std::optional<std::vector<int64_t>>();
    if (items->size() > opt_.max_dims) return err(at(id).offset, Rule::cdr_bad_array, "array has too many dimensions");
    std::vector<int64_t> shape;
    for (NodeId c : *items) {
      auto v = as_int(c);
      if (!v || *v < 0) return std::optional<std::vector<int64_t>>();
      shape.push_back(*v);
    }
    return std::optional<std::vector<int64_t>>(std::move(shape));
  }

  // An ndarray value from raw bytes (a span of the input, or an owned copy).
  Result<ValueId> make_array(const Node& n, const ArrayDtype& dt, std::vector<int64_t> shape, bool fortran,
                             std::span<const uint8_t> bytes, std::vector<uint8_t>* owned, const std::string& source) {
    uint64_t numel = 1, nbytes = 0;
    for (int64_t d : shape)
      if (!mul_ok(numel, static_cast<uint64_t>(d), numel)) return err(n.offset, Rule::cdr_bad_array, "array size overflows");
    if (!mul_ok(numel, dt.code.itemsize, nbytes)) return err(n.offset, Rule::cdr_bad_array, "array size overflows");
    if (bytes.size() != nbytes)
      return err(n.offset, Rule::cdr_bad_array,
                 "array data holds " + std::to_string(bytes.size()) + " bytes, its shape and dtype need " + std::to_string(nbytes));
    model::Storage s;
    s.dtype = dt.code.dtype ? *dt.code.dtype : DType::u8;
    s.source = source;
    if (owned) {
      s.set_owned(std::move(*owned));
    } else {
      s.bytes = bytes;
      s.nbytes = nbytes;
    }
    m_.storages.push_back(std::move(s));
    Tensor t;
    t.storage = static_cast<model::StorageId>(m_.storages.size() - 1);
    if (dt.code.dtype) {
      t.dtype = *dt.code.dtype;
      t.shape = shape;
      t.stride.assign(shape.size(), 1);
      int64_t acc = 1;
      if (fortran) {
        for (size_t i = 0; i < shape.size(); ++i) { t.stride[i] = acc; acc *= std::max<int64_t>(shape[i], 1); }
      } else {
        for (size_t i = shape.size(); i-- > 0;) { t.stride[i] = acc; acc *= std::max<int64_t>(shape[i], 1); }
      }
    } else {
      t.dtype = DType::u8;
      t.shape = {static_cast<int64_t>(nbytes)};
      t.stride = {1};
    }
    m_.tensors.push_back(std::move(t));
    Value v;
    v.kind = ValueKind::ndarray;
    v.tensor = static_cast<TensorId>(m_.tensors.size() - 1);
    v.state = dt.value;
    v.array_shape = std::move(shape);
    v.fortran_order = fortran;
    return m_.add(std::move(v));
  }

  // numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b') + BUILD
  // (1, shape, dtype, is_fortran, raw bytes | list of objects).
  Result<ValueId> numpy_reconstruct(const Node& n, pickle::Ids args, uint32_t depth) {
    if (args.size() != 3 || !is_global(at(args[0]), "numpy", "ndarray"))
      return dropped(n, "numpy array", "not a plain numpy.ndarray (subclasses are not rebuilt)");
    if (n.build_states().size() != 1) return dropped(n, "numpy array", "expected exactly one BUILD");
    auto st = tuple_items(n.build_states().back());
    if (!st || st->size() != 5 || as_int((*st)[0]) != std::optional<int64_t>(1) || !as_int((*st)[3]))
      return dropped(n, "numpy array", "state is not (1, shape, dtype, is_fortran, data)");
    MCDR_ASSIGN(auto shape, array_shape((*st)[1]));
    if (!shape) return dropped(n, "numpy array", "shape is not a tuple of non-negative integers");
    std::string why;
    MCDR_ASSIGN(auto dt, array_dtype((*st)[2], depth, why));
    if (!dt) return dropped(n, "numpy array", why);
    bool fortran = *as_int((*st)[3]) != 0;
    const Node& data = at((*st)[4]);
    if (dt->code.kind == 'O') return object_array(n, *dt, *shape, data, depth);
    std::string raw;
    if (auto t = as_text((*st)[4])) {
      raw = *t;
    } else if (data.kind == NodeKind::ByteArray) {
      raw = data.text;
    } else if (data.kind == NodeKind::Call && is_global(at(data.items[0]), "_codecs", "encode")) {
      auto ea = tuple_items(data.items[1]);
      if (!ea || ea->size() != 2 || at((*ea)[0]).kind != NodeKind::Str || as_text((*ea)[1]) != std::optional<std::string>("latin1"))
        return dropped(n, "numpy array", "data is not bytes");
      MCDR_ASSIGN(raw, latin1_from_utf8(at((*ea)[0])));
    } else {
      return dropped(n, "numpy array", "data is not bytes");
    }
    std::vector<uint8_t> owned(raw.begin(), raw.end());
    std::span<const uint8_t> view(owned.data(), owned.size());
    return make_array(n, *dt, std::move(*shape), fortran, view, &owned, "numpy array at offset " + std::to_string(n.offset));
  }

  // numpy's protocol-5 pickle of an array: _frombuffer(bytes, dtype, shape, order), the bytes in
  // memory order (what joblib >= 1.5 writes for the arrays inside an object array).
  Result<ValueId> numpy_frombuffer(const Node& n, pickle::Ids args, uint32_t depth) {
    if (args.size() != 4) return dropped(n, "numpy array", "not _frombuffer(bytes, dtype, shape, order)");
    const Node& data = at(args[0]);
    auto order = as_text(args[3]);
    if (!(data.kind == NodeKind::Bytes || data.kind == NodeKind::ByteArray) || !order || (*order != "C" && *order != "F"))
      return dropped(n, "numpy array", "not _frombuffer(bytes, dtype, shape, 'C' or 'F')");
    MCDR_ASSIGN(auto shape, array_shape(args[2]));
    if (!shape) return dropped(n, "numpy array", "shape is not a tuple of non-negative integers");
    std::string why;
    MCDR_ASSIGN(auto dt, array_dtype(args[1], depth, why));
    if (!dt) return dropped(n, "numpy array", why);
    if (dt->code.kind == 'O') return dropped(n, "numpy array", "an object dtype has no buffer");
    std::vector<uint8_t> owned(data.text.begin(), data.text.end());
    std::span<const uint8_t> view(owned.data(), owned.size());
    return make_array(n, *dt, std::move(*shape), *order == "F", view, &owned, "numpy array at offset " + std::to_string(n.offset));
  }

  Result<ValueId> object_array(const Node& n, const ArrayDtype& dt, std::vector<int64_t> shape, const Node& data,
                               uint32_t depth) {
    if (data.kind != NodeKind::List) return dropped(n, "numpy object array", "elements are not a list");
    uint64_t numel = 1;
    for (int64_t d : shape)
      if (!mul_ok(numel, static_cast<uint64_t>(d), numel)) return err(n.offset, Rule::cdr_bad_array, "array size overflows");
    if (numel != data.items.size()) return err(n.offset, Rule::cdr_bad_array, "object array element count does not match its shape");
    Value v;
    v.kind = ValueKind::ndarray;
    for (NodeId c : data.items) {
      MCDR_ASSIGN(ValueId cv, lift(c, depth + 1));
      v.items.push_back(cv);
    }
    v.state = dt.value;
    v.array_shape = std::move(shape);
    return m_.add(std::move(v));
  }

  // joblib NumpyArrayWrapper + BUILD {subclass, shape, order, dtype, allow_mmap[, alignment]},
  // with the array bytes consumed by the reader's hook (Node::has_payload).
  Result<ValueId> joblib_array(const Node& n, uint32_t depth) {
    if (n.build_states().size() != 1 || at(n.build_states().back()).kind != NodeKind::Dict)
      return dropped(n, "joblib array", "wrapper state is not one dict");
    const Node& st = at(n.build_states().back());
    NodeId sub = dict_get(st, "subclass"), shape_id = dict_get(st, "shape"), order = dict_get(st, "order"),
           dtype = dict_get(st, "dtype");
    if (sub == kNoNode || shape_id == kNoNode || order == kNoNode || dtype == kNoNode)
      return dropped(n, "joblib array", "wrapper state lacks subclass/shape/order/dtype");
    // numpy.matrix only adds 2-d operator semantics to the same data (and joblib under numpy 2
    // loads it as a plain ndarray): its data is kept as a plain array, and said so
    bool matrix = is_global(at(sub), "numpy.matrixlib.defmatrix", "matrix") || is_global(at(sub), "numpy", "matrix");
    if (!is_global(at(sub), "numpy", "ndarray") && !is_global(at(sub), "numpy", "memmap") &&
        !is_global(at(sub), "numpy.core.memmap", "memmap") && !matrix)
      return dropped(n, "joblib array", "array subclass " + (at(sub).kind == NodeKind::Global ? global_text(at(sub)) : "?") +
                                            " is not numpy.ndarray");
    if (matrix) note(Severity::low, Rule::cdr_converted, "numpy.matrix written as a plain numpy.ndarray", n.offset);
    if (!n.has_payload) return dropped(n, "joblib array", "its data was not read (not parsed as a joblib stream)");
    const pickle::NodePayload& pl = p_.payloads.at(static_cast<NodeId>(&n - p_.nodes.data()));
    MCDR_ASSIGN(auto shape, array_shape(shape_id));
    if (!shape) return dropped(n, "joblib array", "shape is not a tuple of non-negative integers");
    auto ord = as_text(order);
    if (!ord || (*ord != "C" && *ord != "F")) return dropped(n, "joblib array", "order is not 'C' or 'F'");
    std::string why;
    MCDR_ASSIGN(auto dt, array_dtype(dtype, depth, why));
    if (!dt) return dropped(n, "joblib array", why);
    if (pl.is_pickle || dt->code.kind == 'O') return joblib_object_array(n, pl, depth);
    uint64_t numel = 1, nbytes = 0;
    for (int64_t d : *shape)
      if (!mul_ok(numel, static_cast<uint64_t>(d), numel)) return err(n.offset, Rule::cdr_bad_array, "array size overflows");
    if (!mul_ok(numel, dt->code.itemsize, nbytes) || nbytes > pl.size)
      return err(n.offset, Rule::cdr_bad_array, "joblib array payload is smaller than its shape and dtype need");
    io::ByteCursor cur(opt_.payload_bytes, opt_.entry);
    MCDR_TRY(cur.seek(static_cast<size_t>(pl.offset + pl.size - nbytes)));
    MCDR_ASSIGN(auto bytes, cur.take(nbytes));
    return make_array(n, *dt, std::move(*shape), *ord == "F", bytes, nullptr,
                      "joblib array at offset " + std::to_string(pl.offset));
  }

  // joblib writes an object array as a whole pickle of the array after its wrapper (the reader
  // decoded and scanned it). It is decoded again under the same bounds, lifted by a lifter of
  // its own (no storages, this registry) and grafted into this model; only an object ndarray
  // of plain values is kept, anything inside it that is not plain data is dropped as usual.
  Result<ValueId> joblib_object_array(const Node& n, const pickle::NodePayload& pl, uint32_t depth) {
    const char* what = "joblib object array";
    if (!pl.is_pickle || pl.offset > opt_.payload_bytes.size() || pl.size > opt_.payload_bytes.size() - pl.offset)
      return dropped(n, what, "its nested pickle was not read");
    auto bytes = opt_.payload_bytes.subspan(pl.offset, pl.size);
    pickle::DecodeOptions d;
    d.entry = opt_.entry;
    d.base_offset = pl.offset;
    d.limits.max_nodes = std::min<uint64_t>(d.limits.max_nodes, 2'000'000 + bytes.size() / 4);
    Findings ignored;  // the reader reported this program's findings when it read the file
    auto program = pickle::decode(bytes, d, ignored);
    if (!program.ok()) return dropped(n, what, "its nested pickle does not decode");
    StorageTable none;
    none.what = "an object array's pickle";
    LiftOptions lo;
    lo.entry = opt_.entry;
    lo.max_depth = opt_.max_depth > depth ? opt_.max_depth - depth : 0;
    lo.max_dims = opt_.max_dims;
    lo.registry = opt_.registry;
    MCDR_ASSIGN(Model sub, cdr::lift(*program, none, lo));  // binds nothing: no records
    const Value& root = sub.values[sub.root];
    if (root.kind != ValueKind::ndarray || !sub.values[root.state].text.starts_with("O"))
      return dropped(n, what, "its nested pickle is not a numpy object array");
    return graft(m_, std::move(sub));
  }

  // A vetted class: NEWOBJ () / copyreg._reconstructor / REDUCE(args) + BUILD dict state.
  Result<ValueId> registry_object(const Node& n, uint32_t cid, pickle::MaybeIds ctor_args, uint32_t depth) {
    const RegistryClass& rc = opt_.registry->at(cid);
    std::string what = "object of class " + rc.module + "." + rc.name;
    if (n.build_states().size() > 1) return dropped(n, what, "more than one BUILD");
    Value v;
    v.kind = ValueKind::object;
    v.class_id = cid;
    if (ctor_args)
      for (NodeId a : *ctor_args) {
        MCDR_ASSIGN(ValueId av, lift(a, depth + 1));
        v.items.push_back(av);
      }
    if (!n.build_states().empty()) {
      const Node& st = at(n.build_states().back());
      // numpy's bit generators (reduce, tuple state) took a dict state before numpy 2
      bool dict_too = rc.construct == Construct::reduce && st.kind == NodeKind::Dict;
      if (rc.tuple_state && !dict_too) {
        if (st.kind != NodeKind::Tuple) return dropped(n, what, "its state is not the tuple its __setstate__ takes");
      } else {
        if (st.kind != NodeKind::Dict) return dropped(n, what, "its state is not a dict");
        for (auto [k, val] : st.entries())
          if (at(k).kind != NodeKind::Str) return dropped(n, what, "its state has a non-string attribute name");
      }
      MCDR_ASSIGN(v.state, lift(n.build_states().back(), depth + 1));
    }
    note(Severity::info, Rule::cdr_registry_object, what + " rebuilt from the vetted class registry", n.offset);
    return m_.add(std::move(v));
  }

  // A storage the program names by `key`, from the container's table: the record must exist
  // and, where the container says so, hold exactly the bytes the program declares. The storage
  // gets its bytes when the container binds it (storage_of_record_ says to which record).
  // The record the program's storage `key` names in the container's table, or -1.
  int64_t find_record(std::string_view key) const {
    return table_.kind == StorageTable::Kind::none ? -1 : table_.find(key);
  }

  // `found`: find_record(key).
  Result<model::StorageId> add_storage(const std::string& key, int64_t found, DType dtype, uint64_t nbytes,
                                       uint64_t offset) {
    using Kind = StorageTable::Kind;
    if (found < 0) {
      switch (table_.kind) {
        case Kind::none:
          return err(offset, Rule::cdr_no_storage, std::string(table_.what) + " has no storage records (key '" + key + "')");
        case Kind::zip:
          return err(offset, Rule::torch_missing_storage, "storage record '" + table_.key_prefix + key + "' does not exist");
        case Kind::legacy:
          return err(offset, Rule::torch_missing_storage, "storage '" + key + "' is not in the data section");
        case Kind::tar:
          return err(offset, Rule::torch_missing_storage, "storage '" + key + "' is missing");
      }
    }
    const auto record = static_cast<uint32_t>(found);
    const uint64_t size = table_.record_size(record);
    if (table_.kind != Kind::tar && size != nbytes)
      return err(offset, Rule::torch_storage_size_mismatch,
                 "record '" + std::string(table_.source(record)) + "' holds " + std::to_string(size) +
                     " bytes, the pickle declares " + std::to_string(nbytes));
    model::Storage s;
    s.dtype = dtype;
    s.nbytes = size;
    s.source = table_.source(record);
    m_.storages.push_back(std::move(s));
    auto sid = static_cast<model::StorageId>(m_.storages.size() - 1);
    if (storage_of_record_.empty()) storage_of_record_.assign(table_.size(), kNoStorage);
    storage_of_record_[record] = sid;
    return sid;
  }

  // The storage already lifted from `record` (find_record), if any: a storage is shared by key.
  std::optional<model::StorageId> lifted_storage(int64_t record) const {
    if (record < 0 || storage_of_record_.empty() || storage_of_record_[static_cast<size_t>(record)] == kNoStorage)
      return std::nullopt;
    return storage_of_record_[static_cast<size_t>(record)];
  }

  const Program& p_;
  const StorageTable& table_;
  const LiftOptions& opt_;
  Model m_;
  // By NodeId: the value a node lifted to, kInProgress while its lift runs (a cycle when met
  // again), kNoValue before. A flat array: 4 bytes a node, where a hash map cost about 40.
  static constexpr ValueId kInProgress = model::kNoValue - 1;
  std::vector<ValueId> done_;
  std::vector<uint32_t> heights_;   // by ValueId: nesting height once known, 0 = not yet
  std::vector<uint8_t> hashable_;   // by ValueId: 1 plain key, 2 not, 0 not yet known
  ValueId shared_float_ = model::kNoValue;  // LiftOptions::scan_only: the lists' one float
  // By record index in table_: the storage lifted from it (a flat array, where a map keyed by
  // the key string cost about 70 bytes a storage).
  static constexpr model::StorageId kNoStorage = 0xFFFFFFFFu;
  std::vector<model::StorageId> storage_of_record_;
  IdMap tensor_nodes_;  // rebuild-call node -> its tensor
  ReleasePlan release_;  // inactive unless the program is consumed
  int module_roots_ = 0;
  std::vector<std::string> module_attributes_;  // of the whole model being converted
  limits::Budget module_budget_{limits::expansion_budget(p_.nodes.size(), limits::kModuleBudgetFloor)};
  static constexpr size_t kMaxModulePath = 64 * 1024;  // bytes of a dotted module path
  std::string unsupported_;  // why the last tensor call was not recognised, if known
};

// A '.'-separated run of ASCII identifiers (or, for module paths, the decimal indexes of
// Sequential children), at most 1024 bytes.
bool dotted_name(std::string_view s, bool allow_index) {
  if (s.empty() || s.size() > 1024) return false;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find('.', start);
    if (end == std::string_view::npos) end = s.size();
    std::string_view part = s.substr(start, end - start);
    if (part.empty()) return false;
    bool digits = std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    bool ident = !(part[0] >= '0' && part[0] <= '9') && std::all_of(part.begin(), part.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    });
    if (!ident && !(allow_index && digits)) return false;
    start = end + 1;
  }
  return true;
}

}  // namespace

// The architecture JSON records names chosen by the file's author. Only what reads as a
// Python name is kept (ASCII dotted identifiers, bounded); a code string, an escape sequence
// or a function that runs code (os.system) is replaced by kRejectedName and reported, so
// no tool reading the JSON mistakes it for a module path or class.
void vet_architecture(model::ModuleInfo& info, Findings& findings, const std::string& entry, uint64_t offset) {
  auto reject = [&](std::string& name, const char* what) {
    add_finding(findings, Severity::low, Rule::cdr_architecture_name,
                std::string(what) + " '" + name.substr(0, 80) + "' is not a plain Python name: recorded as " + kRejectedName,
                entry, offset);
    name = kRejectedName;
  };
  std::string_view path = info.path;
  std::string root;
  if (!path.empty() && path[0] == '#') {  // the lifter's own "#N/" prefix for a second module root
    auto slash = path.find('/');
    if (slash != std::string_view::npos) {
      root = std::string(path.substr(0, slash + 1));
      path.remove_prefix(slash + 1);
    }
  }
  if (!path.empty() && !dotted_name(path, true)) {
    std::string p(path);
    reject(p, "module path");
    info.path = root + p;
  }
  bool runs_code = unknown_global_severity(info.class_module, info.class_name) == Severity::critical;
  if (!info.class_module.empty() &&
      (!dotted_name(info.class_module, false) || !dotted_name(info.class_name, false) || runs_code)) {
    std::string c = info.class_module + "." + info.class_name;
    reject(c, runs_code ? "class (a function that runs code)" : "class");
    info.class_module = c;  // the marker alone: no class name
    info.class_name.clear();
  }
  for (auto* names : {&info.parameters, &info.buffers})
    for (auto& n : *names)
      if (!dotted_name(n, true) || n.find('.') != std::string::npos) reject(n, "tensor name");
}

model::ValueId graft(model::Model& dst, model::Model&& src) {
  auto sbase = static_cast<model::StorageId>(dst.storages.size());
  auto tbase = static_cast<model::TensorId>(dst.tensors.size());
  auto vbase = static_cast<model::ValueId>(dst.values.size());
  for (auto& s : src.storages) {
    bool owned = !s.owned.empty();
    dst.storages.push_back(std::move(s));
    if (owned) {
      auto& b = dst.storages.back();
      b.bytes = std::span<const uint8_t>(b.owned.data(), b.owned.size());
    }
  }
  for (auto t : src.tensors) {
    t.storage += sbase;
    t.q_scales += tbase;
    t.q_zero_points += tbase;
    t.sparse_indices += tbase;
    t.sparse_values += tbase;
    t.sparse_plain += tbase;
    dst.tensors.push_back(std::move(t));
  }
  auto remap = [&](model::ValueId v) { return v == model::kNoValue ? v : v + vbase; };
  for (auto v : src.values) {
    for (auto& i : v.items) i = remap(i);
    for (auto& [k, x] : v.entries) k = remap(k), x = remap(x);
    v.metadata = remap(v.metadata);
    v.state = remap(v.state);
    v.tensor += tbase;
    dst.values.push_back(std::move(v));
  }
  dst.findings.insert(dst.findings.end(), src.findings.begin(), src.findings.end());
  dst.architecture.insert(dst.architecture.end(), src.architecture.begin(), src.architecture.end());
  return remap(src.root);
}

Result<Model> lift(const Program& program, const StorageTable& storages, const LiftOptions& options,
                   StorageBinding* binding) {
  Lifter l(program, storages, options);
  return l.run(binding);
}

Result<Model> lift_consuming(Program&& program, const StorageTable& storages, const LiftOptions& options,
                             StorageBinding* binding) {
  const Program owned = std::move(program);  // freed on return, whatever the outcome
  Lifter l(owned, storages, options);
  l.consume_program();
  return l.run(binding);
}

}  // namespace modelcdr::cdr
