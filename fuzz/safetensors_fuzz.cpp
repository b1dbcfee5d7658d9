// libFuzzer target: the safetensors reader (strict header JSON, offsets, dtypes, __metadata__).
// Any byte string must give a model or an error, never a crash, a leak, UB, a hang or an
// unbounded allocation; a model must pass fuzz::check_model. Seeds: fuzz/seeds/safetensors/.
#include <cstddef>
#include <cstdint>
#include <span>

#include "formats/parsed_model.hpp"
#include "fuzz_model_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcdr;
  std::span<const uint8_t> file(data, size);
  formats::ReadOptions options;
  fuzz::check_result(formats::read_safetensors(file, options), file);
  return 0;
}
