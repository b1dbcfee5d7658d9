// What every format reader hands to the pipeline: the Model IR plus every finding about the
// input (container, pickle program, lifter).
#pragma once
#include <optional>
#include <span>
#include <string>

#include "container/sniff.hpp"
#include "modelcdr/finding.hpp"
#include "modelcdr/model.hpp"
#include "pickle/pickle_machine.hpp"

namespace modelcdr::formats {

struct ParsedModel {
  container::Format format = container::Format::unknown;
  model::Model model;
  Findings findings;
  // Set when the file was understood but cannot be disarmed (e.g. TorchScript): scan reports
  // it, disarm rejects with this text.
  std::optional<std::string> not_disarmable;
};

struct ReadOptions {
  pickle::MachineLimits limits;
};

Result<ParsedModel> read_torch_zip(std::span<const uint8_t> file, const ReadOptions& options);
Result<ParsedModel> read_torch_legacy(std::span<const uint8_t> file, const ReadOptions& options);
Result<ParsedModel> read_bare_pickle(std::span<const uint8_t> file, const ReadOptions& options);

// Decodes one pickle stream, runs the program scan, and reports bytes after STOP; shared by
// the readers. `trailing_expected` is true when the format puts more data after the stream.
Result<pickle::Program> decode_stream(std::span<const uint8_t> bytes, const std::string& entry, uint64_t base_offset,
                                      const ReadOptions& options, Findings& findings, bool trailing_expected);


}  // namespace modelcdr::formats
