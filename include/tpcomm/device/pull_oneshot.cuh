// Pull one-shot: every rank copies its input into its staging buffer (unless the ranks' inputs are
// read in place), then reads every rank's copy and reduces the whole message. Two barriers per
// block with the same block of every peer: inputs ready, and peers done reading.
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
    oneShotAllReduce(const __grid_constant__ PullParams p) {
  waitForPreviousKernel();
  if (rankFailed(p)) return;
  __shared__ int failed;
  if (threadIdx.x == 0) failed = 0;
  Sources src;
  if (!resolveSources<kSlotted>(p, kOneShot, &src)) return;
  uint32_t epoch = p.barrier.epochs[blockIdx.x];
  const Stride s;
  const size_t nvec = vecCount<T>(p.count);

  if (src.staged) {
    for (size_t v = s.first; v < nvec; v += s.step) {
      storeShared(p.staging[p.rank], v, loadInput<T>(p.input, v, p.count, p.inputAligned));
    }
  }
  if (!blockBarrier(p, ++epoch, kPhaseInputsReady, kOneShot, true, pullTag(p, src), &failed)) {
    return;
  }
  for (size_t v = s.first; v < nvec; v += s.step) {
    storeOutput(p.output, v, p.count, p.outputAligned, reduceRanks<T>(src, p.nranks, v, p.count));
  }
  if (!blockBarrier(p, ++epoch, kPhasePeersDone, kOneShot, false, 0, &failed)) return;
  if (threadIdx.x == 0) p.barrier.epochs[blockIdx.x] = epoch;
}

TPCOMM_DEVICE_NAMESPACE_END
