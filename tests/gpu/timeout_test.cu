// Failure that stops everyone: a rank that never calls makes its peers fail with tpcTimeout in the
// configured time, with the rank, peer and block named; a failed rank's queued kernels and graph
// replays do nothing, so a late peer never pairs them with another call and fails naming it;
// tpcCommAbort stops a rank and its peers, and returns while other work keeps the device busy;
// ranks that make different calls fail instead of mixing them. Every kernel algorithm, on one GPU
// or several.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <string>
#include <utility>
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

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class Failure : public ::testing::TestWithParam<tpcAlgorithm_t> {
 protected:
  void SetUp() override {
    if (gpuCount() == 0) GTEST_SKIP() << "no CUDA device";
    config_.timeoutMs = kTimeoutMs;
    // The bound covers NCCL's init too, which takes longer than kTimeoutMs the first time in a
    // process; these calls go to tpcomm's kernels.
    config_.ncclFallback = TPC_NCCL_OFF;
    config_.algorithm = GetParam();
  }

  // Float32 buffers of `count` on every rank's device.
  std::vector<DeviceBuffer> buffers(const Ranks& ranks, size_t count) {
    std::vector<DeviceBuffer> out;
    for (int r = 0; r < ranks.size(); ++r) {
      ranks.use(r);
      out.emplace_back(count * sizeof(float));
    }
    return out;
  }

  // The rank's asynchronous error and the sentence that explains it.
  static tpcResult_t asyncError(const Ranks& ranks, int r, std::string* message) {
    tpcResult_t async = tpcInternalError;
    EXPECT_EQ(tpcSuccess, tpcCommGetAsyncError(ranks.comms[r], &async));
    *message = tpcCommGetLastError(ranks.comms[r]);
    return async;
  }

  tpcConfig_t config_ = TPC_CONFIG_INITIALIZER;
};

TEST_P(Failure, RankThatNeverCallsMakesOthersFailInTime) {
  Ranks ranks(2, config_);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const size_t count = 100000;
  std::vector<DeviceBuffer> buf = buffers(ranks, count);

  // Only rank 0 calls.
  ranks.use(0);
  fillExact<<<checkGrid(count), 256, 0, ranks.streams[0]>>>(buf[0].get<float>(), count, 0, 7);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(tpcSuccess, tpcAllReduce(buf[0].get(), buf[0].get(), count, tpcFloat32, tpcSum,
                                     ranks.comms[0], ranks.streams[0]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[0]));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(seconds(elapsed), kTimeoutMs * 0.9e-3) << "the wait ended before its timeout";
  EXPECT_LT(elapsed, std::chrono::milliseconds(kTimeoutMs) + kSlack);

  std::string message;
  EXPECT_EQ(tpcTimeout, asyncError(ranks, 0, &message));
  EXPECT_TRUE(contains(message, "rank 0")) << message;
  EXPECT_TRUE(contains(message, "for rank 1")) << message;
  EXPECT_TRUE(contains(message, "block")) << message;
  EXPECT_TRUE(contains(message, "timed out")) << message;

  // The failed rank refuses further work instead of launching kernels that would hang.
  EXPECT_EQ(tpcTimeout, tpcAllReduce(buf[0].get(), buf[0].get(), count, tpcFloat32, tpcSum,
                                     ranks.comms[0], ranks.streams[0]));

  // Rank 1 arrives late. Its call either completes with the right sum (rank 0's part of it had
  // arrived) or fails naming rank 0; never a wrong sum reported as success.
  ranks.use(1);
  fillExact<<<checkGrid(count), 256, 0, ranks.streams[1]>>>(buf[1].get<float>(), count, 1, 7);
  const auto lateStart = std::chrono::steady_clock::now();
  ASSERT_EQ(tpcSuccess, tpcAllReduce(buf[1].get(), buf[1].get(), count, tpcFloat32, tpcSum,
                                     ranks.comms[1], ranks.streams[1]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[1]));
  const tpcResult_t late = asyncError(ranks, 1, &message);
  if (late == tpcSuccess) {
    Counter wrong;
    checkExact<<<checkGrid(count), 256, 0, ranks.streams[1]>>>(buf[1].get<float>(), count, 2, 7,
                                                               wrong.get());
    CUDA_OK(cudaStreamSynchronize(ranks.streams[1]));
    EXPECT_EQ(0u, wrong.read()) << "a late call that succeeds has the right sum";
    // Its next call waits for rank 0, whose kernels do nothing any more: it fails naming it.
    ASSERT_EQ(tpcSuccess, tpcAllReduce(buf[1].get(), buf[1].get(), count, tpcFloat32, tpcSum,
                                       ranks.comms[1], ranks.streams[1]));
    CUDA_OK(cudaStreamSynchronize(ranks.streams[1]));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - lateStart,
            std::chrono::milliseconds(kTimeoutMs) + kSlack);
  EXPECT_EQ(tpcRemoteError, asyncError(ranks, 1, &message));
  EXPECT_TRUE(contains(message, "rank 1")) << message;
  EXPECT_TRUE(contains(message, "rank 0 failed")) << message;
}

TEST_P(Failure, QueuedWorkOfAFailedRankEndsQuickly) {
  Ranks ranks(2, config_);
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
  std::string message;
  EXPECT_EQ(tpcTimeout, asyncError(ranks, 0, &message));
}

// Rank 0 times out on an eager call, then replays a graph of three calls before rank 1 arrives for
// the eager call and the same graph. Rank 1 must never get a wrong sum from rank 0's stale work:
// every output is the exact sum or untouched, and rank 1 ends failed, naming rank 0.
TEST_P(Failure, GraphReplaysOfAFailedRankDoNothing) {
  Ranks ranks(2, config_);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const size_t count = 4099;
  constexpr int kCalls = 3;
  std::vector<DeviceBuffer> eager = buffers(ranks, count);
  std::vector<DeviceBuffer> in = buffers(ranks, kCalls * count);
  std::vector<DeviceBuffer> out = buffers(ranks, kCalls * count);
  std::vector<cudaGraphExec_t> exec(2, nullptr);
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    for (int k = 0; k < kCalls; ++k) {
      fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(in[r].get<float>() + k * count,
                                                                count, r, 100 + k);
    }
    CUDA_OK(cudaMemsetAsync(out[r].get(), 0xff, kCalls * count * sizeof(float), ranks.streams[r]));
    fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(eager[r].get<float>(), count, r, 99);
    cudaGraph_t graph;
    CUDA_OK(cudaStreamBeginCapture(ranks.streams[r], cudaStreamCaptureModeThreadLocal));
    for (int k = 0; k < kCalls; ++k) {
      ASSERT_EQ(tpcSuccess,
                tpcAllReduce(in[r].get<float>() + k * count, out[r].get<float>() + k * count, count,
                             tpcFloat32, tpcSum, ranks.comms[r], ranks.streams[r]));
    }
    CUDA_OK(cudaStreamEndCapture(ranks.streams[r], &graph));
    CUDA_OK(cudaGraphInstantiate(&exec[r], graph, 0));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_OK(cudaStreamSynchronize(ranks.streams[r]));
  }

  ranks.use(0);
  ASSERT_EQ(tpcSuccess, tpcAllReduce(eager[0].get(), eager[0].get(), count, tpcFloat32, tpcSum,
                                     ranks.comms[0], ranks.streams[0]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[0]));
  std::string message;
  EXPECT_EQ(tpcTimeout, asyncError(ranks, 0, &message));
  CUDA_OK(cudaGraphLaunch(exec[0], ranks.streams[0]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[0]));

  ranks.use(1);
  ASSERT_EQ(tpcSuccess, tpcAllReduce(eager[1].get(), eager[1].get(), count, tpcFloat32, tpcSum,
                                     ranks.comms[1], ranks.streams[1]));
  CUDA_OK(cudaGraphLaunch(exec[1], ranks.streams[1]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[1]));
  EXPECT_EQ(tpcRemoteError, asyncError(ranks, 1, &message));
  EXPECT_TRUE(contains(message, "rank 0 failed")) << message;

  // Each output element: the exact sum, or the poison it had (0xffffffff).
  std::vector<float> host(kCalls * count);
  CUDA_OK(
      cudaMemcpy(host.data(), out[1].get(), host.size() * sizeof(float), cudaMemcpyDeviceToHost));
  size_t wrong = 0, summed = 0;
  for (int k = 0; k < kCalls; ++k) {
    for (size_t i = 0; i < count; ++i) {
      const float got = host[k * count + i];
      uint32_t bits;
      std::memcpy(&bits, &got, sizeof(bits));
      if (bits == 0xffffffffu) continue;
      ++summed;
      wrong += got != static_cast<float>(exactSum(2, i, 100 + k));
    }
  }
  EXPECT_EQ(0u, wrong) << "of " << summed << " elements written by rank 1's graph";
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    CUDA_OK(cudaGraphExecDestroy(exec[r]));
  }
}

// tpcCommAbort on one rank while its peer waits in a kernel: the peer fails naming the rank long
// before its own timeout, and the aborted handle is gone.
TEST_P(Failure, AbortStopsThePeersNamingTheRank) {
  config_.timeoutMs = 60000;
  Ranks ranks(2, config_);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const size_t count = 100000;
  std::vector<DeviceBuffer> buf = buffers(ranks, count);
  ranks.use(1);
  ASSERT_EQ(tpcSuccess, tpcAllReduce(buf[1].get(), buf[1].get(), count, tpcFloat32, tpcSum,
                                     ranks.comms[1], ranks.streams[1]));
  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(tpcSuccess, tpcCommAbort(ranks.comms[0]));
  int value = 0;
  EXPECT_EQ(tpcInvalidUsage, tpcCommCount(ranks.comms[0], &value)) << "the handle is gone";
  ranks.comms[0] = nullptr;
  ranks.use(1);
  CUDA_OK(cudaStreamSynchronize(ranks.streams[1]));
  EXPECT_LT(std::chrono::steady_clock::now() - start, kSlack) << "not the 60 s timeout";
  std::string message;
  EXPECT_EQ(tpcRemoteError, asyncError(ranks, 1, &message));
  EXPECT_TRUE(contains(message, "rank 0 failed or was aborted")) << message;
}

// Spins until *release is set, or for `boundNs` at most: another library's kernel that waits for
// a peer that is gone.
__global__ void spinUntilReleased(const volatile int* release, unsigned long long boundNs) {
  unsigned long long start, now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (*release == 0 && now - start < boundNs);
}

// tpcCommAbort returns within the timeout while work it cannot stop keeps the rank's device busy
// (a device synchronization would wait for it), and the rank's peer still fails naming it.
TEST(Abort, ReturnsWhileOtherWorkKeepsTheDeviceBusy) {
  if (gpuCount() == 0) GTEST_SKIP() << "no CUDA device";
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = kTimeoutMs;
  config.ncclFallback = TPC_NCCL_OFF;  // as in Failure
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  int* release = nullptr;
  CUDA_OK(cudaHostAlloc(&release, sizeof(int), cudaHostAllocMapped));
  *release = 0;
  ranks.use(0);
  cudaStream_t other;
  CUDA_OK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
  spinUntilReleased<<<1, 1, 0, other>>>(release, 30000000000ull);
  CUDA_OK(cudaGetLastError());

  const auto start = std::chrono::steady_clock::now();
  const tpcResult_t aborted = tpcCommAbort(ranks.comms[0]);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ranks.comms[0] = nullptr;
  *static_cast<volatile int*>(release) = 1;
  CUDA_OK(cudaStreamSynchronize(other));
  CUDA_OK(cudaStreamDestroy(other));
  CUDA_OK(cudaFreeHost(release));
  EXPECT_EQ(tpcSuccess, aborted);
  EXPECT_LT(elapsed, std::chrono::milliseconds(kTimeoutMs) + kSlack)
      << "waited " << seconds(elapsed) << " s for work that was not the rank's";

  ranks.use(1);
  DeviceBuffer buf(1000 * sizeof(float));
  ASSERT_EQ(tpcSuccess, tpcAllReduce(buf.get(), buf.get(), 1000, tpcFloat32, tpcSum, ranks.comms[1],
                                     ranks.streams[1]));
  CUDA_OK(cudaStreamSynchronize(ranks.streams[1]));
  tpcResult_t async = tpcSuccess;
  EXPECT_EQ(tpcSuccess, tpcCommGetAsyncError(ranks.comms[1], &async));
  const std::string message = tpcCommGetLastError(ranks.comms[1]);
  EXPECT_EQ(tpcRemoteError, async) << message;
  EXPECT_TRUE(contains(message, "rank 0 failed or was aborted")) << message;
}

// Ranks that call with different sizes at the same point both fail, saying so, instead of
// reducing mismatched data or waiting for vectors that never come: messages whose tags one thread
// checks in push one-shot (at two ranks, every launch that gives a thread one vector at most), one
// of 2.4 MB, which gives a thread more and whose tags every thread checks, and one vector, which
// leaves rank 1 no slice of its own to reduce in a two-shot call.
TEST_P(Failure, RanksMakingDifferentCallsFailClearly) {
  config_.timeoutMs = 60000;
  const std::pair<size_t, size_t> counts[] = {
      {1000, 1008}, {20000, 20008}, {600000, 600008}, {1, 2}};
  for (const auto& [count, other] : counts) {
    SCOPED_TRACE("count " + std::to_string(count) + " against " + std::to_string(other));
    Ranks ranks(2, config_);
    ASSERT_TRUE(ranks.ok()) << ranks.message;
    std::vector<DeviceBuffer> buf = buffers(ranks, other);
    const auto start = std::chrono::steady_clock::now();
    ASSERT_EQ(tpcSuccess, allReduceAll(ranks, {buf[0].get(), buf[1].get()},
                                       {buf[0].get(), buf[1].get()}, count, tpcFloat32));
    // Rank 1 calls again with another count: the two calls meet.
    for (int r = 0; r < 2; ++r) {
      ASSERT_EQ(tpcSuccess, tpcAllReduce(buf[r].get(), buf[r].get(), r == 0 ? count : other,
                                         tpcFloat32, tpcSum, ranks.comms[r], ranks.streams[r]));
    }
    CUDA_OK(ranks.syncAll());
    EXPECT_LT(std::chrono::steady_clock::now() - start, kSlack) << "not the 60 s timeout";
    for (int r = 0; r < 2; ++r) {
      std::string message;
      EXPECT_EQ(tpcInvalidUsage, asyncError(ranks, r, &message)) << message;
      EXPECT_TRUE(contains(message, "made a different call")) << message;
    }
  }
}

// At four ranks, where one rank alone calls with another size: each of the others names it, and
// it fails as well, whichever of its peers' tags or counters it meets first.
TEST_P(Failure, TheRankMakingAnotherCallIsNamedByEveryOther) {
  config_.timeoutMs = 60000;
  constexpr int kRanks = 4;
  constexpr int kOdd = 2;
  Ranks ranks(kRanks, config_);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  std::vector<DeviceBuffer> buf = buffers(ranks, 2000);
  const auto start = std::chrono::steady_clock::now();
  std::vector<void*> out;
  for (int r = 0; r < kRanks; ++r) out.push_back(buf[r].get());
  const std::vector<const void*> in(out.begin(), out.end());
  ASSERT_EQ(tpcSuccess, allReduceAll(ranks, in, out, 1000, tpcFloat32));
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_EQ(tpcSuccess, tpcAllReduce(buf[r].get(), buf[r].get(), r == kOdd ? 1008 : 1000,
                                       tpcFloat32, tpcSum, ranks.comms[r], ranks.streams[r]));
  }
  CUDA_OK(ranks.syncAll());
  EXPECT_LT(std::chrono::steady_clock::now() - start, kSlack) << "not the 60 s timeout";
  for (int r = 0; r < kRanks; ++r) {
    std::string message;
    EXPECT_EQ(tpcInvalidUsage, asyncError(ranks, r, &message)) << message;
    const std::string expected = r == kOdd
                                     ? "made a different call"
                                     : "rank " + std::to_string(kOdd) + " made a different call";
    EXPECT_TRUE(contains(message, expected)) << "rank " << r << ": " << message;
  }
}

INSTANTIATE_TEST_SUITE_P(Algorithms, Failure, ::testing::ValuesIn(kKernelAlgorithms),
                         [](const ::testing::TestParamInfo<tpcAlgorithm_t>& info) {
                           return algorithmTestName(info.param);
                         });

}  // namespace
}  // namespace testing
}  // namespace tpcomm
