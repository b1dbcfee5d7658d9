// Static findings over the whole pickle program: every global, call, object construction and
// BUILD, reachable from the root or not. A payload can run while unpickling and be popped before
// STOP, so walking only what the lifter keeps would miss it.
#include <algorithm>
#include <cctype>
#include <cstring>

#include "cdr/globals_policy.hpp"
#include "cdr/lifter.hpp"

namespace modelcdr::cdr {

namespace {

using pickle::Node;
using pickle::NodeKind;

std::string quoted_global(const Node& g) { return "'" + g.text + " " + g.name + "'"; }

bool all_of_chars(std::string_view s, const char* alphabet) {
  return std::all_of(s.begin(), s.end(), [&](char c) { return std::strchr(alphabet, c) != nullptr; });
}

bool identifier_line(std::string_view s) {
  return !s.empty() && s.size() < 128 &&
         std::all_of(s.begin(), s.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.'; });
}

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::string lower(std::string_view s) {
  std::string o(s);
  for (auto& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}

void check_call_target(const pickle::Program& p, const Node& n, const char* what, const std::string& entry, Findings& out) {
  const Node& callee = p.at(n.items[0]);
  if (callee.kind == NodeKind::Global) {
    if (!is_known_global(callee.text, callee.name))
      add_finding(out, unknown_global_severity(callee.text, callee.name), "pickle.call",
                  std::string(what) + " calls " + quoted_global(callee), entry, n.offset);
  } else if (callee.kind != NodeKind::PersId) {
    add_finding(out, Severity::critical, "pickle.call-computed",
                std::string(what) + " calls a computed callable (not a named global)", entry, n.offset);
  }
}

bool plain_build_target(const pickle::Program& p, const Node& n) {
  if (n.kind != NodeKind::Call && n.kind != NodeKind::NewObj) return false;
  const Node& c = p.at(n.items[0]);
  return c.kind == NodeKind::Global && c.text == "collections" && c.name == "OrderedDict";
}

}  // namespace

bool looks_like_embedded_pickle(std::string_view d) {
  if (d.size() < 4) return false;
  // raw protocol 2-5 stream, or a protocol-0 "c<module>\n<name>\n" opening
  if (static_cast<unsigned char>(d[0]) == 0x80 && d[1] >= 2 && d[1] <= 5 && d.find('.') != std::string_view::npos) return true;
  if (d[0] == 'c' && d.back() == '.') {
    auto nl1 = d.find('\n');
    auto nl2 = nl1 == std::string_view::npos ? nl1 : d.find('\n', nl1 + 1);
    if (nl2 != std::string_view::npos && identifier_line(d.substr(1, nl1 - 1)) && identifier_line(d.substr(nl1 + 1, nl2 - nl1 - 1)))
      return true;
  }
  // base64 of the above
  std::string compact;
  for (char c : d.substr(0, 64))
    if (!std::isspace(static_cast<unsigned char>(c))) compact.push_back(c);
  if (d.size() >= 16 && all_of_chars(compact, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_")) {
    for (auto p : {"gAJ", "gAN", "gAS", "gAU", "Y29zCn", "Y3Bvc2l4", "Y19fYnVpbHRpbl9f", "Y2J1aWx0aW5z", "Y3N1YnByb2Nlc3"})
      if (starts_with(compact, p)) return true;
  }
  // hex of the above
  if (d.size() >= 8 && d.size() % 2 == 0 && all_of_chars(d.substr(0, 64), "0123456789abcdefABCDEF")) {
    std::string h = lower(d.substr(0, 16));
    for (auto p : {"8002", "8003", "8004", "8005", "636f730a", "63706f736978", "635f5f6275696c74696e5f5f"})
      if (starts_with(h, p)) return true;
  }
  return false;
}

void scan_program(const pickle::Program& p, const std::string& entry, Findings& out) {
  for (const Node& n : p.nodes) {
    switch (n.kind) {
      case NodeKind::Global:
        if (!is_known_global(n.text, n.name))
          add_finding(out, unknown_global_severity(n.text, n.name), "pickle.global-not-allowed",
                      "GLOBAL " + quoted_global(n) + " is not allowed", entry, n.offset);
        break;
      case NodeKind::Call: check_call_target(p, n, "REDUCE", entry, out); break;
      case NodeKind::NewObj: check_call_target(p, n, "NEWOBJ", entry, out); break;
      case NodeKind::Inst:
        add_finding(out, Severity::critical, "pickle.inst",
                    "INST/OBJ instantiates " + (n.items.empty() ? std::string("?") : quoted_global(p.at(n.items[0]))), entry,
                    n.offset);
        break;
      case NodeKind::Str:
      case NodeKind::Py2Str:
      case NodeKind::Bytes:
      case NodeKind::ByteArray:
        if (looks_like_embedded_pickle(n.text))
          add_finding(out, Severity::high, "pickle.nested-pickle",
                      "a string/bytes value holds a serialized pickle (" + std::to_string(n.text.size()) + " bytes)", entry,
                      n.offset);
        break;
      default: break;
    }
    if (!n.build_states.empty() && !plain_build_target(p, n) && n.kind != NodeKind::NewObj)
      add_finding(out, Severity::high, "pickle.build-on-object", "BUILD applies state to a non-plain object", entry, n.offset);
  }
}

}  // namespace modelcdr::cdr
