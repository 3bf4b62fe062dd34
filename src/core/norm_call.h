// One call of tpcAllReduceAddRmsNorm as the caller made it, its checks, and its rows as the norm
// kernels see them.
#pragma once

#include <cstddef>

#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

struct NormCall {
  const void* input;
  const void* residualIn;
  void* residualOut;
  const void* weight;
  void* out;
  size_t rows;
  size_t hidden;
  float eps;
  tpcDataType_t type;
  tpcDataType_t outType;
  const float* scale;

  size_t rowBytes() const;
  size_t outRowBytes() const;
};

// The widest row the norm kernels take: kMaxRowVectors vectors for each of a block's threads.
constexpr size_t kMaxNormHidden = size_t{device::kMaxRowVectors} * device::kBlockThreads * 8;

// The rows' type and size, for the call or a question (`what`) about it. Names `rank` in its
// message.
tpcResult_t checkNormRows(tpcDataType_t type, size_t rows, size_t hidden, int rank,
                          const char* what);

// Everything about a call that needs no device: types, sizes, pointers, alignment and overlaps.
// Names `rank` in its message.
tpcResult_t checkNormCall(const NormCall& call, int rank);

// The kernels' view of rows [first, first + rows) of the call.
device::NormParams normParams(const NormCall& call, size_t first, size_t rows);

}  // namespace tpcomm
