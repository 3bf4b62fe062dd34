#include "decode/model.h"

#include <algorithm>

namespace tpcomm {
namespace decode {
namespace {

constexpr size_t kElem = 2;  // bf16

// What the CUDA context, both communicators, cuBLAS's workspace and the graphs may take beyond
// the buffers counted here.
constexpr size_t kHeadroomBytes = size_t{8} << 30;

}  // namespace

const std::vector<ModelShape>& presets() {
  static const std::vector<ModelShape> kPresets = {
      {"llama3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 500000.0f, 1e-5f},
      {"llama3-70b", 80, 8192, 64, 8, 128, 28672, 128256, 500000.0f, 1e-5f},
      {"tiny", 2, 1024, 8, 2, 128, 2048, 4096, 10000.0f, 1e-5f},
  };
  return kPresets;
}

const ModelShape* findPreset(const std::string& name) {
  for (const ModelShape& m : presets()) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

int Shard::qkvColumns() const { return heads + 2 * kvHeads; }

bool shardModel(const ModelShape& model, int ranks, int rank, Shard* out, std::string* error) {
  if (ranks < 1 || rank < 0 || rank >= ranks) {
    *error = "rank " + std::to_string(rank) + " of " + std::to_string(ranks);
    return false;
  }
  if (model.heads % ranks != 0 || model.intermediate % ranks != 0) {
    *error = model.name + " has " + std::to_string(model.heads) + " heads and an MLP of " +
             std::to_string(model.intermediate) + ": not divisible over " + std::to_string(ranks) +
             " ranks";
    return false;
  }
  if (model.kvHeads % ranks != 0 && ranks % model.kvHeads != 0) {
    *error = model.name + "'s " + std::to_string(model.kvHeads) +
             " KV heads can be neither split nor replicated over " + std::to_string(ranks) +
             " ranks";
    return false;
  }
  Shard s;
  s.ranks = ranks;
  s.rank = rank;
  s.heads = model.heads / ranks;
  s.kvHeads = std::max(1, model.kvHeads / ranks);
  s.intermediate = model.intermediate / ranks;
  // Rows of 16-byte multiples keep every GEMM and norm vectorised.
  s.vocab = ((model.vocab + ranks - 1) / ranks + 7) / 8 * 8;
  s.vocabFirst = rank * s.vocab;
  *out = s;
  return true;
}

size_t layerWeightBytes(const ModelShape& model, const Shard& shard) {
  const size_t h = model.hidden, d = model.headDim;
  const size_t qkv = shard.qkvColumns() * d * h;
  const size_t o = h * shard.heads * d;
  const size_t mlp = 3 * h * shard.intermediate;
  return (qkv + o + mlp + 2 * h) * kElem;
}

size_t outerWeightBytes(const ModelShape& model, const Shard& shard) {
  return (2 * size_t(shard.vocab) + 1) * model.hidden * kElem;
}

size_t kvCacheBytes(const ModelShape& model, const Shard& shard, int batch, int maxTokens) {
  return 2 * size_t(model.layers) * batch * shard.kvHeads * maxTokens * model.headDim * kElem;
}

size_t activationBytes(const ModelShape& model, const Shard& shard, int batch, int inputLen,
                       int maxTokens) {
  const size_t rows = size_t(batch) * std::max(inputLen, 1);
  const size_t d = model.headDim;
  const size_t perRow = 3 * size_t(model.hidden) + shard.qkvColumns() * d + shard.heads * d +
                        3 * size_t(shard.intermediate);
  return rows * perRow * kElem +
         attentionPartials(shard, batch, inputLen, maxTokens) * (d + 2) * sizeof(float) +
         size_t(batch) * shard.vocab * kElem;
}

size_t attentionPartials(const Shard& shard, int batch, int inputLen, int maxTokens) {
  const size_t prefill = size_t(batch) * inputLen * attentionSplits(inputLen, kPrefillSplitKeys);
  const size_t decode = size_t(batch) * attentionSplits(maxTokens, kDecodeSplitKeys);
  return std::max(prefill, decode) * shard.heads;
}

WeightLayout resolveLayout(WeightLayout asked, const ModelShape& model, const Shard& shard,
                           int batch, int inputLen, int outputLen, size_t deviceBytes) {
  if (asked != WeightLayout::kAuto) return asked;
  const int maxTokens = inputLen + outputLen;
  const size_t needed = model.layers * layerWeightBytes(model, shard) +
                        outerWeightBytes(model, shard) +
                        kvCacheBytes(model, shard, batch, maxTokens) +
                        activationBytes(model, shard, batch, inputLen, maxTokens) + kHeadroomBytes;
  return needed <= deviceBytes ? WeightLayout::kDistinct : WeightLayout::kShared;
}

}  // namespace decode
}  // namespace tpcomm
