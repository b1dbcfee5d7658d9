// Block sharing (reflink) between an input and an output on one copy-on-write file system
// (XFS, btrfs): FICLONERANGE makes a range of the output point at the input's blocks, so a
// tensor payload that is copied verbatim costs metadata instead of a data copy. Where the file
// systems differ or cannot share blocks, the calls report that nothing was shared and the
// caller copies as before; the output bytes are the same either way.
#pragma once
#include <cstdint>

namespace modelcdr::io {

// The unit FICLONERANGE offsets and lengths must be multiples of on the file system that holds
// `fd` (its fundamental block size), or 0 where that cannot be found out.
uint64_t clone_block_size(int fd);

// How one payload of `size` bytes at `in_offset` of the input, appended at `out_offset` of the
// output, splits into a head to copy (up to the next block boundary), a middle of whole blocks
// to share, and a tail to copy. No middle (everything copied) where the two offsets are not
// congruent modulo `block`, the block size is unknown, or the payload holds no whole block.
struct ClonePlan {
  uint64_t head = 0, middle = 0, tail = 0;
};
ClonePlan plan_clone(uint64_t in_offset, uint64_t out_offset, uint64_t size, uint64_t block);

// Shares `length` bytes at `in_offset` of `in_fd` into `out_fd` at `out_offset` (all multiples
// of the block size), in steps; stops at the first step the kernel refuses (EXDEV: another file
// system, EOPNOTSUPP: no reflink support, and so on). Returns the bytes shared, a multiple of the
// step; the caller copies whatever is left. Never changes either file's position.
uint64_t clone_range(int in_fd, uint64_t in_offset, int out_fd, uint64_t out_offset, uint64_t length);

}  // namespace modelcdr::io
