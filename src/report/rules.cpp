#include "modelcdr/rules.hpp"

#include "modelcdr/finding.hpp"
#include "modelcdr/result.hpp"

#include <algorithm>
#include <array>

namespace modelcdr {

namespace {

constexpr RuleInfo kRules[] = {
#define MCDR_RULE(ident, id, sev, disp, verdict, secsev, desc, help) \
  {Rule::ident, id, Severity::sev, Disposition::disp, VerdictClass::verdict, secsev, desc, help},
#include "report/rules.def"
#undef MCDR_RULE
};

// The enum and the array come from one table in one order, so kRules[r] describes r.
static_assert(std::size(kRules) > 0);

}  // namespace

std::span<const RuleInfo> all_rules() { return kRules; }

const RuleInfo& rule_info(Rule r) { return kRules[static_cast<size_t>(r)]; }

std::optional<Rule> rule_from_id(std::string_view id) {
  auto it = std::find_if(std::begin(kRules), std::end(kRules), [&](const RuleInfo& i) { return i.id == id; });
  if (it == std::end(kRules)) return std::nullopt;
  return it->rule;
}

const char* severity_name(Severity s) {
  switch (s) {
    case Severity::info: return "info";
    case Severity::low: return "low";
    case Severity::medium: return "medium";
    case Severity::high: return "high";
    case Severity::critical: return "critical";
  }
  return "info";
}

const char* disposition_name(Disposition d) {
  switch (d) {
    case Disposition::reject: return "reject";
    case Disposition::reject_high: return "reject if high";
    case Disposition::reject_trailing: return "reject (unless --allow-trailing-data)";
    case Disposition::drop: return "drop";
    case Disposition::convert: return "convert";
    case Disposition::note: return "note";
  }
  return "note";
}

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::clean: return "clean";
    case Verdict::safe: return "safe";
    case Verdict::unknown: return "unknown";
    case Verdict::dangerous: return "dangerous";
  }
  return "unknown";
}

const char* verdict_class_name(VerdictClass v) {
  switch (v) {
    case VerdictClass::by_severity: return "by severity";
    default: return verdict_name(static_cast<Verdict>(static_cast<int>(v)));
  }
}

std::optional<Verdict> verdict_from_name(std::string_view name) {
  for (Verdict v : {Verdict::clean, Verdict::safe, Verdict::unknown, Verdict::dangerous})
    if (name == verdict_name(v)) return v;
  return std::nullopt;
}

Verdict verdict_of(Rule r, Severity s) {
  switch (rule_info(r).verdict) {
    case VerdictClass::clean: return Verdict::clean;
    case VerdictClass::safe: return Verdict::safe;
    case VerdictClass::unknown: return Verdict::unknown;
    case VerdictClass::dangerous: return Verdict::dangerous;
    case VerdictClass::by_severity:
      // low: a library class modelcdr rebuilds faithfully (globals_policy.hpp, is_safe_library_global)
      switch (s) {
        case Severity::critical: return Verdict::dangerous;
        case Severity::low: return Verdict::safe;
        case Severity::info: return Verdict::clean;
        default: return Verdict::unknown;
      }
  }
  return Verdict::unknown;
}

Verdict file_verdict(const Findings& fs, const Error* error) {
  Verdict v = Verdict::clean;
  for (const Finding& f : fs) v = std::max(v, verdict_of(f.rule, f.severity));
  if (error) v = std::max(v, std::max(Verdict::unknown, verdict_of(error->rule, Severity::high)));
  return v;
}

}  // namespace modelcdr
