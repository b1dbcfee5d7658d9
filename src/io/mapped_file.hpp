// MappedFile: the input, mapped read-only once. Stages pass spans into it, never copies.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "modelcdr/result.hpp"

namespace modelcdr::io {

// Drops the resident pages of a read-only file mapping inside `span` (rounded inwards to page
// boundaries) once they have been consumed, so a streaming pass over a 20 GB model keeps a
// bounded resident set; the data stays in the page cache. Only for spans of a MappedFile:
// on anonymous memory this would zero the data.
void release_mapped_pages(std::span<const uint8_t> span);
// Maps every page of `span` in one call (MADV_POPULATE_READ, Linux 5.14+; a no-op before),
// for data about to be read in random order by several threads: page faults taken one by one
// from two threads of the same process contend in the kernel. Measured on MTD protect of
// 1 GiB: 0.34 s of system time instead of 0.69-1.37 s, and 1.2 s wall instead of 1.6-2.2 s.
void populate_mapped_pages(std::span<const uint8_t> span);

// Reading a mapped file that another process truncates raises SIGBUS. A process-wide handler
// (installed with the first mapping) catches faults inside registered input mappings, maps
// anonymous zero pages over the rest of that mapping and marks it changed; the read goes on
// with zeros and the file is rejected before any output is committed. Faults anywhere else
// get the default action.
class MappedFile;

class MappedFile {
 public:
  // `read_below`: a file smaller than this many bytes is read into a private buffer instead
  // of being mapped (one read() instead of mmap + page faults + munmap, which with several
  // threads costs a TLB shootdown each: a folder scan is mostly files of a few KiB).
  static Result<MappedFile> open(const std::string& path, size_t read_below = 0);
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  // True for a file read into a private buffer (open's `read_below`): bytes() is heap memory,
  // never to be passed to release_mapped_pages (DONTNEED would zero it).
  bool buffered() const { return buffer_ != nullptr; }
  bool contains(std::span<const uint8_t> s) const {
    return data_ && s.data() >= data_ && s.data() + s.size() <= data_ + size_;
  }
  size_t size() const { return size_; }
  // The open descriptor behind the mapping: bulk copies read with pread() from it, which
  // costs far less than faulting the mapping's pages in one by one.
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  // Tell the kernel we will stream through [off, off+len) once (readahead, then drop).
  void advise_sequential() const;
  // True when the file changed under the mapping: a read past its new end was caught (the
  // SIGBUS handler below mapped zero pages there) or its size is no longer the mapped size;
  // for a buffered file, when the read ended before the size fstat gave or the size changed.
  // Checked before an output is committed (io.input-changed).
  bool changed() const;

 private:
  void reset();

  int slot_ = -1;  // index in the process-wide table of guarded mappings, -1 = none
  std::unique_ptr<uint8_t[]> buffer_;  // a small file's bytes (data_ points here), else null
  bool short_read_ = false;            // the buffered read ended early: the file shrank
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;
  std::string path_;
};

}  // namespace modelcdr::io
