#include "serve/names.hpp"

namespace modelcdr::serve {

namespace {
bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
         c == '-';
}
}  // namespace

bool valid_name(std::string_view s) {
  if (s.empty() || s.size() > kMaxSegment) return false;
  // A leading '.' would allow "..", hidden files and the cache folder; a leading '-' looks
  // like an option to any tool a file name reaches.
  if (s.front() == '.' || s.front() == '-') return false;
  if (s.find("..") != std::string_view::npos) return false;
  for (char c : s)
    if (!name_char(c)) return false;
  return true;
}

bool valid_repo_id(std::string_view s) {
  auto slash = s.find('/');
  if (slash == std::string_view::npos) return false;
  return valid_name(s.substr(0, slash)) && valid_name(s.substr(slash + 1));
}

bool valid_revision(std::string_view s) { return valid_name(s); }

bool valid_file_path(std::string_view s) {
  if (s.empty() || s.size() > kMaxPath) return false;
  size_t depth = 0, start = 0;
  while (true) {
    auto slash = s.find('/', start);
    auto part = s.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (!valid_name(part)) return false;
    if (slash == std::string_view::npos) return true;
    if (++depth > kMaxDepth) return false;
    start = slash + 1;
  }
}

}  // namespace modelcdr::serve
