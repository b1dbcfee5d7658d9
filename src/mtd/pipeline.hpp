// The two-core record pipeline of protect and restore (docs/MTD.md §2): one record streams
// through a ring of private chunk buffers. A helper thread prepares chunks in order (read,
// permute, en/decrypt into the slot); the leaves of a prepared chunk are hashed by whichever
// core is free (the helper when the ring is full, the caller while it waits for its next
// chunk), and the caller then hands the chunk to the writer, in order. The hash is most of the
// work, so sharing its leaves keeps both cores busy whatever the split of the rest.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "modelcdr/api.hpp"
#include "mtd/digest.hpp"

namespace modelcdr::mtd {

// One chunk buffer set. `prepare` fills `out` (what the writer gets) and lists the leaves to
// hash: pointers into this slot's buffers and their leaf index in the record's tree digest.
struct ChunkSlot {
  struct Leaf {
    size_t index;
    const uint8_t* data;
    size_t size;
  };
  std::vector<uint8_t> out, staged, plain;  // staged/plain: restore's source blocks as read / decrypted
  std::vector<Leaf> leaves;
  std::vector<Digest> digests;  // digests[i] of leaves[i], once hashed
  size_t length = 0;            // bytes of `out` to write
  uint32_t crc = 0;             // CRC-32 of out[0, length), taken by `prepare` while it is in cache
  std::atomic<size_t> claimed{0}, done{0};
};

class RecordPipeline {
 public:
  // prepare(offset, length, slot): output bytes [offset, offset + length) of the record, called
  // on the helper thread in order; it must only touch the slot and state no one else uses.
  using Prepare = std::function<void(size_t offset, size_t length, ChunkSlot& slot)>;
  // consume(slot): on the calling thread, in order, after every leaf of the slot is hashed.
  using Consume = std::function<Status(const ChunkSlot& slot)>;

  // Leaves are hashed with `scheme` (the map format's hash).
  RecordPipeline(size_t chunk_bytes, size_t ring, HashScheme scheme);
  // Streams a record of `size` bytes; chunk_bytes is a multiple of every leaf size.
  Status run(uint64_t size, const Prepare& prepare, const Consume& consume);

 private:
  size_t chunk_;
  HashScheme scheme_;
  std::vector<std::unique_ptr<ChunkSlot>> ring_;
};

}  // namespace modelcdr::mtd
