// Push one-shot fused with the residual add and RMSNorm, for few rows (decode). Every block stores
// its share of the (scrubbed) input into this rank's slot of every peer's receive buffer, exactly
// where push one-shot would put the same elements (in some calls in place, the share is the rows
// it normalises: kOwnerSends). Then group g of blocks gathers rows g, g + groups, ... from every
// rank, sums in rank order, adds the residual and normalises each row before the next (groups
// beyond the last row only send). A group is one block, or for few rows a
// thread block cluster (smaller as the rows get more) whose blocks share the row and sum its
// squares through distributed shared memory: each step of the row is a chain of dependent
// instructions, and one multiprocessor alone runs the chains of a row of 16 KB 2.4 us longer than
// push one-shot takes over the same bytes, a cluster of 8 about 1.1 us longer (2 H200s). The
// receive buffers and their rotation are push one-shot's, so fused and plain calls interleave.
//
// Every block sends all it sends before it waits for anything: no wait can close a cycle. Every
// block of a group meets the same row barriers, whatever fails.
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

// Gathers this thread's part of a row (vectors `first` + lane.vector(k) of it, `first` being the
// row's first vector in the slots, `inputFirst` in the input) from every rank and adds the
// residual. False once a wait failed. kSkipEmpty: batches that hold none of the thread's vectors
// are left out (a thread of a row over a cluster holds one vector, the first batch's). kPacked: as
// addRounded.
template <typename T, int kRanks, bool kSkipEmpty = false, bool kPacked = true>
__device__ __forceinline__ bool gatherRow(
    const PushParams& p, const PushRound& round, const NormParams& n, RowLane lane, size_t first,
    size_t inputFirst, const uint4 (&residual)[kMaxRowVectors], int algorithm, Patience* patience,
    bool* tagsChecked, uint4 (&kept)[kMaxRowVectors], float (&squares)[kMaxRowVectors]) {
  constexpr int kBatch = rowBatch<kRanks>();
  static_assert(kMaxRowVectors % kBatch == 0, "whole batches per row");
#pragma unroll
  for (int k0 = 0; k0 < kMaxRowVectors; k0 += kBatch) {
    if (kSkipEmpty && lane.vector(k0) >= n.hiddenVectors) break;
    const size_t from = first + lane.vector(k0);
    uint4 in[kBatch][kRanks];
    if (!gatherRanks<T, kRanks, kBatch>(p, round, from, lane.threads, first + n.hiddenVectors,
                                        inputFirst - first, algorithm, patience, tagsChecked, in)) {
      return false;
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (lane.vector(k0 + u) >= n.hiddenVectors) continue;
      kept[k0 + u] =
          addResidual<T, kPacked>(asRaw(sumInRankOrder<T, kRanks, kPacked>(in[u], p.nranks)),
                                  residual[k0 + u], &squares[k0 + u]);
    }
  }
  return true;
}

// Whether the `threads` threads that hold a row of `hiddenVectors` vectors hold one vector each at
// most, as the blocks of a cluster do where each takes at most kBlockThreads vectors (every
// cluster of a row of up to 8192 16-bit elements).
__host__ __device__ constexpr bool oneVectorRows(uint32_t hiddenVectors, uint32_t threads) {
  return threads >= hiddenVectors;
}

// gatherRow for a thread that holds at most one vector of the row (oneVectorRows), in a kernel of
// its own. At two ranks that vector is polled staggered, as small push one-shot launches poll
// theirs (gatherTwoRanksStaggered), and one thread of the grid checks the peers' tags apart
// (checksTags). Beyond, it is gathered as push one-shot gathers a batch of one vector.
//
// Graph, bf16, medians of three A/B runs against gatherRow (us: the fused call with gatherRow ->
// with this, in brackets the all-reduce alone of the same bytes). 2 H100s: rows of 8192, 1 row 4.08
// -> 3.23 (2.55), 2 rows 4.17 -> 3.50 (3.13), 16 rows 5.07 -> 4.63 (3.97), 64 rows 7.48 -> 7.11
// (6.6); rows of 5120, 1 row 4.13 -> 3.29 (2.49), 4 rows 4.28 -> 3.55 (3.15), 64 rows 6.12 -> 5.77
// (5.24). Four ranks, 4 H200s: rows of 8192, 1 row 5.58 -> 4.01 (3.27), 4 rows 6.11 -> 4.48 (4.05),
// 32 rows 10.62 -> 8.60 (8.16); rows of 5120, 1 row 5.65 -> 4.03 (3.15), 32 rows 8.82 -> 6.78
// (6.48). Why gatherRow, whose batch of two holds one vector here, took 1.5 us longer at four ranks
// is not known.
template <typename T, int kRanks>
__device__ __forceinline__ bool gatherRowVector(const PushParams& p, const PushRound& round,
                                                const NormParams& n, RowLane lane, size_t first,
                                                const uint4 (&residual)[kMaxRowVectors],
                                                Patience* patience, bool* tagsChecked,
                                                uint4 (&kept)[kMaxRowVectors],
                                                float (&squares)[kMaxRowVectors]) {
  if (lane.thread >= n.hiddenVectors) return true;
  uint4 in[1][kRanks];
  if constexpr (kRanks == 2) {
    if (!gatherTwoRanksStaggered<T>(p, round, first + lane.thread, patience, in[0])) return false;
  } else if (!gatherRanks<T, kRanks, 1>(p, round, first + lane.thread, lane.threads,
                                        first + n.hiddenVectors, 0, kPushOneShotNorm, patience,
                                        tagsChecked, in)) {
    return false;
  }
  kept[0] =
      addResidual<T>(asRaw(sumInRankOrder<T, kRanks>(in[0], p.nranks)), residual[0], &squares[0]);
  return true;
}

// This thread's vectors of the input from `at` on, `step` apart (kVectors of them at most),
// scrubbed.
template <typename T, int kVectors>
__device__ __forceinline__ void loadToSend(const FusedParams& p, size_t at, size_t step,
                                           size_t nvec, uint4 (&x)[kMaxRowVectors]) {
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const size_t i = at + k * step;
    if (i < nvec) x[k] = scrub<T>(loadRowVector(p.input, i));
  }
}

// kOneVector: no thread holds more than one vector of a row (oneVectorRows); a kernel of its own,
// so that the code of launches with more vectors a thread stays as it was (with both ways in one
// kernel, 128 rows of 5120 took 8.91 -> 9.05 us, 2 H100s; at four ranks 2 to 8 rows of 8192 took
// 0.2-0.37 us longer, 4 H200s). Its loops over a thread's vectors stop after the first
// (kVectors: the sends, too, take one vector a thread a step), and each warp sums its squares
// through shared memory (rowSum). With the loops running on to kMaxRowVectors, each vector beyond
// the first skipped by a branch, the stores of one row took about 200 cycles longer (cycle stamps
// of one thread, 2 H200s).
//
// kOwnerSends: each block sends the vectors of the rows it normalises, each thread those it holds,
// instead of the grid sending by its stride; for calls in place (the output over the input) where
// a block holds a row (no cluster) and its threads do not hold exactly one vector each. Sent by the
// stride, a vector could be sent by a block that started late, after the row's owner had
// normalised it over the input: the peers would add the output. The slots a vector goes to are
// the same either way, so ranks may differ in it.
//
// kEveryThreadAdds: every thread adds a row's warp sums itself (rowSum), where a lane each and a
// butterfly do otherwise; only where a thread holds one vector, at two ranks (everyThreadAddsRows
// says when). At eight ranks the 32 registers that takes would spill; at four the kernel took 128
// registers against 108 and was slower at every row count up to 32 (4 H200s, graph, bf16, medians
// of three A/B runs, us: rows of 8192, 1 row 3.97 against 4.12, 2 rows 4.30 against 4.50, 4 rows
// 4.42 against 4.52, 8 rows 5.06 against 5.15; rows of 5120, 1 row 3.98 against 4.13, 2 rows 4.27
// against 4.48, 4 rows 4.33 against 4.57; from 16 rows within 0.05).
template <typename T, int kRanks, bool kOneVector = false, bool kEveryThreadAdds = false,
          bool kOwnerSends = false>
__global__ void __launch_bounds__(kBlockThreads, 1)
    pushOneShotAddRmsNorm(const __grid_constant__ FusedParams p) {
  static_assert(!kEveryThreadAdds || (kOneVector && kRanks == 2), "see kEveryThreadAdds");
  static_assert(!kOwnerSends || !kOneVector, "see kOwnerSends");
  constexpr int kVectors = kOneVector ? 1 : kMaxRowVectors;
  __shared__ RowSums sums;
  __shared__ WeightRow weights;
  const unsigned blocks = RowBlocks::count();
  if (blocks > 1) RowBlocks::initArrivals(sums.arrivals, 2);
  prefetchLaunch(p);
  waitForPreviousKernel();
  const NormParams& n = p.norm;
  const size_t hv = n.hiddenVectors;
  const RowLane lane = RowBlocks::lane();
  const size_t group = blockIdx.x / blocks;
  const size_t groups = gridDim.x / blocks;
  // Sending needs no row: every block of the grid sends, so that few rows still leave from many
  // multiprocessors (one alone cannot keep the link busy).
  const size_t nvec = n.rows * hv;
  const Stride s;
  // A failed rank sends nothing and gathers nothing, but its blocks still meet their rows'
  // barriers: no block of a cluster leaves one waiting.
  bool ok = !rankFailed(p);
  const PushRound round = beginRound(p);
  // The first inputs are loaded after the failure word and the rotation, as push one-shot loads
  // them, and the weight and the residual only once the data has left. With the inputs loaded
  // first and the weight and the residual loaded before the sends, the sends left later (2 H200s,
  // graph, bf16, medians of three A/B runs, us: rows of 8192, 1 row 3.20 -> 3.12, 2 rows 3.32 ->
  // 3.14, 4 rows 3.61 -> 3.44, 8 rows 3.79 -> 3.75, 64 rows 6.84 -> 6.74; rows of 5120, 1 row
  // 3.07 -> 3.11, 4 rows 3.40 -> 3.17, 8 rows 3.65 -> 3.51, 64 rows 5.40 -> 5.31).
  uint4 x[kMaxRowVectors];
  if constexpr (!kOwnerSends) loadToSend<T, kVectors>(p, s.first, s.step, nvec, x);
  allowNextKernel();
  RowPrefetch next;
  if (ok) {
    sendTags(p, round);
    if constexpr (kOwnerSends) {
      for (size_t row = group; row < n.rows; row += groups) {
        const size_t first = row * hv;
        loadToSend<T, kVectors>(p, first + lane.thread, lane.threads, first + hv, x);
        for (int j = 1; j < p.nranks; ++j) {
          const int peer = rankAfter(p, j);
#pragma unroll
          for (int k = 0; k < kVectors; ++k) {
            const uint32_t v = lane.vector(k);
            if (v < hv) *sentSlotData(p, round, peer, first + v) = x[k];
          }
        }
      }
    } else {
      for (size_t at = s.first; at < nvec; at += s.step * kVectors) {
        if (at != s.first) loadToSend<T, kVectors>(p, at, s.step, nvec, x);
        for (int j = 1; j < p.nranks; ++j) {
          const int peer = rankAfter(p, j);
#pragma unroll
          for (int k = 0; k < kVectors; ++k) {
            const size_t i = at + k * s.step;
            if (i < nvec) *sentSlotData(p, round, peer, i) = x[k];
          }
        }
      }
    }
    // The weight goes into shared memory asynchronously, waited for only before the first row's
    // norm: loaded into registers and stored, it held the polls back by its loads' latency (2
    // H200s, graph, bf16, medians of three A/B runs, us: rows of 8192, 1 row 3.18 -> 3.09, 4 rows
    // 3.70 -> 3.55, 64 rows 6.84 -> 6.77; rows of 5120, 2 rows 3.17 -> 3.08, 4 rows 3.41 -> 3.30,
    // 64 rows 5.41 -> 5.34).
    if (group < n.rows) {
      copyWeights<kVectors>(n, lane, weights);
      next.template loadResidual<kVectors>(n, lane, group);
    }
    resetStale(p, round, p.nranks - 1);
  }

  if constexpr (kEveryThreadAdds) sums.zeroUnused(n.hiddenVectors);
  RowNorm state(n, lane, sums);
  Patience patience(p, kPhasePushData, kPushOneShotNorm);
  // One thread checks the peers' tags where no thread holds more than one vector (kOneVector): at
  // two ranks always, beyond where push one-shot checks them apart too (kTagsApartVectors). Four
  // ranks on 4 H200s, graph, bf16, medians of three A/B runs against every gathering thread
  // checking them (us): one row of 8192 6.05 -> 5.59, of 5120 6.06 -> 5.71.
  const bool tagsApart = kOneVector && (kRanks == 2 || nvec <= kTagsApartVectors);
  bool tagsChecked = tagsApart && !checksTags();
  // Where the thread that checks the tags holds a row (once every cluster holds one: from 4 rows of
  // 8192, 7 of 5120), it loads them while its block waits for its first row's warp sums, and their
  // round trip passes there instead of after its rows, where its block's end waited for it. 2
  // H200s, graph, bf16, medians of three A/B runs (us): rows of 8192, 4 rows 3.46 -> 3.30, 8 rows
  // 3.70 -> 3.59, 16 rows 4.17 -> 4.06, 64 rows 6.73 -> 6.66; rows of 5120, 8 rows 3.52 -> 3.42,
  // 16 rows 3.77 -> 3.72, 32 rows 4.29 -> 4.33, 64 rows 5.36 -> 5.29. Loaded before the warp sums
  // left, they made 32 rows 0.07-0.1 us slower. Beyond two ranks tags are checked apart only in
  // launches of up to kTagsApartVectors vectors, whose rows leave the last cluster without one.
  constexpr bool kTagsEarly = kOneVector && kRanks == 2;
  PeerTags<kRanks> tags;
  bool tagsStarted = false;
  for (size_t row = group; row < n.rows; row += groups) {
    uint4 kept[kMaxRowVectors] = {};
    float squares[kMaxRowVectors] = {};
    if (row != group) next.template loadResidual<kVectors>(n, lane, row);
    if constexpr (kOneVector) {
      ok = ok && gatherRowVector<T, kRanks>(p, round, n, lane, row * hv, next.residual, &patience,
                                            &tagsChecked, kept, squares);
    } else {
      // Packed additions made the eight-rank kernel spill 16 B more.
      ok = ok && gatherRow<T, kRanks, false, kRanks <= 4>(p, round, n, lane, row * hv, row * hv,
                                                          next.residual, kPushOneShotNorm,
                                                          &patience, &tagsChecked, kept, squares);
    }
    if (row == group) awaitWeights();
    const bool loadTags = kTagsEarly && ok && row == group && !tagsChecked;
    auto startTags = [&] {
      if (loadTags) {
        tags.start(p, round);
        tagsStarted = true;
      }
    };
    ok = finishRow<T, kEveryThreadAdds, kVectors>(n, row, weights, kept, squares, ok, &state,
                                                  startTags);
    if (!ok) break;
  }
  if (tagsApart && ok && !tagsChecked) {
    ok = tagsStarted ? awaitTags(p, round, tags, &patience, kPushOneShotNorm)
                     : checkTagsApart<kRanks>(p, round, &patience, kPushOneShotNorm);
  }
  endRound(p, round, static_cast<uint32_t>(kSlotDataVector + nvec), ok);
}

TPCOMM_DEVICE_NAMESPACE_END
