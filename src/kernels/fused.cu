#include <algorithm>

#include "kernels/by_type.h"
#include "kernels/fused.h"
#include "tpcomm/device/fused.cuh"

namespace tpcomm {

cudaError_t launchFused(tpcDataType_t type, device::Algorithm algorithm,
                        const device::FusedParams& params, int blocks, bool rowClusters,
                        bool dependent, cudaStream_t stream) {
  return byRowType(type, [&](auto zero) {
    return device::launchFused<decltype(zero)>(algorithm, params, blocks, rowClusters, dependent,
                                               stream);
  });
}

cudaError_t launchAddRmsNorm(tpcDataType_t type, const device::AddNormParams& params, int blocks,
                             bool dependent, cudaStream_t stream) {
  return byRowType(type, [&](auto zero) {
    return device::launchAddRmsNorm<decltype(zero)>(params, blocks, dependent, stream);
  });
}

cudaError_t fusedBlocksPerSm(int* blocks) {
  *blocks = device::kMaxBlocks;
  for (tpcDataType_t type : {tpcFloat16, tpcBfloat16}) {
    int n = 0;
    const cudaError_t err =
        byRowType(type, [&](auto zero) { return device::fusedBlocksPerSm<decltype(zero)>(&n); });
    if (err != cudaSuccess) return err;
    *blocks = std::min(*blocks, n);
  }
  return cudaSuccess;
}

cudaError_t fusedRowClusters(int* clusters) {
  int device = 0, launches = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&launches, cudaDevAttrClusterLaunch, device);
  *clusters = 0;
  if (err != cudaSuccess || launches == 0) return err;
  *clusters = device::kMaxBlocks;
  for (tpcDataType_t type : {tpcFloat16, tpcBfloat16}) {
    int n = 0;
    err = byRowType(type, [&](auto zero) { return device::fusedRowClusters<decltype(zero)>(&n); });
    if (err != cudaSuccess) return err;
    *clusters = std::min(*clusters, n);
  }
  return cudaSuccess;
}

}  // namespace tpcomm
