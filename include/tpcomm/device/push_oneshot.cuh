// Push one-shot: every rank stores its (scrubbed) input into its slot of every peer's receive
// buffer, polls its own buffer until every peer's vector has arrived, and sums the ranks in rank
// order (its own input read locally). No barrier: one write latency over the link plus the
// polling. Buffers rotate as lamport.cuh says.
//
// A thread sends a batch of vectors, then receives the batch before it, so that the peers' data
// arrives while the thread sends more and the link stays busy. Every rank walks the same vectors
// in the same order (equal grids), so a thread only ever waits for vectors its peer thread sent
// one batch earlier: no wait can close a cycle.
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/io.cuh"
#include "tpcomm/device/lamport.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// Sends the vectors of one batch (already loaded and scrubbed) to every peer.
template <int kRanks, int kBatch>
__device__ __forceinline__ void pushBatchToPeers(const PushParams& p, const PushRound& round,
                                                 const uint4 (&x)[kBatch], size_t at, size_t step,
                                                 size_t nvec) {
  // Start with the next rank so that the ranks do not all write to rank 0 at once.
#pragma unroll
  for (int k = 1; k < kRanks; ++k) {
    if (k >= p.nranks) break;
    const int peer = rankAfter(p, k);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const size_t v = at + u * step;
      if (v < nvec) *sentSlotData(p, round, peer, v) = x[u];
    }
  }
}

// kTagsApart: one thread checks the peers' tags (checksTags), for launches that give no thread
// more than one vector at two ranks, and of at most kTagsApartVectors vectors beyond.
template <typename T, int kRanks, bool kTagsApart>
__global__ void __launch_bounds__(kBlockThreads, 1)
    pushOneShotAllReduce(const __grid_constant__ PushParams p) {
  // At two ranks such a launch gives a thread one vector at most, polled staggered
  // (gatherTwoRanksStaggered).
  constexpr bool kStaggered = kTagsApart && kRanks == 2;
  constexpr int kBatch = kStaggered ? 1 : pushBatch<kRanks>();
  const Stride s;
  const size_t nvec = vecCount<T>(p.count);
  prefetchLaunch(p);
  waitForPreviousKernel();
  const size_t batchStep = s.step * kBatch;
  // The failure word, the rotation and the first inputs are read together.
  const bool failed = rankFailed(p);
  const PushRound round = beginRound(p);
  uint4 x[kBatch];
#pragma unroll
  for (int u = 0; u < kBatch; ++u) {
    const size_t v = s.first + u * s.step;
    if (v < nvec) x[u] = scrub<T>(asRaw(loadInput<T>(p.input, v, p.count, p.inputAligned)));
  }
  if (failed) return;
  allowNextKernel();
  sendTags(p, round);

  Patience patience(p, kPhasePushData, kPushOneShot);
  bool ok = true;
  bool tagsChecked = kTagsApart && !checksTags();
  for (size_t at = s.first;; at += batchStep) {
    const bool sending = at < nvec;
    if (sending) {
      if (at != s.first) {
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          const size_t v = at + u * s.step;
          if (v < nvec) x[u] = scrub<T>(asRaw(loadInput<T>(p.input, v, p.count, p.inputAligned)));
        }
      }
      pushBatchToPeers<kRanks, kBatch>(p, round, x, at, s.step, nvec);
    }
    if (at == s.first) {
      resetStale(p, round, p.nranks - 1);
      if (s.first >= nvec) break;  // a thread beyond the message
      continue;
    }
    // Receive the batch before this one: every peer's vectors, and this rank's own input.
    const size_t from = at - batchStep;
    if (from >= nvec) break;
    uint4 in[kBatch][kRanks];
    if constexpr (kStaggered) {
      ok = gatherTwoRanksStaggered<T>(p, round, from, &patience, in[0]);
    } else {
      ok = gatherRanks<T, kRanks, kBatch>(p, round, from, s.step, nvec, 0, kPushOneShot, &patience,
                                          &tagsChecked, in);
    }
    if (!ok) break;
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const size_t v = from + u * s.step;
      if (v < nvec) {
        storeOutput(p.output, v, p.count, p.outputAligned,
                    sumInRankOrder<T, kRanks>(in[u], p.nranks));
      }
    }
  }
  if (kTagsApart && ok && !tagsChecked) {
    ok = checkTagsApart<kRanks>(p, round, &patience, kPushOneShot);
  }
  endRound(p, round, static_cast<uint32_t>(kSlotDataVector + nvec), ok);
}

TPCOMM_DEVICE_NAMESPACE_END
