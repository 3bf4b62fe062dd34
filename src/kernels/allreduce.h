// The all-reduce kernels instantiated for the data types tpcomm supports, for the host runtime.
#pragma once

#include <cuda_runtime.h>

#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

// True for the types the kernels reduce (float32, float16, bfloat16).
bool kernelSupports(tpcDataType_t type);

cudaError_t launchAllReduce(tpcDataType_t type, device::Algorithm algorithm,
                            const device::AllReduceParams& params, int blocks, cudaStream_t stream);

// Blocks per multiprocessor that every all-reduce kernel can keep resident on the current device.
cudaError_t allReduceBlocksPerSm(int* blocks);

}  // namespace tpcomm
