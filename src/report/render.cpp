#include "modelcdr/render.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <map>
#include <string_view>

#include <nlohmann/json.hpp>

namespace modelcdr::report {

namespace {

using json = nlohmann::ordered_json;

json finding_json(const Finding& f) {
  return {{"severity", severity_name(f.severity)}, {"rule", rule_id(f.rule)}, {"message", f.message}, {"entry", f.entry}, {"offset", f.offset}};
}

json findings_json(const Findings& fs) {
  json a = json::array();
  for (const auto& f : fs) a.push_back(finding_json(f));
  return a;
}

json error_json(const std::optional<Error>& e) {
  if (!e) return nullptr;
  return {{"rule", rule_id(e->rule)}, {"message", e->message}, {"entry", e->entry}, {"offset", e->has_offset ? json(e->offset) : json(nullptr)}};
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

namespace {

// scan --json without a DOM: the bytes nlohmann's dump(2) gives for the same document (tests
// compare them), written straight into one string. Building the ordered_json tree and dumping
// it took a fifth of the instructions of a whole-folder scan (402 KB of JSON for 251 files).
class PrettyJson {
 public:
  void begin(char bracket) {
    out_ += bracket;
    ++depth_;
    empty_ = true;
  }
  void end(char bracket) {
    --depth_;
    if (!empty_) newline();
    out_ += bracket;
    empty_ = false;  // the container just closed is a member of its parent
  }
  void key(std::string_view k) {
    element();
    str(k);
    out_ += ": ";
  }
  void element() {  // before each array element (key() does it for object members)
    if (!empty_) out_ += ',';
    newline();
    empty_ = false;
  }
  void str(std::string_view s) {
    // Printable ASCII other than '"' and '\\' is written as is; anything else (controls,
    // non-ASCII, invalid UTF-8 from a hostile file) goes through nlohmann's own escaping.
    // (A byte table, and one append of the whole string: this runs on the serial end of a
    // folder scan, ~15,000 strings for 250 files.)
    static constexpr auto kPlain = [] {
      std::array<bool, 256> t{};
      for (int c = 0x20; c <= 0x7E; ++c) t[c] = c != '"' && c != '\\';
      return t;
    }();
    size_t i = 0;
    while (i < s.size() && kPlain[static_cast<unsigned char>(s[i])]) ++i;
    if (i == s.size()) {
      const size_t at = out_.size();
      out_.resize(at + s.size() + 2);
      char* o = out_.data() + at;
      *o = '"';
      std::memcpy(o + 1, s.data(), s.size());
      o[s.size() + 1] = '"';
    } else {
      out_ += json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
    }
  }
  void num(uint64_t v) { out_ += std::to_string(v); }
  void null() { out_ += "null"; }
  std::string take() { return std::move(out_) + "\n"; }
  void reserve(size_t bytes) { out_.reserve(bytes); }

 private:
  void newline() {
    out_ += '\n';
    out_.append(2 * static_cast<size_t>(depth_), ' ');
  }
  std::string out_;
  int depth_ = 0;
  bool empty_ = true;
};

void finding_out(PrettyJson& w, const Finding& f) {
  w.begin('{');
  w.key("severity"), w.str(severity_name(f.severity));
  w.key("rule"), w.str(rule_id(f.rule));
  w.key("message"), w.str(f.message);
  w.key("entry"), w.str(f.entry);
  w.key("offset"), w.num(f.offset);
  w.end('}');
}

void error_out(PrettyJson& w, const std::optional<Error>& e) {
  if (!e) return w.null();
  w.begin('{');
  w.key("rule"), w.str(rule_id(e->rule));
  w.key("message"), w.str(e->message);
  w.key("entry"), w.str(e->entry);
  w.key("offset");
  if (e->has_offset) w.num(e->offset);
  else w.null();
  w.end('}');
}

void tensors_out(PrettyJson& w, const TensorStats& t) {
  w.begin('{');
  w.key("count"), w.num(t.count);
  w.key("total_bytes"), w.num(t.total_bytes);
  w.key("dtypes"), w.begin('{');
  for (const auto& [k, v] : t.dtypes) w.key(k), w.num(v);
  w.end('}');
  w.end('}');
}

void file_out(PrettyJson& w, const FileReport& f) {
  w.begin('{');
  w.key("path"), w.str(f.input);
  w.key("format"), w.str(f.format);
  w.key("status"), w.str(status_name(f.status));
  w.key("verdict"), w.str(verdict_name(f.verdict));
  w.key("error"), error_out(w, f.error);
  w.key("tensors"), tensors_out(w, f.tensors);
  w.key("findings"), w.begin('[');
  for (const auto& x : f.findings) w.element(), finding_out(w, x);
  w.end(']');
  w.end('}');
}

}  // namespace

std::string scan_json(const std::vector<FileReport>& files) {
  size_t clean = 0, with = 0, errors = 0, skipped = 0;
  std::map<Verdict, uint64_t> verdicts;
  PrettyJson w;
  w.reserve(1024 + files.size() * 2048);  // ~1.6 KB a file on the corpus: no doubling copies
  w.begin('{');
  w.key("schema"), w.str("modelcdr.scan/1");
  w.key("tool"), w.begin('{');
  w.key("name"), w.str("modelcdr");
  w.key("version"), w.str(kVersion);
  w.end('}');
  w.key("files"), w.begin('[');
  for (const auto& f : files) {
    skipped += f.status == FileStatus::skipped;  // found in a folder, not a model file (info)
    clean += f.status == FileStatus::clean;
    with += f.status == FileStatus::findings;
    errors += f.status == FileStatus::error;
    ++verdicts[f.verdict];
    w.element(), file_out(w, f);
  }
  w.end(']');
  w.key("summary"), w.begin('{');
  w.key("files"), w.num(files.size());
  w.key("clean"), w.num(clean);
  w.key("with_findings"), w.num(with);
  w.key("errors"), w.num(errors);
  w.key("skipped"), w.num(skipped);
  w.key("verdicts"), w.begin('{');
  for (Verdict v : {Verdict::clean, Verdict::safe, Verdict::unknown, Verdict::dangerous})
    w.key(verdict_name(v)), w.num(verdicts[v]);
  w.end('}');
  w.end('}');
  w.end('}');
  return w.take();
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
                   {"architecture", f.architecture.empty() ? json(nullptr) : json(f.architecture)},
                   {"shared_bytes", f.shared_bytes}});
  }
  json doc = {{"schema", "modelcdr.disarm/1"},
              {"tool", tool()},
              {"files", arr},
              {"summary",
               {{"files", files.size()}, {"clean", clean}, {"removed", removed}, {"rejected", rejected}, {"skipped", skipped}}}};
  return dump(doc);
}

namespace {

// A path as a SARIF uri-reference: RFC 3986 unreserved bytes and '/' kept, the rest
// percent-encoded (spaces, '#', '%', non-ASCII); an absolute path becomes a file:// URI.
std::string path_uri(const std::string& path) {
  static const char* hexd = "0123456789ABCDEF";
  std::string out = !path.empty() && path[0] == '/' ? "file://" : "";
  for (unsigned char c : path) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hexd[c >> 4];
      out += hexd[c & 15];
    }
  }
  return out;
}

// What disarm does, as a sentence for SARIF help text.
std::string disposition_help(Disposition d) {
  switch (d) {
    case Disposition::reject: return "modelcdr disarm rejects the file (no output).";
    case Disposition::reject_high: return "modelcdr disarm rejects the file when this is reported as high or critical; otherwise it is left out of the rebuilt file.";
    case Disposition::reject_trailing: return "modelcdr disarm rejects the file unless --allow-trailing-data is given.";
    case Disposition::drop: return "modelcdr disarm leaves it out of the rebuilt file.";
    case Disposition::convert: return "modelcdr disarm rewrites it as plain data.";
    case Disposition::note: return "Noted only: nothing is removed.";
  }
  return "";
}

json sarif_rule(const RuleInfo& r) {
  std::string help = std::string(r.help) + " " + disposition_help(r.disposition) + " Verdict: " +
                     verdict_class_name(r.verdict) + ". See docs/RULES.md.";
  return {{"id", r.id},
          {"shortDescription", {{"text", r.description}}},
          {"fullDescription", {{"text", r.help}}},
          {"help", {{"text", help}}},
          {"defaultConfiguration", {{"level", sarif_level(r.severity)}}},
          {"properties",
           {{"security-severity", r.security_severity},
            {"tags", json::array({"security", std::string(r.id.substr(0, r.id.find('.')))})},
            {"disposition", disposition_name(r.disposition)},
            {"verdict", verdict_class_name(r.verdict)}}}};
}

// One location: the file with a byte offset from the start of the FILE, and the container entry
// (zip/tar member, decompressed stream) as a logical location. An offset inside a stored entry
// is the entry's data offset plus it; inside a compressed entry the region is where the entry's
// data begins and the logical location says "entry X, decompressed offset N".
json sarif_location(const FileReport& f, const std::string& entry, uint64_t offset, bool has_offset) {
  json physical = {{"artifactLocation", {{"uri", path_uri(f.input)}}}};
  const EntryLocation* at = nullptr;
  for (const EntryLocation& e : f.entries)
    if (e.name == entry) at = &e;
  std::string logical_name;
  if (at && at->compressed) {
    physical["region"] = {{"byteOffset", at->data_offset}, {"byteLength", 1}};
    logical_name = (entry.empty() ? std::string("decompressed stream") : "entry " + entry) +
                   (has_offset ? ", decompressed offset " + std::to_string(offset) : std::string());
  } else if (at) {
    if (has_offset) physical["region"] = {{"byteOffset", at->data_offset + offset}, {"byteLength", 1}};
    logical_name = "entry " + entry + (has_offset ? ", offset " + std::to_string(offset) : std::string());
  } else if (entry.empty()) {
    if (has_offset) physical["region"] = {{"byteOffset", offset}, {"byteLength", 1}};
  } else {
    logical_name = "entry " + entry + (has_offset ? ", offset " + std::to_string(offset) : std::string());
  }
  json location = {{"physicalLocation", physical}};
  if (!logical_name.empty()) {
    json logical = {{"name", entry.empty() ? std::string("decompressed stream") : entry},
                    {"fullyQualifiedName", logical_name},
                    {"kind", "resource"}};
    location["logicalLocations"] = json::array({logical});
    if (has_offset) location["properties"] = {{"entryOffset", offset}};
  }
  return location;
}

}  // namespace

std::string sarif(const std::vector<FileReport>& files, bool verbose) {
  json rules = json::array();
  for (const RuleInfo& r : all_rules()) rules.push_back(sarif_rule(r));
  json results = json::array();
  auto add_result = [&](Rule rule, const char* level, const std::string& message, json location,
                        const char* verdict) {
    results.push_back({{"ruleId", rule_id(rule)},
                       {"ruleIndex", static_cast<size_t>(rule)},
                       {"level", level},
                       {"message", {{"text", message}}},
                       {"locations", json::array({std::move(location)})},
                       {"properties", {{"verdict", verdict}}}});
  };
  json artifacts = json::array();
  for (const auto& f : files) {
    artifacts.push_back({{"location", {{"uri", path_uri(f.input)}}}, {"properties", {{"format", f.format}, {"verdict", verdict_name(f.verdict)}}}});
    for (const auto& x : f.findings) {
      if (x.severity == Severity::info && !verbose) continue;
      add_result(x.rule, sarif_level(x.severity), x.message, sarif_location(f, x.entry, x.offset, true),
                 verdict_name(verdict_of(x.rule, x.severity)));
    }
    if (f.error)
      add_result(f.error->rule, "error", f.error->message,
                 sarif_location(f, f.error->entry, f.error->offset, f.error->has_offset), verdict_name(f.verdict));
  }
  json doc = {{"$schema", "https://json.schemastore.org/sarif-2.1.0.json"},
              {"version", "2.1.0"},
              {"runs", json::array({{{"tool", {{"driver", {{"name", "modelcdr"},
                                                           {"version", kVersion},
                                                           {"rules", rules}}}}},
                                     {"artifacts", artifacts},
                                     {"results", results}}})}};
  return dump(doc);
}

namespace {

// Length of the UTF-8 sequence at s[i] (1-4), or 0 when it is not well formed (overlong
// forms, surrogates and code points above U+10FFFF included).
size_t utf8_length(std::string_view s, size_t i, uint32_t& cp) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  cp = len == 1 ? c : c & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (byte(i + k) & 0x3F);
  }
  static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

// Code points that move or hide text on a terminal without being C0/C1 controls: bidi
// overrides and isolates (the "trojan source" trick), line/paragraph separators, BOM.
bool invisible_format(uint32_t cp) {
  return (cp >= 0x200B && cp <= 0x200F) || (cp >= 0x2028 && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069) ||
         cp == 0xFEFF;
}

}  // namespace

std::string printable(std::string_view s) {
  static const char* hexd = "0123456789abcdef";
  auto hex_byte = [&](std::string& out, unsigned char c) {
    out += "\\x";
    out += hexd[c >> 4];
    out += hexd[c & 15];
  };
  std::string out;
  out.reserve(s.size());
  auto plain = [&](size_t k) {
    const unsigned char x = static_cast<unsigned char>(s[k]);
    return x >= 0x20 && x < 0x7F && x != '\\';
  };
  for (size_t i = 0; i < s.size();) {
    if (plain(i)) {  // a run of printable ASCII (most of every line) is copied as it is
      size_t j = i + 1;
      while (j < s.size() && plain(j)) ++j;
      out.append(s.data() + i, j - i);
      i = j;
      continue;
    }
    unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t cp = 0;
    size_t len = utf8_length(s, i, cp);
    if (c == '\\') {
      out += "\\\\";
    } else if (len == 0 || cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F)) {
      // a control (ESC starts every terminal sequence) or a byte that is not UTF-8
      for (size_t k = 0; k < std::max<size_t>(len, 1); ++k) hex_byte(out, static_cast<unsigned char>(s[i + k]));
    } else if (invisible_format(cp)) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      out += buf;
    } else {
      out.append(s.data() + i, len);
    }
    i += std::max<size_t>(len, 1);
  }
  return out;
}

// Every piece of these lines can come from the input (paths, entry names, class names in
// messages): the whole line goes through printable().
std::string text_line(const std::string& path, const Finding& f) {
  std::string s = path + ": ";
  if (!f.entry.empty()) s += f.entry + " ";
  s += "offset " + std::to_string(f.offset) + ": " + severity_name(f.severity) + ": " + f.message + " [" + std::string(rule_id(f.rule)) + "]";
  return printable(s);
}

std::string error_line(const std::string& path, const Error& e) { return printable(path + ": " + e.describe()); }

}  // namespace modelcdr::report
