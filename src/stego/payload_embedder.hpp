// Attack simulator (for tests and benchmarks, `modelcdr-lab`): hides a byte string in the low k
// mantissa bits of chosen float tensors, EvilModel-style, and reads it back.
//
// Layout: the payload is a bit stream, byte by byte, least significant bit first. Element i of the
// target sequence (tensors in the given order, each in storage order) carries stream bits
// [i*k, i*k + k) in its mantissa bits 0..k-1 (stream bit i*k + j -> mantissa bit j). Every other
// bit of the element is kept. No header: the extractor is told k and the length, as an attacker's
// loader would be.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::stego {

// Raw element-buffer primitives (little-endian IEEE elements of `elem_size` bytes, 2/4/8).
// Writes stream bits [bit_offset, bit_offset + n_elems * k) of `payload` (bits past its end are 0)
// into the low k bits of the elements.
void embed_bits(uint8_t* elems, size_t n_elems, uint32_t elem_size, int k, std::span<const uint8_t> payload,
                uint64_t bit_offset);
// Reads the low k bits of the elements into stream bits [bit_offset, ...) of `out` (sized by the caller;
// bits past its end are ignored).
void extract_bits(const uint8_t* elems, size_t n_elems, uint32_t elem_size, int k, std::span<uint8_t> out,
                  uint64_t bit_offset);

struct EmbedSegment {
  std::string name;             // tensor name (stego::named_tensors)
  model::StorageId storage = 0;
  uint64_t first = 0, count = 0;  // element range of the storage, in IEEE components
  uint32_t elem_size = 0;
  int mantissa = 0;
};

struct EmbedPlan {
  int k = 0;
  std::vector<EmbedSegment> segments;
  uint64_t capacity_bits() const;
};

// The float tensors named in `names` (all contiguous float tensors when empty, in state-dict
// order), each storage used once. Errors: a name that is not a contiguous float tensor, or k larger
// than a target's mantissa.
Result<EmbedPlan> plan_embedding(const model::Model& m, int k, const std::vector<std::string>& names);

// Embeds `payload` (must fit in capacity) into the model, replacing touched storages with owned
// copies. Returns the number of elements written.
Result<uint64_t> embed_payload(model::Model& m, const EmbedPlan& plan, std::span<const uint8_t> payload);
// Extracts `nbytes` bytes (at most the capacity).
Result<std::vector<uint8_t>> extract_payload(const model::Model& m, const EmbedPlan& plan, uint64_t nbytes);

}  // namespace modelcdr::stego
