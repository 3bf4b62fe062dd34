// Correctness of every algorithm at every world size, data type, size class and placement, with
// several ranks per GPU: exact sums, bitwise agreement between ranks, and float64 tolerance.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace testing {
namespace {

// 4095 and 4097 float32 elements lie on either side of the largest push one-shot launch whose tags
// one thread checks at three ranks and more (1024 vectors); at two ranks both do, and
// (1 << 20) + 3 gives a thread more than one vector, whose tags every thread checks.
constexpr size_t kCounts[] = {1, 7, 8, 4095, 4097, (size_t{1} << 20) + 3, size_t{64} << 20};
constexpr size_t kMaxCount = size_t{64} << 20;

struct RankBuffers {
  std::vector<DeviceBuffer> send, recv;
  std::vector<Counter> wrong;
  Counter differ;  // on rank 0's device
};

void allocate(const Ranks& ranks, size_t bytes, RankBuffers* b) {
  for (int r = 0; r < ranks.size(); ++r) {
    ranks.use(r);
    b->send.emplace_back(bytes);
    b->recv.emplace_back(bytes);
    b->wrong.emplace_back();
    ASSERT_NE(nullptr, b->send.back().get());
    ASSERT_NE(nullptr, b->recv.back().get());
  }
  ranks.use(0);
}

// One all-reduce on every rank, verified. `offset` elements shift both buffers off alignment.
template <typename T>
void runCase(const Ranks& ranks, RankBuffers& b, size_t count, bool inPlace, bool exact,
             uint32_t seed, size_t sendOffset = 0, size_t recvOffset = 0) {
  const int n = ranks.size();
  const std::string what = std::string(TypeInfo<T>::kName) + " count " + std::to_string(count) +
                           (inPlace ? " in place" : " out of place") +
                           (exact ? " exact" : " random") + " nranks " + std::to_string(n);
  std::vector<T*> in(n), out(n);
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    out[r] = b.recv[r].get<T>() + recvOffset;
    in[r] = inPlace ? out[r] : b.send[r].get<T>() + sendOffset;
    b.wrong[r].reset();
    // Poison the whole output first so that any element the all-reduce skips is caught.
    CUDA_OK(
        cudaMemsetAsync(b.recv[r].get(), 0xff, (count + recvOffset) * sizeof(T), ranks.streams[r]));
    if (exact) {
      fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(in[r], count, r, seed);
    } else {
      fillRandom<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(in[r], count, r, seed);
    }
    CUDA_OK(cudaGetLastError());
  }
  std::string message;
  ASSERT_EQ(tpcSuccess, allReduceAll(ranks, std::vector<const void*>(in.begin(), in.end()),
                                     std::vector<void*>(out.begin(), out.end()), count,
                                     TypeInfo<T>::kType, &message))
      << what << ": " << message;
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    if (exact) {
      checkExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(out[r], count, n, seed,
                                                                 b.wrong[r].get());
    } else {
      checkRandom<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(
          out[r], count, n, seed, outputEpsilon<T>(), b.wrong[r].get());
    }
  }
  CUDA_OK(ranks.syncAll());
  ranks.use(0);
  b.differ.reset();
  for (int r = 1; r < n; ++r) {
    countDifferentBits<<<checkGrid(count), 256>>>(out[r], out[0], count, b.differ.get());
  }
  CUDA_OK(cudaDeviceSynchronize());
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    EXPECT_EQ(0u, b.wrong[r].read()) << what << ": wrong elements on rank " << r;
  }
  ranks.use(0);
  EXPECT_EQ(0u, b.differ.read()) << what << ": ranks disagree bitwise";
}

class AllReduce : public ::testing::TestWithParam<std::tuple<int, tpcAlgorithm_t>> {};

template <typename T>
void sweep(const Ranks& ranks, RankBuffers& b, uint32_t* seed) {
  for (size_t count : kCounts) {
    for (bool inPlace : {false, true}) {
      for (bool exact : {true, false}) {
        runCase<T>(ranks, b, count, inPlace, exact, ++*seed);
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

TEST_P(AllReduce, EveryTypeCountAndPlacement) {
  SKIP_WITHOUT_GPU();
  const auto [nranks, algorithm] = GetParam();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.algorithm = algorithm;
  config.timeoutMs = 20000;
  Ranks ranks(nranks, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  RankBuffers b;
  allocate(ranks, kMaxCount * sizeof(float), &b);
  uint32_t seed = 1000u * nranks + algorithm;
  sweep<float>(ranks, b, &seed);
  sweep<__half>(ranks, b, &seed);
  sweep<__nv_bfloat16>(ranks, b, &seed);
}

std::string caseName(const ::testing::TestParamInfo<AllReduce::ParamType>& info) {
  return std::to_string(std::get<0>(info.param)) + "ranks_" +
         algorithmTestName(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(WorldSizesAndAlgorithms, AllReduce,
                         ::testing::Combine(::testing::Range(2, 9),
                                            ::testing::Values(tpcAlgoAuto, tpcAlgoOneShot,
                                                              tpcAlgoTwoShot, tpcAlgoPushOneShot,
                                                              tpcAlgoPushTwoShot)),
                         caseName);

// Buffers that start off 16-byte alignment take the element-wise path at both ends.
TEST(AllReduceAlignment, UnalignedBuffersAndOddCounts) {
  SKIP_WITHOUT_GPU();
  for (tpcAlgorithm_t algorithm : kKernelAlgorithms) {
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    config.algorithm = algorithm;
    config.timeoutMs = 20000;
    config.stagingBytes = 64 << 10;  // small, so that large counts are chunked
    config.pushBytes = 64 << 10;
    Ranks ranks(3, config);
    ASSERT_TRUE(ranks.ok()) << ranks.message;
    RankBuffers b;
    allocate(ranks, (size_t{1} << 20) * sizeof(float), &b);
    uint32_t seed = 77;
    for (size_t count : {size_t{1}, size_t{7}, size_t{9}, size_t{4095}, size_t{100003}}) {
      for (size_t sendOffset : {size_t{0}, size_t{1}, size_t{3}}) {
        const size_t recvOffset = (sendOffset + 2) % 4;
        runCase<__half>(ranks, b, count, false, true, ++seed, sendOffset, recvOffset);
        runCase<float>(ranks, b, count, false, true, ++seed, sendOffset, recvOffset);
        runCase<__nv_bfloat16>(ranks, b, count, true, true, ++seed, 0, recvOffset);
        if (HasFailure()) return;
      }
    }
  }
}

// Chunking: messages many times the staging or receive buffers, with a tail chunk.
TEST(AllReduceChunks, MessagesLargerThanTheBuffers) {
  SKIP_WITHOUT_GPU();
  for (tpcAlgorithm_t algorithm : kKernelAlgorithms) {
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    config.algorithm = algorithm;
    config.stagingBytes = 64 << 10;
    config.pushBytes = 64 << 10;
    config.timeoutMs = 20000;
    Ranks ranks(4, config);
    ASSERT_TRUE(ranks.ok()) << ranks.message;
    RankBuffers b;
    allocate(ranks, (size_t{3} << 20) * sizeof(float), &b);
    uint32_t seed = 5;
    for (size_t count : {(size_t{64} << 10) / 2, (size_t{64} << 10) / 2 + 1, size_t{3} << 20}) {
      runCase<__nv_bfloat16>(ranks, b, count, false, true, ++seed);
      runCase<float>(ranks, b, count, true, false, ++seed);
    }
  }
}

// Two ranks split the warps of push two-shot launches of more than 32 MiB by role
// (device::kByRoleBytes): odd counts and offsets on either side of that size, in and out of place,
// a message of two such launches, and small calls between them that run the other kernels on the
// same buffers' rotation.
TEST(AllReduceByRole, LaunchesOfMoreThan32MiBAtTwoRanks) {
  SKIP_WITHOUT_GPU();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.algorithm = tpcAlgoPushTwoShot;
  config.timeoutMs = 20000;
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  constexpr size_t kMiB = size_t{1} << 20;
  const size_t twoLaunches = 25 * kMiB + 3;  // float32: 100 MiB, two launches of 50
  RankBuffers b;
  allocate(ranks, (twoLaunches + 4) * sizeof(float), &b);
  uint32_t seed = 4242;
  for (size_t offset : {size_t{0}, size_t{1}, size_t{3}}) {
    const size_t other = (offset + 2) % 4;
    runCase<float>(ranks, b, 8 * kMiB + 1 + offset, false, false, ++seed, offset, other);
    runCase<__half>(ranks, b, 16 * kMiB - offset, true, true, ++seed, 0, other);
    runCase<__nv_bfloat16>(ranks, b, 24 * kMiB + 5 + offset, false, true, ++seed, offset, offset);
    runCase<__nv_bfloat16>(ranks, b, 1000 + offset, false, true, ++seed);
    runCase<float>(ranks, b, twoLaunches, true, false, ++seed, 0, offset);
    runCase<__half>(ranks, b, 3 + offset, true, true, ++seed);
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace testing
}  // namespace tpcomm
