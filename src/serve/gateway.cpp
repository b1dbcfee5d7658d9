#include "serve/gateway.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "engine/output_names.hpp"
#include "io/atomic_output.hpp"
#include "serve/http_util.hpp"
#include "serve/names.hpp"

namespace modelcdr::serve {

namespace {

bool ends_with(const std::string& s, std::string_view tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The name `path` is listed under when .bin weights are served as `to` (empty: unchanged).
std::string converted_name(const std::string& path, OutputFormat to) {
  const auto slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  const std::string name = path.substr(dir.size());
  if (ends_with(name, ".bin")) return dir + engine::output_file_name(name, to);
  if (ends_with(name, ".bin.index.json") && engine::is_shard_index(name)) return dir + engine::index_output_name(name, to);
  return "";
}

}  // namespace

Result<Snapshot> Gateway::snapshot(const std::string& repo, const std::string& revision) {
  if (!valid_repo_id(repo)) return make_error(kRepoNotFound, "not a repository id: " + repo);
  if (!valid_revision(revision)) return make_error(kRevisionNotFound, "not a revision: " + revision);
  MCDR_ASSIGN(Snapshot snap, origin_->snapshot(repo, revision));
  return convert_bin_ ? converted_view(std::move(snap)) : snap;
}

// Renames the .bin weights and their indexes. A converted name the repository already has
// (a repository that ships both model.safetensors and pytorch_model.bin) keeps the original,
// and of two files that would take one name only the first is listed: a name always has one source.
Snapshot Gateway::converted_view(Snapshot snap) const {
  std::set<std::string> taken;
  for (const auto& f : snap.files) taken.insert(f.path);
  std::vector<RepoFile> files;
  for (auto& f : snap.files) {
    std::string to = converted_name(f.path, *convert_bin_);
    if (to.empty()) {
      files.push_back(std::move(f));
      continue;
    }
    if (!valid_file_path(to) || !taken.insert(to).second) continue;
    files.push_back({to, f.size, f.path});
  }
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  snap.files = std::move(files);
  return snap;
}

const RepoFile* Gateway::find(const Snapshot& snap, const std::string& path) const {
  for (const auto& f : snap.files)
    if (f.path == path) return &f;
  return nullptr;
}

// The conversion a file is built with: the request's `?format=`, else the store's setting for a
// renamed file; none when it is the format the file's own name asks for (one entry, not two).
std::optional<OutputFormat> Gateway::conversion(const RepoFile& f, std::optional<OutputFormat> format) const {
  std::optional<OutputFormat> to = format ? format : (f.source.empty() ? std::nullopt : convert_bin_);
  if (to && engine::format_for_name(f.origin_path()) == to) return std::nullopt;
  return to;
}

// CACHE/refs/<sha256(repo, commit, path, conversion)> holds the cache key of what that file was
// built into, so that the web page and later requests find it without reading or hashing the input again.
std::string Gateway::ref_path(const Snapshot& snap, const std::string& path, std::optional<OutputFormat> to) const {
  std::string id = snap.repo + "\n" + snap.commit + "\n" + path;
  if (to) id += std::string("\nto=") + engine::format_flag(*to);
  return cache_.dir() + "/refs/" + sha256_hex(id);
}

std::optional<Entry> Gateway::known(const Snapshot& snap, const std::string& path, std::optional<OutputFormat> format) const {
  const RepoFile* file = find(snap, path);
  if (!file) return std::nullopt;
  std::ifstream f(ref_path(snap, path, conversion(*file, format)));
  std::string key;
  if (!(f >> key) || key.size() != 64) return std::nullopt;
  return cache_.find(key);
}

Result<Gateway::Lookup> Gateway::lookup(const std::string& repo, const std::string& revision, const std::string& path,
                                        std::optional<OutputFormat> format) {
  if (!valid_file_path(path)) return make_error(kEntryNotFound, "not a file name this gateway serves: " + path);
  MCDR_ASSIGN(Snapshot snap, snapshot(repo, revision));
  if (!find(snap, path)) return make_error(kEntryNotFound, path + " is not in " + repo + " at " + snap.commit);
  auto e = known(snap, path, format);
  return Lookup{std::move(snap), std::move(e)};
}

Result<Resolved> Gateway::resolve(const std::string& repo, const std::string& revision, const std::string& path,
                                  std::optional<OutputFormat> format, const std::function<void(BuildOptions&)>& tune) {
  if (!valid_file_path(path)) return make_error(kEntryNotFound, "not a file name this gateway serves: " + path);
  MCDR_ASSIGN(Snapshot snap, snapshot(repo, revision));
  const RepoFile* listed = find(snap, path);
  if (!listed) return make_error(kEntryNotFound, path + " is not in " + repo + " at " + snap.commit);
  const RepoFile file = *listed;
  const auto to = conversion(file, format);
  if (auto e = known(snap, path, format)) return Resolved{std::move(snap), std::move(*e)};
  // One fetch per file at a time across every instance sharing the cache: the others wait
  // here and then find the ref (an upstream file is downloaded once, not once per request).
  const std::string ref = ref_path(snap, path, to);
  KeyLock lock(cache_.dir() + "/locks/ref-" + ref.substr(ref.rfind('/') + 1) + ".lock");
  if (!lock.ok()) return make_error(Rule::io_write, "cannot lock the cache entry");
  if (auto e = known(snap, path, format)) return Resolved{std::move(snap), std::move(*e)};
  // The origin is asked for the file under its own name.
  MCDR_ASSIGN(std::unique_ptr<Input> in, origin_->open(snap, RepoFile{file.origin_path(), file.size, {}}));
  BuildOptions o;
  o.name = file.origin_path().substr(file.origin_path().rfind('/') + 1);
  o.shown = repo + "/" + file.origin_path();
  o.to = to;
  if (tune) tune(o);
  std::string key = Cache::key_for(in->sha256, o);
  bool built = false;
  MCDR_ASSIGN(Entry e, cache_.get_or_build(key, *in, o, &built));
  if (built) std::fprintf(stderr, "modelcdr serve: built %s%s: %s\n", header_safe(o.shown).c_str(),
                          to ? (std::string(" as ") + engine::format_flag(*to)).c_str() : "", e.verdict.c_str());
  // The ref is a hint: written atomically, and a lost race writes the same key.
  std::error_code ec;
  std::filesystem::create_directories(cache_.dir() + "/refs", ec);
  if (auto out = io::AtomicOutput::create(ref, false, true); out.ok())
    if (out->write(key + "\n").ok()) (void)out->commit();
  return Resolved{std::move(snap), std::move(e)};
}

}  // namespace modelcdr::serve
