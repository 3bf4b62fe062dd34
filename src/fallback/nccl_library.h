// NCCL, loaded at run time. tpcomm neither links nor bundles NCCL: a process that already has one
// (PyTorch and most engines load their own) keeps exactly that one, and a machine without NCCL
// still runs tpcomm's own kernels. Only NCCL's long-stable C ABI is declared here, so building
// tpcomm needs no NCCL headers.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace nccl {

typedef struct ncclComm* Comm;
typedef struct ncclWindow* Window;
struct UniqueId {
  char internal[128];
};
enum Result { kSuccess = 0, kInProgress = 7 };

// Entry points of a loaded NCCL. Data type and operation values are NCCL's, which tpcomm's
// enums share.
struct Library {
  int version = 0;     // NCCL_VERSION_CODE, e.g. 22805
  std::string origin;  // where it came from, for logs
  Result (*getUniqueId)(UniqueId*) = nullptr;
  Result (*commInitRank)(Comm*, int, UniqueId, int) = nullptr;
  Result (*commDestroy)(Comm) = nullptr;
  Result (*commAbort)(Comm) = nullptr;
  Result (*commCount)(Comm, int*) = nullptr;
  Result (*commUserRank)(Comm, int*) = nullptr;
  Result (*allReduce)(const void*, void*, size_t, int, int, Comm, cudaStream_t) = nullptr;
  // One thread driving several ranks must bracket their calls in a group.
  Result (*groupStart)() = nullptr;
  Result (*groupEnd)() = nullptr;
  const char* (*getErrorString)(Result) = nullptr;
  const char* (*getLastError)(Comm) = nullptr;
  // Symmetric memory windows, NCCL 2.27 and newer (null before): buffers from memAlloc registered
  // with windowRegister(comm, buffer, bytes, &window, kWindowSymmetric) on every rank.
  Result (*memAlloc)(void**, size_t) = nullptr;
  Result (*memFree)(void*) = nullptr;
  Result (*windowRegister)(Comm, void*, size_t, Window*, int) = nullptr;
  Result (*windowDeregister)(Comm, Window) = nullptr;
};

constexpr int kWindowSymmetric = 0x01;  // NCCL_WIN_COLL_SYMMETRIC

// The process's NCCL, loaded on first use: the library TPCOMM_NCCL_LIBRARY names if set, else one
// already loaded into the process, else libnccl.so.2 from the loader's search path. Null, with
// *whyNot filled, when none can be loaded.
const Library* library(std::string* whyNot);

}  // namespace nccl

// tpcomm's result for one of NCCL's: codes 1 to 6 mean what tpcomm's do.
tpcResult_t fromNccl(nccl::Result result);

}  // namespace tpcomm
