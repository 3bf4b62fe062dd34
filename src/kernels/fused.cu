#include <algorithm>

#include "kernels/by_type.h"
#include "kernels/fused.h"
#include "tpcomm/device/fused.cuh"

namespace tpcomm {

cudaError_t launchFused(tpcDataType_t type, device::Algorithm algorithm,
                        const device::FusedParams& params, int blocks, int clusterBlocks,
                        bool ownerSends, bool dependent, cudaStream_t stream,
                        cudaEvent_t completion) {
  return byRowType(type, [&](auto zero) {
    return device::launchFused<decltype(zero)>(algorithm, params, blocks, clusterBlocks, ownerSends,
                                               dependent, stream, completion);
  });
}

cudaError_t launchAddRmsNorm(tpcDataType_t type, const device::AddNormParams& params, int blocks,
                             bool dependent, cudaStream_t stream, cudaEvent_t completion) {
  return byRowType(type, [&](auto zero) {
    return device::launchAddRmsNorm<decltype(zero)>(params, blocks, dependent, stream, completion);
  });
}

cudaError_t fusedBlocksPerSm(int* blocks) {
  *blocks = device::kMaxBlocks;
  return forEveryType<true>([&](auto zero) {
    int n = 0;
    const cudaError_t err = device::fusedBlocksPerSm<decltype(zero)>(&n);
    *blocks = std::min(*blocks, n);
    return err;
  });
}

cudaError_t fusedRowClusters(int clusterBlocks, int* clusters) {
  int device = 0, launches = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) {
    status = cudaDeviceGetAttribute(&launches, cudaDevAttrClusterLaunch, device);
  }
  *clusters = 0;
  if (status != cudaSuccess || launches == 0) return status;
  *clusters = device::kMaxBlocks;
  return forEveryType<true>([&](auto zero) {
    int n = 0;
    const cudaError_t err = device::fusedRowClusters<decltype(zero)>(clusterBlocks, &n);
    *clusters = std::min(*clusters, n);
    return err;
  });
}

}  // namespace tpcomm
