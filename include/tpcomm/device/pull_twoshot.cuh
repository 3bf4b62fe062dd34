// Pull two-shot: reduce-scatter then all-gather. Rank r reduces slice r from every rank's source
// into its scratch buffer, then every rank gathers the reduced slices. Moves 2(n-1)/n of the
// message per rank instead of n-1. Three barriers per block: inputs ready, slices reduced, peers
// done reading.
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/io.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/pull.cuh"
#include "tpcomm/device/sync.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

template <typename T, bool kSlotted>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    twoShotAllReduce(const __grid_constant__ PullParams p) {
  waitForPreviousKernel();
  if (rankFailed(p)) return;
  __shared__ int failed;
  if (threadIdx.x == 0) failed = 0;
  Sources src;
  if (!resolveSources<kSlotted>(p, kTwoShot, &src)) return;
  uint32_t epoch = p.barrier.epochs[blockIdx.x];
  const Stride s;
  const Slices slices(vecCount<T>(p.count), p.nranks);

  // Copy every slice with the in-slice mapping the reduction below uses, so that block b of rank
  // r reduces exactly what block b of each peer copied.
  for (int slice = 0; src.staged && slice < p.nranks; ++slice) {
    const size_t begin = slices.begin(slice);
    const size_t length = slices.length(slice);
    for (size_t i = s.first; i < length; i += s.step) {
      storeShared(p.staging[p.rank], begin + i,
                  loadInput<T>(p.input, begin + i, p.count, p.inputAligned));
    }
  }
  if (!blockBarrier(p, ++epoch, kPhaseInputsReady, kTwoShot, true, pullTag(p, src), &failed)) {
    return;
  }
  {
    const size_t begin = slices.begin(p.rank);
    const size_t length = slices.length(p.rank);
    for (size_t i = s.first; i < length; i += s.step) {
      const Vec<T> sum = reduceRanks<T>(src, p.nranks, begin + i, p.count);
      storeShared(p.scratch[p.rank], i, sum);
      storeOutput(p.output, begin + i, p.count, p.outputAligned, sum);
    }
  }
  if (!blockBarrier(p, ++epoch, kPhaseSlicesReduced, kTwoShot, false, 0, &failed)) return;

  // Start with the next rank's slice so that the ranks do not all read from rank 0 at once.
  for (int k = 1; k < p.nranks; ++k) {
    const int slice = (p.rank + k) % p.nranks;
    const size_t begin = slices.begin(slice);
    const size_t length = slices.length(slice);
    for (size_t i = s.first; i < length; i += s.step) {
      storeOutput(p.output, begin + i, p.count, p.outputAligned,
                  asVec<T>(loadShared(p.scratch[slice], i)));
    }
  }
  if (!blockBarrier(p, ++epoch, kPhasePeersDone, kTwoShot, false, 0, &failed)) return;
  if (threadIdx.x == 0) p.barrier.epochs[blockIdx.x] = epoch;
}

TPCOMM_DEVICE_NAMESPACE_END
