// The all-reduce fused with the residual add and RMSNorm, and the norm alone, with their
// launchers: raw parameters and a stream in, cudaError_t out. A block normalises a row at a time
// with rowThreads(hiddenVectors) threads; the fused kernels expect what the push kernels expect
// (allreduce.cuh).
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/allreduce.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/norm.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/push_oneshot_norm.cuh"
#include "tpcomm/device/push_twoshot_norm.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// `algorithm` is kPushOneShotNorm or kPushTwoShotNorm; T a 16-bit type.
template <typename T>
inline cudaError_t launchFused(int algorithm, const FusedParams& p, int blocks, bool dependent,
                               cudaStream_t stream) {
  return byRankCount(p.nranks, [&](auto ranks) {
    constexpr int kRanks = decltype(ranks)::value;
    return launchKernel(algorithm == kPushTwoShotNorm ? pushTwoShotAddRmsNorm<T, kRanks>
                                                      : pushOneShotAddRmsNorm<T, kRanks>,
                        p, blocks, dependent, stream, rowThreads(p.norm.hiddenVectors));
  });
}

template <typename T>
inline cudaError_t launchAddRmsNorm(const AddNormParams& p, int blocks, bool dependent,
                                    cudaStream_t stream) {
  return launchKernel(addRmsNorm<T>, p, blocks, dependent, stream,
                      rowThreads(p.norm.hiddenVectors));
}

// The fewest blocks of any fused kernel for T that fit on one multiprocessor at once, at the
// largest row (and so block) size.
template <typename T>
inline cudaError_t fusedBlocksPerSm(int* blocks) {
  const void* kernels[] = {
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 2>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, 2>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 4>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, 4>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, kMaxRanks>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, kMaxRanks>),
  };
  return fewestBlocksPerSm(kernels, 6, blocks);
}

TPCOMM_DEVICE_NAMESPACE_END
