// Push one-shot fused with the residual add and RMSNorm, for few rows (decode). Every block stores
// its share of the (scrubbed) input into this rank's slot of every peer's receive buffer, exactly
// where push one-shot would put the same elements; then block b gathers rows b, b + grid, ... from
// every rank, sums in rank order, adds the residual and normalises each row before the next (blocks
// beyond the last row only send). The receive buffers and their rotation are push one-shot's, so
// fused and plain calls interleave.
//
// Every block sends all it sends before it waits for anything: no wait can close a cycle.
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/io.cuh"
#include "tpcomm/device/lamport.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/norm.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// Vectors a thread gathers from every rank at once: push one-shot's batch, within a row.
template <int kRanks>
__host__ __device__ constexpr int rowBatch() {
  return pushBatch<kRanks>() < kMaxRowVectors ? pushBatch<kRanks>() : kMaxRowVectors;
}

// Gathers this thread's part of a row (vectors `first` + k * blockDim.x of it, `first` being the
// row's first vector in the slots, `inputFirst` in the input) from every rank and adds the
// residual. False once a wait failed.
template <typename T, int kRanks>
__device__ __forceinline__ bool gatherRow(const PushParams& p, const PushRound& round,
                                          const NormParams& n, size_t first, size_t inputFirst,
                                          const uint4 (&residual)[kMaxRowVectors], int algorithm,
                                          Patience* patience, bool* tagsChecked,
                                          uint4 (&kept)[kMaxRowVectors], float* squares) {
  constexpr int kBatch = rowBatch<kRanks>();
  static_assert(kMaxRowVectors % kBatch == 0, "whole batches per row");
#pragma unroll
  for (int k0 = 0; k0 < kMaxRowVectors; k0 += kBatch) {
    const size_t from = first + rowVector(k0);
    uint4 in[kBatch][kRanks];
    if (!gatherRanks<T, kRanks, kBatch>(p, round, from, blockDim.x, first + n.hiddenVectors,
                                        inputFirst - first, algorithm, patience, tagsChecked, in)) {
      return false;
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (rowVector(k0 + u) >= n.hiddenVectors) continue;
      kept[k0 + u] = addResidual<T>(asRaw(sumInRankOrder<T, kRanks>(in[u], p.nranks)),
                                    residual[k0 + u], squares);
    }
  }
  return true;
}

template <typename T, int kRanks>
__global__ void __launch_bounds__(kBlockThreads, 1)
    pushOneShotAddRmsNorm(const __grid_constant__ FusedParams p) {
  __shared__ float scratch[2][kBlockThreads / 32];
  __shared__ WeightRow weights;
  waitForPreviousKernel();
  const NormParams& n = p.norm;
  const size_t hv = n.hiddenVectors;
  const bool failed = rankFailed(p);
  const PushRound round = beginRound(p);
  if (failed) return;
  allowNextKernel();
  sendTags(p, round);
  uint4 w[kMaxRowVectors];
  loadWeights(n, w);
  RowPrefetch next;
  if (blockIdx.x < n.rows) next.loadResidual(n, blockIdx.x);

  // Sending needs no row: every block of the grid sends, so that few rows still leave from many
  // multiprocessors (one alone cannot keep the link busy).
  const size_t nvec = n.rows * hv;
  const Stride s;
  for (size_t at = s.first; at < nvec; at += s.step * kMaxRowVectors) {
    uint4 x[kMaxRowVectors];
#pragma unroll
    for (int k = 0; k < kMaxRowVectors; ++k) {
      const size_t i = at + k * s.step;
      if (i < nvec) x[k] = scrub<T>(loadRowVector(p.input, i));
    }
    for (int j = 1; j < p.nranks; ++j) {
      const int peer = p.rank + j < p.nranks ? p.rank + j : p.rank + j - p.nranks;
#pragma unroll
      for (int k = 0; k < kMaxRowVectors; ++k) {
        const size_t i = at + k * s.step;
        if (i < nvec) *slotVector(p, round, peer, peerSlot(p.rank, peer), 1 + i) = x[k];
      }
    }
  }
  storeWeights(n, w, weights);
  resetStale(p, round, p.nranks - 1);

  RowNorm state(n, scratch);
  Patience patience(p, kPhasePushData, kPushOneShotNorm);
  bool ok = true;
  bool tagsChecked = false;
  for (size_t row = blockIdx.x; row < n.rows; row += gridDim.x) {
    uint4 kept[kMaxRowVectors] = {};
    float squares = 0.0f;
    if (row != blockIdx.x) next.loadResidual(n, row);
    ok = ok && gatherRow<T, kRanks>(p, round, n, row * hv, row * hv, next.residual,
                                    kPushOneShotNorm, &patience, &tagsChecked, kept, &squares);
    ok = finishRow<T>(n, row, weights, kept, squares, ok, &state);
    if (!ok) break;
  }
  endRound(p, round, static_cast<uint32_t>(1 + nvec), ok);
}

TPCOMM_DEVICE_NAMESPACE_END
