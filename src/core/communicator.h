// One rank of a communicator: its rendezvous connections, its shared buffers and its peers', and
// the all-reduce entry point that plans and launches kernels over them.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "bootstrap/bootstrap.h"
#include "core/config.h"
#include "memory/shared_buffer.h"
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
  const ResolvedConfig& config() const { return config_; }
  // Blocks per kernel this communicator never exceeds (agreed by all ranks at init).
  int blockCap() const { return blockCap_; }

  // tpcSuccess while healthy; otherwise the sticky error with its explanation set via fail().
  tpcResult_t checkHealthy();

  // The algorithm an all-reduce of `bytes` runs with.
  device::Algorithm algorithmFor(size_t bytes) const;

  tpcResult_t allReduce(const void* sendbuff, void* recvbuff, size_t count, tpcDataType_t type,
                        tpcRedOp_t op, cudaStream_t stream);

  // Overrides the configured algorithm for later calls; tests and tuning tools switch algorithms
  // on one communicator with it.
  void forceAlgorithm(tpcAlgorithm_t algorithm) { config_.algorithm = algorithm; }

 private:
  Communicator(int rank, int nranks, const ResolvedConfig& config)
      : rank_(rank), nranks_(nranks), config_(config) {}

  struct RankInfo;

  tpcResult_t setup(const tpcUniqueId& id);
  tpcResult_t prepareLocal(RankInfo* mine);
  tpcResult_t mapPeers(const std::vector<RankInfo>& all);
  // Checks that `stream` belongs to this rank's device (once per stream, outside capture).
  tpcResult_t checkStream(cudaStream_t stream);
  // Tells every rank how this rank's step went; fails on every rank if any rank failed.
  tpcResult_t agree(tpcResult_t mine, const char* step);
  void chooseBlockCap(const std::vector<RankInfo>& all);
  void buildParams();
  char* bufferOf(int rank) const;
  std::string describeFailure(const device::FailureRecord& record) const;
  tpcResult_t releaseResources();

  int rank_;
  int nranks_;
  int device_ = -1;
  ResolvedConfig config_;
  BufferLayout layout_;
  std::unique_ptr<Bootstrap> bootstrap_;
  LocalBuffer local_;
  std::vector<PeerMapping> peers_;  // by rank; this rank's entry stays empty
  MappedHost<device::FailureRecord> failure_;
  device::AllReduceParams params_[device::kNumAlgorithms] = {};
  int blockCap_ = 1;
  bool sharesDeviceInProcess_ = false;  // another rank of this process uses the same device
  cudaStream_t checkedStream_ = nullptr;
  bool streamChecked_ = false;
  bool warnedBlockingStream_ = false;
  tpcResult_t stickyError_ = tpcSuccess;
  std::string stickyMessage_;
};

}  // namespace tpcomm
