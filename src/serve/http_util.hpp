// Small helpers of the HTTP front end: errors in the Hub's shape, byte ranges, HTML escaping.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "modelcdr/rules.hpp"

namespace httplib {
struct Response;
}

namespace modelcdr::serve {

// The HTTP status for a rule id (RepoNotFound 404, a refusal 403, I/O 503, ...).
int status_for(Rule rule);
// Sets status, X-Error-Code, X-Error-Message (one printable ASCII line) and a JSON body.
void send_error(httplib::Response& res, int status, const std::string& code, const std::string& message);
void send_error(httplib::Response& res, int status, Rule code, const std::string& message);
std::string header_safe(std::string_view s);  // printable ASCII only, bounded length
std::string html_escape(std::string_view s);

struct ByteRange {
  uint64_t first = 0, last = 0;  // inclusive
};
// Parses one "bytes=a-b" / "bytes=a-" / "bytes=-n" against `size`. nullopt: unsatisfiable or
// malformed (416); multiple ranges are refused too (no Hub client asks for them).
std::optional<ByteRange> parse_range(std::string_view header, uint64_t size);

}  // namespace modelcdr::serve
