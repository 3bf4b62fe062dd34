// The all-reduce kernels and their launchers: raw parameters and a stream in, cudaError_t out.
// Each protocol lives in a header of its own (pull_oneshot, pull_twoshot, push_oneshot,
// push_twoshot); this one includes them all.
//
// Every launcher expects 2 <= nranks <= kMaxRanks, the same grid on every rank for the pull
// kernels (their blocks pair up with the same block of every peer), and that all ranks' blocks
// sharing a device can be resident at once (the waits spin). `dependent` and `completion` are
// launchKernel's (launch.cuh).
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "tpcomm/device/launch.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/pull_oneshot.cuh"
#include "tpcomm/device/pull_twoshot.cuh"
#include "tpcomm/device/push_oneshot.cuh"
#include "tpcomm/device/push_twoshot.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// A pull kernel; the slotted variant (zero-copy sources) when p.slot is set.
template <typename T>
inline cudaError_t launchPull(int algorithm, const PullParams& p, int blocks, bool dependent,
                              cudaStream_t stream, cudaEvent_t completion = nullptr) {
  const bool slotted = p.slot != nullptr;
  if (algorithm == kTwoShot) {
    return launchKernel(slotted ? twoShotAllReduce<T, true> : twoShotAllReduce<T, false>, p, blocks,
                        dependent, stream, kBlockThreads, 1, completion);
  }
  return launchKernel(slotted ? oneShotAllReduce<T, true> : oneShotAllReduce<T, false>, p, blocks,
                      dependent, stream, kBlockThreads, 1, completion);
}

// Calls fn(std::integral_constant<int, kRanks>) for the fewest ranks (2, 4 or 8) that cover
// nranks: a push kernel compiled for them keeps its per-rank arrays in registers with room for
// batches of vectors in flight.
template <typename Fn>
inline cudaError_t byRankCount(int nranks, Fn fn) {
  if (nranks <= 2) return fn(std::integral_constant<int, 2>{});
  if (nranks <= 4) return fn(std::integral_constant<int, 4>{});
  return fn(std::integral_constant<int, kMaxRanks>{});
}

template <typename T>
inline cudaError_t launchPush(int algorithm, const PushParams& p, int blocks, int threads,
                              bool dependent, cudaStream_t stream,
                              cudaEvent_t completion = nullptr) {
  return byRankCount(p.nranks, [&](auto ranks) {
    constexpr int kRanks = decltype(ranks)::value;
    const size_t vectors = vecCount<T>(p.count);
    if (algorithm == kPushTwoShot) {
      // The split by role needs both halves of a full block.
      const bool byRole = kRanks == 2 && threads == kBlockThreads && vectors * 16 > kByRoleBytes;
      return launchKernel(byRole ? pushTwoShotByRole<T> : pushTwoShotAllReduce<T, kRanks>, p,
                          blocks, dependent, stream, threads, 1, completion);
    }
    // At two ranks, tags apart with polls staggered wherever a thread has one vector at most: to
    // 1 MB on 132 multiprocessors. Graph, bf16, 2 H200s, medians of three A/B runs against launches
    // above 16 KB with every thread checking the tags (us): 32 KB 3.08 -> 2.68, 64 KB 3.23 -> 2.92,
    // 256 KB 3.96 -> 3.56, 512 KB 4.80 -> 4.31, 1 MB 6.44 -> 5.97.
    const bool apart = kRanks == 2 ? vectors <= static_cast<size_t>(blocks) * threads
                                   : vectors <= kTagsApartVectors;
    return launchKernel(
        apart ? pushOneShotAllReduce<T, kRanks, true> : pushOneShotAllReduce<T, kRanks, false>, p,
        blocks, dependent, stream, threads, 1, completion);
  });
}

// The fewest blocks of any of `count` kernels that fit on one multiprocessor at once.
inline cudaError_t fewestBlocksPerSm(const void* const* kernels, int count, int* out) {
  *out = kMaxBlocks;
  for (int k = 0; k < count; ++k) {
    int n = 0;
    const cudaError_t err =
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernels[k], kBlockThreads, 0);
    if (err != cudaSuccess) return err;
    *out = n < *out ? n : *out;
  }
  return cudaSuccess;
}

template <int kCount>
inline cudaError_t fewestBlocksPerSm(const void* const (&kernels)[kCount], int* out) {
  return fewestBlocksPerSm(kernels, kCount, out);
}

// The fewest blocks of any pull kernel, and of any push kernel, for T that fit on one
// multiprocessor at once.
template <typename T>
inline cudaError_t residentBlocksPerSm(int* pull, int* push) {
  const void* pullKernels[] = {
      reinterpret_cast<const void*>(oneShotAllReduce<T, false>),
      reinterpret_cast<const void*>(oneShotAllReduce<T, true>),
      reinterpret_cast<const void*>(twoShotAllReduce<T, false>),
      reinterpret_cast<const void*>(twoShotAllReduce<T, true>),
  };
  const void* pushKernels[] = {
      reinterpret_cast<const void*>(pushOneShotAllReduce<T, 2, false>),
      reinterpret_cast<const void*>(pushOneShotAllReduce<T, 2, true>),
      reinterpret_cast<const void*>(pushTwoShotAllReduce<T, 2>),
      reinterpret_cast<const void*>(pushTwoShotByRole<T>),
      reinterpret_cast<const void*>(pushOneShotAllReduce<T, 4, false>),
      reinterpret_cast<const void*>(pushOneShotAllReduce<T, 4, true>),
      reinterpret_cast<const void*>(pushTwoShotAllReduce<T, 4>),
      reinterpret_cast<const void*>(pushOneShotAllReduce<T, kMaxRanks, false>),
      reinterpret_cast<const void*>(pushOneShotAllReduce<T, kMaxRanks, true>),
      reinterpret_cast<const void*>(pushTwoShotAllReduce<T, kMaxRanks>),
  };
  const cudaError_t err = fewestBlocksPerSm(pullKernels, pull);
  return err != cudaSuccess ? err : fewestBlocksPerSm(pushKernels, push);
}

// Blocks of push two-shot (either kernel) for T and `nranks` ranks that fit on one multiprocessor
// at once.
template <typename T>
inline cudaError_t pushTwoShotBlocksPerSm(int nranks, int* blocks) {
  return byRankCount(nranks, [&](auto ranks) {
    constexpr int kRanks = decltype(ranks)::value;
    const void* kernels[] = {reinterpret_cast<const void*>(pushTwoShotAllReduce<T, kRanks>),
                             reinterpret_cast<const void*>(pushTwoShotByRole<T>)};
    return fewestBlocksPerSm(kernels, kRanks == 2 ? 2 : 1, blocks);
  });
}

TPCOMM_DEVICE_NAMESPACE_END
