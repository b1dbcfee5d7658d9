// PickleMachine: a symbolic evaluator for every opcode of pickle protocols 0-5.
// Why hand-written: no library parses pickle without executing it; CPython's own unpickler
// imports modules and calls callables by design. This machine only builds a value graph
// (value_graph.hpp); GLOBAL resolves nothing, REDUCE calls nothing.
// Every count is bounded by MachineLimits; malformed input returns an Error naming the
// entry, offset and rule, never a crash or an unbounded allocation.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>

#include "modelcdr/finding.hpp"
#include "io/byte_cursor.hpp"
#include "modelcdr/result.hpp"
#include "pickle/value_graph.hpp"

namespace modelcdr::pickle {

struct MachineLimits {
  uint64_t max_ops = 50'000'000;        // opcodes executed
  // Graph nodes created. Each costs 24 bytes (value_graph.hpp) plus what the lifter makes of
  // it (a Value, up to about 150 bytes), so this cap is what bounds memory on a hostile stream:
  // about 0.9 GB at most, whatever the file's size (pickle_stream also scales it down for small inputs).
  // Real checkpoints hold ~10-20 nodes per tensor; 5M leaves room for large non-tensor data.
  uint64_t max_nodes = 5'000'000;
  uint64_t max_memo_entries = 10'000'000;
  uint64_t max_memo_index = 0xFFFFFFFFull;  // memo is a hash map: an index never sizes an allocation
  uint64_t max_stack_depth = 1'000'000; // stack + mark-stack entries
  uint64_t max_text_bytes = 1ull << 32; // single str/bytes payload (also bounded by remaining input)
  uint64_t max_line_bytes = 1 << 20;    // protocol-0 text arguments
  uint64_t max_container_items = 100'000'000;  // total items appended across all containers
};

// What an on_array_build hook consumed after a BUILD: a span of the decoded data.
struct RawPayload {
  uint64_t offset = 0, size = 0;  // relative to the start of the decoded span
  bool is_pickle = false;         // a nested pickle (joblib object arrays)
};

// joblib hook: called on BUILD when the target is a NewObj/Call/Inst whose class is the
// Global joblib.numpy_pickle.NumpyArrayWrapper (or sklearn.externals.joblib.numpy_pickle's),
// after the state is attached to the target. The hook reads the array bytes that follow in
// the stream from `cursor` (positioned just after BUILD) and returns the span it consumed;
// the machine records it on the node (Node::has_payload) and resumes after it.
using ArrayBuildHook = std::function<Result<RawPayload>(const Program& program, NodeId target, io::ByteCursor& cursor)>;

struct DecodeOptions {
  MachineLimits limits;
  std::string entry;       // name used in errors/findings (zip member or "")
  uint64_t base_offset = 0;  // added to offsets when the span is a slice of a larger file
  ArrayBuildHook on_array_build;  // optional; empty = BUILD never consumes bytes
  // CPython's view (scan only, never disarm): accept what CPython's unpicklers accept and this
  // machine's strict reading refuses, so a scan can report what they would import and call:
  // STACK_GLOBAL on STRING operands (CPython decodes them to str), a FRAME longer than the data
  // (pickle.py reads what is there), and STACK_GLOBAL operands that resolve through an
  // attribute a BUILD on a module set earlier (setattr games). Everything else stays strict.
  bool cpython_view = false;
  // When set and decoding fails, receives the program built up to the failing opcode: every
  // global and call in it is one an unpickler imports or runs before it reaches the error.
  Program* partial = nullptr;
};

// Decode one pickle starting at the beginning of `data`, stopping at the first STOP.
// Bytes after STOP are *not* examined here: `Program::end_offset` tells the caller where the
// next stream would begin, so the caller decides whether trailing bytes are a finding.
// Structural oddities that do not prevent a certain parse (FRAME misuse, leftover stack items
// or marks at STOP, PUT of an index that overwrites another, EXT/NEXT_BUFFER opcodes, Python-2
// name remaps) are appended to `findings`.
Result<Program> decode(std::span<const uint8_t> data, const DecodeOptions& options, Findings& findings);

// The machine's UTF-8 check (surrogates: Python's "surrogatepass", as BINUNICODE allows).
bool valid_utf8_text(std::string_view s, bool allow_surrogates);

}  // namespace modelcdr::pickle
