// The path decision on a real GPU: the functional check through same-device peer mappings, NCCL
// carrying the calls tpcomm's kernels do not take, through real NCCL communicators of one rank
// (owned by tpcomm, and borrowed from the caller), and one thread driving every route in groups.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <climits>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "core/handle.h"
#include "fallback/nccl_library.h"
#include "gpu_test_util.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace testing {
namespace {

// Int32 inputs (a type only NCCL reduces) and their check, on one rank.
__global__ void fillInts(int* out, size_t count) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    out[i] = static_cast<int>(i * 7 % 1001) - 500;
  }
}

__global__ void checkInts(const int* out, size_t count, unsigned long long* wrong) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    if (out[i] != static_cast<int>(i * 7 % 1001) - 500) atomicAdd(wrong, 1ull);
  }
}

const nccl::Library* ncclOrSkip() {
  std::string why;
  const nccl::Library* lib = nccl::library(&why);
  return lib;
}

// Runs an int32 and a float32 all-reduce on a one-rank communicator and checks both.
void checkOneRank(tpcComm_t comm, cudaStream_t stream) {
  const size_t count = 4099;
  DeviceBuffer in(count * sizeof(int)), out(count * sizeof(int));
  Counter wrong;
  fillInts<<<checkGrid(count), 256, 0, stream>>>(in.get<int>(), count);
  ASSERT_EQ(tpcSuccess, tpcAllReduce(in.get(), out.get(), count, tpcInt32, tpcSum, comm, stream))
      << tpcCommGetLastError(comm);
  checkInts<<<checkGrid(count), 256, 0, stream>>>(out.get<int>(), count, wrong.get());
  fillExact<<<checkGrid(count), 256, 0, stream>>>(in.get<float>(), count, 0, 5);
  ASSERT_EQ(tpcSuccess, tpcAllReduce(in.get(), out.get(), count, tpcFloat32, tpcSum, comm, stream))
      << tpcCommGetLastError(comm);
  checkExact<<<checkGrid(count), 256, 0, stream>>>(out.get<float>(), count, 1, 5, wrong.get());
  CUDA_OK(cudaStreamSynchronize(stream));
  EXPECT_EQ(0u, wrong.read());
}

// Ranks that share a GPU, on any machine: all on device 0.
TEST(PathDecision, FunctionalCheckOnSameDeviceRanks) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(std::vector<int>{0, 0, 0});
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  for (int r = 0; r < 3; ++r) {
    tpcPathInfo_t info;
    TPC_OK(tpcCommGetPathInfo(ranks.comms[r], &info));
    EXPECT_EQ(1, info.customPath);
    EXPECT_EQ(1, info.p2pVerified) << "every rank wrote through its peers' mappings";
    EXPECT_NE(std::string::npos, std::string(info.reason).find("share device")) << info.reason;
    EXPECT_EQ(0, info.ncclAvailable);
    EXPECT_NE(std::string::npos, std::string(info.nccl).find("share a GPU")) << info.nccl;
  }
}

TEST(PathDecision, WithoutNcclUnsupportedTypesAreRefusedClearly) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(std::vector<int>{0, 0, 0});
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  ranks.use(0);
  DeviceBuffer buf(64);
  EXPECT_EQ(tpcNotSupported, tpcAllReduce(buf.get(), buf.get(), 4, tpcInt32, tpcSum, ranks.comms[0],
                                          ranks.streams[0]));
  const std::string message = tpcCommGetLastError(ranks.comms[0]);
  EXPECT_NE(std::string::npos, message.find("needs NCCL")) << message;
  EXPECT_NE(std::string::npos, message.find("share a GPU")) << message;
  tpcAlgorithm_t algo;
  TPC_OK(tpcCommGetAlgorithm(ranks.comms[0], size_t{1} << 30, tpcBfloat16, &algo));
  EXPECT_EQ(tpcAlgoPushTwoShot, algo) << "without NCCL the kernels take every size";
}

TEST(NcclFallback, OwnedCommunicatorOfOneRank) {
  SKIP_WITHOUT_GPU();
  if (ncclOrSkip() == nullptr) GTEST_SKIP() << "NCCL is not installed";
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.maxBytes = 1024;  // larger messages go to NCCL
  Ranks ranks(1, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  tpcPathInfo_t info;
  TPC_OK(tpcCommGetPathInfo(ranks.comms[0], &info));
  EXPECT_EQ(1, info.ncclAvailable) << info.nccl;
  EXPECT_NE(std::string::npos, std::string(info.nccl).find("created by tpcomm")) << info.nccl;
  tpcAlgorithm_t algo;
  TPC_OK(tpcCommGetAlgorithm(ranks.comms[0], 4099, tpcFloat32, &algo));
  EXPECT_EQ(tpcAlgoNccl, algo);
  TPC_OK(tpcCommGetAlgorithm(ranks.comms[0], 16, tpcFloat32, &algo));
  EXPECT_EQ(tpcAlgoPushOneShot, algo);
  TPC_OK(tpcCommGetAlgorithm(ranks.comms[0], 16, tpcInt32, &algo));
  EXPECT_EQ(tpcAlgoNccl, algo);
  ranks.use(0);
  checkOneRank(ranks.comms[0], ranks.streams[0]);
}

TEST(NcclFallback, BorrowedCommunicatorIsNeverDestroyed) {
  SKIP_WITHOUT_GPU();
  const nccl::Library* lib = ncclOrSkip();
  if (lib == nullptr) GTEST_SKIP() << "NCCL is not installed";
  CUDA_OK(cudaSetDevice(0));
  nccl::UniqueId id;
  ASSERT_EQ(nccl::kSuccess, lib->getUniqueId(&id));
  nccl::Comm borrowed = nullptr;
  ASSERT_EQ(nccl::kSuccess, lib->commInitRank(&borrowed, 1, id, 0));
  {
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    config.ncclComm = borrowed;
    config.algorithm = tpcAlgoNccl;
    Ranks ranks(1, config);
    ASSERT_TRUE(ranks.ok()) << ranks.message;
    tpcPathInfo_t info;
    TPC_OK(tpcCommGetPathInfo(ranks.comms[0], &info));
    EXPECT_NE(std::string::npos, std::string(info.nccl).find("caller's communicator")) << info.nccl;
    ranks.use(0);
    checkOneRank(ranks.comms[0], ranks.streams[0]);
  }
  // tpcomm is gone; the caller's communicator still works.
  DeviceBuffer buf(64);
  EXPECT_EQ(nccl::kSuccess,
            lib->allReduce(buf.get(), buf.get(), 4, tpcFloat32, tpcSum, borrowed, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_EQ(nccl::kSuccess, lib->commDestroy(borrowed));
}

// Int32 inputs, summed or maxed over ranks: types and operations only NCCL carries.
__global__ void fillRankInts(int* out, size_t count, int rank) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    out[i] = static_cast<int>(i % 1000) * (rank + 1) - 500;
  }
}

__global__ void checkRankInts(const int* out, size_t count, int nranks, bool max,
                              unsigned long long* wrong) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    int expected = max ? INT_MIN : 0;
    for (int r = 0; r < nranks; ++r) {
      const int v = static_cast<int>(i % 1000) * (r + 1) - 500;
      expected = max ? (v > expected ? v : expected) : expected + v;
    }
    if (out[i] != expected) atomicAdd(wrong, 1ull);
  }
}

// One thread drives every rank (on one GPU or one per GPU) through every route, in groups: each
// kernel, and NCCL where the communicator has it, for types the kernels sum and types only NCCL
// reduces. Every result is checked.
TEST(Routes, OneThreadDrivesEveryRouteInGroups) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(2);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  tpcPathInfo_t info;
  TPC_OK(tpcCommGetPathInfo(ranks.comms[0], &info));
  const size_t count = 300001;
  std::vector<DeviceBuffer> in, out;
  std::vector<Counter> wrong;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    in.emplace_back(count * sizeof(float));
    out.emplace_back(count * sizeof(float));
    wrong.emplace_back();
  }
  const std::vector<const void*> inputs = {in[0].get(), in[1].get()};
  const std::vector<void*> outputs = {out[0].get(), out[1].get()};
  std::vector<tpcAlgorithm_t> algorithms(std::begin(kKernelAlgorithms),
                                         std::end(kKernelAlgorithms));
  algorithms.push_back(tpcAlgoAuto);
  if (info.ncclAvailable) algorithms.push_back(tpcAlgoNccl);
  uint32_t seed = 40;
  for (tpcAlgorithm_t algorithm : algorithms) {
    for (int r = 0; r < 2; ++r) ranks.comms[r]->impl->forceAlgorithm(algorithm);
    ++seed;
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(in[r].get<float>(), count, r, seed);
    }
    std::string message;
    ASSERT_EQ(tpcSuccess, allReduceAll(ranks, inputs, outputs, count, tpcFloat32, &message))
        << algorithmTestName(algorithm) << ": " << message;
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      checkExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(out[r].get<float>(), count, 2,
                                                                 seed, wrong[r].get());
    }
    CUDA_OK(ranks.syncAll());
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      EXPECT_EQ(0u, wrong[r].read()) << algorithmTestName(algorithm) << ", rank " << r;
    }
  }
  if (!info.ncclAvailable) GTEST_SKIP() << "no NCCL here (" << info.nccl << "): int32 not run";
  for (bool max : {false, true}) {
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      wrong[r].reset();
      fillRankInts<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(in[r].get<int>(), count, r);
    }
    std::string message;
    ASSERT_EQ(tpcSuccess, allReduceAll(ranks, inputs, outputs, count, tpcInt32, &message,
                                       max ? tpcMax : tpcSum))
        << message;
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      checkRankInts<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(out[r].get<int>(), count, 2,
                                                                    max, wrong[r].get());
    }
    CUDA_OK(ranks.syncAll());
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      EXPECT_EQ(0u, wrong[r].read()) << (max ? "max" : "sum") << ", rank " << r;
    }
  }
}

// Two ranks on two GPUs whose communicators carry calls through NCCL.
class NcclOnTwoGpus : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_GPU();
    if (gpuCount() < 2) GTEST_SKIP() << "NCCL needs a GPU per rank";
    ranks_ = std::make_unique<Ranks>(2);
    ASSERT_TRUE(ranks_->ok()) << ranks_->message;
    tpcPathInfo_t info;
    TPC_OK(tpcCommGetPathInfo(ranks_->comms[0], &info));
    if (!info.ncclAvailable) GTEST_SKIP() << "no NCCL here (" << info.nccl << ")";
  }
  std::unique_ptr<Ranks> ranks_;
};

// A call NCCL carries waits for the rank's previous call on another stream, and the next call
// waits for it, as calls of tpcomm's kernels do: each call here all-reduces the previous call's
// output, on the other stream than the previous call, with nothing else between the streams.
// Calls alternate between NCCL and push one-shot; every one doubles the sum.
TEST_F(NcclOnTwoGpus, CallsOnSeveralStreamsAreOrdered) {
  Ranks& ranks = *ranks_;
  constexpr int kCalls = 24;
  constexpr uint32_t kSeed = 61;
  const size_t count = 1 << 18;
  std::vector<cudaStream_t> second(2);
  std::vector<std::vector<DeviceBuffer>> bufs(2);
  std::vector<Counter> wrong;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    CUDA_OK(cudaStreamCreateWithFlags(&second[r], cudaStreamNonBlocking));
    for (int k = 0; k <= kCalls; ++k) bufs[r].emplace_back(count * sizeof(float));
    wrong.emplace_back();
    fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(bufs[r][0].get<float>(), count, r,
                                                              kSeed);
  }
  for (int k = 0; k < kCalls; ++k) {
    const tpcAlgorithm_t algorithm = k % 2 == 0 ? tpcAlgoPushOneShot : tpcAlgoNccl;
    for (int r = 0; r < 2; ++r) ranks.comms[r]->impl->forceAlgorithm(algorithm);
    TPC_OK(tpcGroupStart());
    for (int r = 0; r < 2; ++r) {
      // The first call feeds on its own stream's fill; the later ones on the other stream's call.
      ASSERT_EQ(tpcSuccess,
                tpcAllReduce(bufs[r][k].get(), bufs[r][k + 1].get(), count, tpcFloat32, tpcSum,
                             ranks.comms[r], k % 2 == 0 ? ranks.streams[r] : second[r]))
          << tpcCommGetLastError(ranks.comms[r]);
    }
    TPC_OK(tpcGroupEnd());
  }
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    CUDA_OK(cudaDeviceSynchronize());
    for (int k = 0; k < kCalls; ++k) {
      checkDoubled<<<checkGrid(count), 256>>>(bufs[r][k + 1].get<float>(), count, kSeed, k,
                                              wrong[r].get());
    }
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
    CUDA_OK(cudaStreamDestroy(second[r]));
  }
}

// A thread driving ranks on several GPUs calls each on its device's default stream, as the loop
// `cudaSetDevice(r); tpcAllReduce(..., comms[r], 0)` of an engine does, and ends the group with
// the last rank's device current. What waits for NCCL's calls until the group's end runs on each
// rank's device, on that device's default stream, and the caller's device stays current.
TEST_F(NcclOnTwoGpus, GroupOfRanksOnTheirDefaultStreams) {
  Ranks& ranks = *ranks_;
  constexpr uint32_t kSeed = 83;
  const size_t count = 4099;
  std::vector<DeviceBuffer> in, out;
  std::vector<Counter> wrong;
  for (int r = 0; r < 2; ++r) {
    ranks.comms[r]->impl->forceAlgorithm(tpcAlgoNccl);
    ranks.use(r);
    in.emplace_back(count * sizeof(float));
    out.emplace_back(count * sizeof(float));
    wrong.emplace_back();
    fillExact<<<checkGrid(count), 256>>>(in[r].get<float>(), count, r, kSeed);
    CUDA_OK(cudaDeviceSynchronize());
  }
  for (int call = 0; call < 2; ++call) {  // the second orders itself after the first's end
    TPC_OK(tpcGroupStart());
    for (int r = 0; r < 2; ++r) {
      ranks.use(r);
      ASSERT_EQ(tpcSuccess, tpcAllReduce(in[r].get(), out[r].get(), count, tpcFloat32, tpcSum,
                                         ranks.comms[r], 0))
          << tpcCommGetLastError(ranks.comms[r]);
    }
    ASSERT_EQ(tpcSuccess, tpcGroupEnd()) << tpcCommGetLastError(nullptr);
    EXPECT_EQ(ranks.devices[1], currentDevice());
  }
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    checkExact<<<checkGrid(count), 256>>>(out[r].get<float>(), count, 2, kSeed, wrong[r].get());
    CUDA_OK(cudaDeviceSynchronize());
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
  }
}

// A thread driving ranks on several GPUs may end a rank inside the group that holds the rank's
// call for NCCL: the rank ends at tpcGroupEnd, after NCCL has issued that call and what waits for
// it has run, and its handle is done with at once.
TEST_F(NcclOnTwoGpus, ARankDestroyedInsideTheGroupOfItsCallEndsAtTheGroupsEnd) {
  Ranks& ranks = *ranks_;
  constexpr uint32_t kSeed = 89;
  const size_t count = 1 << 16;
  std::vector<DeviceBuffer> in, out;
  std::vector<Counter> wrong;
  for (int r = 0; r < 2; ++r) {
    ranks.comms[r]->impl->forceAlgorithm(tpcAlgoNccl);
    ranks.use(r);
    in.emplace_back(count * sizeof(float));
    out.emplace_back(count * sizeof(float));
    wrong.emplace_back();
    fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(in[r].get<float>(), count, r, kSeed);
  }
  TPC_OK(tpcGroupStart());
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(tpcSuccess, tpcAllReduce(in[r].get(), out[r].get(), count, tpcFloat32, tpcSum,
                                       ranks.comms[r], ranks.streams[r]))
        << tpcCommGetLastError(ranks.comms[r]);
  }
  const tpcComm_t ended = ranks.comms[0];
  ranks.comms[0] = nullptr;
  ASSERT_EQ(tpcSuccess, tpcCommDestroy(ended)) << tpcCommGetLastError(nullptr);
  EXPECT_EQ(tpcInvalidUsage, tpcAllReduce(in[0].get(), out[0].get(), count, tpcFloat32, tpcSum,
                                          ended, ranks.streams[0]));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(ended)).find("destroyed"));
  ASSERT_EQ(tpcSuccess, tpcGroupEnd()) << tpcCommGetLastError(nullptr);
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    checkExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(out[r].get<float>(), count, 2, kSeed,
                                                               wrong[r].get());
    CUDA_OK(cudaStreamSynchronize(ranks.streams[r]));
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
  }
}

// The same for tpcCommAbort, every rank aborted inside the group: the group's end issues the
// calls, then stops the ranks, and leaves the devices idle and usable.
TEST_F(NcclOnTwoGpus, RanksAbortedInsideTheGroupOfTheirCallsEndAtTheGroupsEnd) {
  Ranks& ranks = *ranks_;
  const size_t count = 1 << 16;
  std::vector<DeviceBuffer> bufs;
  for (int r = 0; r < 2; ++r) {
    ranks.comms[r]->impl->forceAlgorithm(tpcAlgoNccl);
    ranks.use(r);
    bufs.emplace_back(count * sizeof(float));
    CUDA_OK(cudaMemset(bufs[r].get(), 0, count * sizeof(float)));
  }
  TPC_OK(tpcGroupStart());
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(tpcSuccess, tpcAllReduce(bufs[r].get(), bufs[r].get(), count, tpcFloat32, tpcSum,
                                       ranks.comms[r], ranks.streams[r]))
        << tpcCommGetLastError(ranks.comms[r]);
  }
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(tpcSuccess, tpcCommAbort(ranks.comms[r])) << tpcCommGetLastError(nullptr);
    ranks.comms[r] = nullptr;
  }
  EXPECT_EQ(tpcSuccess, tpcGroupEnd()) << tpcCommGetLastError(nullptr);
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    CUDA_OK(cudaDeviceSynchronize());
  }
}

}  // namespace
}  // namespace testing
}  // namespace tpcomm
