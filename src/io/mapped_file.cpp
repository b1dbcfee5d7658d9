#include "io/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <mutex>

namespace modelcdr::io {

namespace {

// Guarded mappings, read by the signal handler: lock-free atomics only (async-signal-safe).
struct GuardSlot {
  std::atomic<uintptr_t> begin{0}, end{0};  // end == 0: free
  std::atomic<bool> changed{false};
};
constexpr int kSlots = 256;
GuardSlot g_slots[kSlots];
std::atomic<uintptr_t> g_page{4096};

void on_sigbus(int sig, siginfo_t* info, void*) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  const uintptr_t page = g_page.load(std::memory_order_relaxed);
  for (auto& slot : g_slots) {
    uintptr_t b = slot.begin.load(std::memory_order_acquire), e = slot.end.load(std::memory_order_acquire);
    if (e == 0 || addr < b || addr >= e) continue;
    // Zero pages from the faulting page to the end of the mapping: one fault for a whole
    // truncated tail, and the interrupted read completes (with zeros) instead of crashing.
    uintptr_t from = addr & ~(page - 1);
    void* p = ::mmap(reinterpret_cast<void*>(from), e - from, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) break;
    slot.changed.store(true, std::memory_order_release);
    return;
  }
  // Not one of ours: the default action (terminate with a core), as without this handler.
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void install_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_page.store(static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE)));
    struct sigaction sa{};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
  });
}

int register_mapping(const uint8_t* data, size_t size) {
  install_handler();
  for (int i = 0; i < kSlots; ++i) {
    // Claim a free slot with end = 1 (an empty range while it is filled in), then publish.
    uintptr_t expected = 0;
    if (!g_slots[i].end.compare_exchange_strong(expected, 1)) continue;
    g_slots[i].changed.store(false);
    g_slots[i].begin.store(reinterpret_cast<uintptr_t>(data));
    g_slots[i].end.store(reinterpret_cast<uintptr_t>(data) + size);
    return i;
  }
  return -1;  // table full: this mapping is unguarded (a truncation would crash as before)
}

void unregister_mapping(int slot) {
  if (slot < 0) return;
  g_slots[slot].begin.store(UINTPTR_MAX);  // empty range until the slot is claimed again
  g_slots[slot].end.store(0);
}

// Reads up to `size` bytes from the start of `fd` into `out`; returns how many were read
// (fewer when the file shrank since fstat), or -1 with errno set.
ssize_t read_all(int fd, uint8_t* out, size_t size) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, out + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

}  // namespace

Result<MappedFile> MappedFile::open(const std::string& path, size_t read_below) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(Rule::io_open, std::string("cannot open: ") + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return make_error(Rule::io_open, std::string("cannot stat: ") + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(Rule::io_not_regular, "not a regular file");
  }
  MappedFile m;
  m.path_ = path;
  m.size_ = static_cast<size_t>(st.st_size);
  m.fd_ = fd;  // closed by m from here on
  if (m.size_ > 0 && m.size_ < read_below) {
    m.buffer_.reset(new uint8_t[m.size_]);  // no zero fill: every byte is read or zeroed below
    ssize_t n = read_all(fd, m.buffer_.get(), m.size_);
    if (n < 0) return make_error(Rule::io_read, std::string("cannot read: ") + std::strerror(errno));
    if (static_cast<size_t>(n) < m.size_) {  // shrank: zeros after its end, as a truncated mapping reads
      std::memset(m.buffer_.get() + n, 0, m.size_ - static_cast<size_t>(n));
      m.short_read_ = true;
    }
    m.data_ = m.buffer_.get();
  } else if (m.size_ > 0) {
    void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) return make_error(Rule::io_mmap, std::string("cannot map: ") + std::strerror(errno));
    m.data_ = static_cast<const uint8_t*>(p);
    m.slot_ = register_mapping(m.data_, m.size_);
  }
  return m;
}

void MappedFile::reset() {
  unregister_mapping(slot_);  // before munmap: the range may be reused by the next mapping
  if (data_ && !buffer_) ::munmap(const_cast<uint8_t*>(data_), size_);
  if (fd_ >= 0) ::close(fd_);
  buffer_.reset();
  data_ = nullptr;
  size_ = 0;
  fd_ = -1;
  slot_ = -1;
  short_read_ = false;
}

MappedFile::MappedFile(MappedFile&& o) noexcept { *this = std::move(o); }

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    reset();
    data_ = o.data_;
    size_ = o.size_;
    fd_ = o.fd_;
    slot_ = o.slot_;
    buffer_ = std::move(o.buffer_);
    short_read_ = o.short_read_;
    path_ = std::move(o.path_);
    o.data_ = nullptr;
    o.size_ = 0;
    o.fd_ = -1;
    o.slot_ = -1;
    o.short_read_ = false;
  }
  return *this;
}

MappedFile::~MappedFile() { reset(); }

void release_mapped_pages(std::span<const uint8_t> span) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uintptr_t begin = (reinterpret_cast<uintptr_t>(span.data()) + page - 1) & ~(page - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(span.data()) + span.size()) & ~(page - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void populate_mapped_pages(std::span<const uint8_t> span) {
#ifndef MADV_POPULATE_READ
  constexpr int MADV_POPULATE_READ = 22;  // <linux/mman.h>; older C libraries lack the name
#endif
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uintptr_t begin = reinterpret_cast<uintptr_t>(span.data()) & ~(page - 1);
  uintptr_t end = (reinterpret_cast<uintptr_t>(span.data()) + span.size() + page - 1) & ~(page - 1);
  if (!span.empty() && end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ);
}

void MappedFile::advise_sequential() const {
  if (data_ && !buffer_) ::madvise(const_cast<uint8_t*>(data_), size_, MADV_SEQUENTIAL);
}

bool MappedFile::changed() const {
  if (slot_ >= 0 && g_slots[slot_].changed.load(std::memory_order_acquire)) return true;
  if (short_read_) return true;
  struct stat st{};
  if (fd_ >= 0 && (::fstat(fd_, &st) != 0 || static_cast<uint64_t>(st.st_size) != size_)) return true;
  return false;
}

}  // namespace modelcdr::io
