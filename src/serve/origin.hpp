// Where a repository's files come from: a local store folder (STORE/<org>/<name>/<files>,
// served as revision `main`) or an upstream Hugging Face-compatible endpoint (upstream.cpp).
// An origin hands out the exact input bytes as an open descriptor plus their SHA-256; what is
// served is decided later, from those bytes, by the cache (cache.hpp).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "modelcdr/result.hpp"

namespace modelcdr::serve {

// Rule ids an origin returns, mapped to HTTP statuses by the server (X-Error-Code values
// that huggingface_hub turns into its own exception types).
inline constexpr Rule kRepoNotFound = Rule::hub_repo_not_found;          // "RepoNotFound"
inline constexpr Rule kRevisionNotFound = Rule::hub_revision_not_found;  // "RevisionNotFound"
inline constexpr Rule kEntryNotFound = Rule::hub_entry_not_found;        // "EntryNotFound"

struct RepoFile {
  std::string path;   // relative, '/'-separated, valid_file_path()
  uint64_t size = 0;  // size of the input (the served size may differ: rebuilds)
  // Set in the gateway's view of a repository whose .bin files are served converted
  // (`serve --convert-bin`): the name of the file in the origin that `path` is built from.
  std::string source;
  const std::string& origin_path() const { return source.empty() ? path : source; }
};

struct Snapshot {
  std::string repo;
  std::string commit;  // 40 hex digits
  std::vector<RepoFile> files;  // sorted by path
};

// An input file opened for one build: read it through `fd` (or `path`, a /proc/self/fd name).
struct Input {
  int fd = -1;
  std::string path;
  std::string sha256;  // hex of the bytes behind fd
  uint64_t size = 0;
  std::string temp_path;  // a downloaded copy removed when the Input goes (upstream only)
  Input() = default;
  Input(const Input&) = delete;
  Input& operator=(const Input&) = delete;
  ~Input();
  // True when the file behind fd still has the size/mtime it had when hashed.
  bool unchanged() const;
  int64_t mtime_ns = 0;
};

class Origin {
 public:
  virtual ~Origin() = default;
  virtual std::string describe() const = 0;
  virtual Result<std::vector<std::string>> list_repos() = 0;
  virtual Result<Snapshot> snapshot(const std::string& repo, const std::string& revision) = 0;
  // `file` comes from `snap.files`.
  virtual Result<std::unique_ptr<Input>> open(const Snapshot& snap, const RepoFile& file) = 0;
};

// `salt`: what else changes the served bytes (version, rebuild options); it enters the commit
// id of a local store, so clients refetch when the gateway would serve something else.
std::unique_ptr<Origin> make_local_store(const std::string& dir, const std::string& salt);

// Hex SHA-256 of the bytes behind `fd`, read with pread (the offset is left alone).
Result<std::string> hash_fd(int fd, uint64_t size);
std::string hex(const uint8_t* bytes, size_t n);
std::string sha256_hex(const std::string& text);

}  // namespace modelcdr::serve
