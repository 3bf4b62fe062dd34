// One-shot and two-shot all-reduce kernels over buffers every rank can address (peer memory
// mapped through CUDA IPC or peer access). Plain pointers in, kernels out: nothing here knows how
// the buffers were allocated or exchanged.
//
// Both kernels copy the caller's input into this rank's staging buffer themselves (no separate
// memcpy launch), synchronise per block with the same block of every peer, and read peers' data
// with 16-byte accesses. A block hands data to the same block index of its peers only, so every
// phase of a kernel walks the vectors with the same block-to-data mapping.
#pragma once

#include <cuda_runtime.h>
#include <string.h>

#include <type_traits>

#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"
#include "tpcomm/device/sync.cuh"
#include "tpcomm/device/vec.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

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
  uint4 raw;
  memcpy(&raw, &x, sizeof(raw));
  static_cast<uint4*>(base)[v] = raw;
}

// Where the ranks' inputs are read from: the staging buffers this kernel fills, or the ranks'
// input buffers themselves (zero-copy).
struct Sources {
  const void* rank[kMaxRanks];
  bool staged;
};

// The sources of this launch. A slotted launch whose slot is not registered yet records why and
// returns false on every block of every rank (they all see the same unregistered slot), before
// any barrier.
template <bool kSlotted>
__device__ __forceinline__ bool resolveSources(const AllReduceParams& p, int algorithm,
                                               Sources* s) {
  s->staged = true;
#pragma unroll
  for (int r = 0; r < kMaxRanks; ++r) s->rank[r] = p.staging[r];
  if constexpr (kSlotted) {
    const int state = p.slot->state;
    if (state == kSlotUnregistered) {
      if (threadIdx.x == 0) {
        recordFailure(p.failure, kFailureUnregistered, WaitSite{p.rank, -1, 0, algorithm}, 0);
      }
      return false;
    }
    if (state == kSlotPeerInputs) {
      s->staged = false;
#pragma unroll
      for (int r = 0; r < kMaxRanks; ++r) {
        if (r < p.nranks) s->rank[r] = static_cast<const char*>(p.slot->input[r]) + p.sourceOffset;
      }
    }
  }
  return true;
}

// Sum of vector v over every rank's source, ranks in order.
template <typename T>
__device__ __forceinline__ Vec<T> reduceRanks(const Sources& s, int nranks, size_t v,
                                              size_t count) {
  // Raw words keep all loads in flight in few registers (an array of 16-bit vectors does not).
  uint4 in[kMaxRanks];
#pragma unroll
  for (int r = 0; r < kMaxRanks; ++r) {
    if (r < nranks)
      in[r] = s.staged ? loadShared(s.rank[r], v) : loadSource<T>(s.rank[r], v, count);
  }
  Accumulator<T> acc;
  acc.set(asVec<T>(in[0]));
#pragma unroll
  for (int r = 1; r < kMaxRanks; ++r) {
    if (r < nranks) acc.add(asVec<T>(in[r]));
  }
  return acc.result();
}

// Grid-stride walk over [0, n): the one block-to-data mapping every phase uses.
struct Stride {
  size_t first;
  size_t step;
  __device__ Stride()
      : first(static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x),
        step(static_cast<size_t>(gridDim.x) * blockDim.x) {}
};

// Every rank copies its input into its staging buffer (unless the ranks' inputs are read in
// place), then reads every rank's copy and reduces the whole message. Two barriers: inputs ready,
// and peers done reading.
template <typename T, bool kSlotted>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    oneShotAllReduce(const AllReduceParams p) {
  __shared__ int failed;
  if (threadIdx.x == 0) failed = 0;
  Sources src;
  if (!resolveSources<kSlotted>(p, kOneShot, &src)) return;
  uint32_t epoch = p.barrier.epochs[blockIdx.x];
  const Stride s;
  const size_t nvec = vecCount<T>(p.count);

  if (src.staged) {
    for (size_t v = s.first; v < nvec; v += s.step) {
      storeShared(p.staging[p.rank], v, loadInput<T>(p.input, v, p.count, p.inputAligned));
    }
  }
  if (!blockBarrier(p, ++epoch, kPhaseInputsReady, kOneShot, &failed)) return;

  for (size_t v = s.first; v < nvec; v += s.step) {
    storeOutput(p.output, v, p.count, p.outputAligned, reduceRanks<T>(src, p.nranks, v, p.count));
  }
  if (!blockBarrier(p, ++epoch, kPhasePeersDone, kOneShot, &failed)) return;
  if (threadIdx.x == 0) p.barrier.epochs[blockIdx.x] = epoch;
}

// The message split into nranks slices of whole vectors; the last ones may be short or empty.
struct Slices {
  size_t nvec;
  size_t perRank;
  __device__ Slices(size_t nvec_, int nranks)
      : nvec(nvec_), perRank((nvec_ + nranks - 1) / nranks) {}
  __device__ size_t begin(int s) const { return s * perRank; }
  __device__ size_t length(int s) const {
    const size_t b = begin(s);
    return b >= nvec ? 0 : (nvec - b < perRank ? nvec - b : perRank);
  }
};

// Reduce-scatter then all-gather: rank r reduces slice r from every rank's source into its
// scratch buffer, then every rank gathers the reduced slices. Moves 2(n-1)/n of the message per
// rank instead of n-1. Three barriers: inputs ready, slices reduced, peers done reading.
template <typename T, bool kSlotted>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    twoShotAllReduce(const AllReduceParams p) {
  __shared__ int failed;
  if (threadIdx.x == 0) failed = 0;
  Sources src;
  if (!resolveSources<kSlotted>(p, kTwoShot, &src)) return;
  uint32_t epoch = p.barrier.epochs[blockIdx.x];
  const Stride s;
  const Slices slices(vecCount<T>(p.count), p.nranks);

  // Copy every slice with the in-slice mapping the reduction below uses, so that block b of rank
  // r reduces exactly what block b of each peer copied.
  for (int slice = 0; src.staged && slice < p.nranks; ++slice) {
    const size_t begin = slices.begin(slice);
    const size_t length = slices.length(slice);
    for (size_t i = s.first; i < length; i += s.step) {
      storeShared(p.staging[p.rank], begin + i,
                  loadInput<T>(p.input, begin + i, p.count, p.inputAligned));
    }
  }
  if (!blockBarrier(p, ++epoch, kPhaseInputsReady, kTwoShot, &failed)) return;

  {
    const size_t begin = slices.begin(p.rank);
    const size_t length = slices.length(p.rank);
    for (size_t i = s.first; i < length; i += s.step) {
      const Vec<T> sum = reduceRanks<T>(src, p.nranks, begin + i, p.count);
      storeShared(p.scratch[p.rank], i, sum);
      storeOutput(p.output, begin + i, p.count, p.outputAligned, sum);
    }
  }
  if (!blockBarrier(p, ++epoch, kPhaseSlicesReduced, kTwoShot, &failed)) return;

  // Start with the next rank's slice so that the ranks do not all read from rank 0 at once.
  for (int k = 1; k < p.nranks; ++k) {
    const int slice = (p.rank + k) % p.nranks;
    const size_t begin = slices.begin(slice);
    const size_t length = slices.length(slice);
    for (size_t i = s.first; i < length; i += s.step) {
      storeOutput(p.output, begin + i, p.count, p.outputAligned,
                  asVec<T>(loadShared(p.scratch[slice], i)));
    }
  }
  if (!blockBarrier(p, ++epoch, kPhasePeersDone, kTwoShot, &failed)) return;
  if (threadIdx.x == 0) p.barrier.epochs[blockIdx.x] = epoch;
}

// Launches one all-reduce kernel of `blocks` blocks: the slotted variant when p.slot is set. The
// caller guarantees 2 <= nranks <= kMaxRanks, blocks <= kMaxBlocks, the same grid on every rank,
// and that all ranks' blocks sharing a device can be resident at once (the waits spin).
template <typename T>
inline cudaError_t launchAllReduce(int algorithm, const AllReduceParams& p, int blocks,
                                   cudaStream_t stream) {
  const bool slotted = p.slot != nullptr;
  if (algorithm == kTwoShot) {
    if (slotted) {
      twoShotAllReduce<T, true><<<blocks, kBlockThreads, 0, stream>>>(p);
    } else {
      twoShotAllReduce<T, false><<<blocks, kBlockThreads, 0, stream>>>(p);
    }
  } else if (slotted) {
    oneShotAllReduce<T, true><<<blocks, kBlockThreads, 0, stream>>>(p);
  } else {
    oneShotAllReduce<T, false><<<blocks, kBlockThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

// The fewest blocks of any variant of the all-reduce kernels for T that fit on one
// multiprocessor at once.
template <typename T>
inline cudaError_t residentBlocksPerSm(int* blocks) {
  const void* kernels[] = {
      reinterpret_cast<const void*>(oneShotAllReduce<T, false>),
      reinterpret_cast<const void*>(oneShotAllReduce<T, true>),
      reinterpret_cast<const void*>(twoShotAllReduce<T, false>),
      reinterpret_cast<const void*>(twoShotAllReduce<T, true>),
  };
  int fewest = kMaxBlocks;
  for (const void* kernel : kernels) {
    int n = 0;
    const cudaError_t err =
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kBlockThreads, 0);
    if (err != cudaSuccess) return err;
    fewest = n < fewest ? n : fewest;
  }
  *blocks = fewest;
  return cudaSuccess;
}

TPCOMM_DEVICE_NAMESPACE_END
