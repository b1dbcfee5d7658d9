// report::printable: untrusted strings in text output cannot drive the terminal.
#include <gtest/gtest.h>

#include "modelcdr/render.hpp"

using modelcdr::report::printable;
using modelcdr::Rule;

TEST(Printable, EscapesControlsAndInvalidUtf8) {
  EXPECT_EQ(printable("a\x1b]0;x\x07" "b"), "a\\x1b]0;x\\x07b");
  EXPECT_EQ(printable("line\nfake\r"), "line\\x0afake\\x0d");
  EXPECT_EQ(printable("del\x7f"), "del\\x7f");
  EXPECT_EQ(printable("c1\xc2\x9b" "31m"), "c1\\xc2\\x9b31m");                 // U+009B CSI
  EXPECT_EQ(printable("bad\xff\xfe"), "bad\\xff\\xfe");                          // not UTF-8
  EXPECT_EQ(printable("over\xc0\xaf"), "over\\xc0\\xaf");                        // overlong '/'
  EXPECT_EQ(printable("sur\xed\xa0\x80"), "sur\\xed\\xa0\\x80");                 // a surrogate
  EXPECT_EQ(printable("cut\xe6\x97"), "cut\\xe6\\x97");                          // truncated sequence
  EXPECT_EQ(printable("bidi\xe2\x80\xae" "txt"), "bidi\\u202etxt");             // RIGHT-TO-LEFT OVERRIDE
  EXPECT_EQ(printable("back\\slash"), "back\\\\slash");
  EXPECT_EQ(printable(std::string("nul\0x", 5)), "nul\\x00x");
}

TEST(Printable, KeepsOrdinaryText) {
  EXPECT_EQ(printable("model.pt: offset 12: high: GLOBAL 'os system' [pickle.call]"),
            "model.pt: offset 12: high: GLOBAL 'os system' [pickle.call]");
  EXPECT_EQ(printable("caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82"), "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x99\x82");
}

TEST(Printable, TextLineEscapesEveryPart) {
  modelcdr::Finding f;
  f.severity = modelcdr::Severity::high;
  f.rule = Rule::zip_unsafe_name;
  f.entry = "archive/\x1b[2J";
  f.message = "name\nall files clean";
  auto line = modelcdr::report::text_line("in\x1b.pt", f);
  EXPECT_EQ(line.find('\x1b'), std::string::npos);
  EXPECT_EQ(line.find('\n'), std::string::npos);
}

#include <nlohmann/json.hpp>  // the reference rendering below

// scan_json writes its document without a DOM: it must give the bytes nlohmann's dump(2) gives
// for the same document (the schema of docs/CLI.md), hostile strings included. The reference
// below is the DOM rendering scan_json used before.
namespace {

using ojson = nlohmann::ordered_json;

ojson reference_file(const modelcdr::FileReport& f) {
  ojson error = nullptr;
  if (f.error)
    error = {{"rule", modelcdr::rule_id(f.error->rule)}, {"message", f.error->message}, {"entry", f.error->entry},
             {"offset", f.error->has_offset ? ojson(f.error->offset) : ojson(nullptr)}};
  ojson dtypes = ojson::object();
  for (const auto& [k, v] : f.tensors.dtypes) dtypes[k] = v;
  ojson findings = ojson::array();
  for (const auto& x : f.findings)
    findings.push_back({{"severity", modelcdr::severity_name(x.severity)}, {"rule", modelcdr::rule_id(x.rule)},
                        {"message", x.message}, {"entry", x.entry}, {"offset", x.offset}});
  return {{"path", f.input}, {"format", f.format}, {"status", modelcdr::status_name(f.status)},
          {"verdict", modelcdr::verdict_name(f.verdict)}, {"error", error},
          {"tensors", {{"count", f.tensors.count}, {"total_bytes", f.tensors.total_bytes}, {"dtypes", dtypes}}},
          {"findings", findings}};
}

std::string reference_scan_json(const std::vector<modelcdr::FileReport>& files) {
  ojson arr = ojson::array();
  size_t clean = 0, with = 0, errors = 0, skipped = 0;
  ojson verdicts = {{"clean", 0}, {"safe", 0}, {"unknown", 0}, {"dangerous", 0}};
  for (const auto& f : files) {
    skipped += f.status == modelcdr::FileStatus::skipped;
    clean += f.status == modelcdr::FileStatus::clean;
    with += f.status == modelcdr::FileStatus::findings;
    errors += f.status == modelcdr::FileStatus::error;
    arr.push_back(reference_file(f));
    verdicts[modelcdr::verdict_name(f.verdict)] = verdicts.value(modelcdr::verdict_name(f.verdict), 0) + 1;
  }
  ojson doc = {{"schema", "modelcdr.scan/1"},
               {"tool", {{"name", "modelcdr"}, {"version", modelcdr::kVersion}}},
               {"files", arr},
               {"summary", {{"files", files.size()}, {"clean", clean}, {"with_findings", with}, {"errors", errors},
                            {"skipped", skipped}, {"verdicts", verdicts}}}};
  return doc.dump(2, ' ', false, ojson::error_handler_t::replace) + "\n";
}

}  // namespace

TEST(ScanJson, SameBytesAsTheDomRenderingForHostileStrings) {
  using namespace modelcdr;
  std::vector<FileReport> files;
  EXPECT_EQ(report::scan_json(files), reference_scan_json(files));  // no files: empty array
  FileReport clean;
  clean.input = "/models/a b/model.pt";
  clean.format = "torch-zip";
  clean.status = FileStatus::clean;
  clean.tensors.count = 3;
  clean.tensors.total_bytes = 1ull << 40;
  clean.tensors.dtypes = {{"float32", 2}, {"bfloat16", 1}};
  files.push_back(clean);
  FileReport bad;
  bad.input = "evil\"\\\n\t\x01\x1f\x7f caf\xc3\xa9 \xff\xfe cut\xe6\x97";
  bad.format = "pickle";
  bad.status = FileStatus::findings;
  bad.verdict = Verdict::dangerous;
  Finding f;
  f.severity = Severity::critical;
  f.rule = Rule::zip_unsafe_name;
  f.message = "REDUCE calls 'posix system' with arguments ('rm -rf / \xed\xa0\x80 \xc0\xaf')";
  f.entry = "archive/data.pkl\b\f\r";
  f.offset = 18446744073709551615ull;
  bad.findings = {f, f};
  bad.findings[1].entry.clear();
  bad.findings[1].severity = Severity::info;
  files.push_back(bad);
  FileReport broken;
  broken.input = "x.pkl";
  broken.format = "unknown";
  broken.status = FileStatus::error;
  broken.verdict = Verdict::unknown;
  broken.error = make_error(Rule::zip_unsafe_name, "truncated \xf0\x9f", 7, "entry\x80");
  files.push_back(broken);
  broken.error = make_error(Rule::zip_unsafe_name, "no offset");
  broken.status = FileStatus::skipped;
  broken.verdict = Verdict::safe;
  files.push_back(broken);
  EXPECT_EQ(report::scan_json(files), reference_scan_json(files));
}
