// Push two-shot: reduce-scatter and all-gather, both by push, with the data as its own flag.
// Rank r stores slice q of its (scrubbed) input into its reduce-scatter slot of rank q, reduces
// slice r from its own input and every peer's slot as they arrive, keeps the sum and stores it into
// its all-gather slot of every peer, then copies every other rank's reduced slice out of its own
// buffer as it arrives. Moves 2(n-1)/n of the message per rank and never waits at a barrier. A
// buffer holds nranks - 1 reduce-scatter slots, then nranks - 1 all-gather slots.
//
// In pushTwoShotAllReduce a thread scatters a batch, then reduces the batch before it (as push
// one-shot pipelines its sends and receives), and gathers once it has reduced all of its own. In
// pushTwoShotByRole, for large launches at two ranks, half the warps scatter and gather and half
// reset and reduce.
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
// against 7.3. Launches of more than kByRoleBytes split the warps by role instead
// (pushTwoShotByRole). More ranks: one block, push one-shot's batch (not measured).
template <int kRanks>
__host__ __device__ constexpr int pushTwoShotMinBlocksPerSm() {
  return kRanks <= 2 ? 2 : 1;
}

template <int kRanks>
__host__ __device__ constexpr int pushTwoShotBatch() {
  return kRanks <= 2 ? 2 : pushBatch<kRanks>();
}

// Reduce-scatter, sending half, one batch: vectors at + u * step (u < kBatch) of `owner`'s slice of
// the (scrubbed) input into this rank's reduce-scatter slot of `owner`.
template <typename T, int kBatch>
__device__ __forceinline__ void scatterBatch(const PushParams& p, const PushRound& round,
                                             const Slices& slices, int owner, size_t at,
                                             size_t step) {
  const size_t begin = slices.begin(owner);
  const size_t length = slices.length(owner);
  uint4 x[kBatch];
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const size_t i = at + u * step;
    if (i < length) {
      x[u] = scrub<T>(asRaw(loadInput<T>(p.input, begin + i, p.count, p.inputAligned)));
    }
  }
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const size_t i = at + u * step;
    if (i < length) *sentSlotData(p, round, owner, i) = x[u];
  }
}

// A batch of this rank's slice, gathered from every rank (gatherRanks): summed in rank order, kept
// and stored into this rank's all-gather slot of every peer.
template <typename T, int kRanks, int kBatch>
__device__ __forceinline__ void sendReducedBatch(const PushParams& p, const PushRound& round,
                                                 const Slices& slices,
                                                 const uint4 (&in)[kBatch][kRanks], size_t from,
                                                 size_t step) {
  const size_t mine = slices.begin(p.rank);
  const size_t mineLength = slices.length(p.rank);
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const size_t i = from + u * step;
    if (i >= mineLength) continue;
    // Scrubbed once more (a sum can round to -0): this rank keeps exactly what it sends.
    const uint4 sum = scrub<T>(asRaw(sumInRankOrder<T, kRanks>(in[u], p.nranks)));
    for (int k = 1; k < p.nranks; ++k) {
      const int peer = rankAfter(p, k);
      *gatherSlotData(p, round, peer, p.rank, i) = sum;
    }
    storeOutput(p.output, mine + i, p.count, p.outputAligned, asVec<T>(sum));
  }
}

// All-gather, receiving half: every other rank's reduced slice, positions s.first, s.first +
// s.step, ... of each, copied to the output as they arrive. False once a wait fails.
template <typename T, int kBatch>
__device__ __forceinline__ bool receiveReducedSlices(const PushParams& p, const PushRound& round,
                                                     const Slices& slices, const Stride& s) {
  Patience patience(p, kPhasePushReduced, kPushTwoShot);
  for (int k = 1; k < p.nranks; ++k) {
    const int owner = rankAfter(p, k);
    const size_t begin = slices.begin(owner);
    const size_t length = slices.length(owner);
    const uint4* reduced = gatherSlotData(p, round, p.rank, owner, 0);
    for (size_t at = s.first; at < length; at += s.step * kBatch) {
      auto address = [&](int u) -> const uint4* {
        const size_t i = at + u * s.step;
        return i < length ? reduced + i : nullptr;
      };
      uint4 sum[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (address(u) != nullptr) sum[u] = loadPolled(address(u));
      }
      if (!awaitAllFull(sum, address, owner, &patience)) return false;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (address(u) != nullptr) {
          storeOutput(p.output, begin + at + u * s.step, p.count, p.outputAligned,
                      asVec<T>(sum[u]));
        }
      }
    }
  }
  return true;
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

  sendTags(p, round);
  Patience patience(p, kPhasePushData, kPushTwoShot);
  bool ok = true;
  bool tagsChecked = false;
  for (size_t at = s.first;; at += batchStep) {
    // This batch of every slice to its owner. The thread that reads vector i of slice q here is
    // the one that writes it in the all-gather below (in place).
    if (at < slices.perRank) {
      for (int k = 1; k < p.nranks; ++k) {
        scatterBatch<T, kBatch>(p, round, slices, rankAfter(p, k), at, s.step);
      }
    }
    if (at == s.first) {
      resetStale(p, round, 2 * (p.nranks - 1));
      if (s.first >= slices.perRank) break;  // a thread beyond every slice
      continue;
    }
    // This rank's slice, the batch before this one.
    const size_t from = at - batchStep;
    if (from >= slices.perRank) break;
    uint4 in[kBatch][kRanks];
    ok = gatherRanks<T, kRanks, kBatch>(p, round, from, s.step, slices.length(p.rank),
                                        slices.begin(p.rank), kPushTwoShot, &patience, &tagsChecked,
                                        in);
    if (!ok) break;
    sendReducedBatch<T, kRanks, kBatch>(p, round, slices, in, from, s.step);
  }
  // A rank whose slice is empty (a launch of fewer vectors than ranks, or a few more) gathers
  // nothing, so no thread has checked its peers' tags: one does, before the reduced slices are
  // taken as this call's. That also leaves no peer's tag store of this launch in flight once the
  // rank has moved on, where a later launch's reset could not empty it.
  if (ok && slices.length(p.rank) == 0 && checksTags()) {
    ok = checkTagsApart<kRanks>(p, round, &patience, kPushTwoShot);
  }
  ok = ok && receiveReducedSlices<T, kBatch>(p, round, slices, s);
  endRound(p, round, static_cast<uint32_t>(kSlotDataVector + slices.perRank), ok);
}

// Two ranks' launches of more than this many bytes run pushTwoShotByRole.
constexpr size_t kByRoleBytes = size_t{32} << 20;

// Push two-shot at two ranks with a block's warps split by role: the first half scatter the peer's
// slice and then receive its reduced slice; the second half empty the last launch's buffer and
// then reduce this rank's slice as the peer's half of it arrives. The senders never wait while
// they scatter, so the link carries the scatter from the first microsecond, and the reduction
// starts once the reset is done, when most of what it needs has arrived.
//
// A diagnostic program on 2 H200s (bf16, one launch per call, GB/s at 16 / 32 / 48 / 64 / 128 MB
// a launch) measured this structure at 304 / 332 / 341 / 346 / 354 and pushTwoShotAllReduce's at
// 320 / 335 / 330 / 329 / 323, a plain copy both ways at 337 / 352 / 355 / 358 / 362. With the
// reducers starting at once (the senders resetting after their scatter) the split lost at every
// size (64 MB: 313); with them waiting for half the block's scatter it matched this one from 48 MB
// (64 MB: 345) and was 337 at 32 MB; 10 senders and 6 reducers of 16 warps took 64 MB to 341, 6
// and 10 to 320; a sender batch of 4 vectors to 338. In tpcomm, in 64 MiB launches (graph, bf16,
// 2 H200s, medians of three runs): 64 MB 201.3 -> 197.0 us (333 -> 341 GB/s), 256 MB 804.5 ->
// 787.8. More ranks: not measured.
//
// The reducers check the peer's tag with their first batch; a sender copies what arrives, so a
// call the peer made differently fails, with this call's output undefined, as after a timeout.
template <typename T>
__global__ void __launch_bounds__(kBlockThreads, pushTwoShotMinBlocksPerSm<2>())
    pushTwoShotByRole(const __grid_constant__ PushParams p) {
  constexpr int kBatch = pushTwoShotBatch<2>();
  prefetchLaunch(p);
  waitForPreviousKernel();
  const Slices slices(vecCount<T>(p.count), 2);
  const bool failed = rankFailed(p);
  const PushRound round = beginRound(p);
  if (failed) return;
  allowNextKernel();

  // Each role walks its vectors with a stride of its own threads in the grid. A sender reads the
  // input vectors of the peer's slice whose output it writes, a reducer those of this rank's: in
  // place stays safe.
  const unsigned roleThreads = blockDim.x / 2;
  const bool sender = threadIdx.x < roleThreads;
  const Stride s(blockIdx.x * size_t{roleThreads} + threadIdx.x % roleThreads,
                 size_t{gridDim.x} * roleThreads);
  const int peer = 1 - p.rank;
  sendTags(p, round);
  bool ok = true;
  if (sender) {
    for (size_t at = s.first; at < slices.length(peer); at += s.step * kBatch) {
      scatterBatch<T, kBatch>(p, round, slices, peer, at, s.step);
    }
    ok = receiveReducedSlices<T, kBatch>(p, round, slices, s);
  } else {
    resetStale(p, round, 2, s);
    Patience patience(p, kPhasePushData, kPushTwoShot);
    bool tagsChecked = false;
    for (size_t from = s.first; from < slices.length(p.rank); from += s.step * kBatch) {
      uint4 in[kBatch][2];
      ok = gatherRanks<T, 2, kBatch>(p, round, from, s.step, slices.length(p.rank),
                                     slices.begin(p.rank), kPushTwoShot, &patience, &tagsChecked,
                                     in);
      if (!ok) break;
      sendReducedBatch<T, 2, kBatch>(p, round, slices, in, from, s.step);
    }
  }
  endRound(p, round, static_cast<uint32_t>(kSlotDataVector + slices.perRank), ok);
}

TPCOMM_DEVICE_NAMESPACE_END
