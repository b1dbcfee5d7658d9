// ZipWriter: writes stored (uncompressed) ZIP archives the way PyTorch's writer does (§2.3 of
// docs/FORMATS.md): 64-byte aligned data via an 'FB' padding extra field, flags 0x0808 with a data
// descriptor after each non-empty entry (so the CRC is computed while the payload streams
// through, in one pass), zip64 records when any size/offset needs them, correct CRC-32
// (libdeflate's accelerated crc32).
// Data is streamed: an entry's payload may be given in several chunks, so a tensor record is
// copied straight from the mapped input to the output without a full-size buffer.
#pragma once
#include <cstdint>
#include <deque>
#include <future>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "container/name_index.hpp"
#include "io/atomic_output.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::container {

class ZipWriter {
 public:
  explicit ZipWriter(io::AtomicOutput& out, uint32_t alignment = 64) : out_(out), alignment_(alignment) {}
  ~ZipWriter();
  ZipWriter(const ZipWriter&) = delete;
  ZipWriter& operator=(const ZipWriter&) = delete;

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
  // Where the 64 KiB phase does not fit the padding, the phase modulo 4 KiB (the common
  // file-system block) is kept instead, so the record's whole blocks can still be shared.
  static constexpr uint64_t kBlockPhaseUnit = 4 << 10;
  Status begin_entry(const std::string& name, uint64_t size, std::optional<uint64_t> phase = std::nullopt);
  Status write_payload(std::span<const uint8_t> chunk);
  // As write_payload, with the chunk's CRC-32 already known (taken by whoever produced the
  // chunk, from its cache): combined into the entry's CRC rather than computed again.
  Status write_payload(std::span<const uint8_t> chunk, uint32_t chunk_crc);
  // The whole payload of the open entry, copied from `size` bytes at `offset` of `fd` inside
  // the kernel while a second thread checksums the copied bytes, read back from the output,
  // just behind it. False (nothing written) where the kernel cannot copy these files or the
  // output cannot be mapped back.
  // With `expected_crc` (the input directory's CRC-32 of these bytes) and sharing allowed
  // (set_reflink), the whole blocks of the payload are shared with the input instead
  // (FICLONERANGE) and only the partial head and tail blocks are copied; the descriptor then
  // carries `expected_crc`, and a background task reads the shared bytes back from the output
  // once and compares, while later records are written. finish() waits for every such check
  // and fails on a mismatch (naming `source`), so a bad record never reaches a committed file.
  Result<bool> copy_payload_from(int fd, uint64_t offset, uint64_t size, std::optional<uint32_t> expected_crc = {},
                                 const std::string& source = {});
  // Sharing blocks with the input is on by default; off (--no-reflink), every byte is copied
  // and the kernel is kept from sharing on its own (copy_file_range clones aligned ranges).
  void set_reflink(bool on) { reflink_ = on; }
  // Room for n entries: a writer that knows its record count (one a storage) saves the name
  // index's regrowth, which hashes every name again.
  void reserve_entries(size_t n) {
    written_.reserve(n);
    names_.reserve(n);
  }
  // Payload bytes shared with the input so far.
  uint64_t shared_bytes() const { return shared_bytes_; }
  Status end_entry();
  // Central directory, zip64 end records, end of central directory.
  Status finish();

  static uint32_t crc32(std::span<const uint8_t> data, uint32_t seed = 0);
  // CRC-32 of the payload written so far for the open entry.
  uint32_t entry_crc() const { return running_crc_; }

 private:
  Status append_payload(std::span<const uint8_t> chunk, std::optional<uint32_t> chunk_crc);
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
  struct PendingCheck {
    std::string source;
    uint32_t expected = 0;
    std::future<uint32_t> crc;  // CRC-32 of the record as the output holds it
  };
  Result<bool> clone_payload(int fd, uint64_t offset, uint64_t size, uint32_t expected_crc, const std::string& source);
  Result<bool> copy_unshared(int fd, uint64_t offset, uint64_t size, const std::function<void(uint64_t)>& progress);
  Status settle_oldest_check();
  uint64_t block_size();
  bool reflink_ = true;
  uint64_t block_size_ = ~uint64_t{0};  // of the output's file system; found on first use
  uint64_t shared_bytes_ = 0;
  int direct_fd_ = -2;  // the output opened again with O_DIRECT for the checks; -2: not yet, -1: failed
  std::deque<PendingCheck> checks_;
  NameIndex names_;  // indices into written_: duplicate names would make the output ambiguous
};

}  // namespace modelcdr::container
