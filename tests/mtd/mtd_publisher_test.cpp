// Publisher operations on sealed maps (issue 17 item 1): the clear header that `map info`
// reads, and re-wrapping the content key for a changed set of recipients.
#include <gtest/gtest.h>
#include <sodium.h>

#include <string>

#include "mtd/keys.hpp"
#include "mtd/seal.hpp"

using namespace modelcdr::mtd;
using modelcdr::Rule;

namespace {

struct Party {
  KeyFile k;
  Party() {
    crypto_box_keypair(k.x25519_public.data(), k.x25519_secret.data());
    crypto_sign_keypair(k.ed25519_public.data(), k.ed25519_secret.data());
    k.has_x25519 = k.has_x25519_secret = k.has_ed25519 = k.has_ed25519_secret = true;
  }
  std::string fp() const { return fingerprint(k.x25519_public.data(), 32); }
};

Key32 filled(uint8_t b) {
  Key32 k;
  k.fill(b);
  return k;
}

OpenOptions as(const Party& p, const Party& signer) {
  OpenOptions o;
  o.identity = &p.k;
  o.trusted_signers = {signer.k.ed25519_public};
  return o;
}

// Length of the content part (header, clear info, ciphertext), which re-wrapping keeps.
size_t content_len(const std::string& m) {
  auto u = [&](size_t at, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= uint64_t(uint8_t(m[at + i])) << (8 * i);
    return v;
  };
  return 78 + u(66, 4) + u(70, 8);
}

}  // namespace

TEST(MtdPublisher, HeaderListsRecipientsSignerAndInfoWithoutAKey) {
  ASSERT_GE(sodium_init(), 0);
  Party publisher, alice, bob;
  SealOptions so;
  so.symmetric_keys = {filled(7)};
  so.recipients = {alice.k.x25519_public, bob.k.x25519_public};
  so.signer = &publisher.k;
  so.info = "{\"copy\":\"alice\"}";
  auto m = seal_map("{\"secret\":1}", so);
  ASSERT_TRUE(m.ok());
  auto h = read_map_header(*m);
  ASSERT_TRUE(h.ok()) << h.error().message;
  EXPECT_EQ(h->version, kMapFormatVersion);
  EXPECT_TRUE(h->signed_);
  EXPECT_TRUE(h->signature_valid);
  EXPECT_EQ(h->signer, fingerprint(publisher.k.ed25519_public.data(), 32));
  ASSERT_EQ(h->slots.size(), 3u);
  EXPECT_EQ(h->slots[0].type, "key-file");
  EXPECT_EQ(h->slots[1].recipient, alice.fp());
  EXPECT_EQ(h->slots[2].recipient, bob.fp());
  EXPECT_EQ(h->info, "{\"copy\":\"alice\"}");
  EXPECT_EQ(m->find("secret"), std::string::npos);  // the payload is not in the clear
  // The clear info is bound: changing one byte breaks the signature and the MAC.
  std::string edited = *m;
  edited[edited.find("alice")] = 'A';
  EXPECT_FALSE(read_map_header(edited)->signature_valid);
  EXPECT_EQ(open_map(edited, as(alice, publisher)).error().rule, Rule::map_signature);
  OpenOptions unsigned_ok;
  unsigned_ok.allow_unsigned = true;
  unsigned_ok.symmetric_key = filled(7);
  EXPECT_FALSE(open_map(edited, unsigned_ok).ok());
}

TEST(MtdPublisher, ResealChangesRecipientsAndKeepsTheContent) {
  ASSERT_GE(sodium_init(), 0);
  Party publisher, alice, bob, carol;
  SealOptions so;
  so.symmetric_keys = {filled(9)};  // the operator's own key
  so.recipients = {alice.k.x25519_public};
  so.signer = &publisher.k;
  auto m = seal_map("{\"weights\":42}", so);
  ASSERT_TRUE(m.ok());
  OpenOptions op;
  op.symmetric_key = filled(9);
  op.trusted_signers = {publisher.k.ed25519_public};
  ResealOptions r;
  r.add_recipients = {bob.k.x25519_public, carol.k.x25519_public};
  r.remove_fingerprints = {alice.fp()};
  r.signer = &publisher.k;
  auto n = reseal_map(*m, op, r);
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(n->substr(0, content_len(*n)), m->substr(0, content_len(*m)));  // same content, same payload
  EXPECT_EQ(open_map(*n, as(bob, publisher))->payload, "{\"weights\":42}");
  EXPECT_EQ(open_map(*n, as(carol, publisher))->payload, "{\"weights\":42}");
  EXPECT_EQ(open_map(*n, as(alice, publisher)).error().rule, Rule::map_no_key);
  EXPECT_EQ(open_map(*n, op)->payload, "{\"weights\":42}");  // kept slot still opens
  auto h = read_map_header(*n);
  ASSERT_EQ(h->slots.size(), 3u);
  EXPECT_EQ(h->slots[1].recipient, bob.fp());
  EXPECT_EQ(h->slots[2].recipient, carol.fp());
  // A signed map must be re-signed; a recipient not in the map, or one already in it, is refused.
  ResealOptions unsigned_r = r;
  unsigned_r.signer = nullptr;
  EXPECT_EQ(reseal_map(*m, op, unsigned_r).error().rule, Rule::map_needs_signer);
  ResealOptions missing;
  missing.remove_fingerprints = {bob.fp()};
  missing.signer = &publisher.k;
  EXPECT_EQ(reseal_map(*m, op, missing).error().rule, Rule::map_no_such_recipient);
  ResealOptions dup;
  dup.add_recipients = {alice.k.x25519_public};
  dup.signer = &publisher.k;
  EXPECT_EQ(reseal_map(*m, op, dup).error().rule, Rule::map_duplicate_recipient);
  // Removing every slot would leave a map nobody can open.
  ResealOptions all;
  all.remove_fingerprints = {alice.fp()};
  all.signer = &publisher.k;
  SealOptions only_alice;
  only_alice.recipients = {alice.k.x25519_public};
  only_alice.signer = &publisher.k;
  auto lone = seal_map("{}", only_alice);
  EXPECT_EQ(reseal_map(*lone, as(alice, publisher), all).error().rule, Rule::map_no_key);
  // Re-signing with a new key rotates the signer: the old pin no longer accepts the map.
  Party next;
  ResealOptions rotate;
  rotate.signer = &next.k;
  rotate.add_recipients = {bob.k.x25519_public};
  auto rotated = reseal_map(*m, op, rotate);
  ASSERT_TRUE(rotated.ok());
  EXPECT_EQ(read_map_header(*rotated)->signer, fingerprint(next.k.ed25519_public.data(), 32));
  EXPECT_EQ(open_map(*rotated, as(bob, publisher)).error().rule, Rule::map_signature);
  EXPECT_TRUE(open_map(*rotated, as(bob, next)).ok());
  // Without a key that opens it, nothing can be re-wrapped.
  EXPECT_EQ(reseal_map(*m, as(bob, publisher), r).error().rule, Rule::map_no_key);
}

// Slots of a map moved into another map's seal part do not open it (their associated data
// names the content part they were made for).
TEST(MtdPublisher, SealPartsCannotBeTransplanted) {
  ASSERT_GE(sodium_init(), 0);
  Party publisher, alice;
  SealOptions so;
  so.recipients = {alice.k.x25519_public};
  so.signer = &publisher.k;
  auto a = seal_map("{\"a\":1}", so), b = seal_map("{\"b\":1}", so);
  std::string mixed = b->substr(0, content_len(*b)) + a->substr(content_len(*a));
  EXPECT_FALSE(open_map(mixed, as(alice, publisher)).ok());
}

TEST(MtdPublisher, Version2MapsAreRefusedWithAHint) {
  std::string v2("MCDRMAP\0", 8);
  v2 += std::string("\x02\x00", 2) + std::string(300, '\0');
  auto r = read_map_header(v2);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rule, Rule::map_version);
  EXPECT_NE(r.error().message.find("re-protect"), std::string::npos);
}
