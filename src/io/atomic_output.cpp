#include "io/atomic_output.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace modelcdr::io {

namespace {
constexpr size_t kBufferSize = 1 << 20;
constexpr size_t kDirectWrite = 256 << 10;  // payloads this large bypass the buffer

Status write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return make_error("io.write", std::string("write failed: ") + std::strerror(errno));
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

Result<AtomicOutput> AtomicOutput::create(const std::string& final_path, bool durable) {
  AtomicOutput out;
  out.durable_ = durable;
  out.final_path_ = final_path;
  std::string base = final_path;
  auto slash = base.rfind('/');
  std::string dir = dir_of(final_path);
  std::string name = slash == std::string::npos ? base : base.substr(slash + 1);
  std::string tmpl = dir + "/." + name + ".modelcdr-XXXXXX";
  std::vector<char> t(tmpl.begin(), tmpl.end());
  t.push_back('\0');
  int fd = ::mkstemp(t.data());
  if (fd < 0) return make_error("io.create", "cannot create output in " + dir + ": " + std::strerror(errno));
  ::fchmod(fd, 0644);
  out.fd_ = fd;
  out.temp_path_ = t.data();
  out.buf_.reserve(kBufferSize);
  return out;
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
    durable_ = o.durable_;
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
  return s;
}

Status AtomicOutput::write(std::span<const uint8_t> bytes) {
  if (fd_ < 0) return make_error("io.write", "output is closed");
  written_ += bytes.size();
  if (bytes.size() >= kDirectWrite) {
    MCDR_TRY(flush_buffer());
    return write_all(fd_, bytes.data(), bytes.size());
  }
  if (buf_.size() + bytes.size() > kBufferSize) MCDR_TRY(flush_buffer());
  buf_.insert(buf_.end(), bytes.begin(), bytes.end());
  return ok_status();
}

Status AtomicOutput::commit() {
  if (fd_ < 0) return make_error("io.commit", "output is closed");
  MCDR_TRY(flush_buffer());
  if (durable_ && ::fsync(fd_) != 0) return make_error("io.fsync", std::string("fsync failed: ") + std::strerror(errno));
  ::close(fd_);
  fd_ = -1;
  if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
    int e = errno;
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
    return make_error("io.rename", "cannot move output into place: " + std::string(std::strerror(e)));
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

}  // namespace modelcdr::io
