#include "core/algorithm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <utility>

#include "memory/shared_buffer.h"

namespace tpcomm {
namespace {

constexpr size_t KiB = 1024, MiB = 1024 * KiB;

RoutePolicy withNccl(bool nccl) {
  RoutePolicy p;
  p.ncclAvailable = nccl;
  return p;
}

Route route(const RoutePolicy& policy, int nranks, size_t bytes, bool graph = false) {
  return chooseRoute(AlgorithmTable::defaults(), policy, nranks, bytes,
                     graph ? CallKind::kGraph : CallKind::kEager);
}

Route addRmsNormRoute(const RoutePolicy& policy, int nranks, size_t bytes) {
  return chooseRoute(AlgorithmTable::defaults(), policy, nranks, bytes, CallKind::kAddRmsNorm);
}

TEST(AlgorithmTable, DefaultCrossoversByWorldSize) {
  const RoutePolicy p = withNccl(true);
  EXPECT_EQ(Route::kPushOneShot, route(p, 2, 8));
  EXPECT_EQ(Route::kPushOneShot, route(p, 2, 2 * MiB));
  EXPECT_EQ(Route::kPushTwoShot, route(p, 2, 2 * MiB + 1));
  EXPECT_EQ(Route::kPushTwoShot, route(p, 2, 256 * MiB)) << "measured faster than NCCL";
  EXPECT_EQ(Route::kPushTwoShot, route(withNccl(false), 2, 256 * MiB));
  for (int n : {3, 4}) {
    EXPECT_EQ(Route::kPushOneShot, route(p, n, 512 * KiB)) << n;
    EXPECT_EQ(Route::kPushTwoShot, route(p, n, 512 * KiB + 1)) << n;
    EXPECT_EQ(Route::kPushTwoShot, route(p, n, 256 * MiB))
        << n << ": NCCL is faster there, but its 16-bit sums are not accumulated in float32";
  }
  for (int n : {5, 6, 7, 8}) {
    EXPECT_EQ(Route::kPushOneShot, route(p, n, 256 * KiB)) << n;
    EXPECT_EQ(Route::kPushTwoShot, route(p, n, 256 * KiB + 1)) << n;
  }
  for (bool graph : {false, true}) EXPECT_EQ(Route::kPushOneShot, route(p, 8, 8 * KiB, graph));
}

TEST(AlgorithmTable, TheFusedCallSwitchesWhereItWasMeasured) {
  const RoutePolicy p = withNccl(true);
  EXPECT_EQ(Route::kPushOneShot, addRmsNormRoute(p, 2, 16 * KiB));
  EXPECT_EQ(Route::kPushOneShot, addRmsNormRoute(p, 2, 1280 * KiB)) << "128 rows of 5120";
  EXPECT_EQ(Route::kPushTwoShot, addRmsNormRoute(p, 2, 1280 * KiB + 1));
  EXPECT_EQ(Route::kPushTwoShot, addRmsNormRoute(p, 2, 2 * MiB)) << "128 rows of 8192";
  EXPECT_EQ(Route::kPushTwoShot, addRmsNormRoute(p, 2, 256 * MiB));
  EXPECT_EQ(Route::kPushTwoShot, addRmsNormRoute(withNccl(false), 2, 256 * MiB));
  for (int n : {3, 4}) {
    EXPECT_EQ(Route::kPushOneShot, addRmsNormRoute(p, n, 640 * KiB)) << n << ": 64 rows of 5120";
    EXPECT_EQ(Route::kPushTwoShot, addRmsNormRoute(p, n, 768 * KiB)) << n << ": 64 rows of 6144";
    EXPECT_EQ(Route::kPushTwoShot, addRmsNormRoute(p, n, 1 * MiB)) << n << ": 64 rows of 8192";
  }
  // Elsewhere the fused call switches where the all-reduce does.
  for (int n = 2; n <= 8; ++n) {
    for (size_t bytes : {8 * KiB, 256 * KiB, 256 * KiB + 1, 64 * MiB}) {
      EXPECT_EQ(route(p, n, bytes), addRmsNormRoute(p, n, bytes)) << n << " ranks, " << bytes;
    }
    if (n != 3 && n != 4) {
      EXPECT_EQ(route(p, n, 512 * KiB + 1), addRmsNormRoute(p, n, 512 * KiB + 1)) << n;
    }
  }
  RoutePolicy forced = p;
  forced.forced = tpcAlgoPushTwoShot;
  EXPECT_EQ(Route::kPushTwoShot, addRmsNormRoute(forced, 2, 16 * KiB));
}

// NCCL rounds 16-bit partial sums at three or more ranks, so a default row for NCCL would make a
// call's accuracy depend on its size: tpcAllReduce promises float32 accumulation.
TEST(AlgorithmTable, DefaultsGiveNcclNoCallTheKernelsTake) {
  const RoutePolicy p = withNccl(true);
  for (int n = 2; n <= 8; ++n) {
    for (size_t bytes = 1; bytes <= (size_t{1} << 40); bytes *= 4) {
      for (CallKind kind : {CallKind::kEager, CallKind::kGraph, CallKind::kAddRmsNorm}) {
        EXPECT_NE(Route::kNccl, chooseRoute(AlgorithmTable::defaults(), p, n, bytes, kind))
            << n << " ranks, " << bytes << " bytes, kind " << static_cast<int>(kind);
      }
    }
  }
}

TEST(AlgorithmTable, WithoutNcclTheKernelsTakeEverySize) {
  const RoutePolicy p = withNccl(false);
  AlgorithmTable t;
  t.eager = t.graph = {{8, 1 * MiB, Route::kPushOneShot}, {8, ~size_t{0}, Route::kNccl}};
  EXPECT_EQ(Route::kPushOneShot, chooseRoute(t, p, 2, 1 * MiB, CallKind::kEager));
  EXPECT_EQ(Route::kPushTwoShot, chooseRoute(t, p, 2, size_t{1} << 40, CallKind::kEager))
      << "a row for NCCL falls to the kernel that takes any size";
  EXPECT_EQ(Route::kPushTwoShot, chooseRoute(t, p, 8, 64 * MiB, CallKind::kGraph));
}

TEST(AlgorithmTable, WithoutTheCustomPathNcclTakesEverything) {
  RoutePolicy p = withNccl(true);
  p.customPath = false;
  p.forced = tpcAlgoOneShot;  // a forced kernel cannot run where the kernels cannot
  EXPECT_EQ(Route::kNccl, route(p, 2, 8));
  EXPECT_EQ(Route::kNccl, route(p, 8, 64 * MiB));
}

TEST(AlgorithmTable, ForcedAlgorithmWins) {
  RoutePolicy p = withNccl(true);
  p.forced = tpcAlgoTwoShot;
  EXPECT_EQ(Route::kTwoShot, route(p, 2, 8));
  EXPECT_EQ(Route::kTwoShot, route(p, 8, size_t{1} << 30));
  p.forced = tpcAlgoOneShot;
  EXPECT_EQ(Route::kOneShot, route(p, 8, size_t{1} << 30));
  p.forced = tpcAlgoPushOneShot;
  EXPECT_EQ(Route::kPushOneShot, route(p, 8, size_t{1} << 30));
  p.forced = tpcAlgoPushTwoShot;
  EXPECT_EQ(Route::kPushTwoShot, route(p, 2, 8));
  p.forced = tpcAlgoNccl;
  EXPECT_EQ(Route::kNccl, route(p, 8, 8));
  p.ncclAvailable = false;
  EXPECT_EQ(Route::kPushTwoShot, route(p, 2, 8)) << "forcing NCCL without NCCL keeps the kernels";
}

TEST(AlgorithmTable, MaxBytesSendsLargerMessagesToNccl) {
  RoutePolicy p = withNccl(true);
  p.maxCustomBytes = 64 * KiB;
  EXPECT_EQ(Route::kPushOneShot, route(p, 8, 64 * KiB));
  EXPECT_EQ(Route::kNccl, route(p, 8, 64 * KiB + 1));
  p.ncclAvailable = false;
  EXPECT_EQ(Route::kPushTwoShot, route(p, 8, 1 * MiB)) << "no NCCL to hand it to";
}

TEST(AlgorithmTable, RowsAreTriedInOrder) {
  AlgorithmTable t;
  t.eager = {{8, 1 * KiB, Route::kTwoShot}, {8, ~size_t{0}, Route::kOneShot}};
  t.graph = {{4, ~size_t{0}, Route::kNccl}};
  t.addRmsNorm = {{8, 8, Route::kPushTwoShot}};
  EXPECT_EQ(Route::kTwoShot, t.lookup(8, 1 * KiB, CallKind::kEager));
  EXPECT_EQ(Route::kOneShot, t.lookup(8, 1 * KiB + 1, CallKind::kEager));
  EXPECT_EQ(Route::kNccl, t.lookup(4, 8, CallKind::kGraph));
  EXPECT_EQ(Route::kNccl, t.lookup(8, 8, CallKind::kGraph)) << "no matching row: NCCL";
  EXPECT_EQ(Route::kPushTwoShot, t.lookup(8, 8, CallKind::kAddRmsNorm));
  EXPECT_EQ(Route::kNccl, t.lookup(8, 9, CallKind::kAddRmsNorm));
}

TEST(AlgorithmTable, RouteNames) {
  EXPECT_EQ(tpcAlgoOneShot, routeAlgorithm(Route::kOneShot));
  EXPECT_EQ(tpcAlgoTwoShot, routeAlgorithm(Route::kTwoShot));
  EXPECT_EQ(tpcAlgoPushOneShot, routeAlgorithm(Route::kPushOneShot));
  EXPECT_EQ(tpcAlgoPushTwoShot, routeAlgorithm(Route::kPushTwoShot));
  EXPECT_EQ(tpcAlgoNccl, routeAlgorithm(Route::kNccl));
  EXPECT_STREQ("twoshot", routeName(Route::kTwoShot));
  EXPECT_STREQ("push-oneshot", routeName(Route::kPushOneShot));
  EXPECT_STREQ("push-twoshot", routeName(Route::kPushTwoShot));
  EXPECT_TRUE(isPush(Route::kPushTwoShot));
  EXPECT_FALSE(isPush(Route::kOneShot));
}

TEST(Algorithm, GridCoversOneVectorPerThread) {
  const size_t threads = device::kBlockThreads;
  EXPECT_EQ(1, gridBlocks(Route::kOneShot, 4, 1, 2, 36));
  EXPECT_EQ(1, gridBlocks(Route::kOneShot, 4, threads * 8, 2, 36));      // 512 bf16 vectors
  EXPECT_EQ(2, gridBlocks(Route::kOneShot, 4, threads * 8 + 1, 2, 36));  // one more element
  EXPECT_EQ(2, gridBlocks(Route::kOneShot, 4, threads * 4 + 1, 4, 36));  // float32
  EXPECT_EQ(36, gridBlocks(Route::kOneShot, 4, size_t{1} << 30, 2, 36));
  // Two-shot spreads each slice, 1/nranks of the vectors, over the grid.
  EXPECT_EQ(1, gridBlocks(Route::kTwoShot, 4, threads * 8 * 4, 2, 36));
  EXPECT_EQ(2, gridBlocks(Route::kTwoShot, 4, threads * 8 * 4 + 8 * 4, 2, 36));
  EXPECT_EQ(1, gridBlocks(Route::kTwoShot, 8, 0, 2, 36));
}

TEST(Algorithm, PushGridSpreadsSmallMessagesOverBlocks) {
  auto shape = [](Route route, int nranks, size_t bytes, int cap) {
    const LaunchShape s = pushLaunchShape(route, nranks, bytes / 2, 2, cap);
    return std::make_pair(s.blocks, s.threads);
  };
  const int least = device::kPushVectorsPerBlock;
  const int fewest = static_cast<int>(kPushMinBlocks);
  // A small message still launches kPushMinBlocks blocks, to empty the last launch's buffers.
  EXPECT_EQ(std::make_pair(fewest, least), shape(Route::kPushOneShot, 2, 8, 132));
  EXPECT_EQ(std::make_pair(fewest, least), shape(Route::kPushOneShot, 2, 0, 132));
  EXPECT_EQ(std::make_pair(fewest, least), shape(Route::kPushOneShot, 2, 8 << 10, 132));
  // 64 KB: 4096 vectors, a vector per thread over 32 blocks; 128 KB over 64.
  EXPECT_EQ(std::make_pair(4096 / least, least), shape(Route::kPushOneShot, 2, 64 << 10, 132));
  EXPECT_EQ(std::make_pair(8192 / least, least), shape(Route::kPushOneShot, 2, 128 << 10, 132));
  // 256 KB: 16384 vectors over 132 blocks round up to 128 threads each.
  EXPECT_EQ(std::make_pair(128, 128), shape(Route::kPushOneShot, 2, 256 << 10, 132));
  // 1 MB: 65536 vectors need the widest blocks.
  EXPECT_EQ(std::make_pair(128, device::kBlockThreads),
            shape(Route::kPushOneShot, 2, 1 << 20, 132));
  // Beyond the cap a thread takes several vectors.
  EXPECT_EQ(std::make_pair(132, device::kBlockThreads),
            shape(Route::kPushOneShot, 2, size_t{1} << 30, 132));
  EXPECT_EQ(std::make_pair(1, device::kBlockThreads), shape(Route::kPushOneShot, 2, 8 << 10, 1));
  // Two-shot spreads one slice: 1 MB over 4 ranks is 16384 vectors.
  EXPECT_EQ(std::make_pair(128, least), shape(Route::kPushTwoShot, 4, 1 << 20, 132));
  // The cap bounds the fewest blocks too.
  EXPECT_EQ(std::make_pair(16, least), shape(Route::kPushOneShot, 2, 8, 16));
  EXPECT_EQ(std::make_pair(2, 256), shape(Route::kPushOneShot, 2, 8 << 10, 2));
}

TEST(Algorithm, FusedOneShotSpreadsFewRowsOverClusters) {
  auto held = [](int n) {
    RowClusters clusters;
    clusters.fill(n);
    return clusters;
  };
  auto shape = [](size_t rows, uint32_t hiddenVectors, const RowClusters& clusters, int cap) {
    const FusedShape s = fusedOneShotShape(rows, hiddenVectors, clusters, cap);
    return std::make_pair(s.blocks, s.clusterBlocks);
  };
  // Hidden 8192 (bf16, 1024 vectors): a cluster of 8 blocks a row while the rows are few, and at
  // least kPushMinBlocks blocks (clusters beyond the rows only send).
  EXPECT_EQ(std::make_pair(32, 8), shape(1, 1024, held(32), 132));
  EXPECT_EQ(std::make_pair(128, 8), shape(16, 1024, held(32), 132));
  // More rows take smaller clusters, as long as every row has one within the cap.
  EXPECT_EQ(std::make_pair(119, 7), shape(17, 1024, held(32), 132));
  EXPECT_EQ(std::make_pair(128, 4), shape(32, 1024, held(32), 132));
  EXPECT_EQ(std::make_pair(128, 2), shape(64, 1024, held(64), 132));
  // Beyond them, a block a row (of 512 threads, two vectors each), and as many blocks again to send
  // a vector per thread.
  EXPECT_EQ(std::make_pair(132, 1), shape(66, 1024, held(64), 132));
  EXPECT_EQ(std::make_pair(128, 1), shape(64, 1024, held(32), 132));
  // Only clusters the device holds for every row: here those of 2 blocks.
  RowClusters fewLarge = held(64);
  for (int c = 3; c <= device::kMaxRowBlocks; ++c) fewLarge[c] = 4;
  EXPECT_EQ(std::make_pair(32, 8), shape(1, 1024, fewLarge, 132));
  EXPECT_EQ(std::make_pair(32, 2), shape(5, 1024, fewLarge, 132));
  // Fewer clusters held than kPushMinBlocks asks for: no more than that.
  EXPECT_EQ(std::make_pair(16, 8), shape(1, 1024, held(2), 132));
  // Without clusters, a block a row, and at least kPushMinBlocks.
  EXPECT_EQ(std::make_pair(32, 1), shape(1, 1024, held(0), 132));
  // Hidden 5120: clusters of up to 5 blocks.
  EXPECT_EQ(std::make_pair(35, 5), shape(2, 640, held(32), 132));
  EXPECT_EQ(std::make_pair(128, 4), shape(32, 640, held(32), 132));
  EXPECT_EQ(std::make_pair(102, 3), shape(34, 640, held(34), 132));
  // The block cap bounds the clusters too.
  EXPECT_EQ(std::make_pair(36, 6), shape(6, 1024, held(32), 40));
  EXPECT_EQ(std::make_pair(3, 1), shape(3, 1024, held(32), 3));
  // A row of one block's worth stays in one block.
  EXPECT_EQ(std::make_pair(32, 1), shape(1, 100, held(32), 132));
}

// In place, only grids in which the thread that sends a vector normalises it: clusters whose
// threads hold exactly a row, or blocks of a vector a thread, or else blocks that send the rows
// they normalise.
TEST(Algorithm, FusedOneShotInPlaceSendsEveryRowFromItsOwnThreads) {
  RowClusters clusters;
  clusters.fill(64);
  auto shape = [&](size_t rows, uint32_t hiddenVectors) {
    const FusedShape s = fusedOneShotShape(rows, hiddenVectors, clusters, 132, true);
    EXPECT_FALSE(s.ownerSends) << rows << " rows of " << hiddenVectors << " vectors";
    return std::make_pair(s.blocks, s.clusterBlocks);
  };
  auto ownerSends = [&](size_t rows, uint32_t hiddenVectors) {
    const FusedShape s = fusedOneShotShape(rows, hiddenVectors, clusters, 132, true);
    EXPECT_TRUE(s.ownerSends) << rows << " rows of " << hiddenVectors << " vectors";
    EXPECT_FALSE(fusedOneShotShape(rows, hiddenVectors, clusters, 132).ownerSends);
    return std::make_pair(s.blocks, s.clusterBlocks);
  };
  // Rows of 8192: clusters of 8 x 128 and 4 x 256 as out of place; 7 x 160 and 3 x 352 threads
  // would hold more than a row, so 17 and 34 rows take 4 x 256 and 2 x 512.
  EXPECT_EQ(std::make_pair(32, 8), shape(1, 1024));
  EXPECT_EQ(7, fusedOneShotShape(17, 1024, clusters, 132).clusterBlocks);
  EXPECT_EQ(std::make_pair(68, 4), shape(17, 1024));
  EXPECT_EQ(std::make_pair(68, 2), shape(34, 1024));
  // A block of 512 threads holds two vectors of each row: a block a row, sending its own.
  EXPECT_EQ(std::make_pair(67, 1), ownerSends(67, 1024));
  EXPECT_EQ(std::make_pair(132, 1), ownerSends(200, 640));
  // Rows of 5120 over 3 x 224 threads out of place, 2 x 320 in place.
  EXPECT_EQ(3, fusedOneShotShape(34, 640, clusters, 132).clusterBlocks);
  EXPECT_EQ(std::make_pair(68, 2), shape(34, 640));
  // Rows of 2048 (256 vectors): a block of 256 threads, a vector each, once clusters run out.
  EXPECT_EQ(std::make_pair(132, 1), shape(132, 256));
  // Rows of 1000 (125 vectors) fill no warp exactly: at least kPushMinBlocks blocks, each
  // sending the row it normalises.
  EXPECT_EQ(std::make_pair(32, 1), ownerSends(1, 125));
}

TEST(Algorithm, FusedTwoShotSpreadsASlicesRowsOverClusters) {
  auto held = [](int n) {
    RowClusters clusters;
    clusters.fill(n);
    return clusters;
  };
  auto shape = [](size_t rows, int nranks, uint32_t hiddenVectors, const RowClusters& clusters,
                  int cap) {
    const FusedShape s = fusedTwoShotShape(rows, nranks, hiddenVectors, clusters, cap);
    return std::make_pair(s.blocks, s.clusterBlocks);
  };
  // Hidden 8192 (1024 vectors) at four ranks: 64 rows are slices of 16, a cluster of 8 a row,
  // and as many clusters as the cap holds (they send and normalise the other slices' rows).
  EXPECT_EQ(std::make_pair(128, 8), shape(64, 4, 1024, held(32), 132));
  EXPECT_EQ(std::make_pair(128, 4), shape(128, 4, 1024, held(32), 132));
  EXPECT_EQ(std::make_pair(128, 2), shape(256, 4, 1024, held(64), 132));
  // A slice of more rows than the cap holds in clusters of 2: a block a row, up to the cap.
  EXPECT_EQ(std::make_pair(132, 1), shape(512, 4, 1024, held(64), 132));
  EXPECT_EQ(std::make_pair(132, 1), shape(256, 2, 1024, held(64), 132));
  // No more clusters than rows; none where the device holds fewer than a slice's rows.
  EXPECT_EQ(std::make_pair(24, 8), shape(3, 2, 1024, held(32), 132));
  EXPECT_EQ(std::make_pair(64, 1), shape(64, 4, 1024, held(15), 132));
  EXPECT_EQ(std::make_pair(128, 8), shape(64, 4, 1024, held(16), 132));
  // Only clusters held for every row of a slice: here those of 2 blocks.
  RowClusters fewLarge = held(64);
  for (int c = 3; c <= device::kMaxRowBlocks; ++c) fewLarge[c] = 8;
  EXPECT_EQ(std::make_pair(128, 2), shape(64, 4, 1024, fewLarge, 132));
  // Without clusters, a block a row.
  EXPECT_EQ(std::make_pair(64, 1), shape(64, 4, 1024, held(0), 132));
  // Hidden 5120: clusters of up to 5 blocks; the block cap bounds them.
  EXPECT_EQ(std::make_pair(130, 5), shape(64, 4, 640, held(32), 132));
  EXPECT_EQ(std::make_pair(32, 2), shape(64, 4, 640, held(32), 33));
  EXPECT_EQ(std::make_pair(33, 1), shape(128, 2, 640, held(32), 33));
  // A row of one block's worth stays in one block.
  EXPECT_EQ(std::make_pair(64, 1), shape(64, 4, 100, held(32), 132));
}

// The fused one-shot kernel at two ranks polls a row's vectors staggered where every thread of the
// cluster holds one of them at most: so it does in every cluster whose blocks take a block's
// worth of vectors or fewer each (every cluster of a row of up to 8192 16-bit elements).
TEST(Algorithm, RowClustersHoldAVectorAThreadAtMost) {
  const uint32_t largest = device::kMaxRowVectors * device::kBlockThreads;
  for (uint32_t hv = 1; hv <= largest; ++hv) {
    for (int c = 2; c <= device::rowBlocks(hv); ++c) {
      const uint32_t share = (hv + c - 1) / c;
      const uint32_t held = static_cast<uint32_t>(device::rowClusterThreads(hv, c) * c);
      if (share <= static_cast<uint32_t>(device::kBlockThreads)) {
        ASSERT_GE(held, hv) << hv << " vectors over " << c << " blocks";
      } else {
        ASSERT_LT(held, hv) << hv << " vectors over " << c << " blocks";
      }
    }
  }
}

// The device is asked how many clusters of c blocks it holds in blocks of
// largestRowClusterThreads(c) threads: no row may take more. (Asked at the largest row's, 352
// threads over 3 blocks, it would count for rows of 1441-1536 vectors, which take 512.)
TEST(Algorithm, RowClustersAreCountedAtTheirLargestBlocks) {
  const uint32_t largest = device::kMaxRowVectors * device::kBlockThreads;
  for (uint32_t hv = 1; hv <= largest; ++hv) {
    for (int c = 2; c <= device::rowBlocks(hv); ++c) {
      ASSERT_LE(device::rowClusterThreads(hv, c), device::largestRowClusterThreads(c))
          << hv << " vectors over " << c << " blocks";
    }
  }
  EXPECT_EQ(512, device::rowClusterThreads(1536, 3));
  EXPECT_EQ(352, device::rowClusterThreads(largest, 3));
}

TEST(Algorithm, ResidentShareKeepsEveryRankResident) {
  EXPECT_EQ(device::kMaxBlocks, residentBlockShare(2, 132, 1));
  EXPECT_EQ(132, residentBlockShare(2, 132, 2));
  EXPECT_EQ(33, residentBlockShare(2, 132, 8));
  EXPECT_EQ(1, residentBlockShare(0, 132, 8));
  EXPECT_EQ(16, residentBlockShare(1, 132, 8));
}

// A message split over launches: as few as fit, of equal size but for the rounding, so that no
// short launch follows a full one (it would empty the full one's buffers with its small grid).
TEST(Algorithm, LaunchesShareAMessageEvenly) {
  // 32 MiB of bf16 at three ranks, whose push two-shot launch carries 32 MiB - 32 B.
  const size_t most = (32 * MiB - 32) / 2;
  EXPECT_EQ(8 * MiB, launchShare(16 * MiB, most, 8));
  EXPECT_EQ(most, launchShare(most, most, 8));
  EXPECT_EQ(100u, launchShare(100, 100, 4));
  EXPECT_EQ(52u, launchShare(101, 100, 4));
  EXPECT_EQ(1u, launchShare(1, 100, 1));
  for (size_t granule : {1, 2, 8}) {
    for (size_t most : {granule, 8 * granule, 1000 * granule}) {
      for (size_t total = 1; total < 5 * most; total += most / 7 + 1) {
        const size_t share = launchShare(total, most, granule);
        EXPECT_LE(share, most);
        EXPECT_EQ(0u, share % granule);
        const size_t launches = (total + share - 1) / share;
        EXPECT_EQ((total + most - 1) / most, launches) << total << " of " << most;
        const size_t last = total - (launches - 1) * share;
        EXPECT_GE(last + launches * granule, share) << total << " of " << most;
      }
    }
  }
}

TEST(BufferLayout, RegionsAreAlignedAndLargeEnough) {
  for (size_t staging : {size_t{64} << 10, (size_t{64} << 10) + 16, size_t{16} << 20}) {
    const BufferLayout l = BufferLayout::make(staging, 8 * MiB, 4);
    EXPECT_EQ(0u, l.stagingOffset % 4096);
    EXPECT_EQ(0u, l.scratchOffset % 4096);
    EXPECT_GE(l.stagingOffset, sizeof(ControlBlock));
    EXPECT_GE(l.scratchOffset, l.stagingOffset + l.stagingBytes);
    EXPECT_GE(l.stagingBytes, staging);
    // Two-shot's slice of a full chunk, at two ranks, must fit the scratch buffer.
    const size_t vectors = l.stagingBytes / 16;
    EXPECT_GE(l.scratchBytes, (vectors + 1) / 2 * 16);
    EXPECT_GE(l.push[0].offset, l.scratchOffset + l.scratchBytes);
    EXPECT_GE(l.push[1].offset, l.push[0].offset + l.push[0].bytes());
    EXPECT_GE(l.totalBytes, l.push[1].offset + l.push[1].bytes());
  }
}

// A push launch's message fits its slots: one-shot, a whole chunk per peer slot; two-shot, a
// slice of a chunk per slot; and the buffers stay near the budget the configuration sets.
TEST(BufferLayout, PushChunksFitTheirSlots) {
  for (int n : {2, 3, 5, 8}) {
    for (size_t budget : {64 * KiB, 8 * MiB, 8 * MiB + 48, 32 * MiB}) {
      const BufferLayout l = BufferLayout::make(1 * MiB, budget, n);
      const ReceiveRegion& one = l.receive(device::kPushOneShot);
      const ReceiveRegion& two = l.receive(device::kPushTwoShot);
      EXPECT_EQ(0u, one.chunkBytes % 16);
      EXPECT_EQ(0u, two.chunkBytes % (16 * n));
      EXPECT_GE(one.slotVectors, device::kSlotDataVector + one.chunkBytes / 16)
          << "tag line plus a whole chunk";
      EXPECT_GE(two.slotVectors, device::kSlotDataVector + two.chunkBytes / 16 / n);
      // Slots, and so every slot's data, start on 128-byte lines (regions start on pages).
      EXPECT_EQ(0u, one.slotVectors % device::kSlotDataVector);
      EXPECT_EQ(0u, two.slotVectors % device::kSlotDataVector);
      EXPECT_EQ(static_cast<size_t>(n - 1) * one.slotVectors * 16, one.bufferBytes);
      EXPECT_EQ(static_cast<size_t>(2 * (n - 1)) * two.slotVectors * 16, two.bufferBytes);
      // Push one-shot's buffers stop growing at kPushOneShotBytes; push two-shot's do not.
      const size_t oneShotBudget = std::min(budget, kPushOneShotBytes);
      EXPECT_LE(one.chunkBytes * (n - 1), oneShotBudget);
      EXPECT_GT((one.chunkBytes + 16) * (n - 1), oneShotBudget);
      EXPECT_GT(two.chunkBytes + 16 * n, budget);
      EXPECT_LE(two.chunkBytes, budget);
      // 9 (n - 1) slots in all, each with a tag line and less than a line of rounding.
      EXPECT_LE(one.bytes() + two.bytes(), 9 * budget + 9 * (n - 1) * 256) << n << " ranks";
      EXPECT_EQ(0u, one.offset % 4096);
      EXPECT_EQ(0u, two.offset % 4096);
    }
  }
  const BufferLayout single = BufferLayout::make(1 * MiB, 8 * MiB, 1);
  EXPECT_EQ(0u, single.push[0].bytes() + single.push[1].bytes()) << "one rank pushes nothing";
}

}  // namespace
}  // namespace tpcomm
