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
#include "mtd/digest.hpp"
#include "mtd/keys.hpp"

namespace modelcdr::mtd {

// Written: 5 (BLAKE3 digests). Read: 4 (SHA-256 digests) and 5; docs/MTD.md §2 and §4.
inline constexpr uint16_t kMapFormatVersion = 5;
inline constexpr uint16_t kOldestMapFormatVersion = 4;
// The hash every digest of a map of format `version` (4 or 5) uses.
inline HashScheme map_hash_scheme(uint16_t version) { return version >= 5 ? HashScheme::blake3 : HashScheme::sha256; }
inline constexpr size_t kMaxMapInfo = 4096;  // clear info (JSON) readable without a key

// Bounds enforced when reading a map (and when sealing one), before any key derivation: a
// hostile map must not make us burn unbounded time or memory before it is authenticated.
// kMaxMapBytes (a map is at most 32 MiB) is public: include/modelcdr/mtd.hpp.
inline constexpr size_t kMaxSlots = 64;
inline constexpr size_t kMaxPassphraseSlots = 4;
inline constexpr unsigned long long kMaxPwhashOps = 8;
inline constexpr size_t kMaxPwhashMem = size_t(256) << 20;

// SealOptions and OpenOptions are public: include/modelcdr/mtd.hpp.

struct OpenedMap {
  std::string payload;   // plaintext (JSON)
  uint16_t format = 0;   // the map's format version (authenticated: it is in the associated data)
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
// MapHeader, read_map_header, ResealOptions, reseal_map and looks_like_map are public:
// include/modelcdr/mtd_tools.hpp.
Result<std::string> seal_map(const std::string& payload, const SealOptions& options);
Result<OpenedMap> open_map(const std::string& sealed, const OpenOptions& options);
// True when the map is signed and its signature verifies with `ed25519_public`.
bool signature_valid(const std::string& sealed, const Key32& ed25519_public);
// Reads only the clear header: the format version.
Result<uint16_t> map_format_version(const std::string& sealed);

}  // namespace modelcdr::mtd
