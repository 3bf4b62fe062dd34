// Zero-copy all-reduces: captured calls of the pull kernels that read their peers' inputs in place
// once the graph's buffers are registered, eager calls on registered buffers, and the lifetime of
// registrations. (The push kernels read only their own rank's input and need no registration.)
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "gpu_test_util.cuh"
#include "tpcomm/tpcomm.h"
#include "vmm_buffer.h"

namespace tpcomm {
namespace testing {
namespace {

using T = __nv_bfloat16;

// Registration is collective: every rank's call runs on a thread of its own.
tpcResult_t onEveryRank(const Ranks& ranks, const std::function<tpcResult_t(int)>& call) {
  std::vector<tpcResult_t> results(ranks.size(), tpcSuccess);
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks.size(); ++r) {
    threads.emplace_back([&, r] {
      cudaSetDevice(ranks.devices[r]);
      results[r] = call(r);
    });
  }
  for (std::thread& t : threads) t.join();
  for (tpcResult_t res : results) {
    if (res != tpcSuccess) return res;
  }
  return tpcSuccess;
}

// Registers buffers[r] (bytes long) on every rank; the handles land in *handles.
tpcResult_t registerOnEveryRank(const Ranks& ranks, const std::vector<void*>& buffers, size_t bytes,
                                std::vector<void*>* handles) {
  handles->assign(ranks.size(), nullptr);
  return onEveryRank(ranks, [&](int r) {
    return tpcCommRegister(ranks.comms[r], buffers[r], bytes, &(*handles)[r]);
  });
}

tpcResult_t deregisterOnEveryRank(const Ranks& ranks, const std::vector<void*>& handles) {
  return onEveryRank(ranks, [&](int r) { return tpcCommDeregister(ranks.comms[r], handles[r]); });
}

tpcResult_t registerGraphs(const Ranks& ranks) {
  return onEveryRank(ranks, [&](int r) { return tpcCommRegisterGraphBuffers(ranks.comms[r]); });
}

// The calls of a graph: input and output offsets (elements) inside one allocation per rank, as a
// caching allocator hands them out. Every rank places them differently.
struct Call {
  size_t in, out, count;
};

std::vector<Call> layoutCalls(int rank, int calls, size_t* elements) {
  std::vector<Call> out;
  size_t at = 64 * (rank + 1) + 8 * rank;  // a different start on every rank, 16-byte aligned
  for (int k = 0; k < calls; ++k) {
    const size_t count = k % 5 == 0 ? 300000 + k : 1 + 131 * k;
    out.push_back(Call{at, at + count + 8, count});
    at += 2 * count + 16;
    at = (at + 7) / 8 * 8;
  }
  *elements = at;
  return out;
}

class ZeroCopyGraph : public ::testing::TestWithParam<std::tuple<int, tpcAlgorithm_t>> {
 protected:
  void SetUp() override {
    if (gpuCount() == 0) GTEST_SKIP() << "no CUDA device";
    n_ = std::get<0>(GetParam());
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    config.algorithm = std::get<1>(GetParam());
    config.zeroCopyGraphs = 1;
    config.stagingBytes = 256 << 10;  // the largest calls run in several chunks
    ranks_ = std::make_unique<Ranks>(n_, config);
    ASSERT_TRUE(ranks_->ok()) << ranks_->message;
  }

  // Captures `calls` all-reduces of every rank into one graph per rank, on `streams`.
  void capture(int calls, std::vector<cudaStream_t>& streams, std::vector<cudaGraphExec_t>* execs,
               std::vector<std::vector<Call>>* layouts) {
    for (int r = 0; r < n_; ++r) {
      ranks_->use(r);
      size_t elements = 0;
      layouts->push_back(layoutCalls(r, calls, &elements));
      if (vmm_) {
        vmmBlocks_.push_back(std::make_unique<VmmBuffer>(elements * sizeof(T)));
        ASSERT_TRUE(vmmBlocks_.back()->ok()) << "cuMem allocation failed";
        blocks_.push_back(vmmBlocks_.back()->get<T>());
      } else {
        mallocBlocks_.emplace_back(elements * sizeof(T));
        blocks_.push_back(mallocBlocks_.back().get<T>());
      }
      cudaGraph_t graph;
      CUDA_OK(cudaStreamBeginCapture(streams[r], cudaStreamCaptureModeThreadLocal));
      for (const Call& c : layouts->back()) {
        T* base = blocks_.back();
        ASSERT_EQ(tpcSuccess, tpcAllReduce(base + c.in, base + c.out, c.count, tpcBfloat16, tpcSum,
                                           ranks_->comms[r], streams[r]))
            << tpcCommGetLastError(ranks_->comms[r]);
      }
      CUDA_OK(cudaStreamEndCapture(streams[r], &graph));
      execs->emplace_back();
      CUDA_OK(cudaGraphInstantiate(&execs->back(), graph, 0));
      CUDA_OK(cudaGraphDestroy(graph));
    }
  }

  // Fresh inputs, poisoned outputs, one replay on every rank's stream, exact check.
  void replayAndCheck(std::vector<cudaGraphExec_t>& execs, std::vector<std::vector<Call>>& layouts,
                      size_t block0, uint32_t seed, std::vector<Counter>& wrong) {
    for (int r = 0; r < n_; ++r) {
      ranks_->use(r);
      T* base = blocks_[block0 + r];
      for (size_t k = 0; k < layouts[r].size(); ++k) {
        const Call& c = layouts[r][k];
        fillExact<<<checkGrid(c.count), 256, 0, ranks_->streams[r]>>>(base + c.in, c.count, r,
                                                                      seed + k);
        CUDA_OK(cudaMemsetAsync(base + c.out, 0xff, c.count * sizeof(T), ranks_->streams[r]));
      }
    }
    for (int r = 0; r < n_; ++r) {
      ranks_->use(r);
      CUDA_OK(cudaGraphLaunch(execs[r], ranks_->streams[r]));
    }
    for (int r = 0; r < n_; ++r) {
      ranks_->use(r);
      T* base = blocks_[block0 + r];
      for (size_t k = 0; k < layouts[r].size(); ++k) {
        const Call& c = layouts[r][k];
        checkExact<<<checkGrid(c.count), 256, 0, ranks_->streams[r]>>>(base + c.out, c.count, n_,
                                                                       seed + k, wrong[r].get());
      }
    }
    CUDA_OK(ranks_->syncAll());
  }

  // Captures 40 calls per rank, registers, checks that every slot reads in place, and replays
  // five times with fresh inputs.
  void readInPlaceAfterRegistration() {
    std::vector<cudaGraphExec_t> execs;
    std::vector<std::vector<Call>> layouts;
    capture(40, ranks_->streams, &execs, &layouts);
    tpcMemoryInfo_t before;
    TPC_OK(tpcCommGetMemoryInfo(ranks_->comms[0], &before));
    EXPECT_EQ(40, before.slotsUsed) << "one slot per captured call";
    ASSERT_EQ(tpcSuccess, registerGraphs(*ranks_)) << tpcCommGetLastError(ranks_->comms[0]);
    for (int r = 0; r < n_; ++r) {
      tpcMemoryInfo_t info;
      TPC_OK(tpcCommGetMemoryInfo(ranks_->comms[r], &info));
      EXPECT_EQ(0, info.slotsStaged) << "the inputs are read in place, rank " << r;
    }
    std::vector<Counter> wrong;
    for (int r = 0; r < n_; ++r) {
      ranks_->use(r);
      wrong.emplace_back();
    }
    for (uint32_t replay = 0; replay < 5; ++replay) {
      replayAndCheck(execs, layouts, 0, 1000 * replay, wrong);
    }
    for (int r = 0; r < n_; ++r) {
      ranks_->use(r);
      EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
      tpcResult_t async;
      TPC_OK(tpcCommGetAsyncError(ranks_->comms[r], &async));
      EXPECT_EQ(tpcSuccess, async) << tpcCommGetLastError(ranks_->comms[r]);
      CUDA_OK(cudaGraphExecDestroy(execs[r]));
    }
  }

  // Every rank captures `calls` calls into a graph; then the ranks register them, and replay the
  // graphs once with fresh inputs (from `seed`), every output exact.
  void captureRegisterAndReplay(int calls, uint32_t seed) {
    const size_t block0 = blocks_.size();
    std::vector<cudaGraphExec_t> execs;
    std::vector<std::vector<Call>> layouts;
    capture(calls, ranks_->streams, &execs, &layouts);
    ASSERT_EQ(tpcSuccess, registerGraphs(*ranks_)) << tpcCommGetLastError(ranks_->comms[0]);
    std::vector<Counter> wrong;
    for (int r = 0; r < n_; ++r) {
      ranks_->use(r);
      wrong.emplace_back();
    }
    replayAndCheck(execs, layouts, block0, seed, wrong);
    for (int r = 0; r < n_; ++r) {
      ranks_->use(r);
      EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
      CUDA_OK(cudaGraphExecDestroy(execs[r]));
    }
  }

  int n_ = 0;
  bool vmm_ = false;  // inputs in cuMem memory instead of cudaMalloc memory
  std::unique_ptr<Ranks> ranks_;
  std::vector<T*> blocks_;
  std::vector<DeviceBuffer> mallocBlocks_;
  std::vector<std::unique_ptr<VmmBuffer>> vmmBlocks_;
};

TEST_P(ZeroCopyGraph, SubAllocatedInputsReadInPlaceAfterRegistration) {
  readInPlaceAfterRegistration();
}

TEST_P(ZeroCopyGraph, CuMemInputsReadInPlaceAfterRegistration) {
  vmm_ = true;
  readInPlaceAfterRegistration();
}

TEST_P(ZeroCopyGraph, SeveralGraphsOnSeveralStreamsReplayedInAnyOrder) {
  std::vector<cudaStream_t> second(n_);
  for (int r = 0; r < n_; ++r) {
    ranks_->use(r);
    CUDA_OK(cudaStreamCreateWithFlags(&second[r], cudaStreamNonBlocking));
  }
  std::vector<cudaGraphExec_t> a, b;
  std::vector<std::vector<Call>> layoutA, layoutB;
  capture(12, ranks_->streams, &a, &layoutA);
  capture(17, second, &b, &layoutB);
  ASSERT_EQ(tpcSuccess, registerGraphs(*ranks_)) << tpcCommGetLastError(ranks_->comms[0]);
  std::vector<Counter> wrong;
  for (int r = 0; r < n_; ++r) {
    ranks_->use(r);
    wrong.emplace_back();
  }
  // A rank's calls must not overlap: every replay goes to the rank's first stream.
  const char order[] = "ABBAABAB";
  for (int i = 0; order[i] != '\0'; ++i) {
    if (order[i] == 'A') {
      replayAndCheck(a, layoutA, 0, 77 * i, wrong);
    } else {
      replayAndCheck(b, layoutB, n_, 77 * i, wrong);
    }
  }
  for (int r = 0; r < n_; ++r) {
    ranks_->use(r);
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
    CUDA_OK(cudaGraphExecDestroy(a[r]));
    CUDA_OK(cudaGraphExecDestroy(b[r]));
    CUDA_OK(cudaStreamDestroy(second[r]));
  }
}

TEST_P(ZeroCopyGraph, LaunchBeforeRegistrationFailsLoudly) {
  std::vector<cudaGraphExec_t> execs;
  std::vector<std::vector<Call>> layouts;
  capture(3, ranks_->streams, &execs, &layouts);
  for (int r = 0; r < n_; ++r) {
    ranks_->use(r);
    CUDA_OK(cudaGraphLaunch(execs[r], ranks_->streams[r]));
  }
  CUDA_OK(ranks_->syncAll());  // must not hang
  for (int r = 0; r < n_; ++r) {
    tpcResult_t async = tpcSuccess;
    TPC_OK(tpcCommGetAsyncError(ranks_->comms[r], &async));
    EXPECT_EQ(tpcInvalidUsage, async);
    const std::string message = tpcCommGetLastError(ranks_->comms[r]);
    EXPECT_NE(std::string::npos, message.find("tpcCommRegisterGraphBuffers")) << message;
    ranks_->use(r);
    CUDA_OK(cudaGraphExecDestroy(execs[r]));
  }
}

TEST_P(ZeroCopyGraph, RanksMustCaptureTheSameNumberOfCalls) {
  ranks_->use(0);
  DeviceBuffer buf(1024 * sizeof(T));
  cudaGraph_t graph;
  CUDA_OK(cudaStreamBeginCapture(ranks_->streams[0], cudaStreamCaptureModeThreadLocal));
  ASSERT_EQ(tpcSuccess, tpcAllReduce(buf.get<T>(), buf.get<T>() + 512, 512, tpcBfloat16, tpcSum,
                                     ranks_->comms[0], ranks_->streams[0]));
  CUDA_OK(cudaStreamEndCapture(ranks_->streams[0], &graph));
  CUDA_OK(cudaGraphDestroy(graph));
  EXPECT_EQ(tpcInvalidUsage, registerGraphs(*ranks_));
  EXPECT_NE(std::string::npos, std::string(tpcCommGetLastError(ranks_->comms[0])).find("disagree"));
  // The failed registration dropped rank 0's stray call: the ranks' next captures pair up.
  captureRegisterAndReplay(3, 600);
}

// A call into a capture that an earlier operation invalidated is refused with a sentence and takes
// no slot: after the ranks capture again, their captured calls still pair up at registration.
TEST_P(ZeroCopyGraph, AnInvalidatedCaptureTakesNoSlot) {
  ranks_->use(0);
  DeviceBuffer buf(1024 * sizeof(T));
  cudaStream_t stream = ranks_->streams[0];
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  EXPECT_NE(cudaSuccess, cudaStreamSynchronize(stream)) << "illegal while capturing";
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  CUDA_OK(cudaStreamIsCapturing(stream, &status));
  ASSERT_EQ(cudaStreamCaptureStatusInvalidated, status);
  EXPECT_EQ(tpcInvalidUsage, tpcAllReduce(buf.get<T>(), buf.get<T>() + 512, 512, tpcBfloat16,
                                          tpcSum, ranks_->comms[0], stream));
  const std::string message = tpcCommGetLastError(ranks_->comms[0]);
  EXPECT_NE(std::string::npos, message.find("invalidated the stream's graph capture")) << message;
  cudaGraph_t graph = nullptr;
  EXPECT_NE(cudaSuccess, cudaStreamEndCapture(stream, &graph));
  cudaGetLastError();
  tpcMemoryInfo_t info;
  TPC_OK(tpcCommGetMemoryInfo(ranks_->comms[0], &info));
  EXPECT_EQ(0, info.slotsUsed);

  captureRegisterAndReplay(3, 500);
}

INSTANTIATE_TEST_SUITE_P(WorldSizesAndPullKernels, ZeroCopyGraph,
                         ::testing::Combine(::testing::Values(2, 4, 8),
                                            ::testing::Values(tpcAlgoOneShot, tpcAlgoTwoShot)),
                         [](const ::testing::TestParamInfo<ZeroCopyGraph::ParamType>& info) {
                           return std::to_string(std::get<0>(info.param)) + "ranks_" +
                                  algorithmTestName(std::get<1>(info.param));
                         });

// The pull kernels that read registered buffers in place.
tpcConfig_t pullConfig(tpcAlgorithm_t algorithm = tpcAlgoOneShot) {
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.algorithm = algorithm;
  return config;
}

TEST(ZeroCopyEager, RegisteredBuffersSkipTheCopy) {
  SKIP_WITHOUT_GPU();
  const int n = 3;
  Ranks ranks(n, pullConfig());
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const size_t elements = size_t{1} << 21;
  std::vector<DeviceBuffer> in, out;
  std::vector<Counter> wrong;
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    in.emplace_back(elements * sizeof(T));
    out.emplace_back(elements * sizeof(T));
    wrong.emplace_back();
  }
  std::vector<void*> handles, buffers;
  for (int r = 0; r < n; ++r) buffers.push_back(in[r].get());
  ASSERT_EQ(tpcSuccess, registerOnEveryRank(ranks, buffers, elements * sizeof(T), &handles));
  for (int r = 0; r < n; ++r) {
    tpcMemoryInfo_t info;
    TPC_OK(tpcCommGetMemoryInfo(ranks.comms[r], &info));
    EXPECT_EQ(0, info.slotsStaged) << "a registered cudaMalloc buffer is read in place";
  }
  // Every rank calls at the same offsets into its registered buffer; an offset that is not a
  // whole 16-byte vector (3 elements) copies through staging for that call.
  uint32_t seed = 9;
  for (size_t offset : {size_t{0}, size_t{3}, size_t{8}, size_t{4096}, size_t{1} << 20}) {
    for (size_t count : {size_t{1}, size_t{4095}, size_t{100003}}) {
      for (int r = 0; r < n; ++r) {
        ranks.use(r);
        fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(in[r].get<T>() + offset, count, r,
                                                                  seed);
        CUDA_OK(cudaMemsetAsync(out[r].get(), 0xff, count * sizeof(T), ranks.streams[r]));
      }
      for (int r = 0; r < n; ++r) {
        ASSERT_EQ(tpcSuccess, tpcAllReduce(in[r].get<T>() + offset, out[r].get(), count,
                                           tpcBfloat16, tpcSum, ranks.comms[r], ranks.streams[r]));
      }
      for (int r = 0; r < n; ++r) {
        ranks.use(r);
        checkExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(out[r].get<T>(), count, n, seed,
                                                                   wrong[r].get());
      }
      ++seed;
    }
  }
  CUDA_OK(ranks.syncAll());
  ASSERT_EQ(tpcSuccess, deregisterOnEveryRank(ranks, handles));
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
  }
}

// Ranks that call at different offsets into their registered buffers would each read its peers at
// its own offset, which is not where their inputs lie: the call fails as one whose ranks made
// different calls, instead of summing the wrong elements.
TEST(ZeroCopyEager, CallsAtDifferentOffsetsFailLoudly) {
  SKIP_WITHOUT_GPU();
  tpcConfig_t config = pullConfig();
  config.timeoutMs = 10000;
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const size_t elements = size_t{1} << 16, count = 4096;
  std::vector<DeviceBuffer> in, out;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    in.emplace_back(elements * sizeof(T));
    out.emplace_back(count * sizeof(T));
  }
  std::vector<void*> handles;
  ASSERT_EQ(tpcSuccess,
            registerOnEveryRank(ranks, {in[0].get(), in[1].get()}, elements * sizeof(T), &handles));
  for (int r = 0; r < 2; ++r) {
    const size_t offset = r == 0 ? 0 : 8192;  // elements, 16-byte aligned on both ranks
    ASSERT_EQ(tpcSuccess, tpcAllReduce(in[r].get<T>() + offset, out[r].get(), count, tpcBfloat16,
                                       tpcSum, ranks.comms[r], ranks.streams[r]));
  }
  CUDA_OK(ranks.syncAll());
  for (int r = 0; r < 2; ++r) {
    tpcResult_t async = tpcSuccess;
    TPC_OK(tpcCommGetAsyncError(ranks.comms[r], &async));
    EXPECT_EQ(tpcInvalidUsage, async) << "rank " << r;
    const std::string message = tpcCommGetLastError(ranks.comms[r]);
    EXPECT_NE(std::string::npos, message.find("different")) << message;
  }
}

// Memory that cannot be shared still gives right answers: its calls copy through staging.
TEST(ZeroCopyEager, UnshareableMemoryFallsBackToStaging) {
  SKIP_WITHOUT_GPU();
  const int n = 2;
  Ranks ranks(n, pullConfig());
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const size_t count = 10001;
  std::vector<T*> host(n, nullptr);
  std::vector<DeviceBuffer> out;
  std::vector<Counter> wrong;
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    CUDA_OK(cudaMallocHost(&host[r], count * sizeof(T)));
    out.emplace_back(count * sizeof(T));
    wrong.emplace_back();
  }
  std::vector<void*> handles;
  ASSERT_EQ(tpcSuccess, registerOnEveryRank(ranks, std::vector<void*>(host.begin(), host.end()),
                                            count * sizeof(T), &handles));
  for (int r = 0; r < n; ++r) {
    tpcMemoryInfo_t info;
    TPC_OK(tpcCommGetMemoryInfo(ranks.comms[r], &info));
    EXPECT_EQ(1, info.slotsStaged) << "pinned host memory cannot be shared, rank " << r;
    ranks.use(r);
    fillExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(host[r], count, r, 31);
  }
  for (int r = 0; r < n; ++r) {
    ASSERT_EQ(tpcSuccess, tpcAllReduce(host[r], out[r].get(), count, tpcBfloat16, tpcSum,
                                       ranks.comms[r], ranks.streams[r]));
  }
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    checkExact<<<checkGrid(count), 256, 0, ranks.streams[r]>>>(out[r].get<T>(), count, n, 31,
                                                               wrong[r].get());
  }
  CUDA_OK(ranks.syncAll());
  ASSERT_EQ(tpcSuccess, deregisterOnEveryRank(ranks, handles));
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    EXPECT_EQ(0u, wrong[r].read()) << "rank " << r;
    tpcMemoryInfo_t info;
    TPC_OK(tpcCommGetMemoryInfo(ranks.comms[r], &info));
    EXPECT_EQ(0, info.slotsStaged);
    CUDA_OK(cudaFreeHost(host[r]));
  }
}

TEST(ZeroCopyEager, ThousandRegistrationCyclesLeakNothing) {
  SKIP_WITHOUT_GPU();
  const int n = 2;
  Ranks ranks(n, pullConfig());
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  std::vector<DeviceBuffer> bufs;
  for (int r = 0; r < n; ++r) {
    ranks.use(r);
    bufs.emplace_back(1 << 20);
  }
  std::vector<void*> buffers;
  for (DeviceBuffer& buf : bufs) buffers.push_back(buf.get());
  tpcMemoryInfo_t baseline;
  TPC_OK(tpcCommGetMemoryInfo(ranks.comms[0], &baseline));
  size_t freeBefore = 0, freeAfter = 0, total = 0;
  ranks.use(0);
  CUDA_OK(cudaMemGetInfo(&freeBefore, &total));
  for (int cycle = 0; cycle < 1000; ++cycle) {
    std::vector<void*> handles;
    ASSERT_EQ(tpcSuccess, registerOnEveryRank(ranks, buffers, 1 << 20, &handles))
        << "cycle " << cycle;
    ASSERT_EQ(tpcSuccess, deregisterOnEveryRank(ranks, handles)) << "cycle " << cycle;
  }
  ranks.use(0);
  CUDA_OK(cudaMemGetInfo(&freeAfter, &total));
  tpcMemoryInfo_t after;
  TPC_OK(tpcCommGetMemoryInfo(ranks.comms[0], &after));
  EXPECT_EQ(baseline.slotsUsed, after.slotsUsed);
  EXPECT_EQ(baseline.peerBytes, after.peerBytes);
  EXPECT_EQ(baseline.deviceBytes, after.deviceBytes);
  EXPECT_LE(freeBefore - std::min(freeBefore, freeAfter), size_t{4} << 20)
      << "device memory must not grow with registrations";
}

TEST(ZeroCopyEager, MemoryInfoCountsWhatTheRankHolds) {
  SKIP_WITHOUT_GPU();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.stagingBytes = 1 << 20;
  config.pushBytes = 2 << 20;
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  tpcMemoryInfo_t info;
  TPC_OK(tpcCommGetMemoryInfo(ranks.comms[0], &info));
  EXPECT_GE(info.stagingBytes, size_t{3} << 19) << "staging and scratch at least";
  EXPECT_LT(info.stagingBytes, size_t{2} << 20);
  // Two ranks: push one-shot 3 x 2 MiB, push two-shot 3 x (2 x 1 MiB), plus a tag line a slot.
  EXPECT_GE(info.receiveBytes, size_t{12} << 20);
  EXPECT_LT(info.receiveBytes, size_t{13} << 20);
  EXPECT_GE(info.deviceBytes, info.stagingBytes + info.receiveBytes);
  EXPECT_LT(info.deviceBytes, info.stagingBytes + info.receiveBytes + (size_t{1} << 20));
  EXPECT_EQ(0, info.slotsUsed);
  EXPECT_GT(info.slots, 0);
  EXPECT_EQ(tpcInvalidArgument, tpcCommGetMemoryInfo(ranks.comms[0], nullptr));
}

// Ranks must register buffers of the same size: calls read every rank's buffer at the same
// offsets. All ranks fail, and none is left holding a registration.
TEST(ZeroCopyEager, RegistrationsOfDifferentSizesAreRefused) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(2, pullConfig());
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  std::vector<DeviceBuffer> bufs;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    bufs.emplace_back(1 << 20);
  }
  std::vector<void*> handles(2, nullptr);
  const tpcResult_t res = onEveryRank(ranks, [&](int r) {
    return tpcCommRegister(ranks.comms[r], bufs[r].get(), r == 0 ? 1 << 20 : 1 << 19, &handles[r]);
  });
  EXPECT_EQ(tpcInvalidUsage, res);
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(std::string::npos,
              std::string(tpcCommGetLastError(ranks.comms[r])).find("different sizes"))
        << tpcCommGetLastError(ranks.comms[r]);
    tpcMemoryInfo_t info;
    TPC_OK(tpcCommGetMemoryInfo(ranks.comms[r], &info));
    EXPECT_EQ(0, info.slotsUsed);
  }
}

// Registration is collective: a rank that refuses its call (no buffer, no size) still tells its
// peers, which fail at once naming it instead of waiting for it until the timeout (a minute here),
// and every rank stays in step for the next registration.
TEST(ZeroCopyEager, ARankThatRefusesItsRegistrationIsNamedAtOnce) {
  SKIP_WITHOUT_GPU();
  tpcConfig_t config = pullConfig();
  config.timeoutMs = 60000;
  Ranks ranks(2, config);
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  constexpr size_t kBytes = 1 << 20;
  std::vector<DeviceBuffer> bufs;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    bufs.emplace_back(kBytes);
  }
  for (bool noBuffer : {true, false}) {
    std::vector<void*> handles(2, nullptr);
    std::vector<tpcResult_t> results(2, tpcSuccess);
    const auto start = std::chrono::steady_clock::now();
    onEveryRank(ranks, [&](int r) {
      const bool refuses = r == 0;
      results[r] = tpcCommRegister(ranks.comms[r], refuses && noBuffer ? nullptr : bufs[r].get(),
                                   refuses && !noBuffer ? 0 : kBytes, &handles[r]);
      return results[r];
    });
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_LT(seconds, 10.0) << "rank 1 waited for rank 0";
    EXPECT_EQ(tpcInvalidArgument, results[0]);
    EXPECT_EQ(tpcRemoteError, results[1]);
    const std::string message = tpcCommGetLastError(ranks.comms[1]);
    EXPECT_NE(std::string::npos, message.find("rank 0 failed while registering a buffer"))
        << message;
    EXPECT_NE(std::string::npos, message.find("needs a buffer, a size and a handle")) << message;
  }
  std::vector<void*> handles;
  ASSERT_EQ(tpcSuccess,
            registerOnEveryRank(ranks, {bufs[0].get(), bufs[1].get()}, kBytes, &handles))
      << tpcCommGetLastError(ranks.comms[0]) << " / " << tpcCommGetLastError(ranks.comms[1]);
  EXPECT_EQ(tpcSuccess, deregisterOnEveryRank(ranks, handles));
}

// A call uses the first registration that holds its input, so a buffer that overlaps a registered
// one is refused on every rank: rank 0's calls into it would read rank 1's first buffer, rank 1's
// its second. A buffer right after a registered one is not refused.
TEST(ZeroCopyEager, OverlappingRegistrationsAreRefused) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(2, pullConfig());
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  constexpr size_t kMiB = size_t{1} << 20;
  std::vector<DeviceBuffer> bufs;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    bufs.emplace_back(2 * kMiB);
  }
  auto at = [&](int r, size_t offset) { return bufs[r].get<char>() + offset; };
  std::vector<void*> first, next;
  ASSERT_EQ(tpcSuccess, registerOnEveryRank(ranks, {at(0, 0), at(1, 0)}, kMiB, &first));

  std::vector<void*> handles(2, nullptr);
  const tpcResult_t res = onEveryRank(ranks, [&](int r) {
    // Rank 0's lies inside its first buffer; rank 1's after it.
    return tpcCommRegister(ranks.comms[r], at(r, r == 0 ? kMiB / 2 : kMiB), kMiB / 4, &handles[r]);
  });
  EXPECT_EQ(tpcInvalidUsage, res);
  for (int r = 0; r < 2; ++r) {
    const std::string message = tpcCommGetLastError(ranks.comms[r]);
    EXPECT_NE(std::string::npos, message.find("rank 0 registers a buffer that overlaps"))
        << "rank " << r << ": " << message;
    tpcMemoryInfo_t info;
    TPC_OK(tpcCommGetMemoryInfo(ranks.comms[r], &info));
    EXPECT_EQ(1, info.slotsUsed) << "rank " << r;
  }

  ASSERT_EQ(tpcSuccess, registerOnEveryRank(ranks, {at(0, kMiB), at(1, kMiB)}, kMiB / 4, &next));
  EXPECT_EQ(tpcSuccess, deregisterOnEveryRank(ranks, next));
  EXPECT_EQ(tpcSuccess, deregisterOnEveryRank(ranks, first));
}

// A graph captured while a buffer was registered, replayed after the registration was replaced
// by another in the same slot, fails instead of reading the other buffer.
TEST(ZeroCopyEager, GraphOfAReplacedRegistrationFails) {
  SKIP_WITHOUT_GPU();
  Ranks ranks(2, pullConfig());
  ASSERT_TRUE(ranks.ok()) << ranks.message;
  const size_t count = 4096;
  std::vector<DeviceBuffer> a, b, out;
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    a.emplace_back(count * sizeof(T));
    b.emplace_back(count * sizeof(T));
    out.emplace_back(count * sizeof(T));
  }
  std::vector<void*> handles;
  ASSERT_EQ(tpcSuccess,
            registerOnEveryRank(ranks, {a[0].get(), a[1].get()}, count * sizeof(T), &handles));
  std::vector<cudaGraphExec_t> exec(2, nullptr);
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    cudaGraph_t graph;
    CUDA_OK(cudaStreamBeginCapture(ranks.streams[r], cudaStreamCaptureModeThreadLocal));
    ASSERT_EQ(tpcSuccess, tpcAllReduce(a[r].get(), out[r].get(), count, tpcBfloat16, tpcSum,
                                       ranks.comms[r], ranks.streams[r]));
    CUDA_OK(cudaStreamEndCapture(ranks.streams[r], &graph));
    CUDA_OK(cudaGraphInstantiate(&exec[r], graph, 0));
    CUDA_OK(cudaGraphDestroy(graph));
  }
  ASSERT_EQ(tpcSuccess, deregisterOnEveryRank(ranks, handles));
  ASSERT_EQ(tpcSuccess,
            registerOnEveryRank(ranks, {b[0].get(), b[1].get()}, count * sizeof(T), &handles));
  for (int r = 0; r < 2; ++r) {
    ranks.use(r);
    CUDA_OK(cudaGraphLaunch(exec[r], ranks.streams[r]));
  }
  CUDA_OK(ranks.syncAll());
  for (int r = 0; r < 2; ++r) {
    tpcResult_t async = tpcSuccess;
    TPC_OK(tpcCommGetAsyncError(ranks.comms[r], &async));
    EXPECT_EQ(tpcInvalidUsage, async);
    EXPECT_NE(std::string::npos,
              std::string(tpcCommGetLastError(ranks.comms[r])).find("deregistered"))
        << tpcCommGetLastError(ranks.comms[r]);
    ranks.use(r);
    CUDA_OK(cudaGraphExecDestroy(exec[r]));
  }
}

}  // namespace
}  // namespace testing
}  // namespace tpcomm
