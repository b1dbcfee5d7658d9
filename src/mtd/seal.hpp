// The sealed map container (docs/MTD.md §4): magic + format version in clear, key slots that
// each wrap one random content key, the payload sealed with XChaCha20-Poly1305 (libsodium
// crypto_aead_xchacha20poly1305_ietf, the whole header as associated data), and optionally an
// Ed25519 detached signature (crypto_sign_detached) over everything before it.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "modelcdr/result.hpp"
#include "mtd/keys.hpp"

namespace modelcdr::mtd {

inline constexpr uint16_t kMapFormatVersion = 1;

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
  std::optional<Key32> trusted_signer;     // --verify-signer: ed25519 public key
};

struct OpenedMap {
  std::string payload;   // plaintext (JSON)
  bool signed_ = false;
  bool signature_checked_against_trusted = false;
  Key32 signer{};        // valid when signed_ (the key the signature verified with)
};

// Error rules: "map.format" (not a map / unsupported version), "map.no-key" (no slot opens with
// the given key), "map.corrupt" (authentication failed: modified map), "map.signature" (missing or
// wrong signature). All but io.* are integrity failures for the CLI (exit 3).
Result<std::string> seal_map(const std::string& payload, const SealOptions& options);
Result<OpenedMap> open_map(const std::string& sealed, const OpenOptions& options);
// True when the map is signed and its signature verifies with `ed25519_public`.
bool signature_valid(const std::string& sealed, const Key32& ed25519_public);
// Reads only the clear header: the format version.
Result<uint16_t> map_format_version(const std::string& sealed);

}  // namespace modelcdr::mtd
