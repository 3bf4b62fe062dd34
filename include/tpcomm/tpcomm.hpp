// Header-only C++ layer over the C API: an RAII communicator and an exception that carries the
// result code and tpcomm's explanation of the failure.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tpcomm/tpcomm.h"

namespace tpcomm {

class Error : public std::runtime_error {
 public:
  Error(tpcResult_t code, const std::string& what) : std::runtime_error(what), code_(code) {}
  tpcResult_t code() const noexcept { return code_; }

 private:
  tpcResult_t code_;
};

// Throws Error for any result but tpcSuccess, with the text tpcCommGetLastError gives for `comm`
// (or for the calling thread when comm is null).
inline void check(tpcResult_t result, tpcComm_t comm = nullptr) {
  if (result == tpcSuccess) return;
  throw Error(result, std::string(tpcGetErrorString(result)) + ": " + tpcCommGetLastError(comm));
}

template <typename T>
struct DataTypeOf;
template <>
struct DataTypeOf<float> {
  static constexpr tpcDataType_t value = tpcFloat32;
};
template <>
struct DataTypeOf<__half> {
  static constexpr tpcDataType_t value = tpcFloat16;
};
template <>
struct DataTypeOf<__nv_bfloat16> {
  static constexpr tpcDataType_t value = tpcBfloat16;
};

inline tpcUniqueId uniqueId() {
  tpcUniqueId id;
  check(tpcGetUniqueId(&id));
  return id;
}

inline tpcConfig_t defaultConfig() {
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  return config;
}

// One rank of a communicator. Movable, not copyable; destroys the rank when it goes out of scope.
class Communicator {
 public:
  Communicator() = default;
  // Takes ownership of a handle created through the C API.
  explicit Communicator(tpcComm_t comm) : comm_(comm) {}

  // Joins rank `rank` of `nranks` on the current CUDA device (collective).
  Communicator(int nranks, const tpcUniqueId& id, int rank,
               const tpcConfig_t& config = defaultConfig()) {
    check(tpcCommInitRank(&comm_, nranks, id, rank, &config));
  }

  // Creates every rank of a communicator in this process; devices may repeat.
  static std::vector<Communicator> initAll(const std::vector<int>& devices,
                                           const tpcConfig_t& config = defaultConfig()) {
    std::vector<tpcComm_t> handles(devices.size(), nullptr);
    check(
        tpcCommInitAll(handles.data(), static_cast<int>(devices.size()), devices.data(), &config));
    std::vector<Communicator> comms;
    comms.reserve(handles.size());
    for (tpcComm_t h : handles) comms.emplace_back(h);
    return comms;
  }

  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  Communicator(Communicator&& other) noexcept : comm_(std::exchange(other.comm_, nullptr)) {}
  Communicator& operator=(Communicator&& other) noexcept {
    if (this != &other) {
      reset();
      comm_ = std::exchange(other.comm_, nullptr);
    }
    return *this;
  }
  ~Communicator() { reset(); }

  // Destroys the rank now; errors are reported here rather than swallowed by the destructor.
  void destroy() {
    if (comm_ == nullptr) return;
    tpcComm_t comm = std::exchange(comm_, nullptr);
    check(tpcCommDestroy(comm));
  }

  tpcComm_t get() const noexcept { return comm_; }
  tpcComm_t release() noexcept { return std::exchange(comm_, nullptr); }

  int size() const { return query(tpcCommCount); }
  int rank() const { return query(tpcCommUserRank); }
  int device() const { return query(tpcCommCuDevice); }

  void allReduce(const void* send, void* recv, size_t count, tpcDataType_t type,
                 cudaStream_t stream, tpcRedOp_t op = tpcSum) {
    check(tpcAllReduce(send, recv, count, type, op, comm_, stream), comm_);
  }

  template <typename T>
  void allReduce(const T* send, T* recv, size_t count, cudaStream_t stream) {
    allReduce(send, recv, count, DataTypeOf<T>::value, stream);
  }

  // tpcAllReduceAddRmsNorm with an output of the input's type; `residual` is updated in place.
  template <typename T>
  void allReduceAddRmsNorm(const T* input, T* residual, const T* weight, T* out, size_t rows,
                           size_t hidden, float eps, cudaStream_t stream) {
    static_assert(sizeof(T) == 2, "the norm takes rows of __half or __nv_bfloat16");
    check(
        tpcAllReduceAddRmsNorm(input, residual, residual, weight, out, rows, hidden, eps,
                               DataTypeOf<T>::value, DataTypeOf<T>::value, nullptr, comm_, stream),
        comm_);
  }

  // The same with an FP8 output (tpcFloat8e4m3 or tpcFloat8e5m2): out = fp8(norm * weight /
  // *scale), `scale` in device memory.
  template <typename T>
  void allReduceAddRmsNorm(const T* input, T* residual, const T* weight, void* out,
                           tpcDataType_t outType, const float* scale, size_t rows, size_t hidden,
                           float eps, cudaStream_t stream) {
    static_assert(sizeof(T) == 2, "the norm takes rows of __half or __nv_bfloat16");
    check(tpcAllReduceAddRmsNorm(input, residual, residual, weight, out, rows, hidden, eps,
                                 DataTypeOf<T>::value, outType, scale, comm_, stream),
          comm_);
  }

 private:
  int query(tpcResult_t (*fn)(const tpcComm_t, int*)) const {
    int value = -1;
    check(fn(comm_, &value), comm_);
    return value;
  }

  void reset() noexcept {
    if (comm_ != nullptr) tpcCommDestroy(std::exchange(comm_, nullptr));
  }

  tpcComm_t comm_ = nullptr;
};

}  // namespace tpcomm
