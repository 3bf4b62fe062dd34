// How every kernel touches memory: 16-byte vectors of a caller's buffer (which may be unaligned and
// may end inside a vector), of buffers other ranks write, and the walks over them that every phase
// of a kernel shares.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// Brings the line holding `at` into L2: a hint, which changes no value a later load reads.
__device__ __forceinline__ void prefetchL2(const void* at) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(at));
}

// Vector v of a caller's buffer, which may be unaligned and may end inside the vector: missing
// elements read as zero.
template <typename T>
__device__ __forceinline__ Vec<T> loadInput(const void* base, size_t v, size_t count, int aligned) {
  const size_t begin = v * Vec<T>::kElems;
  const T* src = static_cast<const T*>(base) + begin;
  const size_t left = count - begin;
  if (aligned && left >= static_cast<size_t>(Vec<T>::kElems)) {
    return *reinterpret_cast<const Vec<T>*>(src);
  }
  Vec<T> out;
#pragma unroll
  for (int k = 0; k < Vec<T>::kElems; ++k) {
    out.elem[k] = static_cast<size_t>(k) < left ? src[k] : fromFloat<T>(0.0f);
  }
  return out;
}

template <typename T>
__device__ __forceinline__ void storeOutput(void* base, size_t v, size_t count, int aligned,
                                            const Vec<T>& x) {
  const size_t begin = v * Vec<T>::kElems;
  T* dst = static_cast<T*>(base) + begin;
  const size_t left = count - begin;
  if (aligned && left >= static_cast<size_t>(Vec<T>::kElems)) {
    *reinterpret_cast<Vec<T>*>(dst) = x;
    return;
  }
#pragma unroll
  for (int k = 0; k < Vec<T>::kElems; ++k) {
    if (static_cast<size_t>(k) < left) dst[k] = x.elem[k];
  }
}

template <typename T>
__device__ __forceinline__ Vec<T> asVec(const uint4& raw) {
  Vec<T> out;
  memcpy(&out, &raw, sizeof(out));
  return out;
}

template <typename T>
__device__ __forceinline__ uint4 asRaw(const Vec<T>& x) {
  uint4 raw;
  memcpy(&raw, &x, sizeof(raw));
  return raw;
}

// a + b per element, rounded to T once, to nearest, ties to even: as raw words. kPacked: for 16-bit
// types one packed instruction per pair, where the float32 sum takes a conversion per element each
// way. The same bits, since float32 (24 bits) holds at least 2p + 2 bits of a p-bit type, so
// rounding the sum to float32 first never changes how it rounds to T.
template <typename T, bool kPacked = true>
__device__ __forceinline__ uint4 addRounded(const uint4& a, const uint4& b) {
  if constexpr (kPacked &&
                (std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value)) {
    using Pair =
        typename std::conditional<std::is_same<T, __half>::value, __half2, __nv_bfloat162>::type;
    const uint32_t x[4] = {a.x, a.y, a.z, a.w};
    const uint32_t y[4] = {b.x, b.y, b.z, b.w};
    uint32_t sum[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      Pair p, q;
      memcpy(&p, &x[k], sizeof(p));
      memcpy(&q, &y[k], sizeof(q));
      const Pair r = __hadd2_rn(p, q);
      memcpy(&sum[k], &r, sizeof(r));
    }
    return make_uint4(sum[0], sum[1], sum[2], sum[3]);
  } else {
    // Accumulator's operations, spelled out: through it ptxas scheduled the fused two-shot kernels
    // otherwise, and 128 to 512 rows of 8192 took 0.04-0.1 us longer (4 H200s).
    const Vec<T> x = asVec<T>(a);
    const Vec<T> y = asVec<T>(b);
    float sum[Vec<T>::kElems];
#pragma unroll
    for (int e = 0; e < Vec<T>::kElems; ++e) {
      sum[e] = __fadd_rn(toFloat(x.elem[e]), toFloat(y.elem[e]));
    }
    return asRaw(roundToVec<T>(sum));
  }
}

// One vector of every rank (as raw words, which keep many loads in flight in few registers),
// summed in rank order in float32. Every rank sums the same vectors in the same order, so every
// rank gets the same bits. kPacked: as addRounded, for two ranks.
template <typename T, int kRanks, bool kPacked = true>
__device__ __forceinline__ Vec<T> sumInRankOrder(const uint4 (&in)[kRanks], int nranks) {
  if constexpr (kRanks == 2 && kPacked) {
    if (nranks == 2) return asVec<T>(addRounded<T>(in[0], in[1]));
  }
  Accumulator<T> acc;
  acc.set(asVec<T>(in[0]));
#pragma unroll
  for (int r = 1; r < kRanks; ++r) {
    if (r < nranks) acc.add(asVec<T>(in[r]));
  }
  return acc.result();
}

// Vector v of a buffer other ranks write (staging, scratch). Bypasses L1 so that no line cached
// by an earlier call can be read after a barrier.
__device__ __forceinline__ uint4 loadShared(const void* base, size_t v) {
  return __ldcg(static_cast<const uint4*>(base) + v);
}

// Vector v of a rank's own input read in place (zero-copy): 16-byte aligned, but the last vector
// may end inside it, and nothing past the end may be touched.
template <typename T>
__device__ __forceinline__ uint4 loadSource(const void* base, size_t v, size_t count) {
  const size_t begin = v * Vec<T>::kElems;
  if (begin + Vec<T>::kElems <= count) return loadShared(base, v);
  using Bits = typename std::conditional<sizeof(T) == 4, unsigned int, unsigned short>::type;
  Bits bits[Vec<T>::kElems] = {};
  const Bits* src = static_cast<const Bits*>(base) + begin;
#pragma unroll
  for (int k = 0; k < Vec<T>::kElems; ++k) {
    if (begin + k < count) bits[k] = __ldcg(src + k);
  }
  uint4 out;
  memcpy(&out, bits, sizeof(out));
  return out;
}

template <typename T>
__device__ __forceinline__ void storeShared(void* base, size_t v, const Vec<T>& x) {
  static_cast<uint4*>(base)[v] = asRaw(x);
}

// Grid-stride walk over [0, n): the one thread-to-data mapping every phase uses, so that a thread
// that reads vector v of an input is the one that later writes vector v of the output (in-place
// calls depend on it).
struct Stride {
  size_t first;
  size_t step;
  __device__ Stride()
      : first(static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x),
        step(static_cast<size_t>(gridDim.x) * blockDim.x) {}
  __device__ Stride(size_t first_, size_t step_) : first(first_), step(step_) {}
};

// The message split into nranks slices of whole vectors; the last ones may be short or empty.
struct Slices {
  size_t nvec;
  size_t perRank;
  __host__ __device__ Slices(size_t nvec_, int nranks)
      : nvec(nvec_), perRank((nvec_ + nranks - 1) / nranks) {}
  __host__ __device__ size_t begin(int s) const { return s * perRank; }
  __host__ __device__ size_t length(int s) const {
    const size_t b = begin(s);
    return b >= nvec ? 0 : (nvec - b < perRank ? nvec - b : perRank);
  }
};

TPCOMM_DEVICE_NAMESPACE_END
