// Findings: what scan reports and what disarm removed. Rules come from the catalogue
// (src/report/rules.def, modelcdr/rules.hpp); JSON and SARIF renderings use their stable ids.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "modelcdr/rules.hpp"

namespace modelcdr {

struct Finding {
  Severity severity = Severity::info;
  Rule rule{};           // e.g. Rule::pickle_global_not_allowed
  std::string message;  // "GLOBAL 'posix system' is not allowed"
  std::string entry;    // zip member / tar member, empty for a bare file
  uint64_t offset = 0;  // byte offset inside entry (or file)
};

using Findings = std::vector<Finding>;
struct Error;  // modelcdr/result.hpp

inline void add_finding(Findings& out, Severity sev, Rule rule, std::string message,
                        std::string entry = {}, uint64_t offset = 0) {
  out.push_back(Finding{sev, rule, std::move(message), std::move(entry), offset});
}

// The worst verdict the findings imply (clean when there are none); an error, when given,
// counts as a finding of its rule at high severity (a file that cannot be read is unknown
// unless its rule says more).
Verdict file_verdict(const Findings& fs, const Error* error = nullptr);

}  // namespace modelcdr
