// ZipReader: a strict reader for ZIP archives (PyTorch checkpoints, TorchScript, .npz).
// Why hand-written: general zip libraries are lenient by design (they find the end record by
// scanning, accept local/central disagreement, ignore gaps, skip CRC checks) and those are
// exactly the ambiguities attackers use to show one content to a scanner and another to
// torch.load. This reader locates every entry through the central directory *and* its local
// header and requires both to agree. CRC-32 and inflate come from libdeflate.
#pragma once
#include <functional>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "container/name_index.hpp"
#include "modelcdr/finding.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::container {

struct ZipEntry {
  std::string name;
  uint16_t method = 0;          // 0 stored, 8 deflate (anything else is rejected)
  uint16_t flags = 0;
  uint32_t crc32 = 0;           // from the central directory
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
  uint64_t data_offset = 0;     // file offset of the (compressed) data
};

// Entry names to entry indices (first entry of each name).
class ZipNameIndex {
 public:
  bool insert(const std::vector<ZipEntry>& entries, uint32_t i) { return index_.insert(i, Names{entries}); }
  int64_t find(const std::vector<ZipEntry>& entries, std::string_view name) const {
    return index_.find(name, Names{entries});
  }
  void clear() { index_.clear(); }
  void reserve(size_t n) { index_.reserve(n); }

 private:
  struct Names {
    const std::vector<ZipEntry>& entries;
    std::string_view operator()(uint32_t k) const { return entries[k].name; }
  };
  NameIndex index_;
};

struct ZipArchive {
  std::vector<ZipEntry> entries;  // central-directory order
  uint64_t prefix_bytes = 0;      // bytes before the first local header (polyglot / self-extractor)
  // Bytes the deflated entries may still inflate to, all reads of this archive together (the
  // CRC pass and entry_bytes): a total per file, not only per entry (zip.inflate-total).
  mutable uint64_t inflate_left = UINT64_MAX;
  mutable bool inflate_reported = false;  // zip.inflate-total reported once
  // The first entry with `name` (duplicates are findings). Indexed, because readers look up
  // one record per storage and checkpoints can hold tens of thousands.
  const ZipEntry* find(std::string_view name) const {
    if (indexed_count_ != entries.size()) build_index();
    int64_t i = index_.find(entries, name);
    return i < 0 ? nullptr : &entries[static_cast<size_t>(i)];
  }
  // read_zip hands over the index it built while checking names for duplicates.
  void adopt_index(ZipNameIndex index) const {
    index_ = std::move(index);
    indexed_count_ = entries.size();
  }

 private:
  void build_index() const {
    index_.clear();
    for (size_t i = 0; i < entries.size(); ++i) index_.insert(entries, static_cast<uint32_t>(i));
    indexed_count_ = entries.size();
  }
  mutable ZipNameIndex index_;
  mutable size_t indexed_count_ = static_cast<size_t>(-1);
};

struct ZipLimits {
  uint64_t max_entries = 1'000'000;
  uint64_t max_inflated_bytes = 1ull << 32;  // per deflated entry
  uint64_t max_inflate_ratio = 1000;         // inflated / compressed
  // All deflated entries of one file together, every read counted: this multiple of the file
  // size, at least the floor, at most the ceiling (as the codec cap in docs/RULES.md).
  uint64_t total_inflate_ratio = 64;
  uint64_t total_inflate_floor = 64ull << 20;
  uint64_t total_inflate_ceiling = 16ull << 30;
  // The file is a read-only file mapping (io::MappedFile): the CRC pass may drop its pages
  // behind itself. Never set for buffers in ordinary memory (release would zero them).
  bool release_pages = false;
};

// Parse the archive structure. Every anomaly becomes a Finding (rule ids "zip.*"); anomalies
// that make the content ambiguous (duplicate names, local/central mismatch, overlapping
// entries, bad CRC, encrypted or unknown-method entries, truncation, `..` or absolute names)
// are severity high and make `disarm` reject the file. A structurally unreadable archive
// returns an Error.
// `verify_crc` computes the CRC-32 of every entry (one sequential pass over the data).
// `deferred` (optional) names entries whose CRC the caller checks itself later (the torch
// writer computes the CRC of each stored storage record while copying it): the pass skips them.
using CrcDeferred = std::function<bool(const ZipEntry&)>;
Result<ZipArchive> read_zip(std::span<const uint8_t> file, Findings& findings, const ZipLimits& limits = {},
                            bool verify_crc = true, const CrcDeferred& deferred = {});

// The CRC pass for one entry: a mismatch, or a deflated entry that does not inflate to its
// size, is a high finding (zip.bad-crc / zip.bad-deflate ...), as in read_zip.
Status check_entry_crc(std::span<const uint8_t> file, const ZipEntry& entry, Findings& findings,
                       const ZipLimits& limits = {});
// The same, charging a deflated entry to the archive's total inflate budget first: past it,
// the entry is not inflated and one zip.inflate-total finding (high) is added.
Status check_entry_crc(const ZipArchive& zip, std::span<const uint8_t> file, const ZipEntry& entry, Findings& findings,
                       const ZipLimits& limits = {});

// The bytes of an entry: a span into `file` for stored entries; for deflated entries the
// inflated bytes are placed in `scratch` (bounded by limits) and a span into it is returned.
Result<std::span<const uint8_t>> entry_bytes(std::span<const uint8_t> file, const ZipEntry& entry,
                                             std::vector<uint8_t>& scratch, const ZipLimits& limits = {});
// The same, charging a deflated entry's size to the archive's total inflate budget first
// (rejected with zip.inflate-total once it is spent, before anything is inflated).
Result<std::span<const uint8_t>> entry_bytes(const ZipArchive& zip, std::span<const uint8_t> file, const ZipEntry& entry,
                                             std::vector<uint8_t>& scratch, const ZipLimits& limits = {});
// The total inflate budget of a file of `file_size` bytes under `limits`.
uint64_t total_inflate_budget(uint64_t file_size, const ZipLimits& limits);

}  // namespace modelcdr::container
