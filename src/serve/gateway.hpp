// The gateway's request logic, apart from HTTP: resolve a repository file to a cache entry
// (building it on first use), list repositories and files for the API and the web page.
#pragma once
#include <functional>
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
  // `convert_bin`: serve every `.bin` weights file (and its shard index) converted to this
  // format, under the converted name (`serve --convert-bin safetensors`: pytorch_model.bin is
  // listed and served as model.safetensors, pytorch_model.bin.index.json as
  // model.safetensors.index.json, rewritten).
  Gateway(std::unique_ptr<Origin> origin, Cache cache, std::optional<OutputFormat> convert_bin = std::nullopt)
      : origin_(std::move(origin)), cache_(std::move(cache)), convert_bin_(convert_bin) {}
  Origin& origin() { return *origin_; }
  Cache& cache() { return cache_; }

  // Errors carry rule ids that status_for() maps to HTTP statuses.
  // The repository as clients see it (names converted by --convert-bin).
  Result<Snapshot> snapshot(const std::string& repo, const std::string& revision);
  // `format`: a conversion the request asked for (`?format=safetensors`).
  // `tune`: lets a caller that streams the build add its hooks (BuildOptions::on_*).
  Result<Resolved> resolve(const std::string& repo, const std::string& revision, const std::string& path,
                           std::optional<OutputFormat> format = std::nullopt,
                           const std::function<void(BuildOptions&)>& tune = {});
  // The snapshot and, when it is already built, the file's entry; no build.
  struct Lookup {
    Snapshot snap;
    std::optional<Entry> entry;
  };
  Result<Lookup> lookup(const std::string& repo, const std::string& revision, const std::string& path,
                        std::optional<OutputFormat> format = std::nullopt);
  // The cache entry of a file already built (by any instance sharing the cache), without building.
  std::optional<Entry> known(const Snapshot& snap, const std::string& path,
                             std::optional<OutputFormat> format = std::nullopt) const;

 private:
  // What `path` of `snap` is built from and with which conversion; nullptr when not listed.
  const RepoFile* find(const Snapshot& snap, const std::string& path) const;
  std::optional<OutputFormat> conversion(const RepoFile& f, std::optional<OutputFormat> format) const;
  std::string ref_path(const Snapshot& snap, const std::string& path, std::optional<OutputFormat> to) const;
  Snapshot converted_view(Snapshot snap) const;
  std::unique_ptr<Origin> origin_;
  Cache cache_;
  std::optional<OutputFormat> convert_bin_;
};

}  // namespace modelcdr::serve
