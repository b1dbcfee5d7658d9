// Tensor digests for MTD maps: SHA-256 from OpenSSL 3 (EVP), which uses the CPU's SHA
// extensions where present. Measured on this project's 2-core EPYC build machine over 256 MiB:
// OpenSSL SHA-256 1.50 GB/s, libsodium BLAKE2b 0.88 GB/s, OpenSSL SHA-512 0.53 GB/s; every
// byte of a model is hashed once per protect or restore (map format 4), and the hash still sets
// the pace: mtd/pipeline.hpp shares it between both cores.
//
#pragma once
#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace modelcdr::mtd {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::span<const uint8_t> bytes);
  Digest finish();  // and starts over

 private:
  void* ctx_;  // EVP_MD_CTX
};

Digest sha256(std::span<const uint8_t> bytes);

// The record digest of map format 4, "sha-256-tree" (docs/MTD.md §2): the record is cut into
// leaves of `leaf` bytes (the last one may be short), each leaf is hashed with SHA-256, and
//   digest = SHA-256("modelcdr-mtd sha-256-tree" 0x00 || u64le nbytes || u64le leaf || leaf_0 || ...).
// Leaves may be added in any order, which lets restore hash the protected bytes in the order
// the inverse permutation reads them: each byte is read once, into a private buffer, and that
// buffer is both hashed and restored.
class TreeDigest {
 public:
  TreeDigest(uint64_t nbytes, size_t leaf);
  // Hashes bytes [offset, offset + bytes.size()) of the record: offset is a multiple of the leaf
  // size and the range ends on a leaf boundary or at the end of the record.
  void add(uint64_t offset, std::span<const uint8_t> bytes);
  // Records the digest of leaf i (SHA-256 of its bytes), hashed elsewhere (RecordPipeline).
  void put(size_t i, const Digest& leaf_digest);
  bool complete() const { return missing_ == 0; }
  size_t leaf_bytes() const { return leaf_; }
  Digest finish() const;  // every leaf must have been added once

 private:
  uint64_t nbytes_;
  size_t leaf_;
  std::vector<Digest> leaves_;
  std::vector<bool> have_;
  size_t missing_;
  Sha256 h_;
};

// The leaf size for a record of elements of `element_size` bytes: one permutation block
// (4096 elements), so that every block the permutation moves is exactly one leaf.
size_t tree_leaf_bytes(size_t element_size);

}  // namespace modelcdr::mtd
