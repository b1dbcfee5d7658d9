// What every format reader hands to the pipeline: the Model IR plus every finding about the
// input (container, pickle program, lifter).
#pragma once
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "cdr/lifter.hpp"
#include "container/sniff.hpp"
#include "modelcdr/byte_ranges.hpp"
#include "modelcdr/finding.hpp"
#include "modelcdr/model.hpp"
#include "pickle/pickle_machine.hpp"

namespace modelcdr::cdr {
class ClassRegistry;
}

namespace modelcdr::container {
struct ZipArchive;
struct ZipEntry;
}

namespace modelcdr::formats {

struct ParsedModel {
  container::Format format = container::Format::unknown;
  model::Model model;
  // Beside the model, from the container stage: where each storage's bytes lie in the input
  // and the CRCs it left to the copy (defer_storage_crc). Writers and MTD read it.
  ByteRanges ranges;
  Findings findings;
  // Set when the file was understood but cannot be disarmed (e.g. TorchScript): scan reports
  // it, disarm rejects with this text.
  std::optional<std::string> not_disarmable;
  // Owns bytes the model's storages point into when they are not the mapped input (a
  // decompressed joblib stream). Moving a ParsedModel keeps the pointer stable.
  std::shared_ptr<const std::vector<uint8_t>> backing;
};

struct ReadOptions {
  pickle::MachineLimits limits;
  bool input_is_mapped = false;  // the input span is an io::MappedFile (pages may be released)
  int input_fd = -1;             // its descriptor (for ByteRange::fd), when mapped
  // Leave the CRC check of stored storage records to the copy (ByteRange::expected_crc), so
  // disarm reads each tensor byte once. Every other record is still checked when read.
  bool defer_storage_crc = false;
  // The vetted classes objects may be rebuilt from: the Engine's own (docs/API.md);
  // nullptr: the process-wide default (cdr::ClassRegistry::active()).
  const cdr::ClassRegistry* registry = nullptr;
  pickle::ArrayBuildHook on_array_build;  // joblib: passed to pickle::decode by decode_stream
  // scan only: where a stream fails the strict parse, decode_stream adds what CPython would
  // import and call reading it here (cdr::scan_cpython_view), kept although the file is an error.
  Findings* salvage = nullptr;
  // scan only, with no inspect callback: the model is read for findings, tensor counts and
  // the graph checks only, not for values (cdr::LiftOptions::scan_only).
  bool scan_only = false;
};

// The ByteRange of a storage's bytes that lie in the input `file` as they are: a mapped input
// also gives the writers its descriptor and the file offset, for their kernel-copy path.
inline ByteRange input_range(std::span<const uint8_t> bytes, std::span<const uint8_t> file, const ReadOptions& options) {
  ByteRange range;
  range.view = bytes;
  range.mapped = options.input_is_mapped;
  if (range.mapped) {
    range.fd = options.input_fd;
    range.offset = static_cast<uint64_t>(bytes.data() - file.data());
  }
  return range;
}

Result<ParsedModel> read_torch_zip(std::span<const uint8_t> file, const ReadOptions& options);
Result<ParsedModel> read_torch_legacy(std::span<const uint8_t> file, const ReadOptions& options);
Result<ParsedModel> read_bare_pickle(std::span<const uint8_t> file, const ReadOptions& options);

// Decodes one pickle stream, runs the program scan, and reports bytes after STOP; shared by
// the readers. `trailing_expected` is true when the format puts more data after the stream.
Result<pickle::Program> decode_stream(std::span<const uint8_t> bytes, const std::string& entry, uint64_t base_offset,
                                      const ReadOptions& options, Findings& findings, bool trailing_expected);


// joblib / pickle files (joblib_reader.cpp): a pickle stream, with NumpyArrayWrapper arrays
// inline (format "joblib" when any was found), and scikit-learn objects rebuilt through the
// vetted class registry (cdr/class_registry.hpp).
Result<ParsedModel> read_joblib(std::span<const uint8_t> file, const ReadOptions& options);
// A zlib/gzip/bz2/xz/lzma/lz4 (or joblib "ZF") compressed file: decompressed with a bounded
// output size, then read as joblib/pickle. Anything else inside is rejected.
Result<ParsedModel> read_compressed(std::span<const uint8_t> file, const ReadOptions& options);
// TorchScript (torch.jit.save) archives, called by read_torch_zip: tensors of the module tree
// become a state dict, code/ and constants are removed (torchscript_reader.cpp).
Status read_torchscript_archive(std::span<const uint8_t> file, const container::ZipArchive& zip, const std::string& prefix,
                                const ReadOptions& options, ParsedModel& parsed);
// The container's table of a zip's <prefix>/data/<key> records (torch zip checkpoints and
// TorchScript archives alike), for cdr::lift, and the entry behind each of its records.
struct StorageRecords {
  cdr::StorageTable table;
  std::vector<const container::ZipEntry*> entries;  // by record index
};
StorageRecords zip_storage_records(const container::ZipArchive& zip, const std::string& prefix);
// PyTorch's pre-0.1.10 tar format (docs/FORMATS.md §3.3; torch_tar_reader.cpp).
Result<ParsedModel> read_torch_tar(std::span<const uint8_t> file, const ReadOptions& options);

// safetensors (docs/FORMATS.md §6): strict header validation; `__metadata__` kept as strings.
Result<ParsedModel> read_safetensors(std::span<const uint8_t> file, const ReadOptions& options);
// NumPy .npy / .npz (docs/FORMATS.md §7.1-7.2). read_npz takes the already-parsed archive and its
// zip findings (torch zip sniffing recognised the member names).
Result<ParsedModel> read_npy(std::span<const uint8_t> file, const ReadOptions& options);
Result<ParsedModel> read_npz(std::span<const uint8_t> file, const container::ZipArchive& zip, Findings findings,
                             const ReadOptions& options);

}  // namespace modelcdr::formats
