// NameIndex: unique names to 4-byte indices into a list the caller owns (zip entries read or
// written). An open-addressing table of indices: a checkpoint has one zip entry per storage,
// 160k in a big one, and a std::string-keyed set or map cost a second copy of every name plus an
// allocation per entry. It holds indices, not views, so a copied owner's table stays valid.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

namespace modelcdr::container {

class NameIndex {
 public:
  // Adds index i, whose name is name_at(i); false (nothing added) when an index with the same
  // name is already there. name_at(k) -> std::string_view for every k added so far.
  template <class NameAt>
  bool insert(uint32_t i, const NameAt& name_at) {
    if ((used_ + 1) * 2 > slots_.size()) grow(name_at);
    const std::string_view name = name_at(i);
    const size_t mask = slots_.size() - 1;
    for (size_t s = std::hash<std::string_view>{}(name) & mask;; s = (s + 1) & mask) {
      if (slots_[s] == kEmpty) {
        slots_[s] = i;
        ++used_;
        return true;
      }
      if (name_at(slots_[s]) == name) return false;
    }
  }
  // The index added with `name`, or -1.
  template <class NameAt>
  int64_t find(std::string_view name, const NameAt& name_at) const {
    if (slots_.empty()) return -1;
    const size_t mask = slots_.size() - 1;
    for (size_t s = std::hash<std::string_view>{}(name) & mask;; s = (s + 1) & mask) {
      if (slots_[s] == kEmpty) return -1;
      if (name_at(slots_[s]) == name) return slots_[s];
    }
  }
  void clear() {
    slots_.clear();
    used_ = 0;
  }
  // Room for n names without growing: each growth hashes every name again. Only on an empty
  // index (the caller knows the count: a zip directory's, a writer's record count).
  void reserve(size_t n) {
    if (used_ != 0) return;
    size_t size = 16;
    while (size < n * 2) size *= 2;
    if (size > slots_.size()) slots_.assign(size, kEmpty);
  }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  template <class NameAt>
  void grow(const NameAt& name_at) {  // rehash every index into a table twice the size
    std::vector<uint32_t> old = std::move(slots_);
    slots_.assign(std::max<size_t>(16, old.size() * 2), kEmpty);
    used_ = 0;
    for (uint32_t k : old)
      if (k != kEmpty) insert(k, name_at);
  }
  std::vector<uint32_t> slots_;  // power-of-two size, at most half full
  size_t used_ = 0;
};

}  // namespace modelcdr::container
