// Nested pickles (docs/FORMATS.md §8.1; issue 12): a bytes value that holds a serialized pickle is
// a dormant payload if passed through, and lost data if dropped. It is disarmed like a file:
// decoded by the pickle machine under the same limits, scanned, lifted (everything that is
// not plain data dropped and reported) and re-emitted by our own pickle writer. The rebuilt
// bytes replace the input's; input bytes never reach the output. Encoded forms (base64, hex)
// and anything that does not decode as one complete pickle stay dropped by the caller.
#include "cdr/nested_pickle.hpp"

#include <algorithm>

#include "formats/pickle_writer.hpp"
#include "pickle/pickle_machine.hpp"

namespace modelcdr::cdr {

namespace {

// The pickle opcodes a stream can open with (PROTO, or the first opcode of a protocol 0-1
// pickle that a real writer would start with); anything else is not tried.
bool starts_like_pickle(std::string_view d) {
  if (d.size() < 2) return false;
  unsigned char c = static_cast<unsigned char>(d[0]);
  return c == 0x80 || std::string_view("(}]NcKJIVSUFGX").find(static_cast<char>(c)) != std::string_view::npos;
}

// How many rebuilds are running on this thread: the lifter of a nested pickle may call us again,
// and the nesting is bounded without threading a counter through every reader's options.
thread_local uint32_t nesting = 0;

struct NestingGuard {
  NestingGuard() { ++nesting; }
  ~NestingGuard() { --nesting; }
};

}  // namespace

std::optional<std::string> rebuild_nested_pickle(std::string_view data, const NestedPickleOptions& o, Findings& findings) {
  if (nesting >= kMaxNestedPickleLevel || !starts_like_pickle(data)) return std::nullopt;
  NestingGuard guard;
  auto bytes = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size());
  pickle::DecodeOptions d;
  d.entry = o.entry;
  d.base_offset = o.offset;
  d.limits.max_nodes = std::min<uint64_t>(d.limits.max_nodes, 2'000'000 + bytes.size() / 4);
  Findings inner;
  auto program = pickle::decode(bytes, d, inner);
  if (!program.ok()) return std::nullopt;
  scan_program(*program, o.entry, inner);
  if (program->end_offset < bytes.size())
    add_finding(inner, Severity::medium, Rule::cdr_dropped,
                std::to_string(bytes.size() - program->end_offset) + " bytes after the nested pickle's STOP removed",
                o.entry, o.offset + program->end_offset);
  StorageTable no_storages;  // no storage records: a storage pid is cdr.no-storage
  no_storages.what = "a nested pickle";
  LiftOptions lo;
  lo.entry = o.entry;
  lo.max_depth = o.max_depth;
  lo.registry = o.registry;
  auto sub = lift(*program, no_storages, lo);
  if (!sub.ok()) return std::nullopt;
  formats::PickleWriteOptions wo;
  wo.registry = o.registry;
  auto out = formats::emit_pickle(*sub, wo);  // tensors have no pickle form: then it stays dropped
  if (!out.ok()) return std::nullopt;
  findings.insert(findings.end(), inner.begin(), inner.end());
  findings.insert(findings.end(), sub->findings.begin(), sub->findings.end());
  add_finding(findings, Severity::low, Rule::cdr_nested_pickle_rebuilt,
              "a bytes value holding a pickle (" + std::to_string(data.size()) +
                  " bytes) was disarmed and rebuilt by modelcdr's pickle writer",
              o.entry, o.offset);
  return std::string(out->begin(), out->end());
}

}  // namespace modelcdr::cdr
