// Cross-rank synchronisation pieces every kernel is built from: release/acquire flag accesses,
// bounded waits that also stop when this rank or a peer has failed, failure records, and the
// per-block barrier of the pull kernels.
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

__device__ __forceinline__ uint32_t loadVolatile(const unsigned int* word) {
  return *static_cast<const volatile unsigned int*>(word);
}

__device__ __forceinline__ unsigned long long globalTimerNs() {
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return ns;
}

// Programmatic dependent launch: wait until the kernel before this one in the stream has finished
// and its memory is visible, then let the kernel after this one start launching. Both are no-ops
// for a kernel launched without the attribute.
__device__ __forceinline__ void waitForPreviousKernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void allowNextKernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Reading the clock (and peers' failure words, over the link) is slow next to a poll; do it only
// every this many polls.
constexpr unsigned int kPollsPerCheck = 1024;

struct WaitSite {
  int rank;
  int peer;
  int phase;
  int algorithm;
};

// Fills the rank's failure record unless another thread of the rank already did. Setting the
// failure word is what stops the rank's later kernels and tells its peers.
__device__ inline void recordFailure(const FailureContext& failure, int kind, const WaitSite& site,
                                     unsigned long long waitedNs) {
  if (atomicCAS(failure.claims[site.rank], 0u, 1u) != 0u) return;
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

// True when this rank has failed: its kernels then do nothing at all, so that a late peer never
// pairs their counters or data with a later call.
__device__ __forceinline__ bool rankFailed(const CallParams& p) {
  return loadVolatile(p.failure.claims[p.rank]) != 0u;
}

// Bounds the spin waits of one thread in one kernel. Every kPollsPerCheck polls it looks at the
// clock, at this rank's failure word (another thread gave up: leave quietly) and at every peer's
// (a peer failed: fail naming it). ok() is false once the thread must stop waiting; the failure is
// recorded by then.
class Patience {
 public:
  __device__ Patience(const CallParams& p, int phase, int algorithm)
      : p_(p), phase_(phase), algorithm_(algorithm) {}

  // One more poll of a wait for `peer`.
  __device__ __forceinline__ bool ok(int peer) {
    if (++polls_ % kPollsPerCheck != 0) return true;
    return check(peer);
  }

 private:
  __device__ bool check(int peer) {
    if (rankFailed(p_)) return false;
    for (int r = 0; r < p_.nranks; ++r) {
      if (r != p_.rank && loadVolatile(p_.failure.claims[r]) != 0u) {
        recordFailure(p_.failure, kFailurePeerFailed, WaitSite{p_.rank, r, phase_, algorithm_}, 0);
        return false;
      }
    }
    const unsigned long long now = globalTimerNs();
    if (start_ == 0) {
      start_ = now;
    } else if (now - start_ > p_.failure.timeoutNs) {
      recordFailure(p_.failure, kFailureTimeout, WaitSite{p_.rank, peer, phase_, algorithm_},
                    now - start_);
      return false;
    }
    return true;
  }

  const CallParams& p_;
  int phase_;
  int algorithm_;
  unsigned int polls_ = 0;
  unsigned long long start_ = 0;
};

// Waits until *flag has reached `target`; counters only grow, so a peer that has already moved
// on to a later barrier (a larger value) also satisfies the wait.
__device__ inline bool waitAtLeast(const uint32_t* flag, uint32_t target, int peer,
                                   Patience* patience) {
  while (static_cast<int32_t>(loadAcquire(flag) - target) < 0) {
    if (!patience->ok(peer)) return false;
  }
  return true;
}

// Barrier of block blockIdx.x with the same block of every rank. Publishes everything the block
// wrote before it and, once passed, makes everything the peer blocks wrote before it visible.
// `epoch` is this block's next counter value. `failed` is a shared word the block zeroed at start.
// With `tag` set (the first barrier of a call), every rank's tag must equal this rank's.
// Returns false on every thread of the block if a wait failed.
__device__ inline bool blockBarrier(const PullParams& p, uint32_t epoch, int phase, int algorithm,
                                    bool checkTags, uint32_t tag, int* failed) {
  __syncthreads();
  if (threadIdx.x < static_cast<unsigned>(p.nranks)) {
    const int peer = static_cast<int>(threadIdx.x);
    const size_t slot = static_cast<size_t>(blockIdx.x) * kMaxRanks;
    if (checkTags) p.barrier.tags[peer][slot + p.rank] = tag;
    storeRelease(p.barrier.inbox[peer] + slot + p.rank, epoch);
    Patience patience(p, phase, algorithm);
    if (!waitAtLeast(p.barrier.inbox[p.rank] + slot + peer, epoch, peer, &patience)) {
      *failed = 1;
    } else if (checkTags && loadVolatile(p.barrier.tags[p.rank] + slot + peer) != tag) {
      recordFailure(p.failure, kFailureMismatch, WaitSite{p.rank, peer, phase, algorithm}, 0);
      *failed = 1;
    }
  }
  __syncthreads();
  return *failed == 0;
}

TPCOMM_DEVICE_NAMESPACE_END
