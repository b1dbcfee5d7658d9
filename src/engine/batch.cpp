#include "engine/batch.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <thread>

#include "engine/output_names.hpp"
#include "engine/classify.hpp"
#include "io/atomic_output.hpp"
#include "io/mapped_file.hpp"

namespace fs = std::filesystem;

namespace modelcdr::engine {

namespace {

using engine::Kind;

constexpr int kMaxDepth = 256;           // folders nested deeper are reported, not walked
constexpr size_t kMaxEntries = 1000000;  // entries per run

// A file descriptor that closes itself.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }

 private:
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int fd_ = -1;
};

struct Id {
  dev_t dev = 0;
  ino_t ino = 0;
  bool operator==(const Id&) const = default;
};

std::optional<Id> id_of(int fd) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) return std::nullopt;
  return Id{st.st_dev, st.st_ino};
}

std::string errno_text() { return std::strerror(errno); }

// A path that names `name` inside the folder open as `dirfd`, for the path-based APIs
// (MappedFile, AtomicOutput): the kernel resolves it through the descriptor, so no component
// of the folder's own path (nor its length) matters any more.
std::string fd_path(int dirfd, const std::string& name) {
  return "/proc/self/fd/" + std::to_string(dirfd) + (name.empty() ? "" : "/" + name);
}

// True when the folder open as `fd` is `target` or lies below it (found by walking "..").
bool is_within(int fd, const Id& target) {
  Fd cur(::dup(fd));
  for (int depth = 0; cur.ok() && depth < 4096; ++depth) {
    auto id = id_of(cur.get());
    if (!id) return false;
    if (*id == target) return true;
    Fd up(::openat(cur.get(), "..", O_DIRECTORY | O_RDONLY | O_CLOEXEC));
    if (!up.ok() || id_of(up.get()) == id) return false;  // reached "/"
    cur = std::move(up);
  }
  return false;
}

std::vector<std::string> split(const std::string& rel) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= rel.size()) {
    size_t slash = rel.find('/', start);
    if (slash == std::string::npos) slash = rel.size();
    if (slash > start) parts.push_back(rel.substr(start, slash - start));
    start = slash + 1;
  }
  return parts;
}

// Opens (and with `create`, makes) the folder chain `parts` below `root`, refusing symbolic
// links and anything that is not a folder at every step.
Result<Fd> open_chain(int root, const std::vector<std::string>& parts, bool create) {
  Fd cur(::dup(root));
  if (!cur.ok()) return make_error(Rule::io_open, "cannot open folder: " + errno_text());
  for (const auto& part : parts) {
    int fd = ::openat(cur.get(), part.c_str(), O_DIRECTORY | O_NOFOLLOW | O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
      if (::mkdirat(cur.get(), part.c_str(), 0755) != 0 && errno != EEXIST)
        return make_error(Rule::io_mkdir, "cannot create folder '" + part + "': " + errno_text());
      fd = ::openat(cur.get(), part.c_str(), O_DIRECTORY | O_NOFOLLOW | O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
      if (errno == ELOOP || errno == ENOTDIR)
        return make_error(Rule::io_not_a_folder, "'" + part + "' is a symbolic link or not a folder: not followed");
      return make_error(Rule::io_open, "cannot open folder '" + part + "': " + errno_text());
    }
    cur = Fd(fd);
  }
  return cur;
}

// Opens the output root named by the user. Components outside the input are resolved as
// usual (the user's own path may contain links), but once the walk is inside the input
// tree every component must be a real folder: a link there was planted by the input's author.
Result<Fd> open_output_root(const std::string& out, const Id& input) {
  std::error_code ec;
  fs::path p = fs::absolute(out, ec);
  if (ec) return make_error(Rule::io_open, "cannot resolve the output folder: " + ec.message());
  Fd cur(::open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  bool inside = is_within(cur.get(), input);
  for (const auto& c : p.relative_path()) {
    std::string part = c.string();
    if (part.empty() || part == ".") continue;
    int fd = ::openat(cur.get(), part.c_str(), O_DIRECTORY | O_NOFOLLOW | O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
      if (::mkdirat(cur.get(), part.c_str(), 0755) != 0 && errno != EEXIST)
        return make_error(Rule::io_mkdir, "cannot create output folder: " + errno_text());
      fd = ::openat(cur.get(), part.c_str(), O_DIRECTORY | O_NOFOLLOW | O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0 && (errno == ELOOP || errno == ENOTDIR)) {
      struct stat st{};
      bool link = ::fstatat(cur.get(), part.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
      if (!link) return make_error(Rule::io_not_a_folder, "'" + part + "' in the output path is not a folder");
      if (inside)
        return make_error(Rule::io_symlink_in_input,
                          "'" + part + "' is a symbolic link inside the input folder: the output must be a real folder");
      fd = ::openat(cur.get(), part.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) return make_error(Rule::io_open, "cannot open output folder: " + errno_text());
    cur = Fd(fd);
    inside = is_within(cur.get(), input);
  }
  if (id_of(cur.get()) == input) return make_error(Rule::io_output_is_input, "the output folder is the input folder");
  return cur;
}

enum class EntryType { regular, symlink, special, error };

struct Entry {
  std::string rel;
  EntryType type = EntryType::regular;
  std::string error;
};

// Every entry below `dirfd`, never following links, skipping the output folder (by identity).
void walk(int dirfd, const std::string& rel, int depth, const Id& output, std::vector<Entry>& out) {
  int copy = ::dup(dirfd);  // fdopendir takes it over; closedir closes it
  DIR* d = copy >= 0 ? ::fdopendir(copy) : nullptr;
  if (!d) {
    if (copy >= 0) ::close(copy);
    out.push_back({rel, EntryType::error, "cannot read folder: " + errno_text()});
    return;
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(std::move(n));
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    if (out.size() >= kMaxEntries) {
      out.push_back({rel, EntryType::error, "more than 1000000 entries: the rest is not processed"});
      return;
    }
    std::string r = rel.empty() ? name : rel + "/" + name;
    struct stat st{};
    if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      out.push_back({r, EntryType::error, "cannot stat: " + errno_text()});
    } else if (S_ISDIR(st.st_mode)) {
      if (Id{st.st_dev, st.st_ino} == output) continue;  // the output folder inside the input
      if (depth >= kMaxDepth) {
        out.push_back({r, EntryType::error, "folders nested deeper than 256 levels: not processed"});
        continue;
      }
      Fd sub(::openat(dirfd, name.c_str(), O_DIRECTORY | O_NOFOLLOW | O_RDONLY | O_CLOEXEC));
      if (!sub.ok()) out.push_back({r, EntryType::error, "cannot open folder: " + errno_text()});
      else walk(sub.get(), r, depth + 1, output, out);
    } else if (S_ISREG(st.st_mode)) {
      out.push_back({r, EntryType::regular, {}});
    } else {
      out.push_back({r, S_ISLNK(st.st_mode) ? EntryType::symlink : EntryType::special, {}});
    }
  }
}

enum class Action { disarm, index, copy, skip, reject };

struct Plan {
  Action action = Action::skip;
  engine::Classification what;
  std::string out_rel;  // output path relative to the output root
  OutputFormat format = OutputFormat::pt;
  Error error;          // reject
  std::string note;     // skip
};

std::string parent_of(const std::string& rel) {
  auto slash = rel.rfind('/');
  return slash == std::string::npos ? "" : rel.substr(0, slash);
}
std::string name_of(const std::string& rel) {
  auto slash = rel.rfind('/');
  return slash == std::string::npos ? rel : rel.substr(slash + 1);
}

Plan reject(Rule rule, std::string message) {
  Plan p;
  p.action = Action::reject;
  p.error = make_error(std::move(rule), std::move(message));
  return p;
}
Plan skip(std::string note) {
  Plan p;
  p.action = Action::skip;
  p.note = std::move(note);
  return p;
}

// What to do with one classified file. Model files are rebuilt or rejected; only inert
// content is ever copied, and only when asked; unsupported models are never copied.
Plan decide(const std::string& rel, const engine::Classification& c, const BatchOptions& o) {
  const std::string name = name_of(rel);
  const std::string dir = parent_of(rel);
  auto at = [&](const std::string& n) { return dir.empty() ? n : dir + "/" + n; };
  const bool hf_text = o.format_given && o.disarm.output_format == OutputFormat::safetensors;
  Plan p;
  p.what = c;
  switch (c.kind) {
    case Kind::model:
      p.action = Action::disarm;
      p.format = o.format_given ? o.disarm.output_format : format_for_name(name).value_or(OutputFormat::pt);
      p.out_rel = at(output_file_name(name, p.format));
      return p;
    case Kind::unsupported_model:
      return reject(Rule::format_unsupported,
                    c.detail + " model: modelcdr does not rebuild this format yet, so it is not copied");
    case Kind::unreadable: return reject(Rule::io_read, "cannot read: " + c.detail);
    case Kind::json:
      if (is_shard_index(name)) {
        p.action = Action::index;
        p.out_rel = at(index_output_name(name, o.format_given ? std::optional(o.disarm.output_format) : std::nullopt));
        return p;
      }
      [[fallthrough]];
    case Kind::text:
    case Kind::inert_binary:
      if (!o.copy_other && !(hf_text && c.kind != Kind::inert_binary))
        return skip("not a model file: left out (use --copy-other to copy it)");
      p.action = Action::copy;
      p.out_rel = rel;
      return p;
    case Kind::code:
      if (!o.copy_other) return skip("source code or a script: left out");
      if (!o.copy_code)
        return reject(Rule::copy_not_inert, "not copied: source code or a script is not inert (--copy-code copies it)");
      p.action = Action::copy;
      p.out_rel = rel;
      return p;
    case Kind::unknown_binary:
      if (!o.copy_other) return skip("not a model file (" + c.detail + "): left out");
      return reject(Rule::copy_not_inert, "not copied: " + c.detail);
  }
  return reject(Rule::copy_not_inert, "not copied: " + c.detail);
}

// Two inputs that would be written to one name: both are rejected before anything is written.
void reject_collisions(const std::vector<Entry>& entries, std::vector<Plan>& plans, const std::string& out) {
  std::map<std::string, std::vector<size_t>> by_name;
  for (size_t i = 0; i < plans.size(); ++i) {
    if (plans[i].out_rel.empty() || plans[i].action == Action::reject || plans[i].action == Action::skip) continue;
    by_name[plans[i].out_rel].push_back(i);
    if (plans[i].action == Action::disarm) by_name[plans[i].out_rel + ".architecture.json"].push_back(i);
  }
  for (const auto& [name, users] : by_name) {
    if (users.size() < 2) continue;
    std::string list;
    for (size_t i : users) list += (list.empty() ? "" : ", ") + entries[i].rel;
    for (size_t i : users) {
      auto what = plans[i].what;
      plans[i] = reject(Rule::io_name_collision, "output name collision: " + list + " would all be written to " + out +
                                                 "/" + name + "; none of them is written");
      plans[i].what = what;
    }
  }
}

// Replaces the descriptor paths in what the user sees by the folder names they gave.
void show_as(std::string& s, const std::string& proc_dir, const std::string& shown) {
  for (size_t at = s.find(proc_dir); at != std::string::npos; at = s.find(proc_dir, at + shown.size()))
    s.replace(at, proc_dir.size(), shown);
}

FileReport base_report(const std::string& input, const char* format, FileStatus status) {
  FileReport r;
  r.input = input;
  r.format = format;
  r.status = status;
  return r;
}

FileReport rejected(FileReport r, Error e) {
  r.status = FileStatus::rejected;
  r.error = std::move(e);
  r.output.clear();
  return r;
}

Status write_bytes(const std::string& path, std::span<const uint8_t> bytes, const DisarmOptions& o) {
  MCDR_ASSIGN(io::AtomicOutput out, io::AtomicOutput::create(path, o.fsync, o.force));
  MCDR_TRY(out.write(bytes));
  return out.commit();
}

// Copies exactly the bytes that were checked: the file is read once, checked again, written.
FileReport copy_checked(const std::string& in, const std::string& out, const Plan& p, const DisarmOptions& o) {
  FileReport r = base_report(in, engine::kind_name(p.what.kind), FileStatus::skipped);
  auto file = io::MappedFile::open(in);
  if (!file.ok()) return rejected(r, file.error());
  auto again = engine::classify_bytes(name_of(out), file->bytes());
  if (again.kind != p.what.kind) return rejected(r, make_error(Rule::io_changed, "file changed while being processed"));
  if (auto s = write_bytes(out, file->bytes(), o); !s.ok()) return rejected(r, s.error());
  r.output = out;
  r.note = "copied after a check: " + p.what.detail + " (inert)";
  return r;
}

FileReport write_index(const std::string& in, const std::string& out, const BatchOptions& o) {
  FileReport r = base_report(in, "hf-index", FileStatus::skipped);
  auto file = io::MappedFile::open(in);
  if (!file.ok()) return rejected(r, file.error());
  auto text = rewrite_index(file->bytes(), o.format_given ? std::optional(o.disarm.output_format) : std::nullopt);
  if (!text.ok()) return rejected(r, text.error());
  auto bytes = std::span(reinterpret_cast<const uint8_t*>(text->data()), text->size());
  if (auto s = write_bytes(out, bytes, o.disarm); !s.ok()) return rejected(r, s.error());
  r.output = out;
  r.note = "shard index checked and rewritten for the output names";
  return r;
}

// Carries out one plan through descriptors: input and output folders are opened component by
// component without following links.
FileReport execute(int in_root, int out_root, const Entry& e, const Plan& p, const BatchOptions& o,
                   const std::string& in_shown, const std::string& out_shown) {
  const std::string shown_input = in_shown + "/" + e.rel;
  auto in_dir = open_chain(in_root, split(parent_of(e.rel)), false);
  if (!in_dir.ok()) return rejected(base_report(shown_input, "unknown", FileStatus::rejected), in_dir.error());
  auto out_dir = open_chain(out_root, split(parent_of(p.out_rel)), true);
  if (!out_dir.ok()) return rejected(base_report(shown_input, "unknown", FileStatus::rejected), out_dir.error());
  const std::string in_path = fd_path(in_dir->get(), name_of(e.rel));
  const std::string out_path = fd_path(out_dir->get(), name_of(p.out_rel));
  FileReport r;
  if (p.action == Action::disarm) {
    DisarmOptions d = o.disarm;
    d.output_format = p.format;
    r = o.disarm_one ? o.disarm_one(in_path, out_path, d) : disarm_file(in_path, out_path, d);
  } else if (p.action == Action::index) {
    r = write_index(in_path, out_path, o);
  } else {
    r = copy_checked(in_path, out_path, p, o.disarm);
  }
  const std::string out_dir_shown = out_shown + (parent_of(p.out_rel).empty() ? "" : "/" + parent_of(p.out_rel));
  const std::string in_dir_shown = in_shown + (parent_of(e.rel).empty() ? "" : "/" + parent_of(e.rel));
  r.input = shown_input;
  for (std::string* s : {&r.output, &r.architecture}) show_as(*s, fd_path(out_dir->get(), ""), out_dir_shown);
  if (r.error) {
    show_as(r.error->message, fd_path(out_dir->get(), ""), out_dir_shown);
    show_as(r.error->message, fd_path(in_dir->get(), ""), in_dir_shown);
  }
  return r;
}

FileReport report_for(const std::string& shown_input, const Entry& e, const Plan& p) {
  FileReport r = base_report(shown_input, p.what.kind == Kind::model ? p.what.detail.c_str() : engine::kind_name(p.what.kind),
                             p.action == Action::reject ? FileStatus::rejected : FileStatus::skipped);
  if (p.action == Action::reject) r.error = p.error;
  else r.note = p.note;
  return r;
}

Plan plan_for_special(const Entry& e) {
  if (e.type == EntryType::symlink) return skip("symbolic link: not followed, left out");
  if (e.type == EntryType::special) return skip("not a regular file: left out");
  return reject(Rule::io_read, e.error);
}

template <class F>
void parallel_for(size_t n, unsigned jobs, F&& f) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < n; i = next++) f(i);
  };
  std::vector<std::thread> pool;
  for (unsigned j = 0; j < std::max(1u, jobs); ++j) pool.emplace_back(worker);
  for (auto& t : pool) t.join();
}

}  // namespace

Result<std::vector<FileReport>> disarm_directory(const std::string& in, const std::string& out, const BatchOptions& o) {
  Fd in_root(::open(in.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC));
  if (!in_root.ok()) return make_error(Rule::io_open, in + ": cannot open input folder: " + errno_text());
  auto in_id = id_of(in_root.get());
  auto out_root = open_output_root(out, *in_id);
  if (!out_root.ok()) return make_error(out_root.error().rule, out + ": " + out_root.error().message);
  auto out_id = id_of(out_root->get());
  if (is_within(in_root.get(), *out_id))
    return make_error(Rule::io_output_contains_input, out + ": the output folder contains the input folder");
  std::vector<Entry> entries;
  walk(in_root.get(), "", 0, *out_id, entries);
  std::vector<Plan> plans(entries.size());
  parallel_for(entries.size(), o.jobs, [&](size_t i) {
    const Entry& e = entries[i];
    if (e.type != EntryType::regular) {
      plans[i] = plan_for_special(e);
      return;
    }
    auto dir = open_chain(in_root.get(), split(parent_of(e.rel)), false);
    if (!dir.ok()) {
      plans[i] = reject(dir.error().rule, dir.error().message);
      return;
    }
    auto what = classify(fd_path(dir->get(), name_of(e.rel)));
    plans[i] = decide(e.rel, what, o);
    plans[i].what = what;
  });
  reject_collisions(entries, plans, out);
  std::vector<FileReport> reports(entries.size());
  std::atomic<size_t> done{0};
  parallel_for(entries.size(), o.jobs, [&](size_t i) {
    const Plan& p = plans[i];
    if (p.action == Action::skip || p.action == Action::reject)
      reports[i] = report_for(in + "/" + entries[i].rel, entries[i], p);
    else
      reports[i] = execute(in_root.get(), out_root->get(), entries[i], p, o, in, out);
    if (o.progress) o.progress(++done, entries.size());
  });
  return reports;
}

}  // namespace modelcdr::engine
