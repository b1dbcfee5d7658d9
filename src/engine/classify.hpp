// What a file is, decided from its bytes (never from its name alone), for directory mode:
// the same sniffing as single-file disarm/scan, plus the few questions only a folder raises
// (is this text? could a loader run it? is it a model format modelcdr does not rebuild?).
// The decision is fail-closed: anything an unsafe loader (pickle, joblib, torch.load,
// numpy allow_pickle) could act on is a model file, to be rebuilt or rejected, never copied.
#pragma once
#include <cstdint>
#include <span>
#include <string>

namespace modelcdr::engine {

enum class Kind {
  model,              // disarm rebuilds it or rejects it (pickle of any protocol, zip, tar, codecs, ...)
  unsupported_model,  // a model format modelcdr does not rebuild yet (HDF5/Keras, ONNX, GGUF, TF): never copied
  text,               // valid UTF-8 without NUL that no loader can run: copyable
  json,               // text that parses as JSON (.json files must)
  code,               // source code or a script (.py, .sh, a #! line, ...): not inert
  inert_binary,       // a binary format on the short inert list (docs/CLI.md): copyable
  unknown_binary,     // anything else: never copied
  unreadable,         // cannot be opened or read
};

const char* kind_name(Kind k);

struct Classification {
  Kind kind = Kind::unknown_binary;
  std::string detail;  // the sniffed format, or why it is not copyable
};

Classification classify(const std::string& path);
// The same decision for bytes already read; `name` is the file name (code and .json checks).
Classification classify_bytes(const std::string& name, std::span<const uint8_t> bytes);

// Valid UTF-8 without NUL bytes (overlongs, surrogates and > U+10FFFF refused).
bool is_utf8_text(std::span<const uint8_t> bytes);

// True when Python's unpickler, started on `bytes`, could reach an opcode that imports or
// calls something (GLOBAL, INST, REDUCE, BUILD, ...) or a STOP. A model of the unpickler's
// stack that is at least as lenient as CPython's: when unsure, it answers true.
bool may_unpickle(std::span<const uint8_t> bytes);

}  // namespace modelcdr::engine
