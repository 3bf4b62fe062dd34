// Helpers for GPU tests: deterministic inputs whose sums are exact, on-device checks (so that large
// messages and thousands of calls are verified without copies to the host), and a set of ranks.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "tpcomm/tpcomm.h"
#include "verifiable/verifiable.cuh"

namespace tpcomm {
namespace testing {

#define CUDA_OK(call)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (call);                                           \
    ASSERT_EQ(cudaSuccess, err_) << #call << ": " << cudaGetErrorString(err_); \
  } while (0)

#define TPC_OK(call)                                                              \
  do {                                                                            \
    const tpcResult_t res_ = (call);                                              \
    ASSERT_EQ(tpcSuccess, res_) << #call << ": " << tpcCommGetLastError(nullptr); \
  } while (0)

// Every algorithm that runs one of tpcomm's own kernels.
constexpr tpcAlgorithm_t kKernelAlgorithms[] = {tpcAlgoOneShot, tpcAlgoTwoShot, tpcAlgoPushOneShot,
                                                tpcAlgoPushTwoShot};

// A name gtest accepts in a test's name.
inline std::string algorithmTestName(tpcAlgorithm_t algorithm) {
  switch (algorithm) {
    case tpcAlgoOneShot:
      return "oneshot";
    case tpcAlgoTwoShot:
      return "twoshot";
    case tpcAlgoPushOneShot:
      return "pushoneshot";
    case tpcAlgoPushTwoShot:
      return "pushtwoshot";
    case tpcAlgoNccl:
      return "nccl";
    default:
      return "auto";
  }
}

inline int gpuCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// The device current on the calling thread; -1 if CUDA cannot say.
inline int currentDevice() {
  int device = -1;
  return cudaGetDevice(&device) == cudaSuccess ? device : -1;
}

#define SKIP_WITHOUT_GPU() \
  if (::tpcomm::testing::gpuCount() == 0) GTEST_SKIP() << "no CUDA device"

using namespace ::tpcomm::verifiable;

inline dim3 checkGrid(size_t count) { return verifiable::grid(count); }

// Device memory owned for a test's lifetime.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) {
    if (bytes > 0 && cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_) { o.ptr_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// Devices for n ranks: one GPU each when there are enough, otherwise shared round-robin.
inline std::vector<int> rankDevices(int nranks) {
  const int gpus = gpuCount();
  std::vector<int> devices(nranks);
  for (int r = 0; r < nranks; ++r) devices[r] = gpus > 0 ? r % gpus : 0;
  return devices;
}

// All ranks of a communicator in this process, each with its own stream. One thread drives them
// all: launches never block, and ranks meet on the device.
class Ranks {
 public:
  explicit Ranks(int nranks, tpcConfig_t config = TPC_CONFIG_INITIALIZER)
      : Ranks(rankDevices(nranks), config) {}
  // Rank r on devices[r]: tests of ranks that share a GPU say so with {0, 0, ...}.
  explicit Ranks(const std::vector<int>& rankDevices, tpcConfig_t config = TPC_CONFIG_INITIALIZER)
      : devices(rankDevices),
        comms(rankDevices.size(), nullptr),
        streams(rankDevices.size(), nullptr) {
    const int nranks = static_cast<int>(rankDevices.size());
    // A broken kernel must fail the test in seconds, not wait out the default timeout.
    if (config.timeoutMs == 0) config.timeoutMs = 20000;
    result = tpcCommInitAll(comms.data(), nranks, devices.data(), &config);
    if (result != tpcSuccess) {
      message = tpcCommGetLastError(nullptr);
      return;
    }
    for (int r = 0; r < nranks; ++r) {
      cudaSetDevice(devices[r]);
      cudaStreamCreateWithFlags(&streams[r], cudaStreamNonBlocking);
    }
  }
  ~Ranks() {
    for (size_t r = 0; r < comms.size(); ++r) {
      if (streams[r] != nullptr) {
        cudaSetDevice(devices[r]);
        cudaStreamSynchronize(streams[r]);
        cudaStreamDestroy(streams[r]);
      }
      if (comms[r] != nullptr) tpcCommDestroy(comms[r]);
    }
  }
  int size() const { return static_cast<int>(comms.size()); }
  bool ok() const { return result == tpcSuccess; }
  void use(int r) const { cudaSetDevice(devices[r]); }
  cudaError_t syncAll() const {
    for (int r = 0; r < size(); ++r) {
      use(r);
      const cudaError_t err = cudaStreamSynchronize(streams[r]);
      if (err != cudaSuccess) return err;
    }
    return cudaSuccess;
  }

  std::vector<int> devices;
  std::vector<tpcComm_t> comms;
  std::vector<cudaStream_t> streams;
  tpcResult_t result = tpcSuccess;
  std::string message;
};

// One all-reduce on every rank, issued from this thread as a group (what a thread driving
// several ranks needs wherever NCCL may carry the call). The first failure's code is returned
// and its rank's explanation left in *message.
inline tpcResult_t allReduceAll(const Ranks& ranks, const std::vector<const void*>& in,
                                const std::vector<void*>& out, size_t count, tpcDataType_t type,
                                std::string* message = nullptr, tpcRedOp_t op = tpcSum) {
  tpcResult_t first = tpcGroupStart();
  for (int r = 0; r < ranks.size() && first == tpcSuccess; ++r) {
    const tpcResult_t res =
        tpcAllReduce(in[r], out[r], count, type, op, ranks.comms[r], ranks.streams[r]);
    if (res != tpcSuccess) {
      first = res;
      if (message != nullptr) *message = tpcCommGetLastError(ranks.comms[r]);
    }
  }
  const tpcResult_t ended = tpcGroupEnd();
  if (first == tpcSuccess && ended != tpcSuccess) {
    first = ended;
    if (message != nullptr) *message = tpcCommGetLastError(nullptr);
  }
  return first;
}

// Adds to *wrong the elements of `out` other than 2^doublings times the exact sum of two ranks'
// fillExact: the output of all-reduces of all-reduces.
static __global__ void checkDoubled(const float* out, size_t count, uint32_t seed, int doublings,
                                    unsigned long long* wrong) {
  unsigned long long bad = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    bad += out[i] != ldexpf(static_cast<float>(exactSum(2, i, seed)), doublings);
  }
  if (bad != 0) atomicAdd(wrong, bad);
}

// A counter in device memory of the current device. Reset and read it only while no kernel that
// updates it is in flight.
class Counter {
 public:
  Counter() : buffer_(sizeof(unsigned long long)) { reset(); }
  void reset() {
    cudaMemset(get(), 0, sizeof(unsigned long long));
    cudaDeviceSynchronize();
  }
  unsigned long long* get() const { return buffer_.get<unsigned long long>(); }
  unsigned long long read() const {
    unsigned long long value = ~0ull;
    cudaMemcpy(&value, get(), sizeof(value), cudaMemcpyDeviceToHost);
    return value;
  }

 private:
  DeviceBuffer buffer_;
};

template <typename T>
struct TypeInfo;
template <>
struct TypeInfo<float> {
  static constexpr tpcDataType_t kType = tpcFloat32;
  static constexpr const char* kName = "float32";
};
template <>
struct TypeInfo<__half> {
  static constexpr tpcDataType_t kType = tpcFloat16;
  static constexpr const char* kName = "float16";
};
template <>
struct TypeInfo<__nv_bfloat16> {
  static constexpr tpcDataType_t kType = tpcBfloat16;
  static constexpr const char* kName = "bfloat16";
};

}  // namespace testing
}  // namespace tpcomm
