// Moving Target Defense (docs/MTD.md): protect a model with secret, per-copy transforms
// (keyed element permutations + swaps of equal-shape tensors), record the secret and the
// before/after hashes in a sealed, optionally signed map; restore and verify against that map.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "modelcdr/api.hpp"
#include "modelcdr/engine.hpp"
#include "modelcdr/mtd.hpp"
#include "modelcdr/mtd_tools.hpp"
#include "mtd/seal.hpp"

namespace modelcdr::engine {
struct RunContext;
}

namespace modelcdr::mtd {

// MtdResult, protect / restore / verify / protect_copies / trace are public:
// include/modelcdr/mtd_tools.hpp.


// Per-storage permutation key: BLAKE2b-256 keyed by the run's secret over
// "modelcdr/mtd/v1/perm" 0x00 name 0x00 key.
Key32 derive_storage_key(const Key32& secret, const std::string& name, uint32_t key);

// Parses a decrypted map payload (JSON) with every check restore and verify apply, then drops
// it: errors "map.payload" / "map.unsupported". For the fuzz target (fuzz/mtd_map_fuzz.cpp).
Status check_map_payload(const std::string& text);

}  // namespace modelcdr::mtd
