#include <gtest/gtest.h>
#include <sodium.h>

#include <cstring>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "mtd/digest.hpp"
#include "mtd/keys.hpp"
#include "mtd/mtd.hpp"
#include "mtd/permute.hpp"
#include "mtd/pipeline.hpp"
#include "mtd/seal.hpp"

using namespace modelcdr::mtd;
using modelcdr::Rule;

namespace {
Key32 key_of(uint8_t b) {
  Key32 k;
  k.fill(b);
  return k;
}
}  // namespace

TEST(MtdPermute, RoundTripAllSizes) {
  ASSERT_GE(sodium_init(), 0);
  for (size_t esize : {1u, 2u, 4u, 8u}) {
    for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(4095), size_t(4096), size_t(4097), size_t(3 * 4096 + 17),
                     size_t(70 * 4096)}) {
      std::vector<uint8_t> in(n * esize), out(n * esize), back(n * esize);
      for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i * 131 + (i >> 8));
      Key32 k = key_of(static_cast<uint8_t>(n + esize));
      permute(in.data(), out.data(), n, esize, k.data(), false);
      permute(out.data(), back.data(), n, esize, k.data(), true);
      EXPECT_EQ(in, back) << "esize " << esize << " n " << n;
    }
  }
}

TEST(MtdPermute, IsAPermutationThatMovesAcrossBlocks) {
  const size_t n = 64 * 4096 + 100;
  std::vector<uint32_t> in(n), out(n);
  std::iota(in.begin(), in.end(), 0u);
  Key32 k = key_of(7);
  permute(reinterpret_cast<uint8_t*>(in.data()), reinterpret_cast<uint8_t*>(out.data()), n, 4, k.data(), false);
  std::vector<uint32_t> sorted = out;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, in);
  size_t fixed = 0, same_block = 0;
  for (size_t i = 0; i < n; ++i) {
    fixed += out[i] == i;
    same_block += out[i] / 4096 == i / 4096;
  }
  EXPECT_LT(fixed, n / 100);
  EXPECT_LT(same_block, n / 10);
  // Another key gives another permutation.
  std::vector<uint32_t> out2(n);
  Key32 k2 = key_of(8);
  permute(reinterpret_cast<uint8_t*>(in.data()), reinterpret_cast<uint8_t*>(out2.data()), n, 4, k2.data(), false);
  EXPECT_NE(out, out2);
}

TEST(MtdKeys, DerivationDependsOnNameAndKey) {
  Key32 s = key_of(1);
  EXPECT_NE(derive_storage_key(s, "a.weight", 0), derive_storage_key(s, "b.weight", 0));
  EXPECT_NE(derive_storage_key(s, "a.weight", 0), derive_storage_key(s, "a.weight", 1));
  EXPECT_NE(derive_storage_key(s, "a.weight", 0), derive_storage_key(key_of(2), "a.weight", 0));
  EXPECT_EQ(derive_storage_key(s, "a.weight", 0), derive_storage_key(s, "a.weight", 0));
}

TEST(MtdSeal, SymmetricPassphraseAndRecipientSlots) {
  ASSERT_GE(sodium_init(), 0);
  KeyFile alice, mallory;
  crypto_box_keypair(alice.x25519_public.data(), alice.x25519_secret.data());
  alice.has_x25519 = alice.has_x25519_secret = true;
  crypto_box_keypair(mallory.x25519_public.data(), mallory.x25519_secret.data());
  mallory.has_x25519 = mallory.has_x25519_secret = true;
  SealOptions so;
  so.symmetric_keys.push_back(key_of(3));
  so.passphrases.push_back("correct horse");
  so.recipients.push_back(alice.x25519_public);
  so.pwhash_mem = 8u << 20;
  so.pwhash_ops = 1;
  auto sealed = seal_map("{\"hello\":1}", so);
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(sealed->find("hello"), std::string::npos);
  EXPECT_EQ(*map_format_version(*sealed), kMapFormatVersion);

  OpenOptions o1;
  o1.allow_unsigned = true;
  o1.symmetric_key = key_of(3);
  ASSERT_TRUE(open_map(*sealed, o1).ok());
  EXPECT_EQ(open_map(*sealed, o1)->payload, "{\"hello\":1}");
  OpenOptions o2;
  o2.allow_unsigned = true;
  o2.passphrase = "correct horse";
  EXPECT_TRUE(open_map(*sealed, o2).ok());
  OpenOptions o3;
  o3.allow_unsigned = true;
  o3.identity = &alice;
  EXPECT_TRUE(open_map(*sealed, o3).ok());

  OpenOptions bad1;
  bad1.allow_unsigned = true;
  bad1.symmetric_key = key_of(4);
  EXPECT_EQ(open_map(*sealed, bad1).error().rule, Rule::map_no_key);
  OpenOptions bad2;
  bad2.allow_unsigned = true;
  bad2.passphrase = "wrong";
  EXPECT_EQ(open_map(*sealed, bad2).error().rule, Rule::map_no_key);
  OpenOptions bad3;
  bad3.allow_unsigned = true;
  bad3.identity = &mallory;
  EXPECT_EQ(open_map(*sealed, bad3).error().rule, Rule::map_no_key);

  // Any modified byte after the magic fails (the header is the payload's associated data).
  for (size_t pos : {size_t(12), sealed->size() / 2, sealed->size() - 1}) {
    std::string m = *sealed;
    m[pos] ^= 1;
    auto r = open_map(m, o1);
    EXPECT_FALSE(r.ok()) << pos;
  }
}

TEST(MtdSeal, Signatures) {
  ASSERT_GE(sodium_init(), 0);
  KeyFile pub, other;
  crypto_sign_keypair(pub.ed25519_public.data(), pub.ed25519_secret.data());
  pub.has_ed25519 = pub.has_ed25519_secret = true;
  crypto_sign_keypair(other.ed25519_public.data(), other.ed25519_secret.data());
  other.has_ed25519 = other.has_ed25519_secret = true;
  SealOptions so;
  so.symmetric_keys.push_back(key_of(5));
  so.signer = &pub;
  auto sealed = seal_map("{}", so);
  ASSERT_TRUE(sealed.ok());
  EXPECT_TRUE(signature_valid(*sealed, pub.ed25519_public));
  EXPECT_FALSE(signature_valid(*sealed, other.ed25519_public));
  OpenOptions o;
  o.symmetric_key = key_of(5);
  o.trusted_signers = {pub.ed25519_public};
  EXPECT_TRUE(open_map(*sealed, o).ok());
  o.trusted_signers = {other.ed25519_public};
  EXPECT_EQ(open_map(*sealed, o).error().rule, Rule::map_signature);
  // Unsigned map with --verify-signer: rejected.
  so.signer = nullptr;
  auto unsigned_map = seal_map("{}", so);
  o.trusted_signers = {pub.ed25519_public};
  EXPECT_EQ(open_map(*unsigned_map, o).error().rule, Rule::map_signature);
}

// The streaming form must give exactly the whole-storage permutation, chunk by chunk, in both
// directions (protect streams the forward one, restore the inverse one).
TEST(MtdPermute, ChunkedProduceEqualsWholePermutation) {
  for (size_t esize : {1u, 2u, 4u, 8u}) {
    for (size_t n : {size_t(5), size_t(4096), size_t(9 * 4096 + 123), size_t(40 * 4096)}) {
      std::vector<uint8_t> in(n * esize);
      for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i * 197 + (i >> 9));
      Key32 k = key_of(static_cast<uint8_t>(3 * n + esize));
      for (bool inverse : {false, true}) {
        std::vector<uint8_t> whole(in.size()), chunked(in.size(), 0xAA);
        permute(in.data(), whole.data(), n, esize, k.data(), inverse);
        Permuter p(k.data(), n, esize, inverse);
        const size_t step = 3 * 4096;  // elements: a multiple of the block, not of the chunk the tool uses
        for (size_t first = 0; first < n; first += step) {
          size_t count = std::min(step, n - first);
          p.produce(in.data(), chunked.data() + first * esize, first, count);
        }
        EXPECT_EQ(whole, chunked) << "esize " << esize << " n " << n << " inverse " << inverse;
      }
    }
  }
}

// Restore gathers from a private copy of the source blocks (produce_staged): the same output
// as reading the whole input.
TEST(MtdPermute, StagedProduceEqualsProduce) {
  for (size_t esize : {1u, 2u, 4u, 8u}) {
    const size_t n = 9 * 4096 + 123, bb = 4096 * esize;
    std::vector<uint8_t> in(n * esize);
    for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint8_t>(i * 29 + (i >> 10));
    Key32 k = key_of(static_cast<uint8_t>(40 + esize));
    for (bool inverse : {false, true}) {
      Permuter p(k.data(), n, esize, inverse);
      std::vector<uint8_t> whole(in.size()), staged_out(in.size(), 0x55);
      p.produce(in.data(), whole.data(), 0, n);
      const size_t step = 4 * 4096;
      for (size_t first = 0; first < n; first += step) {
        const size_t count = std::min(step, n - first);
        std::vector<uint8_t> staged;
        for (size_t b = first / 4096; b < std::min((first + count) / 4096, p.blocks()); ++b)
          staged.insert(staged.end(), in.begin() + p.source_block(b) * bb, in.begin() + (p.source_block(b) + 1) * bb);
        if (first + count == n) staged.insert(staged.end(), in.begin() + p.blocks() * bb, in.end());
        p.produce_staged(staged.data(), staged_out.data() + first * esize, first, count);
      }
      EXPECT_EQ(whole, staged_out) << "esize " << esize << " inverse " << inverse;
    }
  }
}

// 4-byte elements take the AVX2 gather where the CPU has it; the plan does not depend on the
// element size, so 8-byte elements (always the scalar loop) holding the same 4-byte values
// must come out in the same order.
TEST(MtdPermute, FourByteGatherMatchesTheScalarLoop) {
  const size_t n = 21 * 4096 + 77;
  std::vector<uint32_t> in4(n);
  std::vector<uint64_t> in8(n);
  for (size_t i = 0; i < n; ++i) in4[i] = static_cast<uint32_t>(i * 2654435761u), in8[i] = in4[i];
  Key32 k = key_of(77);
  for (bool inverse : {false, true}) {
    std::vector<uint32_t> out4(n);
    std::vector<uint64_t> out8(n);
    permute(reinterpret_cast<const uint8_t*>(in4.data()), reinterpret_cast<uint8_t*>(out4.data()), n, 4, k.data(), inverse);
    permute(reinterpret_cast<const uint8_t*>(in8.data()), reinterpret_cast<uint8_t*>(out8.data()), n, 8, k.data(), inverse);
    size_t differ = 0;
    for (size_t i = 0; i < n; ++i) differ += out4[i] != out8[i];
    EXPECT_EQ(differ, 0u) << "inverse " << inverse;
    EXPECT_NE(out4, in4);
  }
}

TEST(MtdDigest, Sha256KnownAnswerAndStreaming) {
  // FIPS 180-2 test vector "abc".
  const std::string abc = "abc";
  Digest d = sha256(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(abc.data()), abc.size()));
  EXPECT_EQ(to_hex(d.data(), d.size()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::vector<uint8_t> big(3'000'001);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i * 31);
  Sha256 h;
  for (size_t off = 0; off < big.size(); off += 65'537)
    h.update(std::span<const uint8_t>(big).subspan(off, std::min<size_t>(65'537, big.size() - off)));
  EXPECT_EQ(h.finish(), sha256(big));
}

// Map format 5's hash: BLAKE3 against the official test vectors (BLAKE3 repository,
// test_vectors.json: input byte i is i % 251), and streamed in odd pieces against one call over
// enough bytes for the SIMD paths (16 chunks of 1 KiB at a time with AVX-512).
TEST(MtdDigest, Blake3KnownAnswerAndStreaming) {
  auto hex_of = [](std::span<const uint8_t> b) {
    Digest d = blake3(b);
    return to_hex(d.data(), d.size());
  };
  EXPECT_EQ(hex_of({}), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
  const uint8_t zero = 0;
  EXPECT_EQ(hex_of(std::span<const uint8_t>(&zero, 1)), "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213");
  const std::string abc = "abc";
  EXPECT_EQ(hex_of(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(abc.data()), 3)),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
  std::vector<uint8_t> big(3'000'001);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint8_t>(i % 251);
  Blake3 h;
  for (size_t off = 0; off < big.size(); off += 65'537)
    h.update(std::span<const uint8_t>(big).subspan(off, std::min<size_t>(65'537, big.size() - off)));
  const Digest streamed = h.finish();
  EXPECT_EQ(streamed, blake3(big));
  EXPECT_NE(streamed, sha256(big));
  // finish() starts over, and Hasher dispatches on the scheme.
  h.update(big);
  EXPECT_EQ(h.finish(), streamed);
  Hasher b3(HashScheme::blake3), s2(HashScheme::sha256);
  b3.update(big);
  s2.update(big);
  EXPECT_EQ(b3.finish(), streamed);
  EXPECT_EQ(s2.finish(), sha256(big));
  EXPECT_EQ(hash_of(HashScheme::blake3, big), streamed);
}

// The pipeline of protect/restore: chunks are consumed in order, every leaf a prepare lists is
// hashed (by either thread) before its chunk is consumed, and a failing consume stops it.
TEST(MtdPipeline, HashesEveryLeafAndConsumesInOrder) {
  const size_t leaf = tree_leaf_bytes(4), chunk = 4 * leaf;
  for (size_t size : {size_t(0), size_t(100), chunk, 37 * chunk + 3 * leaf + 5}) {
    std::vector<uint8_t> rec(size);
    for (size_t i = 0; i < size; ++i) rec[i] = static_cast<uint8_t>(i * 13 + (i >> 11));
    for (HashScheme scheme : {HashScheme::sha256, HashScheme::blake3})
    for (size_t ring : {size_t(1), size_t(2), size_t(4)}) {
      TreeDigest expect(size, leaf, scheme);
      expect.add(0, rec);
      RecordPipeline pipe(chunk, ring, scheme);
      TreeDigest got(size, leaf, scheme);
      std::vector<uint8_t> written;
      auto prepare = [&](size_t off, size_t len, ChunkSlot& slot) {
        std::memcpy(slot.out.data(), rec.data() + off, len);
        for (size_t at = 0; at < len; at += leaf)  // listed backwards: the order must not matter
          slot.leaves.insert(slot.leaves.begin(), {(off + at) / leaf, slot.out.data() + at, std::min(leaf, len - at)});
      };
      auto consume = [&](const ChunkSlot& slot) {
        for (size_t i = 0; i < slot.leaves.size(); ++i) got.put(slot.leaves[i].index, slot.digests[i]);
        written.insert(written.end(), slot.out.data(), slot.out.data() + slot.length);
        return modelcdr::ok_status();
      };
      ASSERT_TRUE(pipe.run(size, prepare, consume).ok());
      EXPECT_EQ(written, rec) << size << " ring " << ring;
      ASSERT_TRUE(got.complete());
      EXPECT_EQ(got.finish(), expect.finish()) << size << " ring " << ring;
    }
  }
}

TEST(MtdPipeline, AFailingConsumeStopsTheRecord) {
  const size_t chunk = tree_leaf_bytes(1);
  RecordPipeline pipe(chunk, 3, HashScheme::blake3);
  size_t consumed = 0;
  auto prepare = [&](size_t off, size_t len, ChunkSlot& slot) { slot.leaves.push_back({off / chunk, slot.out.data(), len}); };
  auto consume = [&](const ChunkSlot&) -> modelcdr::Status {
    if (++consumed == 5) return modelcdr::make_error(Rule::mtd_internal, "writer failed");
    return modelcdr::ok_status();
  };
  auto st = pipe.run(100 * chunk, prepare, consume);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(consumed, 5u);
}

// The record digests of map formats 4 (SHA-256) and 5 (BLAKE3): leaves hashed in any order give
// the documented construction, computed here independently from the plain hash of a
// concatenation.
TEST(MtdDigest, TreeDigestAnyLeafOrderEqualsTheDocumentedConstruction) {
  const size_t leaf = tree_leaf_bytes(4);
  EXPECT_EQ(leaf, 4096u * 4);
  using Plain = Digest (*)(std::span<const uint8_t>);
  for (auto [scheme, plain, label] : {std::tuple<HashScheme, Plain, std::string>{HashScheme::sha256, &sha256, "sha-256-tree"},
                                      {HashScheme::blake3, &blake3, "blake3-tree"}})
  for (size_t size : {size_t(0), size_t(5), leaf, 3 * leaf + 100, 8 * leaf}) {
    std::vector<uint8_t> rec(size);
    for (size_t i = 0; i < size; ++i) rec[i] = static_cast<uint8_t>(i * 7 + (i >> 9));
    EXPECT_EQ(tree_hash_name(scheme), label);
    std::string expect_input = "modelcdr-mtd " + label;
    expect_input += '\0';
    for (int i = 0; i < 8; ++i) expect_input += char(uint64_t(size) >> (8 * i));
    for (int i = 0; i < 8; ++i) expect_input += char(uint64_t(leaf) >> (8 * i));
    for (size_t at = 0; at < size; at += leaf) {
      auto d = plain(std::span<const uint8_t>(rec.data() + at, std::min(leaf, size - at)));
      expect_input.append(reinterpret_cast<const char*>(d.data()), d.size());
    }
    const Digest expect = plain(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(expect_input.data()), expect_input.size()));
    TreeDigest in_order(size, leaf, scheme);
    in_order.add(0, rec);  // one call, many leaves
    EXPECT_EQ(in_order.finish(), expect) << size;
    TreeDigest backwards(size, leaf, scheme);
    const size_t leaves = (size + leaf - 1) / leaf;
    for (size_t i = leaves; i-- > 0;)
      backwards.add(i * leaf, std::span<const uint8_t>(rec.data() + i * leaf, std::min(leaf, size - i * leaf)));
    EXPECT_TRUE(backwards.complete());
    EXPECT_EQ(backwards.finish(), expect) << size;
    if (size > 0) {  // one flipped byte changes it
      rec[size / 2] ^= 1;
      TreeDigest changed(size, leaf, scheme);
      changed.add(0, rec);
      EXPECT_NE(changed.finish(), expect);
    }
  }
}
