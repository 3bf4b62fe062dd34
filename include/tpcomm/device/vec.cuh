// 16-byte vectors of elements and their float32 accumulation. Host and device code: the host tests
// check these against float64 references.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stddef.h>

#include <type_traits>

#include "tpcomm/device/namespace.cuh"

#ifdef __CUDACC__
#define TPCOMM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TPCOMM_HOST_DEVICE inline
#endif
// Host compilers do not know the unroll pragma; the device compiler needs it.
#ifdef __CUDA_ARCH__
#define TPCOMM_UNROLL _Pragma("unroll")
#else
#define TPCOMM_UNROLL
#endif

TPCOMM_DEVICE_NAMESPACE_BEGIN

constexpr int kVecBytes = 16;

template <typename T>
struct alignas(kVecBytes) Vec {
  static constexpr int kElems = kVecBytes / static_cast<int>(sizeof(T));
  T elem[kElems];
};

template <typename T>
TPCOMM_HOST_DEVICE float toFloat(T x);
template <>
TPCOMM_HOST_DEVICE float toFloat<float>(float x) {
  return x;
}
template <>
TPCOMM_HOST_DEVICE float toFloat<__half>(__half x) {
  return __half2float(x);
}
template <>
TPCOMM_HOST_DEVICE float toFloat<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

// Round to nearest, ties to even.
template <typename T>
TPCOMM_HOST_DEVICE T fromFloat(float x);
template <>
TPCOMM_HOST_DEVICE float fromFloat<float>(float x) {
  return x;
}
template <>
TPCOMM_HOST_DEVICE __half fromFloat<__half>(float x) {
  return __float2half_rn(x);
}
template <>
TPCOMM_HOST_DEVICE __nv_bfloat16 fromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// The elements of `x` rounded to T, to nearest, ties to even. The device rounds 16-bit types a pair
// at a time, one instruction where one per element would take two and a shuffle: the same bits.
template <typename T>
TPCOMM_HOST_DEVICE Vec<T> roundToVec(const float (&x)[Vec<T>::kElems]) {
#ifdef __CUDA_ARCH__
  constexpr bool kDevice = true;
#else
  constexpr bool kDevice = false;
#endif
  Vec<T> out;
  if constexpr (kDevice && std::is_same<T, __nv_bfloat16>::value) {
    TPCOMM_UNROLL
    for (int k = 0; k < Vec<T>::kElems; k += 2) {
      reinterpret_cast<__nv_bfloat162*>(out.elem)[k / 2] = __floats2bfloat162_rn(x[k], x[k + 1]);
    }
  } else if constexpr (kDevice && std::is_same<T, __half>::value) {
    TPCOMM_UNROLL
    for (int k = 0; k < Vec<T>::kElems; k += 2) {
      reinterpret_cast<__half2*>(out.elem)[k / 2] = __floats2half2_rn(x[k], x[k + 1]);
    }
  } else {
    TPCOMM_UNROLL
    for (int k = 0; k < Vec<T>::kElems; ++k) out.elem[k] = fromFloat<T>(x[k]);
  }
  return out;
}

// Vectors needed for `count` elements; the last one may be partly used.
template <typename T>
TPCOMM_HOST_DEVICE size_t vecCount(size_t count) {
  return (count + Vec<T>::kElems - 1) / Vec<T>::kElems;
}

// Sum of the ranks' vectors in float32. Every rank adds the same vectors in the same order (rank
// 0 first), so every rank rounds identically and gets a bitwise identical result.
template <typename T>
struct Accumulator {
  float sum[Vec<T>::kElems];

  TPCOMM_HOST_DEVICE void set(const Vec<T>& v) {
    TPCOMM_UNROLL
    for (int k = 0; k < Vec<T>::kElems; ++k) sum[k] = toFloat(v.elem[k]);
  }
  TPCOMM_HOST_DEVICE void add(const Vec<T>& v) {
    TPCOMM_UNROLL
    for (int k = 0; k < Vec<T>::kElems; ++k) sum[k] += toFloat(v.elem[k]);
  }
  TPCOMM_HOST_DEVICE Vec<T> result() const { return roundToVec<T>(sum); }
};

TPCOMM_DEVICE_NAMESPACE_END
