// The end of a transformer block's all-reduce: the residual add and RMSNorm of each row, shared by
// the fused push kernels and by the norm kernel that follows an all-reduce made elsewhere (NCCL).
//
// A block owns a row at a time. Thread t holds vectors t, t + blockDim.x, ... of the row (at most
// kMaxRowVectors), adds the residual, stores the new residual and sums its squares; the block
// reduces the squares in a fixed order, and every thread then writes its part of the output. Every
// kernel uses these same steps and the same block size for a row size, so a row gets the same bits
// on every rank and through every path that sums the same way.
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "tpcomm/device/io.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// Vector k of this thread's part of a row; >= hiddenVectors where the thread has none.
__device__ __forceinline__ uint32_t rowVector(int k) {
  return threadIdx.x + static_cast<uint32_t>(k) * blockDim.x;
}

// T(sum + residual) per element, as raw words; adds its squares (in float32, in element order) to
// *squares.
template <typename T>
__device__ __forceinline__ uint4 addResidual(const uint4& sum, const uint4& residual,
                                             float* squares) {
  const Vec<T> s = asVec<T>(sum);
  const Vec<T> r = asVec<T>(residual);
  float added[Vec<T>::kElems];
#pragma unroll
  for (int e = 0; e < Vec<T>::kElems; ++e) {
    added[e] = __fadd_rn(toFloat(s.elem[e]), toFloat(r.elem[e]));
  }
  const Vec<T> out = roundToVec<T>(added);
#pragma unroll
  for (int e = 0; e < Vec<T>::kElems; ++e) {
    const float x = toFloat(out.elem[e]);
    *squares = __fmaf_rn(x, x, *squares);
  }
  return asRaw(out);
}

// The state a block keeps from row to row: its reduction scratch, and the output scale.
struct RowNorm {
  float (*partial)[kBlockThreads / 32];  // two sets, by row parity: one barrier per row
  int parity;
  float scaleInv;  // FP8 output: 1 / *scale

  __device__ RowNorm(const NormParams& n, float (*scratch)[kBlockThreads / 32]) {
    partial = scratch;
    parity = 0;
    scaleInv = n.outType == kNormOutInput ? 1.0f : __frcp_rn(__ldg(n.scale));
  }
};

// The sum of every thread's `x` in the block, the same bits on every thread and in a fixed order:
// a butterfly over each warp, then one over the warps' sums (a butterfly gives every lane the same
// bits, since each addition meets its mirror image). False on every thread if any thread's `ok` is
// false (its row is then left alone).
__device__ __forceinline__ bool blockSum(float x, bool ok, RowNorm* state, float* total) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  float* partial = state->partial[state->parity];
  state->parity ^= 1;
  const unsigned lane = threadIdx.x % 32;
  if (lane == 0) partial[threadIdx.x / 32] = x;
  if (!__syncthreads_and(ok)) return false;
  float sum = lane < blockDim.x / 32 ? partial[lane] : 0.0f;
  static_assert(kBlockThreads / 32 <= 32, "a lane for every warp's sum");
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  *total = sum;
  return true;
}

template <typename T>
__device__ __forceinline__ void storeNormalized(const NormParams& n, size_t at, const uint4& weight,
                                                const uint4& kept, float inverseRms,
                                                float scaleInv) {
  static_assert(Vec<T>::kElems == 8, "rows of 16-bit types");
  const Vec<T> x = asVec<T>(kept);
  const Vec<T> w = asVec<T>(weight);
  float y[Vec<T>::kElems];
#pragma unroll
  for (int e = 0; e < Vec<T>::kElems; ++e) {
    y[e] = __fmul_rn(__fmul_rn(toFloat(x.elem[e]), inverseRms), toFloat(w.elem[e]));
  }
  if (n.outType == kNormOutInput) {
    static_cast<uint4*>(n.out)[at] = asRaw(roundToVec<T>(y));
    return;
  }
  const __nv_fp8_interpretation_t kind = n.outType == kNormOutE4M3 ? __NV_E4M3 : __NV_E5M2;
  uint32_t packed[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const uint32_t lo = __nv_cvt_float2_to_fp8x2(
        make_float2(__fmul_rn(y[4 * h], scaleInv), __fmul_rn(y[4 * h + 1], scaleInv)),
        __NV_SATFINITE, kind);
    const uint32_t hi = __nv_cvt_float2_to_fp8x2(
        make_float2(__fmul_rn(y[4 * h + 2], scaleInv), __fmul_rn(y[4 * h + 3], scaleInv)),
        __NV_SATFINITE, kind);
    packed[h] = lo | hi << 16;
  }
  static_cast<uint2*>(n.out)[at] = make_uint2(packed[0], packed[1]);
}

// Ends row `row` once every thread of the block holds its part of the new residual in `kept` and
// the sum of its squares: stores the residual and the normalised output. `weights` is the weight
// row (in global or shared memory). False on every thread, with nothing stored, if any thread of
// the block failed to gather its part.
template <typename T>
__device__ __forceinline__ bool finishRow(const NormParams& n, size_t row, const uint4* weights,
                                          const uint4 (&kept)[kMaxRowVectors], float squares,
                                          bool ok, RowNorm* state) {
  float total = 0.0f;
  if (!blockSum(squares, ok, state, &total)) return false;
  const float meanSquare = __fdiv_rn(total, static_cast<float>(n.hidden));
  const float inverseRms = rsqrtf(__fadd_rn(meanSquare, n.eps));
#pragma unroll
  for (int k = 0; k < kMaxRowVectors; ++k) {
    const uint32_t v = rowVector(k);
    if (v >= n.hiddenVectors) continue;
    const size_t at = row * n.hiddenVectors + v;
    static_cast<uint4*>(n.residualOut)[at] = kept[k];
    storeNormalized<T>(n, at, weights[v], kept[k], inverseRms, state->scaleInv);
  }
  return true;
}

__device__ __forceinline__ uint4 loadRowVector(const void* base, size_t at) {
  return static_cast<const uint4*>(base)[at];
}

// The weight row and one row of the residual, loaded while a fused kernel's data is on the link:
// each is a load whose latency would otherwise follow the wait for the peers'.
struct RowPrefetch {
  uint4 residual[kMaxRowVectors];

  // Loads this thread's part of row `row` of the residual.
  __device__ __forceinline__ void loadResidual(const NormParams& n, size_t row) {
#pragma unroll
    for (int k = 0; k < kMaxRowVectors; ++k) {
      const uint32_t v = rowVector(k);
      if (v < n.hiddenVectors) residual[k] = loadRowVector(n.residualIn, row * n.hiddenVectors + v);
    }
  }
};

// Shared memory for a block's weight row: each thread only ever reads the vectors it wrote, so no
// barrier is needed.
using WeightRow = uint4[kMaxRowVectors * kBlockThreads];

// Starts loading this thread's weight vectors; storeWeights puts them in shared memory later, once
// the thread has sent its data.
__device__ __forceinline__ void loadWeights(const NormParams& n, uint4 (&w)[kMaxRowVectors]) {
#pragma unroll
  for (int k = 0; k < kMaxRowVectors; ++k) {
    const uint32_t v = rowVector(k);
    if (v < n.hiddenVectors) w[k] = __ldg(static_cast<const uint4*>(n.weight) + v);
  }
}

__device__ __forceinline__ void storeWeights(const NormParams& n, const uint4 (&w)[kMaxRowVectors],
                                             WeightRow& shared) {
#pragma unroll
  for (int k = 0; k < kMaxRowVectors; ++k) {
    const uint32_t v = rowVector(k);
    if (v < n.hiddenVectors) shared[v] = w[k];
  }
}

// The norm alone, after an all-reduce made elsewhere: `sum` holds the all-reduced rows (it may be
// the output buffer itself: a row is read whole before any of it is written).
template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    addRmsNorm(const __grid_constant__ AddNormParams p) {
  __shared__ float scratch[2][kBlockThreads / 32];
  waitForPreviousKernel();
  allowNextKernel();
  const NormParams& n = p.norm;
  RowNorm state(n, scratch);
  for (size_t row = blockIdx.x; row < n.rows; row += gridDim.x) {
    uint4 kept[kMaxRowVectors] = {};
    float squares = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxRowVectors; ++k) {
      const uint32_t v = rowVector(k);
      if (v >= n.hiddenVectors) continue;
      const size_t at = row * n.hiddenVectors + v;
      kept[k] = addResidual<T>(loadRowVector(p.sum, at), loadRowVector(n.residualIn, at), &squares);
    }
    finishRow<T>(n, row, static_cast<const uint4*>(n.weight), kept, squares, true, &state);
  }
}

TPCOMM_DEVICE_NAMESPACE_END
