// The sealed map container (docs/MTD.md §4), format version 2: magic + version, the signer's
// public key and a commitment to the content key in clear, the payload sealed with
// XChaCha20-Poly1305 (libsodium crypto_aead_xchacha20poly1305_ietf, the header as associated
// data), then key slots that each wrap the content key with associated data naming this very
// map (a hash of everything before the slots), a MAC over all of that under a key derived from
// the content key, and optionally an Ed25519 detached signature (crypto_sign_detached) over
// everything before it.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "modelcdr/result.hpp"
#include "mtd/keys.hpp"

namespace modelcdr::mtd {

inline constexpr uint16_t kMapFormatVersion = 2;

// Bounds enforced when reading a map (and when sealing one), before any key derivation: a
// hostile map must not make us burn unbounded time or memory before it is authenticated.
inline constexpr size_t kMaxMapBytes = size_t(32) << 20;  // ~130k records of JSON
inline constexpr size_t kMaxSlots = 64;
inline constexpr size_t kMaxPassphraseSlots = 4;
inline constexpr unsigned long long kMaxPwhashOps = 8;
inline constexpr size_t kMaxPwhashMem = size_t(256) << 20;

struct SealOptions {
  std::vector<Key32> symmetric_keys;       // --key-file
  std::vector<std::string> passphrases;    // --passphrase-file (Argon2id)
  std::vector<Key32> recipients;           // --recipient (X25519 public keys, crypto_box_seal)
  const KeyFile* signer = nullptr;         // --sign (ed25519 secret)
  unsigned long long pwhash_ops = 3;
  size_t pwhash_mem = 64u << 20;           // 64 MiB: memory-hard, and within the RSS budget
};

struct OpenOptions {
  std::optional<Key32> symmetric_key;
  std::optional<std::string> passphrase;
  const KeyFile* identity = nullptr;       // x25519 secret
  // Pinned signers (--verify-signer, --trust): the map must be signed by one of these keys
  // (public keys) or by a key whose fingerprint is listed; checked before anything else.
  std::vector<Key32> trusted_signers;
  std::vector<std::string> trusted_fingerprints;  // fingerprint() strings
  // Explicit opt-in (--allow-unsigned): no pinned signer; unsigned maps are opened.
  bool allow_unsigned = false;
};

struct OpenedMap {
  std::string payload;   // plaintext (JSON)
  bool signed_ = false;
  bool signature_checked_against_trusted = false;
  Key32 signer{};        // valid when signed_ (the key the signature verified with)
  OpenedMap() = default;
  OpenedMap(OpenedMap&&) = default;
  OpenedMap& operator=(OpenedMap&&) = default;
  ~OpenedMap();          // wipes the payload: it holds the secret
};

// Error rules: "map.format" (not a map / unsupported version / out-of-bounds header),
// "map.no-key" (no slot opens with the given key), "map.corrupt" (authentication failed:
// modified map), "map.signature" (missing or wrong signature), "map.untrusted" (no pinned
// signer and no opt-in). All but io.* are integrity failures for the CLI (exit 3).
Result<std::string> seal_map(const std::string& payload, const SealOptions& options);
Result<OpenedMap> open_map(const std::string& sealed, const OpenOptions& options);
// True when the map is signed and its signature verifies with `ed25519_public`.
bool signature_valid(const std::string& sealed, const Key32& ed25519_public);
// Reads only the clear header: the format version.
Result<uint16_t> map_format_version(const std::string& sealed);
// True when `bytes` start with the map magic.
bool looks_like_map(const std::string& bytes);

}  // namespace modelcdr::mtd
