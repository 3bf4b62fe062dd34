// device::launchKernel: its launches go through the driver with every attribute tpcomm sets, what
// the driver path refuses goes to the runtime, and a launch that cannot run gets the runtime's
// error.
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <optional>
#include <thread>
#include <vector>

#include "gpu_test_util.cuh"
#include "tpcomm/device/launch.cuh"

namespace tpcomm {
namespace testing {
namespace {

struct RecordParams {
  unsigned* out;  // one word per block
  unsigned base;
};

// Block b stores base + b + 1000 x (the blocks of its cluster).
__global__ void recordBlocks(const __grid_constant__ RecordParams p) {
  if (threadIdx.x != 0) return;
  p.out[blockIdx.x] = p.base + blockIdx.x + 1000 * cooperative_groups::this_cluster().num_blocks();
}

constexpr int kBlocks = 8;

std::vector<unsigned> blocksRecorded(const DeviceBuffer& out, cudaStream_t stream) {
  std::vector<unsigned> host(kBlocks, 0);
  if (cudaStreamSynchronize(stream) != cudaSuccess ||
      cudaMemcpy(host.data(), out.get(), kBlocks * sizeof(unsigned), cudaMemcpyDeviceToHost) !=
          cudaSuccess) {
    host.clear();
  }
  return host;
}

std::vector<unsigned> expected(unsigned base, unsigned cluster) {
  std::vector<unsigned> want;
  for (unsigned b = 0; b < kBlocks; ++b) want.push_back(base + b + 1000 * cluster);
  return want;
}

TEST(Launch, GoesThroughTheDriverWithEveryAttribute) {
  SKIP_WITHOUT_GPU();
  for (int device = 0; device < gpuCount(); ++device) {
    SCOPED_TRACE("device " + std::to_string(device));
    CUDA_OK(cudaSetDevice(device));
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaEvent_t completion = nullptr;
    CUDA_OK(cudaEventCreateWithFlags(&completion, cudaEventDisableTiming));
    DeviceBuffer out(kBlocks * sizeof(unsigned));
    ASSERT_NE(nullptr, out.get());

    // The attributes launchKernel sets, all at once, straight to the driver path.
    cudaLaunchAttribute attributes[3];
    attributes[0].id = cudaLaunchAttributeProgrammaticEvent;
    attributes[0].val.programmaticEvent.event = completion;
    attributes[0].val.programmaticEvent.flags = 0;
    attributes[0].val.programmaticEvent.triggerAtBlockStart = 0;
    attributes[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[1].val.programmaticStreamSerializationAllowed = 1;
    attributes[2].id = cudaLaunchAttributeClusterDimension;
    attributes[2].val.clusterDim = {4, 1, 1};
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(kBlocks);
    config.blockDim = dim3(64);
    config.stream = stream;
    config.attrs = attributes;
    config.numAttrs = 3;
    RecordParams p{static_cast<unsigned*>(out.get()), 7};
    EXPECT_TRUE(device::launch_detail::launchThroughDriver(
        config, reinterpret_cast<const void*>(recordBlocks), &p));
    EXPECT_EQ(expected(7, 4), blocksRecorded(out, stream));
    // A stream can wait for the event the launch names (that it orders calls on two streams is
    // ApiGpu.CallsOnSeveralStreamsAreOrdered's to show: an event never recorded is waited for
    // at once too).
    CUDA_OK(cudaStreamWaitEvent(stream, completion, 0));

    // launchKernel itself, as tpcomm's calls use it, without a cluster and then in pairs.
    p.base = 20;
    CUDA_OK(device::launchKernel(recordBlocks, p, kBlocks, true, stream, 64, 1, completion));
    EXPECT_EQ(expected(20, 1), blocksRecorded(out, stream));
    p.base = 30;
    CUDA_OK(device::launchKernel(recordBlocks, p, kBlocks, false, stream, 64, 2));
    EXPECT_EQ(expected(30, 2), blocksRecorded(out, stream));

    CUDA_OK(cudaEventDestroy(completion));
    CUDA_OK(cudaStreamDestroy(stream));
  }
}

// A stream of `device` and a word for each block there. Made, and released, with `device` current;
// the constructor leaves it current.
struct DeviceStream {
  explicit DeviceStream(int device_) : device(device_) {
    if (cudaSetDevice(device) == cudaSuccess &&
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess) {
      out = DeviceBuffer(kBlocks * sizeof(unsigned));
    }
  }
  ~DeviceStream() {
    int current = 0;
    if (cudaGetDevice(&current) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) return;
    out = DeviceBuffer();
    if (stream != nullptr) cudaStreamDestroy(stream);
    cudaSetDevice(current);
  }
  bool ok() const { return stream != nullptr && out.get() != nullptr; }
  RecordParams params(unsigned base) const { return {out.get<unsigned>(), base}; }

  int device;
  cudaStream_t stream = nullptr;
  DeviceBuffer out;
};

// Block b stores base + b; launched nowhere else, so that its first launch, and the lookup of its
// function, happen inside the capture below.
__global__ void recordBlocksCaptured(const __grid_constant__ RecordParams p) {
  if (threadIdx.x == 0) p.out[blockIdx.x] = p.base + blockIdx.x;
}

// A thread's first launch of a kernel inside a global-mode capture, as torch.cuda.graph captures:
// looking the kernel's function up must not break the capture.
TEST(Launch, FirstLaunchOfAThreadInsideAGlobalCapture) {
  SKIP_WITHOUT_GPU();
  std::vector<unsigned> recorded;
  // A thread of its own: no launch of this thread came before.
  std::thread([&] {
    DeviceStream owned(0);
    ASSERT_TRUE(owned.ok());
    CUDA_OK(cudaStreamBeginCapture(owned.stream, cudaStreamCaptureModeGlobal));
    EXPECT_EQ(cudaSuccess, device::launchKernel(recordBlocksCaptured, owned.params(60), kBlocks,
                                                true, owned.stream, 64));
    cudaGraph_t graph = nullptr;
    ASSERT_EQ(cudaSuccess, cudaStreamEndCapture(owned.stream, &graph));
    // The kernel's function in this thread's context: a lookup that failed inside the capture
    // would have been kept as none.
    EXPECT_NE(nullptr, device::launch_detail::contextFunction(
                           reinterpret_cast<const void*>(recordBlocksCaptured), owned.stream));
    cudaGraphExec_t exec = nullptr;
    EXPECT_EQ(cudaSuccess, cudaGraphInstantiate(&exec, graph, 0));
    if (exec != nullptr) {
      EXPECT_EQ(cudaSuccess, cudaGraphLaunch(exec, owned.stream));
      recorded = blocksRecorded(owned.out, owned.stream);
      cudaGraphExecDestroy(exec);
    }
    cudaGraphDestroy(graph);
  }).join();
  EXPECT_EQ(expected(60, 0), recorded);
}

// A stream of another device than the current one: the current context's function cannot launch
// there, so the launch goes through the context-independent handle and runs on the stream's device.
TEST(Launch, RunsOnAStreamOfAnotherDevice) {
  SKIP_WITHOUT_GPU();
  if (gpuCount() < 2) GTEST_SKIP() << "needs two GPUs";
  DeviceStream remote(1);
  ASSERT_TRUE(remote.ok());
  // First on device 0's own stream, so that device 0's function is looked up and kept.
  DeviceStream local(0);
  ASSERT_TRUE(local.ok());
  CUDA_OK(device::launchKernel(recordBlocks, local.params(50), kBlocks, true, local.stream, 64));
  EXPECT_EQ(expected(50, 1), blocksRecorded(local.out, local.stream));
  const void* entry = reinterpret_cast<const void*>(recordBlocks);
  EXPECT_NE(nullptr, device::launch_detail::contextFunction(entry, local.stream));
  EXPECT_EQ(nullptr, device::launch_detail::contextFunction(entry, remote.stream));
  CUDA_OK(device::launchKernel(recordBlocks, remote.params(40), kBlocks, true, remote.stream, 64));
  CUDA_OK(cudaSetDevice(1));
  EXPECT_EQ(expected(40, 1), blocksRecorded(remote.out, remote.stream));
  CUDA_OK(cudaSetDevice(0));
}

// A stream, and a word for each block, on the current device.
class LaunchOnStream : public ::testing::Test {
 protected:
  void SetUp() override {
    SKIP_WITHOUT_GPU();
    int device = 0;
    CUDA_OK(cudaGetDevice(&device));
    current_.emplace(device);
    ASSERT_TRUE(current_->ok());
    stream = current_->stream;
    CUDA_OK(cudaMemsetAsync(out().get(), 0, kBlocks * sizeof(unsigned), stream));
  }
  const DeviceBuffer& out() const { return current_->out; }
  RecordParams params(unsigned base) const { return current_->params(base); }

  cudaStream_t stream = nullptr;

 private:
  std::optional<DeviceStream> current_;
};

TEST_F(LaunchOnStream, WhatTheDriverPathRefusesGoesToTheRuntime) {
  // An attribute tpcomm never sets: the driver path does not launch.
  cudaLaunchAttribute priority;
  priority.id = cudaLaunchAttributePriority;
  priority.val.priority = 0;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(kBlocks);
  config.blockDim = dim3(64);
  config.stream = stream;
  config.attrs = &priority;
  config.numAttrs = 1;
  RecordParams p = params(5);
  EXPECT_FALSE(device::launch_detail::launchThroughDriver(
      config, reinterpret_cast<const void*>(recordBlocks), &p));
  EXPECT_EQ(std::vector<unsigned>(kBlocks, 0), blocksRecorded(out(), stream));
  // The runtime launches it.
  CUDA_OK(cudaLaunchKernelEx(&config, recordBlocks, p));
  EXPECT_EQ(expected(5, 1), blocksRecorded(out(), stream));
}

TEST_F(LaunchOnStream, ALaunchThatCannotRunGetsTheRuntimesError) {
  RecordParams p = params(0);
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(kBlocks);
  config.blockDim = dim3(4096);
  config.stream = stream;
  const cudaError_t runtime = cudaLaunchKernelEx(&config, recordBlocks, p);
  cudaGetLastError();
  ASSERT_NE(cudaSuccess, runtime);
  // More threads than a block may have: neither path launches, and the error is the runtime's.
  EXPECT_EQ(runtime, device::launchKernel(recordBlocks, p, kBlocks, false, stream, 4096));
  EXPECT_EQ(runtime, cudaGetLastError());
  // Blocks that do not divide into clusters.
  EXPECT_NE(cudaSuccess, device::launchKernel(recordBlocks, p, 6, false, stream, 64, 4));
  cudaGetLastError();
  // The stream still works.
  p.base = 9;
  CUDA_OK(device::launchKernel(recordBlocks, p, kBlocks, false, stream, 64));
  EXPECT_EQ(expected(9, 1), blocksRecorded(out(), stream));
}

}  // namespace
}  // namespace testing
}  // namespace tpcomm
