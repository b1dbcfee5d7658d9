// Pull-through from an upstream Hugging Face-compatible endpoint. The gateway only ever asks
// the upstream for a revision's commit and file list, and for a file's bytes (following its
// redirects itself); nothing the upstream sends is passed on to a client: model info, trees
// and headers are rebuilt from scratch (no xet hashes, LFS pointers or storage links).
// A download is written below CACHE/tmp/, hashed as it arrives, checked against the length
// and the SHA-256 the upstream announced, and removed once the cache entry is built.
#include "serve/upstream.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "mtd/digest.hpp"
#include "serve/cache.hpp"
#include "serve/names.hpp"

using json = nlohmann::json;

namespace modelcdr::serve {

namespace {

constexpr size_t kMaxApiBytes = 16u << 20;          // a model-info or tree document
constexpr uint64_t kMaxFileBytes = 1ull << 40;      // one file (1 TiB)
constexpr size_t kMaxListedFiles = 10000;

bool is_hex(const std::string& s, size_t n) {
  return s.size() == n && std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string unquote_etag(std::string e) {
  if (e.rfind("W/", 0) == 0) e = e.substr(2);
  if (e.size() >= 2 && e.front() == '"' && e.back() == '"') e = e.substr(1, e.size() - 2);
  return e;
}

// An upstream answer that is not a success, as one of our rule ids (never its text verbatim
// beyond a short printable excerpt).
Error upstream_error(const std::string& what, const httplib::Result& r) {
  if (!r) return make_error(Rule::upstream_unavailable, what + ": upstream unreachable (" + httplib::to_string(r.error()) + ")");
  std::string code = r->get_header_value("X-Error-Code");
  for (Rule not_found : {kRepoNotFound, kRevisionNotFound, kEntryNotFound})
    if (r->status == 404 && code == rule_id(not_found)) return make_error(not_found, what + ": not found upstream");
  if (r->status == 404) return make_error(kRepoNotFound, what + ": not found upstream");
  if (r->status == 401 || r->status == 403) return make_error(Rule::upstream_refused, what + ": upstream refused access (" + std::to_string(r->status) + ")");
  return make_error(Rule::upstream_unavailable, what + ": upstream answered " + std::to_string(r->status));
}

class Upstream : public Origin {
 public:
  Upstream(std::string url, std::string cache) : url_(std::move(url)), cache_(std::move(cache)) {
    while (!url_.empty() && url_.back() == '/') url_.pop_back();
  }
  std::string describe() const override { return "upstream " + url_; }
  // An upstream hub has too many repositories to list; the web page shows those in the cache.
  Result<std::vector<std::string>> list_repos() override { return std::vector<std::string>{}; }

  Result<Snapshot> snapshot(const std::string& repo, const std::string& revision) override {
    MCDR_ASSIGN(json info, get_json("/api/models/" + repo + "/revision/" + revision, repo));
    Snapshot snap;
    snap.repo = repo;
    snap.commit = info.is_object() && info.contains("sha") && info["sha"].is_string() ? info["sha"].get<std::string>() : "";
    if (!is_hex(snap.commit, 40)) return make_error(Rule::upstream_bad_answer, repo + ": upstream gave no commit id");
    MCDR_ASSIGN(json tree, get_json("/api/models/" + repo + "/tree/" + snap.commit + "?recursive=true", repo));
    if (!tree.is_array()) return make_error(Rule::upstream_bad_answer, repo + ": upstream tree is not a list");
    for (const auto& e : tree) {
      if (!e.is_object() || e.value("type", "") != "file" || !e.contains("path") || !e["path"].is_string()) continue;
      std::string path = e["path"];
      if (!valid_file_path(path)) continue;  // a name no client may ask this gateway for
      uint64_t size = e.contains("size") && e["size"].is_number_unsigned() ? e["size"].get<uint64_t>() : 0;
      if (snap.files.size() >= kMaxListedFiles) return make_error(Rule::serve_too_many_files, repo + ": too many files upstream");
      snap.files.push_back({path, size, {}});
    }
    std::sort(snap.files.begin(), snap.files.end(), [](auto& a, auto& b) { return a.path < b.path; });
    return snap;
  }

  Result<std::unique_ptr<Input>> open(const Snapshot& snap, const RepoFile& file) override {
    auto in = std::make_unique<Input>();
    std::random_device rd;
    in->temp_path = cache_ + "/tmp/download." + std::to_string(::getpid()) + "." + std::to_string(rd()) + std::to_string(rd());
    in->fd = ::open(in->temp_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (in->fd < 0) {
      in->temp_path.clear();
      return make_error(Rule::io_write, "cannot create a download in the cache folder");
    }
    in->path = "/proc/self/fd/" + std::to_string(in->fd);
    mtd::Sha256 hash;
    uint64_t got = 0;
    bool write_failed = false;
    std::string write_error;
    std::string what = snap.repo + "/" + file.path;
    bool redirected = false;  // the body of a redirect is not the file
    auto receive = [&](const char* data, size_t n) {
      if (redirected) return true;
      if (got + n > kMaxFileBytes) {
        write_error = "over " + std::to_string(kMaxFileBytes) + " bytes";
        return !(write_failed = true);
      }
      if (forced_write_failure()) {
        write_error = "No space left on device (forced)";
        return !(write_failed = true);
      }
      for (size_t done = 0; done < n;) {
        ssize_t w = ::write(in->fd, data + done, n - done);
        if (w <= 0) {
          write_error = std::strerror(w < 0 ? errno : ENOSPC);
          return !(write_failed = true);
        }
        done += size_t(w);
      }
      hash.update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data), n));
      got += n;
      return true;
    };
    // The hub answers with a redirect to its storage: followed here (a few hops, http(s) only),
    // with the body read only from the final answer.
    std::string base = url_, path = "/" + snap.repo + "/resolve/" + snap.commit + "/" + file.path;
    httplib::Result r{nullptr, httplib::Error::Unknown};
    for (int hop = 0; hop < 5; ++hop) {
      auto cli = client(base);
      r = cli->Get(path, [&](const httplib::Response& res) {
        redirected = res.status >= 300 && res.status < 400;
        return true;
      }, receive);
      if (!r || r->status < 300 || r->status >= 400 || !r->has_header("Location")) break;
      std::string loc = r->get_header_value("Location");
      static const std::regex abs(R"(^(https?://[^/?#]+)(/[^#]*)?$)");
      std::smatch m;
      if (std::regex_match(loc, m, abs)) {
        base = m[1];
        path = m[2].matched ? std::string(m[2]) : "/";
      } else if (!loc.empty() && loc[0] == '/') {
        path = loc;
      } else {
        return make_error(Rule::upstream_bad_answer, what + ": upstream redirect to an unusable location");
      }
    }
    if (write_failed) return make_error(Rule::io_write, what + ": cannot store the download: " + write_error);
    if (!r || r->status != 200) return upstream_error(what, r);
    if (r->has_header("Content-Length") && std::to_string(got) != r->get_header_value("Content-Length"))
      return make_error(Rule::upstream_truncated, what + ": upstream sent " + std::to_string(got) + " of " +
                                                  r->get_header_value("Content-Length") + " bytes");
    auto d = hash.finish();
    in->sha256 = hex(d.data(), d.size());
    // The hub announces an LFS file's SHA-256 as its (linked) ETag: a mismatch is a corrupt
    // or substituted transfer, never served.
    std::string etag = unquote_etag(r->has_header("X-Linked-Etag") ? r->get_header_value("X-Linked-Etag") : r->get_header_value("ETag"));
    if (is_hex(etag, 64) && etag != in->sha256)
      return make_error(Rule::upstream_corrupt, what + ": content does not match the SHA-256 the upstream announced");
    struct stat st{};
    if (::fstat(in->fd, &st) != 0) return make_error(Rule::io_read, "cannot read the download");
    in->size = uint64_t(st.st_size);
    in->mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    return in;
  }

 private:
  std::unique_ptr<httplib::Client> client(const std::string& base = {}) const {
    auto cli = std::make_unique<httplib::Client>(base.empty() ? url_ : base);
    cli->set_connection_timeout(10, 0);
    cli->set_read_timeout(60, 0);
    cli->set_keep_alive(false);
    return cli;
  }

  Result<json> get_json(const std::string& path, const std::string& what) {
    std::string body;
    bool too_big = false;
    auto r = client()->Get(path.c_str(), [&](const char* data, size_t n) {
      if (body.size() + n > kMaxApiBytes) return !(too_big = true);
      body.append(data, n);
      return true;
    });
    if (too_big) return make_error(Rule::upstream_bad_answer, what + ": upstream answer over " + std::to_string(kMaxApiBytes) + " bytes");
    if (!r || r->status != 200) return upstream_error(what, r);
    json j = json::parse(body, nullptr, false);
    if (j.is_discarded()) return make_error(Rule::upstream_bad_answer, what + ": upstream answer is not JSON");
    return j;
  }

  std::string url_, cache_;
};

}  // namespace

std::unique_ptr<Origin> make_upstream(const std::string& url, const std::string& cache_dir) {
  return std::make_unique<Upstream>(url, cache_dir);
}

}  // namespace modelcdr::serve
