// Inputs whose all-reduce is exactly representable, and on-device checks against them. Shared by
// the tests and tpcomm-perf, so that "#wrong" means the same thing in both: elements that differ,
// bit for bit, from the exact sum.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "tpcomm/device/vec.cuh"

namespace tpcomm {
namespace verifiable {

using device::fromFloat;
using device::toFloat;

__host__ __device__ inline uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

__host__ __device__ inline uint32_t hashOf(size_t i, int rank, uint32_t seed) {
  return mix(static_cast<uint32_t>(i) ^
             mix(static_cast<uint32_t>(i >> 32) + 0x9e3779b9U * rank + mix(seed)));
}

// An integer in [-16, 16]: sums over up to 8 ranks stay within [-128, 128], exact even in bf16.
__host__ __device__ inline int exactValue(int rank, size_t i, uint32_t seed) {
  return static_cast<int>(hashOf(i, rank, seed) % 33) - 16;
}

__host__ __device__ inline int exactSum(int nranks, size_t i, uint32_t seed) {
  int sum = 0;
  for (int r = 0; r < nranks; ++r) sum += exactValue(r, i, seed);
  return sum;
}

// Uniform in [-1, 1).
__host__ __device__ inline float randomValue(int rank, size_t i, uint32_t seed) {
  return static_cast<float>(hashOf(i, rank, seed ^ 0x5bd1e995U)) * (2.0f / 4294967296.0f) - 1.0f;
}

template <typename T>
__device__ bool sameBits(T a, T b) {
  if constexpr (sizeof(T) == 4) {
    return __float_as_uint(toFloat(a)) == __float_as_uint(toFloat(b));
  } else {
    return *reinterpret_cast<const unsigned short*>(&a) ==
           *reinterpret_cast<const unsigned short*>(&b);
  }
}

#define TPCOMM_GRID_STRIDE(i, n)                                          \
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < (n); \
       i += size_t{gridDim.x} * blockDim.x)

template <typename T>
__global__ void fillExact(T* out, size_t count, int rank, uint32_t seed) {
  TPCOMM_GRID_STRIDE(i, count) {
    out[i] = fromFloat<T>(static_cast<float>(exactValue(rank, i, seed)));
  }
}

template <typename T>
__global__ void fillRandom(T* out, size_t count, int rank, uint32_t seed) {
  TPCOMM_GRID_STRIDE(i, count) { out[i] = fromFloat<T>(randomValue(rank, i, seed)); }
}

// Adds to *wrong the number of elements that differ from the exact sum over ranks.
template <typename T>
__global__ void checkExact(const T* out, size_t count, int nranks, uint32_t seed,
                           unsigned long long* wrong) {
  unsigned long long bad = 0;
  TPCOMM_GRID_STRIDE(i, count) {
    bad += !sameBits(out[i], fromFloat<T>(static_cast<float>(exactSum(nranks, i, seed))));
  }
  if (bad != 0) atomicAdd(wrong, bad);
}

// Adds to *wrong the number of elements farther from the float64 sum than float32 accumulation
// and one rounding to T (relative `outputEps`) allow; NaN always counts.
template <typename T>
__global__ void checkRandom(const T* out, size_t count, int nranks, uint32_t seed, double outputEps,
                            unsigned long long* wrong) {
  unsigned long long bad = 0;
  TPCOMM_GRID_STRIDE(i, count) {
    double exact = 0, magnitude = 0;
    for (int r = 0; r < nranks; ++r) {
      const double x = toFloat(fromFloat<T>(randomValue(r, i, seed)));
      exact += x;
      magnitude += fabs(x);
    }
    const double got = toFloat(out[i]);
    const double tolerance = outputEps * fabs(exact) + nranks * 0x1p-24 * magnitude + 1e-30;
    bad += !(fabs(got - exact) <= tolerance);
  }
  if (bad != 0) atomicAdd(wrong, bad);
}

template <typename T>
__global__ void countDifferentBits(const T* a, const T* b, size_t count, unsigned long long* diff) {
  unsigned long long bad = 0;
  TPCOMM_GRID_STRIDE(i, count) { bad += !sameBits(a[i], b[i]); }
  if (bad != 0) atomicAdd(diff, bad);
}

#undef TPCOMM_GRID_STRIDE

// Half an ulp of T, relative: the rounding of one conversion from float32.
template <typename T>
double outputEpsilon() {
  if (sizeof(T) == 4) return 0x1p-24;
  return std::is_same<T, __half>::value ? 0x1p-11 : 0x1p-8;
}

// A grid for the fill and check kernels above (256 threads a block).
inline dim3 grid(size_t count) {
  const size_t blocks = (count + 255) / 256;
  return dim3(static_cast<unsigned>(blocks == 0 ? 1 : (blocks < 1024 ? blocks : 1024)));
}

}  // namespace verifiable
}  // namespace tpcomm
