// Process start-up of the `modelcdr` command: keep OpenSSL's one-time initialisation small for
// every command but `serve`.
//
// The CLI links Debian's libcpp-httplib.so (for `serve` only), whose static initialiser calls
// OPENSSL_init_ssl() when the library is loaded, before main(): that loads every libcrypto and
// libssl error string and the legacy cipher and digest name tables (about 2 ms of a 4-6 ms
// start, measured with perf on `modelcdr --version`; a folder scan takes 25-40 ms in all).
// Only `serve` (TLS) needs them. MTD uses OpenSSL through EVP_aes_256_ctr() and EVP_sha256(),
// which need neither the name tables nor the strings; the configuration file is still loaded
// as before, so providers are what the system configures.
//
// OpenSSL's documented way to opt out: once OPENSSL_init_crypto() ran with the NO_* options,
// later requests for those steps are ignored. This has to happen before the libraries'
// initialisers, hence a function in the executable's .preinit_array (run by the dynamic loader
// after every library is relocated and before any initialiser; glibc passes argc/argv).
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include <cstdint>
#include <cstring>

namespace {

bool names_serve(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (argv[i] && std::strcmp(argv[i], "serve") == 0) return true;  // any position: err on the safe side
  return false;
}

void skip_tls_tables(int argc, char** argv, char** /*envp*/) {
  if (names_serve(argc, argv)) return;
  constexpr uint64_t kSkip = OPENSSL_INIT_NO_LOAD_CRYPTO_STRINGS | OPENSSL_INIT_NO_ADD_ALL_CIPHERS |
                            OPENSSL_INIT_NO_ADD_ALL_DIGESTS;
  OPENSSL_init_crypto(kSkip, nullptr);
  OPENSSL_init_ssl(kSkip | OPENSSL_INIT_NO_LOAD_SSL_STRINGS, nullptr);  // libssl's own strings
}

}  // namespace

__attribute__((section(".preinit_array"), used)) static void (*const kSkipTlsTables)(int, char**, char**) =
    skip_tls_tables;
