// Where the container stage found each storage's bytes in the input: kept beside the Model IR,
// never in it (the IR describes a model only). A reader fills one ByteRanges per model; the
// writer's fast copy path (kernel copy, pread) and the one "verify while copying" CRC check
// that the container stage may leave to the copy read it (docs/ARCHITECTURE.md, hand-offs).
#pragma once
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "modelcdr/model.hpp"

namespace modelcdr {

struct ByteRange {
  // The Storage::bytes this range describes. A transform that replaces a payload
  // (Storage::set_owned) leaves its range stale: ByteRanges::of then returns nullptr, so a
  // writer never copies the input's bytes in place of the transformed ones.
  std::span<const uint8_t> view;
  // `view` lies in the read-only mapping of the input file: a writer may drop its pages once
  // written (bounded resident set). Never true for owned or in-memory buffers.
  bool mapped = false;
  int fd = -1;          // when mapped: the input's descriptor, to pread or kernel-copy the bytes
  uint64_t offset = 0;  // when mapped: the file offset of `view`
  // The CRC-32 the input's zip directory claims for these bytes, when the container stage left
  // checking it to the copy (ReadOptions::defer_storage_crc): whoever reads the bytes checks it.
  std::optional<uint32_t> expected_crc;
  bool in_file() const { return mapped && fd >= 0; }
};

class ByteRanges {
 public:
  // Room for `n` storages up front (a reader that knows them all: no doubling copy).
  void reserve(size_t n) {
    ranges_.reserve(n);
    present_.reserve(n);
  }
  void set(model::StorageId id, ByteRange r) {
    if (id >= ranges_.size()) ranges_.resize(static_cast<size_t>(id) + 1);
    ranges_[id] = r;
    present_.resize(ranges_.size(), false);
    present_[id] = true;
  }
  // The range of storage `id` while `s` (that storage) still holds the bytes it describes.
  const ByteRange* of(model::StorageId id, const model::Storage& s) const {
    if (id >= ranges_.size() || !present_[id]) return nullptr;
    const ByteRange& r = ranges_[id];
    return r.view.data() == s.bytes.data() && r.view.size() == s.bytes.size() ? &r : nullptr;
  }
  const ByteRange* of(const model::Model& m, model::StorageId id) const {
    return id < m.storages.size() ? of(id, m.storages[id]) : nullptr;
  }

 private:
  std::vector<ByteRange> ranges_;
  std::vector<bool> present_;
};

}  // namespace modelcdr
