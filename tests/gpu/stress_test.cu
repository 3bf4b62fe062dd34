// Many calls in a row that switch size, type and algorithm in random order, all verified on the
// device: the barrier counters and receive-buffer rotations of every protocol must stay in step
// whatever the sequence.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "core/handle.h"
#include "gpu_test_util.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace testing {
namespace {

constexpr int kCalls = 10000;
// With 64 KB staging and receive buffers the largest size runs in several chunks.
constexpr size_t kSizes[] = {1, 7, 4096, 65536 + 5, 300000};

template <typename T>
void launchCall(const Ranks& ranks, std::vector<DeviceBuffer>& in, std::vector<DeviceBuffer>& out,
                std::vector<Counter>& wrong, size_t count, uint32_t seed) {
  const int n = ranks.size();
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(in[r].get<T>(), count, r, seed);
  }
  std::vector<const void*> inputs;
  std::vector<void*> outputs;
  for (int r = 0; r < n; ++r) {
    inputs.push_back(in[r].get());
    outputs.push_back(out[r].get());
  }
  std::string message;
  ASSERT_EQ(tpcSuccess, allReduceAll(ranks, inputs, outputs, count, TypeInfo<T>::kType, &message))
      << message;
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    checkExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(out[r].get<T>(), count, n, seed,
                                                               wrong[r].get());
  }
}

class Stress : public ::testing::TestWithParam<int> {};

TEST_P(Stress, TenThousandCallsAlternatingSizesTypesAndAlgorithms) {
  SKIP_WITHOUT_GPU();
  const int n = GetParam();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = 20000;
  config.stagingBytes = 64 << 10;
  config.pushBytes = 64 << 10;
  Ranks ranks(n, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  std::vector<DeviceBuffer> in, out;
  std::vector<Counter> wrong;
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    in.emplace_back(300000 * sizeof(float));
    out.emplace_back(300000 * sizeof(float));
    wrong.emplace_back();
  }
  const tpcAlgorithm_t algorithms[] = {tpcAlgoOneShot, tpcAlgoTwoShot, tpcAlgoPushOneShot,
                                       tpcAlgoPushTwoShot, tpcAlgoAuto};
  // The same sequence on every run, different on every call: every pair of algorithms, sizes
  // (hence grid sizes and chunk counts) and types follows every other many times.
  std::mt19937 random(20261125u + n);
  for (int call = 0; call < kCalls; ++call) {
    const tpcAlgorithm_t algorithm = algorithms[random() % 5];
    for (int r = 0; r < n; ++r) ranks.comms[r]->impl->forceAlgorithm(algorithm);
    const size_t count = kSizes[random() % 5];
    const uint32_t seed = static_cast<uint32_t>(call);
    switch (random() % 3) {
      case 0:
        launchCall<__nv_bfloat16>(ranks, in, out, wrong, count, seed);
        break;
      case 1:
        launchCall<float>(ranks, in, out, wrong, count, seed);
        break;
      default:
        launchCall<__half>(ranks, in, out, wrong, count, seed);
    }
    if (HasFatalFailure()) return;
    if (call % 1000 == 999) CUDA_OK(ranks.syncAll());
  }
  CUDA_OK(ranks.syncAll());
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, Stress, ::testing::Values(2, 3, 4));

}  // namespace
}  // namespace testing
}  // namespace tpcomm
