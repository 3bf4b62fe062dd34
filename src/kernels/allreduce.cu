#include <algorithm>

#include "kernels/allreduce.h"
#include "kernels/by_type.h"
#include "tpcomm/device/allreduce.cuh"

namespace tpcomm {
namespace {

// Ends once the kernels it depends on programmatically have completed (its parameter is unused:
// device::launchKernel launches kernels of one parameter).
__global__ void awaitPrerequisites(int) { device::waitForPreviousKernel(); }

__global__ void fillEmptyWords(uint32_t* words, size_t count) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    words[i] = device::kEmpty;
  }
}

}  // namespace

bool kernelSupports(tpcDataType_t type) {
  return type == tpcFloat32 || type == tpcFloat16 || type == tpcBfloat16;
}

cudaError_t launchPull(tpcDataType_t type, device::Algorithm algorithm,
                       const device::PullParams& params, int blocks, bool dependent,
                       cudaStream_t stream, cudaEvent_t completion) {
  return byType(type, [&](auto zero) {
    return device::launchPull<decltype(zero)>(algorithm, params, blocks, dependent, stream,
                                              completion);
  });
}

cudaError_t launchPush(tpcDataType_t type, device::Algorithm algorithm,
                       const device::PushParams& params, int blocks, int threads, bool dependent,
                       cudaStream_t stream, cudaEvent_t completion) {
  return byType(type, [&](auto zero) {
    return device::launchPush<decltype(zero)>(algorithm, params, blocks, threads, dependent, stream,
                                              completion);
  });
}

cudaError_t awaitProgrammaticCompletion(cudaStream_t stream) {
  return device::launchKernel(awaitPrerequisites, 0, 1, true, stream, 32);
}

cudaError_t allReduceBlocksPerSm(int* pull, int* push) {
  *pull = *push = device::kMaxBlocks;
  return forEveryType([&](auto zero) {
    int pullBlocks = 0, pushBlocks = 0;
    const cudaError_t err = device::residentBlocksPerSm<decltype(zero)>(&pullBlocks, &pushBlocks);
    *pull = std::min(*pull, pullBlocks);
    *push = std::min(*push, pushBlocks);
    return err;
  });
}

cudaError_t pushTwoShotBlocksPerSm(int nranks, int* blocks) {
  *blocks = device::kMaxBlocks;
  return forEveryType([&](auto zero) {
    int n = 0;
    const cudaError_t err = device::pushTwoShotBlocksPerSm<decltype(zero)>(nranks, &n);
    *blocks = std::min(*blocks, n);
    return err;
  });
}

cudaError_t fillEmpty(void* base, size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  const size_t words = bytes / 4;
  const unsigned blocks = static_cast<unsigned>(std::min<size_t>((words + 255) / 256, 4096));
  fillEmptyWords<<<blocks, 256>>>(static_cast<uint32_t*>(base), words);
  return cudaGetLastError();
}

}  // namespace tpcomm
