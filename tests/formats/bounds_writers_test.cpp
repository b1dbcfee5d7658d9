// Every writer bounds its own recursion and its expansion of shared values, independently of
// the pipeline's model check (limits::check_value_graph): models built here by hand reach the
// writers directly, as a future reader's output could.
#include <gtest/gtest.h>

#include <chrono>

#include "formats/pickle_writer.hpp"
#include "formats/safetensors_writer.hpp"
#include "formats/torch_zip_writer.hpp"
#include "modelcdr/limits.hpp"

namespace modelcdr::formats {
namespace {

using model::Model;
using model::Value;
using model::ValueKind;

Model chain(ValueKind kind, size_t depth) {
  Model m;
  Value leaf;
  leaf.kind = ValueKind::integer;
  model::ValueId cur = m.add(leaf);
  for (size_t i = 0; i < depth; ++i) {
    Value v;
    v.kind = kind;
    if (kind == ValueKind::dict || kind == ValueKind::ordered_dict) {
      Value k;
      k.kind = ValueKind::string;
      k.text = "k";
      v.entries.emplace_back(m.add(k), cur);
    } else {
      v.items.push_back(cur);
    }
    cur = m.add(v);
  }
  m.root = cur;
  return m;
}

const ValueKind kKinds[] = {ValueKind::list, ValueKind::tuple, ValueKind::set, ValueKind::dict, ValueKind::ordered_dict};

TEST(WriterBounds, TorchWriterRejectsDeepValues) {
  // 200 000 levels overflowed the stack of the recursive emitter (SIGSEGV) before.
  for (ValueKind k : kKinds) {
    std::vector<model::StorageId> order;
    std::vector<model::Storage> extra;
    auto r = emit_data_pkl(chain(k, 200000), TorchWriteOptions{}, order, extra);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().rule, Rule::limits_depth);
    EXPECT_TRUE(emit_data_pkl(chain(k, 100), TorchWriteOptions{}, order, extra).ok());
  }
}

TEST(WriterBounds, PickleWriterRejectsDeepValues) {
  for (ValueKind k : kKinds) {
    auto r = emit_pickle(chain(k, 200000), PickleWriteOptions{});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().rule, Rule::limits_depth);
  }
}

TEST(WriterBounds, FlattenerRejectsDeepValues) {
  for (ValueKind k : kKinds) {
    Findings f;
    auto r = flatten_model(chain(k, 200000), "safetensors", f);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().rule, Rule::limits_depth);
  }
}

TEST(WriterBounds, FlattenerExpansionOfSharedValuesIsBudgeted) {
  // l0 = "xxxxxxxxxx"; l(i) = [l(i-1)] * 10: 10^12 strings as JSON from 13 values.
  Model m;
  Value s;
  s.kind = ValueKind::string;
  s.text = "xxxxxxxxxx";
  model::ValueId cur = m.add(s);
  for (int i = 0; i < 12; ++i) {
    Value l;
    l.kind = ValueKind::list;
    l.items = std::vector<model::ValueId>(10, cur);
    cur = m.add(l);
  }
  Value key;
  key.kind = ValueKind::string;
  key.text = "a";
  Value root;
  root.kind = ValueKind::dict;
  root.entries.emplace_back(m.add(key), cur);
  m.root = m.add(root);
  auto t0 = std::chrono::steady_clock::now();
  Findings f;
  auto r = flatten_model(m, "safetensors", f);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().rule, Rule::limits_expansion);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 10.0);
}

TEST(WriterBounds, SharedValuesAreEmittedOnceByMemoisingWriters) {
  Model m;
  Value s;
  s.kind = ValueKind::string;
  s.text = "xxxxxxxxxx";
  model::ValueId cur = m.add(s);
  for (int i = 0; i < 60; ++i) {  // 2^60 paths
    Value l;
    l.kind = ValueKind::list;
    l.items = {cur, cur};
    cur = m.add(l);
  }
  m.root = cur;
  std::vector<model::StorageId> order;
  std::vector<model::Storage> extra;
  auto pt = emit_data_pkl(m, TorchWriteOptions{}, order, extra);
  ASSERT_TRUE(pt.ok());
  EXPECT_LT(pt->size(), 4096u);
  auto pk = emit_pickle(m, PickleWriteOptions{});
  ASSERT_TRUE(pk.ok());
  EXPECT_LT(pk->size(), 4096u);
}

}  // namespace
}  // namespace modelcdr::formats
