// Calls a generic function with a value of the element type a tpcDataType_t names, for the types
// tpcomm's kernels sum; cudaErrorInvalidValue for any other.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "tpcomm/tpcomm.h"

namespace tpcomm {

template <typename Fn>
cudaError_t byType(tpcDataType_t type, Fn fn) {
  switch (type) {
    case tpcFloat32:
      return fn(float{});
    case tpcFloat16:
      return fn(__half{});
    case tpcBfloat16:
      return fn(__nv_bfloat16{});
    default:
      return cudaErrorInvalidValue;
  }
}

// The same for the 16-bit types alone, whose rows the norm kernels take.
template <typename Fn>
cudaError_t byRowType(tpcDataType_t type, Fn fn) {
  return byType(type, [&](auto zero) -> cudaError_t {
    if constexpr (sizeof(zero) == 2) {
      return fn(zero);
    } else {
      return cudaErrorInvalidValue;
    }
  });
}

// Calls fn with a value of every type tpcomm sums (with kRowTypes, of the 16-bit ones alone) and
// stops at the first error: for what must hold whatever type a later call has.
template <bool kRowTypes = false, typename Fn>
cudaError_t forEveryType(Fn fn) {
  for (tpcDataType_t type : {tpcFloat32, tpcFloat16, tpcBfloat16}) {
    cudaError_t err = cudaSuccess;
    if constexpr (kRowTypes) {
      if (type != tpcFloat32) err = byRowType(type, fn);
    } else {
      err = byType(type, fn);
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace tpcomm
