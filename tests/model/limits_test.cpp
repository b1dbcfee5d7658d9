// limits::check_value_graph: the one check every reader's model passes before a writer walks
// it. Iterative (no stack overflow on a 200 000-deep chain), linear on shared structure.
#include "modelcdr/limits.hpp"

#include <gtest/gtest.h>

#include <chrono>

namespace modelcdr::limits {
namespace {

using model::Model;
using model::Value;
using model::ValueKind;

model::ValueId leaf(Model& m) {
  Value v;
  v.kind = ValueKind::none;
  return m.add(v);
}

Model chain(ValueKind kind, size_t depth) {
  Model m;
  model::ValueId cur = leaf(m);
  for (size_t i = 0; i < depth; ++i) {
    Value v;
    v.kind = kind;
    if (kind == ValueKind::dict || kind == ValueKind::ordered_dict) v.entries.emplace_back(leaf(m), cur);
    else v.items.push_back(cur);
    cur = m.add(v);
  }
  m.root = cur;
  return m;
}

TEST(ValueGraph, DeepChainsOfEveryContainerAreRejected) {
  for (ValueKind k : {ValueKind::list, ValueKind::tuple, ValueKind::set, ValueKind::dict, ValueKind::ordered_dict}) {
    auto s = check_value_graph(chain(k, 200000));
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.error().rule, Rule::limits_depth);
    EXPECT_TRUE(check_value_graph(chain(k, kMaxDepth - 1)).ok());
    EXPECT_FALSE(check_value_graph(chain(k, kMaxDepth + 1)).ok());
  }
}

TEST(ValueGraph, DictKeysAndStateCountToo) {
  Model m = chain(ValueKind::tuple, kMaxDepth + 5);
  Value d;
  d.kind = ValueKind::dict;
  d.entries.emplace_back(m.root, leaf(m));  // the deep tuple as a key
  m.root = m.add(d);
  EXPECT_EQ(check_value_graph(m).error().rule, Rule::limits_depth);
  Model o = chain(ValueKind::list, kMaxDepth + 5);
  Value obj;
  obj.kind = ValueKind::object;
  obj.state = o.root;
  o.root = o.add(obj);
  EXPECT_EQ(check_value_graph(o).error().rule, Rule::limits_depth);
}

TEST(ValueGraph, SharedStructureIsLinear) {
  // 2^400 paths, 800 values: a walk per path would never end.
  Model m;
  model::ValueId cur = leaf(m);
  for (int i = 0; i < 400; ++i) {
    Value v;
    v.kind = ValueKind::list;
    v.items = {cur, cur};
    cur = m.add(v);
  }
  m.root = cur;
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(check_value_graph(m).ok());
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);
}

TEST(ValueGraph, CycleIsRejected) {
  Model m;
  Value v;
  v.kind = ValueKind::list;
  m.root = m.add(v);
  m.values[m.root].items.push_back(m.root);
  EXPECT_EQ(check_value_graph(m).error().rule, Rule::limits_cycle);
}

}  // namespace
}  // namespace modelcdr::limits
