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
constexpr size_t kFp = 16;                                               // recipient fingerprint
// v3 layout. Content part (fixed once sealed; the payload's associated data is all of it up to
// the ciphertext, and the map id hashes all of it): magic, version, key commitment, nonce, clear
// info length, ciphertext length, clear info, ciphertext. Then the seal part, which re-wrapping
// rewrites (add/remove a recipient, re-sign) without touching the content: flags, slot count,
// signer key, the slots, the MAC, the signature.
constexpr size_t kCommitAt = 10, kNonceAt = 42, kInfoLenAt = 66, kLengthAt = 70, kHeader = 78;
constexpr size_t kSealHead = 36;  // flags 2, slot count 2, signer 32
const char kCommitLabel[] = "modelcdr-map-v3 key commitment";
const char kMapIdLabel[] = "modelcdr-map-v3 map id";
const char kSlotLabel[] = "modelcdr-map-v3 slot";
const char kMacLabel[] = "modelcdr-map-v3 map mac";
constexpr size_t kMac = 32;

// What precedes the nonce and the wrapped key in a slot body (bound into the slot's AD).
size_t slot_prefix(uint8_t type) {
  return type == slot_passphrase ? kSalt + 16 : type == slot_recipient ? kFp + kSealedKek : 0;
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

Status derive_passphrase_key(uint8_t out[32], std::string_view pass, const uint8_t* salt, uint64_t ops, uint64_t mem) {
  if (crypto_pwhash(out, 32, pass.data(), pass.size(), salt, ops, mem, crypto_pwhash_ALG_ARGON2ID13) != 0)
    return make_error(Rule::crypto_pwhash, "Argon2id key derivation failed (out of memory?)");
  return ok_status();
}

bool pwhash_params_ok(uint64_t ops, uint64_t mem) {
  return ops >= crypto_pwhash_OPSLIMIT_MIN && ops <= kMaxPwhashOps && mem >= crypto_pwhash_MEMLIMIT_MIN &&
         mem <= kMaxPwhashMem;
}

// Versions 1-3 cannot be read safely (docs/MTD.md §4); 4 (SHA-256) and 5 (BLAKE3) can.
Status check_version(uint16_t version) {
  if (version < kOldestMapFormatVersion || version > kMapFormatVersion)
    return make_error(Rule::map_version, "unsupported map format version " + std::to_string(version) + " (this modelcdr reads versions " +
                                         std::to_string(kOldestMapFormatVersion) + " to " + std::to_string(kMapFormatVersion) +
                                         "): re-protect the model");
  return ok_status();
}

Error corrupt() { return make_error(Rule::map_corrupt, "the map was modified or damaged (authentication failed)"); }
Error bad_header(const std::string& what) { return make_error(Rule::map_format, "malformed map header: " + what); }

struct Slot {
  uint8_t type;
  const uint8_t* body;
  size_t len;
  size_t at;  // offset of the slot (type byte) in the map
};

uint32_t get32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }
void put32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

// The parsed clear structure of a map; nothing here is authenticated yet.
struct Parsed {
  bool signed_ = false;
  const uint8_t* signer = nullptr;
  const uint8_t* commitment = nullptr;
  const uint8_t* nonce = nullptr;
  size_t info_len = 0;     // clear info at kHeader
  size_t ct_at = 0;        // start of the ciphertext (= end of the payload's associated data)
  size_t payload_end = 0;  // end of the ciphertext = start of the seal part
  size_t slots_end = 0;    // start of the map MAC
  size_t body_end = 0;     // end of what the signature covers
  std::vector<Slot> slots;
};

Result<Parsed> parse_header(const std::string& s) {
  Parsed p;
  if (s.size() > kMaxMapBytes) return make_error(Rule::map_format, "map larger than " + std::to_string(kMaxMapBytes >> 20) + " MiB");
  if (s.size() < kHeader) return bad_header("too short");
  const uint8_t* b = bytes(s);
  p.commitment = b + kCommitAt;
  p.nonce = b + kNonceAt;
  p.info_len = get32(b + kInfoLenAt);
  if (p.info_len > kMaxMapInfo || p.info_len > s.size() - kHeader) return bad_header("clear info length out of range");
  p.ct_at = kHeader + p.info_len;
  const uint64_t clen = get64(b + kLengthAt);
  if (clen < kTag || clen > s.size() - p.ct_at) return bad_header("payload length out of range");
  p.payload_end = p.ct_at + clen;
  if (s.size() - p.payload_end < kSealHead) return bad_header("truncated");
  const uint8_t* sh = b + p.payload_end;
  const uint16_t flags = get16(sh), nslots = get16(sh + 2);
  if ((flags & ~kFlagSigned) != 0) return bad_header("unknown flags");
  if (nslots == 0 || nslots > kMaxSlots) return bad_header(std::to_string(nslots) + " key slots (1 to " + std::to_string(kMaxSlots) + ")");
  p.signed_ = (flags & kFlagSigned) != 0;
  p.signer = sh + 4;
  p.body_end = s.size() - (p.signed_ ? crypto_sign_BYTES : 0);
  if (p.body_end < p.payload_end + kSealHead + kMac) return bad_header("truncated");
  p.slots_end = p.body_end - kMac;
  size_t pos = p.payload_end + kSealHead, passphrases = 0;
  for (uint16_t i = 0; i < nslots; ++i) {
    if (p.slots_end - pos < 3) return bad_header("truncated key slot");
    Slot slot{b[pos], b + pos + 3, get16(b + pos + 1), pos};
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

std::array<uint8_t, kFp> recipient_fp(const Key32& pk) {
  uint8_t h[32];
  crypto_generichash(h, sizeof h, pk.data(), pk.size(), nullptr, 0);
  std::array<uint8_t, kFp> fp;
  std::memcpy(fp.data(), h, kFp);  // the same 128 bits as fingerprint()
  return fp;
}

bool key_in(const std::vector<Key32>& keys, const uint8_t* k) {
  return std::any_of(keys.begin(), keys.end(), [&](const Key32& x) { return std::memcmp(x.data(), k, 32) == 0; });
}

// Signature policy (docs/MTD.md §4): a pinned signer unless the caller opted into unsigned maps.
Status check_signer(const std::string& s, const Parsed& p, const OpenOptions& o, OpenedMap& result) {
  const bool pinned = !o.trusted_signers.empty() || !o.trusted_fingerprints.empty();
  if (!p.signed_) {
    if (pinned) return make_error(Rule::map_signature, "the map is not signed, but a trusted signer is required");
    if (!o.allow_unsigned)
      return make_error(Rule::map_untrusted, "no trusted signer given (use --verify-signer PUB or --trust FILE; "
                                         "--allow-unsigned accepts maps from anyone)");
    return ok_status();
  }
  const std::string fp = fingerprint(p.signer, 32);
  if (pinned && !key_in(o.trusted_signers, p.signer) &&
      std::find(o.trusted_fingerprints.begin(), o.trusted_fingerprints.end(), fp) == o.trusted_fingerprints.end())
    return make_error(Rule::map_signature, "the map is signed by " + fp + ", which is not a trusted signer");
  if (!pinned && !o.allow_unsigned)
    return make_error(Rule::map_untrusted, "the map is signed by " + fp + ", but no trusted signer was given "
                                       "(use --verify-signer PUB or --trust FILE)");
  if (crypto_sign_verify_detached(bytes(s) + p.body_end, bytes(s), p.body_end, p.signer) != 0)
    return make_error(Rule::map_signature, "the map's signature does not verify (modified, or not signed by " + fp + ")");
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
      // The slot names its recipient: skip the others (no trial decryption of every slot).
      have_kek = std::memcmp(slot.body, recipient_fp(o.identity->x25519_public).data(), kFp) == 0 &&
                 crypto_box_seal_open(kek.k, slot.body + kFp, kSealedKek, o.identity->x25519_public.data(),
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

namespace {

// One key slot wrapping `cek` under `kek`, bound to the map named `id`.
std::string make_slot(uint8_t type, const std::string& prefix, const uint8_t* kek, const uint8_t* cek,
                      const std::array<uint8_t, 32>& id) {
  uint8_t slot_nonce[kNonce], ct[kWrapped];
  unsigned long long clen = 0;
  randombytes_buf(slot_nonce, sizeof slot_nonce);
  const std::string ad = slot_ad(id, type, bytes(prefix), prefix.size());
  crypto_aead_xchacha20poly1305_ietf_encrypt(ct, &clen, cek, 32, bytes(ad), ad.size(), nullptr, slot_nonce, kek);
  std::string out(1, static_cast<char>(type));
  put16(out, static_cast<uint16_t>(prefix.size() + kNonce + kWrapped));
  out += prefix;
  put(out, slot_nonce, sizeof slot_nonce);
  put(out, ct, sizeof ct);
  return out;
}

Result<std::string> recipient_slot(const Key32& pk, const uint8_t* cek, const std::array<uint8_t, 32>& id) {
  // crypto_box_seal has no associated data: it carries a fresh key-encryption key, and the
  // content key is wrapped under that with the slot's associated data like the others.
  ContentKey kek;
  randombytes_buf(kek.k, sizeof kek.k);
  uint8_t sealed[kSealedKek];
  if (crypto_box_seal(sealed, kek.k, 32, pk.data()) != 0) return make_error(Rule::crypto_seal, "crypto_box_seal failed");
  const auto fp = recipient_fp(pk);
  std::string prefix(reinterpret_cast<const char*>(fp.data()), fp.size());
  put(prefix, sealed, sizeof sealed);
  return make_slot(slot_recipient, prefix, kek.k, cek, id);
}

// Appends the seal part to `content` (header, clear info and ciphertext): flags, slot count,
// signer, the slots, the MAC and the signature.
Result<std::string> finish_seal(std::string out, const uint8_t* cek, const std::vector<std::string>& slots,
                                const KeyFile* signer) {
  if (slots.empty()) return make_error(Rule::map_no_key, "no key given to seal the map with");
  if (slots.size() > kMaxSlots) return make_error(Rule::map_too_many_keys, "at most " + std::to_string(kMaxSlots) + " keys per map");
  if (signer && !signer->has_ed25519_secret) return make_error(Rule::key_no_signing_key, "the --sign key file has no ed25519 secret");
  put16(out, signer ? kFlagSigned : 0);
  put16(out, static_cast<uint16_t>(slots.size()));
  uint8_t signer_pk[32] = {0};
  if (signer) std::memcpy(signer_pk, signer->ed25519_public.data(), 32);
  put(out, signer_pk, 32);
  for (const auto& slot : slots) out += slot;
  uint8_t mac[kMac];
  map_mac(mac, cek, bytes(out), out.size());
  put(out, mac, sizeof mac);
  if (signer) {
    uint8_t sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, nullptr, bytes(out), out.size(), signer->ed25519_secret.data());
    put(out, sig, sizeof sig);
  }
  return out;
}

// Checks the signer policy, recovers the content key and checks it against the commitment and
// the MAC: after this, every byte of the map is authenticated for this key holder.
Status open_impl(const std::string& sealed, const OpenOptions& o, OpenedMap& result, Parsed& p, uint8_t cek[32]) {
  if (sodium_init() < 0) return make_error(Rule::crypto_init, "libsodium failed to initialise");
  MCDR_ASSIGN(uint16_t version, map_format_version(sealed));
  MCDR_TRY(check_version(version));
  // Everything is bounded and checked for shape before any signature, KDF or decryption runs.
  MCDR_ASSIGN(p, parse_header(sealed));
  MCDR_TRY(check_signer(sealed, p, o, result));
  MCDR_ASSIGN(bool opened, unwrap_slots(sealed, p, o, cek));
  if (!opened) return make_error(Rule::map_no_key, "none of the map's key slots opens with the given key (wrong key)");
  uint8_t commit[32];
  key_commitment(commit, cek);
  if (sodium_memcmp(commit, p.commitment, 32) != 0) return corrupt();
  uint8_t mac[kMac];
  map_mac(mac, cek, bytes(sealed), p.slots_end);
  if (sodium_memcmp(mac, bytes(sealed) + p.slots_end, kMac) != 0) return corrupt();
  return ok_status();
}

}  // namespace

Result<std::string> seal_map(const std::string& payload, const SealOptions& o) {
  if (sodium_init() < 0) return make_error(Rule::crypto_init, "libsodium failed to initialise");
  size_t nslots = o.symmetric_keys.size() + o.passphrases.size() + o.recipients.size();
  if (nslots == 0) return make_error(Rule::map_no_key, "no key given to seal the map with");
  if (nslots > kMaxSlots) return make_error(Rule::map_too_many_keys, "at most " + std::to_string(kMaxSlots) + " keys per map");
  if (o.passphrases.size() > kMaxPassphraseSlots)
    return make_error(Rule::map_too_many_keys, "at most " + std::to_string(kMaxPassphraseSlots) + " passphrases per map");
  if (!o.passphrases.empty() && !pwhash_params_ok(o.pwhash_ops, o.pwhash_mem))
    return make_error(Rule::map_kdf, "Argon2id parameters out of the range readers accept");
  if (o.info.size() > kMaxMapInfo) return make_error(Rule::map_info, "clear map info larger than " + std::to_string(kMaxMapInfo) + " bytes");
  if (o.signer && !o.signer->has_ed25519_secret) return make_error(Rule::key_no_signing_key, "the --sign key file has no ed25519 secret");
  ContentKey cek;
  randombytes_buf(cek.k, sizeof cek.k);
  std::string h(kMagic, 8);
  put16(h, kMapFormatVersion);
  uint8_t commit[32];
  key_commitment(commit, cek.k);
  put(h, commit, 32);
  uint8_t nonce[kNonce];
  randombytes_buf(nonce, sizeof nonce);
  put(h, nonce, sizeof nonce);
  put32(h, static_cast<uint32_t>(o.info.size()));
  put64(h, payload.size() + kTag);
  h += o.info;
  std::string out = h;
  out.resize(h.size() + payload.size() + kTag);
  unsigned long long clen = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(reinterpret_cast<uint8_t*>(out.data()) + h.size(), &clen, bytes(payload),
                                             payload.size(), bytes(h), h.size(), nullptr, nonce, cek.k);
  const auto id = map_id(bytes(out), out.size());
  std::vector<std::string> slots;
  for (const auto& k : o.symmetric_keys) slots.push_back(make_slot(slot_symmetric, "", k.data(), cek.k, id));
  for (const auto& pass : o.passphrases) {
    std::string prefix;
    uint8_t salt[kSalt];
    ContentKey kek;
    randombytes_buf(salt, sizeof salt);
    MCDR_TRY(derive_passphrase_key(kek.k, pass, salt, o.pwhash_ops, o.pwhash_mem));
    put(prefix, salt, sizeof salt);
    put64(prefix, o.pwhash_ops);
    put64(prefix, o.pwhash_mem);
    slots.push_back(make_slot(slot_passphrase, prefix, kek.k, cek.k, id));
  }
  for (const auto& pk : o.recipients) {
    MCDR_ASSIGN(std::string slot, recipient_slot(pk, cek.k, id));
    slots.push_back(std::move(slot));
  }
  return finish_seal(std::move(out), cek.k, slots, o.signer);
}

Result<std::string> reseal_map(const std::string& sealed, const OpenOptions& o, const ResealOptions& r) {
  OpenedMap opened;
  Parsed p;
  ContentKey cek;
  MCDR_TRY(open_impl(sealed, o, opened, p, cek.k));
  if (p.signed_ && !r.signer)
    return make_error(Rule::map_needs_signer, "the map is signed: give --sign SECRET to re-sign it (by " +
                                              fingerprint(p.signer, 32) + " or a new signer)");
  std::vector<std::string> slots;
  std::vector<std::string> present;  // recipient fingerprints kept
  size_t removed = 0;
  for (const Slot& slot : p.slots) {
    if (slot.type == slot_recipient) {
      const std::string fp = to_hex(slot.body, kFp);
      if (std::find(r.remove_fingerprints.begin(), r.remove_fingerprints.end(), fp) != r.remove_fingerprints.end()) {
        ++removed;
        continue;
      }
      present.push_back(fp);
    }
    slots.emplace_back(reinterpret_cast<const char*>(bytes(sealed) + slot.at), 3 + slot.len);  // verbatim: still valid
  }
  if (removed < r.remove_fingerprints.size())
    return make_error(Rule::map_no_such_recipient, "the map is not sealed to every recipient given (see `modelcdr map info`)");
  const auto id = map_id(bytes(sealed), p.payload_end);
  for (const auto& pk : r.add_recipients) {
    const std::string fp = fingerprint(pk.data(), pk.size());
    if (std::find(present.begin(), present.end(), fp) != present.end())
      return make_error(Rule::map_duplicate_recipient, "the map is already sealed to recipient " + fp);
    present.push_back(fp);
    MCDR_ASSIGN(std::string slot, recipient_slot(pk, cek.k, id));
    slots.push_back(std::move(slot));
  }
  if (slots.empty()) return make_error(Rule::map_no_key, "removing that would leave no key that opens the map");
  return finish_seal(sealed.substr(0, p.payload_end), cek.k, slots, r.signer);
}

Result<MapHeader> read_map_header(const std::string& sealed) {
  if (sodium_init() < 0) return make_error(Rule::crypto_init, "libsodium failed to initialise");
  MCDR_ASSIGN(uint16_t version, map_format_version(sealed));
  MCDR_TRY(check_version(version));
  MCDR_ASSIGN(Parsed p, parse_header(sealed));
  MapHeader h;
  h.version = version;
  h.signed_ = p.signed_;
  if (p.signed_) {
    h.signer = fingerprint(p.signer, 32);
    h.signature_valid = crypto_sign_verify_detached(bytes(sealed) + p.body_end, bytes(sealed), p.body_end, p.signer) == 0;
  }
  for (const Slot& slot : p.slots) {
    MapHeader::SlotInfo si;
    si.type = slot.type == slot_symmetric ? "key-file" : slot.type == slot_passphrase ? "passphrase" : "recipient";
    if (slot.type == slot_recipient) si.recipient = to_hex(slot.body, kFp);
    h.slots.push_back(si);
  }
  h.info = sealed.substr(kHeader, p.info_len);
  return h;
}

Result<uint16_t> map_format_version(const std::string& sealed) {
  if (sealed.size() < 10 || !looks_like_map(sealed)) return make_error(Rule::map_format, "not a modelcdr map (bad magic)");
  return static_cast<uint16_t>(uint8_t(sealed[8]) | (uint8_t(sealed[9]) << 8));
}

bool signature_valid(const std::string& sealed, const Key32& pk) {
  auto p = parse_header(sealed);
  if (!p.ok() || !p->signed_) return false;
  return crypto_sign_verify_detached(bytes(sealed) + p->body_end, bytes(sealed), p->body_end, pk.data()) == 0;
}

Result<OpenedMap> open_map(const std::string& sealed, const OpenOptions& o) {
  OpenedMap result;
  Parsed p;
  ContentKey cek;
  MCDR_TRY(open_impl(sealed, o, result, p, cek.k));
  MCDR_ASSIGN(result.format, map_format_version(sealed));
  const size_t clen = p.payload_end - p.ct_at;
  result.payload.assign(clen - kTag, '\0');
  unsigned long long plen = 0;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(reinterpret_cast<uint8_t*>(result.payload.data()), &plen, nullptr,
                                                 bytes(sealed) + p.ct_at, clen, bytes(sealed), p.ct_at, p.nonce,
                                                 cek.k) != 0)
    return corrupt();
  return result;
}

}  // namespace modelcdr::mtd
