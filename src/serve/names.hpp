// What the gateway accepts as a repository id, a revision and a file path. Everything is
// checked against a short allow-list before it is joined to a folder or an upstream URL, so
// that no request names anything outside the store or the cache ("..", absolute paths,
// backslashes, NUL, control bytes, hidden names and over-long names are all refused).
#pragma once
#include <string>
#include <string_view>

namespace modelcdr::serve {

inline constexpr size_t kMaxSegment = 96;     // one org, repo or path component
inline constexpr size_t kMaxPath = 1000;      // a whole file path inside a repository
inline constexpr size_t kMaxDepth = 16;       // folders inside a repository

// One org or repo name: [A-Za-z0-9][A-Za-z0-9._-]*, no "..", at most kMaxSegment bytes.
bool valid_name(std::string_view s);
// "org/name" with two valid names.
bool valid_repo_id(std::string_view s);
// A branch, tag or commit: one valid name (so "main" or a 40-hex commit; no slashes).
bool valid_revision(std::string_view s);
// "a/b/c.bin": valid names joined by '/', no empty, "." or ".." component, bounded depth.
bool valid_file_path(std::string_view s);

}  // namespace modelcdr::serve
