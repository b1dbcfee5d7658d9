#include "engine/scan_walk.hpp"

#include <fcntl.h>
#include <fnmatch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <thread>

#include "engine/classify.hpp"
#include "formats/registry.hpp"

namespace fs = std::filesystem;

namespace modelcdr::engine {

namespace {

using ScanOne = std::function<FileReport(const std::string&, const ScanOptions&)>;

// A model-file name from the format table (x.pt, x.joblib.gz, ...), or one of the names
// scikit-learn / joblib users give pickles that no format owns.
bool has_model_extension(const std::string& path) {
  std::string n = fs::path(path).filename().string();
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (formats::model_stem(formats::strip_compression(n))) return true;
  for (const char* ext : {".sav", ".model.gz", ".dat"})
    if (n.size() > std::strlen(ext) && n.compare(n.size() - std::strlen(ext), std::string::npos, ext) == 0) return true;
  return false;
}

// A file found in a folder that is not a model file: info, never an error (a model folder is
// mostly config, tokenizer and text). Unknown binaries say so, named per file.
FileReport not_a_model(const std::string& path, const Classification& c) {
  FileReport r;
  r.input = path;
  r.status = FileStatus::skipped;
  r.format = kind_name(c.kind);
  if (c.kind == Kind::unknown_binary) {
    r.note = "unknown binary content (not a model format any loader modelcdr knows reads; not checked)";
    add_finding(r.findings, Severity::info, Rule::scan_unknown_binary, r.note);
  } else {
    std::string detail = c.detail;
    std::transform(detail.begin(), detail.end(), detail.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    const bool same = detail.empty() || detail == kind_name(c.kind);  // "text: text", "json: JSON"
    r.note = std::string("not a model file (") + kind_name(c.kind) + (same ? "" : ": " + c.detail) + ")";
    add_finding(r.findings, Severity::info, Rule::scan_not_a_model, r.note);
  }
  return r;
}

// A file found in a folder is sorted by its bytes, read once by the scan itself (triage):
// a model file goes on to be scanned, anything else is reported as not a model file. A
// ScanWalkOptions::scan_one must honour ScanOptions::triage (Engine::scan does).
FileReport scan_found(const std::string& path, const ScanOptions& options, const ScanOne& scan_one) {
  ScanOptions sorted = options;
  sorted.triage = [&path, next = options.triage](std::span<const uint8_t> bytes) -> std::optional<FileReport> {
    Classification c = classify_bytes(fs::path(path).filename().string(), bytes);
    if (c.kind == Kind::model || c.kind == Kind::unsupported_model ||
        (c.kind == Kind::unknown_binary && has_model_extension(path)))
      return next ? next(bytes) : std::nullopt;  // a name a loader is pointed at is checked, whatever its bytes
    return not_a_model(path, c);
  };
  return scan_one(path, sorted);  // unreadable: the scan reports why
}

std::vector<std::string> walk(const std::string& root, const std::vector<std::string>& globs) {
  std::vector<std::string> out;
  std::error_code ec;
  auto it = fs::recursive_directory_iterator(root, fs::directory_options::skip_permission_denied, ec);
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    // The relative path only matters to --exclude (path arithmetic per entry, on the serial
    // part of a folder scan before the workers start).
    const std::string rel = globs.empty() ? std::string() : it->path().lexically_relative(root).generic_string();
    std::error_code sec;
    const bool link = it->is_symlink(sec);
    const bool dir = !link && it->is_directory(sec);
    if (dir && (it->path().filename() == ".git" || excluded(rel, globs))) {
      it.disable_recursion_pending();  // a repository's objects, or a folder the user left out
      continue;
    }
    if (link || dir || excluded(rel, globs)) continue;
    if (it->is_regular_file(sec)) out.push_back(it->path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Standard input, spooled to a private temporary file (0600, unlinked at once where the kernel
// has O_TMPFILE) so that it can be mapped like any file; bounded by `limit`.
FileReport scan_stdin(const ScanOptions& options, uint64_t limit, const ScanOne& scan_one) {
  FileReport r;
  r.input = "-";
  r.format = "unknown";
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = tmp && *tmp ? tmp : "/tmp";
  std::string path;
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    std::string templ = dir + "/modelcdr-stdin-XXXXXX";
    fd = ::mkstemp(templ.data());
    if (fd >= 0) path = templ;
  }
  if (fd < 0) {
    r.status = FileStatus::error;
    r.error = make_error(Rule::io_stdin, "cannot create a temporary file for standard input in " + dir);
    return r;
  }
  uint64_t total = 0;
  char buf[1 << 16];
  bool too_big = false, failed = false;
  for (;;) {
    ssize_t n = ::read(0, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      failed = true;
      break;
    }
    total += static_cast<uint64_t>(n);
    if (total > limit) {
      too_big = true;
      break;
    }
    for (ssize_t off = 0; off < n;) {
      ssize_t w = ::write(fd, buf + off, static_cast<size_t>(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        failed = true;
        break;
      }
      off += w;
    }
    if (failed) break;
  }
  if (too_big || failed) {
    r.status = FileStatus::error;
    r.error = too_big ? make_error(Rule::io_stdin_too_large, "standard input is larger than the limit of " +
                                                             std::to_string(limit) + " bytes")
                      : make_error(Rule::io_stdin, "cannot read standard input or spool it to " + dir);
  } else {
    r = scan_one(path.empty() ? "/proc/self/fd/" + std::to_string(fd) : path, options);
    r.input = "-";
  }
  if (!path.empty()) ::unlink(path.c_str());
  ::close(fd);
  return r;
}

}  // namespace

bool excluded(const std::string& relative_path, const std::vector<std::string>& globs) {
  for (std::string g : globs) {
    while (g.size() > 1 && g.back() == '/') g.pop_back();
    if (::fnmatch(g.c_str(), relative_path.c_str(), 0) == 0) return true;
  }
  return false;
}

std::vector<FileReport> scan_paths(const std::vector<std::string>& paths, const ScanWalkOptions& options) {
  const ScanOne scan_one = options.scan_one ? options.scan_one
                                            : ScanOne([](const std::string& p, const ScanOptions& o) { return scan_file(p, o); });
  // Every file first, so that progress can count; then one report per file, in order.
  struct Item {
    std::string path;
    bool found;  // found in a folder (sorted by content) rather than named by the user
  };
  std::vector<Item> items;
  for (const auto& p : paths) {
    std::error_code ec;
    if (p != "-" && fs::is_directory(fs::symlink_status(p, ec))) {
      for (auto& f : walk(p, options.excludes)) items.push_back({std::move(f), true});
    } else {
      items.push_back({p, false});
    }
  }
  // Files are scanned on a few threads (one Engine serves them all, engine.hpp): a folder of
  // small files is bound by per-file latency (open, map, page faults), not by one core. The
  // reports keep the walk's order. At most kMaxWorkers files are in memory at once.
  constexpr unsigned kMaxWorkers = 4;
  std::vector<FileReport> reports(items.size());
  // Largest files first: one big pickle started last would keep one core busy after the other
  // has finished (wall time = its start + its scan). Sizes are hints only (a file may change).
  std::vector<size_t> order(items.size());
  {
    std::vector<uintmax_t> size(items.size(), 0);
    for (size_t i = 0; i < items.size(); ++i) {
      order[i] = i;
      std::error_code ec;
      if (items[i].path != "-") size[i] = fs::file_size(items[i].path, ec);
      if (ec) size[i] = 0;
    }
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return size[a] > size[b]; });
  }
  std::atomic<size_t> next{0};
  std::mutex progress_lock;
  std::exception_ptr failed;  // what escaped a worker is rethrown here, as the serial loop would
  auto work = [&] {
    for (size_t k; (k = next.fetch_add(1)) < items.size();) try {
      const size_t i = order[k];
      const auto& it = items[i];
      if (options.progress) {
        std::lock_guard<std::mutex> hold(progress_lock);
        options.progress(k, it.path);  // k files started before this one
      }
      if (it.path == "-") reports[i] = scan_stdin(options.scan, options.max_stdin_bytes, scan_one);
      else if (it.found) reports[i] = scan_found(it.path, options.scan, scan_one);
      else reports[i] = scan_one(it.path, options.scan);
    } catch (...) {
      std::lock_guard<std::mutex> hold(progress_lock);
      if (!failed) failed = std::current_exception();
      next = items.size();
    }
  };
  const unsigned workers = static_cast<unsigned>(
      std::min<size_t>({items.size(), std::max(1u, std::thread::hardware_concurrency()), kMaxWorkers}));
  std::vector<std::thread> pool;
  for (unsigned w = 1; w < workers; ++w) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (failed) std::rethrow_exception(failed);
  return reports;
}

std::string scan_summary(const std::vector<FileReport>& reports, double seconds) {
  std::map<std::string, size_t> by_status, by_format;
  for (const auto& r : reports) {
    ++by_status[r.status == FileStatus::skipped ? "not a model file" : status_name(r.status)];
    ++by_format[r.format];
  }
  std::ostringstream out;
  out << "\nsummary: " << reports.size() << " files in " << std::fixed;
  out.precision(2);
  out << seconds << " s\n";
  out << "  by status:\n";
  for (const auto& [k, v] : by_status) out << "    " << k << std::string(k.size() < 18 ? 18 - k.size() : 1, ' ') << v << "\n";
  out << "  by format:\n";
  for (const auto& [k, v] : by_format) out << "    " << k << std::string(k.size() < 18 ? 18 - k.size() : 1, ' ') << v << "\n";
  return out.str();
}

}  // namespace modelcdr::engine
