// libFuzzer target: directory mode's classifier (src/engine/classify.cpp) and its model of the
// unpickler. Besides never crashing, it checks the fail-closed promise: bytes the pickle machine
// decodes to a complete program that imports nothing are bytes Python's unpickler reads to STOP
// (the model ignores types and memo contents, so it is the more lenient), so may_unpickle must
// say so and classify_bytes must call them a model, whatever the file name. (With a GLOBAL, the
// model may rightly answer that the import fails first: a module name no import accepts.)
// Seeds: fuzz/seeds/classify/.
#include <cstddef>
#include <cstdint>
#include <span>

#include "engine/classify.hpp"
#include "pickle/pickle_machine.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcdr;
  std::span<const uint8_t> bytes(data, size);
  (void)engine::is_utf8_text(bytes);
  bool may = engine::may_unpickle(bytes);
  auto as_text = engine::classify_bytes("notes.txt", bytes);
  (void)engine::classify_bytes("config.json", bytes);
  pickle::DecodeOptions options;
  options.entry = "fuzz.pkl";
  options.limits.max_ops = 100'000;
  Findings findings;
  auto program = pickle::decode(bytes, options, findings);
  if (!program.ok()) return 0;
  for (const auto& n : program->nodes)
    if (n.kind == pickle::NodeKind::Global) return 0;
  // A pickle that also carries another format's magic (TFLite's "TFL3" at offset 4) may be
  // classed as that unsupported model format: rejected, never copied, so fail closed too.
  const bool refused = as_text.kind == engine::Kind::model || as_text.kind == engine::Kind::unsupported_model;
  if (!may || !refused) __builtin_trap();
  return 0;
}
