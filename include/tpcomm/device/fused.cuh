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

template <typename T, int kRanks>
inline cudaError_t launchFusedFor(int algorithm, const FusedParams& p, int blocks, bool dependent,
                                  cudaStream_t stream) {
  return launchKernel(algorithm == kPushTwoShotNorm ? pushTwoShotAddRmsNorm<T, kRanks>
                                                    : pushOneShotAddRmsNorm<T, kRanks>,
                      p, blocks, dependent, stream, rowThreads(p.norm.hiddenVectors));
}

// `algorithm` is kPushOneShotNorm or kPushTwoShotNorm; T a 16-bit type.
template <typename T>
inline cudaError_t launchFused(int algorithm, const FusedParams& p, int blocks, bool dependent,
                               cudaStream_t stream) {
  if (p.nranks <= 2) return launchFusedFor<T, 2>(algorithm, p, blocks, dependent, stream);
  if (p.nranks <= 4) return launchFusedFor<T, 4>(algorithm, p, blocks, dependent, stream);
  return launchFusedFor<T, kMaxRanks>(algorithm, p, blocks, dependent, stream);
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
  *blocks = kMaxBlocks;
  for (const void* kernel : kernels) {
    int n = 0;
    const cudaError_t err =
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kBlockThreads, 0);
    if (err != cudaSuccess) return err;
    *blocks = n < *blocks ? n : *blocks;
  }
  return cudaSuccess;
}

TPCOMM_DEVICE_NAMESPACE_END
