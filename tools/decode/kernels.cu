#include <algorithm>
#include <cfloat>

#include "decode/kernels.h"
#include "decode/model.h"

namespace tpcomm {
namespace decode {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
static_assert(kThreads == kHeadDim, "attention gives every thread one dimension of a head");

__device__ __forceinline__ uint64_t mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ int tokenAt(uint64_t seed, int sequence, int position, int vocab) {
  const uint64_t h = mix(seed ^ mix((uint64_t(sequence) << 32) | uint32_t(position)));
  return static_cast<int>(h % uint64_t(vocab));
}

__device__ __forceinline__ int positionOf(const TokenRows& t, int row) {
  return *t.firstPosition + row % t.tokensPerSequence;
}

__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__global__ void fillUniformKernel(bf16* data, size_t count, uint64_t seed, float offset,
                                  float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < count;
       i += size_t(gridDim.x) * blockDim.x) {
    const float u = float(mix(seed + i * 0x9e3779b97f4a7c15ull) >> 40) * (2.0f / 16777216.0f);
    data[i] = __float2bfloat16(offset + scale * (u - 1.0f));
  }
}

__global__ void embedKernel(const EmbedParams p, const TokenRows t) {
  const int row = blockIdx.x;
  const int token = tokenAt(p.seed, row / t.tokensPerSequence, positionOf(t, row), p.vocab);
  const int local = token - p.vocabFirst;
  const bool mine = local >= 0 && local < p.vocabRows;
  const uint4* from = reinterpret_cast<const uint4*>(p.table + size_t(mine ? local : 0) * p.hidden);
  uint4* to = reinterpret_cast<uint4*>(p.out + size_t(row) * p.hidden);
  for (int v = threadIdx.x; v < p.hidden / 8; v += blockDim.x) {
    to[v] = mine ? from[v] : make_uint4(0, 0, 0, 0);
  }
}

__global__ void siluMulKernel(const bf16* gateUp, size_t rows, size_t columns, bf16* out) {
  const size_t total = rows * columns;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t r = i / columns, c = i % columns;
    const float g = __bfloat162float(gateUp[r * 2 * columns + c]);
    const float u = __bfloat162float(gateUp[r * 2 * columns + columns + c]);
    out[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * u);
  }
}

// Block per row: rotates its q and k heads (pairs i and i + kHeadDim / 2, as Llama does), then
// copies k and v into the cache at the row's position.
__global__ void rotateAndAppendKernel(const AttentionParams p, const TokenRows t) {
  const int row = blockIdx.x;
  const int position = positionOf(t, row);
  const int sequence = row / t.tokensPerSequence;
  bf16* qkv = p.qkv + size_t(row) * (p.heads + 2 * p.kvHeads) * kHeadDim;
  constexpr int kHalf = kHeadDim / 2;
  const float log2Theta = __log2f(p.ropeTheta);
  for (int i = threadIdx.x; i < (p.heads + p.kvHeads) * kHalf; i += blockDim.x) {
    const int head = i / kHalf, j = i % kHalf;
    bf16* x = qkv + head * kHeadDim;
    const float angle = float(position) * exp2f(-log2Theta * (2.0f * j / kHeadDim));
    float s, c;
    sincosf(angle, &s, &c);
    const float a = __bfloat162float(x[j]), b = __bfloat162float(x[j + kHalf]);
    x[j] = __float2bfloat16(a * c - b * s);
    x[j + kHalf] = __float2bfloat16(b * c + a * s);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < p.kvHeads * kHeadDim; i += blockDim.x) {
    const int head = i / kHeadDim, dim = i % kHeadDim;
    const size_t at = ((size_t(sequence) * p.kvHeads + head) * p.maxTokens + position) * kHeadDim;
    p.keyCache[at + dim] = qkv[(p.heads + head) * kHeadDim + dim];
    p.valueCache[at + dim] = qkv[(p.heads + p.kvHeads + head) * kHeadDim + dim];
  }
}

// Block per (split, KV head, row): the scores of the row's query heads of this KV head against
// the split's keys, their softmax over the split, and the split's weighted sum of values, all
// left unnormalised for the merge. Every key and value is read once per row.
__global__ void __launch_bounds__(kThreads)
    splitAttentionKernel(const AttentionParams p, const TokenRows t) {
  const int split = blockIdx.x, kvHead = blockIdx.y, row = blockIdx.z;
  const int keys = positionOf(t, row) + 1;
  const int first = split * p.splitKeys;
  if (first >= keys) return;
  const int n = min(p.splitKeys, keys - first);
  const int group = p.heads / p.kvHeads;
  const int sequence = row / t.tokensPerSequence;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  __shared__ float q[kMaxGroup][kHeadDim];
  __shared__ float weights[kMaxGroup][kMaxSplitKeys];
  const bf16* qRow = p.qkv + size_t(row) * (p.heads + 2 * p.kvHeads) * kHeadDim +
                     size_t(kvHead) * group * kHeadDim;
  for (int i = threadIdx.x; i < group * kHeadDim; i += kThreads) {
    q[i / kHeadDim][i % kHeadDim] = __bfloat162float(qRow[i]);
  }
  __syncthreads();

  const size_t cache = ((size_t(sequence) * p.kvHeads + kvHead) * p.maxTokens + first) * kHeadDim;
  // Scores in base 2, so that the softmax takes exp2.
  const float scale = rsqrtf(float(kHeadDim)) * 1.4426950408889634f;
  for (int j = warp; j < n; j += kWarps) {
    const uint2 packed =
        *reinterpret_cast<const uint2*>(p.keyCache + cache + j * kHeadDim + lane * 4);
    const __nv_bfloat162* k2 = reinterpret_cast<const __nv_bfloat162*>(&packed);
    const float2 k01 = __bfloat1622float2(k2[0]), k23 = __bfloat1622float2(k2[1]);
    for (int g = 0; g < group; ++g) {
      const float* qg = &q[g][lane * 4];
      const float dot = warpSum(qg[0] * k01.x + qg[1] * k01.y + qg[2] * k23.x + qg[3] * k23.y);
      if (lane == 0) weights[g][j] = dot * scale;
    }
  }
  __syncthreads();

  const int splits = gridDim.x;
  for (int g = warp; g < group; g += kWarps) {
    float largest = -FLT_MAX;
    for (int j = lane; j < n; j += 32) largest = fmaxf(largest, weights[g][j]);
    largest = warpMax(largest);
    float sum = 0;
    for (int j = lane; j < n; j += 32) {
      const float e = exp2f(weights[g][j] - largest);
      weights[g][j] = e;
      sum += e;
    }
    sum = warpSum(sum);
    if (lane == 0) {
      const size_t at = (size_t(row) * p.heads + kvHead * group + g) * splits + split;
      p.partialStats[2 * at] = largest;
      p.partialStats[2 * at + 1] = sum;
    }
  }
  __syncthreads();

  float acc[kMaxGroup] = {};
  const bf16* values = p.valueCache + cache + threadIdx.x;
  for (int j = 0; j < n; ++j) {
    const float v = __bfloat162float(values[j * kHeadDim]);
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g < group) acc[g] += weights[g][j] * v;
    }
  }
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g < group) {
      const size_t at = (size_t(row) * p.heads + kvHead * group + g) * splits + split;
      p.partials[at * kHeadDim + threadIdx.x] = acc[g];
    }
  }
}

// Block per (row, head): the splits' partial results weighed by their share of the softmax.
__global__ void __launch_bounds__(kThreads)
    mergeSplitsKernel(const AttentionParams p, const TokenRows t, int splits) {
  const int row = blockIdx.x, head = blockIdx.y;
  const int used =
      (positionOf(t, row) + p.splitKeys) / p.splitKeys;  // splits of keys = position + 1
  const size_t base = (size_t(row) * p.heads + head) * splits;
  float largest = -FLT_MAX;
  for (int s = 0; s < used; ++s) largest = fmaxf(largest, p.partialStats[2 * (base + s)]);
  float total = 0, acc = 0;
  for (int s = 0; s < used; ++s) {
    const float w = exp2f(p.partialStats[2 * (base + s)] - largest);
    total += w * p.partialStats[2 * (base + s) + 1];
    acc += w * p.partials[(base + s) * kHeadDim + threadIdx.x];
  }
  p.out[(size_t(row) * p.heads + head) * kHeadDim + threadIdx.x] = __float2bfloat16(acc / total);
}

__global__ void advancePositionKernel(int* position) { ++*position; }

int gridFor(size_t items) {
  return static_cast<int>(std::min<size_t>((items + kThreads - 1) / kThreads, 132 * 16));
}

}  // namespace

cudaError_t fillUniform(bf16* data, size_t count, uint64_t seed, float offset, float scale,
                        cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  fillUniformKernel<<<gridFor(count), kThreads, 0, stream>>>(data, count, seed, offset, scale);
  return cudaGetLastError();
}

cudaError_t embed(const EmbedParams& p, const TokenRows& rows, cudaStream_t stream) {
  if (p.hidden % 8 != 0) return cudaErrorInvalidValue;
  embedKernel<<<rows.rows, kThreads, 0, stream>>>(p, rows);
  return cudaGetLastError();
}

cudaError_t siluMul(const bf16* gateUp, size_t rows, size_t columns, bf16* out,
                    cudaStream_t stream) {
  siluMulKernel<<<gridFor(rows * columns), kThreads, 0, stream>>>(gateUp, rows, columns, out);
  return cudaGetLastError();
}

cudaError_t attention(const AttentionParams& p, const TokenRows& rows, cudaStream_t stream) {
  if (p.kvHeads <= 0 || p.heads % p.kvHeads != 0 || p.heads / p.kvHeads > kMaxGroup ||
      p.splitKeys <= 0 || p.splitKeys > kMaxSplitKeys || p.maxKeys > p.maxTokens) {
    return cudaErrorInvalidValue;
  }
  rotateAndAppendKernel<<<rows.rows, kThreads, 0, stream>>>(p, rows);
  const int splits = attentionSplits(p.maxKeys, p.splitKeys);
  splitAttentionKernel<<<dim3(splits, p.kvHeads, rows.rows), kThreads, 0, stream>>>(p, rows);
  mergeSplitsKernel<<<dim3(rows.rows, p.heads), kThreads, 0, stream>>>(p, rows, splits);
  return cudaGetLastError();
}

cudaError_t advancePosition(int* position, cudaStream_t stream) {
  advancePositionKernel<<<1, 1, 0, stream>>>(position);
  return cudaGetLastError();
}

}  // namespace decode
}  // namespace tpcomm
