// The rule catalogue (src/report/rules.def): docs/RULES.md is generated from it, every rule
// id in the code is in it, and verdicts and disarm policy come from its columns.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "modelcdr/finding.hpp"
#include "modelcdr/result.hpp"
#include "report/rules_doc.hpp"

using namespace modelcdr;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

TEST(RuleCatalogue, CommittedRulesMdIsGenerated) {
  const std::string doc = read_file(std::string(MODELCDR_SOURCE_DIR) + "/docs/RULES.md");
  // On failure: build/modelcdr-lab rules-doc > docs/RULES.md
  EXPECT_TRUE(doc == report::rules_markdown()) << "docs/RULES.md differs from `modelcdr-lab rules-doc`";
}

TEST(RuleCatalogue, EveryRuleIsDocumentedOnce) {
  const std::string doc = report::rules_markdown();
  for (const RuleInfo& r : all_rules()) {
    const std::string cell = "| `" + std::string(r.id) + "` |";
    auto at = doc.find(cell);
    ASSERT_NE(at, std::string::npos) << r.id;
    EXPECT_EQ(doc.find(cell, at + 1), std::string::npos) << r.id;
  }
}

TEST(RuleCatalogue, NoRuleIdInTheCodeOutsideTheTable) {
  // The script lists rule-shaped literals not in the table and literals not yet converted.
  const std::string cmd = "python3 " + std::string(MODELCDR_SOURCE_DIR) + "/scripts/rules_convert.py --check";
  if (std::system("python3 -c '' 2>/dev/null") != 0) GTEST_SKIP() << "python3 not available";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST(RuleCatalogue, IdsAreUniqueAndRoundTrip) {
  std::set<std::string_view> seen;
  size_t i = 0;
  for (const RuleInfo& r : all_rules()) {
    EXPECT_TRUE(seen.insert(r.id).second) << r.id;
    EXPECT_EQ(static_cast<size_t>(r.rule), i++) << r.id;
    EXPECT_EQ(rule_from_id(r.id), r.rule) << r.id;
    EXPECT_FALSE(r.description.empty()) << r.id;
    EXPECT_FALSE(r.help.empty()) << r.id;
    double s = std::stod(std::string(r.security_severity));
    EXPECT_TRUE(s >= 0.0 && s <= 10.0) << r.id;
  }
  EXPECT_EQ(rule_from_id("no.such-rule"), std::nullopt);
  EXPECT_EQ(std::string(rule_id(Rule::pickle_call)), std::string("pickle") + ".call");
}

TEST(RuleCatalogue, VerdictsFollowTheTable) {
  EXPECT_EQ(verdict_of(Rule::pickle_call, Severity::critical), Verdict::dangerous);
  EXPECT_EQ(verdict_of(Rule::pickle_call, Severity::high), Verdict::unknown);
  EXPECT_EQ(verdict_of(Rule::pickle_global_not_allowed, Severity::info), Verdict::clean);
  EXPECT_EQ(verdict_of(Rule::pickle_second_stream, Severity::high), Verdict::dangerous);
  EXPECT_EQ(verdict_of(Rule::zip_local_central_mismatch, Severity::high), Verdict::dangerous);
  EXPECT_EQ(verdict_of(Rule::zip_prefix_bytes, Severity::high), Verdict::dangerous);
  EXPECT_EQ(verdict_of(Rule::cdr_registry_object, Severity::info), Verdict::safe);
  EXPECT_EQ(verdict_of(Rule::torch_big_endian, Severity::info), Verdict::clean);

  Findings fs;
  EXPECT_EQ(file_verdict(fs), Verdict::clean);
  add_finding(fs, Severity::medium, Rule::cdr_module_converted, "whole model");
  EXPECT_EQ(file_verdict(fs), Verdict::safe);
  Error e = make_error(Rule::pickle_truncated, "cut");
  EXPECT_EQ(file_verdict(fs, &e), Verdict::unknown);  // unreadable: cannot be proven safe
  add_finding(fs, Severity::critical, Rule::pickle_call, "REDUCE calls 'posix system'");
  EXPECT_EQ(file_verdict(fs), Verdict::dangerous);
}

TEST(RuleCatalogue, DisarmRejectionsComeFromTheDispositionColumn) {
  for (Rule r : {Rule::pickle_second_stream, Rule::pickle_frame_straddle, Rule::pickle_frame_nested,
                 Rule::pickle_out_of_band_buffer, Rule::pickle_ext_opcode, Rule::torch_entry_outside_prefix})
    EXPECT_EQ(rule_info(r).disposition, Disposition::reject) << rule_id(r);
  EXPECT_EQ(rule_info(Rule::pickle_trailing_data).disposition, Disposition::reject_trailing);
  EXPECT_EQ(rule_info(Rule::zip_overlap).disposition, Disposition::reject_high);
  EXPECT_EQ(rule_info(Rule::cdr_dropped).disposition, Disposition::drop);
}
