// The NCCL communicator that carries the calls tpcomm's kernels do not take: borrowed from the
// caller (never destroyed here), or created by tpcomm with its unique id sent over tpcomm's own
// rendezvous, or none where NCCL cannot run (ranks sharing a GPU) or is not wanted.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <string>

#include "bootstrap/bootstrap.h"
#include "core/config.h"
#include "fallback/nccl_library.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

class NcclFallback {
 public:
  NcclFallback() = default;
  NcclFallback(const NcclFallback&) = delete;
  NcclFallback& operator=(const NcclFallback&) = delete;
  ~NcclFallback() { release(); }

  // Collective over the bootstrap. Without NCCL it succeeds with available() false and says why.
  tpcResult_t setUp(const ResolvedConfig& config, Bootstrap& bootstrap, bool ranksShareDevice);
  // setUp's part that creates tpcomm's own communicator with `lib` (null where this rank has no
  // NCCL, `whyNot` saying why): every rank must have one. NCCL's init waits up to `timeout`.
  tpcResult_t createOwn(const nccl::Library* lib, const std::string& whyNot, Bootstrap& bootstrap,
                        std::chrono::milliseconds timeout);

  bool available() const { return comm_ != nullptr; }
  // Which NCCL and whose communicator, or why there is none.
  const std::string& description() const { return description_; }

  tpcResult_t allReduce(const void* sendbuff, void* recvbuff, size_t count, tpcDataType_t type,
                        tpcRedOp_t op, cudaStream_t stream, int rank);
  const nccl::Library* library() const { return lib_; }
  // Frees an owned communicator once this rank's device work has finished; forgets a borrowed
  // one. Never waits for a peer: ncclCommDestroy finalizes collectively (it waits until every
  // rank has destroyed its communicator too), which would tie this rank's teardown to its peers'.
  void release();

 private:
  tpcResult_t borrow(void* comm, int rank, int nranks);

  const nccl::Library* lib_ = nullptr;
  nccl::Comm comm_ = nullptr;
  bool owned_ = false;
  std::string description_ = "none";
};

}  // namespace tpcomm
