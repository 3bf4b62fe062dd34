// Inputs that are special to the kernels: -0.0 (the push kernels' "not arrived" mark), words whose
// bits equal that mark, subnormals, NaN, infinities and sums that overflow. Every kernel must give
// exactly what float32 accumulation in rank order gives, on every rank alike; the push kernels
// differ from the pull kernels only in the sign of zeros (they send -0.0 as +0.0).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace testing {
namespace {

template <typename T>
uint32_t bitsOf(T x) {
  uint32_t bits = 0;
  std::memcpy(&bits, &x, sizeof(T));
  return bits;
}

template <typename T>
T fromBits(uint32_t bits) {
  T x;
  std::memcpy(&x, &bits, sizeof(T));
  return x;
}

template <typename T>
bool isNegativeZero(T x) {
  return bitsOf(x) == (sizeof(T) == 4 ? 0x80000000u : 0x8000u);
}

template <typename T>
T scrubbed(T x) {
  return isNegativeZero(x) ? fromBits<T>(0) : x;
}

// Rank r's input element i: a cycle of special cases, then ordinary values.
template <typename T>
T inputOf(int rank, int nranks, size_t i) {
  const uint32_t negativeZero = sizeof(T) == 4 ? 0x80000000u : 0x8000u;
  const uint32_t smallestSubnormal = 1;
  const uint32_t largestFinite = sizeof(T) == 4                   ? 0x7f7fffffu
                                 : std::is_same<T, __half>::value ? 0x7bffu
                                                                  : 0x7f7fu;
  const uint32_t infinity = sizeof(T) == 4                   ? 0x7f800000u
                            : std::is_same<T, __half>::value ? 0x7c00u
                                                             : 0x7f80u;
  const uint32_t sign = sizeof(T) == 4 ? 0x80000000u : 0x8000u;
  switch (i % 12) {
    case 0:  // -0.0 on every rank
      return fromBits<T>(negativeZero);
    case 1:  // -0.0 on some ranks
      return fromBits<T>(rank % 2 ? negativeZero : 0);
    case 2:  // +0.0, then -0.0: for 16-bit types, exactly the bits of an empty 32-bit word
    case 3:
      return fromBits<T>(i % 2 ? negativeZero : 0);
    case 4:  // subnormals of both signs
      return fromBits<T>(smallestSubnormal | (rank % 2 ? sign : 0));
    case 5:  // NaN on one rank
      return rank == nranks - 1 ? fromBits<T>(infinity | 1) : fromFloat<T>(1.0f);
    case 6:  // +Inf on one rank, -Inf on another
      return rank == 0   ? fromBits<T>(infinity)
             : rank == 1 ? fromBits<T>(infinity | sign)
                         : fromBits<T>(0);
    case 7:  // every rank at the largest finite value: the sum overflows
      return fromBits<T>(largestFinite);
    case 8:  // a sum that cancels to zero, or to a tiny negative value that rounds to -0
      return fromFloat<T>(rank == 0 ? -1e-30f : (rank == 1 ? 1e-30f : 0.0f));
    default:
      return fromFloat<T>(randomValue(rank, i, 7));
  }
}

// What float32 accumulation in rank order gives. The push kernels scrub their inputs, and push
// two-shot also the sums it sends.
template <typename T>
T reference(int nranks, size_t i, tpcAlgorithm_t algorithm) {
  const bool push = algorithm == tpcAlgoPushOneShot || algorithm == tpcAlgoPushTwoShot;
  float acc = 0;
  for (int r = 0; r < nranks; ++r) {
    T x = inputOf<T>(r, nranks, i);
    if (push) x = scrubbed(x);
    acc = r == 0 ? toFloat(x) : acc + toFloat(x);
  }
  const T sum = fromFloat<T>(acc);
  return algorithm == tpcAlgoPushTwoShot ? scrubbed(sum) : sum;
}

class SpecialValues : public ::testing::TestWithParam<std::tuple<int, tpcAlgorithm_t>> {};

// `count` odd by default: a partial last vector.
template <typename T>
void checkSpecialValues(int nranks, tpcAlgorithm_t algorithm, bool inPlace, size_t count = 100003) {
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.algorithm = algorithm;
  config.timeoutMs = 20000;
  Ranks ranks(nranks, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  std::vector<DeviceBuffer> in, out;
  std::vector<T> host(count);
  for (int r = 0; r < nranks; ++r) {
    ranks.use(r);
    in.emplace_back(count * sizeof(T));
    out.emplace_back(count * sizeof(T));
    for (size_t i = 0; i < count; ++i) host[i] = inputOf<T>(r, nranks, i);
    CUDA_OK(cudaMemcpy(in[r].get(), host.data(), count * sizeof(T), cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(out[r].get(), 0xff, count * sizeof(T)));
  }
  std::vector<const void*> inputs;
  std::vector<void*> outputs;
  for (int r = 0; r < nranks; ++r) {
    inputs.push_back(in[r].get());
    outputs.push_back(inPlace ? in[r].get() : out[r].get());
  }
  std::string message;
  ASSERT_EQ(tpcSuccess, allReduceAll(ranks, inputs, outputs, count, TypeInfo<T>::kType, &message))
      << message;
  CUDA_OK(ranks.syncAll());
  std::vector<T> first(count);
  for (int r = 0; r < nranks; ++r) {
    ranks.use(r);
    CUDA_OK(cudaMemcpy(host.data(), outputs[r], count * sizeof(T), cudaMemcpyDeviceToHost));
    size_t wrong = 0, differ = 0;
    std::string example;
    for (size_t i = 0; i < count; ++i) {
      const T want = reference<T>(nranks, i, algorithm);
      const bool ok = std::isnan(toFloat(want)) ? std::isnan(toFloat(host[i]))
                                                : bitsOf(want) == bitsOf(host[i]);
      if (!ok && wrong++ == 0) {
        char text[128];
        std::snprintf(text, sizeof(text), "element %zu (case %zu): got 0x%x, want 0x%x", i, i % 12,
                      bitsOf(host[i]), bitsOf(want));
        example = text;
      }
      if (r > 0) differ += bitsOf(host[i]) != bitsOf(first[i]);
    }
    if (r == 0) first = host;
    EXPECT_EQ(0u, wrong) << TypeInfo<T>::kName << " rank " << r << ": " << example;
    EXPECT_EQ(0u, differ) << TypeInfo<T>::kName << ": rank " << r << " differs from rank 0";
  }
}

TEST_P(SpecialValues, SumLikeFloat32InRankOrder) {
  SKIP_WITHOUT_GPU();
  const auto [nranks, algorithm] = GetParam();
  for (bool inPlace : {false, true}) {
    checkSpecialValues<float>(nranks, algorithm, inPlace);
    checkSpecialValues<__half>(nranks, algorithm, inPlace);
    checkSpecialValues<__nv_bfloat16>(nranks, algorithm, inPlace);
    if (HasFailure()) return;
  }
}

// Push two-shot's launches of more than 32 MiB at two ranks run a kernel of their own
// (device::kByRoleBytes).
TEST(SpecialValuesByRole, PushTwoShotLaunchesOfMoreThan32MiB) {
  SKIP_WITHOUT_GPU();
  checkSpecialValues<float>(2, tpcAlgoPushTwoShot, false, (size_t{8} << 20) + 3);
  checkSpecialValues<__nv_bfloat16>(2, tpcAlgoPushTwoShot, true, (size_t{16} << 20) + 3);
}

INSTANTIATE_TEST_SUITE_P(WorldSizesAndKernels, SpecialValues,
                         ::testing::Combine(::testing::Values(2, 3, 8),
                                            ::testing::ValuesIn(kKernelAlgorithms)),
                         [](const ::testing::TestParamInfo<SpecialValues::ParamType>& info) {
                           return std::to_string(std::get<0>(info.param)) + "ranks_" +
                                  algorithmTestName(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace testing
}  // namespace tpcomm
