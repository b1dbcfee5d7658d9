// The symbolic value graph built by the pickle machine. Nothing here is a Python object:
// a GLOBAL is only a (module, name) pair, a REDUCE is only a Call node. Nodes live in one
// arena and refer to each other by index, so memo references keep identity (tied weights
// stay tied) and cycles are representable without ownership problems.
//
// Memory: a checkpoint holds about 15 nodes per tensor, so a Node is kept small (48 bytes):
// text is a view into the Program's byte arena (a Global's name follows its module there), child lists are arena blocks reached by one
// pointer, the rarer lists (dict entries, appends, BUILD states) one arena block reached by one
// pointer, and the rare joblib payload span sits in a side table (Program::payloads).
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
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
    return chunks_.back().get();
  }
  std::vector<std::unique_ptr<uint64_t[]>> chunks_;
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
// SETITEM(S)/APPEND(S)/BUILD targets), so they sit in one arena block the node points to.
struct NodeMutations {
  NodePairs entries;         // DICT contents and SETITEM(S) on any node
  NodeIds appended;          // APPEND(S)/ADDITEMS applied to a non-List/Set node
  NodeIds build_states;      // BUILD states applied to this node
};
inline constexpr NodeMutations kNoMutations{};

struct Node {
  // One word for the kind, the flags and the offset (a Node is built per pickle object, about
  // 15 a tensor, so every word counts; offsets stay far below 2^52).
  NodeKind kind : 8 = NodeKind::None;
  bool b : 1 = false;
  bool remapped : 1 = false;      // Global: name changed by the Python-2 compatibility table
  // Raw bytes followed this node's BUILD in the stream (joblib NumpyArrayWrapper arrays,
  // consumed by DecodeOptions::on_array_build); their span is Program::payloads[id].
  bool has_payload : 1 = false;
  uint64_t offset : 53 = 0;       // byte offset (inside the pickle's entry) of the creating opcode
  union {                         // an Int or Ext has i, a Float f, never both; a Global its name's length
    int64_t i = 0;
    double f;
  };
  Text text;                 // Str / Py2Str / Bytes / ByteArray / BigInt payload; Global module (arena)
  NodeIds items;             // see NodeKind
  NodeMutations* mut = nullptr;  // arena; null when nothing was applied (most nodes)

  // Global: the name. Program::set_global keeps it in the arena right after the module and a
  // NUL, its length in `i` (a Global has no number): a view of its own cost 16 bytes a node.
  Text name() const {
    if (kind != NodeKind::Global || text.data() == nullptr) return Text();
    return Text(std::string_view(text.data() + text.size() + 1, static_cast<size_t>(i)));
  }
  const NodePairs& entries() const { return (mut ? *mut : kNoMutations).entries; }
  const NodeIds& appended() const { return (mut ? *mut : kNoMutations).appended; }
  const NodeIds& build_states() const { return (mut ? *mut : kNoMutations).build_states; }
  // For whoever owns the arena (the machine, a reader building a program): the block to add to.
  NodeMutations& mutations(Arena& arena) {
    if (!mut) mut = new (arena.allocate(sizeof(NodeMutations))) NodeMutations();
    return *mut;
  }
};
static_assert(sizeof(Node) == 48, "keep pickle::Node compact: it is built about 15 times a tensor");

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
  // Makes `g` name module.name (see Node::name).
  void set_global(Node& g, std::string_view module, std::string_view name) {
    char* p = static_cast<char*>(arena->allocate(module.size() + 1 + name.size()));
    std::memcpy(p, module.data(), module.size());
    p[module.size()] = '\0';
    std::memcpy(p + module.size() + 1, name.data(), name.size());
    g.kind = NodeKind::Global;
    g.text = Text(std::string_view(p, module.size()));
    g.i = static_cast<int64_t>(name.size());
  }
  NodeId add(Node n) {
    nodes.push_back(n);
    return static_cast<NodeId>(nodes.size() - 1);
  }
};

}  // namespace modelcdr::pickle
