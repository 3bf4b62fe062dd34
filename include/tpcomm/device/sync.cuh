// Cross-rank synchronisation for one thread block: release/acquire flag accesses, bounded waits
// and the per-block barrier every all-reduce kernel is built from.
#pragma once

#include <stdint.h>

#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// The data a block wrote before a barrier must be visible to the peer block that passes it, over
// NVLink or PCIe too: flags are released and acquired at system scope.
__device__ __forceinline__ uint32_t loadAcquire(const uint32_t* flag) {
  uint32_t value;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(value) : "l"(flag) : "memory");
  return value;
}

__device__ __forceinline__ void storeRelease(uint32_t* flag, uint32_t value) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(flag), "r"(value) : "memory");
}

__device__ __forceinline__ unsigned long long globalTimerNs() {
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return ns;
}

// Reading the clock is slow next to a poll; check it (and whether this rank already gave up)
// only every this many polls.
constexpr unsigned int kPollsPerCheck = 1024;

struct WaitSite {
  int rank;
  int peer;
  int phase;
  int algorithm;
};

// Fills the rank's failure record unless another thread of the rank already did.
__device__ inline void recordFailure(const FailureContext& failure, int kind, const WaitSite& site,
                                     unsigned long long waitedNs) {
  if (atomicCAS(failure.claim, 0u, 1u) != 0u) return;
  FailureRecord* record = failure.record;
  record->kind = kind;
  record->rank = site.rank;
  record->peer = site.peer;
  record->block = static_cast<int>(blockIdx.x);
  record->phase = site.phase;
  record->algorithm = site.algorithm;
  record->waitedNs = waitedNs;
  __threadfence_system();
  record->ready = 1;
}

// Waits until *flag has reached `target`; counters only grow, so a peer that has already moved
// on to a later barrier (a larger value) also satisfies the wait. Returns false once the wait has
// run longer than the timeout, or once another wait of this rank has failed, so that every later
// kernel of a failed rank ends quickly instead of spinning out its own timeout.
__device__ inline bool waitAtLeast(const uint32_t* flag, uint32_t target,
                                   const FailureContext& failure, const WaitSite& site) {
  unsigned int polls = 0;
  unsigned long long start = 0;
  while (static_cast<int32_t>(loadAcquire(flag) - target) < 0) {
    if (++polls % kPollsPerCheck != 0) continue;
    if (*static_cast<volatile unsigned int*>(failure.claim) != 0u) return false;
    const unsigned long long now = globalTimerNs();
    if (start == 0) {
      start = now;
    } else if (now - start > failure.timeoutNs) {
      recordFailure(failure, kFailureTimeout, site, now - start);
      return false;
    }
  }
  return true;
}

// Barrier of block blockIdx.x with the same block of every rank. Publishes everything the block
// wrote before it and, once passed, makes everything the peer blocks wrote before it visible.
// `epoch` is this block's next counter value. `failed` is a shared word the block zeroed at start.
// Returns false on every thread of the block if a wait failed.
__device__ inline bool blockBarrier(const AllReduceParams& p, uint32_t epoch, int phase,
                                    int algorithm, int* failed) {
  __syncthreads();
  if (threadIdx.x < static_cast<unsigned>(p.nranks)) {
    const int peer = static_cast<int>(threadIdx.x);
    const size_t slot = static_cast<size_t>(blockIdx.x) * kMaxRanks;
    storeRelease(p.barrier.inbox[peer] + slot + p.rank, epoch);
    const WaitSite site{p.rank, peer, phase, algorithm};
    if (!waitAtLeast(p.barrier.inbox[p.rank] + slot + peer, epoch, p.failure, site)) *failed = 1;
  }
  __syncthreads();
  return *failed == 0;
}

TPCOMM_DEVICE_NAMESPACE_END
