// Hands the allocator's free memory back to the kernel after a stage has freed a lot of small
// blocks (issue 14). glibc keeps freed heap memory resident: after the read of a checkpoint of
// 160k tensors, the zip directory's names, the program's arena and the lifter's working arrays
// (once an earlier free raised glibc's mmap threshold, blocks of several MB are heap blocks too)
// left about 40 MB resident and unused, which the writer's stage then added to. malloc_trim returns the whole free
// pages anywhere in the heap, not only at its top. Elsewhere (no glibc) this does nothing.
#pragma once
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace modelcdr::io {

inline void return_free_memory() {
#if defined(__GLIBC__)
  (void)::malloc_trim(0);
#endif
}

}  // namespace modelcdr::io
