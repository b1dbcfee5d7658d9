// libFuzzer target for the symbolic pickle machine: any byte string must give a Program or an
// Error, never a crash, a leak, UB or an unbounded allocation. Small limits keep each run cheap
// and exercise the limit paths; the graph is walked so that dangling NodeIds would be caught.
#include <cstddef>
#include <cstdint>
#include <span>

#include "pickle/pickle_machine.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcdr::pickle;
  DecodeOptions options;
  options.entry = "fuzz.pkl";
  options.base_offset = 7;
  options.limits.max_ops = 200'000;
  options.limits.max_nodes = 100'000;
  options.limits.max_memo_entries = 10'000;
  options.limits.max_stack_depth = 10'000;
  options.limits.max_line_bytes = 4096;
  options.limits.max_container_items = 200'000;
  modelcdr::Findings findings;
  auto result = decode(std::span<const uint8_t>(data, size), options, findings);
  if (!result.ok()) {
    if (!rule_id(result.error().rule).starts_with("pickle.")) __builtin_trap();
    return 0;
  }
  const Program& prog = *result;
  if (prog.root >= prog.nodes.size() || prog.end_offset > size || prog.stop_offset + 1 != prog.end_offset)
    __builtin_trap();
  for (const Node& n : prog.nodes) {
    auto check = [&](NodeId id) {
      if (id >= prog.nodes.size()) __builtin_trap();
    };
    for (NodeId id : n.items) check(id);
    for (NodeId id : n.appended()) check(id);
    for (NodeId id : n.build_states()) check(id);
    for (auto [k, v] : n.entries()) {
      check(k);
      check(v);
    }
  }
  return 0;
}
