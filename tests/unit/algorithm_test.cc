#include "core/algorithm.h"

#include <gtest/gtest.h>

#include "memory/shared_buffer.h"

namespace tpcomm {
namespace {

constexpr size_t KiB = 1024;

TEST(Algorithm, TwoRanksAlwaysTakeOneShot) {
  for (size_t bytes : {size_t{16}, 256 * KiB, 64 * KiB * KiB, size_t{1} << 40}) {
    EXPECT_EQ(device::kOneShot, chooseAlgorithm(tpcAlgoAuto, 2, bytes)) << bytes;
  }
}

TEST(Algorithm, ThresholdsByWorldSize) {
  for (int n : {3, 4}) {
    EXPECT_EQ(device::kOneShot, chooseAlgorithm(tpcAlgoAuto, n, 512 * KiB)) << n;
    EXPECT_EQ(device::kTwoShot, chooseAlgorithm(tpcAlgoAuto, n, 512 * KiB + 1)) << n;
  }
  for (int n : {5, 6, 7, 8}) {
    EXPECT_EQ(device::kOneShot, chooseAlgorithm(tpcAlgoAuto, n, 256 * KiB)) << n;
    EXPECT_EQ(device::kTwoShot, chooseAlgorithm(tpcAlgoAuto, n, 256 * KiB + 1)) << n;
  }
}

TEST(Algorithm, ForcedAlgorithmWins) {
  EXPECT_EQ(device::kTwoShot, chooseAlgorithm(tpcAlgoTwoShot, 2, 8));
  EXPECT_EQ(device::kOneShot, chooseAlgorithm(tpcAlgoOneShot, 8, size_t{1} << 30));
}

TEST(Algorithm, GridCoversOneVectorPerThread) {
  const size_t threads = device::kBlockThreads;
  EXPECT_EQ(1, gridBlocks(device::kOneShot, 4, 1, 2, 36));
  EXPECT_EQ(1, gridBlocks(device::kOneShot, 4, threads * 8, 2, 36));      // 512 bf16 vectors
  EXPECT_EQ(2, gridBlocks(device::kOneShot, 4, threads * 8 + 1, 2, 36));  // one more element
  EXPECT_EQ(2, gridBlocks(device::kOneShot, 4, threads * 4 + 1, 4, 36));  // float32
  EXPECT_EQ(36, gridBlocks(device::kOneShot, 4, size_t{1} << 30, 2, 36));
  // Two-shot spreads each slice, 1/nranks of the vectors, over the grid.
  EXPECT_EQ(1, gridBlocks(device::kTwoShot, 4, threads * 8 * 4, 2, 36));
  EXPECT_EQ(2, gridBlocks(device::kTwoShot, 4, threads * 8 * 4 + 8 * 4, 2, 36));
  EXPECT_EQ(1, gridBlocks(device::kTwoShot, 8, 0, 2, 36));
}

TEST(Algorithm, ResidentShareKeepsEveryRankResident) {
  EXPECT_EQ(device::kMaxBlocks, residentBlockShare(2, 132, 1));
  EXPECT_EQ(132, residentBlockShare(2, 132, 2));
  EXPECT_EQ(33, residentBlockShare(2, 132, 8));
  EXPECT_EQ(1, residentBlockShare(0, 132, 8));
  EXPECT_EQ(16, residentBlockShare(1, 132, 8));
}

TEST(BufferLayout, RegionsAreAlignedAndLargeEnough) {
  for (size_t staging : {size_t{64} << 10, (size_t{64} << 10) + 16, size_t{16} << 20}) {
    const BufferLayout l = BufferLayout::forStaging(staging);
    EXPECT_EQ(0u, l.stagingOffset % 4096);
    EXPECT_EQ(0u, l.scratchOffset % 4096);
    EXPECT_GE(l.stagingOffset, sizeof(ControlBlock));
    EXPECT_GE(l.scratchOffset, l.stagingOffset + l.stagingBytes);
    EXPECT_GE(l.stagingBytes, staging);
    // Two-shot's slice of a full chunk, at two ranks, must fit the scratch buffer.
    const size_t vectors = l.stagingBytes / 16;
    EXPECT_GE(l.scratchBytes, (vectors + 1) / 2 * 16);
    EXPECT_GE(l.totalBytes, l.scratchOffset + l.scratchBytes);
  }
}

}  // namespace
}  // namespace tpcomm
