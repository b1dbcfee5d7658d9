#include "io/reflink.hpp"

#include <gtest/gtest.h>

namespace modelcdr::io {
namespace {

TEST(PlanClone, SplitsAtBlockBoundariesWhenOffsetsAreCongruent) {
  // Input at 4096*3 + 100, output at 4096*7 + 100: copy 3996 bytes, share 2 blocks, copy 10.
  ClonePlan p = plan_clone(4096 * 3 + 100, 4096 * 7 + 100, 3996 + 2 * 4096 + 10, 4096);
  EXPECT_EQ(p.head, 3996u);
  EXPECT_EQ(p.middle, 2u * 4096);
  EXPECT_EQ(p.tail, 10u);
}

TEST(PlanClone, AlignedStartHasNoHead) {
  ClonePlan p = plan_clone(8192, 65536, 3 * 4096, 4096);
  EXPECT_EQ(p.head, 0u);
  EXPECT_EQ(p.middle, 3u * 4096);
  EXPECT_EQ(p.tail, 0u);
}

TEST(PlanClone, NothingSharedWhenOffsetsDifferOrNoWholeBlock) {
  for (ClonePlan p : {plan_clone(100, 164, 1 << 20, 4096),  // another phase: blocks do not line up
                      plan_clone(100, 100, 4000, 4096),     // ends before the first boundary
                      plan_clone(100, 100, 4096, 4096),     // head + less than one block
                      plan_clone(100, 100, 1 << 20, 0)}) {  // block size unknown
    EXPECT_EQ(p.head, 0u);
    EXPECT_EQ(p.middle, 0u);
    EXPECT_EQ(p.tail, p.tail);
  }
  EXPECT_EQ(plan_clone(100, 164, 1 << 20, 4096).tail, 1u << 20);  // all of it copied
}

}  // namespace
}  // namespace modelcdr::io
