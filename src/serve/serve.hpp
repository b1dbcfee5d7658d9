// `modelcdr serve`: a zero-trust gateway that speaks the part of the Hugging Face Hub HTTP API
// that huggingface_hub and transformers use (docs/SERVE.md). Every model file it serves is a
// modelcdr rebuild; other files only when proven inert; everything else is refused.
#pragma once
#include <cstdint>
#include <string>

namespace modelcdr::serve {

struct ServeOptions {
  std::string store;     // local store folder (STORE/<org>/<name>/<files>), or empty
  std::string upstream;  // http(s)://host[:port] of an HF-compatible endpoint, or empty
  std::string cache;     // cache folder (default: STORE/.modelcdr-cache)
  std::string host = "127.0.0.1";
  int port = 8080;       // 0: any free port (printed on stdout)
  unsigned threads = 32;
  unsigned read_timeout_s = 10;  // per read of a request; a stalled client is dropped
  unsigned header_timeout_s = 20;  // a request's headers must be complete within this of the
                                  // connection's opening or the previous answer (slowloris)
  unsigned idle_timeout_s = 5;    // an idle keep-alive connection is closed after this
  std::string convert_bin;       // "safetensors": serve .bin weights (and indexes) as safetensors
};

// Runs until SIGINT/SIGTERM. Returns the process exit code.
int run(const ServeOptions& options);

}  // namespace modelcdr::serve
