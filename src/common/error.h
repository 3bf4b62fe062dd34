// Errors travel up as tpcResult_t. The place that detects a failure explains it once with fail();
// every hop on the way up logs "file:line -> code" at INFO, which leaves a backtrace in the log.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common/log.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

// Records `fmt` as the calling thread's last error, logs it as a warning, and returns `code`.
tpcResult_t fail(tpcResult_t code, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// For a failure already reported once (a communicator that stays failed): records `message` as
// the thread's last error without another warning, so that a failed rank does not flood the log
// at its call rate.
tpcResult_t repeatFailure(tpcResult_t code, const std::string& message);

// fail() for a CUDA runtime call that returned `err`.
tpcResult_t failCuda(cudaError_t err, const char* call, const char* file, int line);

// The calling thread's last error message ("" when none).
const std::string& threadLastError();
void clearThreadLastError();

// "tpcTimeout" and so on.
const char* resultName(tpcResult_t result);

}  // namespace tpcomm

#define TPC_CHECK(call)                                                    \
  do {                                                                     \
    const tpcResult_t res_ = (call);                                       \
    if (res_ != tpcSuccess) {                                              \
      TPC_INFO("%s:%d -> %d", __FILE__, __LINE__, static_cast<int>(res_)); \
      return res_;                                                         \
    }                                                                      \
  } while (0)

#define TPC_CUDA_CHECK(call)                                      \
  do {                                                            \
    const cudaError_t err_ = (call);                              \
    if (err_ != cudaSuccess) {                                    \
      return ::tpcomm::failCuda(err_, #call, __FILE__, __LINE__); \
    }                                                             \
  } while (0)
