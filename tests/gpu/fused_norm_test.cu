// tpcAllReduceAddRmsNorm against a float64 reference of the whole sequence: the all-reduced sum
// (exact here: the inputs are multiples of 1/64, so every float32 sum is exact and only the
// rounding to the input type is left), the new residual (exact), and the normalised output, exact
// up to rounding ties (within the float32 computation's error of a tie). Every rank must hold the
// same bits, and every path (fused one-shot, fused two-shot, NCCL + norm kernel) the same values.
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "gpu_test_util.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace testing {
namespace {

size_t sizeOf(tpcDataType_t t) { return t == tpcFloat8e4m3 || t == tpcFloat8e5m2 ? 1 : 2; }

double decode(tpcDataType_t t, const uint8_t* p) {
  switch (t) {
    case tpcBfloat16: {
      __nv_bfloat16 x;
      std::memcpy(&x, p, 2);
      return __bfloat162float(x);
    }
    case tpcFloat16: {
      __half x;
      std::memcpy(&x, p, 2);
      return __half2float(x);
    }
    case tpcFloat8e4m3: {
      __nv_fp8_e4m3 x;
      std::memcpy(&x, p, 1);
      return static_cast<float>(x);
    }
    default: {
      __nv_fp8_e5m2 x;
      std::memcpy(&x, p, 1);
      return static_cast<float>(x);
    }
  }
}

void encode(tpcDataType_t t, double v, uint8_t* p) {
  const float f = static_cast<float>(v);
  if (t == tpcBfloat16) {
    const __nv_bfloat16 x = __float2bfloat16_rn(f);
    std::memcpy(p, &x, 2);
  } else {
    const __half x = __float2half_rn(f);
    std::memcpy(p, &x, 2);
  }
}

struct Format {
  int mantissaBits;
  int minExponent;  // of the smallest normal number
  double maxFinite;
};

Format formatOf(tpcDataType_t t) {
  switch (t) {
    case tpcBfloat16:
      return {7, -126, 3.3895313892515355e38};
    case tpcFloat16:
      return {10, -14, 65504.0};
    case tpcFloat8e4m3:
      return {3, -6, 448.0};
    default:
      return {2, -14, 57344.0};
  }
}

// Whether `got` is `exact` rounded to nearest in type t, allowing either neighbour of a tie (the
// kernels compute in float32, the reference in float64). FP8 saturates, as the kernels do.
bool roundsTo(tpcDataType_t t, double exact, double got) {
  if (std::isnan(exact)) return std::isnan(got);
  const Format f = formatOf(t);
  const bool fp8 = sizeOf(t) == 1;
  if (fp8 && std::fabs(exact) >= f.maxFinite) return got == std::copysign(f.maxFinite, exact);
  if (std::isinf(exact)) return got == exact;
  const int e = std::max(static_cast<int>(std::floor(std::log2(std::fabs(exact)))), f.minExponent);
  const double ulp = std::ldexp(1.0, e - f.mantissaBits);
  if (!fp8 && std::isinf(got)) return std::fabs(exact) >= f.maxFinite + 0.5 * ulp * (1 - 1e-6);
  return std::fabs(got - exact) <= 0.5 * ulp + 1e-5 * std::fabs(exact) + 1e-30;
}

// A value that sums exactly: k / 64 for k in [-128, 128].
double exactValue(uint32_t seed, size_t i) {
  uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed * 0x9e3779b9u;
  h ^= h >> 15;
  h *= 0x2c1b3c6du;
  h ^= h >> 12;
  return (static_cast<int>(h % 257) - 128) / 64.0;
}

struct Shape {
  size_t rows;
  size_t hidden;
};

// One call's buffers on every rank and its inputs on the host.
struct Call {
  tpcDataType_t type = tpcBfloat16;
  tpcDataType_t outType = tpcBfloat16;
  Shape shape{};
  float eps = 1e-5f;
  float scale = 1.0f;
  bool inPlaceResidual = true;
  bool inPlaceOutput = false;  // out over the input (same type only)

  std::vector<std::vector<uint8_t>> input;  // by rank
  std::vector<uint8_t> residual;            // the same on every rank, as tensor parallelism has it
  std::vector<uint8_t> weight;

  std::vector<DeviceBuffer> dInput, dResidualIn, dResidualOut, dWeight, dOut, dScale;

  size_t elems() const { return shape.rows * shape.hidden; }
  size_t bytes() const { return elems() * sizeOf(type); }
  size_t outBytes() const { return elems() * sizeOf(outType); }
};

void fillHost(Call* c, int nranks, uint32_t seed) {
  c->input.assign(nranks, std::vector<uint8_t>(c->bytes()));
  c->residual.assign(c->bytes(), 0);
  c->weight.assign(c->shape.hidden * sizeOf(c->type), 0);
  for (int r = 0; r < nranks; ++r) {
    for (size_t i = 0; i < c->elems(); ++i) {
      encode(c->type, exactValue(seed * 31 + r, i), &c->input[r][2 * i]);
    }
  }
  for (size_t i = 0; i < c->elems(); ++i) {
    encode(c->type, exactValue(seed * 31 + 17, i), &c->residual[2 * i]);
  }
  for (size_t i = 0; i < c->shape.hidden; ++i) {
    encode(c->type, 0.25 + std::fabs(exactValue(seed + 5, i)), &c->weight[2 * i]);
  }
}

void allocate(Call* c, const Ranks& ranks) {
  for (int r = 0; r < ranks.size(); ++r) {
    ranks.use(r);
    c->dInput.emplace_back(c->bytes());
    c->dResidualIn.emplace_back(c->bytes());
    c->dResidualOut.emplace_back(c->inPlaceResidual ? 0 : c->bytes());
    c->dWeight.emplace_back(c->shape.hidden * sizeOf(c->type));
    c->dOut.emplace_back(c->inPlaceOutput ? 0 : c->outBytes());
    c->dScale.emplace_back(sizeof(float));
  }
}

void* residualOutOf(const Call& c, int r) {
  return c.inPlaceResidual ? c.dResidualIn[r].get() : c.dResidualOut[r].get();
}
void* outOf(const Call& c, int r) { return c.inPlaceOutput ? c.dInput[r].get() : c.dOut[r].get(); }

// Copies the host inputs to every rank (on the ranks' streams) and poisons the outputs.
void upload(const Call& c, const Ranks& ranks) {
  for (int r = 0; r < ranks.size(); ++r) {
    ranks.use(r);
    cudaStream_t s = ranks.streams[r];
    cudaMemcpyAsync(c.dInput[r].get(), c.input[r].data(), c.bytes(), cudaMemcpyHostToDevice, s);
    cudaMemcpyAsync(c.dResidualIn[r].get(), c.residual.data(), c.bytes(), cudaMemcpyHostToDevice,
                    s);
    cudaMemcpyAsync(c.dWeight[r].get(), c.weight.data(), c.weight.size(), cudaMemcpyHostToDevice,
                    s);
    cudaMemcpyAsync(c.dScale[r].get(), &c.scale, sizeof(float), cudaMemcpyHostToDevice, s);
    if (!c.inPlaceResidual) cudaMemsetAsync(c.dResidualOut[r].get(), 0xff, c.bytes(), s);
    if (!c.inPlaceOutput) cudaMemsetAsync(c.dOut[r].get(), 0xff, c.outBytes(), s);
    cudaStreamSynchronize(s);
  }
}

// The call on rank r alone.
tpcResult_t callOn(const Call& c, const Ranks& ranks, int r) {
  ranks.use(r);
  return tpcAllReduceAddRmsNorm(c.dInput[r].get(), c.dResidualIn[r].get(), residualOutOf(c, r),
                                c.dWeight[r].get(), outOf(c, r), c.shape.rows, c.shape.hidden,
                                c.eps, c.type, c.outType, c.dScale[r].get<float>(), ranks.comms[r],
                                ranks.streams[r]);
}

tpcResult_t issue(const Call& c, const Ranks& ranks, std::string* message) {
  tpcResult_t first = tpcGroupStart();
  for (int r = 0; r < ranks.size() && first == tpcSuccess; ++r) {
    first = callOn(c, ranks, r);
    if (first != tpcSuccess) *message = tpcCommGetLastError(ranks.comms[r]);
  }
  const tpcResult_t ended = tpcGroupEnd();
  if (first == tpcSuccess && ended != tpcSuccess) {
    first = ended;
    *message = tpcCommGetLastError(nullptr);
  }
  return first;
}

struct Results {
  std::vector<std::vector<uint8_t>> residual, out;  // by rank
};

Results download(const Call& c, const Ranks& ranks) {
  Results res;
  for (int r = 0; r < ranks.size(); ++r) {
    ranks.use(r);
    cudaStreamSynchronize(ranks.streams[r]);
    res.residual.emplace_back(c.bytes());
    res.out.emplace_back(c.outBytes());
    cudaMemcpy(res.residual.back().data(), residualOutOf(c, r), c.bytes(), cudaMemcpyDeviceToHost);
    cudaMemcpy(res.out.back().data(), outOf(c, r), c.outBytes(), cudaMemcpyDeviceToHost);
  }
  return res;
}

// The new residual a rank must hold, given the residual it started from: exact, as bits.
std::vector<uint8_t> referenceResidual(const Call& c, const std::vector<uint8_t>& residualIn) {
  std::vector<uint8_t> next(c.bytes());
  for (size_t i = 0; i < c.elems(); ++i) {
    double sum = 0.0;
    for (const auto& in : c.input) sum += decode(c.type, &in[2 * i]);
    uint8_t rounded[2];
    encode(c.type, sum, rounded);
    encode(c.type, decode(c.type, rounded) + decode(c.type, &residualIn[2 * i]), &next[2 * i]);
  }
  return next;
}

bool allPoison(const uint8_t* p, size_t n) {
  return std::all_of(p, p + n, [](uint8_t b) { return b == 0xff; });
}

// Compares rank 0's results with the reference from `expectedResidual`, then every rank's bits
// with rank 0's. Returns a description of the first few mismatches ("" when none). With
// `untouchedRows`, rows whose new residual and output both still hold upload()'s poison are
// counted there instead of checked (a call that failed may leave rows unwritten, never wrong).
std::string verify(const Call& c, const Results& got, const std::vector<uint8_t>& expectedResidual,
                   size_t* untouchedRows = nullptr) {
  std::string errors;
  int reported = 0;
  auto report = [&](const std::string& what) {
    if (++reported <= 5) errors += what + "\n";
  };
  const size_t h = c.shape.hidden;
  const size_t outSize = sizeOf(c.outType);
  if (untouchedRows != nullptr) *untouchedRows = 0;
  for (size_t row = 0; row < c.shape.rows; ++row) {
    if (untouchedRows != nullptr && allPoison(&got.residual[0][2 * row * h], 2 * h) &&
        allPoison(&got.out[0][outSize * row * h], outSize * h)) {
      ++*untouchedRows;
      continue;
    }
    double squares = 0.0;
    for (size_t j = 0; j < h; ++j) {
      const size_t i = row * h + j;
      const double want = decode(c.type, &expectedResidual[2 * i]);
      const double have = decode(c.type, &got.residual[0][2 * i]);
      if (!(want == have || (std::isnan(want) && std::isnan(have)))) {
        report("residual row " + std::to_string(row) + " col " + std::to_string(j) + ": got " +
               std::to_string(have) + ", want " + std::to_string(want));
      }
      squares += want * want;
    }
    const double inverseRms = 1.0 / std::sqrt(squares / h + static_cast<double>(c.eps));
    for (size_t j = 0; j < h; ++j) {
      const size_t i = row * h + j;
      double y =
          decode(c.type, &expectedResidual[2 * i]) * inverseRms * decode(c.type, &c.weight[2 * j]);
      if (outSize == 1) y *= 1.0 / static_cast<double>(c.scale);
      const double have = decode(c.outType, &got.out[0][outSize * i]);
      if (!roundsTo(c.outType, y, have)) {
        report("out row " + std::to_string(row) + " col " + std::to_string(j) + ": got " +
               std::to_string(have) + ", want " + std::to_string(y));
      }
    }
  }
  for (size_t r = 1; r < got.out.size(); ++r) {
    if (got.residual[r] != got.residual[0] || got.out[r] != got.out[0]) {
      report("rank " + std::to_string(r) + " holds other bits than rank 0");
    }
  }
  if (reported > 5) errors += std::to_string(reported - 5) + " more\n";
  return errors;
}

// Runs one call on fresh inputs and checks it; the call's residual goes in place.
void runAndVerify(Call* c, const Ranks& ranks, uint32_t seed, Results* results = nullptr) {
  fillHost(c, ranks.size(), seed);
  if (c->dInput.empty()) allocate(c, ranks);
  upload(*c, ranks);
  std::string message;
  ASSERT_EQ(tpcSuccess, issue(*c, ranks, &message)) << message;
  const Results got = download(*c, ranks);
  const std::string errors = verify(*c, got, referenceResidual(*c, c->residual));
  EXPECT_EQ("", errors) << c->shape.rows << " x " << c->shape.hidden << " " << ranks.size()
                        << " ranks";
  if (results != nullptr) *results = got;
}

tpcConfig_t configFor(tpcAlgorithm_t algorithm) {
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.algorithm = algorithm;
  return config;
}

bool ncclAvailable(const Ranks& ranks) {
  tpcPathInfo_t info;
  return tpcCommGetPathInfo(ranks.comms[0], &info) == tpcSuccess && info.ncclAvailable;
}

class FusedNormShapes : public ::testing::TestWithParam<std::tuple<tpcAlgorithm_t, tpcDataType_t>> {
};

// Every hidden size of the models engines serve, and odd ones, from one row to thousands.
TEST_P(FusedNormShapes, MatchReferenceOnTwoRanks) {
  SKIP_WITHOUT_GPU();
  const tpcAlgorithm_t algorithm = std::get<0>(GetParam());
  if (algorithm == tpcAlgoNccl && gpuCount() < 2) GTEST_SKIP() << "NCCL needs a GPU per rank";
  Ranks ranks(2, configFor(algorithm));
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  if (algorithm == tpcAlgoNccl && !ncclAvailable(ranks)) GTEST_SKIP() << "no NCCL here";
  const Shape shapes[] = {{1, 2048},   {1, 4096},    {1, 5120},    {1, 6144},  {1, 7168},
                          {1, 8192},   {1, 12288},   {1, 16384},   {3, 8},     {7, 1000},
                          {5, 2056},   {2, 1032},    {64, 8192},   {33, 5120}, {128, 8192},
                          {517, 7168}, {4096, 2048}, {1024, 16384}};
  uint32_t seed = 1;
  for (const Shape& shape : shapes) {
    Call c;
    c.type = std::get<1>(GetParam());
    c.outType = c.type;
    c.shape = shape;
    c.inPlaceOutput = seed % 2 == 0;  // in place, some row counts take other grids
    runAndVerify(&c, ranks, seed++);
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Algorithms, FusedNormShapes,
                         ::testing::Combine(::testing::Values(tpcAlgoAuto, tpcAlgoPushOneShot,
                                                              tpcAlgoPushTwoShot, tpcAlgoNccl),
                                            ::testing::Values(tpcBfloat16, tpcFloat16)),
                         [](const ::testing::TestParamInfo<FusedNormShapes::ParamType>& info) {
                           return algorithmTestName(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) == tpcBfloat16 ? "_bfloat16"
                                                                          : "_float16");
                         });

class FusedNormWorld : public ::testing::TestWithParam<int> {};

// Every world size, both kernels, FP8 outputs and out-of-place buffers.
TEST_P(FusedNormWorld, EveryKernelAndOutput) {
  SKIP_WITHOUT_GPU();
  const int n = GetParam();
  uint32_t seed = 100;
  for (tpcAlgorithm_t algorithm : {tpcAlgoPushOneShot, tpcAlgoPushTwoShot}) {
    Ranks ranks(n, configFor(algorithm));
    ASSERT_TRUE(ranks.ok()) << ranks.message;
    for (tpcDataType_t outType : {tpcBfloat16, tpcFloat8e4m3, tpcFloat8e5m2}) {
      for (const Shape& shape : {Shape{1, 8192}, Shape{6, 6144},
                                 Shape{static_cast<size_t>(n) + 1, 5120}, Shape{130, 2048}}) {
        Call c;
        c.outType = outType;
        c.shape = shape;
        c.scale = outType == tpcFloat8e4m3 ? 0.01f : 3.0f;  // e4m3 saturates some elements
        c.inPlaceResidual = shape.rows % 2 == 0;
        c.inPlaceOutput = outType == tpcBfloat16 && shape.rows == 1;
        runAndVerify(&c, ranks, seed++);
        if (HasFailure()) return;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, FusedNormWorld, ::testing::Range(2, 9),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "ranks";
                         });

// The fused one-shot kernel (a row over a cluster of blocks for few rows, a block a row for many)
// and two-shot kernel, and NCCL with the norm kernel, give the same bits (two ranks: every
// all-reduce rounds a + b once).
TEST(FusedNorm, EveryPathGivesTheSameBits) {
  SKIP_WITHOUT_GPU();
  const Shape shapes[] = {{37, 7168}, {3, 7168}, {1, 16384}};
  constexpr size_t kPerPath = 2 * 3;  // outputs x shapes
  std::vector<Results> results;
  for (tpcAlgorithm_t algorithm : {tpcAlgoPushOneShot, tpcAlgoPushTwoShot, tpcAlgoNccl}) {
    if (algorithm == tpcAlgoNccl && gpuCount() < 2) continue;  // NCCL needs a GPU per rank
    Ranks ranks(2, configFor(algorithm));
    ASSERT_TRUE(ranks.ok()) << ranks.message;
    if (algorithm == tpcAlgoNccl && !ncclAvailable(ranks)) continue;
    for (tpcDataType_t outType : {tpcBfloat16, tpcFloat8e4m3}) {
      for (const Shape& shape : shapes) {
        Call c;
        c.outType = outType;
        c.shape = shape;
        c.scale = 0.5f;
        results.emplace_back();
        runAndVerify(&c, ranks, 7 + outType + static_cast<uint32_t>(shape.rows), &results.back());
      }
    }
  }
  ASSERT_GE(results.size(), 2 * kPerPath);
  for (size_t k = kPerPath; k < results.size(); ++k) {
    EXPECT_TRUE(results[k].residual == results[k % kPerPath].residual) << "path " << k / kPerPath;
    EXPECT_TRUE(results[k].out == results[k % kPerPath].out) << "path " << k / kPerPath;
  }
}

// The smallest pushBytes leaves four ranks' push two-shot slots without room for a row of 8192
// (1024 vectors a slot) and both kernels' without room for one of 16384: a call the table gives
// two-shot takes one-shot a row a launch, or NCCL where there is one; a row that fits neither is
// refused with a sentence where no NCCL takes it.
TEST(FusedNorm, SmallPushBuffersTakeAnotherWay) {
  SKIP_WITHOUT_GPU();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.pushBytes = 64 << 10;
  Ranks ranks(4, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const bool nccl = ncclAvailable(ranks);
  tpcAlgorithm_t algo = tpcAlgoAuto;
  TPC_OK(tpcCommGetAddRmsNormAlgorithm(ranks.comms[0], 64, 8192, tpcBfloat16, &algo));
  EXPECT_EQ(nccl ? tpcAlgoNccl : tpcAlgoPushOneShot, algo);
  Call c;
  c.shape = {64, 8192};
  runAndVerify(&c, ranks, 80);

  // A row of 16384 fits neither kernel's slots: NCCL carries it, or else the call is refused,
  // and the question gets the call's answer.
  const tpcResult_t asked =
      tpcCommGetAddRmsNormAlgorithm(ranks.comms[0], 1, 16384, tpcBfloat16, &algo);
  EXPECT_EQ(nccl ? tpcSuccess : tpcInvalidUsage, asked) << tpcCommGetLastError(ranks.comms[0]);
  if (nccl) EXPECT_EQ(tpcAlgoNccl, algo);
  Call wide;
  wide.shape = {1, 16384};
  fillHost(&wide, 4, 81);
  allocate(&wide, ranks);
  upload(wide, ranks);
  std::string message;
  if (nccl) {
    ASSERT_EQ(tpcSuccess, issue(wide, ranks, &message)) << message;
    EXPECT_EQ("", verify(wide, download(wide, ranks), referenceResidual(wide, wide.residual)));
  } else {
    EXPECT_EQ(tpcInvalidUsage, issue(wide, ranks, &message));
    EXPECT_NE(std::string::npos, message.find("raise pushBytes")) << message;
  }
}

// FP8 calls that NCCL carries for ranks of one process sum into the staging buffer and normalise at
// the group's end: two in one group each keep their own sums there, and one that no longer fits
// beside them is refused with a sentence, not given another call's sums.
TEST(FusedNorm, Fp8CallsThroughNcclShareAGroup) {
  SKIP_WITHOUT_GPU();
  if (gpuCount() < 2) GTEST_SKIP() << "NCCL needs a GPU per rank";
  tpcConfig_t config = configFor(tpcAlgoNccl);
  config.stagingBytes = 64 << 10;
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  if (!ncclAvailable(ranks)) GTEST_SKIP() << "no NCCL here";
  Call calls[2];
  for (int k = 0; k < 2; ++k) {
    calls[k].outType = tpcFloat8e4m3;
    calls[k].shape = {4, 2048};  // 16 KB of sums each
    calls[k].scale = 0.25f;
    fillHost(&calls[k], 2, 60 + k);
    allocate(&calls[k], ranks);
    upload(calls[k], ranks);
  }
  ASSERT_EQ(tpcSuccess, tpcGroupStart());
  for (const Call& c : calls) {
    for (int r = 0; r < 2; ++r)
      EXPECT_EQ(tpcSuccess, callOn(c, ranks, r)) << tpcCommGetLastError(ranks.comms[r]);
  }
  ASSERT_EQ(tpcSuccess, tpcGroupEnd()) << tpcCommGetLastError(nullptr);
  for (const Call& c : calls) {
    EXPECT_EQ("", verify(c, download(c, ranks), referenceResidual(c, c.residual)));
  }

  // 16 + 16 KB taken, 32 KB left: 9 rows of 2048 (36 KB) do not fit, in this group only.
  Call large;
  large.outType = tpcFloat8e4m3;
  large.shape = {9, 2048};
  fillHost(&large, 2, 70);
  allocate(&large, ranks);
  upload(large, ranks);
  for (int k = 0; k < 2; ++k) upload(calls[k], ranks);
  ASSERT_EQ(tpcSuccess, tpcGroupStart());
  for (const Call& c : calls) {
    for (int r = 0; r < 2; ++r) EXPECT_EQ(tpcSuccess, callOn(c, ranks, r));
  }
  const tpcResult_t refused = callOn(large, ranks, 0);
  if (refused == tpcSuccess)
    EXPECT_EQ(tpcSuccess, callOn(large, ranks, 1));  // NCCL's group stays whole
  EXPECT_EQ(tpcInvalidUsage, refused);
  EXPECT_NE(std::string::npos,
            std::string(tpcCommGetLastError(ranks.comms[0])).find("earlier FP8 calls"))
      << tpcCommGetLastError(ranks.comms[0]);
  ASSERT_EQ(tpcSuccess, tpcGroupEnd()) << tpcCommGetLastError(nullptr);
  for (const Call& c : calls) {
    EXPECT_EQ("", verify(c, download(c, ranks), referenceResidual(c, c.residual)));
  }
  // Outside a group such a call is refused for the want of one, and holds no staging: after more
  // of them than the buffer has room for, the refusal still says why.
  for (int k = 0; k < 6; ++k) {
    EXPECT_EQ(tpcInvalidUsage, callOn(calls[0], ranks, 0));
    EXPECT_NE(std::string::npos,
              std::string(tpcCommGetLastError(ranks.comms[0])).find("tpcGroupStart"))
        << "call " << k << ": " << tpcCommGetLastError(ranks.comms[0]);
  }
  // A new group starts with the whole buffer.
  upload(large, ranks);
  std::string message;
  ASSERT_EQ(tpcSuccess, issue(large, ranks, &message)) << message;
  EXPECT_EQ("", verify(large, download(large, ranks), referenceResidual(large, large.residual)));
}

// Ranks on several GPUs called by one thread, each on its device's default stream, with the last
// rank's device current at the group's end: each norm that waited for NCCL's sums runs on its
// rank's device, after those sums (as a norm kernel on another device, it raced them or failed).
TEST(FusedNorm, NcclCallsOnEachDevicesDefaultStream) {
  SKIP_WITHOUT_GPU();
  if (gpuCount() < 2) GTEST_SKIP() << "NCCL needs a GPU per rank";
  Ranks ranks(2, configFor(tpcAlgoNccl));
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  if (!ncclAvailable(ranks)) GTEST_SKIP() << "no NCCL here";
  Call calls[2];
  calls[1].outType = tpcFloat8e4m3;
  calls[1].scale = 0.5f;
  for (int k = 0; k < 2; ++k) {
    calls[k].shape = {64, 5120};
    fillHost(&calls[k], 2, 90 + k);
    allocate(&calls[k], ranks);
    upload(calls[k], ranks);
  }
  ASSERT_EQ(tpcSuccess, tpcGroupStart());
  for (const Call& c : calls) {
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      EXPECT_EQ(tpcSuccess,
                tpcAllReduceAddRmsNorm(c.dInput[r].get(), c.dResidualIn[r].get(),
                                       residualOutOf(c, r), c.dWeight[r].get(), outOf(c, r),
                                       c.shape.rows, c.shape.hidden, c.eps, c.type, c.outType,
                                       c.dScale[r].get<float>(), ranks.comms[r], 0))
          << tpcCommGetLastError(ranks.comms[r]);
    }
  }
  ASSERT_EQ(tpcSuccess, tpcGroupEnd()) << tpcCommGetLastError(nullptr);
  EXPECT_EQ(ranks.devices[1], currentDevice());
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    CUDA_OK(cudaDeviceSynchronize());
  }
  for (const Call& c : calls) {
    EXPECT_EQ("", verify(c, download(c, ranks), referenceResidual(c, c.residual)));
  }
}

// NaN, infinities, sums that overflow, zero rows where eps alone keeps the norm finite (and eps = 0
// where it does not), and subnormals (with eps: float32 squares of bfloat16's smallest subnormals
// are 0, where float64's are not).
TEST(FusedNorm, SpecialValues) {
  SKIP_WITHOUT_GPU();
  for (tpcAlgorithm_t algorithm : {tpcAlgoPushOneShot, tpcAlgoPushTwoShot}) {
    Ranks ranks(2, configFor(algorithm));
    ASSERT_TRUE(ranks.ok()) << ranks.message;
    for (tpcDataType_t type : {tpcBfloat16, tpcFloat16}) {
      for (float eps : {1e-6f, 0.0f}) {
        Call c;
        c.type = c.outType = type;
        c.shape = {6, 2048};
        c.eps = eps;
        fillHost(&c, 2, 77);
        const size_t h = c.shape.hidden;
        const double huge = formatOf(type).maxFinite;
        const double tiny = type == tpcFloat16 ? std::ldexp(1.0, -24) : std::ldexp(1.0, -133);
        for (size_t j = 0; j < h; ++j) {
          for (int r = 0; r < 2; ++r) {
            encode(type, 0.0, &c.input[r][2 * j]);                                    // row 0: zero
            if (eps > 0) encode(type, tiny * (r + 1), &c.input[r][2 * (4 * h + j)]);  // row 4
          }
          encode(type, 0.0, &c.residual[2 * j]);
          if (eps > 0) encode(type, 0.0, &c.residual[2 * (4 * h + j)]);
          encode(type, huge, &c.input[0][2 * (3 * h + j)]);  // row 3: sums overflow
          encode(type, huge, &c.input[1][2 * (3 * h + j)]);
        }
        encode(type, std::numeric_limits<double>::quiet_NaN(), &c.input[1][2 * (1 * h + 5)]);
        encode(type, std::numeric_limits<double>::infinity(), &c.input[0][2 * (2 * h + 9)]);
        encode(type, -std::numeric_limits<double>::infinity(), &c.residual[2 * (5 * h + 1)]);
        allocate(&c, ranks);
        upload(c, ranks);
        std::string message;
        ASSERT_EQ(tpcSuccess, issue(c, ranks, &message)) << message;
        const Results got = download(c, ranks);
        EXPECT_EQ("", verify(c, got, referenceResidual(c, c.residual)))
            << "eps " << eps << ", " << (type == tpcBfloat16 ? "bfloat16" : "float16");
        // Spot checks that do not trust the reference: a zero row is 0 with eps and NaN without.
        const double zeroOut = decode(type, &got.out[0][2 * 3]);
        EXPECT_TRUE(eps > 0 ? zeroOut == 0.0 : std::isnan(zeroOut)) << zeroOut;
        EXPECT_TRUE(std::isnan(decode(type, &got.out[0][2 * (1 * h + 100)])));
        EXPECT_TRUE(std::isinf(decode(type, &got.residual[0][2 * (3 * h + 7)])));
      }
    }
  }
}

// Holds the multiprocessor it runs on (all the shared memory a block may have) until *release is
// set, or for two seconds at most; says it runs in running[blockIdx.x].
__global__ void holdMultiprocessor(const volatile int* release, volatile int* running) {
  extern __shared__ int held[];
  if (threadIdx.x != 0) return;
  held[0] = 0;
  running[blockIdx.x] = 1;
  __threadfence_system();
  uint64_t start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (*release == 0 && now - start < 2000000000ull);
}

// In place (the output over the input), a row's output must not reach the peers in its stead,
// however late the block that sends part of it starts. 30 rows of 8192 in at most 48 blocks take
// no clusters, and a block of 512 threads holds a row: one-shot's grid, which sends by its stride,
// would send the vectors of rows 15-23 from blocks 30-47, so such calls have each block send the
// rows it normalises (fusedOneShotShape). Rank 1's device is held but for 20 free multiprocessors
// (and those rank 0's rows hold, where the ranks share a GPU) when rank 1 calls: its blocks beyond
// the 20th start only once one of the first 20 has ended.
TEST(FusedNorm, InPlaceWhileBlocksStartLate) {
  SKIP_WITHOUT_GPU();
  constexpr int kRows = 30;
  constexpr int kFree = 20;
  tpcConfig_t config = configFor(tpcAlgoPushOneShot);
  config.maxBlocks = 48;
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const bool shared = ranks.devices[0] == ranks.devices[1];
  int sms = 0, sharedMemory = 0;
  ranks.use(1);
  CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ranks.devices[1]));
  CUDA_OK(cudaDeviceGetAttribute(&sharedMemory, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                 ranks.devices[1]));
  const int held = sms - kFree - (shared ? kRows : 0);
  if (held < 1) GTEST_SKIP() << sms << " multiprocessors: too few to hold some";
  CUDA_OK(cudaFuncSetAttribute(holdMultiprocessor, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               sharedMemory));
  int* flags = nullptr;  // release, then one per holding block
  CUDA_OK(cudaHostAlloc(&flags, (1 + held) * sizeof(int), cudaHostAllocMapped));
  std::fill(flags, flags + 1 + held, 0);
  volatile int* release = flags;
  volatile int* running = flags + 1;

  Call c;
  c.shape = {kRows, 8192};
  c.inPlaceOutput = true;
  fillHost(&c, 2, 41);
  allocate(&c, ranks);
  upload(c, ranks);
  ASSERT_EQ(tpcSuccess, callOn(c, ranks, 0)) << tpcCommGetLastError(ranks.comms[0]);
  // Rank 0's blocks that hold no row end once they have sent; those that do wait for rank 1.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ranks.use(1);
  cudaStream_t holder;
  CUDA_OK(cudaStreamCreateWithFlags(&holder, cudaStreamNonBlocking));
  holdMultiprocessor<<<held, 32, sharedMemory, holder>>>(release, running);
  CUDA_OK(cudaGetLastError());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::count(running, running + held, 1) < held &&
         std::chrono::steady_clock::now() < deadline) {
  }
  const bool holding = std::count(running, running + held, 1) == held;
  const tpcResult_t second = callOn(c, ranks, 1);
  const std::string message = tpcCommGetLastError(ranks.comms[1]);
  const Results got = download(c, ranks);
  *release = 1;
  CUDA_OK(cudaStreamSynchronize(holder));
  CUDA_OK(cudaStreamDestroy(holder));
  CUDA_OK(cudaFreeHost(flags));
  ASSERT_TRUE(holding) << held << " blocks never all ran at once";
  ASSERT_EQ(tpcSuccess, second) << message;
  EXPECT_EQ("", verify(c, got, referenceResidual(c, c.residual)));
}

// Ranks whose calls differ only in being in place meet in the same kernel and agree bit for bit:
// rank 0 writes its output over its input, rank 1 elsewhere. Row counts whose one-shot grids in
// place differ from those out of place (smaller clusters; blocks that send the rows they
// normalise, where no grid gives a thread exactly one vector of a row), and two-shot.
TEST(FusedNorm, OnlySomeRanksInPlace) {
  SKIP_WITHOUT_GPU();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = 5000;
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const Shape shapes[] = {{17, 8192},  {34, 8192}, {67, 8192}, {80, 5120},
                          {128, 5120}, {1, 1000},  {256, 8192}};
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(std::to_string(shape.rows) + " rows of " + std::to_string(shape.hidden));
    Call c;
    c.shape = shape;
    fillHost(&c, 2, 43);
    allocate(&c, ranks);
    upload(c, ranks);
    auto outOn = [&](int r) { return r == 0 ? c.dInput[0].get() : c.dOut[1].get(); };
    std::string message;
    tpcResult_t res = tpcGroupStart();
    for (int r = 0; r < 2 && res == tpcSuccess; ++r) {
      ranks.use(r);
      res = tpcAllReduceAddRmsNorm(c.dInput[r].get(), c.dResidualIn[r].get(), residualOutOf(c, r),
                                   c.dWeight[r].get(), outOn(r), c.shape.rows, c.shape.hidden,
                                   c.eps, c.type, c.outType, c.dScale[r].get<float>(),
                                   ranks.comms[r], ranks.streams[r]);
      if (res != tpcSuccess) message = tpcCommGetLastError(ranks.comms[r]);
    }
    const tpcResult_t ended = tpcGroupEnd();
    ASSERT_EQ(tpcSuccess, res) << message;
    ASSERT_EQ(tpcSuccess, ended) << tpcCommGetLastError(nullptr);
    Results got;
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      CUDA_OK(cudaStreamSynchronize(ranks.streams[r]));
      tpcResult_t async = tpcInternalError;
      TPC_OK(tpcCommGetAsyncError(ranks.comms[r], &async));
      ASSERT_EQ(tpcSuccess, async) << tpcCommGetLastError(ranks.comms[r]);
      got.residual.emplace_back(c.bytes());
      got.out.emplace_back(c.outBytes());
      CUDA_OK(cudaMemcpy(got.residual.back().data(), residualOutOf(c, r), c.bytes(),
                         cudaMemcpyDeviceToHost));
      CUDA_OK(cudaMemcpy(got.out.back().data(), outOn(r), c.outBytes(), cudaMemcpyDeviceToHost));
    }
    EXPECT_EQ("", verify(c, got, referenceResidual(c, c.residual)));
  }
}

// A model's layers in a graph: the residual flows from call to call in place; the graph is
// replayed with fresh inputs, and the rotation of the receive buffers continues into eager calls.
TEST(FusedNorm, GraphReplaysWithFreshInputs) {
  SKIP_WITHOUT_GPU();
  constexpr int kCalls = 8;
  constexpr int kReplays = 3;
  for (const Shape& shape : {Shape{4, 8192}, Shape{1024, 4096}}) {
    Ranks ranks(2);
    ASSERT_TRUE(ranks.ok()) << ranks.message;
    Call c;
    c.shape = shape;
    fillHost(&c, 2, 1);
    allocate(&c, ranks);
    std::vector<cudaGraphExec_t> exec(2, nullptr);
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      cudaGraph_t graph;
      CUDA_OK(cudaStreamBeginCapture(ranks.streams[r], cudaStreamCaptureModeThreadLocal));
      for (int k = 0; k < kCalls; ++k) {
        ASSERT_EQ(tpcSuccess,
                  tpcAllReduceAddRmsNorm(c.dInput[r].get(), c.dResidualIn[r].get(),
                                         c.dResidualIn[r].get(), c.dWeight[r].get(),
                                         c.dOut[r].get(), shape.rows, shape.hidden, c.eps, c.type,
                                         c.outType, nullptr, ranks.comms[r], ranks.streams[r]))
            << tpcCommGetLastError(ranks.comms[r]);
      }
      CUDA_OK(cudaStreamEndCapture(ranks.streams[r], &graph));
      CUDA_OK(cudaGraphInstantiate(&exec[r], graph, 0));
      CUDA_OK(cudaGraphDestroy(graph));
    }
    for (int replay = 0; replay < kReplays; ++replay) {
      fillHost(&c, 2, 10 + replay);
      upload(c, ranks);
      for (int r = 0; r < 2; ++r) {
        ranks.use(r);
        CUDA_OK(cudaGraphLaunch(exec[r], ranks.streams[r]));
      }
      std::vector<uint8_t> residual = c.residual;
      for (int k = 0; k < kCalls; ++k) residual = referenceResidual(c, residual);
      EXPECT_EQ("", verify(c, download(c, ranks), residual)) << "replay " << replay;
    }
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      cudaGraphExecDestroy(exec[r]);
    }
    runAndVerify(&c, ranks, 99);
  }
}

// Fused calls share the push kernels' receive buffers: plain all-reduces of every push algorithm
// and size in between must neither disturb them nor be disturbed.
TEST(FusedNorm, InterleavesWithAllReduces) {
  SKIP_WITHOUT_GPU();
  using T = __nv_bfloat16;
  Ranks ranks(2);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const size_t count = 3 << 20;
  std::vector<DeviceBuffer> in, out;
  std::vector<Counter> wrong;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    in.emplace_back(count * sizeof(T));
    out.emplace_back(count * sizeof(T));
    wrong.emplace_back();
  }
  Call small, large;
  small.shape = {2, 5120};
  large.shape = {700, 8192};
  for (int step = 0; step < 12; ++step) {
    const size_t n = step % 3 == 0 ? count : 1000 + 4099 * step;
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      fillExact<<<checkGrid(n), 256, 0, ranks.streams[r]>>>(in[r].get<T>(), n, r, step);
    }
    std::string message;
    ASSERT_EQ(tpcSuccess, allReduceAll(ranks, {in[0].get(), in[1].get()},
                                       {out[0].get(), out[1].get()}, n, tpcBfloat16, &message))
        << message;
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      checkExact<<<checkGrid(n), 256, 0, ranks.streams[r]>>>(out[r].get<T>(), n, 2, step,
                                                             wrong[r].get());
    }
    runAndVerify(step % 2 ? &large : &small, ranks, 500 + step);
    if (HasFailure()) return;
  }
  CUDA_OK(ranks.syncAll());
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
  }
}

// Failure in each fused kernel, with its rows over clusters of blocks (1 and 4 rows of 4096, whose
// two-rank one-shot kernels differ in how a row's warp sums are added; at 16 rows one-shot every
// cluster holds a row, the one whose thread checks the peers' tags too) and with a
// block or a group of blocks a row (128 rows one-shot, 1024 two-shot; two-shot spreads a slice's
// rows over clusters only while the grid holds a cluster for each).
class FusedNormFailure : public ::testing::TestWithParam<std::tuple<tpcAlgorithm_t, size_t>> {
 protected:
  void SetUp() override {
    if (gpuCount() == 0) GTEST_SKIP() << "no CUDA device";
    algorithm_ = std::get<0>(GetParam());
    rows_ = std::get<1>(GetParam());
  }

  // A call of this test's shape whose outputs, residual included, upload() poisons.
  Call call(const Ranks& ranks, uint32_t seed) const {
    Call c;
    c.shape = {rows_, 4096};
    c.inPlaceResidual = false;
    fillHost(&c, ranks.size(), seed);
    allocate(&c, ranks);
    upload(c, ranks);
    return c;
  }

  static tpcResult_t callOn(const Call& c, const Ranks& ranks, int r) {
    ranks.use(r);
    return tpcAllReduceAddRmsNorm(c.dInput[r].get(), c.dResidualIn[r].get(), residualOutOf(c, r),
                                  c.dWeight[r].get(), outOf(c, r), c.shape.rows, c.shape.hidden,
                                  c.eps, c.type, c.outType, c.dScale[r].get<float>(),
                                  ranks.comms[r], ranks.streams[r]);
  }

  static tpcResult_t asyncError(const Ranks& ranks, int r, std::string* message) {
    tpcResult_t async = tpcInternalError;
    EXPECT_EQ(tpcSuccess, tpcCommGetAsyncError(ranks.comms[r], &async));
    *message = tpcCommGetLastError(ranks.comms[r]);
    return async;
  }

  // Rank r's results alone, as verify() reads them.
  static Results resultsOf(const Call& c, const Ranks& ranks, int r) {
    const Results all = download(c, ranks);
    return Results{{all.residual[r]}, {all.out[r]}};
  }

  std::string kernelName() const {
    return algorithm_ == tpcAlgoPushOneShot ? "push one-shot (fused with RMSNorm)"
                                            : "push two-shot (fused with RMSNorm)";
  }

  static constexpr int kTimeoutMs = 300;
  // The kernel notices the timeout within a poll check; the rest is launch and sync latency.
  static constexpr std::chrono::seconds kSlack{3};

  tpcAlgorithm_t algorithm_ = tpcAlgoAuto;
  size_t rows_ = 0;
};

// Rank 0 calls alone and fails in its timeout, naming rank 1 and the kernel; it refuses further
// calls, and a graph it captured before the failure runs without waiting for anyone and writes
// nothing. Rank 1 arrives late for the same call and the same graph: it either finishes rows right
// (rank 0's data had arrived) or leaves them unwritten, and fails naming rank 0 without waiting
// out its own timeout.
TEST_P(FusedNormFailure, ARankThatNeverCallsIsNamedAndItsGraphsDoNothing) {
  tpcConfig_t config = configFor(algorithm_);
  config.timeoutMs = kTimeoutMs;
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const Call eager = call(ranks, 3);
  const Call replayed = call(ranks, 4);
  std::vector<cudaGraphExec_t> exec(2, nullptr);
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    cudaGraph_t graph;
    CUDA_OK(cudaStreamBeginCapture(ranks.streams[r], cudaStreamCaptureModeThreadLocal));
    const tpcResult_t captured = callOn(replayed, ranks, r);
    CUDA_OK(cudaStreamEndCapture(ranks.streams[r], &graph));
    ASSERT_EQ(tpcSuccess, captured) << tpcCommGetLastError(ranks.comms[r]);
    CUDA_OK(cudaGraphInstantiate(&exec[r], graph, 0));
    CUDA_OK(cudaGraphDestroy(graph));
  }

  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(tpcSuccess, callOn(eager, ranks, 0));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[0]));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(elapsed, std::chrono::milliseconds(kTimeoutMs * 9 / 10)) << "ended before its timeout";
  EXPECT_LT(elapsed, std::chrono::milliseconds(kTimeoutMs) + kSlack);
  std::string message;
  EXPECT_EQ(tpcTimeout, asyncError(ranks, 0, &message));
  for (const std::string& part : {std::string("rank 0"), std::string("waiting for rank 1"),
                                  kernelName(), std::string("timed out")}) {
    EXPECT_NE(std::string::npos, message.find(part)) << message;
  }
  const std::vector<uint8_t> eagerResidual = referenceResidual(eager, eager.residual);
  size_t untouched = 0;
  EXPECT_EQ("", verify(eager, resultsOf(eager, ranks, 0), eagerResidual, &untouched))
      << "the call that timed out";
  EXPECT_EQ(tpcTimeout, callOn(eager, ranks, 0)) << "a failed rank refuses further calls";

  const auto replayStart = std::chrono::steady_clock::now();
  CUDA_OK(cudaGraphLaunch(exec[0], ranks.streams[0]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[0]));
  EXPECT_LT(std::chrono::steady_clock::now() - replayStart, kSlack) << "the replay waited";
  const std::vector<uint8_t> replayedResidual = referenceResidual(replayed, replayed.residual);
  EXPECT_EQ("", verify(replayed, resultsOf(replayed, ranks, 0), replayedResidual, &untouched));
  EXPECT_EQ(rows_, untouched) << "the failed rank's replay wrote rows";

  const auto lateStart = std::chrono::steady_clock::now();
  ASSERT_EQ(tpcSuccess, callOn(eager, ranks, 1));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[1]));
  EXPECT_EQ("", verify(eager, resultsOf(eager, ranks, 1), eagerResidual, &untouched))
      << "rank 1's late call";
  ranks.use(1);
  CUDA_OK(cudaGraphLaunch(exec[1], ranks.streams[1]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[1]));
  EXPECT_LT(std::chrono::steady_clock::now() - lateStart,
            std::chrono::milliseconds(kTimeoutMs) + kSlack);
  EXPECT_EQ(tpcRemoteError, asyncError(ranks, 1, &message));
  EXPECT_NE(std::string::npos, message.find("rank 0 failed")) << message;
  EXPECT_EQ("", verify(replayed, resultsOf(replayed, ranks, 1), replayedResidual, &untouched));
  EXPECT_EQ(rows_, untouched) << "rank 1's replay found no data from rank 0 and wrote no row";
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    CUDA_OK(cudaGraphExecDestroy(exec[r]));
  }
}

// Rank 1 makes a plain all-reduce of the same bytes where rank 0 makes the fused call: both fail
// at once instead of mixing them, and at least one names the different call (the other may see it
// fail first and name that instead).
TEST_P(FusedNormFailure, AnotherCallOfTheSameBytesFailsBothRanks) {
  Ranks ranks(2, configFor(algorithm_));
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const Call c = call(ranks, 5);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(tpcSuccess, callOn(c, ranks, 0));
  ranks.use(1);
  ASSERT_EQ(tpcSuccess, tpcAllReduce(c.dInput[1].get(), c.dOut[1].get(), c.elems(), tpcBfloat16,
                                     tpcSum, ranks.comms[1], ranks.streams[1]));
  CUDA_OK(ranks.syncAll());
  EXPECT_LT(std::chrono::steady_clock::now() - start, kSlack) << "not the timeout";
  bool named = false;
  for (int r = 0; r < 2; ++r) {
    std::string message;
    const tpcResult_t result = asyncError(ranks, r, &message);
    EXPECT_TRUE(result == tpcInvalidUsage || result == tpcRemoteError) << message;
    named = named || (result == tpcInvalidUsage && message.find("different call") != message.npos);
  }
  EXPECT_TRUE(named) << "no rank reported the different calls";
}

INSTANTIATE_TEST_SUITE_P(Kernels, FusedNormFailure,
                         ::testing::Values(std::tuple{tpcAlgoPushOneShot, size_t{1}},
                                           std::tuple{tpcAlgoPushOneShot, size_t{4}},
                                           std::tuple{tpcAlgoPushOneShot, size_t{16}},
                                           std::tuple{tpcAlgoPushOneShot, size_t{128}},
                                           std::tuple{tpcAlgoPushTwoShot, size_t{4}},
                                           std::tuple{tpcAlgoPushTwoShot, size_t{1024}}),
                         [](const ::testing::TestParamInfo<FusedNormFailure::ParamType>& info) {
                           return algorithmTestName(std::get<0>(info.param)) + "_" +
                                  std::to_string(std::get<1>(info.param)) + "rows";
                         });

// One rank alone: the norm kernel over its own input.
TEST(FusedNorm, OneRank) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(1);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  for (tpcDataType_t outType : {tpcBfloat16, tpcFloat8e4m3}) {
    Call c;
    c.outType = outType;
    c.shape = {19, 6144};
    runAndVerify(&c, ranks, 40 + outType);
  }
}

// The route the call reports is the fused table's (one-shot to 1.25 MB on two ranks, two-shot
// above at every size, NCCL or not); rows the call refuses get the call's errors.
TEST(FusedNorm, ReportsItsAlgorithm) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(2);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  tpcComm_t comm = ranks.comms[0];
  auto fused = [&](size_t rows, size_t hidden) {
    tpcAlgorithm_t algo = tpcAlgoAuto;
    EXPECT_EQ(tpcSuccess, tpcCommGetAddRmsNormAlgorithm(comm, rows, hidden, tpcBfloat16, &algo))
        << tpcCommGetLastError(comm);
    return algo;
  };
  EXPECT_EQ(tpcAlgoPushOneShot, fused(1, 8192));
  EXPECT_EQ(tpcAlgoPushOneShot, fused(128, 5120));
  EXPECT_EQ(tpcAlgoPushTwoShot, fused(129, 5120));
  EXPECT_EQ(tpcAlgoPushTwoShot, fused(128, 8192));
  EXPECT_EQ(tpcAlgoPushTwoShot, fused(size_t{1} << 20, 8192));

  tpcAlgorithm_t algo = tpcAlgoAuto;
  EXPECT_EQ(tpcNotSupported, tpcCommGetAddRmsNormAlgorithm(comm, 1, 8192, tpcFloat32, &algo));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comm)).find("float32"));
  EXPECT_EQ(tpcNotSupported, tpcCommGetAddRmsNormAlgorithm(comm, 1, 100, tpcBfloat16, &algo));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comm)).find("hidden size"));
  EXPECT_EQ(tpcInvalidArgument,
            tpcCommGetAddRmsNormAlgorithm(comm, SIZE_MAX / 2, 8192, tpcBfloat16, &algo));
  EXPECT_EQ(tpcInvalidArgument, tpcCommGetAddRmsNormAlgorithm(comm, 1, 8192, tpcBfloat16, nullptr));
  EXPECT_EQ(tpcAlgoAuto, algo) << "a refused question leaves the answer alone";

  // A forced algorithm takes the fused kernel of its shape; the pull kernels have none.
  const std::pair<tpcAlgorithm_t, tpcAlgorithm_t> forcings[] = {
      {tpcAlgoPushTwoShot, tpcAlgoPushTwoShot},
      {tpcAlgoTwoShot, tpcAlgoPushTwoShot},
      {tpcAlgoOneShot, tpcAlgoPushOneShot},
  };
  for (const auto& [forcedAlgorithm, kernel] : forcings) {
    Ranks forced(2, configFor(forcedAlgorithm));
    ASSERT_TRUE(forced.ok()) << forced.message;
    TPC_OK(tpcCommGetAddRmsNormAlgorithm(forced.comms[0], 1, 8192, tpcBfloat16, &algo));
    EXPECT_EQ(kernel, algo) << algorithmTestName(forcedAlgorithm);
  }
}

// Arguments the call refuses on a live communicator, each with its own code and a sentence.
TEST(FusedNorm, RejectsWhatItCannotDo) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(1);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  DeviceBuffer a(1 << 20), b(1 << 20), w(1 << 16), o(1 << 20);
  tpcComm_t comm = ranks.comms[0];
  cudaStream_t s = ranks.streams[0];
  auto call = [&](size_t hidden, tpcDataType_t type, tpcDataType_t outType, const void* out,
                  const float* scale) {
    return tpcAllReduceAddRmsNorm(a.get(), b.get(), b.get(), w.get(), const_cast<void*>(out), 4,
                                  hidden, 1e-5f, type, outType, scale, comm, s);
  };
  EXPECT_EQ(tpcNotSupported, call(20000, tpcBfloat16, tpcBfloat16, o.get(), nullptr));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comm)).find("hidden size"));
  EXPECT_EQ(tpcNotSupported, call(4100, tpcBfloat16, tpcBfloat16, o.get(), nullptr));
  EXPECT_EQ(tpcNotSupported, call(4096, tpcFloat32, tpcFloat32, o.get(), nullptr));
  EXPECT_EQ(tpcInvalidArgument, call(4096, tpcBfloat16, tpcFloat8e4m3, o.get(), nullptr));
  EXPECT_EQ(tpcInvalidArgument, call(4096, tpcBfloat16, tpcFloat16, o.get(), nullptr));
  EXPECT_EQ(tpcInvalidArgument,
            call(4096, tpcBfloat16, tpcBfloat16, o.get<char>() + 8, nullptr));  // unaligned
  EXPECT_EQ(tpcInvalidArgument,
            call(4096, tpcBfloat16, tpcBfloat16, b.get<char>() + 4096, nullptr));  // overlap
  EXPECT_EQ(tpcSuccess, call(4096, tpcBfloat16, tpcBfloat16, a.get(), nullptr)) << "in place";
  CUDA_OK(cudaStreamSynchronize(s));
}

}  // namespace
}  // namespace testing
}  // namespace tpcomm
