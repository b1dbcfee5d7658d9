// Tensor digests for MTD maps: SHA-256 from OpenSSL 3 (EVP), which uses the CPU's SHA
// extensions where present. Measured on this project's 2-core EPYC build machine over 256 MiB:
// OpenSSL SHA-256 1.50 GB/s, libsodium BLAKE2b 0.88 GB/s, OpenSSL SHA-512 0.53 GB/s; every
// byte of a model is hashed twice per protect or restore, so the hash sets the pace.
//
#pragma once
#include <array>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <thread>

namespace modelcdr::mtd {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(std::span<const uint8_t> bytes);
  Digest finish();  // and starts over

 private:
  void* ctx_;  // EVP_MD_CTX
};

Digest sha256(std::span<const uint8_t> bytes);

// One helper thread that runs jobs one after another, in the order submitted: the second
// core of a protect or restore. Jobs must not throw.
class SerialWorker {
 public:
  SerialWorker();
  ~SerialWorker();  // runs what is queued, then stops
  SerialWorker(const SerialWorker&) = delete;
  SerialWorker& operator=(const SerialWorker&) = delete;

  void submit(std::function<void()> job);
  // Blocks until at most `n` submitted jobs are unfinished (0: all done).
  void wait_unfinished_at_most(size_t n);

 private:
  void run();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  size_t unfinished_ = 0;  // queued or running
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace modelcdr::mtd
