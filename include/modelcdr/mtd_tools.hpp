// The MTD tool functions behind `modelcdr keygen / key / map / trace` (docs/MTD.md,
// docs/CLI.md), beyond what Engine::protect / restore / verify / protect_copies give: leak
// tracing, key generation and map re-sealing. The path functions protect / protect_copies /
// restore / verify / restore_model stay public for existing callers and the tests; the CLI
// and the Python package use the Engine's, whose FileReport::mtd carries the same diagnosis. Everything here uses the process-wide default
// class policy and limits (ProtectOptions::context nullptr); the Engine's calls use its own.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "modelcdr/api.hpp"
#include "modelcdr/engine.hpp"
#include "modelcdr/mtd.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr::mtd {

// The structured diagnosis is public API (include/modelcdr/api.hpp): FileReport::mtd carries
// the same mismatches; these names are kept for the tool functions below.
using Mismatch = MtdMismatch;
using Outcome = MtdOutcome;

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

// What anyone can read from a map without a key (`modelcdr map info`). Not authenticated:
// `signature_valid` says whether the embedded signer key signed it (not whether to trust it).
struct MapHeader {
  uint16_t version = 0;
  bool signed_ = false, signature_valid = false;
  std::string signer;  // fingerprint
  struct SlotInfo {
    std::string type;       // key-file | passphrase | recipient
    std::string recipient;  // fingerprint of the recipient's x25519 public key
  };
  std::vector<SlotInfo> slots;
  std::string info;  // the clear info JSON as stored
};

// Re-wrapping a map's content key for a new set of recipients (the content is unchanged).
struct ResealOptions {
  std::vector<Key32> add_recipients;             // x25519 public keys
  std::vector<std::string> remove_fingerprints;  // recipient fingerprints (fingerprint() of x25519 public)
  const KeyFile* signer = nullptr;               // required when the map was signed
};

Result<MapHeader> read_map_header(const std::string& sealed);
// Opens the map with `open` (the operator's key), keeps every other slot verbatim, adds and
// removes recipient slots, and re-signs. Errors: those of open_map, "map.needs-signer",
// "map.no-such-recipient", "map.duplicate-recipient", "map.no-key" (nothing would open it).
Result<std::string> reseal_map(const std::string& sealed, const OpenOptions& open, const ResealOptions& r);
// True when `bytes` start with the map magic.
bool looks_like_map(const std::string& bytes);

// Generates NAME.key (0600) and NAME.pub; refuses to overwrite unless `force`.
Status keygen_pair(const std::string& name, bool force);
Status keygen_symmetric(const std::string& path, bool force);
// Writes `text` to `path` with `mode`, atomically (temp in the same folder, fsync, rename).
Status write_file_atomic(const std::string& path, const std::string& text, unsigned mode, bool force);
Result<std::string> read_small_file(const std::string& path, size_t limit);
// Printable id of a public key: the first 128 bits of BLAKE2b-256(key), 32 hex digits.
std::string fingerprint(const uint8_t* p, size_t n);

}  // namespace modelcdr::mtd
