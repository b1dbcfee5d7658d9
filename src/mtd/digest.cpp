#include "mtd/digest.hpp"

#include <openssl/evp.h>

#include "blake3.h"

#include "mtd/permute.hpp"

#include <algorithm>
#include <cstdlib>
#include <string>

namespace modelcdr::mtd {

namespace {
EVP_MD_CTX* ctx_of(void* p) { return static_cast<EVP_MD_CTX*>(p); }
// Fetched once: EVP_sha256() is a legacy handle that OpenSSL 3 fetches from its provider again
// on every EVP_DigestInit_ex, and a record digest starts over once per 16 KiB leaf (65536 times
// a GiB): 0.62 against 0.59 s of CPU per GiB of leaves here. The fetched method is never freed.
const EVP_MD* sha256_md() {
  static const EVP_MD* md = [] {
    EVP_MD* fetched = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return fetched ? static_cast<const EVP_MD*>(fetched) : EVP_sha256();
  }();
  return md;
}
}  // namespace

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_of(ctx_), sha256_md(), nullptr) != 1) std::abort();  // out of memory
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_of(ctx_)); }

void Sha256::update(std::span<const uint8_t> bytes) {
  if (!bytes.empty()) EVP_DigestUpdate(ctx_of(ctx_), bytes.data(), bytes.size());
}

Digest Sha256::finish() {
  Digest d{};
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx_of(ctx_), d.data(), &len);
  EVP_DigestInit_ex(ctx_of(ctx_), sha256_md(), nullptr);
  return d;
}

Digest sha256(std::span<const uint8_t> bytes) {
  Sha256 h;
  h.update(bytes);
  return h.finish();
}

namespace {
static_assert(sizeof(blake3_hasher) <= 1920 && alignof(blake3_hasher) <= 16, "Blake3::state_ too small");
blake3_hasher* b3_of(unsigned char* p) { return reinterpret_cast<blake3_hasher*>(p); }
}  // namespace

Blake3::Blake3() { blake3_hasher_init(b3_of(state_)); }

void Blake3::update(std::span<const uint8_t> bytes) {
  if (!bytes.empty()) blake3_hasher_update(b3_of(state_), bytes.data(), bytes.size());
}

Digest Blake3::finish() {
  Digest d{};
  blake3_hasher_finalize(b3_of(state_), d.data(), d.size());
  blake3_hasher_reset(b3_of(state_));
  return d;
}

Digest blake3(std::span<const uint8_t> bytes) {
  Blake3 h;
  h.update(bytes);
  return h.finish();
}

const char* tree_hash_name(HashScheme s) { return s == HashScheme::sha256 ? "sha-256-tree" : "blake3-tree"; }

Hasher::Hasher(HashScheme s) {
  if (s == HashScheme::sha256) sha_.emplace();
  else b3_.emplace();
}

Digest hash_of(HashScheme s, std::span<const uint8_t> bytes) {
  Hasher h(s);
  h.update(bytes);
  return h.finish();
}

TreeDigest::TreeDigest(uint64_t nbytes, size_t leaf, HashScheme scheme)
    : nbytes_(nbytes), leaf_(leaf), leaves_(static_cast<size_t>((nbytes + leaf - 1) / leaf)),
      have_(leaves_.size(), false), missing_(leaves_.size()), h_(scheme) {}

void TreeDigest::add(uint64_t offset, std::span<const uint8_t> bytes) {
  if (offset % leaf_ != 0 || offset + bytes.size() > nbytes_) std::abort();  // caller bug
  for (size_t at = 0; at < bytes.size(); at += leaf_) {
    const size_t i = static_cast<size_t>((offset + at) / leaf_);
    const size_t len = std::min(leaf_, bytes.size() - at);
    // A short piece is only allowed as the record's last leaf.
    if (len != leaf_ && offset + at + len != nbytes_) std::abort();
    h_.update(bytes.subspan(at, len));
    leaves_[i] = h_.finish();
    if (!have_[i]) have_[i] = true, --missing_;
  }
}

void TreeDigest::put(size_t i, const Digest& leaf_digest) {
  if (i >= leaves_.size()) std::abort();  // caller bug
  leaves_[i] = leaf_digest;
  if (!have_[i]) have_[i] = true, --missing_;
}

Digest TreeDigest::finish() const {
  if (missing_ != 0) std::abort();  // caller bug: a leaf was never hashed
  Hasher root(h_.scheme());
  // "modelcdr-mtd sha-256-tree" or "modelcdr-mtd blake3-tree", with its 0.
  const std::string label = std::string("modelcdr-mtd ") + tree_hash_name(h_.scheme());
  root.update(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(label.c_str()), label.size() + 1));
  uint8_t b[16];
  for (int i = 0; i < 8; ++i) b[i] = uint8_t(nbytes_ >> (8 * i)), b[8 + i] = uint8_t(uint64_t(leaf_) >> (8 * i));
  root.update(std::span<const uint8_t>(b, 16));
  for (const auto& d : leaves_) root.update(d);
  return root.finish();
}

size_t tree_leaf_bytes(size_t element_size) {
  // Element sizes are powers of two up to 16 (complex128); anything else gets byte leaves.
  if (element_size == 0 || element_size > 16 || (element_size & (element_size - 1)) != 0) element_size = 1;
  return size_t(kPermBlock) * element_size;
}

}  // namespace modelcdr::mtd
