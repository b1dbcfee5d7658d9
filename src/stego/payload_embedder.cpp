#include "stego/payload_embedder.hpp"

#include <algorithm>
#include <cstring>
#include <set>

#include "stego/lsb_randomizer.hpp"
#include "stego/tensor_names.hpp"

namespace modelcdr::stego {

namespace {

inline uint64_t load_le(const uint8_t* p, uint32_t size) {
  uint64_t v = 0;
  std::memcpy(&v, p, size);
  return v;
}
inline void store_le(uint8_t* p, uint64_t v, uint32_t size) { std::memcpy(p, &v, size); }

inline uint64_t stream_bits(std::span<const uint8_t> payload, uint64_t pos, int k) {
  uint64_t v = 0;
  for (int j = 0; j < k; ++j) {
    uint64_t s = pos + j;
    uint64_t byte = s >> 3;
    if (byte < payload.size()) v |= uint64_t((payload[byte] >> (s & 7)) & 1u) << j;
  }
  return v;
}

}  // namespace

void embed_bits(uint8_t* elems, size_t n_elems, uint32_t elem_size, int k, std::span<const uint8_t> payload,
                uint64_t bit_offset) {
  const uint64_t mask = k >= 64 ? ~0ull : ((1ull << k) - 1);
  for (size_t i = 0; i < n_elems; ++i) {
    uint8_t* p = elems + i * elem_size;
    uint64_t x = load_le(p, elem_size);
    x = (x & ~mask) | stream_bits(payload, bit_offset + uint64_t(i) * k, k);
    store_le(p, x, elem_size);
  }
}

void extract_bits(const uint8_t* elems, size_t n_elems, uint32_t elem_size, int k, std::span<uint8_t> out,
                  uint64_t bit_offset) {
  const uint64_t limit = uint64_t(out.size()) * 8;
  for (size_t i = 0; i < n_elems; ++i) {
    uint64_t x = load_le(elems + i * elem_size, elem_size);
    for (int j = 0; j < k; ++j) {
      uint64_t s = bit_offset + uint64_t(i) * k + j;
      if (s >= limit) return;
      uint8_t bit = uint8_t((x >> j) & 1u);
      out[s >> 3] = uint8_t((out[s >> 3] & ~(1u << (s & 7))) | (bit << (s & 7)));
    }
  }
}

uint64_t EmbedPlan::capacity_bits() const {
  uint64_t c = 0;
  for (const auto& s : segments) c += s.count * uint64_t(k);
  return c;
}

Result<EmbedPlan> plan_embedding(const model::Model& m, int k, const std::vector<std::string>& names) {
  if (k < 1 || k > 52) return make_error(Rule::lab_bits, "k must be 1..52");
  EmbedPlan plan;
  plan.k = k;
  auto all = named_tensors(m);
  std::set<model::StorageId> used;
  auto add = [&](const NamedTensor& nt, bool explicit_name) -> Status {
    const auto& t = m.tensors[nt.tensor];
    uint64_t first = 0, count = 0;
    bool ok = nt.tensor < m.tensors.size() && contiguous_span(m, t, first, count);
    int mant = ok ? mantissa_bits(m.storages[t.storage].dtype) : 0;
    if (!ok || mant == 0) {
      if (explicit_name) return make_error(Rule::lab_tensor, "'" + nt.name + "' is not a contiguous float tensor");
      return ok_status();
    }
    if (k > mant) {
      if (explicit_name)
        return make_error(Rule::lab_bits, "'" + nt.name + "' has only " + std::to_string(mant) + " mantissa bits");
      return ok_status();
    }
    if (!used.insert(t.storage).second) return ok_status();
    uint32_t esz = float_component_size(m.storages[t.storage].dtype);
    uint32_t per = model::dtype_info(m.storages[t.storage].dtype).element_size / esz;  // complex: 2 components
    plan.segments.push_back({nt.name, t.storage, first * per, count * per, esz, mant});
    return ok_status();
  };
  if (names.empty()) {
    for (const auto& nt : all) MCDR_TRY(add(nt, false));
  } else {
    for (const auto& want : names) {
      auto it = std::find_if(all.begin(), all.end(), [&](const NamedTensor& nt) { return nt.name == want; });
      if (it == all.end()) return make_error(Rule::lab_tensor, "no tensor named '" + want + "'");
      MCDR_TRY(add(*it, true));
    }
  }
  if (plan.segments.empty()) return make_error(Rule::lab_tensor, "no float tensor to embed into");
  return plan;
}

Result<uint64_t> embed_payload(model::Model& m, const EmbedPlan& plan, std::span<const uint8_t> payload) {
  uint64_t need = uint64_t(payload.size()) * 8;
  if (need > plan.capacity_bits())
    return make_error(Rule::lab_capacity, "payload of " + std::to_string(payload.size()) + " bytes exceeds the capacity of " +
                                          std::to_string(plan.capacity_bits() / 8) + " bytes at k=" + std::to_string(plan.k));
  uint64_t pos = 0, written = 0;
  for (const auto& s : plan.segments) {
    if (pos >= need) break;
    auto& st = m.storages[s.storage];
    if (st.owned.empty() || st.owned.data() != st.bytes.data())
      st.set_owned(std::vector<uint8_t>(st.bytes.begin(), st.bytes.end()));
    uint64_t n = std::min<uint64_t>(s.count, (need - pos + plan.k - 1) / plan.k);
    embed_bits(st.owned.data() + s.first * s.elem_size, n, s.elem_size, plan.k, payload, pos);
    pos += n * plan.k;
    written += n;
  }
  return written;
}

Result<std::vector<uint8_t>> extract_payload(const model::Model& m, const EmbedPlan& plan, uint64_t nbytes) {
  if (nbytes * 8 > plan.capacity_bits())
    return make_error(Rule::lab_capacity, "asked for more bytes than the tensors can hold at k=" + std::to_string(plan.k));
  std::vector<uint8_t> out(nbytes, 0);
  uint64_t pos = 0;
  for (const auto& s : plan.segments) {
    if (pos >= nbytes * 8) break;
    const auto& st = m.storages[s.storage];
    uint64_t n = std::min<uint64_t>(s.count, (nbytes * 8 - pos + plan.k - 1) / plan.k);
    extract_bits(st.bytes.data() + s.first * s.elem_size, n, s.elem_size, plan.k, out, pos);
    pos += n * plan.k;
  }
  return out;
}

}  // namespace modelcdr::stego
