// Findings: what scan reports and what disarm removed. Rule ids are stable and documented in
// docs/RULES.md; JSON and SARIF renderings use them verbatim.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace modelcdr {

enum class Severity { info, low, medium, high, critical };

inline const char* severity_name(Severity s) {
  switch (s) {
    case Severity::info: return "info";
    case Severity::low: return "low";
    case Severity::medium: return "medium";
    case Severity::high: return "high";
    case Severity::critical: return "critical";
  }
  return "info";
}

struct Finding {
  Severity severity = Severity::info;
  std::string rule;     // e.g. "pickle.global-not-allowed"
  std::string message;  // "GLOBAL 'posix system' is not allowed"
  std::string entry;    // zip member / tar member, empty for a bare file
  uint64_t offset = 0;  // byte offset inside entry (or file)
};

using Findings = std::vector<Finding>;

inline void add_finding(Findings& out, Severity sev, std::string rule, std::string message,
                        std::string entry = {}, uint64_t offset = 0) {
  out.push_back(Finding{sev, std::move(rule), std::move(message), std::move(entry), offset});
}

}  // namespace modelcdr
