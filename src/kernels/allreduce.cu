#include <algorithm>

#include "kernels/allreduce.h"
#include "tpcomm/device/allreduce.cuh"

namespace tpcomm {

bool kernelSupports(tpcDataType_t type) {
  return type == tpcFloat32 || type == tpcFloat16 || type == tpcBfloat16;
}

cudaError_t launchAllReduce(tpcDataType_t type, device::Algorithm algorithm,
                            const device::AllReduceParams& params, int blocks,
                            cudaStream_t stream) {
  switch (type) {
    case tpcFloat32:
      return device::launchAllReduce<float>(algorithm, params, blocks, stream);
    case tpcFloat16:
      return device::launchAllReduce<__half>(algorithm, params, blocks, stream);
    case tpcBfloat16:
      return device::launchAllReduce<__nv_bfloat16>(algorithm, params, blocks, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t allReduceBlocksPerSm(int* blocks) {
  int f32 = 0, f16 = 0, bf16 = 0;
  cudaError_t err = device::residentBlocksPerSm<float>(&f32);
  if (err == cudaSuccess) err = device::residentBlocksPerSm<__half>(&f16);
  if (err == cudaSuccess) err = device::residentBlocksPerSm<__nv_bfloat16>(&bf16);
  if (err != cudaSuccess) return err;
  *blocks = std::min({f32, f16, bf16});
  return cudaSuccess;
}

}  // namespace tpcomm
