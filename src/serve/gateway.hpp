// The gateway's request logic, apart from HTTP: resolve a repository file to a cache entry
// (building it on first use), list repositories and files for the API and the web page.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "serve/cache.hpp"
#include "serve/origin.hpp"

namespace modelcdr::serve {

struct Resolved {
  Snapshot snap;
  Entry entry;
};

class Gateway {
 public:
  Gateway(std::unique_ptr<Origin> origin, Cache cache) : origin_(std::move(origin)), cache_(std::move(cache)) {}
  Origin& origin() { return *origin_; }
  Cache& cache() { return cache_; }

  // Errors carry rule ids that status_for() maps to HTTP statuses.
  Result<Snapshot> snapshot(const std::string& repo, const std::string& revision);
  Result<Resolved> resolve(const std::string& repo, const std::string& revision, const std::string& path);
  // The cache entry of a file already built (by any instance sharing the cache), without building.
  std::optional<Entry> known(const Snapshot& snap, const std::string& path) const;

 private:
  std::string ref_path(const Snapshot& snap, const std::string& path) const;
  std::unique_ptr<Origin> origin_;
  Cache cache_;
};

}  // namespace modelcdr::serve
