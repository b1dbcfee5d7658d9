// The local store: STORE/<org>/<name>/<files>, served as revision `main` and as its commit id.
// Symbolic links are never followed (listing skips them, opening walks the path with
// O_NOFOLLOW from the store's descriptor), so nothing outside the store is ever read.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>
#include <tuple>

#include "mtd/digest.hpp"
#include "serve/names.hpp"
#include "serve/origin.hpp"

namespace fs = std::filesystem;

namespace modelcdr::serve {

namespace {

constexpr size_t kMaxFilesPerRepo = 10000;

int64_t mtime_ns_of(const struct stat& st) { return int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec; }

// Opens `rel` (already valid_file_path) below `root_fd`, one component at a time, refusing links.
int open_beneath(int root_fd, const std::string& rel) {
  int dir = ::dup(root_fd);
  size_t start = 0;
  while (dir >= 0) {
    auto slash = rel.find('/', start);
    std::string part = rel.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (slash == std::string::npos ? 0 : O_DIRECTORY);
    int next = ::openat(dir, part.c_str(), flags);
    ::close(dir);
    if (slash == std::string::npos) return next;
    dir = next;
    start = slash + 1;
  }
  return -1;
}

class LocalStore : public Origin {
 public:
  LocalStore(std::string dir, std::string salt) : dir_(std::move(dir)), salt_(std::move(salt)) {}
  std::string describe() const override { return "local store " + dir_; }

  Result<std::vector<std::string>> list_repos() override {
    std::vector<std::string> out;
    std::error_code ec;
    for (auto& org : fs::directory_iterator(dir_, ec)) {
      if (org.is_symlink() || !org.is_directory() || !valid_name(org.path().filename().string())) continue;
      for (auto& repo : fs::directory_iterator(org.path(), ec)) {
        std::string id = org.path().filename().string() + "/" + repo.path().filename().string();
        if (!repo.is_symlink() && repo.is_directory() && valid_repo_id(id)) out.push_back(id);
      }
    }
    if (ec) return make_error(Rule::io_read, "cannot list the store: " + ec.message());
    std::sort(out.begin(), out.end());
    return out;
  }

  Result<Snapshot> snapshot(const std::string& repo, const std::string& revision) override {
    fs::path root = fs::path(dir_) / repo;
    std::error_code ec;
    if (!valid_repo_id(repo) || fs::is_symlink(fs::path(dir_) / repo.substr(0, repo.find('/'))) ||
        fs::is_symlink(root, ec) || !fs::is_directory(fs::symlink_status(root, ec)))
      return make_error(kRepoNotFound, "repository " + repo + " is not in the store");
    Snapshot snap;
    snap.repo = repo;
    std::string fingerprint = salt_ + "\n" + repo + "\n";
    for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      std::string rel = it->path().generic_string().substr(root.generic_string().size() + 1);
      if (it->is_symlink() || !valid_file_path(rel)) {
        if (it->is_directory()) it.disable_recursion_pending();
        continue;  // links and names a client could not ask for are not part of the repository
      }
      if (!it->is_regular_file()) continue;
      struct stat st{};
      if (::lstat(it->path().c_str(), &st) != 0) continue;
      if (snap.files.size() >= kMaxFilesPerRepo)
        return make_error(Rule::serve_too_many_files, "repository " + repo + " has more than " +
                                                       std::to_string(kMaxFilesPerRepo) + " files");
      snap.files.push_back({rel, uint64_t(st.st_size), {}});
      fingerprint += rel + '\0' + std::to_string(st.st_size) + '\0' + std::to_string(mtime_ns_of(st)) + "\n";
    }
    if (ec) return make_error(Rule::io_read, "cannot list " + repo + ": " + ec.message());
    std::sort(snap.files.begin(), snap.files.end(), [](auto& a, auto& b) { return a.path < b.path; });
    snap.commit = sha256_hex(fingerprint).substr(0, 40);
    if (revision != "main" && revision != snap.commit)
      return make_error(kRevisionNotFound, "revision " + revision + " of " + repo +
                                               " is not in the store (a local store serves main, now " + snap.commit +
                                               ")");
    return snap;
  }

  Result<std::unique_ptr<Input>> open(const Snapshot& snap, const RepoFile& file) override {
    int root = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) return make_error(Rule::io_read, "cannot open the store");
    int fd = open_beneath(root, snap.repo + "/" + file.path);
    ::close(root);
    if (fd < 0) return make_error(kEntryNotFound, file.path + " is not in " + snap.repo);
    auto in = std::make_unique<Input>();
    in->fd = fd;
    in->path = "/proc/self/fd/" + std::to_string(fd);
    struct stat st{};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return make_error(kEntryNotFound, file.path + " is not a file");
    in->size = uint64_t(st.st_size);
    in->mtime_ns = mtime_ns_of(st);
    MCDR_ASSIGN(in->sha256, cached_hash(fd, st));
    return in;
  }

 private:
  // Hashing a multi-gigabyte file on every request would dominate; a file whose identity,
  // size and mtime are unchanged is taken to hold the same bytes (as make and rsync do).
  Result<std::string> cached_hash(int fd, const struct stat& st) {
    auto id = std::make_tuple(uint64_t(st.st_dev), uint64_t(st.st_ino), uint64_t(st.st_size), mtime_ns_of(st));
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (auto it = hashes_.find(id); it != hashes_.end()) return it->second;
    }
    MCDR_ASSIGN(std::string h, hash_fd(fd, uint64_t(st.st_size)));
    std::lock_guard<std::mutex> lock(mu_);
    if (hashes_.size() > 100000) hashes_.clear();  // bounded memo
    hashes_[id] = h;
    return h;
  }

  std::string dir_, salt_;
  std::mutex mu_;
  std::map<std::tuple<uint64_t, uint64_t, uint64_t, int64_t>, std::string> hashes_;
};

}  // namespace

Input::~Input() {
  if (fd >= 0) ::close(fd);
  if (!temp_path.empty()) ::unlink(temp_path.c_str());
}

bool Input::unchanged() const {
  struct stat st{};
  return ::fstat(fd, &st) == 0 && uint64_t(st.st_size) == size && mtime_ns_of(st) == mtime_ns;
}

std::string hex(const uint8_t* bytes, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += digits[bytes[i] >> 4];
    s += digits[bytes[i] & 15];
  }
  return s;
}

std::string sha256_hex(const std::string& text) {
  auto d = mtd::sha256(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  return hex(d.data(), d.size());
}

Result<std::string> hash_fd(int fd, uint64_t size) {
  mtd::Sha256 h;
  std::vector<uint8_t> buf(1 << 20);
  for (uint64_t at = 0; at < size;) {
    ssize_t n = ::pread(fd, buf.data(), std::min<uint64_t>(buf.size(), size - at), off_t(at));
    if (n <= 0) return make_error(Rule::io_read, "cannot read the input");
    h.update(std::span<const uint8_t>(buf.data(), size_t(n)));
    at += uint64_t(n);
  }
  auto d = h.finish();
  return hex(d.data(), d.size());
}

std::unique_ptr<Origin> make_local_store(const std::string& dir, const std::string& salt) {
  return std::make_unique<LocalStore>(dir, salt);
}

}  // namespace modelcdr::serve
