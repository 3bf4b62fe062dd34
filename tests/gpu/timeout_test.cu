// Bounded waits: a rank that never calls makes its peers fail with tpcTimeout in the configured
// time, with the rank, peer and block named, and a failed communicator refuses further work.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "gpu_test_util.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace testing {
namespace {

constexpr int kTimeoutMs = 300;
// The kernel notices the timeout within a poll check; the rest is launch and sync latency.
constexpr auto kSlack = std::chrono::seconds(3);

double seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

class Timeout : public ::testing::TestWithParam<tpcAlgorithm_t> {};

TEST_P(Timeout, RankThatNeverCallsMakesOthersFailInTime) {
  SKIP_WITHOUT_GPU();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = kTimeoutMs;
  config.algorithm = GetParam();
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const size_t count = 100000;
  std::vector<DeviceBuffer> buf;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    buf.emplace_back(count * sizeof(float));
  }

  // Only rank 0 calls.
  ranks.use(0);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(tpcSuccess, tpcAllReduce(buf[0].get(), buf[0].get(), count, tpcFloat32, tpcSum,
                                     ranks.comms[0], ranks.streams[0]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[0]));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(seconds(elapsed), kTimeoutMs * 0.9e-3) << "the wait ended before its timeout";
  EXPECT_LT(elapsed, std::chrono::milliseconds(kTimeoutMs) + kSlack);

  tpcResult_t async = tpcSuccess;
  ASSERT_EQ(tpcSuccess, tpcCommGetAsyncError(ranks.comms[0], &async));
  EXPECT_EQ(tpcTimeout, async);
  const std::string message = tpcCommGetLastError(ranks.comms[0]);
  EXPECT_NE(std::string::npos, message.find("rank 0")) << message;
  EXPECT_NE(std::string::npos, message.find("for rank 1")) << message;
  EXPECT_NE(std::string::npos, message.find("block")) << message;
  EXPECT_NE(std::string::npos, message.find("timed out")) << message;

  // The failed rank refuses further work instead of launching kernels that would hang.
  EXPECT_EQ(tpcTimeout, tpcAllReduce(buf[0].get(), buf[0].get(), count, tpcFloat32, tpcSum,
                                     ranks.comms[0], ranks.streams[0]));

  // Rank 1 arrives late: rank 0 left before the end of the call, so rank 1 times out too.
  ranks.use(1);
  const auto lateStart = std::chrono::steady_clock::now();
  ASSERT_EQ(tpcSuccess, tpcAllReduce(buf[1].get(), buf[1].get(), count, tpcFloat32, tpcSum,
                                     ranks.comms[1], ranks.streams[1]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[1]));
  EXPECT_LT(std::chrono::steady_clock::now() - lateStart,
            std::chrono::milliseconds(kTimeoutMs) + kSlack);
  ASSERT_EQ(tpcSuccess, tpcCommGetAsyncError(ranks.comms[1], &async));
  EXPECT_EQ(tpcTimeout, async);
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(ranks.comms[1])).find("rank 1"));
}

TEST_P(Timeout, QueuedWorkOfAFailedRankEndsQuickly) {
  SKIP_WITHOUT_GPU();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = kTimeoutMs;
  config.algorithm = GetParam();
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  ranks.use(0);
  DeviceBuffer buf(4096 * sizeof(float));
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(tpcSuccess, tpcAllReduce(buf.get(), buf.get(), 4096, tpcFloat32, tpcSum,
                                       ranks.comms[0], ranks.streams[0]));
  }
  CUDA_OK(cudaStreamSynchronize(ranks.streams[0]));
  // Twenty timeouts in a row would take 20 x 300 ms; after the first, the rest give up at once.
  EXPECT_LT(std::chrono::steady_clock::now() - start,
            std::chrono::milliseconds(kTimeoutMs) + kSlack);
  tpcResult_t async = tpcSuccess;
  ASSERT_EQ(tpcSuccess, tpcCommGetAsyncError(ranks.comms[0], &async));
  EXPECT_EQ(tpcTimeout, async);
}

INSTANTIATE_TEST_SUITE_P(Algorithms, Timeout, ::testing::Values(tpcAlgoOneShot, tpcAlgoTwoShot));

}  // namespace
}  // namespace testing
}  // namespace tpcomm
