#include "mtd/seal.hpp"

#include <sodium.h>

#include <algorithm>
#include <cstring>

namespace modelcdr::mtd {

namespace {

constexpr char kMagic[8] = {'M', 'C', 'D', 'R', 'M', 'A', 'P', '\0'};
constexpr uint16_t kFlagSigned = 1;
enum SlotType : uint8_t { slot_symmetric = 1, slot_passphrase = 2, slot_recipient = 3 };
constexpr size_t kNonce = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;  // 24
constexpr size_t kTag = crypto_aead_xchacha20poly1305_ietf_ABYTES;       // 16
constexpr size_t kWrapped = 32 + kTag;
constexpr size_t kSalt = crypto_pwhash_SALTBYTES;                        // 16
constexpr size_t kSealedKek = crypto_box_SEALBYTES + 32;                 // 80
// Clear header: magic, version, flags, slot count, signer key, key commitment, nonce, length.
constexpr size_t kSignerAt = 14, kCommitAt = 46, kNonceAt = 78, kLengthAt = 102, kHeader = 110;
const char kCommitLabel[] = "modelcdr-map-v2 key commitment";
const char kMapIdLabel[] = "modelcdr-map-v2 map id";
const char kSlotLabel[] = "modelcdr-map-v2 slot";
const char kMacLabel[] = "modelcdr-map-v2 map mac";
constexpr size_t kMac = 32;

// What precedes the nonce and the wrapped key in a slot body (bound into the slot's AD).
size_t slot_prefix(uint8_t type) {
  return type == slot_passphrase ? kSalt + 16 : type == slot_recipient ? kSealedKek : 0;
}

void put16(std::string& s, uint16_t v) {
  s.push_back(static_cast<char>(v & 0xFF));
  s.push_back(static_cast<char>(v >> 8));
}
void put64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put(std::string& s, const uint8_t* p, size_t n) { s.append(reinterpret_cast<const char*>(p), n); }
uint16_t get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}
const uint8_t* bytes(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

// The content key, locked in memory and wiped when done.
struct ContentKey {
  uint8_t k[32];
  ContentKey() { sodium_mlock(k, sizeof k); }
  ~ContentKey() { sodium_munlock(k, sizeof k); }  // munlock zeroes too
  ContentKey(const ContentKey&) = delete;
  ContentKey& operator=(const ContentKey&) = delete;
};

// Commitment to the content key (XChaCha20-Poly1305 is not key-committing: without this, a
// ciphertext could be crafted to open under two keys).
void key_commitment(uint8_t out[32], const uint8_t cek[32]) {
  crypto_generichash(out, 32, reinterpret_cast<const uint8_t*>(kCommitLabel), sizeof kCommitLabel - 1, cek, 32);
}

// Names this map: a hash of the header and the sealed payload (everything before the slots).
std::array<uint8_t, 32> map_id(const uint8_t* p, size_t n) {
  std::array<uint8_t, 32> id;
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, id.size());
  crypto_generichash_update(&st, reinterpret_cast<const uint8_t*>(kMapIdLabel), sizeof kMapIdLabel);
  crypto_generichash_update(&st, p, n);
  crypto_generichash_final(&st, id.data(), id.size());
  return id;
}

// Associated data of a slot: the label, the map it belongs to, its type and its clear prefix.
std::string slot_ad(const std::array<uint8_t, 32>& id, uint8_t type, const uint8_t* prefix, size_t prefix_len) {
  std::string ad(kSlotLabel, sizeof kSlotLabel - 1);
  put(ad, id.data(), id.size());
  ad.push_back(static_cast<char>(type));
  put(ad, prefix, prefix_len);
  return ad;
}

// A MAC over the whole map up to the signature under a key derived from the content key: any
// key holder detects a change to any byte, the slots of others included.
void map_mac(uint8_t out[kMac], const uint8_t cek[32], const uint8_t* p, size_t n) {
  uint8_t mac_key[32];
  crypto_generichash(mac_key, 32, reinterpret_cast<const uint8_t*>(kMacLabel), sizeof kMacLabel - 1, cek, 32);
  crypto_generichash(out, kMac, p, n, mac_key, sizeof mac_key);
  sodium_memzero(mac_key, sizeof mac_key);
}

Status derive_passphrase_key(uint8_t out[32], const std::string& pass, const uint8_t* salt, uint64_t ops, uint64_t mem) {
  if (crypto_pwhash(out, 32, pass.data(), pass.size(), salt, ops, mem, crypto_pwhash_ALG_ARGON2ID13) != 0)
    return make_error("crypto.pwhash", "Argon2id key derivation failed (out of memory?)");
  return ok_status();
}

bool pwhash_params_ok(uint64_t ops, uint64_t mem) {
  return ops >= crypto_pwhash_OPSLIMIT_MIN && ops <= kMaxPwhashOps && mem >= crypto_pwhash_MEMLIMIT_MIN &&
         mem <= kMaxPwhashMem;
}

Error corrupt() { return make_error("map.corrupt", "the map was modified or damaged (authentication failed)"); }
Error bad_header(const std::string& what) { return make_error("map.format", "malformed map header: " + what); }

struct Slot {
  uint8_t type;
  const uint8_t* body;
  size_t len;
};

// The parsed clear structure of a map; nothing here is authenticated yet.
struct Parsed {
  bool signed_ = false;
  const uint8_t* signer = nullptr;
  const uint8_t* commitment = nullptr;
  const uint8_t* nonce = nullptr;
  size_t payload_end = 0;  // end of the ciphertext = start of the slots
  size_t slots_end = 0;    // start of the map MAC
  size_t body_end = 0;     // end of what the signature covers
  std::vector<Slot> slots;
};

Result<Parsed> parse_header(const std::string& s) {
  Parsed p;
  if (s.size() > kMaxMapBytes) return make_error("map.format", "map larger than " + std::to_string(kMaxMapBytes >> 20) + " MiB");
  if (s.size() < kHeader) return bad_header("too short");
  const uint8_t* b = bytes(s);
  const uint16_t flags = get16(b + 10), nslots = get16(b + 12);
  if ((flags & ~kFlagSigned) != 0) return bad_header("unknown flags");
  if (nslots == 0 || nslots > kMaxSlots) return bad_header(std::to_string(nslots) + " key slots (1 to " + std::to_string(kMaxSlots) + ")");
  p.signed_ = (flags & kFlagSigned) != 0;
  p.signer = b + kSignerAt;
  p.commitment = b + kCommitAt;
  p.nonce = b + kNonceAt;
  const uint64_t clen = get64(b + kLengthAt);
  if (clen < kTag || clen > s.size() - kHeader) return bad_header("payload length out of range");
  p.payload_end = kHeader + clen;
  p.body_end = s.size() - (p.signed_ ? crypto_sign_BYTES : 0);
  if (p.body_end < p.payload_end + kMac) return bad_header("truncated");
  p.slots_end = p.body_end - kMac;
  size_t pos = p.payload_end, passphrases = 0;
  for (uint16_t i = 0; i < nslots; ++i) {
    if (p.slots_end - pos < 3) return bad_header("truncated key slot");
    Slot slot{b[pos], b + pos + 3, get16(b + pos + 1)};
    pos += 3;
    if (slot.type < slot_symmetric || slot.type > slot_recipient) return bad_header("unknown key slot type");
    if (slot.len != slot_prefix(slot.type) + kNonce + kWrapped || p.slots_end - pos < slot.len)
      return bad_header("key slot of the wrong length");
    if (slot.type == slot_passphrase) {
      if (++passphrases > kMaxPassphraseSlots) return bad_header("more than " + std::to_string(kMaxPassphraseSlots) + " passphrase slots");
      if (!pwhash_params_ok(get64(slot.body + kSalt), get64(slot.body + kSalt + 8)))
        return bad_header("passphrase slot has out-of-range Argon2id parameters");
    }
    pos += slot.len;
    p.slots.push_back(slot);
  }
  if (pos != p.slots_end) return bad_header("trailing bytes");
  static const uint8_t zero[32] = {0};
  if (!p.signed_ && std::memcmp(p.signer, zero, 32) != 0) return bad_header("unsigned map naming a signer");
  return p;
}

bool key_in(const std::vector<Key32>& keys, const uint8_t* k) {
  return std::any_of(keys.begin(), keys.end(), [&](const Key32& x) { return std::memcmp(x.data(), k, 32) == 0; });
}

// Signature policy (docs/MTD.md §4): a pinned signer unless the caller opted into unsigned maps.
Status check_signer(const std::string& s, const Parsed& p, const OpenOptions& o, OpenedMap& result) {
  const bool pinned = !o.trusted_signers.empty() || !o.trusted_fingerprints.empty();
  if (!p.signed_) {
    if (pinned) return make_error("map.signature", "the map is not signed, but a trusted signer is required");
    if (!o.allow_unsigned)
      return make_error("map.untrusted", "no trusted signer given (use --verify-signer PUB or --trust FILE; "
                                         "--allow-unsigned accepts maps from anyone)");
    return ok_status();
  }
  const std::string fp = fingerprint(p.signer, 32);
  if (pinned && !key_in(o.trusted_signers, p.signer) &&
      std::find(o.trusted_fingerprints.begin(), o.trusted_fingerprints.end(), fp) == o.trusted_fingerprints.end())
    return make_error("map.signature", "the map is signed by " + fp + ", which is not a trusted signer");
  if (!pinned && !o.allow_unsigned)
    return make_error("map.untrusted", "the map is signed by " + fp + ", but no trusted signer was given "
                                       "(use --verify-signer PUB or --trust FILE)");
  if (crypto_sign_verify_detached(bytes(s) + p.body_end, bytes(s), p.body_end, p.signer) != 0)
    return make_error("map.signature", "the map's signature does not verify (modified, or not signed by " + fp + ")");
  result.signed_ = true;
  result.signature_checked_against_trusted = pinned;
  std::memcpy(result.signer.data(), p.signer, 32);
  return ok_status();
}

// Tries the slots that the given key can open; true when one yields the content key.
Result<bool> unwrap_slots(const std::string& s, const Parsed& p, const OpenOptions& o, uint8_t cek[32]) {
  const auto id = map_id(bytes(s), p.payload_end);
  for (const Slot& slot : p.slots) {
    const size_t pre = slot_prefix(slot.type);
    const uint8_t* nonce = slot.body + pre;
    ContentKey kek;
    bool have_kek = false;
    if (slot.type == slot_symmetric && o.symmetric_key) {
      std::memcpy(kek.k, o.symmetric_key->data(), 32);
      have_kek = true;
    } else if (slot.type == slot_passphrase && o.passphrase) {
      MCDR_TRY(derive_passphrase_key(kek.k, *o.passphrase, slot.body, get64(slot.body + kSalt), get64(slot.body + kSalt + 8)));
      have_kek = true;
    } else if (slot.type == slot_recipient && o.identity && o.identity->has_x25519_secret) {
      have_kek = crypto_box_seal_open(kek.k, slot.body, kSealedKek, o.identity->x25519_public.data(),
                                      o.identity->x25519_secret.data()) == 0;
    }
    if (!have_kek) continue;
    const std::string ad = slot_ad(id, slot.type, slot.body, pre);
    unsigned long long plen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(cek, &plen, nullptr, nonce + kNonce, kWrapped, bytes(ad), ad.size(),
                                                   nonce, kek.k) == 0 && plen == 32)
      return true;
  }
  return false;
}

}  // namespace

OpenedMap::~OpenedMap() { sodium_memzero(payload.data(), payload.size()); }

bool looks_like_map(const std::string& b) { return b.size() >= 8 && std::memcmp(b.data(), kMagic, 8) == 0; }

Result<std::string> seal_map(const std::string& payload, const SealOptions& o) {
  if (sodium_init() < 0) return make_error("crypto.init", "libsodium failed to initialise");
  size_t nslots = o.symmetric_keys.size() + o.passphrases.size() + o.recipients.size();
  if (nslots == 0) return make_error("map.no-key", "no key given to seal the map with");
  if (nslots > kMaxSlots) return make_error("map.too-many-keys", "at most " + std::to_string(kMaxSlots) + " keys per map");
  if (o.passphrases.size() > kMaxPassphraseSlots)
    return make_error("map.too-many-keys", "at most " + std::to_string(kMaxPassphraseSlots) + " passphrases per map");
  if (!o.passphrases.empty() && !pwhash_params_ok(o.pwhash_ops, o.pwhash_mem))
    return make_error("map.kdf", "Argon2id parameters out of the range readers accept");
  if (o.signer && !o.signer->has_ed25519_secret) return make_error("key.no-signing-key", "the --sign key file has no ed25519 secret");
  ContentKey cek;
  randombytes_buf(cek.k, sizeof cek.k);
  std::string h(kMagic, 8);
  put16(h, kMapFormatVersion);
  put16(h, o.signer ? kFlagSigned : 0);
  put16(h, static_cast<uint16_t>(nslots));
  uint8_t commit[32], signer[32] = {0};
  if (o.signer) std::memcpy(signer, o.signer->ed25519_public.data(), 32);
  key_commitment(commit, cek.k);
  put(h, signer, 32);
  put(h, commit, 32);
  uint8_t nonce[kNonce];
  randombytes_buf(nonce, sizeof nonce);
  put(h, nonce, sizeof nonce);
  put64(h, payload.size() + kTag);
  std::string out = h;
  out.resize(h.size() + payload.size() + kTag);
  unsigned long long clen = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(reinterpret_cast<uint8_t*>(out.data()) + h.size(), &clen, bytes(payload),
                                             payload.size(), bytes(h), h.size(), nullptr, nonce, cek.k);
  const auto id = map_id(bytes(out), out.size());
  auto add_slot = [&](uint8_t type, const std::string& prefix, const uint8_t* kek) {
    uint8_t slot_nonce[kNonce], ct[kWrapped];
    randombytes_buf(slot_nonce, sizeof slot_nonce);
    const std::string ad = slot_ad(id, type, bytes(prefix), prefix.size());
    crypto_aead_xchacha20poly1305_ietf_encrypt(ct, &clen, cek.k, 32, bytes(ad), ad.size(), nullptr, slot_nonce, kek);
    out.push_back(static_cast<char>(type));
    put16(out, static_cast<uint16_t>(prefix.size() + kNonce + kWrapped));
    out += prefix;
    put(out, slot_nonce, sizeof slot_nonce);
    put(out, ct, sizeof ct);
  };
  for (const auto& k : o.symmetric_keys) add_slot(slot_symmetric, "", k.data());
  for (const auto& pass : o.passphrases) {
    std::string prefix;
    uint8_t salt[kSalt];
    ContentKey kek;
    randombytes_buf(salt, sizeof salt);
    MCDR_TRY(derive_passphrase_key(kek.k, pass, salt, o.pwhash_ops, o.pwhash_mem));
    put(prefix, salt, sizeof salt);
    put64(prefix, o.pwhash_ops);
    put64(prefix, o.pwhash_mem);
    add_slot(slot_passphrase, prefix, kek.k);
  }
  for (const auto& pk : o.recipients) {
    // crypto_box_seal has no associated data: it carries a fresh key-encryption key, and the
    // content key is wrapped under that with the slot's associated data like the others.
    ContentKey kek;
    randombytes_buf(kek.k, sizeof kek.k);
    uint8_t sealed[kSealedKek];
    if (crypto_box_seal(sealed, kek.k, 32, pk.data()) != 0) return make_error("crypto.seal", "crypto_box_seal failed");
    add_slot(slot_recipient, std::string(reinterpret_cast<const char*>(sealed), sizeof sealed), kek.k);
  }
  uint8_t mac[kMac];
  map_mac(mac, cek.k, bytes(out), out.size());
  put(out, mac, sizeof mac);
  if (o.signer) {
    uint8_t sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, nullptr, bytes(out), out.size(), o.signer->ed25519_secret.data());
    put(out, sig, sizeof sig);
  }
  return out;
}

Result<uint16_t> map_format_version(const std::string& sealed) {
  if (sealed.size() < 10 || !looks_like_map(sealed)) return make_error("map.format", "not a modelcdr map (bad magic)");
  return static_cast<uint16_t>(uint8_t(sealed[8]) | (uint8_t(sealed[9]) << 8));
}

bool signature_valid(const std::string& sealed, const Key32& pk) {
  auto p = parse_header(sealed);
  if (!p.ok() || !p->signed_) return false;
  return crypto_sign_verify_detached(bytes(sealed) + p->body_end, bytes(sealed), p->body_end, pk.data()) == 0;
}

Result<OpenedMap> open_map(const std::string& sealed, const OpenOptions& o) {
  if (sodium_init() < 0) return make_error("crypto.init", "libsodium failed to initialise");
  MCDR_ASSIGN(uint16_t version, map_format_version(sealed));
  if (version != kMapFormatVersion)
    return make_error("map.version", "unsupported map format version " + std::to_string(version) + " (this modelcdr reads version " +
                                         std::to_string(kMapFormatVersion) + "): re-protect the model");
  // Everything is bounded and checked for shape before any signature, KDF or decryption runs.
  MCDR_ASSIGN(Parsed p, parse_header(sealed));
  OpenedMap result;
  MCDR_TRY(check_signer(sealed, p, o, result));
  ContentKey cek;
  MCDR_ASSIGN(bool opened, unwrap_slots(sealed, p, o, cek.k));
  if (!opened) return make_error("map.no-key", "none of the map's key slots opens with the given key (wrong key)");
  uint8_t commit[32];
  key_commitment(commit, cek.k);
  if (sodium_memcmp(commit, p.commitment, 32) != 0) return corrupt();
  uint8_t mac[kMac];
  map_mac(mac, cek.k, bytes(sealed), p.slots_end);
  if (sodium_memcmp(mac, bytes(sealed) + p.slots_end, kMac) != 0) return corrupt();
  const size_t clen = p.payload_end - kHeader;
  result.payload.assign(clen - kTag, '\0');
  unsigned long long plen = 0;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(reinterpret_cast<uint8_t*>(result.payload.data()), &plen, nullptr,
                                                 bytes(sealed) + kHeader, clen, bytes(sealed), kHeader, p.nonce,
                                                 cek.k) != 0)
    return corrupt();
  return result;
}

}  // namespace modelcdr::mtd
