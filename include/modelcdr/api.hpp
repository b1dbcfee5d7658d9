// The path-based entry points of the library, kept for existing callers: each is a thin
// wrapper over the process-wide default Engine (include/modelcdr/engine.hpp, docs/API.md),
// whose class registry load_class_policy extends. New code should use modelcdr::Engine
// (memory sources and sinks, per-Engine policy and limits, progress, cancellation).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "modelcdr/byte_ranges.hpp"
#include "modelcdr/finding.hpp"
#include "modelcdr/model.hpp"
#include "modelcdr/result.hpp"

namespace modelcdr {

class Transform;  // modelcdr/transform.hpp

inline constexpr const char* kVersion = "0.1.0";

struct TensorStats {
  uint64_t count = 0;
  uint64_t total_bytes = 0;
  std::map<std::string, uint64_t> dtypes;  // dtype name -> tensor count
};

enum class FileStatus { clean, findings, error, removed, rejected, skipped };
const char* status_name(FileStatus s);

// One difference between a file and its map (Engine::verify / restore, docs/MTD.md §6).
struct MtdMismatch {
  std::string what;      // "tensor" | "non-tensor" | "structure" | "layout" | "file" | "map" | "wrong-file"
  std::string name;      // tensor name (state-dict key path) for "tensor"
  int64_t key = -1;      // archive/data/<key>; -1 when not about one record
  std::string against;   // "protected" (the map's after-hashes) | "restored" (before-hashes)
  std::string expected, actual;  // hashes (hex), or sizes/counts for "structure"
  std::string detail;
};

// ok: done (protect / restore wrote, verify found the file intact); mismatch: the file does
// not match its map (restore wrote nothing); error: usage, I/O, a map that does not open, a
// rejected input (FileReport::error says which).
enum class MtdOutcome { ok, mismatch, error };
const char* mtd_outcome_name(MtdOutcome o);  // "ok" | "mismatch" | "error"

// What Engine::protect / restore / verify add to the report (docs/MTD.md §6 for the codes).
// Every such call sets FileReport::mtd, also when it fails.
struct MtdReport {
  MtdOutcome outcome = MtdOutcome::error;
  std::string code;             // ok, tampered, wrong-file, ... (one word per diagnosis)
  std::string state;            // verify: "protected" | "restored"
  std::string map;              // the map written (protect) or read
  std::string signer;           // fingerprint of the map's signer, if signed
  bool signer_trusted = false;  // checked against a pinned signer (RestoreOptions::open)
  size_t storages = 0, permuted = 0, swapped = 0;
  std::vector<MtdMismatch> mismatches;  // outcome mismatch: every difference found
};

// Where a container entry's data lies in the input file (scan: SARIF locates a finding by file
// offset). `compressed`: offsets inside the entry are in its decompressed bytes; an entry
// named "" is the whole file as one compressed stream (gzip, xz, ... joblib).
struct EntryLocation {
  std::string name;
  uint64_t data_offset = 0;
  bool compressed = false;
};

struct FileReport {
  std::string input, output;
  std::string format;
  FileStatus status = FileStatus::clean;
  Verdict verdict = Verdict::clean;  // scan: the worst verdict its findings imply (docs/RULES.md)
  std::optional<Error> error;
  TensorStats tensors;
  Findings findings;           // everything noticed about the input
  Findings removed;            // what disarm dropped or converted (severity >= low)
  std::string architecture;    // path of OUT.architecture.json, if written
  std::string note;            // one-line reason for skipped / rejected
  uint64_t shared_bytes = 0;   // payload bytes the output shares with the input (reflink)
  std::optional<MtdReport> mtd;  // set by protect / restore / verify only
  std::vector<EntryLocation> entries;  // scan: zip/tar entries and compressed streams
};

// Progress of one scan/disarm call (docs/API.md): `done` never decreases within a stage and
// never exceeds `total`; the last call has stage `done`.
enum class Stage { read, transform, write, done };
const char* stage_name(Stage s);
struct Progress {
  Stage stage = Stage::read;
  uint64_t done = 0, total = 0;  // bytes: the input for read, the payload bytes for write
};
// Called on the calling thread between stages and between output chunks (about every MiB or
// kernel-copy step). Return false to cancel: the call then fails with engine.cancelled and
// leaves no output.
using ProgressFn = std::function<bool(const Progress&)>;

struct ScanOptions {
  bool stego = false;
  // Extra per-file analysis over the lifted IR (e.g. the steganography test); adds findings.
  std::function<void(const model::Model&, FileReport&)> inspect;
  ProgressFn progress;                        // optional
  const std::atomic<bool>* cancel = nullptr;  // optional: set to true to cancel (engine.cancelled)
  // Optional: called with the input's bytes (read once) before anything parses them; a report
  // it returns is the file's report. Directory mode sorts files with it (not a model file:
  // text, JSON, images), so that the file is not opened twice.
  std::function<std::optional<FileReport>(std::span<const uint8_t> bytes)> triage;
};

enum class CompatTarget { torch2, torch1_13 };
// What disarm writes: a PyTorch zip checkpoint (default), a safetensors file, or a NumPy .npz.
enum class OutputFormat { pt, safetensors, npz,
  joblib, pickle, npy };  // npy: a single array (.npy in, .npy out)  // joblib/pickle: for models lifted from pickle/joblib inputs (registry objects, numpy arrays)

struct DisarmOptions {
  CompatTarget compat = CompatTarget::torch2;
  OutputFormat output_format = OutputFormat::pt;
  bool allow_trailing_data = false;  // drop bytes after STOP instead of rejecting
  bool fsync = false;                // fsync outputs before the rename (durable, slower)
  bool force = false;                // replace existing outputs (--force); otherwise they are never touched
  bool reflink = true;               // share payload blocks with the input where the file system can (--no-reflink)
  // Transforms (include/modelcdr/transform.hpp), run in order: their IR stages between lift
  // and write (LSB randomisation), at most one record stage inside the torch writer (MTD).
  std::vector<std::shared_ptr<Transform>> transforms;
  ProgressFn progress;                        // optional, see Progress
  const std::atomic<bool>* cancel = nullptr;  // optional: checked between stages and chunks
};

// The two halves of disarm, for commands that transform a model in between (protect,
// restore): load_model parses, scans and lifts (rejecting what disarm would reject);
// write_model emits a fresh checkpoint atomically. The LoadedModel keeps the input mapped,
// since the IR's tensor payloads are spans into it.
struct LoadedModel;
struct LoadedModelDeleter {
  void operator()(LoadedModel* m) const;
};
using LoadedModelPtr = std::unique_ptr<LoadedModel, LoadedModelDeleter>;
// `defer_storage_crc`: leave the CRC-32 of plain-checkpoint storage records unchecked and put
// it in the storage's ByteRange (byte_ranges_of) instead; the caller must then check it as it
// reads the bytes (one pass over the payload instead of two): write_model does, given the
// LoadedModel as `source`.
Result<LoadedModelPtr> load_model(const std::string& input, const DisarmOptions& options, FileReport& report,
                                  bool defer_storage_crc = false);
model::Model& model_of(LoadedModel& loaded);
// Where the container found each storage's bytes in the input (beside the IR, not in it).
const ByteRanges& byte_ranges_of(const LoadedModel& loaded);
// `source`: the input the model came from; when it changed while being read (truncated
// under the mapping, size changed) the output is not committed (io.input-changed).
Status write_model(const model::Model& model, const std::string& output, const DisarmOptions& options,
                   FileReport& report, const LoadedModel* source = nullptr);
// io.input-changed when the input behind `loaded` changed since it was mapped; writers of
// their own outputs (protect/restore) check it before committing.
Status check_input_unchanged(const LoadedModel& loaded);

FileReport scan_file(const std::string& path, const ScanOptions& options);
FileReport disarm_file(const std::string& input, const std::string& output, const DisarmOptions& options);

// Extends the vetted class registry (docs/REGISTRY.md) of the process-wide default Engine
// (the one the functions above use; an Engine made with EngineOptions has its own) with the classes a
// policy file names one by one: {"allow_classes": ["module.Class", ...]} (NEWOBJ + BUILD) and
// {"allow_reduce": [...]} (REDUCE with plain-data arguments + BUILD). No wildcards.
Status load_class_policy(const std::string& path);

// True when the bytes at `path` are a model file, decided by content alone (engine/classify.hpp):
// anything an unpickler, joblib, torch.load or numpy could act on, to be rebuilt or rejected.
bool is_model_file(const std::string& path);

}  // namespace modelcdr
