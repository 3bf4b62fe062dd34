// One rank of a communicator: its rendezvous connections, its shared buffers and its peers', how
// its calls are carried (tpcomm's kernels or NCCL), and the all-reduce entry point.
//
// Setup (create) does every exchange, allocation and decision once; the per-call path (allReduce)
// checks the call, picks a route and launches from parameters prepared at setup.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bootstrap/bootstrap.h"
#include "core/algorithm.h"
#include "core/config.h"
#include "core/group.h"
#include "core/norm_call.h"
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
  // Stops this rank's kernels and tells its peers, then frees every resource (tpcCommAbort), or
  // leaves them allocated (leftAllocated) where the device still runs work after the timeout.
  tpcResult_t abort();
  // After abort: the device was still busy, maybe with kernels that read this rank's memory and
  // never end (another library's, waiting for a dead peer). Freeing would wait for them, so the
  // communicator must not be deleted.
  bool leftAllocated() const { return leftAllocated_; }
  // The calling thread's open group holds calls of this rank: NCCL issues them, and the work that
  // waits for them runs, at tpcGroupEnd, so the rank must not end before.
  bool inOpenGroup() const { return groupWithCalls_ != 0 && groupWithCalls_ == groupSerial(); }

  int rank() const { return rank_; }
  int nranks() const { return nranks_; }
  int device() const { return device_; }
  const DiscoveryResult& topology() const { return topology_; }
  const NcclFallback& nccl() const { return nccl_; }

  // tpcSuccess while healthy; otherwise the sticky error, explained (warned about once).
  tpcResult_t checkHealthy();

  // The route of an eager all-reduce of `count` elements of `type` (which must be valid).
  Route routeFor(size_t count, tpcDataType_t type) const;
  // The route of tpcAllReduceAddRmsNorm for `rows` rows of `hidden` elements of `type`.
  tpcResult_t addRmsNormRouteFor(size_t rows, size_t hidden, tpcDataType_t type,
                                 Route* route) const;

  tpcResult_t allReduce(const void* sendbuff, void* recvbuff, size_t count, tpcDataType_t type,
                        tpcRedOp_t op, cudaStream_t stream);
  // tpcAllReduceAddRmsNorm: the fused kernels where tpcomm's kernels take the size, else NCCL's
  // all-reduce and the norm kernel after it.
  tpcResult_t allReduceAddRmsNorm(const NormCall& call, cudaStream_t stream);

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
      : rank_(rank), nranks_(nranks), config_(config) {
    if (config_.pushBytes == 0) config_.pushBytes = defaultPushBytes(nranks);
  }

  struct RankInfo;

  tpcResult_t setup(const tpcUniqueId& id);
  tpcResult_t prepareLocal(RankInfo* mine);
  // Maps every peer's buffer it can; a peer that cannot be mapped is left for the topology to
  // judge (its calls then go to NCCL).
  void mapPeers(const std::vector<RankInfo>& all);
  tpcResult_t decidePaths(const std::vector<RankInfo>& all);
  // The stream a call was made on. Outside a capture, `id` is the driver's number for it, which
  // tells streams apart where handles do not: cudaStreamPerThread names each thread's own
  // stream, and a new stream may take a destroyed one's handle.
  struct CallStream {
    cudaStream_t handle = nullptr;
    unsigned long long id = 0;
    bool capturing = false;
  };
  // Checks that `stream` belongs to this rank's device (once per stream, outside capture) and
  // describes it in *call.
  tpcResult_t checkStream(cudaStream_t stream, CallStream* call);
  // An eager call on another stream than the rank's previous eager call waits for that call.
  tpcResult_t orderAfterPreviousCall(const CallStream& stream);
  // Marks the end of an eager call on `stream`, for the next call to order itself after.
  tpcResult_t noteEagerCall(const CallStream& stream);
  // noteEagerCall for a call whose work launched no kernel of tpcomm's (NCCL's, a copy): its end
  // is recorded in lastCall_ on `stream`.
  tpcResult_t noteCall(const CallStream& stream);
  // The event in which an eager call's kernels record their programmatic completion where they
  // launch as programmatic dependents (null in a capture): the next call on another stream waits
  // for it. An event recorded after every call sat between the stream's kernels and ended their
  // overlap: eager push one-shot at 8 B to 32 KB took 3.6-3.8 us with no record at all, 4.5-4.9
  // with one (2 H200s); with the completion recorded by the launch, 4.3-4.6 against 4.7-5.3 (on
  // another pair): the launch attribute keeps part of the cost.
  cudaEvent_t completionEvent(bool capturing) const {
    return dependentLaunch_ && !capturing ? lastCall_ : nullptr;
  }
  tpcResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, tpcDataType_t type,
                            tpcRedOp_t op, cudaStream_t stream);
  // Inside a group: NCCL's group takes this rank's next NCCL call.
  tpcResult_t joinNcclGroup();
  // Inside a group: runs `work` at the group's end on this rank's device. The thread that ends
  // the group may have made any device current, and a stream handle such as 0 means the current
  // device's.
  tpcResult_t deferOnDevice(std::function<tpcResult_t()> work);
  void chooseBlockCaps(const std::vector<RankInfo>& all);
  void buildParams();
  char* bufferOf(int rank) const;
  ControlBlock* controlOf(int rank) const {
    return reinterpret_cast<ControlBlock*>(bufferOf(rank));
  }
  std::string describeFailure(const device::FailureRecord& record) const;
  tpcResult_t launchKernels(Route route, const void* sendbuff, void* recvbuff, size_t count,
                            tpcDataType_t type, cudaStream_t stream, bool capturing);
  tpcResult_t launchPushKernels(Route route, const void* sendbuff, void* recvbuff, size_t count,
                                tpcDataType_t type, cudaStream_t stream, bool capturing);
  // The route of a fused call of `rows` rows of `hidden` elements (`rowBytes` bytes): a push
  // kernel whose receive slots hold a row, or NCCL; tpcInvalidUsage where neither can take it.
  tpcResult_t fusedRoute(size_t rows, size_t hidden, size_t rowBytes, Route* route) const;
  // The most rows of `rowBytes` bytes a launch of push `route`'s fused kernel takes (0: none).
  size_t fusedLaunchRows(Route route, size_t rowBytes) const;
  tpcResult_t launchFusedKernels(Route route, const NormCall& call, cudaStream_t stream,
                                 bool capturing);
  tpcResult_t ncclAddRmsNorm(const NormCall& call, const CallStream& on);
  // The norm kernel over rows [first, first + rows) of the call, whose all-reduced rows are at
  // `sum`.
  tpcResult_t launchNorm(const NormCall& call, const void* sum, size_t first, size_t rows,
                         cudaStream_t stream, bool capturing);
  tpcResult_t releaseResources();
  // releaseResources once the device is idle, warning about what the device synchronization
  // (`syncError`) reported while `doing` ("destroying", "aborting") the communicator.
  tpcResult_t releaseAfter(cudaError_t syncError, const char* doing);
  // A failure recorded, by a call on the host or by a kernel.
  bool failed() const;

  int rank_;
  int nranks_;
  int device_ = -1;
  ResolvedConfig config_;
  BufferLayout layout_;
  std::unique_ptr<Bootstrap> bootstrap_;
  std::string key_;                     // the communicator's rendezvous id, the same on every rank
  std::shared_ptr<LocalBuffer> local_;  // shared with the ranks of this process (see PeerMapping)
  std::vector<PeerMapping> peers_;      // by rank; empty for this rank and for unmapped peers
  MappedHost<device::FailureRecord> failure_;
  DiscoveryResult topology_;
  NcclFallback nccl_;
  Registry registry_;
  bool warnedSlotsExhausted_ = false;
  AlgorithmTable table_ = AlgorithmTable::defaults();
  RoutePolicy policy_;
  device::PullParams pull_[device::kNumPullAlgorithms] = {};
  device::PushParams push_[device::kNumPushAlgorithms] = {};
  int pullBlockCap_ = 1;
  int pushBlockCap_ = 1;
  int pushTwoShotBlockCap_ = 1;
  RowClusters fusedClusters_{};   // [c]: clusters of c blocks each rank keeps resident at once
  bool dependentLaunch_ = false;  // programmatic dependent launch of the kernels
  bool sharesDevice_ = false;     // some ranks of the communicator share a device
  bool sharesDeviceInProcess_ = false;  // this rank shares its device within this process
  int ranksInProcess_ = 1;              // ranks of this communicator in this process
  // The staging bytes FP8 calls NCCL carries have taken in the group groupSerial() numbers:
  // their norms read the sums there only at the group's end.
  uint64_t stagingGroup_ = 0;
  size_t stagingTaken_ = 0;
  uint64_t groupWithCalls_ = 0;  // the group that last took a call of this rank (inOpenGroup)
  cudaStream_t controlStream_ = nullptr;  // the copy engine's way to this rank's failure word
  cudaEvent_t lastCall_ = nullptr;        // the end of the rank's previous eager call
  unsigned long long lastStream_ = 0;     // CallStream::id of the previous eager call
  bool haveLastCall_ = false;
  unsigned long long checkedStream_ = 0;  // CallStream::id of the stream checkStream last checked
  bool streamChecked_ = false;
  bool warnedBlockingStream_ = false;
  tpcResult_t stickyError_ = tpcSuccess;
  std::string stickyMessage_;
  bool leftAllocated_ = false;
};

}  // namespace tpcomm
