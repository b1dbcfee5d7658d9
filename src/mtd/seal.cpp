#include "mtd/seal.hpp"

#include <sodium.h>

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
constexpr size_t kSealed = crypto_box_SEALBYTES + 32;                    // 80
constexpr size_t kMaxSlots = 256;
constexpr size_t kMaxPayload = size_t(1) << 30;
const char kSlotAd[] = "modelcdr-map-v1 content key";

void put16(std::string& s, uint16_t v) {
  s.push_back(static_cast<char>(v & 0xFF));
  s.push_back(static_cast<char>(v >> 8));
}
void put64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void put(std::string& s, const uint8_t* p, size_t n) { s.append(reinterpret_cast<const char*>(p), n); }

class Reader {
 public:
  Reader(const std::string& s, size_t limit) : s_(s), end_(limit) {}
  bool take(size_t n, const uint8_t*& p) {
    if (end_ - pos_ < n) return false;
    p = reinterpret_cast<const uint8_t*>(s_.data()) + pos_;
    pos_ += n;
    return true;
  }
  bool u8(uint8_t& v) {
    const uint8_t* p;
    if (!take(1, p)) return false;
    v = p[0];
    return true;
  }
  bool u16(uint16_t& v) {
    const uint8_t* p;
    if (!take(2, p)) return false;
    v = static_cast<uint16_t>(p[0] | (p[1] << 8));
    return true;
  }
  bool u64(uint64_t& v) {
    const uint8_t* p;
    if (!take(8, p)) return false;
    v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& s_;
  size_t pos_ = 0, end_;
};

Status derive_passphrase_key(uint8_t out[32], const std::string& pass, const uint8_t* salt, uint64_t ops, uint64_t mem) {
  if (crypto_pwhash(out, 32, pass.data(), pass.size(), salt, ops, mem, crypto_pwhash_ALG_ARGON2ID13) != 0)
    return make_error("crypto.pwhash", "Argon2id key derivation failed (out of memory?)");
  return ok_status();
}

Error corrupt() { return make_error("map.corrupt", "the map was modified or damaged (authentication failed)"); }

}  // namespace

Result<std::string> seal_map(const std::string& payload, const SealOptions& o) {
  if (sodium_init() < 0) return make_error("crypto.init", "libsodium failed to initialise");
  size_t nslots = o.symmetric_keys.size() + o.passphrases.size() + o.recipients.size();
  if (nslots == 0) return make_error("map.no-key", "no key given to seal the map with");
  if (nslots > kMaxSlots) return make_error("map.too-many-keys", "too many keys");
  uint8_t cek[32];
  randombytes_buf(cek, sizeof cek);
  std::string h(kMagic, 8);
  put16(h, kMapFormatVersion);
  put16(h, o.signer ? kFlagSigned : 0);
  put16(h, static_cast<uint16_t>(nslots));
  auto wrap = [&](std::string& slot, const uint8_t* kek) {
    uint8_t nonce[kNonce], ct[kWrapped];
    randombytes_buf(nonce, sizeof nonce);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(ct, &clen, cek, 32, reinterpret_cast<const uint8_t*>(kSlotAd),
                                               sizeof kSlotAd - 1, nullptr, nonce, kek);
    put(slot, nonce, sizeof nonce);
    put(slot, ct, sizeof ct);
  };
  auto add_slot = [&](uint8_t type, const std::string& body) {
    h.push_back(static_cast<char>(type));
    put16(h, static_cast<uint16_t>(body.size()));
    h += body;
  };
  for (const auto& k : o.symmetric_keys) {
    std::string body;
    wrap(body, k.data());
    add_slot(slot_symmetric, body);
  }
  for (const auto& pass : o.passphrases) {
    std::string body;
    uint8_t salt[kSalt], kek[32];
    randombytes_buf(salt, sizeof salt);
    MCDR_TRY(derive_passphrase_key(kek, pass, salt, o.pwhash_ops, o.pwhash_mem));
    put(body, salt, sizeof salt);
    put64(body, o.pwhash_ops);
    put64(body, o.pwhash_mem);
    wrap(body, kek);
    sodium_memzero(kek, sizeof kek);
    add_slot(slot_passphrase, body);
  }
  for (const auto& pk : o.recipients) {
    uint8_t sealed[kSealed];
    if (crypto_box_seal(sealed, cek, 32, pk.data()) != 0) return make_error("crypto.seal", "crypto_box_seal failed");
    add_slot(slot_recipient, std::string(reinterpret_cast<const char*>(sealed), sizeof sealed));
  }
  uint8_t nonce[kNonce];
  randombytes_buf(nonce, sizeof nonce);
  put(h, nonce, sizeof nonce);
  put64(h, payload.size() + kTag);
  std::string ct(payload.size() + kTag, '\0');
  unsigned long long clen = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(reinterpret_cast<uint8_t*>(ct.data()), &clen,
                                             reinterpret_cast<const uint8_t*>(payload.data()), payload.size(),
                                             reinterpret_cast<const uint8_t*>(h.data()), h.size(), nullptr, nonce, cek);
  sodium_memzero(cek, sizeof cek);
  std::string out = h + ct;
  if (o.signer) {
    if (!o.signer->has_ed25519_secret) return make_error("key.no-signing-key", "the --sign key file has no ed25519 secret");
    uint8_t sig[crypto_sign_BYTES];
    crypto_sign_detached(sig, nullptr, reinterpret_cast<const uint8_t*>(out.data()), out.size(),
                         o.signer->ed25519_secret.data());
    put(out, sig, sizeof sig);
  }
  return out;
}

Result<uint16_t> map_format_version(const std::string& sealed) {
  if (sealed.size() < 10 || std::memcmp(sealed.data(), kMagic, 8) != 0)
    return make_error("map.format", "not a modelcdr map (bad magic)");
  return static_cast<uint16_t>(uint8_t(sealed[8]) | (uint8_t(sealed[9]) << 8));
}

bool signature_valid(const std::string& sealed, const Key32& pk) {
  if (sealed.size() < 14 + crypto_sign_BYTES || std::memcmp(sealed.data(), kMagic, 8) != 0) return false;
  if ((uint8_t(sealed[10]) & kFlagSigned) == 0) return false;
  size_t body_end = sealed.size() - crypto_sign_BYTES;
  return crypto_sign_verify_detached(reinterpret_cast<const uint8_t*>(sealed.data()) + body_end,
                                     reinterpret_cast<const uint8_t*>(sealed.data()), body_end, pk.data()) == 0;
}

Result<OpenedMap> open_map(const std::string& sealed, const OpenOptions& o) {
  if (sodium_init() < 0) return make_error("crypto.init", "libsodium failed to initialise");
  MCDR_ASSIGN(uint16_t version, map_format_version(sealed));
  if (version != kMapFormatVersion)
    return make_error("map.format", "unsupported map format version " + std::to_string(version));
  Reader r(sealed, sealed.size());
  const uint8_t* p;
  uint16_t v, flags, nslots;
  if (!r.take(8, p) || !r.u16(v) || !r.u16(flags) || !r.u16(nslots)) return corrupt();
  if ((flags & ~kFlagSigned) != 0) return corrupt();
  OpenedMap result;
  result.signed_ = (flags & kFlagSigned) != 0;
  size_t body_end = sealed.size();
  if (result.signed_) {
    if (sealed.size() < crypto_sign_BYTES) return corrupt();
    body_end -= crypto_sign_BYTES;
  }
  // Signature first: a trusted signer must have signed exactly these bytes.
  if (o.trusted_signer) {
    if (!result.signed_) return make_error("map.signature", "the map is not signed, but --verify-signer was given");
    if (crypto_sign_verify_detached(reinterpret_cast<const uint8_t*>(sealed.data()) + body_end,
                                    reinterpret_cast<const uint8_t*>(sealed.data()), body_end,
                                    o.trusted_signer->data()) != 0)
      return make_error("map.signature", "the map's signature does not verify with the --verify-signer key "
                                         "(signed by someone else, or modified)");
    result.signer = *o.trusted_signer;
    result.signature_checked_against_trusted = true;
  }
  Reader rb(sealed, body_end);
  rb.take(14, p);
  std::optional<std::array<uint8_t, 32>> cek;
  uint8_t buf[32];
  for (uint16_t i = 0; i < nslots; ++i) {
    uint8_t type;
    uint16_t len;
    const uint8_t* body;
    if (!rb.u8(type) || !rb.u16(len) || !rb.take(len, body)) return corrupt();
    if (cek) continue;
    auto unwrap = [&](const uint8_t* s, size_t n, const uint8_t* kek) {
      if (n != kNonce + kWrapped) return false;
      unsigned long long plen = 0;
      return crypto_aead_xchacha20poly1305_ietf_decrypt(buf, &plen, nullptr, s + kNonce, kWrapped,
                                                        reinterpret_cast<const uint8_t*>(kSlotAd), sizeof kSlotAd - 1,
                                                        s, kek) == 0 && plen == 32;
    };
    bool opened = false;
    if (type == slot_symmetric && o.symmetric_key) {
      opened = unwrap(body, len, o.symmetric_key->data());
    } else if (type == slot_passphrase && o.passphrase) {
      if (len != kSalt + 16 + kNonce + kWrapped) return corrupt();
      uint64_t ops = 0, mem = 0;
      for (int b = 0; b < 8; ++b) ops |= uint64_t(body[kSalt + b]) << (8 * b);
      for (int b = 0; b < 8; ++b) mem |= uint64_t(body[kSalt + 8 + b]) << (8 * b);
      // Bounds so that a forged slot cannot make us burn unbounded time or memory.
      if (ops < crypto_pwhash_OPSLIMIT_MIN || ops > 16 || mem < crypto_pwhash_MEMLIMIT_MIN || mem > (size_t(1) << 30))
        return make_error("map.format", "passphrase slot has out-of-range Argon2id parameters");
      uint8_t kek[32];
      MCDR_TRY(derive_passphrase_key(kek, *o.passphrase, body, ops, mem));
      opened = unwrap(body + kSalt + 16, len - kSalt - 16, kek);
      sodium_memzero(kek, sizeof kek);
    } else if (type == slot_recipient && o.identity && o.identity->has_x25519_secret) {
      unsigned long long plen = 0;
      (void)plen;
      opened = len == kSealed && crypto_box_seal_open(buf, body, len, o.identity->x25519_public.data(),
                                                      o.identity->x25519_secret.data()) == 0;
    }
    if (opened) {
      cek.emplace();
      std::memcpy(cek->data(), buf, 32);
      sodium_memzero(buf, sizeof buf);
    }
  }
  const uint8_t* nonce;
  uint64_t clen = 0;
  if (!rb.take(kNonce, nonce) || !rb.u64(clen)) return corrupt();
  size_t header_len = rb.pos();
  if (clen < kTag || clen > kMaxPayload || clen != body_end - header_len) return corrupt();
  if (!cek) return make_error("map.no-key", "none of the map's key slots opens with the given key (wrong key)");
  std::string plain(clen - kTag, '\0');
  unsigned long long plen = 0;
  int rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
      reinterpret_cast<uint8_t*>(plain.data()), &plen, nullptr,
      reinterpret_cast<const uint8_t*>(sealed.data()) + header_len, clen,
      reinterpret_cast<const uint8_t*>(sealed.data()), header_len, nonce, cek->data());
  sodium_memzero(cek->data(), 32);
  if (rc != 0) return corrupt();
  result.payload = std::move(plain);
  return result;
}

}  // namespace modelcdr::mtd
