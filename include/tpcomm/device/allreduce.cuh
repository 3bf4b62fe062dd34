// The all-reduce kernels and their launchers: raw parameters and a stream in, cudaError_t out.
// Each protocol lives in a header of its own (pull_oneshot, pull_twoshot, push_oneshot,
// push_twoshot); this one includes them all.
//
// Every launcher expects 2 <= nranks <= kMaxRanks, the same grid on every rank for the pull
// kernels (their blocks pair up with the same block of every peer), and that all ranks' blocks
// sharing a device can be resident at once (the waits spin). With `dependent` set the kernel is
// launched as a programmatic dependent of the kernel before it in the stream: it starts while
// that kernel finishes and waits for it before touching memory.
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/pull_oneshot.cuh"
#include "tpcomm/device/pull_twoshot.cuh"
#include "tpcomm/device/push_oneshot.cuh"
#include "tpcomm/device/push_twoshot.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

template <typename Params>
inline cudaError_t launchKernel(void (*kernel)(Params), const Params& p, int blocks, bool dependent,
                                cudaStream_t stream, int threads = kBlockThreads) {
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.stream = stream;
  config.attrs = dependent ? &attribute : nullptr;
  config.numAttrs = dependent ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, p);
}

// A pull kernel; the slotted variant (zero-copy sources) when p.slot is set.
template <typename T>
inline cudaError_t launchPull(int algorithm, const PullParams& p, int blocks, bool dependent,
                              cudaStream_t stream) {
  const bool slotted = p.slot != nullptr;
  if (algorithm == kTwoShot) {
    return launchKernel(slotted ? twoShotAllReduce<T, true> : twoShotAllReduce<T, false>, p, blocks,
                        dependent, stream);
  }
  return launchKernel(slotted ? oneShotAllReduce<T, true> : oneShotAllReduce<T, false>, p, blocks,
                      dependent, stream);
}

// A push kernel compiled for the fewest ranks (2, 4 or 8) that cover p.nranks: its per-rank
// arrays then fit in registers with room for batches of vectors in flight.
template <typename T, int kRanks>
inline cudaError_t launchPushFor(int algorithm, const PushParams& p, int blocks, bool dependent,
                                 cudaStream_t stream) {
  return launchKernel(
      algorithm == kPushTwoShot ? pushTwoShotAllReduce<T, kRanks> : pushOneShotAllReduce<T, kRanks>,
      p, blocks, dependent, stream);
}

template <typename T>
inline cudaError_t launchPush(int algorithm, const PushParams& p, int blocks, bool dependent,
                              cudaStream_t stream) {
  if (p.nranks <= 2) return launchPushFor<T, 2>(algorithm, p, blocks, dependent, stream);
  if (p.nranks <= 4) return launchPushFor<T, 4>(algorithm, p, blocks, dependent, stream);
  return launchPushFor<T, kMaxRanks>(algorithm, p, blocks, dependent, stream);
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
      reinterpret_cast<const void*>(pushOneShotAllReduce<T, 2>),
      reinterpret_cast<const void*>(pushTwoShotAllReduce<T, 2>),
      reinterpret_cast<const void*>(pushOneShotAllReduce<T, 4>),
      reinterpret_cast<const void*>(pushTwoShotAllReduce<T, 4>),
      reinterpret_cast<const void*>(pushOneShotAllReduce<T, kMaxRanks>),
      reinterpret_cast<const void*>(pushTwoShotAllReduce<T, kMaxRanks>),
  };
  auto fewest = [](const void* const* kernels, int count, int* out) {
    *out = kMaxBlocks;
    for (int k = 0; k < count; ++k) {
      int n = 0;
      const cudaError_t err =
          cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernels[k], kBlockThreads, 0);
      if (err != cudaSuccess) return err;
      *out = n < *out ? n : *out;
    }
    return cudaSuccess;
  };
  const cudaError_t err = fewest(pullKernels, 4, pull);
  return err != cudaSuccess ? err : fewest(pushKernels, 6, push);
}

TPCOMM_DEVICE_NAMESPACE_END
