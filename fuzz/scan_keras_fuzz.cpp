// libFuzzer target: the Keras config scan (src/cdr/scan_keras.cpp), as an HDF5 byte scan and as a
// zip with a root config.json. Whatever the bytes, a file it takes as Keras is never graded below
// unknown (keras.not-disarmable is always there), and the work stays bounded (-timeout).
// Seeds: fuzz/seeds/scan_keras/ (written by h5py and zipfile, see fuzz/README.md).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "cdr/scan_keras.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcdr;
  std::span<const uint8_t> bytes(data, size);
  for (const std::vector<std::string>& entries : {std::vector<std::string>{}, std::vector<std::string>{"config.json"}}) {
    Findings found;
    auto format = cdr::scan_keras(bytes, entries, found);
    if (!format) {
      if (!found.empty()) __builtin_trap();
      continue;
    }
    bool graded = false;
    for (const auto& f : found) graded |= f.rule == Rule::keras_not_disarmable;
    if (!graded) __builtin_trap();
  }
  return 0;
}
