// The symbolic value graph built by the pickle machine. Nothing here is a Python object:
// a GLOBAL is only a (module, name) pair, a REDUCE is only a Call node. Nodes live in one
// arena and refer to each other by index, so memo references keep identity (tied weights
// stay tied) and cycles are representable without ownership problems.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace modelcdr::pickle {

using NodeId = uint32_t;
constexpr NodeId kNoNode = 0xFFFFFFFFu;

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

struct Node {
  // The flags first, packed into one word: a pickle of millions of small objects holds one
  // Node each, so padding costs (about 220 bytes a node).
  NodeKind kind = NodeKind::None;
  bool b = false;
  bool remapped = false;          // Global: name changed by the Python-2 compatibility table
  // Raw bytes that followed this node's BUILD in the stream (joblib NumpyArrayWrapper arrays,
  // consumed by DecodeOptions::on_array_build): [payload_offset, +payload_size) of the decoded
  // span; payload_is_pickle when they form a nested protocol-2 pickle (object arrays).
  bool has_payload = false;
  bool payload_is_pickle = false;
  int64_t i = 0;
  double f = 0.0;
  std::string text;          // Str / Py2Str / Bytes / ByteArray / BigInt payload; Global module
  std::string name;          // Global name
  std::vector<NodeId> items; // see NodeKind
  // Mutations applied after construction, in stream order:
  std::vector<std::pair<NodeId, NodeId>> entries;  // DICT contents and SETITEM(S) on any node
  std::vector<NodeId> appended;                    // APPEND(S)/ADDITEMS applied to a non-List/Set node
  std::vector<NodeId> build_states;                // BUILD states applied to this node
  uint64_t offset = 0;       // byte offset (inside the pickle's entry) of the creating opcode
  uint64_t payload_offset = 0, payload_size = 0;
};

struct Program {
  std::vector<Node> nodes;
  NodeId root = kNoNode;       // the value STOP returned
  uint64_t stop_offset = 0;    // offset of the STOP opcode
  uint64_t end_offset = 0;     // offset just after STOP (where a following pickle would start)
  int protocol = 0;            // last PROTO value seen (0 if none)
  uint64_t op_count = 0;
  const Node& at(NodeId id) const { return nodes[id]; }
};

}  // namespace modelcdr::pickle
