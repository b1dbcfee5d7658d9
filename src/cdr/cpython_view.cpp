// CPython's view of a stream the strict machine rejects. A scanner gating uploads must not stop
// at "malformed": CPython's unpicklers import and call everything before the opcode they fail
// on, and accept a few things the strict reading refuses (STRING operands of STACK_GLOBAL, a
// FRAME longer than the data under pickle.py, attributes a BUILD set on a module). This pass
// re-reads such a stream with DecodeOptions::cpython_view and reports what it would run. It is
// used by scan only: disarm keeps rejecting these streams (fail closed).
#include <algorithm>
#include <span>

#include "cdr/lifter.hpp"
#include "pickle/pickle_machine.hpp"

namespace modelcdr::cdr {

namespace {

// Small limits: the strict pass already read this stream once under the full ones.
pickle::DecodeOptions view_options(const std::string& entry, uint64_t base_offset, pickle::Program* partial) {
  pickle::DecodeOptions o;
  o.limits.max_ops = 1 << 22;
  o.limits.max_nodes = 1 << 20;
  o.limits.max_memo_entries = 1 << 20;
  o.limits.max_stack_depth = 1 << 20;
  o.limits.max_container_items = 1 << 22;
  o.entry = entry;
  o.base_offset = base_offset;
  o.cpython_view = true;
  o.partial = partial;
  return o;
}

bool imports_anything(const pickle::Program& p) {
  return std::any_of(p.nodes.begin(), p.nodes.end(), [](const pickle::Node& n) {
    return n.kind == pickle::NodeKind::Global || n.kind == pickle::NodeKind::Inst || n.kind == pickle::NodeKind::Ext;
  });
}

std::string at(uint64_t offset) { return "offset " + std::to_string(offset); }

// Opcodes a stream can begin with (program_scan.cpp keeps the same list for nested pickles).
bool may_begin(uint8_t op) {
  static const uint8_t ops[] = {0x80, 0x95, '(', ')', ']', '}', 0x8f, 'N', 'I', 'J', 'K', 'M', 'L', 'S', 'T',
                                'U',  'V',  'X', 'B', 'C', 0x8c, 'c', 'i', 0x82, 0x83, 0x84};
  return std::find(std::begin(ops), std::end(ops), op) != std::end(ops);
}

// A stream that is broken where it starts (a length field that points into padding, bytes
// spliced in front): the first later position, within a small window, where a stream that
// imports something begins. What a lenient loader or a later parser would find there.
void resync(std::span<const uint8_t> bytes, uint64_t from, const std::string& entry, uint64_t base_offset,
            Findings& out) {
  constexpr uint64_t kWindow = 4096;
  constexpr int kMaxTries = 64;
  int tries = 0;
  for (uint64_t pos = from; pos < bytes.size() && pos < from + kWindow && tries < kMaxTries; ++pos) {
    if (!may_begin(bytes[pos])) continue;
    ++tries;
    pickle::Program partial;
    Findings scratch;
    auto r = pickle::decode(bytes.subspan(pos), view_options(entry, base_offset + pos, &partial), scratch);
    const pickle::Program& p = r.ok() ? *r : partial;
    if (!imports_anything(p)) continue;
    scan_program(p, entry, out);
    add_finding(out, Severity::high, Rule::pickle_cpython_view,
                "a pickle stream begins at " + at(base_offset + pos) + ", after the part CPython fails on" +
                    (r.ok() ? "; it reads to STOP" : "; it breaks off at " + at(r.error().offset)) +
                    ": its imports and calls are listed above",
                entry, base_offset + pos);
    return;
  }
}

}  // namespace

void scan_cpython_view(std::span<const uint8_t> bytes, const std::string& entry, uint64_t base_offset,
                       const Error& strict, Findings& out) {
  pickle::Program partial;
  Findings scratch;  // structural notes of the second reading repeat the strict pass's
  auto r = pickle::decode(bytes, view_options(entry, base_offset, &partial), scratch);
  // Except where frames and opcodes disagree: there CPython's readers differ among themselves (the
  // C unpickler on a file drops a partial line at a frame's end; pickle.loads and pickle.py do not),
  // so the names below are one reader's view, and the finding says so.
  for (const Finding& f : scratch)
    if (f.rule == Rule::pickle_frame_straddle || f.rule == Rule::pickle_frame_nested) out.push_back(f);
  const std::string why = std::string(rule_id(strict.rule)) + " at " + at(strict.offset) + ": " + strict.message;
  if (r.ok()) {
    scan_program(*r, entry, out);
    const bool frame = strict.rule == Rule::pickle_frame_too_long;
    add_finding(out, Severity::high, Rule::pickle_cpython_view,
                std::string("modelcdr's strict reading rejects this stream (") + why + "), but " +
                    (frame ? "pickle.py's unpickler reads it to STOP (CPython's C unpickler fails at the FRAME)"
                           : "CPython's unpickler reads it to STOP") +
                    "; the imports and calls it runs are listed above",
                entry, base_offset + r->stop_offset);
    return;
  }
  const Error& e = r.error();
  if (imports_anything(partial)) {
    scan_program(partial, entry, out);
    add_finding(out, Severity::high, Rule::pickle_cpython_view,
                "CPython's unpickler fails on this stream too, at " + at(e.offset) + " (" + e.message +
                    "), but imports and calls what is listed above before it gets there",
                entry, e.offset);
    return;
  }
  add_finding(out, Severity::info, Rule::pickle_cpython_view,
              "CPython's unpickler fails on this stream too, at " + at(e.offset) + " (" + e.message +
                  "), before it imports or calls anything",
              entry, e.offset);
  if (e.offset >= base_offset) resync(bytes, e.offset - base_offset + 1, entry, base_offset, out);
}

}  // namespace modelcdr::cdr
