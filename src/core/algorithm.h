// Which path an all-reduce takes, and with how many blocks.
#pragma once

#include <array>
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

// The fewest blocks of a push launch where the cap allows. A launch empties the receive buffer of
// the launch before it with its whole grid, and a small one after a large one did that from one
// block: on 2 H200s the first 16-byte call after one of 2 MB took 32 us longer than the next, 1 us
// longer in 32 blocks. Small calls took as long or less (graph, 8 B 2.85 us either way, 2 KB 3.00
// -> 2.91, 8 KB 2.99 -> 2.94): the rotation's and the reset's stores spread over more blocks.
constexpr size_t kPushMinBlocks = 32;

// The push kernels' grid: one 16-byte vector per thread of the largest phase while `cap` blocks
// allow, in blocks of device::kPushVectorsPerBlock to device::kBlockThreads threads (a multiple of
// 32), so that a small message leaves from many multiprocessors; at least kPushMinBlocks blocks.
LaunchShape pushLaunchShape(Route route, int nranks, size_t count, size_t elemBytes, int cap);

// clusters[c]: thread block clusters of c blocks of the fused kernels that each rank may keep
// resident at once (0 where the device launches none).
using RowClusters = std::array<int, device::kMaxRowBlocks + 1>;

struct FusedShape {
  int blocks;
  int clusterBlocks;        // blocks of the cluster that holds a row; 1: a block holds a row
  bool ownerSends = false;  // each block sends the rows it normalises (fused one-shot, in place)
};

// The fused one-shot kernel's grid for `rows` rows of `hiddenVectors` vectors. A row is spread over
// the largest cluster of at most device::rowBlocks blocks that lets every row have one within `cap`
// blocks and `clusters`; where none does (or a row fits one block), a block holds a row at a time
// and the grid sends with a vector per thread where that takes more blocks than rows. At least
// kPushMinBlocks blocks (in whole clusters, those beyond the rows only sending), at most `cap`: the
// first one-row call after 128 rows of 8192 took 4.1 us longer than the next in one cluster of 8,
// 0.8 us longer in four, and fused calls of 1 to 128 rows as long as before (2 H200s). On 2 H200s
// (NVLink, graph, bf16), against clusters of device::rowBlocks blocks up to 16 rows and a block a
// row beyond: 32 rows of 8192 took 5.70 us in clusters of 4 against 6.56, 64 rows 7.37 in clusters
// of 2 against 8.16; of 5120, 5.01 against 5.82 and 6.05 against 6.62. One to 16 rows and 128 rows
// took the same time.
//
// In place (the output over the input), only a shape in which every vector is sent by the thread
// that normalises it: clusters whose threads hold exactly a row, or blocks of a vector a thread,
// or else a block a row that sends the rows it normalises (ownerSends). The grid sends by its
// stride otherwise, and a vector sent by another thread could be read after its row's owner had
// normalised it over the input, whenever the sender's block started late: the peers would add the
// output. Whatever the shape, every vector goes to the same slots: ranks whose calls differ in
// being in place still meet in the same kernel.
FusedShape fusedOneShotShape(size_t rows, uint32_t hiddenVectors, const RowClusters& clusters,
                             int cap, bool inPlace = false);

// The fused two-shot kernel's grid for `rows` rows of `hiddenVectors` vectors at `nranks` ranks.
// Each rank sums the rows of its slice, so a row is spread over the largest cluster of at most
// device::rowBlocks blocks that gives every row of a slice one within `cap` blocks and
// `clusters`, with as many clusters beyond as `cap`, `clusters` and the rows allow (they send and
// normalise other slices' rows); where none does, a block holds a row, and there is a block a row
// up to `cap`.
FusedShape fusedTwoShotShape(size_t rows, int nranks, uint32_t hiddenVectors,
                             const RowClusters& clusters, int cap);

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
