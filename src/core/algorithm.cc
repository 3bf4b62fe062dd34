#include "core/algorithm.h"

#include <algorithm>

namespace tpcomm {

AlgorithmTable AlgorithmTable::defaults() {
  constexpr size_t KiB = 1024, MiB = 1024 * KiB, kAny = ~size_t{0};
  // From the crossovers published for peer-to-peer all-reduce on H100/H200 NVLink (vLLM's custom
  // all-reduce, MSCCL++): one-shot wins to about 512 KB up to four ranks and 256 KB up to eight;
  // two-shot then wins to 4-8 MB, where NCCL took over in runs that let it use NVLink multicast,
  // which tpcomm's NCCL does not; with two ranks two-shot moves as much data as one-shot and
  // waits at one more barrier. Graph and eager calls share the table until measurements on real
  // NVLink machines set them apart.
  const std::vector<RouteRule> rules = {
      {2, 8 * MiB, Route::kOneShot}, {2, kAny, Route::kNccl}, {4, 512 * KiB, Route::kOneShot},
      {4, 8 * MiB, Route::kTwoShot}, {4, kAny, Route::kNccl}, {8, 256 * KiB, Route::kOneShot},
      {8, 8 * MiB, Route::kTwoShot}, {8, kAny, Route::kNccl},
  };
  return AlgorithmTable{rules, rules};
}

Route AlgorithmTable::lookup(int nranks, size_t bytes, bool graphMode) const {
  for (const RouteRule& rule : graphMode ? graph : eager) {
    if (nranks <= rule.maxRanks && bytes <= rule.maxBytes) return rule.route;
  }
  return Route::kNccl;
}

Route chooseRoute(const AlgorithmTable& table, const RoutePolicy& policy, int nranks, size_t bytes,
                  bool graphMode) {
  if (!policy.customPath) return Route::kNccl;
  // The largest-message kernel when NCCL is not there to take over.
  const Route widest = nranks <= 2 ? Route::kOneShot : Route::kTwoShot;
  switch (policy.forced) {
    case tpcAlgoOneShot:
      return Route::kOneShot;
    case tpcAlgoTwoShot:
      return Route::kTwoShot;
    case tpcAlgoNccl:
      return policy.ncclAvailable ? Route::kNccl : widest;
    default:
      break;
  }
  if (policy.ncclAvailable && policy.maxCustomBytes != 0 && bytes > policy.maxCustomBytes) {
    return Route::kNccl;
  }
  const Route route = table.lookup(nranks, bytes, graphMode);
  return route == Route::kNccl && !policy.ncclAvailable ? widest : route;
}

tpcAlgorithm_t routeAlgorithm(Route route) {
  switch (route) {
    case Route::kOneShot:
      return tpcAlgoOneShot;
    case Route::kTwoShot:
      return tpcAlgoTwoShot;
    default:
      return tpcAlgoNccl;
  }
}

const char* routeName(Route route) {
  switch (route) {
    case Route::kOneShot:
      return "oneshot";
    case Route::kTwoShot:
      return "twoshot";
    default:
      return "nccl";
  }
}

int gridBlocks(Route route, int nranks, size_t count, size_t elemBytes, int cap) {
  const size_t elemsPerVec = 16 / elemBytes;
  size_t vectors = (count + elemsPerVec - 1) / elemsPerVec;
  if (route == Route::kTwoShot) vectors = (vectors + nranks - 1) / nranks;
  const size_t blocks = (vectors + device::kBlockThreads - 1) / device::kBlockThreads;
  return static_cast<int>(std::clamp<size_t>(blocks, 1, static_cast<size_t>(std::max(cap, 1))));
}

int residentBlockShare(int blocksPerSm, int smCount, int ranksOnDevice) {
  const int share = blocksPerSm * smCount / std::max(ranksOnDevice, 1);
  return std::clamp(share, 1, device::kMaxBlocks);
}

}  // namespace tpcomm
