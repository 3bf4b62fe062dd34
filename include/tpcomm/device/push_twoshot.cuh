// Push two-shot: reduce-scatter and all-gather, both by push, with the data as its own flag.
// Rank r stores slice q of its (scrubbed) input into its reduce-scatter slot of rank q, reduces
// slice r from its own input and every peer's slot as they arrive, keeps the sum and stores it into
// its all-gather slot of every peer, then copies every other rank's reduced slice out of its own
// buffer as it arrives. Moves 2(n-1)/n of the message per rank and never waits at a barrier. A
// buffer holds nranks - 1 reduce-scatter slots, then nranks - 1 all-gather slots.
//
// A thread scatters a batch, then reduces the batch before it (as push one-shot pipelines its
// sends and receives), and gathers once it has reduced all of its own.
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/io.cuh"
#include "tpcomm/device/lamport.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// Two ranks: two blocks a multiprocessor, each thread two vectors a batch. A thread stops sending
// while it waits for its peer's batch, so the more warps a multiprocessor holds, the more of them
// store while others wait: on 2 H200s (graph, bf16, slot data then one vector off its line) 64 MB
// took 218 us against 227 with one block of four vectors a batch, 4 MB 16.6 against 17.6, 1 MB 6.9
// against 7.3. Warps split by role instead (half scatter then gather, half reset then reduce) beat
// this from 48 MB a launch (343 against 332 GB/s, a diagnostic program) but lose below 32 MB
// (16 MB: 306 against 320), and launches that large take three times as much receive memory.
// More ranks: one block, push one-shot's batch (not measured).
template <int kRanks>
__host__ __device__ constexpr int pushTwoShotMinBlocksPerSm() {
  return kRanks <= 2 ? 2 : 1;
}

template <int kRanks>
__host__ __device__ constexpr int pushTwoShotBatch() {
  return kRanks <= 2 ? 2 : pushBatch<kRanks>();
}

template <typename T, int kRanks>
__global__ void __launch_bounds__(kBlockThreads, pushTwoShotMinBlocksPerSm<kRanks>())
    pushTwoShotAllReduce(const __grid_constant__ PushParams p) {
  constexpr int kBatch = pushTwoShotBatch<kRanks>();
  prefetchLaunch(p);
  waitForPreviousKernel();
  const Stride s;
  const Slices slices(vecCount<T>(p.count), p.nranks);
  const size_t batchStep = s.step * kBatch;
  const bool failed = rankFailed(p);
  const PushRound round = beginRound(p);
  if (failed) return;
  allowNextKernel();
  const int gatherBase = p.nranks - 1;
  const size_t mine = slices.begin(p.rank);
  const size_t mineLength = slices.length(p.rank);
  auto nextRank = [&](int k) { return p.rank + k < p.nranks ? p.rank + k : p.rank + k - p.nranks; };

  sendTags(p, round);
  Patience patience(p, kPhasePushData, kPushTwoShot);
  bool ok = true;
  bool tagsChecked = false;
  for (size_t at = s.first;; at += batchStep) {
    // Reduce-scatter, sending half: this batch of every slice to its owner. The thread that reads
    // vector i of slice q here is the one that writes it in the all-gather below (in place).
    const bool sending = at < slices.perRank;
    for (int k = 1; sending && k < p.nranks; ++k) {
      const int owner = nextRank(k);
      const size_t begin = slices.begin(owner);
      const size_t length = slices.length(owner);
      uint4 x[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const size_t i = at + u * s.step;
        if (i < length) {
          x[u] = scrub<T>(asRaw(loadInput<T>(p.input, begin + i, p.count, p.inputAligned)));
        }
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const size_t i = at + u * s.step;
        if (i < length) *slotData(p, round, owner, peerSlot(p.rank, owner), i) = x[u];
      }
    }
    if (at == s.first) {
      resetStale(p, round, 2 * (p.nranks - 1));
      if (s.first >= slices.perRank) break;  // a thread beyond every slice
      continue;
    }
    // This rank's slice, the batch before this one: summed in rank order, kept and sent to every
    // peer.
    const size_t from = at - batchStep;
    if (from >= slices.perRank) break;
    uint4 in[kBatch][kRanks];
    ok = gatherRanks<T, kRanks, kBatch>(p, round, from, s.step, mineLength, mine, kPushTwoShot,
                                        &patience, &tagsChecked, in);
    if (!ok) break;
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const size_t i = from + u * s.step;
      if (i >= mineLength) continue;
      // Scrubbed once more (a sum can round to -0): this rank keeps exactly what it sends.
      const uint4 sum = scrub<T>(asRaw(sumInRankOrder<T, kRanks>(in[u], p.nranks)));
      for (int k = 1; k < p.nranks; ++k) {
        const int peer = nextRank(k);
        *slotData(p, round, peer, gatherBase + peerSlot(p.rank, peer), i) = sum;
      }
      storeOutput(p.output, mine + i, p.count, p.outputAligned, asVec<T>(sum));
    }
  }

  // All-gather, receiving half: every other rank's reduced slice.
  Patience gatherPatience(p, kPhasePushReduced, kPushTwoShot);
  for (int k = 1; ok && k < p.nranks; ++k) {
    const int owner = nextRank(k);
    const size_t begin = slices.begin(owner);
    const size_t length = slices.length(owner);
    const uint4* reduced = slotData(p, round, p.rank, gatherBase + peerSlot(owner, p.rank), 0);
    for (size_t at = s.first; ok && at < length; at += batchStep) {
      auto address = [&](int u) -> const uint4* {
        const size_t i = at + u * s.step;
        return i < length ? reduced + i : nullptr;
      };
      uint4 sum[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (address(u) != nullptr) sum[u] = loadPolled(address(u));
      }
      ok = awaitAllFull(sum, address, owner, &gatherPatience);
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (ok && address(u) != nullptr) {
          storeOutput(p.output, begin + at + u * s.step, p.count, p.outputAligned,
                      asVec<T>(sum[u]));
        }
      }
    }
  }
  endRound(p, round, static_cast<uint32_t>(kSlotDataVector + slices.perRank), ok);
}

TPCOMM_DEVICE_NAMESPACE_END
