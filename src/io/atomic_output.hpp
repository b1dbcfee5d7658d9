// AtomicOutput: every output file is written to a temporary name in the destination folder
// and renamed into place only by commit(). A failed or abandoned run leaves nothing behind.
// Writes are buffered into large sequential chunks (tensor payloads go straight through).
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "modelcdr/result.hpp"

namespace modelcdr::io {

class AtomicOutput {
 public:
  // `durable`: fsync the file before the rename. Off by default, like cp and torch.save: the
  // rename still guarantees that readers see either nothing or the whole file, but flushing
  // gigabytes to the device would make disarm several times slower than a copy.
  // `replace`: commit() may replace an existing file at final_path (the user said --force).
  // Without it an existing file is never replaced: create() refuses it up front and commit()
  // links the temporary into place without replacing (so a file that appears meanwhile wins).
  static Result<AtomicOutput> create(const std::string& final_path, bool durable = false, bool replace = false);
  // An output kept in memory (Sink::memory): the bytes go to an anonymous memfd, so every
  // writer path (buffered writes, window() checksums, the copy fallbacks) works unchanged;
  // commit() reads the finished file into memory_bytes(). Nothing is visible before commit().
  static Result<AtomicOutput> create_memory(const std::string& name);
  AtomicOutput() = default;
  AtomicOutput(AtomicOutput&& o) noexcept;
  AtomicOutput& operator=(AtomicOutput&& o) noexcept;
  AtomicOutput(const AtomicOutput&) = delete;
  AtomicOutput& operator=(const AtomicOutput&) = delete;
  ~AtomicOutput();  // removes the temporary file unless committed

  Status write(std::span<const uint8_t> bytes);
  Status write(std::string_view text) {
    return write(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }
  uint64_t tell() const { return written_; }

  // Appends `size` bytes read at `offset` of `in_fd` with copy_file_range, so the data moves
  // inside the kernel as cp moves it, without a trip through a user buffer. `progress(copied)`
  // runs after each step with the bytes appended so far. Returns false, having written nothing,
  // where the kernel or file system cannot copy between these files; the caller then streams.
  Result<bool> append_copy_of(int in_fd, uint64_t offset, uint64_t size,
                              const std::function<void(uint64_t)>& progress);
  // Shares `size` bytes at `offset` of `in_fd` with the end of the output (FICLONERANGE, see
  // io/reflink.hpp) instead of copying them. `offset`, the output's size and `size` must be
  // multiples of the file system's block size. Returns the bytes shared (possibly 0: another
  // file system, no reflink support); the caller copies whatever is left.
  Result<uint64_t> append_clone_of(int in_fd, uint64_t offset, uint64_t size);
  int fd() const { return fd_; }
  // A read-only window on `length` bytes of the output from offset `at` (a shared mapping of
  // the temporary file, which shows what later writes put there): for checksumming exactly
  // what will be committed without copying it out again. Only bytes already written may be
  // touched. Measured on 1 GiB: a trailing pread pass slowed the kernel copy by 40-80%, a
  // trailing mapping by under 10%.
  class Window {
   public:
    Window() = default;
    Window(Window&& o) noexcept { *this = std::move(o); }
    Window& operator=(Window&& o) noexcept;
    ~Window();
    const uint8_t* data() const { return base_ + lead_; }
    // Unmaps the pages of [offset, offset + length) (relative to data()), keeping RSS flat.
    void drop(uint64_t offset, uint64_t length) const;

   private:
    friend class AtomicOutput;
    uint8_t* base_ = nullptr;
    size_t map_len_ = 0;
    size_t lead_ = 0;
  };
  Result<Window> window(uint64_t at, uint64_t length) const;
  Status set_mode(unsigned mode);  // permission bits of the file (0644 unless set)
  Status flush() { return flush_buffer(); }  // make everything written visible to window()
  Status commit();  // flush, fsync, rename over final_path
  void abandon();   // remove the temporary file now

  const std::string& final_path() const { return final_path_; }
  bool in_memory() const { return memory_; }
  // The committed bytes of a memory output (empty before commit()).
  std::vector<uint8_t>& memory_bytes() { return committed_; }

  // Called with the bytes written so far each time data reaches the file (at most every
  // buffer's worth, and every step of a kernel copy); returning false stops the write with
  // engine.cancelled. Used for progress and cancellation between chunks.
  void set_progress(std::function<bool(uint64_t)> hook) { progress_ = std::move(hook); }

 private:
  Status flush_buffer();
  Status report_progress();
  Status commit_memory();
  int fd_ = -1;
  bool memory_ = false;
  std::vector<uint8_t> committed_;
  std::function<bool(uint64_t)> progress_;
  std::string temp_path_, final_path_;
  std::vector<uint8_t> buf_;
  uint64_t written_ = 0;
  bool durable_ = false;
  bool replace_ = false;
};

// True when something (a file, a folder, a symbolic link, even a dangling one) exists at `path`.
bool path_exists(const std::string& path);

}  // namespace modelcdr::io
