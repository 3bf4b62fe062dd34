// What the pull kernels share: where every rank's input is read from (the staging buffers the
// kernels fill, or the ranks' inputs in place), and the fixed-order sum over ranks.
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/io.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

struct Sources {
  const void* rank[kMaxRanks];
  bool staged;
};

// The sources of this launch. A slotted launch whose slot is not registered (or was given to
// another registration since the call took it) records why and returns false on every block of
// every rank (they all see the same slot), before any barrier.
template <bool kSlotted>
__device__ __forceinline__ bool resolveSources(const PullParams& p, int algorithm, Sources* s) {
  s->staged = true;
#pragma unroll
  for (int r = 0; r < kMaxRanks; ++r) s->rank[r] = p.staging[r];
  if constexpr (kSlotted) {
    const int state = p.slot->state;
    int failure = kFailureNone;
    if (state == kSlotUnregistered) {
      failure = kFailureUnregistered;
    } else if (p.slot->generation != p.slotGeneration) {
      failure = kFailureStaleSlot;
    }
    if (failure != kFailureNone) {
      if (threadIdx.x == 0)
        recordFailure(p.failure, failure, WaitSite{p.rank, -1, 0, algorithm}, 0);
      return false;
    }
    if (state == kSlotPeerInputs) {
      s->staged = false;
#pragma unroll
      for (int r = 0; r < kMaxRanks; ++r) {
        if (r < p.nranks) s->rank[r] = static_cast<const char*>(p.slot->input[r]) + p.sourceOffset;
      }
    }
  }
  return true;
}

// The call's tag as the barrier compares it: ranks reading in place and ranks copying through
// staging must not meet.
__device__ __forceinline__ uint32_t pullTag(const PullParams& p, const Sources& s) {
  return p.tag ^ (s.staged ? 0u : 0x5a5a5a5au);
}

// Sum of vector v over every rank's source, ranks in order.
template <typename T>
__device__ __forceinline__ Vec<T> reduceRanks(const Sources& s, int nranks, size_t v,
                                              size_t count) {
  uint4 in[kMaxRanks];
#pragma unroll
  for (int r = 0; r < kMaxRanks; ++r) {
    if (r < nranks)
      in[r] = s.staged ? loadShared(s.rank[r], v) : loadSource<T>(s.rank[r], v, count);
  }
  return sumInRankOrder<T, kMaxRanks>(in, nranks);
}

TPCOMM_DEVICE_NAMESPACE_END
