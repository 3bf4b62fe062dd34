// The all-reduce kernels instantiated for the data types tpcomm supports, for the host runtime.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

// True for the types the kernels reduce (float32, float16, bfloat16).
bool kernelSupports(tpcDataType_t type);

// `dependent` and `completion` as device::launchKernel takes them.
cudaError_t launchPull(tpcDataType_t type, device::Algorithm algorithm,
                       const device::PullParams& params, int blocks, bool dependent,
                       cudaStream_t stream, cudaEvent_t completion);
cudaError_t launchPush(tpcDataType_t type, device::Algorithm algorithm,
                       const device::PushParams& params, int blocks, int threads, bool dependent,
                       cudaStream_t stream, cudaEvent_t completion);

// A kernel on `stream` that ends once the work `stream` waits for has completed, programmatic
// completion events (device::launchKernel's `completion`) included: they let the next kernel
// start, and only a kernel that waits for its prerequisites (griddepcontrol.wait) waits for them
// to end. Whatever follows on `stream` then runs after that work.
cudaError_t awaitProgrammaticCompletion(cudaStream_t stream);

// Blocks per multiprocessor that every pull kernel, and every push kernel, can keep resident on
// the current device.
cudaError_t allReduceBlocksPerSm(int* pull, int* push);

// Blocks per multiprocessor that push two-shot for `nranks` ranks can keep resident on the current
// device, whatever the type: more than the other push kernels at two ranks.
cudaError_t pushTwoShotBlocksPerSm(int nranks, int* blocks);

// Marks `bytes` (a multiple of 4) of receive buffers on the current device empty, on the legacy
// default stream.
cudaError_t fillEmpty(void* base, size_t bytes);

}  // namespace tpcomm
