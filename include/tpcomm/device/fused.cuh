// The all-reduce fused with the residual add and RMSNorm, and the norm alone, with their
// launchers: raw parameters and a stream in, cudaError_t out. A block normalises a row at a time
// with rowThreads(hiddenVectors) threads, or a cluster of up to rowBlocks(hiddenVectors) blocks of
// rowClusterThreads threads does (the fused kernels, for few rows); the fused kernels
// expect what the push kernels expect (allreduce.cuh), their clusters and completion events too.
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/allreduce.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/norm.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/push_oneshot_norm.cuh"
#include "tpcomm/device/push_twoshot_norm.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// Whether a two-rank one-vector launch of `rows` rows is faster with every thread adding the warp
// sums (pushOneShotAddRmsNorm's kEveryThreadAdds) than with a lane each and a butterfly: from 3 to
// 16 rows. 2 H200s, graph, bf16, medians of three A/B runs (us, every thread adds against lanes and
// a butterfly): rows of 8192, 1 row 3.12 against 2.98, 2 rows 3.15 against 3.11, 4 rows 3.27
// against 3.40, 8 rows 3.57 against 3.59, 16 rows 4.03 against 4.02, 32 rows 4.97 against 4.91,
// 64 rows 6.64 against 6.57; rows of 5120, 1 row 3.09 against 2.95, 2 rows 3.12 against 2.98, 4
// rows 3.15 against 3.22, 8 rows 3.38 against 3.44, 16 rows 3.71 against 3.71, 32 rows 4.32
// against 4.29, 64 rows 5.27 against 5.18. From 32 rows a block has 8 or 16 warps, each adding
// every sum. Why it loses at one and two rows is not known: not its registers (116 against 72), as
// a build that adds only the first 32 sums (83) took the same times at one and two rows.
__host__ __device__ constexpr bool everyThreadAddsRows(size_t rows) {
  return rows >= 3 && rows <= 16;
}

// `algorithm` is kPushOneShotNorm or kPushTwoShotNorm; T a 16-bit type. With `clusterBlocks` of
// 2 or more (at most rowBlocks(hiddenVectors), dividing `blocks`), the kernel spreads each row over
// a cluster of that many blocks, of which there must be one for each row it normalises (every row
// one-shot, a rank's slice two-shot: RowSums says why); otherwise a block holds a row.
// `ownerSends`: pushOneShotAddRmsNorm's kOwnerSends, one-shot where a block holds a row.
template <typename T>
inline cudaError_t launchFused(int algorithm, const FusedParams& p, int blocks, int clusterBlocks,
                               bool ownerSends, bool dependent, cudaStream_t stream,
                               cudaEvent_t completion = nullptr) {
  if (clusterBlocks > 1) {
    const size_t ranks = p.nranks > 0 ? static_cast<size_t>(p.nranks) : 1;
    const size_t normalised =
        algorithm == kPushTwoShotNorm ? (p.norm.rows + ranks - 1) / ranks : p.norm.rows;
    if (static_cast<size_t>(blocks / clusterBlocks) < normalised) return cudaErrorInvalidValue;
  }
  const uint32_t hv = p.norm.hiddenVectors;
  return byRankCount(p.nranks, [&](auto ranks) {
    constexpr int kRanks = decltype(ranks)::value;
    const int cluster = clusterBlocks > 1 ? clusterBlocks : 1;
    const int threads = cluster > 1 ? rowClusterThreads(hv, cluster) : rowThreads(hv);
    if (algorithm == kPushTwoShotNorm) {
      return launchKernel(cluster > 1 ? pushTwoShotAddRmsNorm<T, kRanks, true>
                                      : pushTwoShotAddRmsNorm<T, kRanks, false>,
                          p, blocks, dependent, stream, threads, cluster, completion);
    }
    // At two ranks only rows over clusters (few rows) are measured faster polled staggered.
    const bool oneVector =
        oneVectorRows(hv, static_cast<uint32_t>(threads * cluster)) && (kRanks > 2 || cluster > 1);
    constexpr bool kTwo = kRanks == 2;
    if (ownerSends && cluster > 1) return cudaErrorInvalidValue;
    const auto kernel = ownerSends   ? pushOneShotAddRmsNorm<T, kRanks, false, false, true>
                        : !oneVector ? pushOneShotAddRmsNorm<T, kRanks, false>
                        : kTwo && everyThreadAddsRows(p.norm.rows)
                            ? pushOneShotAddRmsNorm<T, kRanks, true, kTwo>
                            : pushOneShotAddRmsNorm<T, kRanks, true>;
    return launchKernel(kernel, p, blocks, dependent, stream, threads, cluster, completion);
  });
}

template <typename T>
inline cudaError_t launchAddRmsNorm(const AddNormParams& p, int blocks, bool dependent,
                                    cudaStream_t stream, cudaEvent_t completion = nullptr) {
  return launchKernel(addRmsNorm<T>, p, blocks, dependent, stream, rowThreads(p.norm.hiddenVectors),
                      1, completion);
}

// The fewest blocks of any fused kernel for T that fit on one multiprocessor at once, at the
// largest row (and so block) size.
template <typename T>
inline cudaError_t fusedBlocksPerSm(int* blocks) {
  const void* kernels[] = {
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 2>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 2, true>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 2, true, true>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 2, false, false, true>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, 2, false>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, 2, true>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 4>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 4, true>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 4, false, false, true>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, 4, false>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, 4, true>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, kMaxRanks>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, kMaxRanks, true>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, kMaxRanks, false, false, true>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, kMaxRanks, false>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, kMaxRanks, true>),
  };
  return fewestBlocksPerSm(kernels, blocks);
}

// The fewest clusters of `clusterBlocks` blocks of any fused kernel for T that the device holds
// at once, in blocks of the most threads any row takes over that many (largestRowClusterThreads):
// a bound for every row. 0 where the kernels were compiled for a device without clusters (they
// would then take each block of a cluster for a whole group).
template <typename T>
inline cudaError_t fusedRowClusters(int clusterBlocks, int* clusters) {
  const void* kernels[] = {
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 2>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 2, true>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 2, true, true>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, 2, true>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 4>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, 4, true>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, 4, true>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, kMaxRanks>),
      reinterpret_cast<const void*>(pushOneShotAddRmsNorm<T, kMaxRanks, true>),
      reinterpret_cast<const void*>(pushTwoShotAddRmsNorm<T, kMaxRanks, true>),
  };
  *clusters = kMaxBlocks;
  for (const void* kernel : kernels) {
    cudaFuncAttributes compiled;
    cudaError_t err = cudaFuncGetAttributes(&compiled, kernel);
    if (err != cudaSuccess) return err;
    if (compiled.ptxVersion < 90) {
      *clusters = 0;
      return cudaSuccess;
    }
    cudaLaunchAttribute attribute;
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim = {static_cast<unsigned>(clusterBlocks), 1, 1};
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(static_cast<unsigned>(clusterBlocks));
    config.blockDim = dim3(largestRowClusterThreads(clusterBlocks));
    config.attrs = &attribute;
    config.numAttrs = 1;
    int n = 0;
    err = cudaOccupancyMaxActiveClusters(&n, kernel, &config);
    if (err != cudaSuccess) return err;
    *clusters = n < *clusters ? n : *clusters;
  }
  return cudaSuccess;
}

TPCOMM_DEVICE_NAMESPACE_END
