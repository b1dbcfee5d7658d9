// libFuzzer target: the strict ZIP reader and entry extraction on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "container/zip_reader.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcdr::container;
  std::span<const uint8_t> file(data, size);
  ZipLimits limits;
  limits.max_entries = 10'000;
  limits.max_inflated_bytes = 64u << 20;  // keep the fuzzer's memory bounded
  modelcdr::Findings findings;
  auto archive = read_zip(file, findings, limits, /*verify_crc=*/true);
  if (!archive.ok()) return 0;
  std::vector<uint8_t> scratch;
  for (const auto& entry : archive->entries) {
    auto bytes = entry_bytes(file, entry, scratch, limits);
    if (bytes.ok() && !bytes->empty()) {
      volatile uint8_t sink = (*bytes)[bytes->size() - 1];
      (void)sink;
    }
  }
  return 0;
}
