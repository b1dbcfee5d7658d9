#include "stego/tensor_names.hpp"

#include <unordered_set>

namespace modelcdr::stego {

using model::Value;
using model::ValueKind;

namespace {

std::string key_text(const model::Model& m, model::ValueId k) {
  if (k >= m.values.size()) return "?";
  const Value& v = m.values[k];
  switch (v.kind) {
    case ValueKind::string: return v.text;
    case ValueKind::integer: return std::to_string(v.i);
    default: return "?";
  }
}

void walk(const model::Model& m, model::ValueId id, const std::string& path, std::vector<NamedTensor>& out,
          std::unordered_set<model::ValueId>& seen, std::unordered_set<model::TensorId>& tensors, int depth) {
  if (id >= m.values.size() || depth > 64 || !seen.insert(id).second) return;
  const Value& v = m.values[id];
  auto join = [&](const std::string& k) { return path.empty() ? k : path + "." + k; };
  switch (v.kind) {
    case ValueKind::tensor:
      if (tensors.insert(v.tensor).second) out.push_back({path.empty() ? "<root>" : path, v.tensor});
      break;
    case ValueKind::dict:
    case ValueKind::ordered_dict:
      for (const auto& [k, val] : v.entries) walk(m, val, join(key_text(m, k)), out, seen, tensors, depth + 1);
      break;
    case ValueKind::list:
    case ValueKind::tuple:
    case ValueKind::set:
      for (size_t i = 0; i < v.items.size(); ++i) walk(m, v.items[i], join(std::to_string(i)), out, seen, tensors, depth + 1);
      break;
    default: break;
  }
}

}  // namespace

std::vector<NamedTensor> named_tensors(const model::Model& m) {
  std::vector<NamedTensor> out;
  std::unordered_set<model::ValueId> seen;
  std::unordered_set<model::TensorId> tensors;
  walk(m, m.root, "", out, seen, tensors, 0);
  return out;
}

bool contiguous_span(const model::Model& m, const model::Tensor& t, uint64_t& first, uint64_t& count) {
  if (t.kind != model::TensorKind::dense || t.storage >= m.storages.size() || t.storage_offset < 0) return false;
  if (t.shape.size() != t.stride.size()) return false;
  uint64_t n = 1;
  int64_t expect = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] < 0) return false;
    if (t.shape[i] != 1 && t.stride[i] != expect) return false;
    expect *= t.shape[i];
    n *= uint64_t(t.shape[i]);
  }
  const auto& st = m.storages[t.storage];
  uint64_t esz = model::dtype_info(st.dtype).element_size;
  if (esz == 0 || uint64_t(t.storage_offset) + n > st.bytes.size() / esz) return false;
  first = uint64_t(t.storage_offset);
  count = n;
  return true;
}

}  // namespace modelcdr::stego
