#include "io/atomic_output.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "io/mapped_file.hpp"
#include "io/reflink.hpp"

namespace modelcdr::io {

namespace {
constexpr size_t kBufferSize = 1 << 20;
constexpr size_t kDirectWrite = 256 << 10;  // payloads this large bypass the buffer

Status write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return make_error(Rule::io_write, std::string("write failed: ") + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return ok_status();
}

std::string dir_of(const std::string& path) {
  auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
}  // namespace

bool path_exists(const std::string& path) {
  struct stat st{};
  return ::lstat(path.c_str(), &st) == 0;
}

namespace {
// Moves `from` to `to` only where nothing exists at `to`: renameat2(RENAME_NOREPLACE), or,
// where the file system lacks it, link() (which never replaces) and unlink of the temporary.
int rename_noreplace(const char* from, const char* to) {
  if (::renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) return -1;
  if (::link(from, to) != 0) return -1;
  ::unlink(from);
  return 0;
}
}  // namespace

Result<AtomicOutput> AtomicOutput::create(const std::string& final_path, bool durable, bool replace) {
  if (!replace && path_exists(final_path))
    return make_error(Rule::io_exists, final_path + " already exists (use --force to replace it)");
  AtomicOutput out;
  out.durable_ = durable;
  out.replace_ = replace;
  out.final_path_ = final_path;
  std::string base = final_path;
  auto slash = base.rfind('/');
  std::string dir = dir_of(final_path);
  std::string name = slash == std::string::npos ? base : base.substr(slash + 1);
  std::string tmpl = dir + "/." + name + ".modelcdr-XXXXXX";
  std::vector<char> t(tmpl.begin(), tmpl.end());
  t.push_back('\0');
  int fd = ::mkstemp(t.data());
  if (fd < 0) return make_error(Rule::io_create, "cannot create output in " + dir + ": " + std::strerror(errno));
  ::fchmod(fd, 0644);
  out.fd_ = fd;
  out.temp_path_ = t.data();
  out.buf_.reserve(kBufferSize);
  return out;
}

Result<AtomicOutput> AtomicOutput::create_memory(const std::string& name) {
  int fd = ::memfd_create("modelcdr-output", MFD_CLOEXEC);
  if (fd < 0) return make_error(Rule::io_create, "cannot create an in-memory output: " + std::string(std::strerror(errno)));
  AtomicOutput out;
  out.memory_ = true;
  out.final_path_ = name;
  out.fd_ = fd;
  out.buf_.reserve(kBufferSize);
  return out;
}

Status AtomicOutput::report_progress() {
  if (progress_ && !progress_(written_)) return make_error(Rule::engine_cancelled, "cancelled by the caller; nothing was written");
  return ok_status();
}

Status AtomicOutput::set_mode(unsigned mode) {
  if (fd_ < 0 || ::fchmod(fd_, static_cast<mode_t>(mode)) != 0)
    return make_error(Rule::io_chmod, "cannot set the mode of the output for " + final_path_);
  return ok_status();
}

AtomicOutput::AtomicOutput(AtomicOutput&& o) noexcept { *this = std::move(o); }

AtomicOutput& AtomicOutput::operator=(AtomicOutput&& o) noexcept {
  if (this != &o) {
    abandon();
    fd_ = o.fd_;
    temp_path_ = std::move(o.temp_path_);
    final_path_ = std::move(o.final_path_);
    buf_ = std::move(o.buf_);
    written_ = o.written_;
    memory_ = o.memory_;
    committed_ = std::move(o.committed_);
    progress_ = std::move(o.progress_);
    durable_ = o.durable_;
    replace_ = o.replace_;
    o.fd_ = -1;
    o.temp_path_.clear();
  }
  return *this;
}

AtomicOutput::~AtomicOutput() { abandon(); }

Status AtomicOutput::flush_buffer() {
  if (buf_.empty()) return ok_status();
  auto s = write_all(fd_, buf_.data(), buf_.size());
  buf_.clear();
  if (!s.ok()) return s;
  return report_progress();
}

Status AtomicOutput::write(std::span<const uint8_t> bytes) {
  if (fd_ < 0) return make_error(Rule::io_write, "output is closed");
  written_ += bytes.size();
  if (bytes.size() >= kDirectWrite) {
    MCDR_TRY(flush_buffer());
    MCDR_TRY(write_all(fd_, bytes.data(), bytes.size()));
    return report_progress();
  }
  if (buf_.size() + bytes.size() > kBufferSize) MCDR_TRY(flush_buffer());
  buf_.insert(buf_.end(), bytes.begin(), bytes.end());
  return ok_status();
}

Result<bool> AtomicOutput::append_copy_of(int in_fd, uint64_t offset, uint64_t size,
                                          const std::function<void(uint64_t)>& progress) {
  if (fd_ < 0) return make_error(Rule::io_write, "output is closed");
  MCDR_TRY(flush_buffer());
  // Steps of 8 MiB: few system calls, yet the reader of `progress` can follow closely.
  constexpr uint64_t kStep = 8 << 20;
  uint64_t done = 0;
  while (done < size) {
    loff_t in_off = static_cast<loff_t>(offset + done);
    size_t want = static_cast<size_t>(std::min(kStep, size - done));
    ssize_t got = ::copy_file_range(in_fd, &in_off, fd_, nullptr, want, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && done == 0 &&
        (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP || errno == EBADF))
      return false;  // nothing written: the caller falls back to read/write
    if (got < 0) return make_error(Rule::io_write, std::string("copy_file_range failed: ") + std::strerror(errno));
    if (got == 0) return make_error(Rule::io_read, "input ended early (changed while being copied?)", offset + done);
    done += static_cast<uint64_t>(got);
    written_ += static_cast<uint64_t>(got);
    progress(done);
    MCDR_TRY(report_progress());
  }
  return true;
}

AtomicOutput::Window& AtomicOutput::Window::operator=(Window&& o) noexcept {
  if (this != &o) {
    if (base_) ::munmap(base_, map_len_);
    base_ = std::exchange(o.base_, nullptr);
    map_len_ = std::exchange(o.map_len_, 0);
    lead_ = std::exchange(o.lead_, 0);
  }
  return *this;
}

AtomicOutput::Window::~Window() {
  if (base_) ::munmap(base_, map_len_);
}

void AtomicOutput::Window::drop(uint64_t offset, uint64_t length) const {
  release_mapped_pages(std::span<const uint8_t>(data() + offset, length));
}

Result<AtomicOutput::Window> AtomicOutput::window(uint64_t at, uint64_t length) const {
  if (fd_ < 0) return make_error(Rule::io_read, "output is closed");
  static const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  Window w;
  const uint64_t start = at / page * page;
  w.lead_ = static_cast<size_t>(at - start);
  w.map_len_ = static_cast<size_t>(w.lead_ + std::max<uint64_t>(length, 1));
  void* p = ::mmap(nullptr, w.map_len_, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(start));
  if (p == MAP_FAILED) return make_error(Rule::io_read, std::string("cannot map the output: ") + std::strerror(errno));
  w.base_ = static_cast<uint8_t*>(p);
  return w;
}

Status AtomicOutput::commit_memory() {
  struct stat st{};
  if (::fstat(fd_, &st) != 0) return make_error(Rule::io_read, "cannot read back the in-memory output");
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t got = ::pread(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return make_error(Rule::io_read, "cannot read back the in-memory output");
    done += static_cast<size_t>(got);
  }
  ::close(fd_);
  fd_ = -1;
  committed_ = std::move(bytes);
  return ok_status();
}

Status AtomicOutput::commit() {
  if (fd_ < 0) return make_error(Rule::io_commit, "output is closed");
  MCDR_TRY(flush_buffer());
  if (memory_) return commit_memory();
  if (durable_ && ::fsync(fd_) != 0) return make_error(Rule::io_fsync, std::string("fsync failed: ") + std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  int rc = replace_ ? ::rename(temp_path_.c_str(), final_path_.c_str())
                    : rename_noreplace(temp_path_.c_str(), final_path_.c_str());
  if (rc != 0) {
    int e = errno;
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
    if (e == EEXIST) return make_error(Rule::io_exists, final_path_ + " already exists (use --force to replace it)");
    return make_error(Rule::io_rename, "cannot move output into place: " + std::string(std::strerror(e)));
  }
  temp_path_.clear();
  return ok_status();
}

void AtomicOutput::abandon() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

Result<uint64_t> AtomicOutput::append_clone_of(int in_fd, uint64_t offset, uint64_t size) {
  if (fd_ < 0) return make_error(Rule::io_write, "output is closed");
  MCDR_TRY(flush_buffer());
  const uint64_t shared = clone_range(in_fd, offset, fd_, written_, size);
  if (shared == 0) return uint64_t{0};
  written_ += shared;
  MCDR_TRY(report_progress());
  // The ioctl leaves the file position where it was; later writes must land after the clone.
  if (::lseek(fd_, static_cast<off_t>(written_), SEEK_SET) < 0)
    return make_error(Rule::io_write, std::string("cannot seek the output: ") + std::strerror(errno));
  return shared;
}

}  // namespace modelcdr::io
