// Push two-shot fused with the residual add and RMSNorm, for many rows (prefill, large batches).
// The rows are split into nranks slices of whole rows. Rank r stores the rows of slice q of its
// (scrubbed) input into its reduce-scatter slot of rank q; it sums the rows of its own slice from
// every rank as they arrive, adds the residual, stores the new residual into its all-gather slot
// of every peer, normalises the row and sends the row's inverse RMS after it; then it takes every
// other row's new residual and inverse RMS from the rank that owns it and normalises that row
// with them. So only the owner sums a row's squares, and every rank gets the same bits.
//
// A row of this rank's slice belongs to a group: one block, or for few rows a thread block
// cluster (as in the one-shot kernel), so that a slice's rows are summed by many multiprocessors.
// The rows of the other slices are sent, and later normalised, a vector a thread over the whole
// grid. In place, an input vector is still read before its output is written: the output waits
// for the owner's sum, which waits for this rank's vector.
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

  // Vector i of the rows of the other slices, walked as otherRow walks the rows: its row, that
  // row's owner and place in the owner's slice, and the vector's place in the row.
  struct Vector {
    size_t row;
    int owner;
    size_t local;
    uint32_t v;
  };
  __device__ Vector otherVector(size_t i, uint32_t hiddenVectors) const {
    // In 32 bits wherever the launch's vectors fit them: a 64-bit division is a long sequence.
    const size_t j = i <= UINT32_MAX ? static_cast<uint32_t>(i) / hiddenVectors : i / hiddenVectors;
    Vector x;
    x.row = otherRow(j);
    x.owner = owner(x.row);
    x.local = x.row - x.owner * perRank;
    x.v = static_cast<uint32_t>(i - j * hiddenVectors);
    return x;
  }
};

// Vectors of the other slices' rows a thread sends, and later gathers, at once. Two from three
// ranks on: with four, the kernel spilled more, and rows over clusters took longer (4 H200s, graph,
// bf16, medians of two runs, us, four against two: 64 rows of 8192 12.80 / 11.93, 256 rows 25.74 /
// 24.91, 128 rows of 5120 12.77 / 12.56; 128 rows of 8192 15.64 / 15.79).
template <int kRanks>
__host__ __device__ constexpr int otherBatch() {
  return kRanks <= 2 ? 4 : 2;
}

// Where the owner of a slice leaves the inverse RMS of its row `local` in `receiver`'s all-gather
// slot: one vector a row after the slice's rows ({bits, 0, 0, 0}, never empty).
__device__ __forceinline__ uint4* inverseRmsSlot(const PushParams& p, const PushRound& round,
                                                 int receiver, int owner, size_t perRankVectors,
                                                 size_t local) {
  return gatherSlotData(p, round, receiver, owner, perRankVectors + local);
}

// The reduce-scatter's sending half: every row of another slice to the rank that owns it. With
// rows over clusters (few rows, kWalkVectors) the grid's threads walk the vectors of those rows,
// otherBatch at a time: a group sending its rows one after the other (three at 64 rows of 8192 at
// four ranks) waited for each row's loads in turn, and so did a group normalising them. Otherwise
// group g takes rows g, g + groups, ... whole, as they arrive: walked by the grid too, 512 rows of
// 8192 at four ranks took 47.0 -> 47.9 us against the kernel before, where a block a row took
// 46.7 -> 44.9 in another run, and 512 rows of 5120 at two ranks 21.4 -> 22.7 against 21.3 ->
// 20.7 (4 H200s, graph, bf16, medians of three runs); presumably a thread's vectors from far-apart
// rows wait for the last of them before it takes the next.
template <typename T, int kRanks, bool kWalkVectors>
__device__ __forceinline__ void sendOtherRows(const FusedParams& p, const PushRound& round,
                                              const RowSlices<kRanks>& slices, RowLane lane,
                                              size_t group, size_t groups) {
  const uint32_t hv = p.norm.hiddenVectors;
  if constexpr (kWalkVectors) {
    constexpr int kBatch = otherBatch<kRanks>();
    const Stride s;
    const size_t otherVectors = slices.others() * hv;
    for (size_t at = s.first; at < otherVectors; at += s.step * kBatch) {
      uint4 x[kBatch];
      uint4* to[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const size_t i = at + u * s.step;
        if (i >= otherVectors) continue;
        const typename RowSlices<kRanks>::Vector o = slices.otherVector(i, hv);
        x[u] = scrub<T>(loadRowVector(p.input, o.row * hv + o.v));
        to[u] = sentSlotData(p, round, o.owner, o.local * hv + o.v);
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (at + u * s.step < otherVectors) *to[u] = x[u];
      }
    }
  } else {
    for (size_t j = group; j < slices.others(); j += groups) {
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
        if (v < hv) *sentSlotData(p, round, owner, local * hv + v) = x[k];
      }
    }
  }
}

// The all-gather's receiving half: every other row's new residual and inverse RMS from the rank
// that owns it, and the row normalised with them, walked as sendOtherRows walks the rows (`weights`
// holds the weight vectors of `lane` where the group takes rows whole). False once a wait failed.
template <typename T, int kRanks, bool kWalkVectors>
__device__ __forceinline__ bool normaliseOtherRows(const FusedParams& p, const PushRound& round,
                                                   const RowSlices<kRanks>& slices, RowLane lane,
                                                   size_t group, size_t groups,
                                                   const uint4* weights, const RowNorm& state,
                                                   Patience* patience) {
  const NormParams& n = p.norm;
  const uint32_t hv = n.hiddenVectors;
  const size_t sliceVectors = slices.perRank * hv;
  if constexpr (kWalkVectors) {
    constexpr int kBatch = otherBatch<kRanks>();
    const Stride s;
    const size_t otherVectors = slices.others() * hv;
    for (size_t at = s.first; at < otherVectors; at += s.step * kBatch) {
      // got[u] is the u-th vector's new residual, got[kBatch + u] its row's inverse RMS.
      uint4 got[2 * kBatch] = {};
      const uint4* from[2 * kBatch];
      int owners[kBatch];
      size_t outAt[kBatch];
      uint4 weight[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const size_t i = at + u * s.step;
        from[u] = from[kBatch + u] = nullptr;
        if (i >= otherVectors) continue;
        const typename RowSlices<kRanks>::Vector o = slices.otherVector(i, hv);
        from[u] = gatherSlotData(p, round, p.rank, o.owner, o.local * hv + o.v);
        from[kBatch + u] = inverseRmsSlot(p, round, p.rank, o.owner, sliceVectors, o.local);
        owners[u] = o.owner;
        outAt[u] = o.row * hv + o.v;
        got[u] = loadPolled(from[u]);
        got[kBatch + u] = loadPolled(from[kBatch + u]);
        weight[u] = loadRowVector(n.weight, o.v);
      }
      if (!awaitAllFullFrom(
              got, [&](int k) { return from[k]; }, [&](int k) { return owners[k % kBatch]; },
              patience)) {
        return false;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (from[u] == nullptr) continue;
        static_cast<uint4*>(n.residualOut)[outAt[u]] = got[u];
        storeNormalized<T>(n, outAt[u], weight[u], got[u], __uint_as_float(got[kBatch + u].x),
                           state.scaleInv);
      }
    }
  } else {
    for (size_t j = group; j < slices.others(); j += groups) {
      const size_t row = slices.otherRow(j);
      const int owner = slices.owner(row);
      const size_t local = row - owner * slices.perRank;
      const uint4* from = gatherSlotData(p, round, p.rank, owner, local * hv);
      const uint4* rms = inverseRmsSlot(p, round, p.rank, owner, sliceVectors, local);
      // got[k] is this thread's k-th vector of the row, got[kMaxRowVectors] the row's inverse RMS.
      uint4 got[kMaxRowVectors + 1] = {};
      auto address = [&](int k) -> const uint4* {
        if (k == kMaxRowVectors) return lane.vector(0) < hv ? rms : nullptr;
        return lane.vector(k) < hv ? from + lane.vector(k) : nullptr;
      };
#pragma unroll
      for (int k = 0; k <= kMaxRowVectors; ++k) {
        if (address(k) != nullptr) got[k] = loadPolled(address(k));
      }
      if (!awaitAllFull(got, address, owner, patience)) return false;
      uint4 kept[kMaxRowVectors];
#pragma unroll
      for (int k = 0; k < kMaxRowVectors; ++k) kept[k] = got[k];
      awaitWeights();
      storeRow<T>(n, row, weights, kept, __uint_as_float(got[kMaxRowVectors].x), state);
    }
  }
  return true;
}

// kClusters: the launch spreads each row of this rank's slice over a thread block cluster
// (fusedTwoShotShape), and the rows of other slices go a vector a thread (sendOtherRows). A kernel
// of its own: with both ways in one kernel, chosen at run time, it spilled more registers, and
// both ways were slower than in kernels of their own (4 H200s, graph, bf16, against the kernel
// before in the same run, medians of three runs, us: 512 rows of 8192 at four ranks 46.8 -> 47.4,
// 64 rows 13.6 -> 12.9, where the two ways alone had taken 46.7 -> 44.9 and 13.6 -> 12.3).
template <typename T, int kRanks, bool kClusters>
__global__ void __launch_bounds__(kBlockThreads, 1)
    pushTwoShotAddRmsNorm(const __grid_constant__ FusedParams p) {
  __shared__ RowSums sums;
  __shared__ WeightRow weights;
  const unsigned blocks = kClusters ? RowBlocks::count() : 1;
  if (blocks > 1) RowBlocks::initArrivals(sums.arrivals, 2);
  prefetchLaunch(p);
  waitForPreviousKernel();
  const NormParams& n = p.norm;
  const size_t hv = n.hiddenVectors;
  const RowSlices<kRanks> slices(n.rows, p.nranks, p.rank);
  const size_t sliceVectors = slices.perRank * hv;
  const RowLane lane = kClusters ? RowBlocks::lane() : blockLane();
  const size_t group = blockIdx.x / blocks;
  const size_t groups = gridDim.x / blocks;
  // A failed rank sends nothing and gathers nothing, but its blocks still meet their rows'
  // barriers: no block of a cluster leaves one waiting.
  bool ok = !rankFailed(p);
  const PushRound round = beginRound(p);
  allowNextKernel();
  if (ok) {
    sendTags(p, round);
    sendOtherRows<T, kRanks, kClusters>(p, round, slices, lane, group, groups);
  }
  // The weight is copied once the data has left, as in the one-shot kernel, and only by groups
  // that normalise a row with it in shared memory (a block must wait for its copies before it
  // exits). Loaded into registers before the sends, it delayed them (2 H200s, graph, bf16, the
  // two-shot kernel at every row count, medians of three A/B runs, us: rows of 8192, 8 rows 8.62
  // -> 8.59, 16 rows 8.94 -> 9.03, 256 rows 17.50 -> 17.31, 2048 rows 119.99 -> 119.83; rows of
  // 5120, 32 rows 8.37 -> 8.14, 512 rows 21.49 -> 21.27, 2048 rows 85.88 -> 84.64).
  if (group < slices.mineCount || (!kClusters && group < slices.others())) {
    copyWeights(n, lane, weights);
  }
  if (ok) resetStale(p, round, 2 * (p.nranks - 1));

  // This rank's rows: summed, the residual added and sent to every peer, normalised here, and the
  // row's inverse RMS sent after it, so that the peers normalise the row without its sum.
  RowNorm state(n, lane, sums);
  Patience patience(p, kPhasePushData, kPushTwoShotNorm);
  bool tagsChecked = false;
  for (size_t j = group; j < slices.mineCount; j += groups) {
    const size_t row = slices.mineBegin + j;
    uint4 kept[kMaxRowVectors] = {};
    float squares[kMaxRowVectors] = {};
    RowPrefetch prefetch;
    prefetch.loadResidual(n, lane, row);
    // Added in float32: packed additions (the same bits) made the rows over clusters spill 16 B
    // more at two ranks, and 128 rows of 8192 0.24 us slower (2 H200s, graph, bf16).
    ok = ok && gatherRow<T, kRanks, true, false>(p, round, n, lane, j * hv, row * hv,
                                                 prefetch.residual, kPushTwoShotNorm, &patience,
                                                 &tagsChecked, kept, squares);
    if (ok) {
#pragma unroll
      for (int k = 0; k < kMaxRowVectors; ++k) {
        const uint32_t v = lane.vector(k);
        if (v >= hv) continue;
        // Scrubbed (a sum can round to -0): this rank keeps exactly what it sends.
        kept[k] = scrub<T>(kept[k]);
        for (int i = 1; i < p.nranks; ++i) {
          const int peer = rankAfter(p, i);
          *gatherSlotData(p, round, peer, p.rank, j * hv + v) = kept[k];
        }
      }
    }
    awaitWeights();
    float inverseRms = 0.0f;
    ok = rowInverseRms(n, squares, ok, &state, &inverseRms);
    if (!ok) break;
    if (lane.thread == 0) {
      const uint4 sent = make_uint4(scrubWord(__float_as_uint(inverseRms), false), 0, 0, 0);
      for (int i = 1; i < p.nranks; ++i) {
        const int peer = rankAfter(p, i);
        *inverseRmsSlot(p, round, peer, p.rank, sliceVectors, j) = sent;
      }
    }
    storeRow<T>(n, row, weights, kept, inverseRms, state);
  }

  // A thread that gathered none of this rank's rows checks its peers' tags before it takes the
  // others' rows.
  Patience gatherPatience(p, kPhasePushReduced, kPushTwoShotNorm);
  const bool gathersOthers =
      kClusters ? Stride().first < slices.others() * hv : group < slices.others();
  if (ok && !tagsChecked && gathersOthers) {
    ok = checkTags<kRanks>(p, round, &gatherPatience, kPushTwoShotNorm);
  }
  ok = ok && normaliseOtherRows<T, kRanks, kClusters>(p, round, slices, lane, group, groups,
                                                      weights, state, &gatherPatience);
  awaitWeights();
  endRound(p, round,
           static_cast<uint32_t>(kSlotDataVector + twoShotNormSlotVectors(n.rows, p.nranks, hv)),
           ok);
}

TPCOMM_DEVICE_NAMESPACE_END
