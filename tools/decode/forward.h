// One rank's transformer in tpcomm-decode: synthetic weights, KV cache and activations, and the
// forward pass of prefill and of one decode step, which a CUDA graph can capture. How each of the
// forward pass's all-reduces is made (NCCL, tpcomm, none) is a Reducer's business.
#pragma once

#include <cublas_v2.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "decode/kernels.h"
#include "decode/model.h"

namespace tpcomm {
namespace decode {

struct DecodeError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void cudaTry(cudaError_t err, const std::string& what);

// The end of every block of the forward pass, and of the embedding:
//     residual += allreduce(partial);  normed = rmsnorm(residual) x weight
// on `rows` rows of the model's hidden size. `partial` may be overwritten.
class Reducer {
 public:
  virtual ~Reducer() = default;
  virtual void addNorm(bf16* partial, bf16* residual, const bf16* weight, bf16* normed, size_t rows,
                       cudaStream_t stream) = 0;
};

// tpcomm's norm kernel (the one its fused call ends with) on sums made elsewhere, so that a
// separate all-reduce and norm give the fused call's bits.
void addRmsNorm(const bf16* sum, bf16* residual, const bf16* weight, bf16* normed, size_t rows,
                int hidden, float eps, cudaStream_t stream);

// No communication at all: each rank normalises its own partial sums. Not a model any more, but
// the time of a step without its all-reduces.
class LocalReducer : public Reducer {
 public:
  LocalReducer(int hidden, float eps) : hidden_(hidden), eps_(eps) {}
  void addNorm(bf16* partial, bf16* residual, const bf16* weight, bf16* normed, size_t rows,
               cudaStream_t stream) override;

 private:
  int hidden_;
  float eps_;
};

class Transformer {
 public:
  // Allocates and fills everything for `batch` sequences of inputLen + outputLen tokens; throws
  // DecodeError when the device cannot hold it.
  Transformer(const ModelShape& model, const Shard& shard, WeightLayout layout, int batch,
              int inputLen, int outputLen, cudaStream_t stream);
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  // The prompt: inputLen tokens of every sequence into the cache, and the logits of each
  // sequence's last token.
  void prefill(Reducer& reducer, cublasHandle_t blas, cudaStream_t stream);
  // One token per sequence at the decode position (in device memory, so that a captured step
  // serves every step): appends it to the cache and leaves the logits of the next. With
  // `advance`, ends by moving the position on by one.
  void decodeStep(Reducer& reducer, cublasHandle_t blas, cudaStream_t stream, bool advance);
  // Sets the position of the next decode step (the prompt takes 0 to inputLen - 1).
  void setPosition(int position, cudaStream_t stream);

  const bf16* logits() const { return logits_; }  // batch x shard.vocab
  size_t logitsCount() const { return size_t(batch_) * shard_.vocab; }

 private:
  struct Layer {
    bf16* qkv;        // (heads + 2 kvHeads) x headDim rows of hidden
    bf16* out;        // hidden rows of heads x headDim
    bf16* gateUp;     // 2 x intermediate rows of hidden: gate rows, then up rows
    bf16* down;       // hidden rows of intermediate
    bf16* inputNorm;  // hidden
    bf16* postNorm;   // hidden
  };

  template <typename T>
  T* allocate(size_t count);
  void fill(bf16* data, size_t count, float offset, float scale, cudaStream_t stream);
  const Layer& layer(int l) const { return layers_[layers_.size() == 1 ? 0 : l]; }
  void forward(const TokenRows& rows, int maxKeys, int splitKeys, Reducer& reducer,
               cublasHandle_t blas, cudaStream_t stream);
  // y[rows x n] = x[rows x k] w[n x k]^T, x's rows `ldx` elements apart.
  void gemm(cublasHandle_t blas, const bf16* x, size_t ldx, size_t rows, size_t k, const bf16* w,
            size_t n, bf16* y);

  ModelShape model_;
  Shard shard_;
  int batch_;
  int inputLen_;
  int maxTokens_;
  uint64_t nextSeed_;
  std::vector<void*> allocations_;
  std::vector<Layer> layers_;
  bf16* embedding_ = nullptr;  // shard.vocab rows of hidden
  bf16* lmHead_ = nullptr;     // shard.vocab rows of hidden
  bf16* finalNorm_ = nullptr;
  bf16* keyCache_ = nullptr;  // per layer: [batch][kvHeads][maxTokens][headDim]
  bf16* valueCache_ = nullptr;
  bf16* residual_ = nullptr;
  bf16* normed_ = nullptr;
  bf16* partial_ = nullptr;
  bf16* qkv_ = nullptr;
  bf16* attention_ = nullptr;
  bf16* gateUp_ = nullptr;
  bf16* act_ = nullptr;
  float* partials_ = nullptr;
  float* partialStats_ = nullptr;
  bf16* logits_ = nullptr;
  int* position_ = nullptr;  // [0]: the decode position; [1]: 0, prefill's first position
};

}  // namespace decode
}  // namespace tpcomm
