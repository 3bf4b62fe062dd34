// Small CUDA helpers shared by the host runtime.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstddef>

#include "tpcomm/tpcomm.h"

namespace tpcomm {

// Makes `device` current for the scope and restores the caller's device afterwards, so that one
// thread can drive ranks on several devices.
class DeviceScope {
 public:
  DeviceScope() = default;
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  ~DeviceScope() {
    if (switched_) cudaSetDevice(previous_);
  }
  tpcResult_t enter(int device);

 private:
  int previous_ = -1;
  bool switched_ = false;
};

// cudaDeviceSynchronize on `device`, waited for at most `bound`: false if the device still runs
// work then. The synchronization itself cannot be bounded, so it runs on a thread of its own,
// which stays behind, waiting, past the bound. *error: what the synchronization reported.
bool synchronizeDeviceWithin(int device, std::chrono::milliseconds bound, cudaError_t* error);

// Bytes per element; 0 for values outside tpcDataType_t.
size_t typeSize(tpcDataType_t type);
const char* typeName(tpcDataType_t type);
const char* opName(tpcRedOp_t op);

}  // namespace tpcomm
