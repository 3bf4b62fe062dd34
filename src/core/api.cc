// The C API: argument checks, handle checks, and the error text each call leaves behind.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/bootstrap.h"
#include "common/cuda_util.h"
#include "common/error.h"
#include "core/communicator.h"
#include "core/config.h"
#include "core/group.h"
#include "core/handle.h"
#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

#define TPC_API extern "C" __attribute__((visibility("default")))

namespace tpcomm {
namespace {

tpcResult_t checkComm(const tpcComm* comm, const char* call) {
  if (comm == nullptr) return fail(tpcInvalidArgument, "%s: comm is NULL", call);
  if (comm->magic == kDestroyedMagic) {
    return fail(tpcInvalidUsage, "%s: the communicator was destroyed", call);
  }
  if (comm->magic != kLiveMagic || !comm->impl) {
    return fail(tpcInvalidArgument, "%s: comm is not a tpcomm communicator", call);
  }
  return tpcSuccess;
}

// Keeps the explanation of a failed call on the communicator for tpcCommGetLastError.
tpcResult_t remember(tpcComm* comm, tpcResult_t result) {
  if (result != tpcSuccess) comm->lastError = threadLastError();
  return result;
}

tpcResult_t checkRanks(int nranks, const char* call) {
  if (nranks < 1 || nranks > device::kMaxRanks) {
    return fail(tpcInvalidArgument, "%s: nranks %d is outside [1, %d]", call, nranks,
                device::kMaxRanks);
  }
  return tpcSuccess;
}

tpcResult_t initRank(tpcComm_t* out, int nranks, const tpcUniqueId& id, int rank,
                     const ResolvedConfig& config) {
  std::unique_ptr<Communicator> impl;
  TPC_CHECK(Communicator::create(id, nranks, rank, config, &impl));
  *out = new tpcComm{kLiveMagic, std::move(impl), std::string()};
  return tpcSuccess;
}

// Ends a rank (destroy or abort) and leaves a tombstone that later calls recognise.
tpcResult_t endComm(tpcComm* comm, tpcResult_t (Communicator::*end)(), const char* call) {
  clearThreadLastError();
  TPC_CHECK(checkComm(comm, call));
  Communicator* impl = comm->impl.release();
  comm->magic = kDestroyedMagic;
  comm->lastError.clear();
  auto finish = [impl, end] {
    const tpcResult_t result = (impl->*end)();
    // Kernels that never end may still use what an aborted rank left allocated: deleting it
    // would free that memory, and wait for them first.
    if (!impl->leftAllocated()) delete impl;
    return result;
  };
  // NCCL issues the group's calls of this rank at tpcGroupEnd, and work that waits for them runs
  // then on this communicator: it ends after them.
  if (impl->inOpenGroup()) return deferEndUntilGroupEnd(finish);
  return finish();
}

}  // namespace
}  // namespace tpcomm

using namespace tpcomm;

TPC_API tpcResult_t tpcGetVersion(int* version) {
  if (version == nullptr) return fail(tpcInvalidArgument, "tpcGetVersion: version is NULL");
  *version = TPCOMM_VERSION_CODE;
  return tpcSuccess;
}

TPC_API tpcResult_t tpcGetUniqueId(tpcUniqueId* uniqueId) {
  clearThreadLastError();
  if (uniqueId == nullptr) return fail(tpcInvalidArgument, "tpcGetUniqueId: uniqueId is NULL");
  return newRendezvousId(uniqueId);
}

TPC_API tpcResult_t tpcCommInitRank(tpcComm_t* comm, int nranks, tpcUniqueId commId, int rank,
                                    const tpcConfig_t* config) {
  clearThreadLastError();
  if (comm == nullptr) return fail(tpcInvalidArgument, "tpcCommInitRank: comm is NULL");
  *comm = nullptr;
  TPC_CHECK(checkRanks(nranks, "tpcCommInitRank"));
  if (rank < 0 || rank >= nranks) {
    return fail(tpcInvalidArgument, "tpcCommInitRank: rank %d is outside [0, %d)", rank, nranks);
  }
  ResolvedConfig resolved;
  TPC_CHECK(resolveConfig(config, &resolved));
  return initRank(comm, nranks, commId, rank, resolved);
}

TPC_API tpcResult_t tpcCommInitAll(tpcComm_t* comms, int nranks, const int* devices,
                                   const tpcConfig_t* config) {
  clearThreadLastError();
  if (comms == nullptr) return fail(tpcInvalidArgument, "tpcCommInitAll: comms is NULL");
  TPC_CHECK(checkRanks(nranks, "tpcCommInitAll"));
  for (int r = 0; r < nranks; ++r) comms[r] = nullptr;
  int deviceCount = 0;
  TPC_CUDA_CHECK(cudaGetDeviceCount(&deviceCount));
  std::vector<int> devs(nranks);
  for (int r = 0; r < nranks; ++r) {
    devs[r] = devices != nullptr ? devices[r] : r;
    if (devs[r] < 0 || devs[r] >= deviceCount) {
      return fail(tpcInvalidArgument, "tpcCommInitAll: device %d of rank %d is outside [0, %d)",
                  devs[r], r, deviceCount);
    }
  }
  ResolvedConfig resolved;
  TPC_CHECK(resolveConfig(config, &resolved));
  tpcUniqueId id;
  TPC_CHECK(newRendezvousId(&id));

  // One thread per rank: the rendezvous is collective.
  std::vector<tpcResult_t> results(nranks, tpcSuccess);
  std::vector<std::string> messages(nranks);
  std::vector<std::thread> threads;
  for (int r = 0; r < nranks; ++r) {
    threads.emplace_back([&, r] {
      results[r] =
          cudaSetDevice(devs[r]) == cudaSuccess
              ? initRank(&comms[r], nranks, id, r, resolved)
              : fail(tpcUnhandledCudaError, "rank %d: cannot select device %d", r, devs[r]);
      messages[r] = threadLastError();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < nranks; ++r) {
    if (results[r] == tpcSuccess) continue;
    // Prefer the rank that failed first-hand over the ranks that heard about it.
    int culprit = r;
    for (int q = 0; q < nranks; ++q) {
      if (results[q] != tpcSuccess && results[q] != tpcRemoteError) {
        culprit = q;
        break;
      }
    }
    // These handles never reached the caller, so they can go entirely.
    for (int q = 0; q < nranks; ++q) {
      if (comms[q] != nullptr) comms[q]->impl->destroy();
      delete comms[q];
      comms[q] = nullptr;
    }
    return fail(results[culprit], "tpcCommInitAll: %s", messages[culprit].c_str());
  }
  return tpcSuccess;
}

TPC_API tpcResult_t tpcCommDestroy(tpcComm_t comm) {
  return endComm(comm, &Communicator::destroy, "tpcCommDestroy");
}

TPC_API tpcResult_t tpcCommAbort(tpcComm_t comm) {
  return endComm(comm, &Communicator::abort, "tpcCommAbort");
}

TPC_API tpcResult_t tpcGroupStart(void) { return groupStart(); }

TPC_API tpcResult_t tpcGroupEnd(void) {
  clearThreadLastError();
  return groupEnd();
}

TPC_API tpcResult_t tpcCommCount(const tpcComm_t comm, int* count) {
  TPC_CHECK(checkComm(comm, "tpcCommCount"));
  if (count == nullptr)
    return remember(comm, fail(tpcInvalidArgument, "tpcCommCount: count is NULL"));
  *count = comm->impl->nranks();
  return tpcSuccess;
}

TPC_API tpcResult_t tpcCommUserRank(const tpcComm_t comm, int* rank) {
  TPC_CHECK(checkComm(comm, "tpcCommUserRank"));
  if (rank == nullptr)
    return remember(comm, fail(tpcInvalidArgument, "tpcCommUserRank: rank is NULL"));
  *rank = comm->impl->rank();
  return tpcSuccess;
}

TPC_API tpcResult_t tpcCommCuDevice(const tpcComm_t comm, int* device) {
  TPC_CHECK(checkComm(comm, "tpcCommCuDevice"));
  if (device == nullptr) {
    return remember(comm, fail(tpcInvalidArgument, "tpcCommCuDevice: device is NULL"));
  }
  *device = comm->impl->device();
  return tpcSuccess;
}

TPC_API tpcResult_t tpcCommGetAsyncError(tpcComm_t comm, tpcResult_t* asyncError) {
  TPC_CHECK(checkComm(comm, "tpcCommGetAsyncError"));
  if (asyncError == nullptr) {
    return remember(comm, fail(tpcInvalidArgument, "tpcCommGetAsyncError: asyncError is NULL"));
  }
  *asyncError = comm->impl->checkHealthy();
  if (*asyncError != tpcSuccess) remember(comm, *asyncError);
  return tpcSuccess;
}

TPC_API tpcResult_t tpcCommGetAlgorithm(tpcComm_t comm, size_t count, tpcDataType_t datatype,
                                        tpcAlgorithm_t* algorithm) {
  TPC_CHECK(checkComm(comm, "tpcCommGetAlgorithm"));
  if (algorithm == nullptr || typeSize(datatype) == 0) {
    return remember(comm, fail(tpcInvalidArgument, "tpcCommGetAlgorithm: %s",
                               algorithm == nullptr ? "algorithm is NULL" : "unknown datatype"));
  }
  const size_t elemBytes = typeSize(datatype);
  *algorithm =
      routeAlgorithm(comm->impl->routeFor(std::min(count, SIZE_MAX / elemBytes), datatype));
  return tpcSuccess;
}

TPC_API tpcResult_t tpcCommGetAddRmsNormAlgorithm(tpcComm_t comm, size_t rows, size_t hidden,
                                                  tpcDataType_t datatype,
                                                  tpcAlgorithm_t* algorithm) {
  TPC_CHECK(checkComm(comm, "tpcCommGetAddRmsNormAlgorithm"));
  if (algorithm == nullptr) {
    return remember(comm,
                    fail(tpcInvalidArgument, "tpcCommGetAddRmsNormAlgorithm: algorithm is NULL"));
  }
  Route route = Route::kNccl;
  TPC_CHECK(remember(comm, comm->impl->addRmsNormRouteFor(rows, hidden, datatype, &route)));
  *algorithm = routeAlgorithm(route);
  return tpcSuccess;
}

TPC_API tpcResult_t tpcCommGetPathInfo(tpcComm_t comm, tpcPathInfo_t* info) {
  TPC_CHECK(checkComm(comm, "tpcCommGetPathInfo"));
  if (info == nullptr) {
    return remember(comm, fail(tpcInvalidArgument, "tpcCommGetPathInfo: info is NULL"));
  }
  const DiscoveryResult& topology = comm->impl->topology();
  *info = tpcPathInfo_t{};
  info->customPath = topology.decision.custom;
  info->ncclAvailable = comm->impl->nccl().available();
  info->p2pVerified = topology.verified;
  std::snprintf(info->reason, sizeof(info->reason), "%s", topology.decision.reason.c_str());
  std::snprintf(info->nccl, sizeof(info->nccl), "%s", comm->impl->nccl().description().c_str());
  return tpcSuccess;
}

TPC_API tpcResult_t tpcCommRegisterGraphBuffers(tpcComm_t comm) {
  TPC_CHECK(checkComm(comm, "tpcCommRegisterGraphBuffers"));
  return remember(comm, comm->impl->registerGraphBuffers());
}

TPC_API tpcResult_t tpcCommRegister(tpcComm_t comm, void* buff, size_t size, void** handle) {
  TPC_CHECK(checkComm(comm, "tpcCommRegister"));
  return remember(comm, comm->impl->registerBuffer(buff, size, handle));
}

TPC_API tpcResult_t tpcCommDeregister(tpcComm_t comm, void* handle) {
  TPC_CHECK(checkComm(comm, "tpcCommDeregister"));
  return remember(comm, comm->impl->deregister(handle));
}

TPC_API tpcResult_t tpcCommGetMemoryInfo(tpcComm_t comm, tpcMemoryInfo_t* info) {
  TPC_CHECK(checkComm(comm, "tpcCommGetMemoryInfo"));
  if (info == nullptr) {
    return remember(comm, fail(tpcInvalidArgument, "tpcCommGetMemoryInfo: info is NULL"));
  }
  *info = comm->impl->memoryInfo();
  return tpcSuccess;
}

TPC_API tpcResult_t tpcAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                                 tpcDataType_t datatype, tpcRedOp_t op, tpcComm_t comm,
                                 cudaStream_t stream) {
  TPC_CHECK(checkComm(comm, "tpcAllReduce"));
  return remember(comm, comm->impl->allReduce(sendbuff, recvbuff, count, datatype, op, stream));
}

TPC_API tpcResult_t tpcAllReduceAddRmsNorm(const void* sendbuff, const void* residualIn,
                                           void* residualOut, const void* weight, void* normOut,
                                           size_t rows, size_t hidden, float eps,
                                           tpcDataType_t datatype, tpcDataType_t normType,
                                           const float* normScale, tpcComm_t comm,
                                           cudaStream_t stream) {
  TPC_CHECK(checkComm(comm, "tpcAllReduceAddRmsNorm"));
  const NormCall call{sendbuff, residualIn, residualOut, weight,   normOut,  rows,
                      hidden,   eps,        datatype,    normType, normScale};
  return remember(comm, comm->impl->allReduceAddRmsNorm(call, stream));
}

TPC_API const char* tpcGetErrorString(tpcResult_t result) {
  switch (result) {
    case tpcSuccess:
      return "no error";
    case tpcUnhandledCudaError:
      return "unhandled CUDA error";
    case tpcSystemError:
      return "system error";
    case tpcInternalError:
      return "internal error";
    case tpcInvalidArgument:
      return "invalid argument";
    case tpcInvalidUsage:
      return "invalid usage";
    case tpcRemoteError:
      return "remote error";
    case tpcTimeout:
      return "timed out waiting for a peer";
    case tpcNotSupported:
      return "not supported";
    default:
      return "unknown result code";
  }
}

TPC_API const char* tpcCommGetLastError(tpcComm_t comm) {
  if (comm != nullptr && comm->magic == kLiveMagic) return comm->lastError.c_str();
  return threadLastError().c_str();
}
