// Which path an all-reduce takes, and with how many blocks.
#pragma once

#include <cstddef>
#include <vector>

#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

enum class Route { kOneShot, kTwoShot, kPushOneShot, kPushTwoShot, kNccl };

// Routes that run one of tpcomm's push kernels (no barrier, receive buffers) rather than a pull
// kernel (barriers, staging buffers).
inline bool isPush(Route route) {
  return route == Route::kPushOneShot || route == Route::kPushTwoShot;
}

// A row of the algorithm table: messages of at most maxBytes on at most maxRanks ranks take
// `route`. Rows are tried in order and the first that matches wins, so a tuning tool can write a
// table from measured crossovers row by row.
struct RouteRule {
  int maxRanks;
  size_t maxBytes;
  Route route;
};

// The calls a route is chosen for, each with its own rows in the table.
enum class CallKind {
  kEager,      // tpcAllReduce
  kGraph,      // tpcAllReduce captured into a CUDA graph
  kAddRmsNorm  // tpcAllReduceAddRmsNorm, eager or captured
};

struct AlgorithmTable {
  std::vector<RouteRule> eager;
  std::vector<RouteRule> graph;
  std::vector<RouteRule> addRmsNorm;

  static AlgorithmTable defaults();
  Route lookup(int nranks, size_t bytes, CallKind kind) const;
};

// Everything besides the message that decides a call's route.
struct RoutePolicy {
  tpcAlgorithm_t forced = tpcAlgoAuto;  // TPCOMM_ALGO or config: wins over the table
  bool customPath = true;               // tpcomm's kernels may run (topology)
  bool ncclAvailable = false;
  size_t maxCustomBytes = 0;  // larger messages go to NCCL when it is there; 0: no limit
};

// The route of a call of `kind` whose type and operation the kernels support. Without NCCL the
// kernels take every size; without the custom path NCCL takes every call.
Route chooseRoute(const AlgorithmTable& table, const RoutePolicy& policy, int nranks, size_t bytes,
                  CallKind kind);

tpcAlgorithm_t routeAlgorithm(Route route);
const char* routeName(Route route);

// Published NVLink all-reduce kernels launch at most 24-36 blocks of 512 threads: more blocks
// contend on the links without gain. The pull kernels' cap when every rank has a device to itself.
constexpr int kNvlinkMaxBlocks = 36;

// Blocks of device::kBlockThreads threads for one pull kernel over `count` elements of `elemBytes`
// each: enough for one 16-byte vector per thread of the largest phase (a two-shot kernel's phases
// cover one slice), at least 1, at most `cap`.
int gridBlocks(Route route, int nranks, size_t count, size_t elemBytes, int cap);

struct LaunchShape {
  int blocks;
  int threads;
};

// The push kernels' grid: one 16-byte vector per thread of the largest phase while `cap` blocks
// allow, in blocks of device::kPushVectorsPerBlock to device::kBlockThreads threads (a multiple of
// 32), so that a small message leaves from many multiprocessors.
LaunchShape pushLaunchShape(Route route, int nranks, size_t count, size_t elemBytes, int cap);

// Rows up to which clusters hold the fused one-shot kernel's rows. On 2 H200s (NVLink), bf16: 1 row
// of 8192 took 4.5 us in a cluster of 8 blocks and 5.5 us in one block, 16 rows 5.1 and 6.4 us,
// 32 rows 6.6 us either way; more rows than 16 of 8192 need more blocks than a GPU has SMs.
constexpr int kFusedClusterRows = 16;

struct FusedShape {
  int blocks;
  bool rowClusters;
};

// The fused one-shot kernel's grid for `rows` rows of `hiddenVectors` vectors. For up to
// `clusterRows` rows (where that fits `cap`), a thread block cluster of device::rowBlocks blocks
// holds each row; otherwise a block holds a row at a time and the grid sends with a vector per
// thread where that takes more blocks than rows. At most `cap` blocks.
FusedShape fusedOneShotShape(size_t rows, uint32_t hiddenVectors, int clusterRows, int cap);

// How much of a message of `total` units one launch takes when at most `most` fit a launch: the
// fewest launches, of equal size rounded up to a multiple of `granule` (which must divide `most`),
// the last one what is left. A push launch empties the receive buffer of the launch before it
// with its own grid: a short last launch after full ones (32 MB at three ranks: 32 MB - 32 B, then
// 32 B) emptied a full launch's buffer with one block, 855 us; 146 in even launches (4 H200s).
size_t launchShare(size_t total, size_t most, size_t granule);

// Per-rank block cap from residency: blocksPerSm * smCount shared by the ranks on that device,
// clamped to [1, kMaxBlocks].
int residentBlockShare(int blocksPerSm, int smCount, int ranksOnDevice);

}  // namespace tpcomm
