#include "common/cuda_util.h"

#include "common/error.h"
#include "common/within.h"

namespace tpcomm {

tpcResult_t DeviceScope::enter(int device) {
  TPC_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device) {
    TPC_CUDA_CHECK(cudaSetDevice(device));
    switched_ = true;
  }
  return tpcSuccess;
}

bool synchronizeDeviceWithin(int device, std::chrono::milliseconds bound, cudaError_t* error) {
  auto synchronize = [device] {
    const cudaError_t err = cudaSetDevice(device);
    return err == cudaSuccess ? cudaDeviceSynchronize() : err;
  };
  return runWithin(
      bound, synchronize, [](cudaError_t) {}, error);
}

size_t typeSize(tpcDataType_t type) {
  switch (type) {
    case tpcInt8:
    case tpcUint8:
    case tpcFloat8e4m3:
    case tpcFloat8e5m2:
      return 1;
    case tpcFloat16:
    case tpcBfloat16:
      return 2;
    case tpcInt32:
    case tpcUint32:
    case tpcFloat32:
      return 4;
    case tpcInt64:
    case tpcUint64:
    case tpcFloat64:
      return 8;
    default:
      return 0;
  }
}

const char* typeName(tpcDataType_t type) {
  static const char* const kNames[] = {"int8",    "uint8",    "int32",      "uint32",
                                       "int64",   "uint64",   "float16",    "float32",
                                       "float64", "bfloat16", "float8e4m3", "float8e5m2"};
  static_assert(sizeof(kNames) / sizeof(kNames[0]) == tpcNumTypes, "a name for every type");
  return type >= 0 && type < tpcNumTypes ? kNames[type] : "unknown type";
}

const char* opName(tpcRedOp_t op) {
  static const char* const kNames[] = {"sum", "prod", "max", "min", "avg"};
  return op >= 0 && op < tpcNumOps ? kNames[op] : "unknown op";
}

}  // namespace tpcomm
