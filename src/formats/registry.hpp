// The format table: one row per container::Format, in the style of libarchive's reader
// registration. A row says how the format's first bytes are recognised (its sniff bid), which
// reader opens it, which writer writes it, what --to calls it, which file names are model files
// of that format (and what an output of it is named), and which fuzz target feeds its reader.
// Everything that needs to know about formats reads this table: the pipeline (sniff once, open,
// write), engine/classify (is this a model file?), engine/output_names (names, shard indexes),
// the CLI's --to, and the directory engine. Adding a format: see docs/ARCHITECTURE.md.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "container/sniff.hpp"
#include "formats/parsed_model.hpp"
#include "io/atomic_output.hpp"
#include "modelcdr/api.hpp"

namespace modelcdr::formats {

// What a writer gets: the model, the caller's options, the class registry the reader used
// (class ids index it), and the report that collects what the output could not hold.
struct WriteRequest {
  const model::Model& model;
  const DisarmOptions& options;
  const cdr::ClassRegistry* registry;
  FileReport& report;
  const ByteRanges* ranges = nullptr;  // where the payloads lie in the input (the reader's), if known
};

// A bid on the first bytes (up to kSniffBytes) and the file's size: 0 = not this format; the
// highest bid wins. Bids are specific-magic-first, in torch.load's own order (docs/FORMATS.md §0).
using BidFn = int (*)(std::span<const uint8_t> head, uint64_t file_size);
using OpenFn = Result<ParsedModel> (*)(std::span<const uint8_t> file, const ReadOptions& options);
using WriteFn = Status (*)(const WriteRequest& request, io::AtomicOutput& out);

inline constexpr size_t kSniffBytes = 4096;

struct FormatRow {
  container::Format format;
  const char* name;  // in reports and error messages ("torch-zip", "safetensors", ...)
  // nullptr: never sniffed; a reader refines to it (npz and torchscript from a zip's entry
  // names, joblib from a pickle holding joblib arrays).
  BidFn bid;
  // nullptr: sniffed but not read; open() answers `refusal` under `refusal_rule`.
  OpenFn open;
  Rule refusal_rule;
  const char* refusal;
  // The writer, when modelcdr writes this format: what --to and the public API call it.
  std::optional<OutputFormat> output;
  const char* to_flag;  // --to NAME (nullptr: no writer)
  WriteFn write;
  // Model-file extensions (lower case; the first is an output's default). A name ending in
  // one is a model file of this format; outputs of this format get the first.
  std::array<const char*, 4> extensions;
  // Compression suffixes a name may carry after a model extension (model.joblib.gz).
  std::array<const char*, 2> wrapper_suffixes;
  // Output name rule: a stem starting with stem_from is renamed to stem_to (HF's
  // pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors).
  const char* stem_from;
  const char* stem_to;
  // The libFuzzer target (fuzz/<target>_fuzz.cpp) that feeds this reader, and one of its seeds
  // (fuzz/seeds/<target>/<seed>) that the table test sniffs and opens as this format.
  const char* fuzz_target;
  const char* seed;
};

std::span<const FormatRow> format_table();
const FormatRow& format_row(container::Format f);
const char* format_name(container::Format f);
// The row that writes `f` (every OutputFormat has one), and the row --to NAME selects.
const FormatRow& output_row(OutputFormat f);
const FormatRow* row_for_flag(std::string_view to_flag);
std::vector<std::string> output_flags();  // every --to NAME, in table order

// Sniffs once: the highest bid over the first kSniffBytes of `file`. The reader gets the result.
container::Format sniff(std::span<const uint8_t> file);
// The sniffed format's reader (or its refusal).
Result<ParsedModel> open(container::Format sniffed, std::span<const uint8_t> file, const ReadOptions& options);
// The output format's writer.
Status write(OutputFormat f, const WriteRequest& request, io::AtomicOutput& out);

// File names: the format a name asks for (compression suffixes ignored), the name without its
// compression suffix, and the name without its model extension (nullopt: none).
std::optional<OutputFormat> output_for_name(const std::string& name);
std::string strip_compression(const std::string& name);
std::optional<std::string> model_stem(const std::string& name);

}  // namespace modelcdr::formats
