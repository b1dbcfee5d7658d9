// AtomicOutput: every output file is written to a temporary name in the destination folder
// and renamed into place only by commit(). A failed or abandoned run leaves nothing behind.
// Writes are buffered into large sequential chunks (tensor payloads go straight through).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "modelcdr/result.hpp"

namespace modelcdr::io {

class AtomicOutput {
 public:
  // `durable`: fsync the file before the rename. Off by default, like cp and torch.save: the
  // rename still guarantees that readers see either nothing or the whole file, but flushing
  // gigabytes to the device would make disarm several times slower than a copy.
  static Result<AtomicOutput> create(const std::string& final_path, bool durable = false);
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
  Status commit();  // flush, fsync, rename over final_path
  void abandon();   // remove the temporary file now

  const std::string& final_path() const { return final_path_; }

 private:
  Status flush_buffer();
  int fd_ = -1;
  std::string temp_path_, final_path_;
  std::vector<uint8_t> buf_;
  uint64_t written_ = 0;
  bool durable_ = false;
};

}  // namespace modelcdr::io
