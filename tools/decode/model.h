// The transformers tpcomm-decode runs: real models' shapes, sharded over tensor-parallel ranks as
// Megatron-LM does (QKV and gate/up split by columns, O and down by rows, the vocabulary split
// over the ranks), and the bytes each rank then holds.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace tpcomm {
namespace decode {

// A decoder-only transformer with grouped-query attention and a gated SiLU MLP (Llama's).
struct ModelShape {
  std::string name;
  int layers = 0;
  int hidden = 0;
  int heads = 0;
  int kvHeads = 0;
  int headDim = 0;
  int intermediate = 0;
  int vocab = 0;
  float ropeTheta = 0;
  float normEps = 0;
};

// Every preset; `tiny` is for tests.
const std::vector<ModelShape>& presets();
// Null when `name` names no preset.
const ModelShape* findPreset(const std::string& name);

// One rank's part of a model. KV heads are replicated, as vLLM does, when there are fewer of them
// than ranks.
struct Shard {
  int ranks = 1;
  int rank = 0;
  int heads = 0;         // query heads of this rank
  int kvHeads = 0;       // key/value heads of this rank
  int intermediate = 0;  // MLP columns of this rank
  int vocab = 0;         // vocabulary rows of this rank (the last rank's may be partly padding)
  int vocabFirst = 0;    // the first token id of this rank's rows
  int qkvColumns() const;
};

// Fails with a sentence when the model cannot be split over `ranks`.
bool shardModel(const ModelShape& model, int ranks, int rank, Shard* out, std::string* error);

// Attention splits each query's keys into runs of this many, one thread block each, and merges
// the runs' partial results: short runs spread one decode token over many blocks, long runs keep
// prefill's partial results small.
constexpr int kDecodeSplitKeys = 32;
constexpr int kPrefillSplitKeys = 256;
constexpr int kMaxSplitKeys = 256;
inline int attentionSplits(int keys, int splitKeys) { return (keys + splitKeys - 1) / splitKeys; }

// Partial results attention keeps: (rows x splits) of them, each a head's output and two floats.
size_t attentionPartials(const Shard& shard, int batch, int inputLen, int maxTokens);

// Device bytes of one rank.
size_t layerWeightBytes(const ModelShape& model, const Shard& shard);
size_t outerWeightBytes(const ModelShape& model, const Shard& shard);  // embedding, LM head, norm
size_t kvCacheBytes(const ModelShape& model, const Shard& shard, int batch, int maxTokens);
size_t activationBytes(const ModelShape& model, const Shard& shard, int batch, int inputLen,
                       int maxTokens);

// Whether every layer gets weights of its own or all share the first layer's (same shapes, same
// time: a layer's weights are far larger than any cache, so every layer reads them from memory).
enum class WeightLayout { kAuto, kDistinct, kShared };

// kAuto resolved on a device of `deviceBytes`: distinct when everything fits with room to spare
// for the CUDA context, the communicators and cuBLAS.
WeightLayout resolveLayout(WeightLayout asked, const ModelShape& model, const Shard& shard,
                           int batch, int inputLen, int outputLen, size_t deviceBytes);

}  // namespace decode
}  // namespace tpcomm
