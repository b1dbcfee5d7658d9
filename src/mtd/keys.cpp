#include "mtd/keys.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace modelcdr::mtd {

Key32 derive_subkey(const Key32& secret, const std::vector<std::string>& parts) {
  std::string msg;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) msg.push_back('\0');
    msg += parts[i];
  }
  Key32 out;
  crypto_generichash(out.data(), out.size(), reinterpret_cast<const uint8_t*>(msg.data()), msg.size(), secret.data(),
                     secret.size());
  return out;
}

KeyFile::~KeyFile() {
  sodium_memzero(x25519_secret.data(), x25519_secret.size());
  sodium_memzero(ed25519_secret.data(), ed25519_secret.size());
  sodium_memzero(symmetric.data(), symmetric.size());
}

std::string to_base64(const uint8_t* p, size_t n) {
  std::string out(sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), p, n, sodium_base64_VARIANT_ORIGINAL);
  out.resize(std::strlen(out.c_str()));
  return out;
}

Result<std::vector<uint8_t>> from_base64(const std::string& s) {
  std::vector<uint8_t> out(s.size() * 3 / 4 + 3);
  size_t len = 0;
  if (sodium_base642bin(out.data(), out.size(), s.data(), s.size(), nullptr, &len, nullptr,
                        sodium_base64_VARIANT_ORIGINAL) != 0)
    return make_error(Rule::key_base64, "invalid base64");
  out.resize(len);
  return out;
}

std::string to_hex(const uint8_t* p, size_t n) {
  std::string out(n * 2 + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), p, n);
  out.resize(n * 2);
  return out;
}

std::string fingerprint(const uint8_t* p, size_t n) {
  uint8_t h[32];
  crypto_generichash(h, sizeof h, p, n, nullptr, 0);
  return to_hex(h, 16);  // 128 bits
}

Result<std::string> read_small_file(const std::string& path, size_t limit) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error(Rule::io_open, "cannot open " + path + ": " + std::strerror(errno));
  std::string s;
  char buf[4096];
  while (f.read(buf, sizeof buf) || f.gcount() > 0) {
    s.append(buf, static_cast<size_t>(f.gcount()));
    if (s.size() > limit) return make_error(Rule::io_too_large, path + " is larger than expected");
  }
  return s;
}

Result<std::string> read_small_file_prefix(const std::string& path, size_t n) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return make_error(Rule::io_open, "cannot open " + path + ": " + std::strerror(errno));
  std::string s(n, '\0');
  f.read(s.data(), static_cast<std::streamsize>(n));
  s.resize(static_cast<size_t>(f.gcount()));
  return s;
}

Status write_file_atomic(const std::string& path, const std::string& text, unsigned mode, bool force) {
  if (!force && ::access(path.c_str(), F_OK) == 0)
    return make_error(Rule::io_exists, path + " exists (use --force to overwrite)");
  std::string tmp = path + ".tmp-XXXXXX";
  std::vector<char> t(tmp.begin(), tmp.end());
  t.push_back('\0');
  int fd = ::mkstemp(t.data());  // created 0600
  if (fd < 0) return make_error(Rule::io_create, "cannot create " + path + ": " + std::strerror(errno));
  auto fail = [&](const char* what) {
    int e = errno;
    ::close(fd);
    ::unlink(t.data());
    return make_error(Rule::io_write, std::string(what) + " " + path + ": " + std::strerror(e));
  };
  if (::fchmod(fd, mode) != 0) return fail("cannot chmod");
  size_t off = 0;
  while (off < text.size()) {
    ssize_t w = ::write(fd, text.data() + off, text.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return fail("cannot write");
    }
    off += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0) return fail("cannot sync");
  ::close(fd);
  if (::rename(t.data(), path.c_str()) != 0) {
    int e = errno;
    ::unlink(t.data());
    return make_error(Rule::io_rename, "cannot rename into " + path + ": " + std::strerror(e));
  }
  return ok_status();
}

std::string render_key_file(const KeyFile& k, bool secrets) {
  std::ostringstream o;
  o << "modelcdr-key-v1\n";
  if (k.has_symmetric) {
    o << "kind: symmetric\n";
    o << "key: " << to_base64(k.symmetric.data(), 32) << "\n";
    return o.str();
  }
  o << "kind: " << (secrets ? "secret" : "public") << "\n";
  o << "x25519-public: " << to_base64(k.x25519_public.data(), 32) << "\n";
  if (secrets) o << "x25519-secret: " << to_base64(k.x25519_secret.data(), 32) << "\n";
  o << "ed25519-public: " << to_base64(k.ed25519_public.data(), 32) << "\n";
  if (secrets) o << "ed25519-secret: " << to_base64(k.ed25519_secret.data(), 64) << "\n";
  return o.str();
}

namespace {
template <size_t N>
Status decode_into(const std::string& path, const std::string& field, const std::string& b64, std::array<uint8_t, N>& out) {
  auto bytes = from_base64(b64);
  if (!bytes.ok() || bytes->size() != N)
    return make_error(Rule::key_invalid, path + ": field '" + field + "' must be " + std::to_string(N) + " bytes of base64");
  std::memcpy(out.data(), bytes->data(), N);
  sodium_memzero(bytes->data(), bytes->size());
  return ok_status();
}
}  // namespace

Result<KeyFile> read_key_file(const std::string& path) {
  MCDR_ASSIGN(std::string text, read_small_file(path, 64 << 10));
  MCDR_ASSIGN(KeyFile k, parse_key_file(text, path));
  struct stat st{};
  k.loose_permissions = (k.has_x25519_secret || k.has_ed25519_secret || k.has_symmetric) &&
                        ::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0;
  return k;
}

Result<KeyFile> parse_key_file(const std::string& text, const std::string& path) {
  KeyFile k;
  std::vector<std::string> seen;
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || line != "modelcdr-key-v1")
    return make_error(Rule::key_format, path + ": not a modelcdr key file (first line must be 'modelcdr-key-v1')");
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    auto colon = line.find(':');
    if (colon == std::string::npos) return make_error(Rule::key_format, path + ": line without ':'");
    std::string field = line.substr(0, colon);
    std::string val = line.substr(colon + 1);
    // A field given twice would silently replace the first (fail closed: reject).
    if (std::find(seen.begin(), seen.end(), field) != seen.end())
      return make_error(Rule::key_format, path + ": field '" + field + "' appears twice");
    seen.push_back(field);
    while (!val.empty() && val.front() == ' ') val.erase(val.begin());
    if (field == "kind") {
      k.kind = val;
    } else if (field == "x25519-public") {
      MCDR_TRY(decode_into(path, field, val, k.x25519_public));
      k.has_x25519 = true;
    } else if (field == "x25519-secret") {
      MCDR_TRY(decode_into(path, field, val, k.x25519_secret));
      k.has_x25519_secret = true;
    } else if (field == "ed25519-public") {
      MCDR_TRY(decode_into(path, field, val, k.ed25519_public));
      k.has_ed25519 = true;
    } else if (field == "ed25519-secret") {
      MCDR_TRY(decode_into(path, field, val, k.ed25519_secret));
      k.has_ed25519_secret = true;
    } else if (field == "key") {
      MCDR_TRY(decode_into(path, field, val, k.symmetric));
      k.has_symmetric = true;
    } else {
      return make_error(Rule::key_format, path + ": unknown field '" + field + "'");
    }
  }
  if (k.kind != "secret" && k.kind != "public" && k.kind != "symmetric")
    return make_error(Rule::key_format, path + ": 'kind' must be secret, public or symmetric");
  if (k.kind == "symmetric" && !k.has_symmetric) return make_error(Rule::key_format, path + ": symmetric key file without 'key'");
  // Only the fields of the file's kind: a public file must not carry a secret (it is made to be
  // shared), a symmetric file holds nothing but its key.
  const bool pairs = k.has_x25519 || k.has_x25519_secret || k.has_ed25519 || k.has_ed25519_secret;
  if ((k.kind == "symmetric" && pairs) || (k.kind != "symmetric" && k.has_symmetric) ||
      (k.kind == "public" && (k.has_x25519_secret || k.has_ed25519_secret)))
    return make_error(Rule::key_format, path + ": fields that a " + k.kind + " key file does not hold");
  // A secret file's public halves must match its secret halves (catches edited files).
  if (k.has_x25519_secret) {
    Key32 pk;
    crypto_scalarmult_base(pk.data(), k.x25519_secret.data());
    if (k.has_x25519 && pk != k.x25519_public) return make_error(Rule::key_mismatch, path + ": x25519 public key does not match the secret key");
    k.x25519_public = pk;
    k.has_x25519 = true;
  }
  if (k.has_ed25519_secret) {
    Key32 pk;
    crypto_sign_ed25519_sk_to_pk(pk.data(), k.ed25519_secret.data());
    if (k.has_ed25519 && pk != k.ed25519_public) return make_error(Rule::key_mismatch, path + ": ed25519 public key does not match the secret key");
    k.ed25519_public = pk;
    k.has_ed25519 = true;
  }
  return k;
}

Status keygen_pair(const std::string& name, bool force) {
  if (sodium_init() < 0) return make_error(Rule::crypto_init, "libsodium failed to initialise");
  KeyFile k;
  k.kind = "secret";
  crypto_box_keypair(k.x25519_public.data(), k.x25519_secret.data());
  crypto_sign_keypair(k.ed25519_public.data(), k.ed25519_secret.data());
  k.has_x25519 = k.has_x25519_secret = k.has_ed25519 = k.has_ed25519_secret = true;
  std::string sec = render_key_file(k, true);
  Status s = write_file_atomic(name + ".key", sec, 0600, force);
  sodium_memzero(sec.data(), sec.size());
  MCDR_TRY(s);
  return write_file_atomic(name + ".pub", render_key_file(k, false), 0644, force);
}

Status keygen_symmetric(const std::string& path, bool force) {
  if (sodium_init() < 0) return make_error(Rule::crypto_init, "libsodium failed to initialise");
  KeyFile k;
  k.kind = "symmetric";
  k.has_symmetric = true;
  randombytes_buf(k.symmetric.data(), 32);
  std::string text = render_key_file(k, true);
  Status s = write_file_atomic(path, text, 0600, force);
  sodium_memzero(text.data(), text.size());
  return s;
}

}  // namespace modelcdr::mtd
