// The symbolic value graph built by the pickle machine. Nothing here is a Python object:
// a GLOBAL is only a (module, name) pair, a REDUCE is only a Call node. Nodes live in one
// arena and refer to each other by index, so memo references keep identity (tied weights
// stay tied) and cycles are representable without ownership problems.
//
// Memory: a checkpoint holds about 15 nodes per tensor, so a Node is kept small (24 bytes: one
// word for kind, flags and offset; one for the number or the text, which no kind has both of;
// one for the items): text lives in the Program's byte arena with its length in front (a
// Global's name follows its module there), child lists are arena blocks reached by one pointer,
// the rarer lists (dict entries, appends, BUILD states) one arena block that the items word
// points to once a node has any, and the rare joblib payload span sits in a side table
// (Program::payloads).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace modelcdr::pickle {

using NodeId = uint32_t;
constexpr NodeId kNoNode = 0xFFFFFFFFu;

// A bump allocator: chunks never move and nothing is freed before the arena, so views and
// lists into it stay valid while the Program (and its node vector) moves or grows.
class Arena {
 public:
  void* allocate(size_t bytes) {
    bytes = (bytes + 7) & ~size_t{7};
    if (bytes > kChunk / 4) return own_chunk(bytes);  // big blocks: a chunk of their own
    if (bytes > left_) {
      cur_ = static_cast<char*>(own_chunk(kChunk));
      left_ = kChunk;
    }
    void* p = cur_;
    cur_ += bytes;
    left_ -= bytes;
    return p;
  }
  // Every chunk as (start, bytes): a consuming lift (cdr::lift_consuming) returns their pages to
  // the kernel once nothing left to lift points into them.
  template <class F>
  void for_each_chunk(F&& f) const {
    for (size_t k = 0; k < chunks_.size(); ++k) f(static_cast<const void*>(chunks_[k].get()), sizes_[k]);
  }
  std::string_view keep(std::string_view s) {
    if (s.empty()) return {};
    char* p = static_cast<char*>(allocate(s.size()));
    std::memcpy(p, s.data(), s.size());
    return {p, s.size()};
  }

 private:
  static constexpr size_t kChunk = 64 * 1024;
  void* own_chunk(size_t bytes) {
    chunks_.emplace_back(new uint64_t[bytes / 8]);
    sizes_.push_back(bytes);
    return chunks_.back().get();
  }
  std::vector<std::unique_ptr<uint64_t[]>> chunks_;
  std::vector<size_t> sizes_;  // bytes of each chunk
  char* cur_ = nullptr;
  size_t left_ = 0;
};

// A list of node ids (or id pairs) in arena memory: one pointer in the Node, null when empty
// (most nodes). Grows by doubling into a new block; the old block stays in the arena, so the
// waste is bounded by the live size. Read like a vector; written only by whoever owns the arena.
template <class T>
class IdList {
 public:
  const T* begin() const { return h_ ? reinterpret_cast<const T*>(h_ + 1) : nullptr; }
  const T* end() const { return begin() + size(); }
  const T* data() const { return begin(); }
  size_t size() const { return h_ ? h_->size : 0; }
  bool empty() const { return size() == 0; }
  const T& operator[](size_t k) const { return begin()[k]; }
  const T& front() const { return begin()[0]; }
  const T& back() const { return begin()[size() - 1]; }
  operator std::span<const T>() const { return {begin(), size()}; }  // NOLINT: reads like a vector
  std::vector<T> to_vector() const { return {begin(), end()}; }

  void append(Arena& arena, const T* items, size_t n) {
    if (n == 0) return;
    const size_t need = size() + n;  // callers bound it (MachineLimits::max_container_items)
    if (!h_ || need > h_->cap) {
      size_t cap = h_ ? h_->cap : 0;
      cap = std::max<size_t>({need, cap * 2, 2});
      auto* h = static_cast<Head*>(arena.allocate(sizeof(Head) + cap * sizeof(T)));
      h->size = static_cast<uint32_t>(size());
      h->cap = static_cast<uint32_t>(cap);
      if (h_) std::memcpy(static_cast<void*>(h + 1), begin(), size() * sizeof(T));
      h_ = h;
    }
    std::memcpy(static_cast<void*>(reinterpret_cast<T*>(h_ + 1) + h_->size), items, n * sizeof(T));
    h_->size = static_cast<uint32_t>(need);
  }
  void push_back(Arena& arena, const T& item) { append(arena, &item, 1); }
  // The arena block the list lives in (nullptr, 0 when empty): see Node::for_each_block.
  const void* block() const { return h_; }
  size_t block_bytes() const { return h_ ? sizeof(Head) + size_t{h_->cap} * sizeof(T) : 0; }
  void assign(Arena& arena, std::initializer_list<T> items) {
    h_ = nullptr;
    append(arena, items.begin(), items.size());
  }
  void clear() { h_ = nullptr; }

 private:
  struct Head {
    uint32_t size, cap;
  };
  Head* h_ = nullptr;
};

// Node text: a view into the Program's arena that still reads like the std::string it replaced
// (converts to one, concatenates with one). Built from a std::string only explicitly
// (Program::keep), so no view can dangle into a temporary.
struct Text : std::string_view {
  using std::string_view::basic_string_view;
  Text() = default;
  explicit Text(std::string_view s) : std::string_view(s) {}
  operator std::string() const { return std::string(data(), size()); }  // NOLINT: reads like a string
};
inline std::string operator+(const std::string& a, Text b) { return std::string(a).append(b); }
inline std::string operator+(std::string&& a, Text b) { return std::move(a.append(b)); }
inline std::string operator+(Text a, const std::string& b) { return std::string(a).append(b); }
inline std::string operator+(const char* a, Text b) { return std::string(a).append(b); }
inline std::string operator+(Text a, const char* b) { return std::string(a).append(b); }
inline std::string operator+(Text a, Text b) { return std::string(a).append(b); }
inline std::string operator+(Text a, char b) { return std::string(a) + b; }
inline std::string operator+(char a, Text b) { return std::string(1, a).append(b); }

using NodeIds = IdList<NodeId>;
using NodePairs = IdList<std::pair<NodeId, NodeId>>;
using Ids = std::span<const NodeId>;      // what readers of a node's items take
using MaybeIds = std::optional<Ids>;

enum class NodeKind : uint8_t {
  None,
  Bool,       // b
  Int,        // i (fits int64)
  BigInt,     // text = little-endian two's-complement bytes (as LONG1/LONG4 store them)
  Float,      // f
  Str,        // text = UTF-8 (from UNICODE/BINUNICODE/... opcodes)
  Py2Str,     // text = raw bytes of a protocol 0-2 STRING/BINSTRING/SHORT_BINSTRING
  Bytes,      // text = raw bytes (BINBYTES/SHORT_BINBYTES/BINBYTES8)
  ByteArray,  // text = raw bytes (BYTEARRAY8)
  List,       // items
  Tuple,      // items
  Dict,       // entries
  Set,        // items (EMPTY_SET + ADDITEMS)
  FrozenSet,  // items
  Global,     // module, name (after Python-2 name remapping; see `remapped`)
  Call,       // REDUCE: callee(args); callee = items[0] node, args = items[1] node (a Tuple, normally)
  NewObj,     // NEWOBJ: cls = items[0], args = items[1]; NEWOBJ_EX adds kwargs = items[2]
  Inst,       // INST / OBJ: cls = items[0] (a Global node), args = items[1..]
  PersId,     // BINPERSID / PERSID: pid = items[0]
  Ext,        // EXT1/2/4: i = extension code (never resolvable; always a finding)
  Buffer,     // NEXT_BUFFER (out-of-band; never legitimate in a file)
};

// Mutations applied to a node after construction, in stream order. Few nodes have any (dicts,
// SETITEM(S)/APPEND(S)/BUILD targets), so they sit in one arena block the node points to; the
// node's own items move into that block with them (Node::items reads them there), so a node
// needs one word for both.
struct NodeMutations {
  NodeIds items;             // the node's items (see ItemsField)
  NodePairs entries;         // DICT contents and SETITEM(S) on any node
  NodeIds appended;          // APPEND(S)/ADDITEMS applied to a non-List/Set node
  NodeIds build_states;      // BUILD states applied to this node
};
inline constexpr NodeMutations kNoMutations{};

struct Node;
struct Program;

// Node::text: one word that shares the node's number slot (an Int has no text, a Str no number).
// It points at the text in the Program's arena; the length is in the 8 bytes before it (a
// Global's name length in the 8 before those, the name right after the module). It reads like
// the Text view it replaced, and reads empty on a node of a kind without text (the word holds a
// number there), so no caller can misread one for the other. Not copyable on its own: it finds
// its node's kind by its place in the node, so a copy away from the node would misread; convert
// it to a Text (a view) instead.
class TextField {
 public:
  TextField() = default;
  TextField(const TextField&) = delete;
  TextField& operator=(const TextField&) = delete;

  inline Text view() const;  // after Node: needs the node's kind
  operator Text() const { return view(); }                   // NOLINT: reads like the view
  operator std::string() const { return std::string(view()); }  // NOLINT: reads like a string
  size_t size() const { return view().size(); }
  size_t length() const { return size(); }
  bool empty() const { return size() == 0; }
  const char* data() const { return view().data(); }
  auto begin() const { return view().begin(); }
  auto end() const { return view().end(); }
  char operator[](size_t k) const { return view()[k]; }
  char front() const { return view().front(); }
  char back() const { return view().back(); }
  std::string_view substr(size_t pos, size_t n = std::string_view::npos) const { return view().substr(pos, n); }
  size_t find(std::string_view s, size_t pos = 0) const { return view().find(s, pos); }
  size_t find(char c, size_t pos = 0) const { return view().find(c, pos); }
  size_t rfind(std::string_view s, size_t pos = std::string_view::npos) const { return view().rfind(s, pos); }
  size_t rfind(char c, size_t pos = std::string_view::npos) const { return view().rfind(c, pos); }
  bool starts_with(std::string_view s) const { return view().starts_with(s); }
  bool ends_with(std::string_view s) const { return view().ends_with(s); }
  int compare(std::string_view s) const { return view().compare(s); }
  friend bool operator==(const TextField& a, std::string_view b) { return a.view() == b; }
  friend bool operator==(const TextField& a, const TextField& b) { return a.view() == b.view(); }
  friend auto operator<=>(const TextField& a, std::string_view b) { return a.view() <=> b; }

 private:
  friend struct Node;
  friend struct Program;
  const char* p_;  // no initializer: the union's number is the member that starts set
};
inline std::string operator+(const std::string& a, const TextField& b) { return a + b.view(); }
inline std::string operator+(std::string&& a, const TextField& b) { return std::move(a) + b.view(); }
inline std::string operator+(const TextField& a, const std::string& b) { return a.view() + b; }
inline std::string operator+(const char* a, const TextField& b) { return a + b.view(); }
inline std::string operator+(const TextField& a, const char* b) { return a.view() + b; }
inline std::string operator+(const TextField& a, char b) { return a.view() + b; }
inline std::string operator+(char a, const TextField& b) { return a + b.view(); }

// Node::items: one word. Up to two items sit in the word itself (a Call's callee and args, a
// 1-tuple, a PersId: most nodes with items have no more); more are an IdList in the arena; and
// once the node has mutations the word points to the NodeMutations block, which then holds the
// items with the rest. Reads and grows like the IdList it replaced (and converts to a span). Not
// copyable on its own, for the reason TextField is not; a span of inline items points into the
// node, so it lives as long as the node does not move.
class ItemsField {
 public:
  ItemsField() : list_() {}
  ItemsField(const ItemsField&) = delete;
  ItemsField& operator=(const ItemsField&) = delete;

  // After Node (they need the node's flags):
  inline size_t size() const;
  inline const NodeId* begin() const;
  inline void append(Arena& arena, const NodeId* items, size_t n);
  inline void clear();

  const NodeId* end() const { return begin() + size(); }
  const NodeId* data() const { return begin(); }
  bool empty() const { return size() == 0; }
  const NodeId& operator[](size_t k) const { return begin()[k]; }
  const NodeId& front() const { return begin()[0]; }
  const NodeId& back() const { return begin()[size() - 1]; }
  operator std::span<const NodeId>() const { return {begin(), size()}; }  // NOLINT: reads like the list
  std::vector<NodeId> to_vector() const { return {begin(), end()}; }
  void push_back(Arena& arena, NodeId item) { append(arena, &item, 1); }
  void assign(Arena& arena, std::initializer_list<NodeId> items) {
    clear();
    append(arena, items.begin(), items.size());
  }

 private:
  friend struct Node;
  inline Node& owner();
  inline const Node& owner() const;
  union {
    NodeIds list_;        // more than two items, no mutations
    NodeMutations* mut_;  // the node has mutations (Node::has_mut)
    NodeId ids_[2];       // up to two items (Node::inline_items)
  };
};

struct Node {
  // One word for the kind, the flags and the offset (a Node is built per pickle object, about
  // 15 a tensor, so every word counts; offsets stay far below 2^50).
  NodeKind kind : 8 = NodeKind::None;
  bool b : 1 = false;
  bool remapped : 1 = false;      // Global: name changed by the Python-2 compatibility table
  // Raw bytes followed this node's BUILD in the stream (joblib NumpyArrayWrapper arrays,
  // consumed by DecodeOptions::on_array_build); their span is Program::payloads[id].
  bool has_payload : 1 = false;
  bool has_mut : 1 = false;       // `items` holds a NodeMutations block (see mutations())
  uint8_t inline_items : 2 = 0;   // `items` holds this many ids in its word (see ItemsField)
  uint64_t offset : 50 = 0;       // byte offset (inside the pickle's entry) of the creating opcode
  union {                         // an Int or Ext has i, a Float f, a text kind text; never two
    int64_t i = 0;
    double f;
    TextField text;               // Str / Py2Str / Bytes / ByteArray / BigInt payload; Global module
  };
  ItemsField items;               // see NodeKind

  Node() = default;
  // The fields find their node by their place in it, so they copy only with it (bitwise: a
  // Node is plain data into the Program's arena).
  Node(const Node& o) noexcept { std::memcpy(static_cast<void*>(this), static_cast<const void*>(&o), sizeof(Node)); }
  Node& operator=(const Node& o) noexcept {
    std::memmove(static_cast<void*>(this), static_cast<const void*>(&o), sizeof(Node));
    return *this;
  }

  // Global: the name (kept after the module, its length before the module's; see TextField).
  Text name() const {
    if (kind != NodeKind::Global || text.p_ == nullptr) return Text();
    uint64_t module_size = 0, name_size = 0;
    std::memcpy(&module_size, text.p_ - 8, 8);
    std::memcpy(&name_size, text.p_ - 16, 8);
    return Text(std::string_view(text.p_ + module_size, static_cast<size_t>(name_size)));
  }
  const NodeMutations& muts() const { return has_mut ? *items.mut_ : kNoMutations; }
  const NodePairs& entries() const { return muts().entries; }
  const NodeIds& appended() const { return muts().appended; }
  const NodeIds& build_states() const { return muts().build_states; }
  // For whoever owns the arena (the machine, a reader building a program): the block to add to.
  // The node's items move into it (a reference to them taken before does not see later items).
  NodeMutations& mutations(Arena& arena) {
    if (!has_mut) {
      auto* m = new (arena.allocate(sizeof(NodeMutations))) NodeMutations();
      if (inline_items) m->items.append(arena, items.ids_, inline_items);
      else m->items = items.list_;
      inline_items = 0;
      items.mut_ = m;
      has_mut = true;
    }
    return *items.mut_;
  }
  // Every arena block this node points to, as f(start, bytes): its text (with the lengths in
  // front), its items list, its mutations block and that block's lists. What a consuming lift
  // needs to know which arena pages a node still reads (cdr::lift_consuming).
  template <class F>
  void for_each_block(F&& f) const {
    if (has_text() && text.p_ != nullptr) {
      const size_t head = kind == NodeKind::Global ? 16 : 8;
      const size_t body = kind == NodeKind::Global ? text.view().size() + name().size() : text.view().size();
      f(static_cast<const void*>(text.p_ - head), head + body);
    }
    auto list = [&](const auto& l) {
      if (l.block()) f(l.block(), l.block_bytes());
    };
    if (has_mut) {
      const NodeMutations& m = *items.mut_;
      f(static_cast<const void*>(&m), sizeof(NodeMutations));
      list(m.items);
      list(m.entries);
      list(m.appended);
      list(m.build_states);
    } else if (!inline_items) {
      list(items.list_);
    }
  }
  bool has_text() const {
    switch (kind) {
      case NodeKind::BigInt: case NodeKind::Str: case NodeKind::Py2Str: case NodeKind::Bytes:
      case NodeKind::ByteArray: case NodeKind::Global: return true;
      default: return false;
    }
  }
};
static_assert(sizeof(Node) == 24, "keep pickle::Node compact: it is built about 15 times a tensor");
inline constexpr size_t kNodeTextAt = 8, kNodeItemsAt = 16;  // where the fields sit in a Node

inline Text TextField::view() const {
  const Node& n = *reinterpret_cast<const Node*>(reinterpret_cast<const char*>(this) - kNodeTextAt);
  if (!n.has_text() || p_ == nullptr) return Text();
  uint64_t size = 0;
  std::memcpy(&size, p_ - 8, 8);
  return Text(std::string_view(p_, static_cast<size_t>(size)));
}
inline Node& ItemsField::owner() { return *reinterpret_cast<Node*>(reinterpret_cast<char*>(this) - kNodeItemsAt); }
inline const Node& ItemsField::owner() const {
  return *reinterpret_cast<const Node*>(reinterpret_cast<const char*>(this) - kNodeItemsAt);
}
inline size_t ItemsField::size() const {
  const Node& n = owner();
  if (n.has_mut) return mut_->items.size();
  return n.inline_items ? n.inline_items : list_.size();
}
inline const NodeId* ItemsField::begin() const {
  const Node& n = owner();
  if (n.has_mut) return mut_->items.begin();
  return n.inline_items ? ids_ : list_.begin();
}
inline void ItemsField::append(Arena& arena, const NodeId* items, size_t k) {
  Node& n = owner();
  if (k == 0) return;
  if (n.has_mut) return mut_->items.append(arena, items, k);
  const size_t have = n.inline_items;
  if (have == 0 && !list_.empty()) return list_.append(arena, items, k);
  if (have + k <= 2) {  // stays in the word
    std::memcpy(static_cast<void*>(ids_ + have), items, k * sizeof(NodeId));
    n.inline_items = static_cast<uint8_t>(have + k);
    return;
  }
  const NodeId kept[2] = {ids_[0], ids_[1]};  // spill into an arena list
  n.inline_items = 0;
  list_ = NodeIds();
  list_.append(arena, kept, have);
  list_.append(arena, items, k);
}
inline void ItemsField::clear() {
  Node& n = owner();
  if (n.has_mut) return mut_->items.clear();
  n.inline_items = 0;
  list_ = NodeIds();
}

// Raw bytes after a BUILD (joblib): [offset, +size) of the decoded span.
struct NodePayload {
  uint64_t offset = 0, size = 0;
  bool is_pickle = false;  // a nested protocol-2 pickle (object arrays)
};

struct Program {
  std::vector<Node> nodes;
  NodeId root = kNoNode;       // the value STOP returned
  uint64_t stop_offset = 0;    // offset of the STOP opcode
  uint64_t end_offset = 0;     // offset just after STOP (where a following pickle would start)
  int protocol = 0;            // last PROTO value seen (0 if none)
  uint64_t op_count = 0;
  std::unordered_map<NodeId, NodePayload> payloads;  // nodes with has_payload
  // Owns every node's text and lists (move-only, so views never dangle into a copy).
  std::unique_ptr<Arena> arena = std::make_unique<Arena>();

  const Node& at(NodeId id) const { return nodes[id]; }
  Text keep(std::string_view s) { return Text(arena->keep(s)); }
  // Makes `n` a node of text kind `kind` holding a copy of `s` (see TextField).
  void set_text(Node& n, NodeKind kind, std::string_view s) {
    n.kind = kind;
    n.text.p_ = nullptr;
    if (s.empty()) return;
    char* p = static_cast<char*>(arena->allocate(8 + s.size()));
    const uint64_t size = s.size();
    std::memcpy(p, &size, 8);
    std::memcpy(p + 8, s.data(), s.size());
    n.text.p_ = p + 8;
  }
  // Makes `g` name module.name (see Node::name).
  void set_global(Node& g, std::string_view module, std::string_view name) {
    char* p = static_cast<char*>(arena->allocate(16 + module.size() + name.size()));
    const uint64_t module_size = module.size(), name_size = name.size();
    std::memcpy(p, &name_size, 8);
    std::memcpy(p + 8, &module_size, 8);
    std::memcpy(p + 16, module.data(), module.size());
    std::memcpy(p + 16 + module.size(), name.data(), name.size());
    g.kind = NodeKind::Global;
    g.text.p_ = p + 16;
  }
  NodeId add(Node n) {
    nodes.push_back(n);
    return static_cast<NodeId>(nodes.size() - 1);
  }
};

}  // namespace modelcdr::pickle
