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

#include "tpcomm/device/vec.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace testing {

using device::fromFloat;
using device::toFloat;

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

inline int gpuCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

#define SKIP_WITHOUT_GPU() \
  if (::tpcomm::testing::gpuCount() == 0) GTEST_SKIP() << "no CUDA device"

__host__ __device__ inline uint32_t mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

__host__ __device__ inline uint32_t hashOf(size_t i, int rank, uint32_t seed) {
  return mix(static_cast<uint32_t>(i) ^
             mix(static_cast<uint32_t>(i >> 32) + 0x9e3779b9U * rank + mix(seed)));
}

// An integer in [-16, 16]: sums over up to 8 ranks stay within [-128, 128], exact even in bf16.
__host__ __device__ inline int exactValue(int rank, size_t i, uint32_t seed) {
  return static_cast<int>(hashOf(i, rank, seed) % 33) - 16;
}

__host__ __device__ inline float randomValue(int rank, size_t i, uint32_t seed) {
  return static_cast<float>(hashOf(i, rank, seed ^ 0x5bd1e995U)) * (2.0f / 4294967296.0f) - 1.0f;
}

template <typename T>
__global__ void fillExact(T* out, size_t count, int rank, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    out[i] = fromFloat<T>(static_cast<float>(exactValue(rank, i, seed)));
  }
}

template <typename T>
__global__ void fillRandom(T* out, size_t count, int rank, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    out[i] = fromFloat<T>(randomValue(rank, i, seed));
  }
}

template <typename T>
__device__ bool sameBits(T a, T b) {
  if constexpr (sizeof(T) == 4) {
    return __float_as_uint(toFloat(a)) == __float_as_uint(toFloat(b));
  } else {
    return *reinterpret_cast<const unsigned short*>(&a) ==
           *reinterpret_cast<const unsigned short*>(&b);
  }
}

// Counts elements that differ from the exact sum over ranks, bit for bit.
template <typename T>
__global__ void checkExact(const T* out, size_t count, int nranks, uint32_t seed,
                           unsigned long long* wrong) {
  unsigned long long bad = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    int sum = 0;
    for (int r = 0; r < nranks; ++r) sum += exactValue(r, i, seed);
    bad += !sameBits(out[i], fromFloat<T>(static_cast<float>(sum)));
  }
  if (bad != 0) atomicAdd(wrong, bad);
}

// Counts elements farther from the float64 sum than float32 accumulation and one rounding to T
// allow; NaN always counts.
template <typename T>
__global__ void checkRandom(const T* out, size_t count, int nranks, uint32_t seed, double outputEps,
                            unsigned long long* wrong) {
  unsigned long long bad = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    double exact = 0, magnitude = 0;
    for (int r = 0; r < nranks; ++r) {
      const double x = toFloat(fromFloat<T>(randomValue(r, i, seed)));
      exact += x;
      magnitude += fabs(x);
    }
    const double got = toFloat(out[i]);
    const double tolerance = outputEps * fabs(exact) + nranks * 0x1p-24 * magnitude + 1e-30;
    bad += !(fabs(got - exact) <= tolerance);
  }
  if (bad != 0) atomicAdd(wrong, bad);
}

template <typename T>
__global__ void countDifferentBits(const T* a, const T* b, size_t count, unsigned long long* diff) {
  unsigned long long bad = 0;
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < count;
       i += size_t{gridDim.x} * blockDim.x) {
    bad += !sameBits(a[i], b[i]);
  }
  if (bad != 0) atomicAdd(diff, bad);
}

// Half an ulp of the output type, relative.
template <typename T>
double outputEpsilon() {
  if (sizeof(T) == 4) return 0x1p-24;
  return std::is_same<T, __half>::value ? 0x1p-11 : 0x1p-8;
}

inline dim3 checkGrid(size_t count) {
  const size_t blocks = (count + 255) / 256;
  return dim3(static_cast<unsigned>(blocks < 1024 ? (blocks > 0 ? blocks : 1) : 1024));
}

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
      : devices(rankDevices(nranks)), comms(nranks, nullptr), streams(nranks, nullptr) {
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
