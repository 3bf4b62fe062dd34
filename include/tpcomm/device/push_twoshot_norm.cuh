// Push two-shot fused with the residual add and RMSNorm, for many rows (prefill). The rows are
// split into nranks slices of whole rows. Rank r stores the rows of slice q of its (scrubbed) input
// into its reduce-scatter slot of rank q; it sums the rows of its own slice from every rank as they
// arrive, adds the residual, stores the new residual into its all-gather slot of every peer and
// normalises those rows; then it takes every other row's new residual from the rank that owns it
// and normalises that row too. Only the residual travels back, so the all-gather moves as much as
// plain push two-shot's; every rank normalises every row with the same code and gets the same bits.
//
// A block owns whole rows and takes the rows of other slices in the same order in both halves, so
// the thread that reads an input vector there is the one that writes its output (in place).
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/io.cuh"
#include "tpcomm/device/lamport.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/norm.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/push_oneshot_norm.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// The rows of a call split into nranks slices; `others` enumerates the rows of every slice but
// this rank's, the next rank's slice first, then the one after it, and so on: while a grid's
// blocks walk them, each rank sends to a different rank at a time. In row order every rank's
// first blocks sent to the same rank (the first slice but its own), three senders into one link
// at four ranks, once the rows outnumbered the grid (4 H200s, graph, bf16, medians of three A/B
// runs, us: rows of 8192, 256 rows 30.54 -> 27.34, 512 rows 60.13 -> 46.58, 2048 rows 234.09 ->
// 198.91; rows of 5120, 512 rows 39.64 -> 32.29, 2048 rows 152.86 -> 133.71; 64 and 128 rows, one
// block's rows each, the same). At two ranks both orders are one; kRanks == 2 keeps the kernel's
// code as it was.
template <int kRanks>
struct RowSlices {
  size_t rows;
  size_t perRank;
  size_t mineBegin;
  size_t mineCount;
  int nranks;
  int rank;
  __device__ RowSlices(size_t rows_, int nranks_, int rank_)
      : rows(rows_), perRank((rows_ + nranks_ - 1) / nranks_), nranks(nranks_), rank(rank_) {
    mineBegin = begin(rank);
    mineCount = count(rank);
  }
  __device__ size_t begin(int owner) const {
    return owner * perRank < rows ? owner * perRank : rows;
  }
  __device__ size_t count(int owner) const {
    return rows - begin(owner) < perRank ? rows - begin(owner) : perRank;
  }
  __device__ size_t others() const { return rows - mineCount; }
  __device__ size_t otherRow(size_t j) const {
    if constexpr (kRanks == 2) {
      return j < mineBegin ? j : j + mineCount;
    } else {
      for (int k = 1; k < nranks; ++k) {
        const int owner = rank + k < nranks ? rank + k : rank + k - nranks;
        if (j < count(owner)) return begin(owner) + j;
        j -= count(owner);
      }
      return rows;  // j >= others()
    }
  }
  __device__ int owner(size_t row) const { return static_cast<int>(row / perRank); }
};

template <typename T, int kRanks>
__global__ void __launch_bounds__(kBlockThreads, 1)
    pushTwoShotAddRmsNorm(const __grid_constant__ FusedParams p) {
  __shared__ RowSums sums;
  __shared__ WeightRow weights;
  prefetchLaunch(p);
  waitForPreviousKernel();
  const NormParams& n = p.norm;
  const size_t hv = n.hiddenVectors;
  const RowSlices<kRanks> slices(n.rows, p.nranks, p.rank);
  const bool failed = rankFailed(p);
  const PushRound round = beginRound(p);
  if (failed) return;
  allowNextKernel();
  const int gatherBase = p.nranks - 1;
  sendTags(p, round);
  const RowLane lane = blockLane();

  // Reduce-scatter, sending half: every row of another slice to the rank that owns it.
  for (size_t j = blockIdx.x; j < slices.others(); j += gridDim.x) {
    const size_t row = slices.otherRow(j);
    const int owner = slices.owner(row);
    const size_t local = row - owner * slices.perRank;
    uint4 x[kMaxRowVectors];
#pragma unroll
    for (int k = 0; k < kMaxRowVectors; ++k) {
      const uint32_t v = lane.vector(k);
      if (v < hv) x[k] = scrub<T>(loadRowVector(p.input, row * hv + v));
    }
#pragma unroll
    for (int k = 0; k < kMaxRowVectors; ++k) {
      const uint32_t v = lane.vector(k);
      if (v < hv) *slotData(p, round, owner, peerSlot(p.rank, owner), local * hv + v) = x[k];
    }
  }
  // The weight is copied once the data has left, as in the one-shot kernel, and only by blocks
  // that normalise a row (a block must wait for its copies before it exits). Loaded into registers
  // before the sends, it delayed them (2 H200s, graph, bf16, the two-shot kernel at every row
  // count, medians of three A/B runs, us: rows of 8192, 8 rows 8.62 -> 8.59, 16 rows 8.94 ->
  // 9.03, 256 rows 17.50 -> 17.31, 2048 rows 119.99 -> 119.83; rows of 5120, 32 rows 8.37 ->
  // 8.14, 512 rows 21.49 -> 21.27, 2048 rows 85.88 -> 84.64).
  const bool normalises = blockIdx.x < slices.mineCount || blockIdx.x < slices.others();
  if (normalises) copyWeights(n, lane, weights);
  resetStale(p, round, 2 * (p.nranks - 1));

  // This rank's rows: summed, the residual added, sent to every peer and normalised here.
  RowNorm state(n, lane, sums);
  Patience patience(p, kPhasePushData, kPushTwoShotNorm);
  bool ok = true;
  bool tagsChecked = false;
  for (size_t j = blockIdx.x; j < slices.mineCount; j += gridDim.x) {
    const size_t row = slices.mineBegin + j;
    uint4 kept[kMaxRowVectors] = {};
    float squares[kMaxRowVectors] = {};
    RowPrefetch prefetch;
    prefetch.loadResidual(n, lane, row);
    ok = ok && gatherRow<T, kRanks>(p, round, n, lane, j * hv, row * hv, prefetch.residual,
                                    kPushTwoShotNorm, &patience, &tagsChecked, kept, squares);
    if (ok) {
#pragma unroll
      for (int k = 0; k < kMaxRowVectors; ++k) {
        const uint32_t v = lane.vector(k);
        if (v >= hv) continue;
        // Scrubbed (a sum can round to -0): this rank keeps exactly what it sends.
        kept[k] = scrub<T>(kept[k]);
        for (int i = 1; i < p.nranks; ++i) {
          const int peer = rankAfter(p, i);
          *slotData(p, round, peer, gatherBase + peerSlot(p.rank, peer), j * hv + v) = kept[k];
        }
      }
    }
    awaitWeights();
    ok = finishRow<T>(n, row, weights, kept, squares, ok, &state);
    if (!ok) break;
  }

  // Every other row: its new residual from its owner, normalised here. A rank that owns no row
  // checks its peers' tags here instead.
  Patience gatherPatience(p, kPhasePushReduced, kPushTwoShotNorm);
  if (ok && !tagsChecked && slices.others() > blockIdx.x) {
    ok = checkTags<kRanks>(p, round, &gatherPatience, kPushTwoShotNorm);
  }
  for (size_t j = blockIdx.x; j < slices.others(); j += gridDim.x) {
    const size_t row = slices.otherRow(j);
    const int owner = slices.owner(row);
    const size_t local = row - owner * slices.perRank;
    const uint4* from =
        slotData(p, round, p.rank, gatherBase + peerSlot(owner, p.rank), local * hv);
    uint4 kept[kMaxRowVectors] = {};
    float squares[kMaxRowVectors] = {};
    auto address = [&](int k) -> const uint4* {
      return lane.vector(k) < hv ? from + lane.vector(k) : nullptr;
    };
#pragma unroll
    for (int k = 0; k < kMaxRowVectors; ++k) {
      if (ok && address(k) != nullptr) kept[k] = loadPolled(address(k));
    }
    ok = ok && awaitAllFull(kept, address, owner, &gatherPatience);
#pragma unroll
    for (int k = 0; k < kMaxRowVectors; ++k) {
      if (ok && address(k) != nullptr) squares[k] = vectorSquares(asVec<T>(kept[k]));
    }
    awaitWeights();
    ok = finishRow<T>(n, row, weights, kept, squares, ok, &state);
    if (!ok) break;
  }
  endRound(p, round, static_cast<uint32_t>(kSlotDataVector + slices.perRank * hv), ok);
}

TPCOMM_DEVICE_NAMESPACE_END
