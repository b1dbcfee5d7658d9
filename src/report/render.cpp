#include "report/render.hpp"

#include <nlohmann/json.hpp>

namespace modelcdr::report {

namespace {

using json = nlohmann::ordered_json;

json finding_json(const Finding& f) {
  return {{"severity", severity_name(f.severity)}, {"rule", f.rule}, {"message", f.message}, {"entry", f.entry}, {"offset", f.offset}};
}

json findings_json(const Findings& fs) {
  json a = json::array();
  for (const auto& f : fs) a.push_back(finding_json(f));
  return a;
}

json error_json(const std::optional<Error>& e) {
  if (!e) return nullptr;
  return {{"rule", e->rule}, {"message", e->message}, {"entry", e->entry}, {"offset", e->has_offset ? json(e->offset) : json(nullptr)}};
}

json tensors_json(const TensorStats& t) {
  json d = json::object();
  for (const auto& [k, v] : t.dtypes) d[k] = v;
  return {{"count", t.count}, {"total_bytes", t.total_bytes}, {"dtypes", d}};
}

json tool() { return {{"name", "modelcdr"}, {"version", kVersion}}; }

std::string dump(const json& j) {
  // Strings from hostile files may hold invalid UTF-8: replace, never throw.
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

const char* sarif_level(Severity s) {
  switch (s) {
    case Severity::critical:
    case Severity::high: return "error";
    case Severity::medium: return "warning";
    default: return "note";
  }
}

}  // namespace

std::string scan_json(const std::vector<FileReport>& files) {
  json arr = json::array();
  size_t clean = 0, with = 0, errors = 0;
  for (const auto& f : files) {
    clean += f.status == FileStatus::clean;
    with += f.status == FileStatus::findings;
    errors += f.status == FileStatus::error;
    arr.push_back({{"path", f.input},
                   {"format", f.format},
                   {"status", status_name(f.status)},
                   {"error", error_json(f.error)},
                   {"tensors", tensors_json(f.tensors)},
                   {"findings", findings_json(f.findings)}});
  }
  json doc = {{"schema", "modelcdr.scan/1"},
              {"tool", tool()},
              {"files", arr},
              {"summary", {{"files", files.size()}, {"clean", clean}, {"with_findings", with}, {"errors", errors}}}};
  return dump(doc);
}

std::string disarm_json(const std::vector<FileReport>& files) {
  json arr = json::array();
  size_t clean = 0, removed = 0, rejected = 0, skipped = 0;
  for (const auto& f : files) {
    clean += f.status == FileStatus::clean;
    removed += f.status == FileStatus::removed;
    rejected += f.status == FileStatus::rejected;
    skipped += f.status == FileStatus::skipped;
    arr.push_back({{"input", f.input},
                   {"output", f.output.empty() ? json(nullptr) : json(f.output)},
                   {"format", f.format},
                   {"status", status_name(f.status)},
                   {"error", error_json(f.error)},
                   {"note", f.note.empty() ? json(nullptr) : json(f.note)},
                   {"tensors", tensors_json(f.tensors)},
                   {"removed", findings_json(f.removed)},
                   {"findings", findings_json(f.findings)},
                   {"architecture", f.architecture.empty() ? json(nullptr) : json(f.architecture)}});
  }
  json doc = {{"schema", "modelcdr.disarm/1"},
              {"tool", tool()},
              {"files", arr},
              {"summary",
               {{"files", files.size()}, {"clean", clean}, {"removed", removed}, {"rejected", rejected}, {"skipped", skipped}}}};
  return dump(doc);
}

std::string sarif(const std::vector<FileReport>& files) {
  json rules = json::array();
  std::map<std::string, size_t> rule_index;
  json results = json::array();
  auto add_result = [&](const std::string& path, const std::string& rule, const std::string& level, const std::string& message,
                        const std::string& entry, uint64_t offset) {
    if (!rule_index.count(rule)) {
      rule_index[rule] = rules.size();
      rules.push_back({{"id", rule}, {"shortDescription", {{"text", rule}}}});
    }
    json location = {{"physicalLocation",
                      {{"artifactLocation", {{"uri", path}}}, {"region", {{"byteOffset", offset}, {"byteLength", 1}}}}}};
    if (!entry.empty()) location["logicalLocations"] = json::array({{{"name", entry}, {"kind", "member"}}});
    results.push_back({{"ruleId", rule},
                       {"ruleIndex", rule_index[rule]},
                       {"level", level},
                       {"message", {{"text", message}}},
                       {"locations", json::array({location})}});
  };
  for (const auto& f : files) {
    for (const auto& x : f.findings) add_result(f.input, x.rule, sarif_level(x.severity), x.message, x.entry, x.offset);
    if (f.error) add_result(f.input, f.error->rule, "error", f.error->message, f.error->entry, f.error->offset);
  }
  json doc = {{"$schema", "https://json.schemastore.org/sarif-2.1.0.json"},
              {"version", "2.1.0"},
              {"runs", json::array({{{"tool", {{"driver", {{"name", "modelcdr"}, {"version", kVersion},
                                                           
                                                           {"rules", rules}}}}},
                                     {"results", results}}})}};
  return dump(doc);
}

std::string text_line(const std::string& path, const Finding& f) {
  std::string s = path + ": ";
  if (!f.entry.empty()) s += f.entry + " ";
  s += "offset " + std::to_string(f.offset) + ": " + severity_name(f.severity) + ": " + f.message + " [" + f.rule + "]";
  return s;
}

std::string error_line(const std::string& path, const Error& e) { return path + ": " + e.describe(); }

}  // namespace modelcdr::report
