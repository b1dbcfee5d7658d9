#include <algorithm>

#include "cdr/lifter.hpp"
#include "formats/parsed_model.hpp"

namespace modelcdr::formats {

Result<pickle::Program> decode_stream(std::span<const uint8_t> bytes, const std::string& entry, uint64_t base_offset,
                                      const ReadOptions& options, Findings& findings, bool trailing_expected) {
  pickle::DecodeOptions d;
  d.limits = options.limits;
  d.entry = entry;
  d.base_offset = base_offset;
  d.on_array_build = options.on_array_build;
  // A graph node costs 24 bytes and one opcode byte can create one, so the node budget is
  // tied to the input: a fixed allowance plus one node per 4 input bytes (real data.pkl
  // files use far less). A hostile stream hits this limit and is rejected with a clear error.
  d.limits.max_nodes = std::min<uint64_t>(d.limits.max_nodes, 2'000'000 + bytes.size() / 4);
  auto decoded = pickle::decode(bytes, d, findings);
  if (!decoded.ok()) {
    if (options.salvage) cdr::scan_cpython_view(bytes, entry, base_offset, decoded.error(), *options.salvage);
    return decoded.error();
  }
  pickle::Program program = std::move(*decoded);
  cdr::scan_program(program, entry, findings);
  if (!trailing_expected && program.end_offset < bytes.size()) {
    uint64_t extra = bytes.size() - program.end_offset;
    // A second stream is worse than stray bytes: pickle.load() on a file object would run it.
    Findings scratch;
    bool second = bytes[program.end_offset] == 0x80 || bytes[program.end_offset] == 'c' || bytes[program.end_offset] == '(';
    if (second) {
      auto tail = bytes.subspan(program.end_offset);
      pickle::DecodeOptions d2 = d;
      d2.base_offset = base_offset + program.end_offset;
      auto p2 = pickle::decode(tail, d2, scratch);
      second = p2.ok();
      if (second) cdr::scan_program(*p2, entry, findings);
    }
    add_finding(findings, Severity::high, second ? Rule::pickle_second_stream : Rule::pickle_trailing_data,
                std::to_string(extra) + (second ? " bytes after STOP form a second pickle stream" : " bytes after STOP"),
                entry, base_offset + program.end_offset);
  }
  return program;
}

Result<ParsedModel> read_bare_pickle(std::span<const uint8_t> file, const ReadOptions& options) {
  ParsedModel parsed;
  parsed.format = container::Format::pickle;
  MCDR_ASSIGN(pickle::Program program, decode_stream(file, "", 0, options, parsed.findings, false));
  cdr::StorageTable no_storages;  // no storage records: a storage pid is cdr.no-storage
  no_storages.what = "a bare pickle";
  cdr::LiftOptions lo;
  lo.scan_only = options.scan_only;
  MCDR_ASSIGN(parsed.model, cdr::lift(program, no_storages, lo));
  return parsed;
}

}  // namespace modelcdr::formats
