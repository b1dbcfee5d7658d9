#include "serve/http_util.hpp"

#include <httplib.h>

#include <charconv>
#include <nlohmann/json.hpp>

#include "serve/origin.hpp"

namespace modelcdr::serve {

int status_for(Rule rule) {
  if (rule == kRepoNotFound || rule == kRevisionNotFound || rule == kEntryNotFound) return 404;
  if (rule == Rule::hub_bad_request) return 400;
  if (rule == Rule::hub_range_not_satisfiable) return 416;
  const std::string_view id = rule_id(rule);
  if (id.starts_with("upstream.")) return 502;
  if (id.starts_with("io.") || id.starts_with("resource.")) return 503;
  return 403;  // a verdict on the file: refused
}

std::string header_safe(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= 900) {
      out += "...";
      break;
    }
    out += (c >= 0x20 && c < 0x7f) ? char(c) : '?';
  }
  return out;
}

void send_error(httplib::Response& res, int status, const std::string& code, const std::string& message) {
  res.status = status;
  res.set_header("X-Error-Code", header_safe(code));
  res.set_header("X-Error-Message", header_safe(message));
  nlohmann::json body = {{"error", message}, {"code", code}};
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, int status, Rule code, const std::string& message) {
  send_error(res, status, std::string(rule_id(code)), message);
}

std::string html_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {
std::optional<uint64_t> number(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}
}  // namespace

std::optional<ByteRange> parse_range(std::string_view h, uint64_t size) {
  if (h.substr(0, 6) != "bytes=") return std::nullopt;
  h.remove_prefix(6);
  if (h.find(',') != std::string_view::npos) return std::nullopt;
  auto dash = h.find('-');
  if (dash == std::string_view::npos || size == 0) return std::nullopt;
  auto a = h.substr(0, dash), b = h.substr(dash + 1);
  if (a.empty()) {  // the last n bytes
    auto n = number(b);
    if (!n || *n == 0) return std::nullopt;
    return ByteRange{size - std::min(*n, size), size - 1};
  }
  auto first = number(a);
  if (!first || *first >= size) return std::nullopt;
  if (b.empty()) return ByteRange{*first, size - 1};
  auto last = number(b);
  if (!last || *last < *first) return std::nullopt;
  return ByteRange{*first, std::min(*last, size - 1)};
}

}  // namespace modelcdr::serve
