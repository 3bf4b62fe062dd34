// The API on live communicators: queries, argument checks, destroyed handles, world size 1, the
// C++ layer, and independent communicators over the same devices.
#include <gtest/gtest.h>

#include <cstdint>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "gpu_test_util.cuh"
#include "tpcomm/tpcomm.h"
#include "tpcomm/tpcomm.hpp"

namespace tpcomm {
namespace testing {
namespace {

TEST(ApiGpu, QueriesDescribeEachRank) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(3);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  for (int r = 0; r < 3; ++r) {
    int value = -1;
    TPC_OK(tpcCommCount(ranks.comms[r], &value));
    EXPECT_EQ(3, value);
    TPC_OK(tpcCommUserRank(ranks.comms[r], &value));
    EXPECT_EQ(r, value);
    TPC_OK(tpcCommCuDevice(ranks.comms[r], &value));
    EXPECT_EQ(ranks.devices[r], value);
    tpcResult_t async = tpcInternalError;
    TPC_OK(tpcCommGetAsyncError(ranks.comms[r], &async));
    EXPECT_EQ(tpcSuccess, async);
  }
}

TEST(ApiGpu, BadCallsGetCodesAndSentences) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(2);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  tpcComm_t comm = ranks.comms[0];
  cudaStream_t stream = ranks.streams[0];
  ranks.use(0);
  DeviceBuffer buf(1024);
  void* p = buf.get();

  EXPECT_EQ(tpcInvalidArgument, tpcAllReduce(nullptr, p, 4, tpcFloat32, tpcSum, comm, stream));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comm)).find("sendbuff is NULL"));
  EXPECT_EQ(tpcInvalidArgument, tpcAllReduce(p, nullptr, 4, tpcFloat32, tpcSum, comm, stream));
  EXPECT_EQ(tpcSuccess, tpcAllReduce(nullptr, nullptr, 0, tpcFloat32, tpcSum, comm, stream))
      << "count 0 does nothing";
  EXPECT_EQ(tpcInvalidArgument,
            tpcAllReduce(p, p, 4, static_cast<tpcDataType_t>(42), tpcSum, comm, stream));
  EXPECT_EQ(tpcInvalidArgument,
            tpcAllReduce(p, p, 4, tpcFloat32, static_cast<tpcRedOp_t>(-1), comm, stream));
  // Types and operations only NCCL reduces: refused without NCCL; with NCCL, refused outside a
  // group, since this thread drives both ranks and NCCL would wait in the call for the other.
  tpcPathInfo_t info;
  TPC_OK(tpcCommGetPathInfo(comm, &info));
  const tpcResult_t ncclOnly = info.ncclAvailable ? tpcInvalidUsage : tpcNotSupported;
  EXPECT_EQ(ncclOnly, tpcAllReduce(p, p, 4, tpcInt32, tpcSum, comm, stream));
  EXPECT_EQ(ncclOnly, tpcAllReduce(p, p, 4, tpcFloat32, tpcMax, comm, stream));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comm))
                                   .find(info.ncclAvailable ? "tpcGroupStart" : "max over float32"))
      << tpcCommGetLastError(comm);
  EXPECT_EQ(tpcInvalidUsage, tpcGroupEnd()) << "an end without a start";
  char* bytes = static_cast<char*>(p);
  EXPECT_EQ(tpcInvalidArgument, tpcAllReduce(p, bytes + 16, 8, tpcFloat32, tpcSum, comm, stream));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comm)).find("overlaps sendbuff"))
      << tpcCommGetLastError(comm);
  EXPECT_EQ(tpcInvalidArgument, tpcAllReduce(bytes + 8, p, 8, tpcBfloat16, tpcSum, comm, stream));
  EXPECT_EQ(tpcInvalidArgument, tpcAllReduce(p, p, SIZE_MAX / 2, tpcFloat32, tpcSum, comm, stream));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comm)).find("overflows"));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comm)).find("rank 0"));
  // None of these may have broken the communicator.
  tpcResult_t async = tpcInternalError;
  TPC_OK(tpcCommGetAsyncError(comm, &async));
  EXPECT_EQ(tpcSuccess, async);
}

TEST(ApiGpu, StreamOfAnotherDeviceIsRejected) {
  SKIP_WITHOUT_GPU();
  if (gpuCount() < 2) GTEST_SKIP() << "needs two GPUs";
  tpcComm_t comms[2];
  const int devices[2] = {0, 1};
  TPC_OK(tpcCommInitAll(comms, 2, devices, nullptr));
  cudaSetDevice(1);
  cudaStream_t other;
  CUDA_OK(cudaStreamCreate(&other));
  cudaSetDevice(0);
  DeviceBuffer buf(1024);
  EXPECT_EQ(tpcInvalidArgument,
            tpcAllReduce(buf.get(), buf.get(), 4, tpcFloat32, tpcSum, comms[0], other));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comms[0])).find("device 1"));
  cudaStreamDestroy(other);
  tpcCommDestroy(comms[0]);
  tpcCommDestroy(comms[1]);
}

TEST(ApiGpu, DestroyedCommunicatorIsRejected) {
  SKIP_WITHOUT_GPU();
  tpcComm_t comms[2];
  const int devices[2] = {0, 0};
  TPC_OK(tpcCommInitAll(comms, 2, devices, nullptr));
  // Ranks may be destroyed one after the other from one thread.
  TPC_OK(tpcCommDestroy(comms[0]));
  TPC_OK(tpcCommDestroy(comms[1]));
  int value = 0;
  EXPECT_EQ(tpcInvalidUsage, tpcCommCount(comms[0], &value));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(comms[0])).find("destroyed"));
  EXPECT_EQ(tpcInvalidUsage,
            tpcAllReduce(nullptr, nullptr, 0, tpcFloat32, tpcSum, comms[1], nullptr));
  EXPECT_EQ(tpcInvalidUsage, tpcCommDestroy(comms[1]));
}

TEST(ApiGpu, InitAllRejectsDevicesThatDoNotExist) {
  SKIP_WITHOUT_GPU();
  tpcComm_t comms[2] = {nullptr, nullptr};
  const int devices[2] = {0, 99};
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitAll(comms, 2, devices, nullptr));
  EXPECT_EQ(nullptr, comms[0]);
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(nullptr)).find("device 99"));
}

TEST(ApiGpu, WorldOfOneCopies) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(1);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  ranks.use(0);
  const size_t count = 1001;
  DeviceBuffer in(count * sizeof(float)), out(count * sizeof(float));
  Counter wrong;
  fillExact<<<checkGrid(count), 256, 0, ranks.streams[0]>>>(in.get<float>(), count, 0, 9);
  TPC_OK(tpcAllReduce(in.get(), out.get(), count, tpcFloat32, tpcSum, ranks.comms[0],
                      ranks.streams[0]));
  TPC_OK(tpcAllReduce(out.get(), out.get(), count, tpcFloat32, tpcSum, ranks.comms[0],
                      ranks.streams[0]));
  checkExact<<<checkGrid(count), 256, 0, ranks.streams[0]>>>(out.get<float>(), count, 1, 9,
                                                             wrong.get());
  CUDA_OK(cudaStreamSynchronize(ranks.streams[0]));
  EXPECT_EQ(0u, wrong.read());
}

// Two communicators over the same ranks keep separate signal words and never confuse calls.
TEST(ApiGpu, IndependentCommunicatorsInterleave) {
  SKIP_WITHOUT_GPU();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = 20000;
  Ranks a(2, config), b(2, config);
  ASSERT_TRUE(a.ok() && b.ok()) << a.message << b.message;
  const size_t count = 5000;
  std::vector<DeviceBuffer> buf;
  std::vector<Counter> wrong;
  for (int r = 0; r < 2; ++r) {
    a.use(r);
    buf.emplace_back(count * sizeof(float));
    wrong.emplace_back();
  }
  for (int i = 0; i < 50; ++i) {
    Ranks& ranks = i % 2 ? a : b;
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      // Every iteration ends in a sync, so the two communicators' streams never overlap on buf.
      fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(buf[r].get<float>(), count, r, i);
    }
    for (int r = 0; r < 2; ++r) {
      TPC_OK(tpcAllReduce(buf[r].get(), buf[r].get(), count, tpcFloat32, tpcSum, ranks.comms[r],
                          ranks.streams[r]));
    }
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      checkExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(buf[r].get<float>(), count, 2, i,
                                                                 wrong[r].get());
    }
    CUDA_OK(ranks.syncAll());
  }
  for (int r = 0; r < 2; ++r) EXPECT_EQ(0u, wrong[r].read());
}

// One communicator used from two streams without any synchronization between them: every eager
// call waits for the rank's previous one, so no two calls of a rank overlap and every sum is
// right.
TEST(ApiGpu, CallsOnSeveralStreamsAreOrdered) {
  SKIP_WITHOUT_GPU();
  constexpr int kCalls = 60;
  const size_t count = 70001;
  for (tpcAlgorithm_t algorithm : kKernelAlgorithms) {
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    config.algorithm = algorithm;
    config.timeoutMs = 20000;
    Ranks ranks(2, config);
    ASSERT_TRUE(ranks.ok()) << ranks.message;
    std::vector<cudaStream_t> second(2);
    std::vector<DeviceBuffer> in, out;
    std::vector<Counter> wrong;
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      CUDA_OK(cudaStreamCreateWithFlags(&second[r], cudaStreamNonBlocking));
      in.emplace_back(kCalls * count * sizeof(float));
      out.emplace_back(kCalls * count * sizeof(float));
      wrong.emplace_back();
    }
    for (int k = 0; k < kCalls; ++k) {
      for (int r = 0; r < 2; ++r) {
        ranks.use(r);
        cudaStream_t s = k % 2 == 0 ? ranks.streams[r] : second[r];
        fillExact<<<checkGrid(count), 256, 0, s>>>(in[r].get<float>() + k * count, count, r, k);
      }
      for (int r = 0; r < 2; ++r) {
        cudaStream_t s = k % 2 == 0 ? ranks.streams[r] : second[r];
        ASSERT_EQ(tpcSuccess,
                  tpcAllReduce(in[r].get<float>() + k * count, out[r].get<float>() + k * count,
                               count, tpcFloat32, tpcSum, ranks.comms[r], s))
            << tpcCommGetLastError(ranks.comms[r]);
      }
    }
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      CUDA_OK(cudaDeviceSynchronize());
      for (int k = 0; k < kCalls; ++k) {
        checkExact<<<checkGrid(count), 256>>>(out[r].get<float>() + k * count, count, 2, k,
                                              wrong[r].get());
      }
      CUDA_OK(cudaDeviceSynchronize());
      EXPECT_EQ(0u, wrong[r].read()) << algorithmTestName(algorithm) << ", rank " << r;
      CUDA_OK(cudaStreamDestroy(second[r]));
    }
  }
}

__global__ void waitOnDevice(unsigned long long ns) {
  unsigned long long start = 0, now = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}

// Each rank's two calls come from two threads in turn, each on cudaStreamPerThread: one handle
// that names each thread's own stream. The second call sums the first's output and must wait for
// it, which a kernel of 200 ms holds back on the first thread's stream.
TEST(ApiGpu, CallsFromTwoThreadsOnTheirOwnDefaultStreamsAreOrdered) {
  SKIP_WITHOUT_GPU();
  constexpr uint32_t kSeed = 17;
  const size_t count = 50001;
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = 10000;
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  // in -> mid by the first call, mid -> out by the second.
  std::vector<std::vector<DeviceBuffer>> buf(2);
  std::vector<Counter> wrong;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    for (int k = 0; k < 3; ++k) buf[r].emplace_back(count * sizeof(float));
    wrong.emplace_back();
    fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(buf[r][0].get<float>(), count, r,
                                                              kSeed);
    CUDA_OK(cudaMemsetAsync(buf[r][1].get(), 0, count * sizeof(float), ranks.streams[r]));
  }
  CUDA_OK(ranks.syncAll());
  auto call = [&](int r, int k) {
    return tpcAllReduce(buf[r][k].get(), buf[r][k + 1].get(), count, tpcFloat32, tpcSum,
                        ranks.comms[r], cudaStreamPerThread);
  };
  // The first threads stay until the end, so that their streams outlive their work.
  std::promise<void> finish;
  const std::shared_future<void> finished = finish.get_future().share();
  std::vector<std::promise<void>> issued(2);
  std::vector<tpcResult_t> results(4, tpcInternalError);
  std::vector<std::thread> first, second;
  for (int r = 0; r < 2; ++r) {
    first.emplace_back([&, r] {
      ranks.use(r);
      waitOnDevice<<<1, 1, 0, cudaStreamPerThread>>>(200000000ull);
      results[r] = call(r, 0);
      issued[r].set_value();
      finished.wait();
      cudaStreamSynchronize(cudaStreamPerThread);
    });
  }
  for (std::promise<void>& p : issued) p.get_future().wait();
  for (int r = 0; r < 2; ++r) {
    second.emplace_back([&, r] {
      ranks.use(r);
      results[2 + r] = call(r, 1);
      cudaStreamSynchronize(cudaStreamPerThread);
    });
  }
  for (std::thread& t : second) t.join();
  finish.set_value();
  for (std::thread& t : first) t.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(tpcSuccess, results[k]) << "call " << k / 2 + 1;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    checkDoubled<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(buf[r][2].get<float>(), count,
                                                                 kSeed, 1, wrong[r].get());
  }
  CUDA_OK(ranks.syncAll());
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
    tpcResult_t async = tpcInternalError;
    TPC_OK(tpcCommGetAsyncError(ranks.comms[r], &async));
    EXPECT_EQ(tpcSuccess, async) << tpcCommGetLastError(ranks.comms[r]);
  }
}

TEST(CppApiGpu, RaiiCommunicatorsAllReduce) {
  SKIP_WITHOUT_GPU();
  const size_t count = 777;
  std::vector<tpcomm::Communicator> comms = tpcomm::Communicator::initAll(rankDevices(2));
  ASSERT_EQ(2u, comms.size());
  EXPECT_EQ(1, comms[1].rank());
  EXPECT_EQ(2, comms[0].size());
  std::vector<DeviceBuffer> buf;
  std::vector<cudaStream_t> streams(2);
  for (int r = 0; r < 2; ++r) {
    cudaSetDevice(comms[r].device());
    buf.emplace_back(count * sizeof(__nv_bfloat16));
    CUDA_OK(cudaStreamCreate(&streams[r]));
    fillExact<<<checkGrid(count), 256, 0, streams[r]>>>(buf[r].get<__nv_bfloat16>(), count, r, 3);
  }
  for (int r = 0; r < 2; ++r) {
    comms[r].allReduce(buf[r].get<__nv_bfloat16>(), buf[r].get<__nv_bfloat16>(), count, streams[r]);
  }
  Counter wrong;
  for (int r = 0; r < 2; ++r) {
    cudaSetDevice(comms[r].device());
    checkExact<<<checkGrid(count), 256, 0, streams[r]>>>(buf[r].get<__nv_bfloat16>(), count, 2, 3,
                                                         wrong.get());
    CUDA_OK(cudaStreamSynchronize(streams[r]));
    cudaStreamDestroy(streams[r]);
  }
  EXPECT_EQ(0u, wrong.read());
  try {
    comms[0].allReduce(nullptr, nullptr, 5, tpcFloat32, nullptr);
    FAIL() << "expected an exception";
  } catch (const tpcomm::Error& e) {
    EXPECT_EQ(tpcInvalidArgument, e.code());
    EXPECT_NE(std::string::npos, std::string(e.what()).find("NULL"));
  }
}

}  // namespace
}  // namespace testing
}  // namespace tpcomm
