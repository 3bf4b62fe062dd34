// The all-reduce fused with the residual add and RMSNorm, and the norm alone, instantiated for the
// types they take, for the host runtime.
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

// Both take float16 and bfloat16 rows (cudaErrorInvalidValue for other types). `algorithm` is
// device::kPushOneShotNorm or kPushTwoShotNorm; `clusterBlocks` as device::launchFused takes it,
// `dependent` and `completion` as device::launchKernel.
cudaError_t launchFused(tpcDataType_t type, device::Algorithm algorithm,
                        const device::FusedParams& params, int blocks, int clusterBlocks,
                        bool ownerSends, bool dependent, cudaStream_t stream,
                        cudaEvent_t completion);
cudaError_t launchAddRmsNorm(tpcDataType_t type, const device::AddNormParams& params, int blocks,
                             bool dependent, cudaStream_t stream, cudaEvent_t completion);

// Blocks per multiprocessor that every fused kernel can keep resident on the current device.
cudaError_t fusedBlocksPerSm(int* blocks);

// Clusters of `clusterBlocks` blocks of any fused kernel, of any row size, that the current device
// holds at once; 0 where it launches no clusters.
cudaError_t fusedRowClusters(int clusterBlocks, int* clusters);

}  // namespace tpcomm
