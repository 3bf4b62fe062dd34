#include "fallback/nccl_fallback.h"

#include <cstring>
#include <vector>

#include "common/error.h"
#include "common/within.h"

namespace tpcomm {
namespace {

// What ncclCommInitRank gave: the communicator where it succeeded, NCCL's reason where not.
struct InitOutcome {
  nccl::Result result = nccl::kSuccess;
  nccl::Comm comm = nullptr;
  std::string error;
};

// ncclCommInitRank waits for every rank with no deadline of its own, and cannot be cancelled
// (there is no communicator to abort until it returns): a peer that dies during it would leave
// this rank there for ever. So it runs on a thread of its own, on the caller's device, waited for
// up to `timeout` (false past that); a communicator it returns later is aborted.
bool initRankWithin(const nccl::Library* lib, int nranks, const nccl::UniqueId& id, int rank,
                    std::chrono::milliseconds timeout, InitOutcome* outcome) {
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();
    device = -1;
  }
  auto init = [lib, nranks, id, rank, device] {
    if (device >= 0) cudaSetDevice(device);
    InitOutcome o;
    o.result = lib->commInitRank(&o.comm, nranks, id, rank);
    if (o.result != nccl::kSuccess) {
      o.comm = nullptr;
      o.error = lib->getLastError(nullptr);
    }
    return o;
  };
  auto abortLate = [lib](InitOutcome o) {
    if (o.comm != nullptr) lib->commAbort(o.comm);
  };
  return runWithin(timeout, init, abortLate, outcome);
}

}  // namespace

tpcResult_t NcclFallback::borrow(void* comm, int rank, int nranks) {
  std::string why;
  lib_ = nccl::library(&why);
  if (lib_ == nullptr) {
    return fail(tpcInvalidArgument,
                "rank %d: an NCCL communicator was passed, but NCCL cannot be loaded: %s", rank,
                why.c_str());
  }
  nccl::Comm c = static_cast<nccl::Comm>(comm);
  int count = -1, user = -1;
  if (lib_->commCount(c, &count) != nccl::kSuccess ||
      lib_->commUserRank(c, &user) != nccl::kSuccess || count != nranks || user != rank) {
    return fail(tpcInvalidArgument,
                "rank %d: the NCCL communicator passed in the config is rank %d of %d, not rank "
                "%d of %d",
                rank, user, count, rank, nranks);
  }
  comm_ = c;
  owned_ = false;
  description_ = "NCCL " + std::to_string(lib_->version) + ", the caller's communicator";
  return tpcSuccess;
}

tpcResult_t NcclFallback::setUp(const ResolvedConfig& config, Bootstrap& bootstrap,
                                bool ranksShareDevice) {
  const int rank = bootstrap.rank(), nranks = bootstrap.nranks();
  if (config.ncclComm != nullptr) return borrow(config.ncclComm, rank, nranks);
  if (config.ncclOff) {
    description_ = "none: turned off by configuration";
    return tpcSuccess;
  }
  if (ranksShareDevice) {
    description_ = "none: ranks share a GPU, which NCCL refuses";
    return tpcSuccess;
  }
  std::string why;
  const nccl::Library* lib = nccl::library(&why);
  return createOwn(lib, why, bootstrap, std::chrono::milliseconds(config.timeoutMs));
}

tpcResult_t NcclFallback::createOwn(const nccl::Library* lib, const std::string& whyNot,
                                    Bootstrap& bootstrap, std::chrono::milliseconds timeout) {
  const int rank = bootstrap.rank(), nranks = bootstrap.nranks();
  // Every rank must have NCCL, or none uses it.
  lib_ = lib;
  std::vector<std::string> have;
  TPC_CHECK(bootstrap.allGather(lib_ != nullptr ? std::string() : "!" + whyNot, &have));
  for (int r = 0; r < nranks; ++r) {
    if (!have[r].empty()) {
      description_ =
          "none: NCCL is unavailable on rank " + std::to_string(r) + " (" + have[r].substr(1) + ")";
      lib_ = nullptr;
      return tpcSuccess;
    }
  }
  // Rank 0 sends an empty id when it has none, so that no rank waits in ncclCommInitRank.
  std::string id;
  nccl::Result res = nccl::kSuccess;
  if (rank == 0) {
    id.assign(sizeof(nccl::UniqueId), '\0');
    res = lib_->getUniqueId(reinterpret_cast<nccl::UniqueId*>(&id[0]));
    if (res != nccl::kSuccess) id.clear();
  }
  TPC_CHECK(bootstrap.broadcast(0, &id));
  if (id.size() != sizeof(nccl::UniqueId)) {
    return fail(rank == 0 ? fromNccl(res) : tpcRemoteError,
                "rank %d: no NCCL communicator, since ncclGetUniqueId failed on rank 0", rank);
  }
  nccl::UniqueId ncclId;
  std::memcpy(&ncclId, id.data(), sizeof(ncclId));
  InitOutcome init;
  if (!initRankWithin(lib_, nranks, ncclId, rank, timeout, &init)) {
    return fail(tpcTimeout,
                "rank %d: ncclCommInitRank did not end within %lld ms; a peer may have failed "
                "during it (its own error would say why)",
                rank, static_cast<long long>(timeout.count()));
  }
  if (init.result != nccl::kSuccess) {
    return fail(fromNccl(init.result), "rank %d: ncclCommInitRank failed: %s", rank,
                init.error.c_str());
  }
  comm_ = init.comm;
  owned_ = true;
  description_ =
      "NCCL " + std::to_string(lib_->version) + " (" + lib_->origin + "), created by tpcomm";
  return tpcSuccess;
}

tpcResult_t NcclFallback::allReduce(const void* sendbuff, void* recvbuff, size_t count,
                                    tpcDataType_t type, tpcRedOp_t op, cudaStream_t stream,
                                    int rank) {
  const nccl::Result res = lib_->allReduce(sendbuff, recvbuff, count, type, op, comm_, stream);
  if (res != nccl::kSuccess) {
    return fail(fromNccl(res), "rank %d: ncclAllReduce failed: %s", rank,
                lib_->getLastError(comm_));
  }
  return tpcSuccess;
}

void NcclFallback::release() {
  if (comm_ != nullptr && owned_) lib_->commAbort(comm_);
  comm_ = nullptr;
}

}  // namespace tpcomm
