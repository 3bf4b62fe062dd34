// The functional check of a peer mapping: a kernel stores a word through it, the owner reads it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace tpcomm {

cudaError_t storeWordThroughMapping(uint32_t* word, uint32_t value, cudaStream_t stream);

}  // namespace tpcomm
