// Digests for MTD maps (docs/MTD.md §2). Map format 5 hashes with BLAKE3 (the official C
// implementation with its SIMD assembly: 0.15 s of one core per GiB on this project's 2-core
// EPYC machine, against 0.59 s for OpenSSL's SHA-256 with the SHA extensions, 1.82 GB/s);
// format 4 maps, still read, used SHA-256 from OpenSSL 3 (EVP). Every byte of a model is hashed
// once per protect or restore, shared between both cores by mtd/pipeline.hpp.
//
#pragma once
#include <array>
#include <cstdint>
#include <optional>
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

// BLAKE3 (default hash mode, 32-byte output), streaming.
class Blake3 {
 public:
  Blake3();
  void update(std::span<const uint8_t> bytes);
  Digest finish();  // and starts over

 private:
  alignas(16) unsigned char state_[1920];  // a blake3_hasher (digest.cpp checks the size)
};

Digest blake3(std::span<const uint8_t> bytes);

// The hash a map's digests are made with, fixed by its format version: SHA-256 in format 4,
// BLAKE3 in format 5. Every digest of one map (records, layout, non-tensor data, the protected
// file's digest) uses the same one.
enum class HashScheme : uint8_t { sha256, blake3 };

// The payload's "hash" name of the record digest of `s`: "sha-256-tree" or "blake3-tree".
const char* tree_hash_name(HashScheme s);

// One streaming hash of either scheme.
class Hasher {
 public:
  explicit Hasher(HashScheme s);
  void update(std::span<const uint8_t> bytes) { sha_ ? sha_->update(bytes) : b3_->update(bytes); }
  Digest finish() { return sha_ ? sha_->finish() : b3_->finish(); }  // and starts over
  HashScheme scheme() const { return sha_ ? HashScheme::sha256 : HashScheme::blake3; }

 private:
  std::optional<Sha256> sha_;
  std::optional<Blake3> b3_;
};

Digest hash_of(HashScheme s, std::span<const uint8_t> bytes);

// The record digest (docs/MTD.md §2), "blake3-tree" in map format 5 and "sha-256-tree" in
// format 4: the record is cut into leaves of `leaf` bytes (the last one may be short), each
// leaf is hashed with H (BLAKE3 or SHA-256), and
//   digest = H("modelcdr-mtd <name>" 0x00 || u64le nbytes || u64le leaf || leaf_0 || ...).
// Leaves may be added in any order, which lets restore hash the protected bytes in the order
// the inverse permutation reads them: each byte is read once, into a private buffer, and that
// buffer is both hashed and restored.
class TreeDigest {
 public:
  TreeDigest(uint64_t nbytes, size_t leaf, HashScheme scheme);
  // Hashes bytes [offset, offset + bytes.size()) of the record: offset is a multiple of the leaf
  // size and the range ends on a leaf boundary or at the end of the record.
  void add(uint64_t offset, std::span<const uint8_t> bytes);
  // Records the digest of leaf i (H of its bytes), hashed elsewhere (RecordPipeline).
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
  Hasher h_;
};

// The leaf size for a record of elements of `element_size` bytes: one permutation block
// (4096 elements), so that every block the permutation moves is exactly one leaf.
size_t tree_leaf_bytes(size_t element_size);

}  // namespace modelcdr::mtd
