#include "mtd/cipher.hpp"

#include <openssl/evp.h>
#include <sodium.h>

#include <climits>
#include <cstdlib>

namespace modelcdr::mtd {

namespace {
EVP_CIPHER_CTX* ctx_of(void* p) { return static_cast<EVP_CIPHER_CTX*>(p); }
}  // namespace

RecordCipher::RecordCipher(const Key32& key) : ctx_(EVP_CIPHER_CTX_new()) {
  static const uint8_t zero_iv[16] = {0};
  if (!ctx_ || EVP_EncryptInit_ex(ctx_of(ctx_), EVP_aes_256_ctr(), nullptr, key.data(), zero_iv) != 1)
    std::abort();  // out of memory: nothing sensible to do
}

RecordCipher::~RecordCipher() { EVP_CIPHER_CTX_free(ctx_of(ctx_)); }  // wipes the key schedule

void RecordCipher::apply(const uint8_t* in, uint8_t* out, size_t n, uint64_t offset) {
  // The counter block is the big-endian index of the 16-byte block: re-entering at `offset`
  // sets only the IV (the key schedule stays).
  uint8_t iv[16] = {0};
  uint64_t block = offset / 16;
  for (int i = 15; i >= 8; --i, block >>= 8) iv[i] = static_cast<uint8_t>(block & 0xFF);
  EVP_EncryptInit_ex(ctx_of(ctx_), nullptr, nullptr, nullptr, iv);
  while (n > 0) {
    const int step = static_cast<int>(std::min<size_t>(n, size_t(1) << 30));
    int len = 0;
    EVP_EncryptUpdate(ctx_of(ctx_), out, &len, in, step);
    in += step;
    out += step;
    n -= static_cast<size_t>(step);
  }
}

Key32 derive_record_cipher_key(const Key32& secret, uint32_t key) {
  return derive_subkey(secret, {"modelcdr/mtd/v2/enc", std::to_string(key)});
}

}  // namespace modelcdr::mtd
