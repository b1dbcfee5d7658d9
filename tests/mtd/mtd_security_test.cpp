// Issue 17 item 5 ("secure by default"): each attack of the cryptographic review is rebuilt
// here by hand with libsodium, as an attacker would, against map format v2 (docs/MTD.md §4).
// Each attack has a positive control (the same construction done legitimately opens), so a
// test cannot pass because the forged map was simply malformed.
#include <gtest/gtest.h>
#include <sodium.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "formats/torch_zip_writer.hpp"
#include "io/atomic_output.hpp"
#include "mtd/cipher.hpp"
#include "mtd/mtd.hpp"
#include "mtd/permute.hpp"
#include "mtd/seal.hpp"

using namespace modelcdr;
using namespace modelcdr::mtd;
namespace fs = std::filesystem;

namespace {

// ---- map format v3, written out by hand (the attacker's view) -------------------------------
constexpr size_t kHeader = 78;    // magic, version, commitment, nonce, info length, payload length
constexpr size_t kSealHead = 36;  // flags, slot count, signer: after the ciphertext
const std::string kSlotLabel = "modelcdr-map-v3 slot";

const uint8_t* u8p(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }
void put16(std::string& s, uint16_t v) { s.push_back(char(v & 0xFF)), s.push_back(char(v >> 8)); }
void put64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(char((v >> (8 * i)) & 0xFF));
}
uint64_t get64(const std::string& s, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(uint8_t(s[at + i])) << (8 * i);
  return v;
}
std::string raw(const uint8_t* p, size_t n) { return std::string(reinterpret_cast<const char*>(p), n); }
uint32_t get32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(uint8_t(s[at + i])) << (8 * i);
  return v;
}
// End of the content part (header, clear info, ciphertext) = start of the seal part.
size_t payload_end_of(const std::string& m) { return kHeader + get32(m, 66) + get64(m, 70); }

struct SlotAt {
  uint8_t type;
  size_t at, len;  // body offset and length
};
// Slots of an unsigned or signed v2 map.
std::vector<SlotAt> slots_of(const std::string& m) {
  std::vector<SlotAt> out;
  const size_t end = payload_end_of(m);
  size_t pos = end + kSealHead;
  const uint16_t n = uint8_t(m[end + 2]) | (uint8_t(m[end + 3]) << 8);
  for (uint16_t i = 0; i < n; ++i) {
    SlotAt s{uint8_t(m[pos]), pos + 3, size_t(uint8_t(m[pos + 1]) | (uint8_t(m[pos + 2]) << 8))};
    out.push_back(s);
    pos = s.at + s.len;
  }
  return out;
}

std::array<uint8_t, 32> map_id(const std::string& m, size_t payload_end) {
  std::array<uint8_t, 32> id;
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, 32);
  const char label[] = "modelcdr-map-v3 map id";
  crypto_generichash_update(&st, reinterpret_cast<const uint8_t*>(label), sizeof label);
  crypto_generichash_update(&st, u8p(m), payload_end);
  crypto_generichash_final(&st, id.data(), 32);
  return id;
}

std::string slot_ad(const std::array<uint8_t, 32>& id, uint8_t type, const std::string& prefix) {
  return kSlotLabel + raw(id.data(), 32) + std::string(1, char(type)) + prefix;
}

Key32 commitment(const Key32& cek) {
  Key32 c;
  const char label[] = "modelcdr-map-v3 key commitment";
  crypto_generichash(c.data(), 32, reinterpret_cast<const uint8_t*>(label), sizeof label - 1, cek.data(), 32);
  return c;
}

std::string mac_of(const Key32& cek, const std::string& m) {
  uint8_t mk[32], mac[32];
  const char label[] = "modelcdr-map-v3 map mac";
  crypto_generichash(mk, 32, reinterpret_cast<const uint8_t*>(label), sizeof label - 1, cek.data(), 32);
  crypto_generichash(mac, 32, u8p(m), m.size(), mk, 32);
  return raw(mac, 32);
}

// Header + payload sealed under `cek`, claiming commitment `commit`, then an unsigned seal
// head announcing `nslots` slots.
std::string forge_head(const Key32& cek, const Key32& commit, uint16_t nslots, const std::string& payload) {
  std::string h("MCDRMAP\0", 8);
  put16(h, kMapFormatVersion);
  h += raw(commit.data(), 32);
  uint8_t nonce[24];
  randombytes_buf(nonce, sizeof nonce);
  h += raw(nonce, 24);
  h += std::string(4, '\0');  // no clear info
  put64(h, payload.size() + 16);
  std::string ct(payload.size() + 16, '\0');
  unsigned long long clen;
  crypto_aead_xchacha20poly1305_ietf_encrypt(reinterpret_cast<uint8_t*>(ct.data()), &clen, u8p(payload), payload.size(),
                                             u8p(h), h.size(), nullptr, nonce, cek.data());
  std::string seal;
  put16(seal, 0);
  put16(seal, nslots);
  seal += std::string(32, '\0');
  return h + ct + seal;
}

std::string recipient_fp(const Key32& pk) {
  uint8_t h[32];
  crypto_generichash(h, 32, pk.data(), 32, nullptr, 0);
  return raw(h, 16);
}

// A recipient slot for `pk` wrapping `cek`, bound to the map that `head` starts.
std::string forge_recipient_slot(const std::string& head, const Key32& pk, const Key32& cek) {
  uint8_t kek[32], sealed[80], nonce[24], wrapped[48];
  randombytes_buf(kek, 32);
  crypto_box_seal(sealed, kek, 32, pk.data());
  randombytes_buf(nonce, 24);
  const std::string prefix = recipient_fp(pk) + raw(sealed, 80);
  const std::string ad = slot_ad(map_id(head, payload_end_of(head)), 3, prefix);
  unsigned long long clen;
  crypto_aead_xchacha20poly1305_ietf_encrypt(wrapped, &clen, cek.data(), 32, u8p(ad), ad.size(), nullptr, nonce, kek);
  std::string s(1, char(3));
  put16(s, 96 + 24 + 48);
  return s + prefix + raw(nonce, 24) + raw(wrapped, 48);
}

struct Party {
  KeyFile k;
  Party() {
    crypto_box_keypair(k.x25519_public.data(), k.x25519_secret.data());
    crypto_sign_keypair(k.ed25519_public.data(), k.ed25519_secret.data());
    k.has_x25519 = k.has_x25519_secret = k.has_ed25519 = k.has_ed25519_secret = true;
  }
};

Key32 filled(uint8_t b) {
  Key32 k;
  k.fill(b);
  return k;
}

// Mallory, a recipient of `sealed`, recovers its content key from her own slot.
Key32 steal_content_key(const std::string& sealed, const KeyFile& mallory) {
  const size_t payload_end = payload_end_of(sealed);
  for (const auto& s : slots_of(sealed)) {
    if (s.type != 3) continue;
    uint8_t kek[32];
    if (crypto_box_seal_open(kek, u8p(sealed) + s.at + 16, 80, mallory.x25519_public.data(), mallory.x25519_secret.data()) != 0)
      continue;
    const std::string ad = slot_ad(map_id(sealed, payload_end), 3, sealed.substr(s.at, 96));
    Key32 cek;
    unsigned long long plen;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(cek.data(), &plen, nullptr, u8p(sealed) + s.at + 120, 48,
                                                   u8p(ad), ad.size(), u8p(sealed) + s.at + 96, kek) == 0)
      return cek;
  }
  ADD_FAILURE() << "mallory's slot did not open";
  return {};
}

OpenOptions anyone() {
  OpenOptions o;
  o.allow_unsigned = true;
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// Review: "a holder of one slot re-used the symmetric and passphrase slots of another map
// around a payload of their own, and both keys opened it."
TEST(MtdSecurity, SlotsOfOneMapDoNotOpenAnother) {
  ASSERT_GE(sodium_init(), 0);
  Party mallory;
  SealOptions so;
  so.symmetric_keys = {filled(3)};
  so.passphrases = {"alice's passphrase"};
  so.recipients = {mallory.k.x25519_public};
  so.pwhash_ops = 1;
  so.pwhash_mem = 8u << 20;
  auto a = seal_map("{\"genuine\":1}", so);
  ASSERT_TRUE(a.ok());
  const Key32 cek = steal_content_key(*a, mallory.k);
  auto slots = slots_of(*a);
  ASSERT_EQ(slots.size(), 3u);
  // Map B: Mallory's payload under A's content key, A's symmetric and passphrase slots copied.
  std::string b = forge_head(cek, commitment(cek), 2, "{\"forged\":1}");
  for (int i = 0; i < 2; ++i) b += a->substr(slots[i].at - 3, slots[i].len + 3);
  b += mac_of(cek, b);
  OpenOptions by_key = anyone(), by_pass = anyone();
  by_key.symmetric_key = filled(3);
  by_pass.passphrase = "alice's passphrase";
  EXPECT_EQ(open_map(b, by_key).error().rule, Rule::map_no_key);
  EXPECT_EQ(open_map(b, by_pass).error().rule, Rule::map_no_key);
  // Control: the same construction with a slot Mallory made for this map opens for her.
  std::string c = forge_head(cek, commitment(cek), 1, "{\"forged\":1}");
  c += forge_recipient_slot(c, mallory.k.x25519_public, cek);
  c += mac_of(cek, c);
  OpenOptions as_mallory = anyone();
  as_mallory.identity = &mallory.k;
  auto opened = open_map(c, as_mallory);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_EQ(opened->payload, "{\"forged\":1}");
  // And the genuine map opens with both of Alice's keys.
  EXPECT_TRUE(open_map(*a, by_key).ok());
  EXPECT_TRUE(open_map(*a, by_pass).ok());
}

// Key commitment: a slot that yields a key other than the one the header commits to is refused.
TEST(MtdSecurity, ContentKeyMustMatchItsCommitment) {
  ASSERT_GE(sodium_init(), 0);
  Party alice;
  const Key32 k1 = filled(1), k2 = filled(2);
  for (bool honest : {true, false}) {
    std::string m = forge_head(k1, commitment(honest ? k1 : k2), 1, "{}");
    m += forge_recipient_slot(m, alice.k.x25519_public, k1);
    m += mac_of(k1, m);
    OpenOptions o = anyone();
    o.identity = &alice.k;
    auto r = open_map(m, o);
    if (honest) EXPECT_TRUE(r.ok()) << r.error().message;
    else EXPECT_EQ(r.error().rule, Rule::map_corrupt);
  }
}

// Review: "an outsider who knows only a customer's public key makes a map for a file of their
// own, and the customer's restore exits 0; a map signed by the outsider's own key also passes."
TEST(MtdSecurity, OutsiderMapsNeedATrustedSigner) {
  ASSERT_GE(sodium_init(), 0);
  Party customer, outsider, publisher;
  for (bool outsider_signs : {false, true}) {
    SealOptions so;
    so.recipients = {customer.k.x25519_public};
    so.signer = outsider_signs ? &outsider.k : nullptr;
    auto m = seal_map("{}", so);
    ASSERT_TRUE(m.ok());
    OpenOptions o;
    o.identity = &customer.k;
    EXPECT_EQ(open_map(*m, o).error().rule, Rule::map_untrusted) << outsider_signs;  // default: refuse
    o.trusted_signers = {publisher.k.ed25519_public};
    EXPECT_EQ(open_map(*m, o).error().rule, Rule::map_signature) << outsider_signs;
    o.trusted_signers.clear();
    o.trusted_fingerprints = {fingerprint(publisher.k.ed25519_public.data(), 32)};
    EXPECT_EQ(open_map(*m, o).error().rule, Rule::map_signature) << outsider_signs;
    // Control: trusting the outsider's key opens the signed one.
    o.trusted_fingerprints = {fingerprint(outsider.k.ed25519_public.data(), 32)};
    EXPECT_EQ(open_map(*m, o).ok(), outsider_signs);
  }
}

TEST(MtdSecurity, FingerprintsAre128Bits) {
  Key32 k = filled(9);
  EXPECT_EQ(fingerprint(k.data(), 32).size(), 32u);
}

// Review: "the slot limit is enforced only when sealing (301 slots accepted); each passphrase
// slot runs Argon2id with the map's own parameters (up to 1 GiB and 16 passes) before anything
// is authenticated; maps up to 1 GiB are parsed."
TEST(MtdSecurity, ReadBoundsHoldBeforeAnyKeyDerivation) {
  ASSERT_GE(sodium_init(), 0);
  const Key32 cek = filled(4);
  auto passphrase_slot = [](uint64_t ops, uint64_t mem) {
    std::string s(1, char(2));
    put16(s, 16 + 16 + 24 + 48);
    s += std::string(16, 's');
    put64(s, ops);
    put64(s, mem);
    return s + std::string(24 + 48, 'w');
  };
  auto map_with = [&](const std::vector<std::string>& slots) {
    std::string m = forge_head(cek, commitment(cek), uint16_t(slots.size()), "{}");
    for (const auto& s : slots) m += s;
    return m + mac_of(cek, m);
  };
  OpenOptions o = anyone();
  o.passphrase = "pw";
  auto refused_fast = [&](const std::string& m, const char* what) {
    auto t0 = std::chrono::steady_clock::now();
    auto r = open_map(m, o);
    EXPECT_FALSE(r.ok()) << what;
    if (!r.ok()) {
      EXPECT_EQ(r.error().rule, Rule::map_format) << what << ": " << r.error().message;
    }
    EXPECT_LT(seconds_since(t0), 0.5) << what;  // no Argon2id ran
  };
  refused_fast(map_with({passphrase_slot(16, size_t(1) << 30)}), "1 GiB x 16 passes");
  refused_fast(map_with({passphrase_slot(3, size_t(4) << 30)}), "4 GiB");
  // Five slots each within bounds (8 passes of 256 MiB: seconds apiece) are too many.
  refused_fast(map_with(std::vector<std::string>(5, passphrase_slot(8, size_t(256) << 20))), "5 passphrase slots");
  std::vector<std::string> many(301, std::string(1, char(1)) + std::string("\x48\x00", 2) + std::string(72, 'x'));
  refused_fast(map_with(many), "301 slots");
  std::string huge = map_with({passphrase_slot(1, 8u << 20)});
  huge.resize(kMaxMapBytes + 1, '\0');
  refused_fast(huge, "map over the size bound");
  // Sealing refuses what readers would refuse.
  SealOptions so;
  so.symmetric_keys.assign(kMaxSlots + 1, filled(1));
  EXPECT_FALSE(seal_map("{}", so).ok());
}

// With a pinned signer, a map signed by someone else is refused before its passphrase slot
// costs anything (8 passes over 256 MiB would take seconds).
TEST(MtdSecurity, SignatureIsCheckedBeforeTheKdf) {
  ASSERT_GE(sodium_init(), 0);
  Party mallory, publisher;
  SealOptions so;
  so.passphrases = {"pw"};
  so.pwhash_ops = 1;
  so.pwhash_mem = 8u << 20;
  so.signer = &mallory.k;
  auto m = seal_map("{}", so);
  ASSERT_TRUE(m.ok());
  // Rewrite the slot's parameters to the maximum (this breaks nothing a reader checks first).
  auto slots = slots_of(*m);
  std::string heavy = *m;
  for (int i = 0; i < 8; ++i) heavy[slots[0].at + 16 + i] = char(i == 0 ? 8 : 0);
  const uint64_t mem = kMaxPwhashMem;
  for (int i = 0; i < 8; ++i) heavy[slots[0].at + 24 + i] = char((mem >> (8 * i)) & 0xFF);
  OpenOptions o;
  o.passphrase = "pw";
  o.trusted_signers = {publisher.k.ed25519_public};
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(open_map(heavy, o).error().rule, Rule::map_signature);
  EXPECT_LT(seconds_since(t0), 0.3);
}

// Format 3 kept a second (before) set of hashes that format 4 replaced (docs/MTD.md §2): such
// a map is refused by name, with the version, before any key is tried.
TEST(MtdSecurity, Version3MapIsRefusedNamingTheVersion) {
  std::string v3("MCDRMAP\0", 8);
  put16(v3, 3);
  v3 += std::string(200, '\0');
  auto r = open_map(v3, anyone());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rule, Rule::map_version);
  EXPECT_NE(r.error().message.find("version 3"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("re-protect"), std::string::npos);
  EXPECT_FALSE(read_map_header(v3).ok());
}

TEST(MtdSecurity, OldMapVersionIsRefusedWithAHint) {
  std::string v1("MCDRMAP\0", 8);
  put16(v1, 1);
  v1 += std::string(200, '\0');
  auto r = open_map(v1, anyone());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rule, Rule::map_version);
  EXPECT_NE(r.error().message.find("re-protect"), std::string::npos);
}

// The record cipher can be entered at any 16-byte offset (the inverse permutation decrypts
// source blocks out of order), and a permutation fed through it inverts an encrypted one.
TEST(MtdSecurity, RecordCipherIsSeekableAndComposesWithThePermutation) {
  ASSERT_GE(sodium_init(), 0);
  const size_t n = 9 * 4096 + 77;
  std::vector<uint8_t> in(n * 4), whole(n * 4), piece(n * 4);
  for (size_t i = 0; i < in.size(); ++i) in[i] = uint8_t(i * 131 + (i >> 9));
  const Key32 k = filled(5);
  RecordCipher(k).apply(in.data(), whole.data(), in.size(), 0);
  EXPECT_NE(whole, in);
  RecordCipher c(k);
  for (size_t off = 0; off < in.size(); off += 4096 * 3) {
    const size_t len = std::min<size_t>(4096 * 3, in.size() - off);
    c.apply(in.data() + off, piece.data() + off, len, off);
  }
  EXPECT_EQ(whole, piece);
  // protect: y = E(P(x)); restore: x = P^-1 with source blocks decrypted on the way in.
  const Key32 pk = filled(6);
  std::vector<uint8_t> permuted(in.size()), y(in.size()), back(in.size());
  permute(in.data(), permuted.data(), n, 4, pk.data(), false);
  RecordCipher(k).apply(permuted.data(), y.data(), y.size(), 0);
  RecordCipher dec(k);
  const Permuter::SourceLoad load = [&](const uint8_t* a, uint8_t* b, size_t len, size_t off) { dec.apply(a, b, len, off); };
  Permuter inv(pk.data(), n, 4, true);
  inv.produce(y.data(), back.data(), 0, 4 * 4096, &load);
  inv.produce(y.data(), back.data() + 4 * 4096 * 4, 4 * 4096, n - 4 * 4096, &load);
  EXPECT_EQ(back, in);
}

// ---- hostile payloads through restore ----------------------------------------------------------

namespace {

struct Fixture {
  std::string dir, model, prot, map;
  std::vector<float> f;
  std::vector<int64_t> ints;
  std::vector<double> cplx;
  Key32 key = filled(7);

  explicit Fixture(int seed = 0) {
    static int count = 0;
    dir = (fs::temp_directory_path() / ("modelcdr_mtdsec_" + std::to_string(::getpid()) + "_" + std::to_string(count++))).string();
    fs::create_directories(dir);
    model = dir + "/m.pt", prot = dir + "/p.pt", map = dir + "/p.map";
    f.resize(3 * 4096 + 5);
    for (size_t i = 0; i < f.size(); ++i) f[i] = float(i) * 0.5f;
    ints.resize(1000);
    for (size_t i = 0; i < ints.size(); ++i) ints[i] = int64_t(i * 7 + seed);
    cplx.resize(2 * 4096 * 2);  // 4096 complex128 values: would fill a permutation block
    for (size_t i = 0; i < cplx.size(); ++i) cplx[i] = double(i + seed);
    write_model();
    ProtectOptions po;
    po.seal.symmetric_keys = {key};
    auto r = protect(model, prot, map, po);
    if (r.outcome != Outcome::ok) ADD_FAILURE() << "protect failed: " << (r.error ? r.error->message : "");
  }
  ~Fixture() { fs::remove_all(dir); }

  void write_model() {
    model::Model m;
    auto add_storage = [&](model::DType dt, const void* p, size_t nbytes, int64_t elems) {
      model::Storage s;
      s.dtype = dt;
      s.nbytes = nbytes;
      s.bytes = std::span<const uint8_t>(static_cast<const uint8_t*>(p), nbytes);
      m.storages.push_back(s);
      model::Tensor t;
      t.storage = m.storages.size() - 1;
      t.dtype = dt;
      t.shape = {elems};
      t.stride = {1};
      m.tensors.push_back(t);
      return m.tensors.size() - 1;
    };
    auto key_v = [&](const char* k) {
      model::Value x;
      x.kind = model::ValueKind::string;
      x.text = k;
      return m.add(x);
    };
    auto tensor_v = [&](size_t id) {
      model::Value x;
      x.kind = model::ValueKind::tensor;
      x.tensor = static_cast<model::TensorId>(id);
      return m.add(x);
    };
    auto t0 = add_storage(model::DType::f32, f.data(), f.size() * 4, int64_t(f.size()));
    auto t1 = add_storage(model::DType::i64, ints.data(), ints.size() * 8, int64_t(ints.size()));
    auto t2 = add_storage(model::DType::c128, cplx.data(), cplx.size() * 8, int64_t(cplx.size() / 2));
    model::Value root;
    root.kind = model::ValueKind::ordered_dict;
    root.entries = {{key_v("w"), tensor_v(t0)}, {key_v("n"), tensor_v(t1)}, {key_v("z"), tensor_v(t2)}};
    m.root = m.add(root);
    auto out = io::AtomicOutput::create(model);
    ASSERT_TRUE(out.ok());
    ASSERT_TRUE(formats::write_torch_zip(m, formats::TorchWriteOptions{}, *out).ok());
    ASSERT_TRUE(out->commit().ok());
  }

  OpenOptions opts() const {
    OpenOptions o = anyone();
    o.symmetric_key = key;
    return o;
  }

  nlohmann::json payload() const {
    auto sealed = read_small_file(map, kMaxMapBytes);
    auto opened = open_map(*sealed, opts());
    return nlohmann::json::parse(opened->payload);
  }

  // Seals `doc` (text) with the same key, as a key holder could, and restores with it.
  MtdResult restore_with(const std::string& text, const std::string& out) {
    SealOptions so;
    so.symmetric_keys = {key};
    auto sealed = seal_map(text, so);
    const std::string bad = dir + "/bad.map";
    auto w = io::AtomicOutput::create(bad, false, /*replace=*/true);  // rewritten for every forged map
    (void)w->write(*sealed);
    (void)w->commit();
    RestoreOptions ro;
    ro.open = opts();
    return restore(prot, bad, out, ro);
  }

  size_t files() const {  // besides the forged map
    size_t n = 0;
    for (const auto& e : fs::directory_iterator(dir)) n += e.path().filename() != "bad.map";
    return n;
  }
};

}  // namespace

// Review: "a wrong schema number, a missing or mistyped field, `permuted` on a complex128
// record (__builtin_trap) ... abort or trap and leave temp files."
TEST(MtdSecurity, HostilePayloadsAreErrorsNotCrashes) {
  ASSERT_GE(sodium_init(), 0);
  Fixture fx;
  {  // control: the genuine map restores
    RestoreOptions ro;
    ro.open = fx.opts();
    auto r = restore(fx.prot, fx.map, fx.dir + "/ok.pt", ro);
    ASSERT_EQ(r.outcome, Outcome::ok) << (r.error ? r.error->message : "");
    fs::remove(fx.dir + "/ok.pt");
  }
  using json = nlohmann::json;
  std::vector<std::pair<std::string, std::function<void(json&)>>> edits = {
      {"schema number", [](json& d) { d["schema"] = 2; }},
      {"schema other", [](json& d) { d["schema"] = "modelcdr.mtd-map/1"; }},
      {"missing secret", [](json& d) { d.erase("secret"); }},
      {"secret mistyped", [](json& d) { d["secret"] = 5; }},
      {"non_tensor missing", [](json& d) { d.erase("non_tensor"); }},
      {"non_tensor mistyped", [](json& d) { d["non_tensor"]["digest"] = 3; }},
      {"compat mistyped", [](json& d) { d["compat"] = nullptr; }},
      {"storages not a list", [](json& d) { d["storages"] = "x"; }},
      {"entry not an object", [](json& d) { d["storages"][0] = 1; }},
      {"nbytes mistyped", [](json& d) { d["storages"][0]["nbytes"] = "big"; }},
      {"nbytes negative", [](json& d) { d["storages"][0]["nbytes"] = -1; }},
      {"permuted missing", [](json& d) { d["storages"][1].erase("permuted"); }},
      {"hash not hex", [](json& d) { d["storages"][1]["after"] = "zz"; }},
      {"source out of range", [](json& d) { d["storages"][1]["source"] = 99; }},
      {"swap across sizes", [](json& d) { d["storages"][0]["source"] = 1, d["storages"][1]["source"] = 0; }},
      {"permuted complex128", [](json& d) { d["storages"][2]["permuted"] = true; }},
      {"permuted int64", [](json& d) { d["storages"][1]["permuted"] = true; }},
      {"dtype lie", [](json& d) { d["storages"][2]["dtype"] = "float64"; }},
      {"encryption mistyped", [](json& d) { d["encryption"] = "yes"; }},
      {"layout missing", [](json& d) { d.erase("layout"); }},
      {"not json", nullptr},
  };
  for (const auto& [what, edit] : edits) {
    json d = fx.payload();
    ASSERT_EQ(d["storages"].size(), 3u) << d["storages"].dump();
    ASSERT_EQ(d["storages"][2]["dtype"], "complex128");
    std::string text = edit ? (edit(d), d.dump()) : std::string("{not json");
    const size_t before = fx.files();
    auto r = fx.restore_with(text, fx.dir + "/out.pt");
    EXPECT_NE(r.outcome, Outcome::ok) << what;
    EXPECT_FALSE(fs::exists(fx.dir + "/out.pt")) << what;
    EXPECT_EQ(fx.files(), before) << what << ": temporary files left";
    EXPECT_TRUE(r.code == "bad-map" || r.code == "tampered") << what << ": code " << r.code;
  }
}

// Item 3: "map does not belong to this file" is one diagnosis with its own code.
TEST(MtdSecurity, MapForAnotherFileIsNamedAsSuch) {
  ASSERT_GE(sodium_init(), 0);
  Fixture a;
  Fixture b(1);  // same names and shapes, other values
  RestoreOptions ro;
  ro.open = a.opts();
  auto r = verify(b.prot, a.map, ro);
  EXPECT_EQ(r.outcome, Outcome::mismatch);
  EXPECT_EQ(r.code, "wrong-file");
  ASSERT_EQ(r.mismatches.size(), 1u);
  EXPECT_EQ(r.mismatches[0].what, "wrong-file");
  auto ok = verify(a.prot, a.map, ro);
  EXPECT_EQ(ok.code, "ok");
}
