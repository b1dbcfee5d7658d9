#include "mtd/pipeline.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

namespace modelcdr::mtd {

namespace {

// Hashes unclaimed leaves of `s` until none is left; returns whether it hashed any.
bool hash_leaves(ChunkSlot& s, Hasher& h) {
  bool any = false;
  for (size_t i; (i = s.claimed.fetch_add(1, std::memory_order_relaxed)) < s.leaves.size();) {
    h.update(std::span<const uint8_t>(s.leaves[i].data, s.leaves[i].size));
    s.digests[i] = h.finish();
    any = true;
    if (s.done.fetch_add(1, std::memory_order_acq_rel) + 1 == s.leaves.size()) s.done.notify_all();
  }
  return any;
}

}  // namespace

RecordPipeline::RecordPipeline(size_t chunk_bytes, size_t ring, HashScheme scheme) : chunk_(chunk_bytes), scheme_(scheme) {
  for (size_t i = 0; i < ring; ++i) {
    ring_.push_back(std::make_unique<ChunkSlot>());
    ring_.back()->out.resize(chunk_bytes);
  }
}

Status RecordPipeline::run(uint64_t size, const Prepare& prepare, const Consume& consume) {
  const size_t chunks = static_cast<size_t>((size + chunk_ - 1) / chunk_);
  auto length = [&](size_t i) { return static_cast<size_t>(std::min<uint64_t>(chunk_, size - uint64_t(i) * chunk_)); };
  auto slot_of = [&](size_t i) -> ChunkSlot& { return *ring_[i % ring_.size()]; };
  auto reset = [](ChunkSlot& s) {
    s.leaves.clear();
    s.claimed.store(0, std::memory_order_relaxed);
    s.done.store(0, std::memory_order_relaxed);
  };
  auto prepare_one = [&](size_t i) {
    ChunkSlot& s = slot_of(i);
    reset(s);
    s.length = length(i);
    prepare(uint64_t(i) * chunk_, s.length, s);
    s.digests.resize(s.leaves.size());
  };
  Hasher mine(scheme_);
  auto finish_and_consume = [&](size_t i) {
    ChunkSlot& s = slot_of(i);
    hash_leaves(s, mine);
    for (size_t d; (d = s.done.load(std::memory_order_acquire)) < s.leaves.size();) s.done.wait(d);
    return consume(s);
  };
  if (chunks <= 1) {  // one chunk: no second core worth waking
    Status st = ok_status();
    if (chunks == 1) {
      prepare_one(0);
      st = finish_and_consume(0);
    }
    return st;
  }

  std::mutex mu;
  std::condition_variable cv;
  size_t prepared = 0, consumed = 0;  // chunks [consumed, prepared) sit in the ring
  bool stop = false;
  std::thread helper([&] {
    Hasher h(scheme_);
    std::unique_lock lock(mu);
    for (;;) {
      if (stop || consumed == chunks) return;
      if (prepared < chunks && prepared < consumed + ring_.size()) {  // a free slot: read ahead
        const size_t i = prepared;
        lock.unlock();
        prepare_one(i);
        lock.lock();
        prepared = i + 1;
        cv.notify_all();
        continue;
      }
      // The ring is full (or everything is read): help hash the chunks the caller writes next.
      bool helped = false;
      const size_t seen = consumed;
      for (size_t i = consumed; i < prepared && !helped; ++i) {
        ChunkSlot& s = slot_of(i);
        if (s.claimed.load(std::memory_order_relaxed) >= s.leaves.size()) continue;
        lock.unlock();
        helped = hash_leaves(s, h);
        lock.lock();
      }
      // Nothing left to hash: sleep until the caller frees a slot or stops (unless it already has
      // while the lock was released above).
      if (!helped) cv.wait(lock, [&] { return stop || consumed != seen; });
    }
  });
  Status st = ok_status();
  for (size_t i = 0; i < chunks && st.ok(); ++i) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return prepared > i; });
    }
    st = finish_and_consume(i);
    std::lock_guard lock(mu);
    consumed = i + 1;
    if (!st.ok()) stop = true;
    cv.notify_all();
  }
  helper.join();
  return st;
}

}  // namespace modelcdr::mtd
