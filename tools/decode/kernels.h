// The kernels of tpcomm-decode's transformer besides cuBLAS's GEMMs and tpcomm's norm: synthetic
// weights, token embedding, rotary embedding with the KV-cache append, split-key attention over
// the cache, and the gated SiLU. bf16 in and out, float32 inside.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace tpcomm {
namespace decode {

using bf16 = __nv_bfloat16;

constexpr int kHeadDim = 128;  // every preset's
constexpr int kMaxGroup = 16;  // query heads per KV head (Llama-3 405B's 128 / 8)

// offset + scale * u with u uniform in [-1, 1), a function of (seed, index) only.
cudaError_t fillUniform(bf16* data, size_t count, uint64_t seed, float offset, float scale,
                        cudaStream_t stream);

// The rows of a forward pass: `tokensPerSequence` consecutive rows per sequence, the first at the
// position *firstPosition (device memory, so that one captured decode step serves every step).
struct TokenRows {
  int rows;               // batch x tokensPerSequence
  int tokensPerSequence;  // the prompt's length in prefill, 1 in decode
  const int* firstPosition;
};

// Token ids are a hash of (seed, sequence, position): the same on every rank and run. A rank
// holds the table's rows [vocabFirst, vocabFirst + vocabRows) and writes zeros for other tokens,
// so that the sum over ranks is the embedding (Megatron's vocabulary-parallel embedding).
struct EmbedParams {
  const bf16* table;
  int vocab;
  int vocabFirst;
  int vocabRows;
  int hidden;
  uint64_t seed;
  bf16* out;  // rows x hidden
};
cudaError_t embed(const EmbedParams& p, const TokenRows& rows, cudaStream_t stream);

// out[r][c] = silu(gateUp[r][c]) * gateUp[r][columns + c].
cudaError_t siluMul(const bf16* gateUp, size_t rows, size_t columns, bf16* out,
                    cudaStream_t stream);

// One layer's attention for `rows` query rows: rotates q and k in place in `qkv` (Llama's rotary
// embedding), appends k and v at their positions to the cache, and attends each query to the
// keys up to its own position (causal), grouped-query: heads / kvHeads query heads per KV head.
struct AttentionParams {
  bf16* qkv;            // rows x (heads + 2 kvHeads) x kHeadDim: q heads, k heads, v heads
  bf16* keyCache;       // [batch][kvHeads][maxTokens][kHeadDim] of this layer
  bf16* valueCache;     // same
  bf16* out;            // rows x heads x kHeadDim
  float* partials;      // attentionPartials(...) x kHeadDim: one output per (row, head, split)
  float* partialStats;  // the same x 2: the split's largest score and its sum of exponentials
  int heads;
  int kvHeads;
  int maxTokens;
  int splitKeys;  // keys per thread block (kDecodeSplitKeys or kPrefillSplitKeys)
  int maxKeys;    // keys of the longest query: decides the blocks launched
  float ropeTheta;
};
cudaError_t attention(const AttentionParams& p, const TokenRows& rows, cudaStream_t stream);

// ++*position: the last node of a captured decode step.
cudaError_t advancePosition(int* position, cudaStream_t stream);

}  // namespace decode
}  // namespace tpcomm
