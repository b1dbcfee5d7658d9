#include "serve/stream.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "serve/http_util.hpp"

namespace modelcdr::serve {

namespace {

constexpr size_t kChunk = 1 << 20;
constexpr auto kPoll = std::chrono::milliseconds(2);  // the writer does not signal each write

std::atomic<int> g_running{0};

// What the build thread tells the request thread.
struct Watch {
  std::mutex mu;
  std::condition_variable cv;
  std::string dir;           // the build's private folder, once made
  bool final = false;        // the bytes written are a complete rebuild of `size` bytes
  uint64_t size = 0;
  bool done = false;         // the build thread ended; `result` is set
  std::optional<Result<Resolved>> result;
};

// The rebuild's file in the build folder: AtomicOutput's temporary (".data.modelcdr-XXXXXX"),
// or `data` once the engine renamed it; the descriptor follows the file through the renames.
int open_data(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return -1;
  int fd = -1;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n == "data" || n.rfind(".data.modelcdr-", 0) == 0) {
      fd = ::openat(::dirfd(d), n.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
      if (fd >= 0) break;
    }
  }
  ::closedir(d);
  return fd;
}

uint64_t size_of(int fd) {
  struct stat st{};
  return ::fstat(fd, &st) == 0 ? uint64_t(st.st_size) : 0;
}

// Until the build has written its first bytes (a descriptor on them) or ended (-1). Nothing is
// promised to the client before bytes exist: refusals found while reading the input still get
// their 403 with the reason.
int wait_for_bytes(Watch& w) {
  std::unique_lock<std::mutex> lock(w.mu);
  int fd = -1;
  while (!w.done) {
    if (fd < 0 && !w.dir.empty()) fd = open_data(w.dir);
    if (fd >= 0 && size_of(fd) > 0) return fd;
    w.cv.wait_for(lock, kPoll);
  }
  if (fd >= 0) ::close(fd);
  return -1;
}

}  // namespace

void stream_first_build(const httplib::Request& req, httplib::Response& res, Gateway& gw, const std::string& repo,
                        const std::string& revision, const std::string& path, std::optional<OutputFormat> format,
                        const Snapshot& snap, ServeBuilt serve) {
  auto w = std::make_shared<Watch>();
  ++g_running;
  // The build runs on a thread of its own so that this one can send what it writes; it holds
  // the same locks and fills the cache as any build does, whether or not the client stays.
  std::thread([&gw, w, repo, revision, path, format] {
    auto r = gw.resolve(repo, revision, path, format, [w](BuildOptions& o) {
      // A conversion may still be refused once written (convert.dropped): it is not streamed,
      // so its refusal reaches the client as a 403 with the reason.
      if (o.to) return;
      o.on_build_dir = [w](const std::string& dir) {
        std::lock_guard<std::mutex> lock(w->mu);
        w->dir = dir;
      };
      o.on_data_final = [w](uint64_t size) {
        std::lock_guard<std::mutex> lock(w->mu);
        w->final = true;
        w->size = size;
      };
    });
    {
      std::lock_guard<std::mutex> lock(w->mu);
      w->result.emplace(std::move(r));
      w->done = true;
    }
    w->cv.notify_all();
    --g_running;
  }).detach();

  int fd = wait_for_bytes(*w);
  if (fd < 0) {
    std::lock_guard<std::mutex> lock(w->mu);
    if (!w->result->ok()) {
      const Error& e = w->result->error();
      return send_error(res, status_for(e.rule), e.rule, e.message);
    }
    return serve(req, res, **w->result, path);
  }
  res.set_header("X-Repo-Commit", snap.commit);
  res.set_header("X-Modelcdr-Report", "/api/reports/" + snap.repo + "/" + snap.commit + "/" + path);
  res.set_header("X-Modelcdr-Streamed", "1");  // built for this request: no size or ETag yet
  auto holder = std::shared_ptr<int>(new int(fd), [](int* p) {
    ::close(*p);
    delete p;
  });
  res.set_chunked_content_provider(
      "application/octet-stream",
      [holder, w](size_t offset, httplib::DataSink& sink) {
        static thread_local std::vector<char> buf(kChunk);
        for (;;) {
          const uint64_t have = size_of(*holder);
          if (have > offset) {
            ssize_t n = ::pread(*holder, buf.data(), std::min<uint64_t>(kChunk, have - offset), off_t(offset));
            if (n <= 0) return false;
            return sink.write(buf.data(), size_t(n));
          }
          std::unique_lock<std::mutex> lock(w->mu);
          if (w->final && offset == w->size) {
            sink.done();  // the last chunk: only now is the download complete
            return true;
          }
          if (w->final && offset > w->size) return false;
          if (w->done && !w->final) return false;  // the build failed: close, a broken download
          w->cv.wait_for(lock, kPoll);
        }
      },
      [holder](bool) {});
}

void wait_for_streamed_builds(unsigned limit_s) {
  for (unsigned i = 0; i < limit_s * 100 && g_running.load() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
}

}  // namespace modelcdr::serve
