// mtd::Key and the guarded-memory containers of include/modelcdr/mtd.hpp: secrets a caller
// hands to protect / restore / verify stay in sodium_malloc memory (locked where the system
// allows, between guard pages, wiped by sodium_free).
#include <sodium.h>

#include <algorithm>
#include <new>

#include "modelcdr/mtd.hpp"
#include "mtd/keys.hpp"

namespace modelcdr::mtd {

void* secret_alloc(size_t bytes) {
  if (sodium_init() < 0) throw std::bad_alloc();
  void* p = sodium_malloc(bytes ? bytes : 1);
  if (!p) throw std::bad_alloc();
  return p;
}

void secret_free(void* p) noexcept {
  if (p) sodium_free(p);
}

// Moves one parsed KeyFile into guarded memory; the parsed temporary is wiped by its destructor.
struct KeyAccess {
  static Result<Key> make(Result<KeyFile> parsed) {
    if (!parsed.ok()) return parsed.error();
    void* mem = secret_alloc(sizeof(KeyFile));
    KeyFile* k = new (mem) KeyFile(std::move(*parsed));
    Key key;
    key.file_ = std::shared_ptr<const KeyFile>(k, [](const KeyFile* p) {
      p->~KeyFile();
      secret_free(const_cast<KeyFile*>(p));
    });
    return key;
  }
};

Result<Key> Key::load(const std::string& path) { return KeyAccess::make(read_key_file(path)); }

Result<Key> Key::parse(std::string_view text, const std::string& name) {
  return KeyAccess::make(parse_key_file(std::string(text), name));
}

std::string Key::kind() const { return file_ ? file_->kind : std::string(); }
bool Key::has_symmetric() const { return file_ && file_->has_symmetric; }
bool Key::can_sign() const { return file_ && file_->has_ed25519_secret; }
bool Key::can_open() const { return file_ && file_->has_x25519_secret; }

Secret<Key32> Key::symmetric() const {
  Secret<Key32> s;
  if (has_symmetric()) s = file_->symmetric;
  return s;
}

std::optional<Key32> Key::recipient() const {
  if (!file_ || !file_->has_x25519) return std::nullopt;
  return file_->x25519_public;
}

std::optional<Key32> Key::signer_public() const {
  if (!file_ || !file_->has_ed25519) return std::nullopt;
  return file_->ed25519_public;
}

std::string Key::fingerprint() const {
  if (!file_) return {};
  if (file_->has_ed25519) return mtd::fingerprint(file_->ed25519_public.data(), 32);
  if (file_->has_x25519) return mtd::fingerprint(file_->x25519_public.data(), 32);
  return {};
}

Result<Secret<SecretString>> read_passphrase_file(const std::string& path) {
  MCDR_ASSIGN(std::string s, read_small_file(path, 64 << 10));
  const size_t nl = std::min(s.find_first_of("\r\n"), s.size());
  Secret<SecretString> out;
  if (nl > 0) out = SecretString(s.data(), nl);
  sodium_memzero(s.data(), s.size());
  if (!out) return make_error(Rule::key_passphrase, path + ": empty passphrase");
  return out;
}

bool Key::loose_permissions() const { return file_ && file_->loose_permissions; }

}  // namespace modelcdr::mtd
