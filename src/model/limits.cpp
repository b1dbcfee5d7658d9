#include "modelcdr/limits.hpp"

#include <vector>

namespace modelcdr::limits {

Error too_deep(const std::string& what) {
  return make_error(Rule::limits_depth, what + " nested deeper than " + std::to_string(kMaxDepth) + " levels");
}

Error too_much_expansion(const std::string& what) {
  return make_error(Rule::limits_expansion,
                    what + ": shared structure would be expanded once per path, beyond a budget linear in the file");
}

namespace {

// The values a value refers to, in a fixed order.
template <class F>
void for_each_child(const model::Value& v, F f) {
  for (auto c : v.items) f(c);
  for (auto [k, x] : v.entries) {
    f(k);
    f(x);
  }
  if (v.metadata != model::kNoValue) f(v.metadata);
  if (v.state != model::kNoValue) f(v.state);
}

}  // namespace

Status check_value_graph(const model::Model& m) {
  if (m.root == model::kNoValue) return ok_status();
  const size_t n = m.values.size();
  if (m.root >= n) return make_error(Rule::limits_bad_graph, "root value out of range");
  // Iterative post-order DFS: height[v] = 1 + max height of its children; each value once.
  constexpr uint32_t kOpen = 0xFFFFFFFFu;  // on the current path
  std::vector<uint32_t> height(n, 0);      // 0 = not visited yet
  struct Frame {
    model::ValueId id;
    std::vector<model::ValueId> children;
    size_t next = 0;
    uint32_t best = 0;
  };
  std::vector<Frame> path;
  auto open = [&](model::ValueId id) -> Status {
    if (path.size() >= kMaxDepth) return too_deep("values");
    Frame f{id, {}, 0, 0};
    for_each_child(m.values[id], [&](model::ValueId c) { f.children.push_back(c); });
    height[id] = kOpen;
    path.push_back(std::move(f));
    return ok_status();
  };
  MCDR_TRY(open(m.root));
  while (!path.empty()) {
    Frame& top = path.back();
    if (top.next == top.children.size()) {
      height[top.id] = top.best + 1;
      uint32_t h = height[top.id];
      path.pop_back();
      if (!path.empty() && h > path.back().best) path.back().best = h;
      continue;
    }
    model::ValueId c = top.children[top.next++];
    if (c >= n) return make_error(Rule::limits_bad_graph, "a value refers to a value out of range");
    if (height[c] == kOpen) return make_error(Rule::limits_cycle, "a value contains itself (reference cycle)");
    if (height[c] != 0) {
      if (height[c] > top.best) top.best = height[c];
      if (path.size() + height[c] > kMaxDepth) return too_deep("values");
      continue;
    }
    const model::Value& cv = m.values[c];
    if (cv.items.empty() && cv.entries.empty() && cv.metadata == model::kNoValue && cv.state == model::kNoValue) {
      // A leaf (a float of a 60 000-element list, a string): height 1 without a frame of its own,
      // exactly what open() and the pop above would record (path.size() + 1 <= kMaxDepth holds).
      if (path.size() >= kMaxDepth) return too_deep("values");
      height[c] = 1;
      if (top.best < 1) top.best = 1;
      continue;
    }
    MCDR_TRY(open(c));
  }
  return ok_status();
}

}  // namespace modelcdr::limits
