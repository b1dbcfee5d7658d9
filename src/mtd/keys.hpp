// Key files for MTD (docs/MTD.md §5): a small text format, one "field: base64" per line.
//   modelcdr-key-v1            first line, always
//   kind: secret | public | symmetric
//   x25519-public / x25519-secret     (crypto_box key pair: seals the map to recipients)
//   ed25519-public / ed25519-secret   (crypto_sign key pair: signs maps)
//   key                               (symmetric: 32 random bytes)
// Secret and symmetric files are written with mode 0600, atomically (temp file + rename).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "modelcdr/mtd.hpp"
#include "modelcdr/mtd_tools.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::mtd {

// A subkey of `secret`: keyed BLAKE2b (libsodium crypto_generichash) of the parts joined by NUL
// bytes, e.g. {"modelcdr/mtd/v2/enc", "7"}. Domain labels keep subkeys for different uses apart.
Key32 derive_subkey(const Key32& secret, const std::vector<std::string>& parts);

// A parsed key file. The public handle is mtd::Key (include/modelcdr/mtd.hpp), which keeps
// one in guarded memory.
struct KeyFile {
  std::string kind;  // secret | public | symmetric
  bool has_x25519 = false, has_x25519_secret = false, has_ed25519 = false, has_ed25519_secret = false;
  Key32 x25519_public{}, x25519_secret{}, ed25519_public{};
  std::array<uint8_t, 64> ed25519_secret{};
  bool has_symmetric = false;
  Key32 symmetric{};
  bool loose_permissions = false;  // holds a secret and is readable by group or others
  ~KeyFile();
};

Result<KeyFile> read_key_file(const std::string& path);
// The same parser on text already read; `path` only names the file in errors.
Result<KeyFile> parse_key_file(const std::string& text, const std::string& path);
std::string render_key_file(const KeyFile& k, bool include_secrets);
// keygen_pair, keygen_symmetric, write_file_atomic, read_small_file and fingerprint are
// public: include/modelcdr/mtd_tools.hpp.
// The first `n` bytes of `path` (fewer when it is shorter).
Result<std::string> read_small_file_prefix(const std::string& path, size_t n);

std::string to_base64(const uint8_t* p, size_t n);
Result<std::vector<uint8_t>> from_base64(const std::string& s);
std::string to_hex(const uint8_t* p, size_t n);

}  // namespace modelcdr::mtd
