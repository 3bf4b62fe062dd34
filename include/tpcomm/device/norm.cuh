// The end of a transformer block's all-reduce: the residual add and RMSNorm of each row, shared by
// the fused push kernels and by the norm kernel that follows an all-reduce made elsewhere (NCCL).
//
// A row belongs to a group of threads at a time: one block, or (the fused kernels, for few rows)
// the blocks of a thread block cluster, so that a row is gathered and normalised by several
// multiprocessors. Thread t of the group holds vectors t, t + threads, ... of the row (at most
// kMaxRowVectors), adds the residual, stores the new residual and sums each vector's squares; the
// group reduces the squares in the order params.cuh fixes (kMaxRowWarps), which does not depend on
// how the group is laid out, and every thread then writes its part of the output. So a row gets
// the same bits on every rank and through every path that sums the same way.
#pragma once

#include <cooperative_groups.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "tpcomm/device/io.cuh"
#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

// This thread's place among the threads that hold a row.
struct RowLane {
  uint32_t thread;
  uint32_t threads;
  // Vector k of this thread's part of a row; >= hiddenVectors where the thread has none.
  __device__ __forceinline__ uint32_t vector(int k) const {
    return thread + static_cast<uint32_t>(k) * threads;
  }
};

// A row held by one block.
__device__ __forceinline__ RowLane blockLane() { return RowLane{threadIdx.x, blockDim.x}; }

// The blocks of this block's thread block cluster (one block outside a cluster, and before Hopper).
struct RowBlocks {
  __device__ __forceinline__ static unsigned count() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return cooperative_groups::this_cluster().num_blocks();
#else
    return 1;
#endif
  }
  __device__ __forceinline__ static unsigned rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return cooperative_groups::this_cluster().block_rank();
#else
    return 0;
#endif
  }
  // This thread's place in a row spread over the cluster, in block order.
  __device__ __forceinline__ static RowLane lane() {
    return RowLane{rank() * blockDim.x + threadIdx.x, count() * blockDim.x};
  }
  // Arrivals, in this block's shared memory, for the warp sums that storeSum sends to every
  // block: each expects one phase's bytes from one local arrival (expectSums). The cluster's blocks
  // must all have initialised theirs (joinArrivals) before any block stores a sum.
  __device__ __forceinline__ static void initArrivals(uint64_t* arrivals, int count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
      for (int i = 0; i < count; ++i) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(sharedAddress(arrivals + i))
                     : "memory");
      }
      asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
#endif
  }
  __device__ __forceinline__ static void joinArrivals() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
#endif
  }
  // One thread of the block says how many bytes the arrival's current phase waits for.
  __device__ __forceinline__ static void expectSums(uint64_t* arrival, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(sharedAddress(arrival)),
        "r"(bytes)
        : "memory");
#endif
  }
  // Stores `x` into `*local` and counts its bytes on `*arrival`, both as block `block` has them.
  // Only the arrival orders the store: no fence, and no wait for the other blocks' threads.
  __device__ __forceinline__ static void storeSum(float* local, uint64_t* arrival, unsigned block,
                                                  float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t to, counter;
    asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(to) : "r"(sharedAddress(local)), "r"(block));
    asm("mapa.shared::cluster.u32 %0, %1, %2;"
        : "=r"(counter)
        : "r"(sharedAddress(arrival)), "r"(block));
    asm volatile(
        "st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(to),
        "r"(__float_as_uint(x)), "r"(counter)
        : "memory");
#endif
  }
  // Until phase `parity` of `*arrival` completes; what was counted on it is then visible.
  __device__ __forceinline__ static void waitSums(uint64_t* arrival, uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    uint32_t done = 0;
    while (!done) {
      asm volatile(
          "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, "
          "0, p; }"
          : "=r"(done)
          : "r"(sharedAddress(arrival)), "r"(parity)
          : "memory");
    }
#endif
  }

 private:
  __device__ __forceinline__ static uint32_t sharedAddress(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
  }
};

// The sum of the squares of a vector's elements, in float32 and in element order.
template <typename T>
__device__ __forceinline__ float vectorSquares(const Vec<T>& v) {
  float squares = 0.0f;
#pragma unroll
  for (int e = 0; e < Vec<T>::kElems; ++e) {
    const float x = toFloat(v.elem[e]);
    squares = __fmaf_rn(x, x, squares);
  }
  return squares;
}

// T(sum + residual) per element, as raw words; *squares is the sum of their squares (in float32,
// in element order). kPacked: as addRounded.
template <typename T, bool kPacked = true>
__device__ __forceinline__ uint4 addResidual(const uint4& sum, const uint4& residual,
                                             float* squares) {
  const uint4 out = addRounded<T, kPacked>(sum, residual);
  *squares = vectorSquares(asVec<T>(out));
  return out;
}

// Shared memory a row's warp sums meet in: two sets, by row parity. A warp writes a row's sums
// only after its block passed the previous row's barrier (or arrival), which needs the sums of
// that row from every warp, each stored after the warp read the sums of the row before: so no set
// is overwritten while it is read. That holds for warps that store a sum; a warp that holds none
// of a row's vectors stores nothing, and in a cluster nothing would keep the other blocks from
// overwriting a set it still reads. So a cluster sums one row at most in a launch (launchFused
// checks), and a block alone meets its warps at a barrier. In a cluster each set has its arrival
// (RowBlocks). Aligned for sumWarpSums, which reads four sums at a time.
struct alignas(16) RowSums {
  float sums[2][kMaxRowWarps];
  uint64_t arrivals[2];

  // Zeroes the sums beyond the warps of rows of `hiddenVectors` vectors, once for all rows, where
  // every thread adds them all (rowSum). The block's first warp writes them, and thread 0
  // publishes them with the row's first arrival (or the block its first barrier): call before
  // the first row, on every thread of the block.
  __device__ __forceinline__ void zeroUnused(uint32_t hiddenVectors) {
    if (threadIdx.x >= 32) return;
    for (uint32_t w = (hiddenVectors + 31) / 32 + threadIdx.x; w < kMaxRowWarps; w += 32) {
      sums[0][w] = 0.0f;
      sums[1][w] = 0.0f;
    }
    __syncwarp();
  }
};

// A warp sum no row has: marks a warp in which a thread failed to gather its part. Any sum it
// goes into is -inf or NaN, never a row's (>= 0 or NaN).
constexpr float kFailedWarp = -INFINITY;

// The state a group of threads keeps from row to row: where its threads sit in a row, the blocks
// that hold it, where its warp sums meet, the output scale and the mean's factor.
struct RowNorm {
  RowLane lane;
  unsigned blocks;  // of the cluster that holds a row; 1: one block holds it
  RowSums* shared;
  uint32_t rowsDone;
  float scaleInv;  // FP8 output: 1 / *scale
  // 1 / hidden: the mean of a row's squares is their sum times it, one multiplication after the
  // row's sum where a division was a dependent sequence (2 H200s, graph, bf16, medians of three
  // A/B runs: the fused call up to 0.11 us faster at 1 to 256 rows of 8192 and of 5120, 0.25 at
  // 512 rows of 8192).
  float inverseHidden;

  // `lane_` spreads a row over one block (blockLane) or over the blocks of this block's cluster
  // (RowBlocks::lane). In a cluster, every block of it must construct its RowNorm, and only after
  // RowBlocks::initArrivals(shared.arrivals, 2).
  __device__ RowNorm(const NormParams& n, RowLane lane_, RowSums& shared_) {
    lane = lane_;
    blocks = lane.threads / blockDim.x;
    shared = &shared_;
    rowsDone = 0;
    scaleInv = n.outType == kNormOutInput ? 1.0f : __frcp_rn(__ldg(n.scale));
    inverseHidden = __frcp_rn(static_cast<float>(n.hidden));
    if (blocks > 1) RowBlocks::joinArrivals();
  }
};

// What a thread does while its block waits for a row's warp sums (rowSum): nothing.
struct NoWork {
  __device__ __forceinline__ void operator()() const {}
};

__device__ __forceinline__ float warpButterfly(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// warpButterfly of `a` on lanes 0-15 and of `b` on lanes 16-31, the same bits, in half the
// shuffles: the first step adds the same pairs (each half sends the other the value it sums), and
// the later ones stay within a half.
__device__ __forceinline__ float warpButterflyPair(float a, float b) {
  const bool upper = (threadIdx.x & 16) != 0;
  float x = (upper ? b : a) + __shfl_xor_sync(0xffffffffu, upper ? a : b, 16);
#pragma unroll
  for (int offset = 8; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// The sum of a row's warp sums, in the order of a butterfly over 32 lanes in which lane l starts
// with sum l plus sum l + 32: pairs 32 apart, then 16, 8, 4, 2 and 1. Every thread adds them all
// from shared memory (zero beyond the row's warps) instead of shuffling.
__device__ __forceinline__ float sumWarpSums(const float* sums, uint32_t warps) {
  static_assert(kMaxRowWarps == 64, "sums 32 apart, then a butterfly's 32");
  const float4* at = reinterpret_cast<const float4*>(sums);
  auto add = [](const float4& a, const float4& b) {
    return make_float4(__fadd_rn(a.x, b.x), __fadd_rn(a.y, b.y), __fadd_rn(a.z, b.z),
                       __fadd_rn(a.w, b.w));
  };
  // All loads first, so that their latencies overlap.
  float4 s[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) s[j] = at[j];
  if (warps > 32) {
#pragma unroll
    for (int j = 0; j < 8; ++j) s[j] = add(s[j], at[j + 8]);
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) s[j] = add(s[j], s[j + 4]);
  s[0] = add(s[0], s[2]);
  s[1] = add(s[1], s[3]);
  s[0] = add(s[0], s[1]);
  // The four left: pairs 2 apart, then 1.
  return __fadd_rn(__fadd_rn(s[0].x, s[0].z), __fadd_rn(s[0].y, s[0].w));
}

// warpButterfly of `x` for threads that hold one vector of a row, the same bits: each lane stores
// its `x` in shared memory and every lane adds the warp's 32 in the butterfly's order
// (sumWarpSums), eight loads and a tree of additions where the butterfly is five dependent
// shuffles. The warp's lanes meet at its previous vote (rowSum's warpOk) before they overwrite
// what they read for a row before. Kernels that do not call it have no such array.
__device__ __forceinline__ float warpSumThroughShared(float x) {
  __shared__ __align__(16) float lanes[kBlockThreads];
  float* warp = lanes + (threadIdx.x & ~31u);
  warp[threadIdx.x % 32] = x;
  __syncwarp();
  return sumWarpSums(warp, 32);
}

// The sum of a row's squares (`squares[k]` those of this thread's vector k, k < kVectors), the same
// bits on every thread: each warp's vectors in a butterfly (a butterfly gives every lane the same
// bits, since each addition meets its mirror image; where a thread holds one vector, kVectors 1,
// through shared memory: warpSumThroughShared), every warp sum stored where every block of the row
// reads it, then lane l adds warp sums l and l + 32 and the lanes meet in a butterfly, or where
// kEveryThreadAdds every thread adds them all itself (sumWarpSums: the same bits, in 32 more
// registers, which only kernels that hold one vector a thread have to spare; the unused sums must
// be zero, RowSums::zeroUnused). False on every thread if any thread's `ok` is false (its row is
// then left alone): its warp stores kFailedWarp instead, which every thread of the row sees.
//
// `whileWaiting()` runs once this thread's warp sums have left, before the wait for the others'.
//
// In a cluster, each block waits for the bytes of the row's warp sums to arrive in its own shared
// memory. A cluster barrier per row instead (its release orders all of a thread's earlier stores,
// to the peers too) made one row of 8192 0.3 us slower, 4.5 against 4.2 us (2 H200s).
template <bool kEveryThreadAdds, int kVectors, typename WhileWaiting>
__device__ __forceinline__ bool rowSum(const float (&squares)[kMaxRowVectors],
                                       uint32_t hiddenVectors, bool ok, RowNorm* state,
                                       float* total, const WhileWaiting& whileWaiting) {
  const unsigned lane = threadIdx.x % 32;
  const uint32_t set = state->rowsDone % 2;
  float* sums = state->shared->sums[set];
  uint64_t* arrival = &state->shared->arrivals[set];
  const uint32_t phase = state->rowsDone / 2 % 2;
  ++state->rowsDone;
  const uint32_t warps = (hiddenVectors + 31) / 32;
  if (state->blocks > 1 && threadIdx.x == 0) {
    RowBlocks::expectSums(arrival, warps * static_cast<uint32_t>(sizeof(float)));
  }
  const bool warpOk = __all_sync(0xffffffffu, ok);
  static_assert(kMaxRowVectors % 2 == 0, "vectors in pairs");
#pragma unroll
  for (int k = 0; k < kVectors; k += 2) {
    // The warp's first vector of its k-th and (k + 1)-th; lanes 16-31 store the second's sum.
    const uint32_t first = state->lane.vector(k) - lane;
    const uint32_t second = state->lane.vector(k + 1) - lane;
    if (first >= hiddenVectors) continue;
    const bool pair = k + 1 < kVectors && second < hiddenVectors;
    float x = 0.0f;
    if constexpr (kVectors == 1) {
      x = warpSumThroughShared(squares[k]);
    } else {
      x = pair ? warpButterflyPair(squares[k], squares[k + 1]) : warpButterfly(squares[k]);
    }
    if (!warpOk) x = kFailedWarp;
    const unsigned half = lane % 16;
    if (lane >= 16 && !pair) continue;
    const uint32_t warp = (lane < 16 ? first : second) / 32;
    if (state->blocks == 1) {
      if (half == 0) sums[warp] = x;
    } else if (half < state->blocks) {
      RowBlocks::storeSum(&sums[warp], arrival, half, x);
    }
  }
  whileWaiting();
  if (state->blocks == 1) {
    __syncthreads();
  } else {
    RowBlocks::waitSums(arrival, phase);
  }
  if constexpr (kEveryThreadAdds) {
    *total = sumWarpSums(sums, warps);
    // A failed warp makes the total -inf or NaN; only then are the sums looked at one by one.
    if (*total >= 0.0f) return true;
  }
  float low = lane < warps ? sums[lane] : 0.0f;
  const float high = lane + 32 < warps ? sums[lane + 32] : 0.0f;
  if (__any_sync(0xffffffffu, low < 0.0f || high < 0.0f)) return false;
  if constexpr (!kEveryThreadAdds) {
    if (lane + 32 < warps) low = __fadd_rn(low, high);
    *total = warpButterfly(low);
  }
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

// The inverse RMS of a row once every thread of the row holds each of its vectors' squares: the
// same bits on every thread. False on every thread if any thread of the row failed to gather its
// part. kEveryThreadAdds and `whileWaiting`: as rowSum.
template <bool kEveryThreadAdds = false, int kVectors = kMaxRowVectors,
          typename WhileWaiting = NoWork>
__device__ __forceinline__ bool rowInverseRms(const NormParams& n,
                                              const float (&squares)[kMaxRowVectors], bool ok,
                                              RowNorm* state, float* inverseRms,
                                              const WhileWaiting& whileWaiting = {}) {
  float total = 0.0f;
  if (!rowSum<kEveryThreadAdds, kVectors>(squares, n.hiddenVectors, ok, state, &total,
                                          whileWaiting)) {
    return false;
  }
  const float meanSquare = __fmul_rn(total, state->inverseHidden);
  *inverseRms = rsqrtf(__fadd_rn(meanSquare, n.eps));
  return true;
}

// Stores this thread's part of row `row`: the new residual (`kept`) and the normalised output.
// `weights` is the weight row (in global or shared memory).
template <typename T, int kVectors = kMaxRowVectors>
__device__ __forceinline__ void storeRow(const NormParams& n, size_t row, const uint4* weights,
                                         const uint4 (&kept)[kMaxRowVectors], float inverseRms,
                                         const RowNorm& state) {
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const uint32_t v = state.lane.vector(k);
    if (v >= n.hiddenVectors) continue;
    const size_t at = row * n.hiddenVectors + v;
    static_cast<uint4*>(n.residualOut)[at] = kept[k];
    storeNormalized<T>(n, at, weights[v], kept[k], inverseRms, state.scaleInv);
  }
}

// Ends row `row` once every thread of the row holds its part of the new residual in `kept` and
// each vector's squares: stores the residual and the normalised output. False on every thread,
// with nothing stored, if any thread of the row failed to gather its part. kEveryThreadAdds and
// `whileWaiting`: as rowSum.
template <typename T, bool kEveryThreadAdds = false, int kVectors = kMaxRowVectors,
          typename WhileWaiting = NoWork>
__device__ __forceinline__ bool finishRow(const NormParams& n, size_t row, const uint4* weights,
                                          const uint4 (&kept)[kMaxRowVectors],
                                          const float (&squares)[kMaxRowVectors], bool ok,
                                          RowNorm* state, const WhileWaiting& whileWaiting = {}) {
  float inverseRms = 0.0f;
  if (!rowInverseRms<kEveryThreadAdds, kVectors>(n, squares, ok, state, &inverseRms,
                                                 whileWaiting)) {
    return false;
  }
  storeRow<T, kVectors>(n, row, weights, kept, inverseRms, *state);
  return true;
}

__device__ __forceinline__ uint4 loadRowVector(const void* base, size_t at) {
  return static_cast<const uint4*>(base)[at];
}

// One row of the residual, loaded while a fused kernel's data is on the link: a load whose latency
// would otherwise follow the wait for the peers'.
struct RowPrefetch {
  uint4 residual[kMaxRowVectors];

  // Loads this thread's part of row `row` of the residual.
  template <int kVectors = kMaxRowVectors>
  __device__ __forceinline__ void loadResidual(const NormParams& n, RowLane lane, size_t row) {
#pragma unroll
    for (int k = 0; k < kVectors; ++k) {
      const uint32_t v = lane.vector(k);
      if (v < n.hiddenVectors) residual[k] = loadRowVector(n.residualIn, row * n.hiddenVectors + v);
    }
  }
};

// Shared memory for a block's part of the weight row (indexed by vector): each thread only ever
// reads the vectors it wrote, so no barrier is needed.
using WeightRow = uint4[kMaxRowVectors * kBlockThreads];

// Starts copying this thread's weight vectors into `shared` asynchronously (cp.async): no register
// holds them and nothing waits for them until awaitWeights, which the thread must call before it
// reads them or exits. Loads issued before a thread's stores to its peers delay those stores, so
// the fused kernels copy the weight only once their data has left.
//
// The copy is PTX rather than cuda_pipeline.h's __pipeline_memcpy_async: the same cp.async.cg,
// but its commit and wait carry no memory clobber, so nothing would stop the compiler from moving
// this thread's reads of `shared` ahead of the wait (no barrier follows it here).
template <int kVectors = kMaxRowVectors>
__device__ __forceinline__ void copyWeights(const NormParams& n, RowLane lane, WeightRow& shared) {
#pragma unroll
  for (int k = 0; k < kVectors; ++k) {
    const uint32_t v = lane.vector(k);
    if (v >= n.hiddenVectors) continue;
    const uint4* from = static_cast<const uint4*>(n.weight) + v;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(
                     static_cast<uint32_t>(__cvta_generic_to_shared(&shared[v]))),
                 "l"(from)
                 : "memory");
#else
    shared[v] = __ldg(from);
#endif
  }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Until this thread's copyWeights has landed (at once where it copied nothing).
__device__ __forceinline__ void awaitWeights() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 0;" ::: "memory");
#endif
}

// The norm alone, after an all-reduce made elsewhere: `sum` holds the all-reduced rows (it may be
// the output buffer itself: a row is read whole before any of it is written).
template <typename T>
__global__ void __launch_bounds__(kBlockThreads)
    addRmsNorm(const __grid_constant__ AddNormParams p) {
  __shared__ RowSums sums;
  waitForPreviousKernel();
  allowNextKernel();
  const NormParams& n = p.norm;
  RowNorm state(n, blockLane(), sums);
  for (size_t row = blockIdx.x; row < n.rows; row += gridDim.x) {
    uint4 kept[kMaxRowVectors] = {};
    float squares[kMaxRowVectors] = {};
#pragma unroll
    for (int k = 0; k < kMaxRowVectors; ++k) {
      const uint32_t v = state.lane.vector(k);
      if (v >= n.hiddenVectors) continue;
      const size_t at = row * n.hiddenVectors + v;
      kept[k] =
          addResidual<T>(loadRowVector(p.sum, at), loadRowVector(n.residualIn, at), &squares[k]);
    }
    finishRow<T>(n, row, static_cast<const uint4*>(n.weight), kept, squares, true, &state);
  }
}

TPCOMM_DEVICE_NAMESPACE_END
