#include "mtd/digest.hpp"

#include <openssl/evp.h>

#include <cstdlib>

namespace modelcdr::mtd {

namespace {
EVP_MD_CTX* ctx_of(void* p) { return static_cast<EVP_MD_CTX*>(p); }
const EVP_MD* sha256_md() {
  static const EVP_MD* md = EVP_sha256();
  return md;
}
}  // namespace

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_of(ctx_), sha256_md(), nullptr) != 1) std::abort();  // out of memory
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_of(ctx_)); }

void Sha256::update(std::span<const uint8_t> bytes) {
  if (!bytes.empty()) EVP_DigestUpdate(ctx_of(ctx_), bytes.data(), bytes.size());
}

Digest Sha256::finish() {
  Digest d{};
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx_of(ctx_), d.data(), &len);
  EVP_DigestInit_ex(ctx_of(ctx_), sha256_md(), nullptr);
  return d;
}

Digest sha256(std::span<const uint8_t> bytes) {
  Sha256 h;
  h.update(bytes);
  return h.finish();
}

SerialWorker::SerialWorker() : thread_([this] { run(); }) {}

SerialWorker::~SerialWorker() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void SerialWorker::submit(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(job));
    ++unfinished_;
  }
  cv_.notify_all();
}

void SerialWorker::wait_unfinished_at_most(size_t n) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return unfinished_ <= n; });
}

void SerialWorker::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, nothing left
    auto job = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    job();
    lock.lock();
    --unfinished_;
    cv_.notify_all();
  }
}

}  // namespace modelcdr::mtd
