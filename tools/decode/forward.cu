#include <algorithm>
#include <cmath>

#include "decode/forward.h"
#include "tpcomm/device/fused.cuh"

namespace tpcomm {
namespace decode {
namespace {

void blasTry(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw DecodeError(std::string(what) + ": " + cublasGetStatusString(status));
  }
}

// Uniform weights of variance 1 / fanIn keep every layer's output near unit scale.
float uniformScale(size_t fanIn) { return std::sqrt(3.0f / float(fanIn)); }

constexpr uint64_t kTokenSeed = 0x746f6b656e73ull;

}  // namespace

void cudaTry(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) throw DecodeError(what + ": " + cudaGetErrorString(err));
}

void addRmsNorm(const bf16* sum, bf16* residual, const bf16* weight, bf16* normed, size_t rows,
                int hidden, float eps, cudaStream_t stream) {
  device::AddNormParams p{};
  p.sum = sum;
  p.norm.residualIn = residual;
  p.norm.residualOut = residual;
  p.norm.weight = weight;
  p.norm.out = normed;
  p.norm.eps = eps;
  p.norm.outType = device::kNormOutInput;
  p.norm.hidden = static_cast<uint32_t>(hidden);
  p.norm.hiddenVectors = static_cast<uint32_t>(hidden * sizeof(bf16) / 16);
  p.norm.rows = rows;
  const int blocks = static_cast<int>(std::min<size_t>(rows, 1 << 16));
  cudaTry(device::launchAddRmsNorm<bf16>(p, blocks, false, stream), "the RMSNorm kernel");
}

void LocalReducer::addNorm(bf16* partial, bf16* residual, const bf16* weight, bf16* normed,
                           size_t rows, cudaStream_t stream) {
  addRmsNorm(partial, residual, weight, normed, rows, hidden_, eps_, stream);
}

template <typename T>
T* Transformer::allocate(size_t count) {
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, count * sizeof(T));
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw DecodeError("cannot allocate " + std::to_string(count * sizeof(T) >> 20) +
                      " MB on the device: " + cudaGetErrorString(err));
  }
  allocations_.push_back(p);
  return static_cast<T*>(p);
}

void Transformer::fill(bf16* data, size_t count, float offset, float scale, cudaStream_t stream) {
  // Every tensor its own seed, the same on every run of the same rank.
  cudaTry(fillUniform(data, count, nextSeed_++, offset, scale, stream), "filling weights");
}

Transformer::Transformer(const ModelShape& model, const Shard& shard, WeightLayout layout,
                         int batch, int inputLen, int outputLen, cudaStream_t stream)
    : model_(model),
      shard_(shard),
      batch_(batch),
      inputLen_(inputLen),
      maxTokens_(inputLen + outputLen),
      nextSeed_(0x7470636f6d6dull + (uint64_t(shard.rank) << 48)) {
  if (model.headDim != kHeadDim) throw DecodeError("head size must be " + std::to_string(kHeadDim));
  try {
    const size_t h = model.hidden, d = kHeadDim, inter = shard.intermediate;
    const int stored = layout == WeightLayout::kShared ? 1 : model.layers;
    for (int l = 0; l < stored; ++l) {
      Layer w;
      w.qkv = allocate<bf16>(shard.qkvColumns() * d * h);
      w.out = allocate<bf16>(h * shard.heads * d);
      w.gateUp = allocate<bf16>(2 * inter * h);
      w.down = allocate<bf16>(h * inter);
      w.inputNorm = allocate<bf16>(h);
      w.postNorm = allocate<bf16>(h);
      fill(w.qkv, shard.qkvColumns() * d * h, 0, uniformScale(h), stream);
      fill(w.out, h * shard.heads * d, 0, uniformScale(size_t(model.heads) * d), stream);
      fill(w.gateUp, 2 * inter * h, 0, uniformScale(h), stream);
      fill(w.down, h * inter, 0, uniformScale(model.intermediate), stream);
      fill(w.inputNorm, h, 1, 0.1f, stream);
      fill(w.postNorm, h, 1, 0.1f, stream);
      layers_.push_back(w);
    }
    embedding_ = allocate<bf16>(size_t(shard.vocab) * h);
    lmHead_ = allocate<bf16>(size_t(shard.vocab) * h);
    finalNorm_ = allocate<bf16>(h);
    fill(embedding_, size_t(shard.vocab) * h, 0, 1, stream);
    fill(lmHead_, size_t(shard.vocab) * h, 0, uniformScale(h), stream);
    fill(finalNorm_, h, 1, 0.1f, stream);

    const size_t cache = kvCacheBytes(model, shard, batch, maxTokens_) / 2 / sizeof(bf16);
    keyCache_ = allocate<bf16>(cache);
    valueCache_ = allocate<bf16>(cache);

    const size_t rows = size_t(batch) * inputLen;
    residual_ = allocate<bf16>(rows * h);
    normed_ = allocate<bf16>(rows * h);
    partial_ = allocate<bf16>(rows * h);
    qkv_ = allocate<bf16>(rows * shard.qkvColumns() * d);
    attention_ = allocate<bf16>(rows * shard.heads * d);
    gateUp_ = allocate<bf16>(rows * 2 * inter);
    act_ = allocate<bf16>(rows * inter);
    const size_t partials = attentionPartials(shard, batch, inputLen, maxTokens_);
    partials_ = allocate<float>(partials * d);
    partialStats_ = allocate<float>(partials * 2);
    logits_ = allocate<bf16>(logitsCount());
    position_ = allocate<int>(2);
    cudaTry(cudaMemsetAsync(position_, 0, 2 * sizeof(int), stream), "cudaMemsetAsync");
    cudaTry(cudaStreamSynchronize(stream), "filling weights");
  } catch (...) {
    for (void* p : allocations_) cudaFree(p);
    throw;
  }
}

Transformer::~Transformer() {
  for (void* p : allocations_) cudaFree(p);
}

void Transformer::setPosition(int position, cudaStream_t stream) {
  if (position < inputLen_ || position >= maxTokens_) {
    throw DecodeError("decode position " + std::to_string(position) + " outside the cache");
  }
  // From pageable memory: the copy has taken the value when the call returns.
  cudaTry(cudaMemcpyAsync(position_, &position, sizeof(int), cudaMemcpyHostToDevice, stream),
          "cudaMemcpyAsync");
}

void Transformer::prefill(Reducer& reducer, cublasHandle_t blas, cudaStream_t stream) {
  const TokenRows rows{batch_ * inputLen_, inputLen_, position_ + 1};
  forward(rows, inputLen_, kPrefillSplitKeys, reducer, blas, stream);
}

void Transformer::decodeStep(Reducer& reducer, cublasHandle_t blas, cudaStream_t stream,
                             bool advance) {
  const TokenRows rows{batch_, 1, position_};
  forward(rows, maxTokens_, kDecodeSplitKeys, reducer, blas, stream);
  if (advance) cudaTry(advancePosition(position_, stream), "advancing the position");
}

void Transformer::gemm(cublasHandle_t blas, const bf16* x, size_t ldx, size_t rows, size_t k,
                       const bf16* w, size_t n, bf16* y) {
  // Row-major y = x w^T is column-major y^T = w^T x^T: w is k x n column-major, transposed.
  const float one = 1, zero = 0;
  blasTry(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, int(n), int(rows), int(k), &one, w,
                       CUDA_R_16BF, int(k), x, CUDA_R_16BF, int(ldx), &zero, y, CUDA_R_16BF, int(n),
                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
}

void Transformer::forward(const TokenRows& rows, int maxKeys, int splitKeys, Reducer& reducer,
                          cublasHandle_t blas, cudaStream_t stream) {
  const size_t m = rows.rows, h = model_.hidden, d = kHeadDim, inter = shard_.intermediate;
  EmbedParams e{embedding_,    model_.vocab, shard_.vocabFirst, shard_.vocab,
                model_.hidden, kTokenSeed,   partial_};
  cudaTry(embed(e, rows, stream), "the embedding kernel");
  // The first block's "residual" is zero: its all-reduce gives the embedding itself.
  cudaTry(cudaMemsetAsync(residual_, 0, m * h * sizeof(bf16), stream), "cudaMemsetAsync");
  reducer.addNorm(partial_, residual_, layer(0).inputNorm, normed_, m, stream);

  const size_t cacheLayer = size_t(batch_) * shard_.kvHeads * maxTokens_ * d;
  for (int l = 0; l < model_.layers; ++l) {
    const Layer& w = layer(l);
    gemm(blas, normed_, h, m, h, w.qkv, shard_.qkvColumns() * d, qkv_);
    AttentionParams a{};
    a.qkv = qkv_;
    a.keyCache = keyCache_ + l * cacheLayer;
    a.valueCache = valueCache_ + l * cacheLayer;
    a.out = attention_;
    a.partials = partials_;
    a.partialStats = partialStats_;
    a.heads = shard_.heads;
    a.kvHeads = shard_.kvHeads;
    a.maxTokens = maxTokens_;
    a.splitKeys = splitKeys;
    a.maxKeys = maxKeys;
    a.ropeTheta = model_.ropeTheta;
    cudaTry(attention(a, rows, stream), "the attention kernels");
    gemm(blas, attention_, shard_.heads * d, m, shard_.heads * d, w.out, h, partial_);
    reducer.addNorm(partial_, residual_, w.postNorm, normed_, m, stream);

    gemm(blas, normed_, h, m, h, w.gateUp, 2 * inter, gateUp_);
    cudaTry(siluMul(gateUp_, m, inter, act_, stream), "the SiLU kernel");
    gemm(blas, act_, inter, m, inter, w.down, h, partial_);
    const bf16* next = l + 1 < model_.layers ? layer(l + 1).inputNorm : finalNorm_;
    reducer.addNorm(partial_, residual_, next, normed_, m, stream);
  }
  // Logits of each sequence's last row only.
  const size_t last = rows.tokensPerSequence - 1;
  gemm(blas, normed_ + last * h, rows.tokensPerSequence * h, batch_, h, lmHead_, shard_.vocab,
       logits_);
}

}  // namespace decode
}  // namespace tpcomm
