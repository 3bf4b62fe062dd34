#include "core/algorithm.h"

#include <algorithm>

#include "core/config.h"

namespace tpcomm {

AlgorithmTable AlgorithmTable::defaults() {
  constexpr size_t KiB = 1024, MiB = 1024 * KiB, kAny = ~size_t{0};
  // Two ranks: measured by tpcomm-perf with forced kernels on 2 x H200 joined by NVLink, bf16,
  // NCCL 2.28 in the same runs, graph and eager alike. Push one-shot wins to 2 MB (graph: 10.6 us,
  // push two-shot 10.8, NCCL 27.7; with slots on 128-byte lines, tools/tune.py: 10.11 against
  // 10.16, and 1 MB a tie, 6.54 against 6.48), push two-shot from there to 256 MB (4 MB: 15.6
  // against 17.6; 256 MB: 787 against NCCL's 883). On 2 x H100, before push two-shot ran two blocks
  // a multiprocessor, the switch was at 1 MB and NCCL won above 128 MB. The pull kernels lose at
  // every size (8 KB: 7.5 us against 4.9 on 2 x H100). Push one-shot moves (n-1) times the message
  // per rank and push two-shot 2(n-1)/n of it, so one-shot wins while latency dominates. Four
  // ranks, measured on 4 x H200 (NVLink between every pair, graph, bf16, NCCL 2.28 in the same
  // run): push one-shot to 512 KB (8.2 us against push two-shot's 9.0), push two-shot beyond.
  // NCCL is faster from 64 MB there (319 against 331 us; 256 MB: 1179 against 1324) but keeps no
  // route: its ring rounds 16-bit partial sums at every step, which at three or more ranks breaks
  // the float32 accumulation tpcomm promises (float16, 64 Mi elements at three ranks: 10.5 M
  // elements beyond one rounding). tpcConfig_t's maxBytes (TPCOMM_MAX_BYTES) hands large
  // calls to NCCL for whoever prefers its speed. Three ranks take four's rows; on 3 of the 4 H200s
  // push one-shot took 3.1-3.3 us to 8 KB (1.13-1.31x NCCL on symmetric windows) and push two-shot
  // 1.07x NCCL at 32 MB, 0.92-0.94x from 128 MB. Eight: not measured; one-shot to 256 KB as
  // published peer-to-peer crossovers on H100/H200 put it, and two-shot beyond.
  const std::vector<RouteRule> rules = {
      {2, 2 * MiB, Route::kPushOneShot},   {2, kAny, Route::kPushTwoShot},
      {4, 512 * KiB, Route::kPushOneShot}, {4, kAny, Route::kPushTwoShot},
      {8, 256 * KiB, Route::kPushOneShot}, {8, kAny, Route::kPushTwoShot},
  };
  // The fused call, by tools/tune.py --fused on 4 x H200 (NVLink between every pair, graph,
  // bf16), at four ranks and on two of the GPUs, with the two-shot kernel that spreads few rows
  // over clusters and sends each row's inverse RMS (us, one-shot against two-shot). Two ranks
  // switch earlier than the all-reduce: 64 rows of 8192 (1 MB) 6.66 against 8.35, 128 of 5120
  // (1.25 MB) a tie, 8.73 against 8.76, 128 of 8192 (2 MB) 11.21 against 10.44; on a pair of
  // H200s 128 rows of 6144 (1.5 MB) 9.50 against 9.34, of 7168 10.42 against 9.85. Four ranks
  // switch at 640 KB: 64 rows of 5120 9.64 against 9.99, of 6144 (768 KB) 10.78 against 10.58, of
  // 7168 (896 KB) 12.16 against 11.46; rows of 2048, 4096 and 8192 take one-shot to 512 KB and
  // two-shot from 1 MB. Eight ranks: not measured, the all-reduce's rows.
  const std::vector<RouteRule> fused = {
      {2, 1280 * KiB, Route::kPushOneShot}, {2, kAny, Route::kPushTwoShot},
      {4, 640 * KiB, Route::kPushOneShot},  {4, kAny, Route::kPushTwoShot},
      {8, 256 * KiB, Route::kPushOneShot},  {8, kAny, Route::kPushTwoShot},
  };
  return AlgorithmTable{rules, rules, fused};
}

Route AlgorithmTable::lookup(int nranks, size_t bytes, CallKind kind) const {
  const std::vector<RouteRule>& rules = kind == CallKind::kAddRmsNorm ? addRmsNorm
                                        : kind == CallKind::kGraph    ? graph
                                                                      : eager;
  for (const RouteRule& rule : rules) {
    if (nranks <= rule.maxRanks && bytes <= rule.maxBytes) return rule.route;
  }
  return Route::kNccl;
}

Route chooseRoute(const AlgorithmTable& table, const RoutePolicy& policy, int nranks, size_t bytes,
                  CallKind kind) {
  if (!policy.customPath) return Route::kNccl;
  // The kernel that takes any size when NCCL is not there to take over.
  const Route widest = Route::kPushTwoShot;
  switch (policy.forced) {
    case tpcAlgoOneShot:
      return Route::kOneShot;
    case tpcAlgoTwoShot:
      return Route::kTwoShot;
    case tpcAlgoPushOneShot:
      return Route::kPushOneShot;
    case tpcAlgoPushTwoShot:
      return Route::kPushTwoShot;
    case tpcAlgoNccl:
      return policy.ncclAvailable ? Route::kNccl : widest;
    default:
      break;
  }
  if (policy.ncclAvailable && policy.maxCustomBytes != 0 && bytes > policy.maxCustomBytes) {
    return Route::kNccl;
  }
  const Route route = table.lookup(nranks, bytes, kind);
  return route == Route::kNccl && !policy.ncclAvailable ? widest : route;
}

tpcAlgorithm_t routeAlgorithm(Route route) {
  switch (route) {
    case Route::kOneShot:
      return tpcAlgoOneShot;
    case Route::kTwoShot:
      return tpcAlgoTwoShot;
    case Route::kPushOneShot:
      return tpcAlgoPushOneShot;
    case Route::kPushTwoShot:
      return tpcAlgoPushTwoShot;
    default:
      return tpcAlgoNccl;
  }
}

const char* routeName(Route route) { return algorithmName(routeAlgorithm(route)); }

namespace {

// 16-byte vectors of a kernel's largest phase: the message, or one rank's slice of it (two-shot).
size_t phaseVectors(Route route, int nranks, size_t count, size_t elemBytes) {
  const size_t elemsPerVec = 16 / elemBytes;
  const size_t vectors = (count + elemsPerVec - 1) / elemsPerVec;
  const bool twoShot = route == Route::kTwoShot || route == Route::kPushTwoShot;
  return twoShot ? (vectors + nranks - 1) / nranks : vectors;
}

// The largest cluster, of at most device::rowBlocks(hiddenVectors) blocks, of which `groups`
// fit at once both in `clusters` and within `blockCap` blocks; 1 where none of 2 or more does.
// `exact`: only clusters whose threads hold exactly a row's vectors.
int largestRowCluster(size_t groups, uint32_t hiddenVectors, const RowClusters& clusters,
                      size_t blockCap, bool exact = false) {
  for (int c = device::rowBlocks(hiddenVectors); c > 1; --c) {
    const size_t held = static_cast<size_t>(std::max(clusters[c], 0));
    if (exact &&
        static_cast<uint32_t>(c * device::rowClusterThreads(hiddenVectors, c)) != hiddenVectors) {
      continue;
    }
    if (groups <= held && groups * static_cast<size_t>(c) <= blockCap) return c;
  }
  return 1;
}

}  // namespace

int gridBlocks(Route route, int nranks, size_t count, size_t elemBytes, int cap) {
  const size_t vectors = phaseVectors(route, nranks, count, elemBytes);
  const size_t blocks = (vectors + device::kBlockThreads - 1) / device::kBlockThreads;
  return static_cast<int>(std::clamp<size_t>(blocks, 1, static_cast<size_t>(std::max(cap, 1))));
}

LaunchShape pushLaunchShape(Route route, int nranks, size_t count, size_t elemBytes, int cap) {
  const size_t vectors = phaseVectors(route, nranks, count, elemBytes);
  const size_t blockCap = static_cast<size_t>(std::max(cap, 1));
  const size_t perBlock = ((vectors + blockCap - 1) / blockCap + 31) / 32 * 32;
  const size_t threads =
      std::clamp<size_t>(perBlock, device::kPushVectorsPerBlock, device::kBlockThreads);
  const size_t blocks = std::clamp<size_t>(
      std::max<size_t>((vectors + threads - 1) / threads, kPushMinBlocks), 1, blockCap);
  return LaunchShape{static_cast<int>(blocks), static_cast<int>(threads)};
}

FusedShape fusedOneShotShape(size_t rows, uint32_t hiddenVectors, const RowClusters& clusters,
                             int cap, bool inPlace) {
  const size_t blockCap = static_cast<size_t>(std::max(cap, 1));
  const int c = largestRowCluster(rows, hiddenVectors, clusters, blockCap, inPlace);
  if (c == 1 && inPlace &&
      static_cast<uint32_t>(device::rowThreads(hiddenVectors)) != hiddenVectors) {
    const size_t blocks = std::max(rows, kPushMinBlocks);
    return FusedShape{static_cast<int>(std::clamp<size_t>(blocks, 1, blockCap)), 1, true};
  }
  if (c > 1) {
    const size_t cluster = static_cast<size_t>(c);
    const size_t held = static_cast<size_t>(std::max(clusters[c], 0));
    // Clusters beyond the last row only send, and empty the last launch's buffers.
    const size_t groups = std::min(std::max(rows, (kPushMinBlocks + cluster - 1) / cluster),
                                   std::min(held, blockCap / cluster));
    return FusedShape{static_cast<int>(groups * cluster), c};
  }
  const size_t threads = static_cast<size_t>(device::rowThreads(hiddenVectors));
  const size_t senders = (rows * hiddenVectors + threads - 1) / threads;
  const size_t blocks = std::max({rows, senders, kPushMinBlocks});
  return FusedShape{static_cast<int>(std::clamp<size_t>(blocks, 1, blockCap)), 1};
}

FusedShape fusedTwoShotShape(size_t rows, int nranks, uint32_t hiddenVectors,
                             const RowClusters& clusters, int cap) {
  const size_t blockCap = static_cast<size_t>(std::max(cap, 1));
  const size_t ranks = static_cast<size_t>(std::max(nranks, 1));
  const size_t perRank = (rows + ranks - 1) / ranks;
  const int c = largestRowCluster(perRank, hiddenVectors, clusters, blockCap);
  if (c > 1) {
    const size_t cluster = static_cast<size_t>(c);
    const size_t held = static_cast<size_t>(std::max(clusters[c], 0));
    const size_t groups = std::min({rows, held, blockCap / cluster});
    return FusedShape{static_cast<int>(groups * cluster), c};
  }
  return FusedShape{static_cast<int>(std::clamp<size_t>(rows, 1, blockCap)), 1};
}

size_t launchShare(size_t total, size_t most, size_t granule) {
  if (total == 0 || most == 0) return most;
  const size_t launches = (total + most - 1) / most;
  const size_t share = (total + launches - 1) / launches;
  return (share + granule - 1) / granule * granule;
}

int residentBlockShare(int blocksPerSm, int smCount, int ranksOnDevice) {
  const int share = blocksPerSm * smCount / std::max(ranksOnDevice, 1);
  return std::clamp(share, 1, device::kMaxBlocks);
}

}  // namespace tpcomm
