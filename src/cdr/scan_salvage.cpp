#include "cdr/scan_salvage.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include "container/zip_reader.hpp"
#include "engine/classify.hpp"
#include "formats/parsed_model.hpp"

namespace modelcdr::cdr {

void salvage_zip_members(std::span<const uint8_t> file, Findings& findings) {
  if (file.size() < 4 || file[0] != 'P' || file[1] != 'K') return;
  Findings zip_findings;
  container::ZipLimits limits;
  auto zip = container::read_zip(file, zip_findings, limits, false);
  if (!zip.ok()) return;
  auto named = [&](const std::string& entry) {
    return std::any_of(findings.begin(), findings.end(), [&](const Finding& f) { return f.entry == entry; });
  };
  Findings members;
  for (const auto& e : zip->entries) {
    if (named(e.name)) continue;
    std::vector<uint8_t> scratch;
    // The "encrypted" flag on a stored entry is a trick to make strict readers skip it (picklescan
    // malicious1_0x1.zip): its bytes are read as they are; real ciphertext is no pickle anyway.
    container::ZipEntry clear = e;
    if (clear.method == 0) clear.flags &= static_cast<uint16_t>(~1u);
    auto bytes = container::entry_bytes(*zip, file, clear, scratch, limits);
    if (!bytes.ok() || !engine::may_unpickle(*bytes)) continue;
    Findings mine;
    formats::ReadOptions options;
    options.salvage = &mine;
    auto program = formats::decode_stream(*bytes, e.name, 0, options, mine, true);
    bool any = std::any_of(mine.begin(), mine.end(), [](const Finding& f) { return f.severity >= Severity::medium; });
    if (!any) continue;
    members.insert(members.end(), mine.begin(), mine.end());
    add_finding(members, Severity::high, Rule::zip_member_pickle,
                "zip member '" + e.name + "' is a pickle" + (program.ok() ? "" : " (broken)") +
                    " outside a checkpoint layout torch.load accepts; a loader that unpickles the member runs what is listed",
                e.name, 0);
  }
  if (members.empty()) return;
  findings.insert(findings.end(), zip_findings.begin(), zip_findings.end());
  findings.insert(findings.end(), members.begin(), members.end());
}

void salvage_unsniffed_pickle(std::span<const uint8_t> file, Findings& findings) {
  if (!engine::may_unpickle(file)) return;
  Findings mine;
  formats::ReadOptions options;
  options.salvage = &mine;
  auto program = formats::decode_stream(file, "", 0, options, mine, false);
  if (!std::any_of(mine.begin(), mine.end(), [](const Finding& f) { return f.severity >= Severity::medium; })) return;
  findings.insert(findings.end(), mine.begin(), mine.end());
  if (program.ok())
    add_finding(findings, Severity::high, Rule::pickle_cpython_view,
                "the file does not begin as modelcdr's sniffing expects a pickle to, but CPython's unpickler reads it "
                "to STOP at offset " + std::to_string(program->stop_offset) + ": the imports and calls listed run",
                "", 0);
}

}  // namespace modelcdr::cdr
