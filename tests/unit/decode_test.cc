// tpcomm-decode's model shapes, command line, rank messages, logits check and formats, none of
// which needs a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "decode/model.h"
#include "decode/options.h"
#include "decode/report.h"

namespace tpcomm {
namespace decode {
namespace {

bool parse(std::vector<std::string> args, Options* o, std::string* error) {
  args.insert(args.begin(), "tpcomm-decode");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(&a[0]);
  bool help = false;
  return parseOptions(static_cast<int>(argv.size()), argv.data(), o, error, &help);
}

TEST(DecodeModel, LlamaShardsAsMegatronDoes) {
  const ModelShape& m = *findPreset("llama3-70b");
  Shard s;
  std::string error;
  ASSERT_TRUE(shardModel(m, 2, 1, &s, &error)) << error;
  EXPECT_EQ(32, s.heads);
  EXPECT_EQ(4, s.kvHeads);
  EXPECT_EQ(14336, s.intermediate);
  EXPECT_EQ(64128, s.vocab);
  EXPECT_EQ(64128, s.vocabFirst);
  EXPECT_EQ(40, s.qkvColumns());
  // QKV 8192 x 5120, O 4096 x 8192, gate/up and down 3 x 8192 x 14336, two norms; bf16.
  EXPECT_EQ(size_t(2) * (5120 * 8192 + 4096 * 8192 + 3 * 8192 * 14336 + 2 * 8192),
            layerWeightBytes(m, s));
  // K and V of 80 layers, 4 heads of 128, 512 tokens, batch 64.
  EXPECT_EQ(size_t(2) * 80 * 64 * 4 * 512 * 128 * 2, kvCacheBytes(m, s, 64, 512));
}

TEST(DecodeModel, KvHeadsAreReplicatedBeyondTheirCount) {
  ModelShape m = *findPreset("tiny");  // 8 heads, 2 KV heads
  Shard s;
  std::string error;
  ASSERT_TRUE(shardModel(m, 4, 3, &s, &error)) << error;
  EXPECT_EQ(2, s.heads);
  EXPECT_EQ(1, s.kvHeads);
  m.kvHeads = 3;
  EXPECT_FALSE(shardModel(m, 2, 0, &s, &error));
  EXPECT_NE(std::string::npos, error.find("KV heads")) << error;
  m = *findPreset("tiny");
  EXPECT_FALSE(shardModel(m, 3, 0, &s, &error));
  EXPECT_NE(std::string::npos, error.find("not divisible over 3 ranks")) << error;
}

TEST(DecodeModel, VocabularyIsPaddedToWholeVectors) {
  ModelShape m = *findPreset("tiny");
  m.vocab = 4097;
  Shard s0, s1;
  std::string error;
  ASSERT_TRUE(shardModel(m, 2, 0, &s0, &error));
  ASSERT_TRUE(shardModel(m, 2, 1, &s1, &error));
  EXPECT_EQ(0, s0.vocab % 8);
  EXPECT_GE(2 * s0.vocab, m.vocab);
  EXPECT_EQ(s0.vocab, s1.vocabFirst);
}

TEST(DecodeModel, SharedWeightsOnlyWhereDistinctOnesWouldNotFit) {
  const ModelShape& m = *findPreset("llama3-70b");
  Shard s;
  std::string error;
  ASSERT_TRUE(shardModel(m, 2, 0, &s, &error));
  const size_t h100 = 85520809984, h200 = 150109880320;  // as the devices report it
  EXPECT_EQ(WeightLayout::kShared, resolveLayout(WeightLayout::kAuto, m, s, 64, 256, 256, h100));
  EXPECT_EQ(WeightLayout::kDistinct, resolveLayout(WeightLayout::kAuto, m, s, 64, 256, 256, h200));
  EXPECT_EQ(WeightLayout::kDistinct,
            resolveLayout(WeightLayout::kDistinct, m, s, 64, 256, 256, h100));
  EXPECT_EQ(WeightLayout::kShared, resolveLayout(WeightLayout::kShared, m, s, 1, 256, 256, h200));
}

TEST(DecodeModel, AttentionPartialsCoverPrefillAndDecode) {
  const ModelShape& m = *findPreset("llama3-8b");
  Shard s;
  std::string error;
  ASSERT_TRUE(shardModel(m, 2, 0, &s, &error));
  // Prefill: 8 x 256 rows, one 256-key run each; decode: 8 rows of 16 runs of 32 keys.
  EXPECT_EQ(size_t(8) * 256 * 16, attentionPartials(s, 8, 256, 512));
  EXPECT_EQ(size_t(8) * 16 * 16, attentionPartials(s, 8, 1, 512));
  EXPECT_EQ(3, attentionSplits(513, 256));
}

TEST(DecodeOptions, DefaultsAndLists) {
  Options o;
  std::string error;
  ASSERT_TRUE(parse({}, &o, &error)) << error;
  EXPECT_EQ(std::vector<std::string>{"llama3-8b"}, o.models);
  EXPECT_EQ((std::vector<int>{1, 8, 32, 64}), o.batches);
  EXPECT_EQ((std::vector<Comm>{Comm::kNccl, Comm::kTpcomm}), o.comms);
  ASSERT_TRUE(parse({"--model", "llama3-8b,llama3-70b", "--batch-size", "2,4", "--comm", "all",
                     "--input-len", "128", "--output-len", "64", "--weights", "shared"},
                    &o, &error))
      << error;
  EXPECT_EQ(2u, o.models.size());
  EXPECT_EQ((std::vector<int>{2, 4}), o.batches);
  EXPECT_EQ((std::vector<Comm>{Comm::kNccl, Comm::kTpcommUnfused, Comm::kTpcomm}), o.comms);
  EXPECT_EQ(128, o.inputLen);
  EXPECT_EQ(64, o.outputLen);
  EXPECT_EQ(WeightLayout::kShared, o.weights);
}

TEST(DecodeOptions, BadArgumentsAreOneLineErrors) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--model", "gpt5"}, "unknown model 'gpt5'"},
      {{"--batch-size", "0"}, "bad batch size '0'"},
      {{"--batch-size", "8,x"}, "bad batch size 'x'"},
      {{"--comm", "mpi"}, "bad --comm 'mpi'"},
      {{"--weights", "some"}, "bad --weights"},
      {{"--tp", "9"}, "bad --tp '9'"},
      {{"--input-len", "-3"}, "bad --input-len"},
      {{"--batch-size", "512", "--input-len", "256"}, "exceeds 65535 prompt rows"},
      {{"--frobnicate"}, "unknown or incomplete option"},
      {{"extra"}, "unexpected argument 'extra'"},
  };
  for (const auto& c : cases) {
    Options o;
    std::string error;
    EXPECT_FALSE(parse(c.first, &o, &error)) << c.second;
    EXPECT_NE(std::string::npos, error.find(c.second)) << error;
  }
}

TEST(DecodeOptions, WorkerArgumentsDescribeOneRun) {
  Options o;
  std::string error;
  ASSERT_TRUE(
      parse({"--model", "tiny,llama3-8b", "--layers", "3", "--input-len", "40", "--tpcomm-nccl"},
            &o, &error));
  std::vector<std::string> args =
      workerArguments(o, "tiny", 5, Comm::kTpcommUnfused, 1, "2:abcd", "/tmp/x");
  args[0] = "tpcomm-decode";
  std::vector<std::string> tail(args.begin() + 1, args.end());
  Options w;
  ASSERT_TRUE(parse(tail, &w, &error)) << error;
  EXPECT_EQ(std::vector<std::string>{"tiny"}, w.models);
  EXPECT_EQ(std::vector<int>{5}, w.batches);
  EXPECT_EQ(std::vector<Comm>{Comm::kTpcommUnfused}, w.comms);
  EXPECT_EQ(40, w.inputLen);
  EXPECT_EQ(3, w.layers);
  EXPECT_TRUE(w.tpcommNccl);
  EXPECT_EQ(1, w.workerRank);
  EXPECT_EQ("2:abcd", w.workerIds);
  EXPECT_EQ("/tmp/x", w.workerDir);
  EXPECT_EQ(3, modelFor(w, "tiny").layers);
}

RankResult sample(double scale) {
  RankResult r;
  r.weights = "distinct";
  r.prefillMs = 10 * scale;
  r.totalMs = 100 * scale;
  r.stepMeanUs = 300 * scale;
  r.stepP50Us = 290 * scale;
  r.stepP99Us = 400 * scale;
  r.localStepUs = 200 * scale;
  r.peakMb = 1000 * scale;
  r.commMb = 50 * scale;
  r.graphMb = 2 * scale;
  return r;
}

TEST(DecodeReport, ResultsRoundTripAndTheSlowestRankCounts) {
  RankResult back;
  ASSERT_TRUE(decodeResult(encodeResult(sample(1.5)), &back));
  EXPECT_EQ("distinct", back.weights);
  EXPECT_DOUBLE_EQ(150, back.totalMs);
  EXPECT_DOUBLE_EQ(300, back.localStepUs);
  EXPECT_DOUBLE_EQ(3, back.graphMb);
  EXPECT_FALSE(decodeResult("RES total_ms=1", &back)) << "every figure is required";
  EXPECT_FALSE(decodeResult("RES weights=distinct total_ms=x", &back));
  RankResult shared = sample(1);
  shared.weights = "shared";
  const RankResult s = slowestOf({sample(2), shared});
  EXPECT_EQ("shared", s.weights);
  EXPECT_DOUBLE_EQ(200, s.totalMs);
  EXPECT_DOUBLE_EQ(2000, s.peakMb);
}

TEST(DecodeReport, Percentiles) {
  std::vector<double> v = {5, 1, 4, 2, 3};
  EXPECT_DOUBLE_EQ(3, percentile(v, 0.5));
  EXPECT_DOUBLE_EQ(5, percentile(v, 0.99));
  EXPECT_DOUBLE_EQ(1, percentile(v, 0));
  std::vector<double> none;
  EXPECT_DOUBLE_EQ(0, percentile(none, 0.5));
}

uint16_t bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return static_cast<uint16_t>(bits >> 16);
}

TEST(DecodeReport, LogitsMustMatchBitwiseForTwoRanks) {
  const std::vector<uint16_t> a = {bf16(1), bf16(-2), bf16(0.5f)};
  LogitsCheck same;
  same.bitwise = true;
  compareLogits(a, a, &same);
  EXPECT_TRUE(same.passed());
  EXPECT_EQ(3u, same.elements);

  std::vector<uint16_t> b = a;
  b[1] = bf16(-2.015625f);  // one bf16 step away
  LogitsCheck close;
  close.bitwise = true;
  compareLogits(a, b, &close);
  EXPECT_FALSE(close.passed());
  EXPECT_EQ(1u, close.differing);
  EXPECT_NE(std::string::npos, formatCheck(close).find("FAILED"));
  close.bitwise = false;  // more ranks: within 5% of the largest logit passes
  EXPECT_TRUE(close.passed());

  std::vector<uint16_t> nan = a;
  nan[0] = 0x7fc0;
  LogitsCheck bad;
  compareLogits(nan, nan, &bad);
  EXPECT_FALSE(bad.passed()) << "NaN equal to NaN is no pass";

  LogitsCheck missing;
  compareLogits(a, {}, &missing);
  EXPECT_FALSE(missing.passed());
}

TEST(DecodeReport, TablesAndJsonCarryEveryRun) {
  Report report;
  report.version = "0.3.0";
  report.gpu = "NVIDIA H100 80GB HBM3";
  report.gpus = 2;
  report.ranks = 2;
  report.inputLen = 256;
  report.outputLen = 256;
  report.models = {*findPreset("llama3-8b")};
  report.runs = {{"llama3-8b", 1, Comm::kNccl, sample(1)},
                 {"llama3-8b", 1, Comm::kTpcomm, sample(0.9)}};
  LogitsCheck c;
  c.model = "llama3-8b";
  c.batch = 1;
  c.comm = Comm::kTpcomm;
  c.bitwise = true;
  c.elements = 128;
  report.checks = {c};

  EXPECT_NE(std::string::npos, formatPreamble(report).find("2 x NVIDIA H100 80GB HBM3, TP 2"));
  const std::string row = formatRun(report, report.runs[1]);
  EXPECT_NE(std::string::npos, row.find("-10.0%")) << row;
  EXPECT_NE(std::string::npos, row.find("31.0%")) << "share of (261 - 180) / 261: " << row;
  const std::string summary = formatSummary(report);
  EXPECT_NE(
      std::string::npos,
      summary.find("HBM3    2      1      100.0       90.0  -10.0%      1000       900  -10.0%"))
      << summary;
  EXPECT_NE(std::string::npos, formatCheck(c).find("bitwise equal"));

  const std::string json = formatJson(report);
  EXPECT_NE(std::string::npos, json.find("\"comm\": \"tpcomm\", \"weights\": \"distinct\""));
  EXPECT_NE(std::string::npos, json.find("\"passed\": true"));
  EXPECT_NE(std::string::npos, json.find("\"allreduce_share\": 0.3103"));
  Report one = report;
  one.ranks = 1;
  EXPECT_NE(std::string::npos, formatPreamble(one).find("ONE RANK"));
}

}  // namespace
}  // namespace decode
}  // namespace tpcomm
