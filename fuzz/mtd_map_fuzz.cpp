// libFuzzer target: the MTD sealed-map reader (docs/MTD.md §4) and the map payload parser.
// The input is read three ways: as a sealed map by the key-less header reader, as a sealed map
// opened with a fixed symmetric key (unsigned maps allowed, so the slot and MAC paths run), and
// as a decrypted payload, which no fuzzer could reach through the AEAD. Each must end in a
// value or an error, never a crash, a leak or an unbounded allocation. Seeds: fuzz/seeds/mtd_map/.
#include <cstddef>
#include <cstdint>
#include <string>

#include "mtd/mtd.hpp"
#include "mtd/seal.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace modelcdr::mtd;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  (void)map_format_version(bytes);
  auto header = read_map_header(bytes);
  if (header.ok() && header->slots.size() > kMaxSlots) __builtin_trap();
  OpenOptions open;
  open.symmetric_key = Key32{};  // the seeds are sealed to the all-zero key (make_format_seeds.py)
  open.allow_unsigned = true;
  auto opened = open_map(bytes, open);
  if (opened.ok()) (void)check_map_payload(opened->payload);
  (void)check_map_payload(bytes);
  return 0;
}
