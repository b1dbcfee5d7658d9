// Asks the kernel to back a large, freshly reserved array with transparent huge pages, so that
// filling it costs one page fault per 2 MiB instead of one per 4 KiB (a pickle of many small
// objects fills its node and value arrays element by element: a scan of 61k floats spent about a
// third of its time in page faults). Only whole 2 MiB pages inside the range are advised, so no
// memory outside it is touched or committed; where THP is off or unsupported this does nothing.
#pragma once
#include <cstddef>
#include <cstdint>

#include <sys/mman.h>

namespace modelcdr::io {

inline void advise_huge_pages(const void* data, size_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) (void)::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace modelcdr::io
