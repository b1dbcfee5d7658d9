// libFuzzer target: the MTD key-file parser (src/mtd/keys.cpp, docs/MTD.md §5): any text must
// give a key or an error ("key.*"), never a crash, a leak or UB. Seeds: fuzz/seeds/key_file/.
#include <cstddef>
#include <cstdint>
#include <string>

#include "mtd/keys.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcdr::mtd;
  auto key = parse_key_file(std::string(reinterpret_cast<const char*>(data), size), "fuzz.key");
  if (!key.ok()) {
    if (!rule_id(key.error().rule).starts_with("key.")) __builtin_trap();
    return 0;
  }
  // A complete key (what keygen writes: a symmetric key, both public keys, or both secret
  // keys) renders back to a file the parser accepts again with the same keys. render_key_file
  // is not meant for partial files (it writes every field of the kind).
  const bool secrets = key->kind == "secret" && key->has_x25519_secret && key->has_ed25519_secret;
  const bool publics = key->kind == "public" && !key->has_x25519_secret && !key->has_ed25519_secret && key->has_x25519 && key->has_ed25519;
  if (!key->has_symmetric && !secrets && !publics) return 0;
  auto again = parse_key_file(render_key_file(*key, secrets), "fuzz.key");
  if (!again.ok() || again->kind != key->kind || again->symmetric != key->symmetric ||
      again->x25519_public != key->x25519_public || again->ed25519_public != key->ed25519_public)
    __builtin_trap();
  return 0;
}
