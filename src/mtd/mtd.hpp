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
#include "mtd/seal.hpp"

namespace modelcdr::engine {
struct RunContext;
}

namespace modelcdr::mtd {

// One difference between a file and its map.
struct Mismatch {
  std::string what;      // "tensor" | "non-tensor" | "structure" | "file" | "map" | "wrong-file"
  std::string name;      // tensor name (state-dict key path) for "tensor"
  int64_t key = -1;      // archive/data/<key>
  std::string against;   // "protected" (the map's after-hashes) | "restored" (before-hashes)
  std::string expected, actual;  // hashes (hex), or sizes/counts for "structure"
  std::string detail;
};

enum class Outcome { ok, mismatch, error };

struct MtdResult {
  Outcome outcome = Outcome::error;
  std::optional<Error> error;       // outcome error (usage / IO / rejected input)
  std::vector<Mismatch> mismatches; // outcome mismatch
  std::string code;                 // one word per diagnosis (docs/MTD.md §6): ok, tampered, wrong-file, ...
  std::string state;                // verify: "protected" | "restored"
  std::string output;               // written file, if any
  std::string signer;               // fingerprint of the map's signer, if signed
  bool signer_trusted = false;      // checked against --verify-signer
  size_t storages = 0, permuted = 0, swapped = 0;
  FileReport file;                  // the disarm part (protect) / the parsed input
};

// ProtectOptions, RestoreOptions and parse_expiry are public: include/modelcdr/mtd.hpp.

// Every call takes any Source and Sink (include/modelcdr/engine.hpp): the input and the map
// from a file or from memory, the output and the map to an atomic file or to memory. File
// sinks are never replaced (a sink with replace is refused); a rejected call leaves no output
// and no map (memory sinks are emptied). The path forms below are Source::file / Sink::file.
MtdResult protect(const Source& input, Sink& output, Sink& map, const ProtectOptions& options);
MtdResult protect(const std::string& input, const std::string& output, const std::string& map_path,
                  const ProtectOptions& options);

// Names one protected copy in its map's clear info (`modelcdr map info`).
struct CopyInfo {
  std::string name;      // the customer, for --recipients-dir; empty otherwise
  std::string model_id;  // random per protect run: every copy of one release shares it
};

// One customer's copy for protect_copies: its outputs and the keys its map is sealed to.
struct ProtectCopy {
  std::string name, output, map;
  SealOptions seal;
};

// Loads and disarms `input` once, then writes one protected copy (fresh secret) and map per
// entry; stops at the first failure. The results are in the order of `copies` (a load failure
// gives one result).
std::vector<MtdResult> protect_copies(const std::string& input, const std::vector<ProtectCopy>& copies,
                                      const ProtectOptions& options);

MtdResult restore(const Source& input, const Source& map, Sink& output, const RestoreOptions& options);
MtdResult verify(const Source& input, const Source& map, const RestoreOptions& options);
MtdResult restore(const std::string& input, const std::string& map_path, const std::string& output,
                  const RestoreOptions& options);
MtdResult verify(const std::string& input, const std::string& map_path, const RestoreOptions& options);
// restore without an output file (the Python loader): the restored records become owned
// buffers of `restored`, so the plain weights never touch the disk. Same checks as restore.
MtdResult restore_model(const Source& input, const Source& map, const RestoreOptions& options,
                        LoadedModelPtr& restored);
MtdResult restore_model(const std::string& input, const std::string& map_path, const RestoreOptions& options,
                        LoadedModelPtr& restored);

// Leak tracing: which customer's protected copy a leaked file (or a few of its tensors) is.
struct TraceMatch {
  std::string map, copy;  // map path; copy name from its clear info (may be empty)
  size_t matching = 0;    // leaked records equal to this copy's distinctive after-hashes
  size_t distinctive = 0; // this copy's records that differ from the original (traceable)
};
struct TraceResult {
  std::optional<Error> error;   // the leaked file could not be read
  size_t leaked_records = 0;
  size_t maps_opened = 0;
  std::vector<TraceMatch> matches;  // best first
  std::vector<std::pair<std::string, std::string>> skipped;  // map, why it was not used
};
TraceResult trace(const std::string& leaked, const std::vector<std::string>& maps, const OpenOptions& open);

// Per-storage permutation key: BLAKE2b-256 keyed by the run's secret over
// "modelcdr/mtd/v1/perm" 0x00 name 0x00 key.
Key32 derive_storage_key(const Key32& secret, const std::string& name, uint32_t key);

// Parses a decrypted map payload (JSON) with every check restore and verify apply, then drops
// it: errors "map.payload" / "map.unsupported". For the fuzz target (fuzz/mtd_map_fuzz.cpp).
Status check_map_payload(const std::string& text);

}  // namespace modelcdr::mtd
