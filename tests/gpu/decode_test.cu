// tpcomm-decode on a GPU: its attention against a float64 reference, and the tool end to end,
// whose exit status says that every communicator gave the same logits.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "decode/kernels.h"
#include "decode/model.h"
#include "run_tool.h"

namespace tpcomm {
namespace decode {
namespace {

bool haveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

float round16(double x) { return __bfloat162float(__float2bfloat16(static_cast<float>(x))); }

// Rotates heads of kHeadDim in place as Llama does, rounding to bf16 like the kernel's stores.
void rotate(std::vector<float>& x, size_t at, int position, float theta) {
  constexpr int kHalf = kHeadDim / 2;
  for (int j = 0; j < kHalf; ++j) {
    const double angle = position * std::pow(double(theta), -2.0 * j / kHeadDim);
    const double a = x[at + j], b = x[at + j + kHalf];
    x[at + j] = round16(a * std::cos(angle) - b * std::sin(angle));
    x[at + j + kHalf] = round16(b * std::cos(angle) + a * std::sin(angle));
  }
}

struct AttentionCase {
  int heads, kvHeads, batch, prompt, maxTokens;
};

class DecodeAttention : public ::testing::TestWithParam<AttentionCase> {};

// A prompt of several 32-key runs, then one decode token: every output within bf16's rounding
// of causal softmax attention computed in float64 from the same rotated, rounded q, k and v.
TEST_P(DecodeAttention, MatchesAFloat64Reference) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  const AttentionCase c = GetParam();
  const int columns = (c.heads + 2 * c.kvHeads) * kHeadDim;
  const int group = c.heads / c.kvHeads;
  const float theta = 10000.0f;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uniform(-1, 1);

  // Host copies of every row's q, k, v, prompt rows first, then one decode row per sequence.
  const int promptRows = c.batch * c.prompt;
  std::vector<float> rows(size_t(promptRows + c.batch) * columns);
  for (float& x : rows) x = round16(uniform(rng));

  const size_t cacheElems = size_t(c.batch) * c.kvHeads * c.maxTokens * kHeadDim;
  // The prompt in 32-key runs too: more partial results than the tool's 256-key runs keep.
  const size_t partials =
      size_t(c.heads) * std::max(promptRows * attentionSplits(c.prompt, kDecodeSplitKeys),
                                 c.batch * attentionSplits(c.maxTokens, kDecodeSplitKeys));
  bf16 *qkv, *keys, *values, *out;
  float *partial, *stats;
  int* position;
  ASSERT_EQ(cudaSuccess, cudaMalloc(&qkv, size_t(promptRows) * columns * sizeof(bf16)));
  ASSERT_EQ(cudaSuccess, cudaMalloc(&keys, cacheElems * sizeof(bf16)));
  ASSERT_EQ(cudaSuccess, cudaMalloc(&values, cacheElems * sizeof(bf16)));
  ASSERT_EQ(cudaSuccess, cudaMalloc(&out, size_t(promptRows) * c.heads * kHeadDim * sizeof(bf16)));
  ASSERT_EQ(cudaSuccess, cudaMalloc(&partial, partials * kHeadDim * sizeof(float)));
  ASSERT_EQ(cudaSuccess, cudaMalloc(&stats, partials * 2 * sizeof(float)));
  ASSERT_EQ(cudaSuccess, cudaMalloc(&position, 2 * sizeof(int)));

  AttentionParams p{};
  p.qkv = qkv;
  p.keyCache = keys;
  p.valueCache = values;
  p.out = out;
  p.partials = partial;
  p.partialStats = stats;
  p.heads = c.heads;
  p.kvHeads = c.kvHeads;
  p.maxTokens = c.maxTokens;
  p.ropeTheta = theta;

  std::vector<bf16> device(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) device[i] = __float2bfloat16(rows[i]);
  const int positions[2] = {c.prompt, 0};
  ASSERT_EQ(cudaSuccess, cudaMemcpy(position, positions, sizeof(positions), cudaMemcpyDefault));
  std::vector<bf16> gotPrompt(size_t(promptRows) * c.heads * kHeadDim);
  std::vector<bf16> gotDecode(size_t(c.batch) * c.heads * kHeadDim);

  // Prefill, in 32-key runs so that the prompt's keys span several.
  ASSERT_EQ(cudaSuccess, cudaMemcpy(qkv, device.data(), size_t(promptRows) * columns * sizeof(bf16),
                                    cudaMemcpyDefault));
  p.splitKeys = kDecodeSplitKeys;
  p.maxKeys = c.prompt;
  ASSERT_EQ(cudaSuccess, attention(p, TokenRows{promptRows, c.prompt, position + 1}, nullptr));
  ASSERT_EQ(cudaSuccess,
            cudaMemcpy(gotPrompt.data(), out, gotPrompt.size() * sizeof(bf16), cudaMemcpyDefault));
  // Decode: one row per sequence at position `prompt`, attending to every cached key.
  ASSERT_EQ(cudaSuccess, cudaMemcpy(qkv, device.data() + size_t(promptRows) * columns,
                                    size_t(c.batch) * columns * sizeof(bf16), cudaMemcpyDefault));
  p.maxKeys = c.maxTokens;
  ASSERT_EQ(cudaSuccess, attention(p, TokenRows{c.batch, 1, position}, nullptr));
  ASSERT_EQ(cudaSuccess,
            cudaMemcpy(gotDecode.data(), out, gotDecode.size() * sizeof(bf16), cudaMemcpyDefault));
  for (void* ptr : {(void*)qkv, (void*)keys, (void*)values, (void*)out, (void*)partial,
                    (void*)stats, (void*)position}) {
    cudaFree(ptr);
  }

  // The reference: row r of sequence s at position t sees keys 0..t of its sequence.
  auto rowOf = [&](int s, int t) -> size_t {
    return t < c.prompt ? size_t(s) * c.prompt + t : size_t(promptRows) + s;
  };
  for (int s = 0; s < c.batch; ++s) {
    for (int t = 0; t <= c.prompt; ++t) {
      const size_t at = rowOf(s, t) * columns;
      for (int h = 0; h < c.heads + c.kvHeads; ++h) rotate(rows, at + h * kHeadDim, t, theta);
    }
  }
  int checked = 0, wrong = 0;
  for (int s = 0; s < c.batch; ++s) {
    for (int t = 0; t <= c.prompt; ++t) {
      const float* q = &rows[rowOf(s, t) * columns];
      for (int h = 0; h < c.heads; ++h) {
        const int kv = h / group;
        std::vector<double> w(t + 1);
        double largest = -1e300, total = 0;
        for (int j = 0; j <= t; ++j) {
          const float* k = &rows[rowOf(s, j) * columns + (c.heads + kv) * kHeadDim];
          double dot = 0;
          for (int d = 0; d < kHeadDim; ++d) dot += double(q[h * kHeadDim + d]) * k[d];
          w[j] = dot / std::sqrt(double(kHeadDim));
          largest = std::max(largest, w[j]);
        }
        for (double& x : w) total += (x = std::exp(x - largest));
        for (int d = 0; d < kHeadDim; ++d) {
          double expect = 0;
          for (int j = 0; j <= t; ++j) {
            expect += w[j] / total *
                      rows[rowOf(s, j) * columns + (c.heads + c.kvHeads + kv) * kHeadDim + d];
          }
          const bf16 g =
              t < c.prompt
                  ? gotPrompt[(size_t(s) * c.prompt + t) * c.heads * kHeadDim + h * kHeadDim + d]
                  : gotDecode[size_t(s) * c.heads * kHeadDim + h * kHeadDim + d];
          const double got = __bfloat162float(g);
          ++checked;
          if (!(std::fabs(got - expect) <= 0.01 + 0.01 * std::fabs(expect))) {
            if (++wrong <= 5) {
              ADD_FAILURE() << "sequence " << s << " position " << t << " head " << h << " dim "
                            << d << ": " << got << ", expected " << expect;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(0, wrong) << "of " << checked;
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeAttention,
                         ::testing::Values(AttentionCase{4, 2, 2, 70, 80},
                                           AttentionCase{8, 2, 3, 33, 40},
                                           AttentionCase{16, 1, 1, 5, 300}),
                         [](const ::testing::TestParamInfo<AttentionCase>& info) {
                           const AttentionCase& c = info.param;
                           return std::to_string(c.heads) + "heads" + std::to_string(c.kvHeads) +
                                  "kv_batch" + std::to_string(c.batch) + "_prompt" +
                                  std::to_string(c.prompt);
                         });

int runDecode(const std::string& args, std::string* out) {
  return tpcomm::tooltest::runTool(TPCOMM_DECODE, args, out);
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Every GPU one rank: the three ways of carrying the all-reduces give bitwise equal logits (one
// or two ranks) and every run reports its figures.
TEST(DecodeTool, CommunicatorsGiveTheSameLogits) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  std::string out;
  const int status =
      runDecode("--model tiny --batch-size 1,3 --input-len 40 --output-len 9 --comm all", &out);
  ASSERT_EQ(0, status) << out;
  int gpus = 0;
  cudaGetDeviceCount(&gpus);
  if (gpus <= 2) EXPECT_EQ(4u, count(out, "bitwise equal")) << out;
  EXPECT_EQ(0u, count(out, "FAILED")) << out;
  EXPECT_EQ(2u, count(out, " tpcomm-unfused  distinct ")) << out;  // one row per batch
  EXPECT_NE(std::string::npos, out.find("# Latency of a request")) << out;
}

TEST(DecodeTool, MoreRanksThanGpusIsAClearError) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  int gpus = 0;
  cudaGetDeviceCount(&gpus);
  if (gpus >= 8) GTEST_SKIP() << "every --tp fits";
  std::string out;
  EXPECT_EQ(2, runDecode("--model tiny --tp " + std::to_string(gpus + 1), &out));
  EXPECT_NE(std::string::npos, out.find("needs as many GPUs")) << out;
}

}  // namespace
}  // namespace decode
}  // namespace tpcomm
