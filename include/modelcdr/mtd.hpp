// Moving Target Defense options for Engine::protect / restore / verify (docs/MTD.md, docs/API.md).
//
//   auto key = modelcdr::mtd::Key::load("ops.key");          // a symmetric key file
//   modelcdr::mtd::ProtectOptions po;
//   po.seal.symmetric_keys.push_back(key->symmetric());
//   modelcdr::Sink out = modelcdr::Sink::memory(), map = modelcdr::Sink::memory();
//   auto report = engine.protect(modelcdr::Source::memory(bytes), out, map, po);
//
// Secrets (symmetric keys, passphrases, key files) live in libsodium guarded memory
// (sodium_malloc: locked pages between guard pages, wiped when freed): the containers below
// allocate there, and a Key is a shared handle to a key file held there.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "modelcdr/api.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::engine {
struct RunContext;
}

namespace modelcdr::mtd {

using Key32 = std::array<uint8_t, 32>;

// A map is at most this large (checked before any key derivation, from a file or memory).
inline constexpr size_t kMaxMapBytes = size_t(32) << 20;  // ~130k records of JSON

// The raw allocation behind the secret containers (src/mtd/keys.cpp): sodium_malloc after
// sodium_init, std::bad_alloc when it fails; secret_free wipes and frees.
void* secret_alloc(size_t bytes);
void secret_free(void* p) noexcept;

// An allocator over guarded memory, for containers of secrets.
template <class T>
struct SecretAllocator {
  using value_type = T;
  SecretAllocator() = default;
  template <class U>
  SecretAllocator(const SecretAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    if (n > size_t(-1) / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(secret_alloc(n * sizeof(T)));
  }
  void deallocate(T* p, size_t) noexcept { secret_free(p); }
  template <class U>
  bool operator==(const SecretAllocator<U>&) const noexcept { return true; }
};
template <class T>
using SecretVector = std::vector<T, SecretAllocator<T>>;
using SecretString = std::basic_string<char, std::char_traits<char>, SecretAllocator<char>>;

// At most one secret value in guarded memory, used like std::optional (assign, test, *, ->).
template <class T>
class Secret {
 public:
  Secret() = default;
  Secret(const Secret& o) {
    if (o.p_) emplace(*o.p_);
  }
  Secret(Secret&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  template <class U>
    requires std::is_constructible_v<T, const U&>
  Secret(const U& v) {  // NOLINT: assigned like an optional
    emplace(v);
  }
  Secret& operator=(const Secret& o) {
    if (this != &o) {
      reset();
      if (o.p_) emplace(*o.p_);
    }
    return *this;
  }
  Secret& operator=(Secret&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  template <class U>
    requires std::is_constructible_v<T, const U&>
  Secret& operator=(const U& v) {
    reset();
    emplace(v);
    return *this;
  }
  ~Secret() { reset(); }
  void reset() noexcept {
    if (!p_) return;
    p_->~T();
    secret_free(p_);
    p_ = nullptr;
  }
  bool has_value() const { return p_ != nullptr; }
  explicit operator bool() const { return p_ != nullptr; }
  T& operator*() { return *p_; }
  const T& operator*() const { return *p_; }
  T* operator->() { return p_; }
  const T* operator->() const { return p_; }

 private:
  template <class U>
  void emplace(const U& v) {
    void* mem = secret_alloc(sizeof(T));
    try {
      p_ = new (mem) T(v);
    } catch (...) {
      secret_free(mem);
      throw;
    }
  }
  T* p_ = nullptr;
};

struct KeyFile;    // the parsed key file (src/mtd/keys.hpp); reached through a Key
struct KeyAccess;  // src/mtd/key_handle.cpp
// (src/mtd/keys.hpp); reached through a Key

// A key file (docs/MTD.md §5: symmetric, secret or public), loaded into guarded memory. Copies
// share the one copy of the secrets; it is wiped when the last handle goes.
class Key {
 public:
  // Errors: key.format, io.* (as `modelcdr` reports them for --key-file and friends).
  static Result<Key> load(const std::string& path);
  // The same parser on the file's text; `name` only names it in errors.
  static Result<Key> parse(std::string_view text, const std::string& name = "<memory>");
  std::string kind() const;  // secret | public | symmetric
  bool has_symmetric() const;
  bool can_sign() const;     // an ed25519 secret (SealOptions::signer)
  bool can_open() const;     // an x25519 secret (OpenOptions::identity)
  // A copy in guarded memory: SealOptions::symmetric_keys, OpenOptions::symmetric_key.
  // Empty when the file holds no symmetric key.
  Secret<Key32> symmetric() const;
  std::optional<Key32> recipient() const;       // x25519 public key (SealOptions::recipients)
  std::optional<Key32> signer_public() const;   // ed25519 public key (OpenOptions::trusted_signers)
  std::string fingerprint() const;              // of the ed25519 public key, else the x25519 one
  bool loose_permissions() const;               // holds a secret and is readable by group or others
  const KeyFile* file() const { return file_.get(); }  // for SealOptions::signer, OpenOptions::identity

 private:
  friend struct KeyAccess;
  std::shared_ptr<const KeyFile> file_;
};

// A passphrase file (--passphrase-file): its first line, at most 64 KiB, not empty
// (key.passphrase), copied into guarded memory (the read buffer is wiped).
Result<Secret<SecretString>> read_passphrase_file(const std::string& path);

// How protect seals the map (docs/MTD.md §4): every key slot opens it.
struct SealOptions {
  SecretVector<Key32> symmetric_keys;           // --key-file
  SecretVector<SecretString> passphrases;       // --passphrase-file (Argon2id)
  std::vector<Key32> recipients;                // --recipient (X25519 public keys, crypto_box_seal)
  const KeyFile* signer = nullptr;              // --sign (Key::file() of a key that can_sign; outlives the call)
  std::string info;                             // clear info (JSON): set by protect
  unsigned long long pwhash_ops = 3;
  size_t pwhash_mem = 64u << 20;                // 64 MiB: memory-hard, and within the RSS budget
};

// How restore / verify open the map.
struct OpenOptions {
  Secret<Key32> symmetric_key;
  Secret<SecretString> passphrase;
  const KeyFile* identity = nullptr;            // Key::file() of a key that can_open (x25519 secret)
  // Pinned signers (--verify-signer, --trust): the map must be signed by one of these keys
  // (public keys) or by a key whose fingerprint is listed; checked before anything else.
  std::vector<Key32> trusted_signers;
  std::vector<std::string> trusted_fingerprints;  // Key::fingerprint() strings
  // Explicit opt-in (--allow-unsigned): no pinned signer; unsigned maps are opened.
  bool allow_unsigned = false;
};

struct ProtectOptions {
  SealOptions seal;
  CompatTarget compat = CompatTarget::torch2;
  bool allow_trailing_data = false;
  bool encrypt = false;  // also encrypt every record (AES-256-CTR), not only permute
  // The Engine's class registry and limits (set by Engine::protect); nullptr: the process default.
  const engine::RunContext* context = nullptr;
  // Rollback and expiry (docs/MTD.md §4a): written to the clear info, which the MAC and the
  // signature cover. `restore --min-version` refuses older maps; restore refuses expired ones.
  std::optional<uint64_t> version;      // --version N: the publisher's release number
  std::optional<int64_t> expires_unix;  // --expires DATE
};

struct RestoreOptions {
  OpenOptions open;
  std::string expect = "auto";  // verify only: auto | protected | restored
  const engine::RunContext* context = nullptr;  // as ProtectOptions::context
  std::optional<uint64_t> min_version;  // refuse maps of an older (or no) publisher version: mtd.rollback
  bool check_expiry = false;            // restore: refuse a map past its expiry: mtd.expired
};

// --expires DATE: YYYY-MM-DD (00:00:00 UTC that day), YYYY-MM-DDTHH:MM:SSZ, or @UNIX-SECONDS.
Result<int64_t> parse_expiry(const std::string& text);

}  // namespace modelcdr::mtd
