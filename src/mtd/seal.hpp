// The sealed map container (docs/MTD.md §4), format version 3: magic + version, a commitment
// to the content key and a clear info JSON, the payload sealed with
// XChaCha20-Poly1305 (libsodium crypto_aead_xchacha20poly1305_ietf, the header as associated
// data), then key slots that each wrap the content key with associated data naming this very
// map (a hash of the content part: header, info, ciphertext), a MAC over all of that under a key derived from
// the content key, and optionally an Ed25519 detached signature (crypto_sign_detached) over
// everything before it.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "modelcdr/result.hpp"
#include "mtd/keys.hpp"

namespace modelcdr::mtd {

inline constexpr uint16_t kMapFormatVersion = 4;
inline constexpr size_t kMaxMapInfo = 4096;  // clear info (JSON) readable without a key

// Bounds enforced when reading a map (and when sealing one), before any key derivation: a
// hostile map must not make us burn unbounded time or memory before it is authenticated.
inline constexpr size_t kMaxMapBytes = size_t(32) << 20;  // ~130k records of JSON
inline constexpr size_t kMaxSlots = 64;
inline constexpr size_t kMaxPassphraseSlots = 4;
inline constexpr unsigned long long kMaxPwhashOps = 8;
inline constexpr size_t kMaxPwhashMem = size_t(256) << 20;

// SealOptions and OpenOptions are public: include/modelcdr/mtd.hpp.

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
// What anyone can read from a map without a key (`modelcdr map info`). Not authenticated:
// `signature_valid` says whether the embedded signer key signed it (not whether to trust it).
struct MapHeader {
  uint16_t version = 0;
  bool signed_ = false, signature_valid = false;
  std::string signer;  // fingerprint
  struct SlotInfo {
    std::string type;       // key-file | passphrase | recipient
    std::string recipient;  // fingerprint of the recipient's x25519 public key
  };
  std::vector<SlotInfo> slots;
  std::string info;  // the clear info JSON as stored
};

// Re-wrapping a map's content key for a new set of recipients (the content is unchanged).
struct ResealOptions {
  std::vector<Key32> add_recipients;             // x25519 public keys
  std::vector<std::string> remove_fingerprints;  // recipient fingerprints (fingerprint() of x25519 public)
  const KeyFile* signer = nullptr;               // required when the map was signed
};

Result<MapHeader> read_map_header(const std::string& sealed);
// Opens the map with `open` (the operator's key), keeps every other slot verbatim, adds and
// removes recipient slots, and re-signs. Errors: those of open_map, "map.needs-signer",
// "map.no-such-recipient", "map.duplicate-recipient", "map.no-key" (nothing would open it).
Result<std::string> reseal_map(const std::string& sealed, const OpenOptions& open, const ResealOptions& r);
Result<std::string> seal_map(const std::string& payload, const SealOptions& options);
Result<OpenedMap> open_map(const std::string& sealed, const OpenOptions& options);
// True when the map is signed and its signature verifies with `ed25519_public`.
bool signature_valid(const std::string& sealed, const Key32& ed25519_public);
// Reads only the clear header: the format version.
Result<uint16_t> map_format_version(const std::string& sealed);
// True when `bytes` start with the map magic.
bool looks_like_map(const std::string& bytes);

}  // namespace modelcdr::mtd
