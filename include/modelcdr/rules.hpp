// Rule ids as an enum, generated from the rule catalogue (src/report/rules.def): one row per
// rule with its severity, what disarm does about it, the verdict it implies and its help text.
// Code names rules by `Rule::ident`; the stable text id ("pickle.call") only appears in output.
// Policy (what disarm rejects, a file's verdict) reads these properties, never message text.
#pragma once
#include <cstdint>
#include <optional>
#include <ostream>
#include <span>
#include <string_view>

namespace modelcdr {

enum class Severity { info, low, medium, high, critical };

// What disarm does with what a rule reports (see rules.def for each value).
enum class Disposition { reject, reject_high, reject_trailing, drop, convert, note };

// How far a file can be trusted, from best to worst. A rule's verdict class is one of these or
// by_severity (critical: dangerous, info: clean, else unknown).
enum class Verdict { clean, safe, unknown, dangerous };
enum class VerdictClass { clean, safe, unknown, dangerous, by_severity };

enum class Rule : uint16_t {
#define MCDR_RULE(ident, id, sev, disp, verdict, secsev, desc, help) ident,
#include "report/rules.def"
#undef MCDR_RULE
};

struct RuleInfo {
  Rule rule;
  std::string_view id;           // "pickle.call": stable, used in JSON/SARIF/text output
  Severity severity;             // the highest severity it is reported with
  Disposition disposition;
  VerdictClass verdict;
  std::string_view security_severity;  // SARIF properties.security-severity, "0.0".."10.0"
  std::string_view description;  // one line
  std::string_view help;         // what it means and what modelcdr does about it
};

// Every rule, in table order (alphabetical by id).
std::span<const RuleInfo> all_rules();
const RuleInfo& rule_info(Rule r);
inline std::string_view rule_id(Rule r) { return rule_info(r).id; }
// The rule with this id, for readers of our own output (tests, bindings); nullopt if none.
std::optional<Rule> rule_from_id(std::string_view id);

const char* severity_name(Severity s);
const char* disposition_name(Disposition d);
const char* verdict_name(Verdict v);
const char* verdict_class_name(VerdictClass v);
std::optional<Verdict> verdict_from_name(std::string_view name);

// The verdict one report of `r` at severity `s` implies.
Verdict verdict_of(Rule r, Severity s);

inline std::ostream& operator<<(std::ostream& os, Rule r) { return os << rule_id(r); }

}  // namespace modelcdr
