// ZipWriter: writes stored (uncompressed) ZIP archives the way PyTorch's writer does (§2.3 of
// FORMATS.md): 64-byte aligned data via an 'FB' padding extra field, flags 0x0808 with a data
// descriptor after each non-empty entry (so the CRC is computed while the payload streams
// through, in one pass), zip64 records when any size/offset needs them, correct CRC-32
// (libdeflate's accelerated crc32).
// Data is streamed: an entry's payload may be given in several chunks, so a tensor record is
// copied straight from the mapped input to the output without a full-size buffer.
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "io/atomic_output.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::container {

class ZipWriter {
 public:
  explicit ZipWriter(io::AtomicOutput& out, uint32_t alignment = 64) : out_(out), alignment_(alignment) {}

  // Whole entry from one buffer.
  Status add(const std::string& name, std::span<const uint8_t> data);
  // Entry of known size whose payload is then written by write_payload() calls (any chunking).
  // The size must be known up front: it decides zip64 extras and the alignment padding.
  // `phase`: place the payload at a file offset congruent to it modulo kPhaseUnit (64 KiB; it
  // must be a multiple of the alignment), at the cost of up to 64 KiB more padding, or less
  // where the padding would not fit the 16-bit extra field. The page cache holds a file in
  // folios of up to 64 KiB, and copy_file_range between offsets of the same phase moves them
  // whole: measured here on 1 GiB, 0.41 s at the same phase, 0.47-0.58 s at another.
  static constexpr uint64_t kPhaseUnit = 64 << 10;
  Status begin_entry(const std::string& name, uint64_t size, std::optional<uint64_t> phase = std::nullopt);
  Status write_payload(std::span<const uint8_t> chunk);
  // The whole payload of the open entry, copied from `size` bytes at `offset` of `fd` inside
  // the kernel while a second thread checksums the copied bytes, read back from the output,
  // just behind it. False (nothing written) where the kernel cannot copy these files or the
  // output cannot be mapped back.
  Result<bool> copy_payload_from(int fd, uint64_t offset, uint64_t size);
  Status end_entry();
  // Central directory, zip64 end records, end of central directory.
  Status finish();

  static uint32_t crc32(std::span<const uint8_t> data, uint32_t seed = 0);
  // CRC-32 of the payload written so far for the open entry.
  uint32_t entry_crc() const { return running_crc_; }

 private:
  struct Written {
    std::string name;
    uint64_t size = 0;
    uint32_t crc = 0;
    uint64_t local_offset = 0;
  };
  io::AtomicOutput& out_;
  uint32_t alignment_;
  std::vector<Written> written_;
  uint64_t pending_ = 0;  // payload bytes still expected for the open entry
  uint32_t running_crc_ = 0;
  bool open_ = false;
  bool finished_ = false;
  std::unordered_set<std::string> names_;  // duplicate names would make the output ambiguous
};

}  // namespace modelcdr::container
