// All-reduces captured in CUDA graphs: the kernels advance their barrier counters and
// receive-buffer rotations in device memory, so a graph replays any number of times, interleaved
// with eager calls, whatever algorithm it holds.
#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace testing {
namespace {

constexpr int kCalls = 100;
constexpr int kReplays = 10;

// Small odd sizes, with every fourth call large enough for two-shot above two ranks.
size_t countOf(int call) { return call % 4 == 0 ? 300000 + call : 1 + 97 * call; }

class GraphReplay : public ::testing::TestWithParam<std::tuple<int, tpcAlgorithm_t>> {};

TEST_P(GraphReplay, HundredAllReducesReplayedTenTimesWithFreshInputs) {
  SKIP_WITHOUT_GPU();
  using T = __nv_bfloat16;
  const int n = std::get<0>(GetParam());
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = 20000;
  config.algorithm = std::get<1>(GetParam());
  Ranks ranks(n, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;

  std::vector<size_t> offset(kCalls + 1, 0);
  for (int k = 0; k < kCalls; ++k) offset[k + 1] = offset[k] + countOf(k);
  std::vector<DeviceBuffer> in, out;
  std::vector<Counter> wrong;
  std::vector<cudaGraphExec_t> exec(n, nullptr);
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    in.emplace_back(offset[kCalls] * sizeof(T));
    out.emplace_back(offset[kCalls] * sizeof(T));
    wrong.emplace_back();
  }

  // Capture each rank's 100 calls in turn from this one thread; nothing runs during capture.
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    cudaGraph_t graph;
    CUDA_OK(cudaStreamBeginCapture(ranks.streams[r], cudaStreamCaptureModeThreadLocal));
    for (int k = 0; k < kCalls; ++k) {
      ASSERT_EQ(tpcSuccess,
                tpcAllReduce(in[r].get<T>() + offset[k], out[r].get<T>() + offset[k], countOf(k),
                             tpcBfloat16, tpcSum, ranks.comms[r], ranks.streams[r]))
          << tpcCommGetLastError(ranks.comms[r]);
    }
    CUDA_OK(cudaStreamEndCapture(ranks.streams[r], &graph));
    CUDA_OK(cudaGraphInstantiate(&exec[r], graph, 0));
    CUDA_OK(cudaGraphDestroy(graph));
  }

  for (int replay = 0; replay < kReplays; ++replay) {
    for (int r = 0; r < n; ++r) {
      ranks.use(r);
      CUDA_OK(cudaMemsetAsync(out[r].get(), 0xff, offset[kCalls] * sizeof(T), ranks.streams[r]));
      for (int k = 0; k < kCalls; ++k) {
        fillExact<<<checkGrid(countOf(k)), 256, 0, ranks.streams[r]>>>(
            in[r].get<T>() + offset[k], countOf(k), r, replay * 1000u + k);
      }
    }
    for (int r = 0; r < n; ++r) {
      ranks.use(r);
      CUDA_OK(cudaGraphLaunch(exec[r], ranks.streams[r]));
    }
    for (int r = 0; r < n; ++r) {
      ranks.use(r);
      for (int k = 0; k < kCalls; ++k) {
        checkExact<<<checkGrid(countOf(k)), 256, 0, ranks.streams[r]>>>(
            out[r].get<T>() + offset[k], countOf(k), n, replay * 1000u + k, wrong[r].get());
      }
    }
  }
  CUDA_OK(ranks.syncAll());

  // An eager call after the replays continues from the counters the graphs left behind.
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    fillExact<<<checkGrid(countOf(1)), 256, 0, ranks.streams[r]>>>(in[r].get<T>(), countOf(1), r,
                                                                   4242u);
  }
  std::vector<const void*> inputs;
  std::vector<void*> outputs;
  for (int r = 0; r < n; ++r) {
    inputs.push_back(in[r].get());
    outputs.push_back(out[r].get());
  }
  ASSERT_EQ(tpcSuccess, allReduceAll(ranks, inputs, outputs, countOf(1), tpcBfloat16));
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    checkExact<<<checkGrid(countOf(1)), 256, 0, ranks.streams[r]>>>(out[r].get<T>(), countOf(1), n,
                                                                    4242u, wrong[r].get());
  }
  CUDA_OK(ranks.syncAll());
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
    CUDA_OK(cudaGraphExecDestroy(exec[r]));
  }
}

INSTANTIATE_TEST_SUITE_P(WorldSizesAndAlgorithms, GraphReplay,
                         ::testing::Combine(::testing::Values(2, 5, 8),
                                            ::testing::Values(tpcAlgoAuto, tpcAlgoOneShot,
                                                              tpcAlgoPushOneShot,
                                                              tpcAlgoPushTwoShot)),
                         [](const ::testing::TestParamInfo<GraphReplay::ParamType>& info) {
                           return std::to_string(std::get<0>(info.param)) + "ranks_" +
                                  algorithmTestName(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace testing
}  // namespace tpcomm
