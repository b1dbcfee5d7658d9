// Shared by the format readers' fuzz targets: what must hold for any model a reader returns.
// A violation traps (the fuzzer reports it as a crash with the input that caused it).
#pragma once
#include <cstdint>
#include <span>

#include "cdr/sparse_check.hpp"
#include "formats/parsed_model.hpp"
#include "modelcdr/limits.hpp"

namespace modelcdr::fuzz {

inline void expect(bool ok) {
  if (!ok) __builtin_trap();
}

// True when `inner` lies inside `outer` (empty spans anywhere).
inline bool within(std::span<const uint8_t> inner, std::span<const uint8_t> outer) {
  if (inner.empty()) return true;
  auto lo = reinterpret_cast<uintptr_t>(outer.data()), p = reinterpret_cast<uintptr_t>(inner.data());
  return p >= lo && p + inner.size() <= lo + outer.size();
}

// Every id in the model names an existing element, every storage's bytes are its declared size
// and lie in the input or in memory the model owns, and the value graph passes the same depth
// and cycle check the pipeline runs before any writer. Touches the first and last byte of each
// storage so that a dangling span is caught by ASan.
inline void check_model(const formats::ParsedModel& parsed, std::span<const uint8_t> input) {
  const model::Model& m = parsed.model;
  expect(m.root == model::kNoValue || m.root < m.values.size());
  for (const auto& st : m.storages) {
    expect(st.bytes.size() == st.nbytes);
    bool owned = !st.owned.empty() && st.bytes.data() == st.owned.data();
    bool backed = parsed.backing && within(st.bytes, *parsed.backing);
    expect(st.bytes.empty() || owned || backed || within(st.bytes, input));
    if (!st.bytes.empty()) {
      volatile uint8_t first = st.bytes.front(), last = st.bytes.back();
      (void)first;
      (void)last;
    }
  }
  for (const auto& t : m.tensors) {
    if (model::is_sparse(t.kind)) {
      expect(t.sparse_indices < m.tensors.size() && t.sparse_values < m.tensors.size());
      expect(!model::is_sparse_compressed(t.kind) || t.sparse_plain < m.tensors.size());
    } else {
      expect(t.storage < m.storages.size());
    }
    expect(t.shape.size() == t.stride.size() || model::is_sparse(t.kind));
  }
  auto value_id = [&](model::ValueId id) { expect(id < m.values.size()); };
  for (const auto& v : m.values) {
    for (auto id : v.items) value_id(id);
    for (auto [k, x] : v.entries) {
      value_id(k);
      value_id(x);
    }
    if (v.metadata != model::kNoValue) value_id(v.metadata);
    if (v.kind == model::ValueKind::tensor) expect(v.tensor < m.tensors.size());
  }
  (void)limits::check_value_graph(m);  // an error is an answer; a crash or a hang is not
  Findings sparse;  // the sparse invariant check reads index bytes through input-made strides
  (void)cdr::check_sparse_tensors(m, sparse);
}

// The usual body of a reader's target: an error is fine, a model must be well formed.
inline void check_result(const Result<formats::ParsedModel>& parsed, std::span<const uint8_t> input) {
  if (parsed.ok()) check_model(*parsed, input);
}

}  // namespace modelcdr::fuzz
