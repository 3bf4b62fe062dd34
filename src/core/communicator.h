// One rank of a communicator: its rendezvous connections, its shared buffers and its peers', how
// its calls are carried (tpcomm's kernels or NCCL), and the all-reduce entry point.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "bootstrap/bootstrap.h"
#include "core/algorithm.h"
#include "core/config.h"
#include "fallback/nccl_fallback.h"
#include "memory/registry.h"
#include "memory/shared_buffer.h"
#include "topology/discovery.h"
#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

class Communicator {
 public:
  // Collective over the ranks named by `id`; uses the calling thread's current device.
  static tpcResult_t create(const tpcUniqueId& id, int nranks, int rank,
                            const ResolvedConfig& config, std::unique_ptr<Communicator>* out);
  ~Communicator();

  // Waits for the device's outstanding work, then frees every resource; reports what failed.
  tpcResult_t destroy();

  int rank() const { return rank_; }
  int nranks() const { return nranks_; }
  int device() const { return device_; }
  const DiscoveryResult& topology() const { return topology_; }
  const NcclFallback& nccl() const { return nccl_; }

  // tpcSuccess while healthy; otherwise the sticky error with its explanation set via fail().
  tpcResult_t checkHealthy();

  // The route of an eager all-reduce of `count` elements of `type` (which must be valid).
  Route routeFor(size_t count, tpcDataType_t type) const;

  tpcResult_t allReduce(const void* sendbuff, void* recvbuff, size_t count, tpcDataType_t type,
                        tpcRedOp_t op, cudaStream_t stream);

  // Zero-copy registration (collective); see tpcomm.h.
  tpcResult_t registerGraphBuffers();
  tpcResult_t registerBuffer(void* buff, size_t bytes, void** handle);
  tpcResult_t deregister(void* handle);
  tpcMemoryInfo_t memoryInfo() const;

  // Overrides the configured algorithm for later calls; tests and tuning tools switch algorithms
  // on one communicator with it.
  void forceAlgorithm(tpcAlgorithm_t algorithm) { policy_.forced = algorithm; }

 private:
  Communicator(int rank, int nranks, const ResolvedConfig& config)
      : rank_(rank), nranks_(nranks), config_(config) {}

  struct RankInfo;

  tpcResult_t setup(const tpcUniqueId& id);
  tpcResult_t prepareLocal(RankInfo* mine);
  // Maps every peer's buffer it can; a peer that cannot be mapped is left for the topology to
  // judge (its calls then go to NCCL).
  void mapPeers(const std::vector<RankInfo>& all);
  tpcResult_t decidePaths(const std::vector<RankInfo>& all);
  // Checks that `stream` belongs to this rank's device (once per stream, outside capture) and
  // says whether it is capturing a graph.
  tpcResult_t checkStream(cudaStream_t stream, bool* capturing);
  // Tells every rank how this rank's step went; fails on every rank if any rank failed.
  tpcResult_t agree(tpcResult_t mine, const char* step);
  void chooseBlockCap(const std::vector<RankInfo>& all);
  void buildParams();
  char* bufferOf(int rank) const;
  ControlBlock* controlOf(int rank) const {
    return reinterpret_cast<ControlBlock*>(bufferOf(rank));
  }
  std::string describeFailure(const device::FailureRecord& record) const;
  tpcResult_t launchKernels(Route route, const void* sendbuff, void* recvbuff, size_t count,
                            tpcDataType_t type, cudaStream_t stream, bool capturing);
  tpcResult_t releaseResources();

  int rank_;
  int nranks_;
  int device_ = -1;
  ResolvedConfig config_;
  BufferLayout layout_;
  std::unique_ptr<Bootstrap> bootstrap_;
  LocalBuffer local_;
  std::vector<PeerMapping> peers_;  // by rank; empty for this rank and for unmapped peers
  MappedHost<device::FailureRecord> failure_;
  DiscoveryResult topology_;
  NcclFallback nccl_;
  Registry registry_;
  bool warnedSlotsExhausted_ = false;
  AlgorithmTable table_ = AlgorithmTable::defaults();
  RoutePolicy policy_;
  device::AllReduceParams params_[device::kNumAlgorithms] = {};
  int blockCap_ = 1;
  bool sharesDevice_ = false;           // some ranks of the communicator share a device
  bool sharesDeviceInProcess_ = false;  // this rank shares its device within this process
  cudaStream_t checkedStream_ = nullptr;
  bool streamChecked_ = false;
  bool warnedBlockingStream_ = false;
  tpcResult_t stickyError_ = tpcSuccess;
  std::string stickyMessage_;
};

}  // namespace tpcomm
