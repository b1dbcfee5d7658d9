#include "serve/gateway.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "io/atomic_output.hpp"
#include "serve/http_util.hpp"
#include "serve/names.hpp"

namespace modelcdr::serve {

Result<Snapshot> Gateway::snapshot(const std::string& repo, const std::string& revision) {
  if (!valid_repo_id(repo)) return make_error(kRepoNotFound, "not a repository id: " + repo);
  if (!valid_revision(revision)) return make_error(kRevisionNotFound, "not a revision: " + revision);
  return origin_->snapshot(repo, revision);
}

// CACHE/refs/<sha256(repo, commit, path)> holds the cache key of what that file was built into,
// so that the web page and later requests find it without reading or hashing the input again.
std::string Gateway::ref_path(const Snapshot& snap, const std::string& path) const {
  return cache_.dir() + "/refs/" + sha256_hex(snap.repo + "\n" + snap.commit + "\n" + path);
}

std::optional<Entry> Gateway::known(const Snapshot& snap, const std::string& path) const {
  std::ifstream f(ref_path(snap, path));
  std::string key;
  if (!(f >> key) || key.size() != 64) return std::nullopt;
  return cache_.find(key);
}

Result<Resolved> Gateway::resolve(const std::string& repo, const std::string& revision, const std::string& path) {
  if (!valid_file_path(path)) return make_error(kEntryNotFound, "not a file name this gateway serves: " + path);
  MCDR_ASSIGN(Snapshot snap, snapshot(repo, revision));
  const RepoFile* file = nullptr;
  for (const auto& f : snap.files)
    if (f.path == path) file = &f;
  if (!file) return make_error(kEntryNotFound, path + " is not in " + repo + " at " + snap.commit);
  if (auto e = known(snap, path)) return Resolved{std::move(snap), std::move(*e)};
  // One fetch per file at a time across every instance sharing the cache: the others wait
  // here and then find the ref (an upstream file is downloaded once, not once per request).
  KeyLock lock(cache_.dir() + "/locks/ref-" + sha256_hex(snap.repo + "\n" + snap.commit + "\n" + path) + ".lock");
  if (!lock.ok()) return make_error(Rule::io_write, "cannot lock the cache entry");
  if (auto e = known(snap, path)) return Resolved{std::move(snap), std::move(*e)};
  MCDR_ASSIGN(std::unique_ptr<Input> in, origin_->open(snap, *file));
  BuildOptions o;
  o.name = path.substr(path.rfind('/') + 1);
  o.shown = repo + "/" + path;
  std::string key = Cache::key_for(in->sha256, o);
  bool built = false;
  MCDR_ASSIGN(Entry e, cache_.get_or_build(key, *in, o, &built));
  if (built) std::fprintf(stderr, "modelcdr serve: built %s: %s\n", header_safe(o.shown).c_str(), e.verdict.c_str());
  // The ref is a hint: written atomically, and a lost race writes the same key.
  std::error_code ec;
  std::filesystem::create_directories(cache_.dir() + "/refs", ec);
  if (auto out = io::AtomicOutput::create(ref_path(snap, path), false, true); out.ok())
    if (out->write(key + "\n").ok()) (void)out->commit();
  return Resolved{std::move(snap), std::move(e)};
}

}  // namespace modelcdr::serve
