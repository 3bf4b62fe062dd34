#include "common/error.h"

#include <cstdarg>
#include <cstdio>

namespace tpcomm {
namespace {

std::string& lastError() {
  thread_local std::string message;
  return message;
}

}  // namespace

tpcResult_t fail(tpcResult_t code, const char* fmt, ...) {
  char text[1024];
  va_list args;
  va_start(args, fmt);
  vsnprintf(text, sizeof(text), fmt, args);
  va_end(args);
  lastError() = text;
  TPC_WARN("%s (%s)", text, resultName(code));
  return code;
}

tpcResult_t repeatFailure(tpcResult_t code, const std::string& message) {
  lastError() = message;
  TPC_TRACE("%s (%s, again)", message.c_str(), resultName(code));
  return code;
}

tpcResult_t failCuda(cudaError_t err, const char* call, const char* file, int line) {
  // Clear the error unless it is sticky, so that later calls of this thread are not blamed for it.
  cudaGetLastError();
  TPC_INFO("%s:%d %s", file, line, call);
  return fail(tpcUnhandledCudaError, "CUDA call %s failed: %s (%s)", call, cudaGetErrorName(err),
              cudaGetErrorString(err));
}

const std::string& threadLastError() { return lastError(); }

void clearThreadLastError() { lastError().clear(); }

const char* resultName(tpcResult_t result) {
  switch (result) {
    case tpcSuccess:
      return "tpcSuccess";
    case tpcUnhandledCudaError:
      return "tpcUnhandledCudaError";
    case tpcSystemError:
      return "tpcSystemError";
    case tpcInternalError:
      return "tpcInternalError";
    case tpcInvalidArgument:
      return "tpcInvalidArgument";
    case tpcInvalidUsage:
      return "tpcInvalidUsage";
    case tpcRemoteError:
      return "tpcRemoteError";
    case tpcTimeout:
      return "tpcTimeout";
    case tpcNotSupported:
      return "tpcNotSupported";
    default:
      return "unknown result";
  }
}

}  // namespace tpcomm
