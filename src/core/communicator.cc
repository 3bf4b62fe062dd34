#include "core/communicator.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/cuda_util.h"
#include "common/error.h"
#include "core/algorithm.h"
#include "kernels/allreduce.h"

namespace tpcomm {

// What every rank tells the others at init.
struct Communicator::RankInfo {
  BufferExport buffer;
  char busId[32];
  uint8_t uuid[16];
  int32_t smCount;
  int32_t blocksPerSm;
};

tpcResult_t Communicator::create(const tpcUniqueId& id, int nranks, int rank,
                                 const ResolvedConfig& config, std::unique_ptr<Communicator>* out) {
  std::unique_ptr<Communicator> comm(new Communicator(rank, nranks, config));
  TPC_CUDA_CHECK(cudaGetDevice(&comm->device_));
  TPC_CHECK(comm->setup(id));
  *out = std::move(comm);
  return tpcSuccess;
}

Communicator::~Communicator() { releaseResources(); }

tpcResult_t Communicator::setup(const tpcUniqueId& id) {
  layout_ = BufferLayout::forStaging(config_.stagingBytes);
  Bootstrap::Options options;
  options.rank = rank_;
  options.nranks = nranks_;
  options.configDigest = config_.digest();
  options.timeout = std::chrono::milliseconds(config_.timeoutMs);
  TPC_CHECK(Bootstrap::connect(id, options, &bootstrap_));

  // From here on every rank takes part in every exchange even when its own step failed, so that
  // a failure reaches all ranks at once instead of leaving them waiting for the timeout.
  RankInfo mine{};
  TPC_CHECK(agree(prepareLocal(&mine), "allocating its buffers"));
  std::vector<std::string> blobs;
  TPC_CHECK(bootstrap_->allGather(std::string(reinterpret_cast<const char*>(&mine), sizeof(mine)),
                                  &blobs));
  std::vector<RankInfo> all(nranks_);
  for (int r = 0; r < nranks_; ++r) {
    if (blobs[r].size() != sizeof(RankInfo)) {
      return fail(tpcInternalError, "rank %d: rank %d sent %zu bytes of rank info, expected %zu",
                  rank_, r, blobs[r].size(), sizeof(RankInfo));
    }
    std::memcpy(&all[r], blobs[r].data(), sizeof(RankInfo));
  }
  for (int i = 0; i < nranks_; ++i) {
    for (int j = 0; j < nranks_; ++j) {
      if (i == j || std::memcmp(all[i].uuid, all[j].uuid, sizeof(all[i].uuid)) != 0) continue;
      sharesDevice_ = true;  // every rank must see this alike: it decides whether NCCL runs
      sharesDeviceInProcess_ =
          sharesDeviceInProcess_ || (i == rank_ && all[j].buffer.processToken == processToken());
    }
  }
  mapPeers(all);
  TPC_CHECK(decidePaths(all));
  std::vector<bool> sameProcess(nranks_);
  for (int r = 0; r < nranks_; ++r) sameProcess[r] = all[r].buffer.processToken == processToken();
  TPC_CHECK(agree(
      registry_.init(rank_, nranks_,
                     config_.zeroCopyGraphs ? config_.graphSlots : kRegistrationSlots, sameProcess),
      "allocating its zero-copy slots"));
  if (topology_.decision.custom) {
    chooseBlockCap(all);
    buildParams();
  }
  if (sharesDeviceInProcess_ && rank_ == 0) {
    const char* connections = std::getenv("CUDA_DEVICE_MAX_CONNECTIONS");
    if (connections == nullptr || std::atoi(connections) < 32) {
      TPC_INFO(
          "ranks of this process share device %d: launch their calls from one thread in the "
          "same order, or set CUDA_DEVICE_MAX_CONNECTIONS=32, or one rank's next all-reduce may "
          "be queued ahead of another rank's current one",
          device_);
    }
  }
  TPC_INFO("rank %d/%d on device %d ready: staging %zu bytes, at most %d blocks per kernel, %s",
           rank_, nranks_, device_, layout_.stagingBytes, blockCap_, config_.digest().c_str());
  TPC_INFO("rank %d: custom path %s: %s; NCCL: %s", rank_, topology_.decision.custom ? "on" : "off",
           topology_.decision.reason.c_str(), nccl_.description().c_str());
  return tpcSuccess;
}

tpcResult_t Communicator::prepareLocal(RankInfo* mine) {
  cudaDeviceProp prop;
  TPC_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
  static_assert(sizeof(prop.uuid.bytes) == sizeof(mine->uuid), "CUDA uuid size");
  std::memcpy(mine->uuid, prop.uuid.bytes, sizeof(mine->uuid));
  TPC_CUDA_CHECK(cudaDeviceGetPCIBusId(mine->busId, sizeof(mine->busId), device_));
  mine->smCount = prop.multiProcessorCount;
  int blocksPerSm = 0;
  TPC_CUDA_CHECK(allReduceBlocksPerSm(&blocksPerSm));
  if (blocksPerSm < 1) {
    return fail(tpcInternalError, "rank %d: the all-reduce kernels cannot run on device %d", rank_,
                device_);
  }
  mine->blocksPerSm = blocksPerSm;
  TPC_CHECK(local_.allocate(layout_));
  TPC_CUDA_CHECK(failure_.allocate());
  TPC_CHECK(local_.exportTo(&mine->buffer));
  return tpcSuccess;
}

void Communicator::mapPeers(const std::vector<RankInfo>& all) {
  peers_.clear();
  peers_.resize(nranks_);
  for (int r = 0; r < nranks_; ++r) {
    if (r != rank_ && peers_[r].open(rank_, r, all[r].buffer) != tpcSuccess) {
      TPC_INFO("rank %d: rank %d's buffer stays unmapped; the topology decides what follows", rank_,
               r);
    }
  }
}

tpcResult_t Communicator::decidePaths(const std::vector<RankInfo>& all) {
  std::vector<PeerView> views(nranks_);
  for (int r = 0; r < nranks_; ++r) {
    PeerView& v = views[r];
    v.busId = all[r].busId;
    if (all[r].buffer.processToken == processToken()) {
      v.visibleDevice = all[r].buffer.device;
    } else if (cudaDeviceGetByPCIBusId(&v.visibleDevice, all[r].busId) != cudaSuccess) {
      cudaGetLastError();
      v.visibleDevice = -1;  // hidden from this process by CUDA_VISIBLE_DEVICES
    }
    if (r == rank_ || peers_[r].base() != nullptr) v.checkWord = &controlOf(r)->p2pCheck[rank_];
  }
  PathSwitches switches;
  switches.disabled = config_.disabled;
  switches.p2pCheck = config_.p2pCheck;
  TPC_CHECK(discoverTopology(*bootstrap_, device_, views, controlOf(rank_)->p2pCheck, switches,
                             &topology_));
  TPC_CHECK(agree(nccl_.setUp(config_, *bootstrap_, sharesDevice_), "setting up NCCL"));
  if (!topology_.decision.custom && !nccl_.available()) {
    return fail(tpcNotSupported,
                "rank %d: tpcomm's kernels cannot serve these devices (%s), and NCCL is not "
                "available to fall back on (%s)",
                rank_, topology_.decision.reason.c_str(), nccl_.description().c_str());
  }
  if (config_.algorithm == tpcAlgoNccl && !nccl_.available()) {
    return fail(tpcInvalidUsage, "rank %d: the algorithm is nccl, but NCCL is not available (%s)",
                rank_, nccl_.description().c_str());
  }
  policy_.forced = config_.algorithm;
  policy_.customPath = topology_.decision.custom;
  policy_.ncclAvailable = nccl_.available();
  policy_.maxCustomBytes = config_.maxBytes;
  return tpcSuccess;
}

tpcResult_t Communicator::agree(tpcResult_t mine, const char* step) {
  const int32_t code = mine;
  std::string blob(reinterpret_cast<const char*>(&code), sizeof(code));
  if (mine != tpcSuccess) blob += threadLastError();
  std::vector<std::string> all;
  TPC_CHECK(bootstrap_->allGather(blob, &all));
  if (mine != tpcSuccess) return mine;  // the message of the local failure stands
  for (int r = 0; r < nranks_; ++r) {
    int32_t theirs = tpcSuccess;
    if (all[r].size() >= sizeof(theirs)) std::memcpy(&theirs, all[r].data(), sizeof(theirs));
    if (theirs != tpcSuccess) {
      return fail(tpcRemoteError, "rank %d: rank %d failed while %s: %s", rank_, r, step,
                  all[r].substr(sizeof(theirs)).c_str());
    }
  }
  return tpcSuccess;
}

void Communicator::chooseBlockCap(const std::vector<RankInfo>& all) {
  // Every rank computes the same cap from the same gathered facts, so all launch equal grids.
  int cap = device::kMaxBlocks;
  for (int r = 0; r < nranks_; ++r) {
    int onDevice = 0;
    for (int q = 0; q < nranks_; ++q) {
      onDevice += std::memcmp(all[q].uuid, all[r].uuid, sizeof(all[r].uuid)) == 0;
    }
    // Ranks sharing a device spin on each other: all their blocks must be resident at once.
    cap = std::min(cap, residentBlockShare(all[r].blocksPerSm, all[r].smCount, onDevice));
  }
  if (!sharesDevice_) cap = std::min(cap, kNvlinkMaxBlocks);
  if (config_.maxBlocks > 0) {
    if (config_.maxBlocks > cap) {
      TPC_INFO("rank %d: maxBlocks %d lowered to %d so that every rank's blocks stay resident",
               rank_, config_.maxBlocks, cap);
    }
    cap = std::min(cap, config_.maxBlocks);
  }
  blockCap_ = cap;
}

char* Communicator::bufferOf(int rank) const {
  return rank == rank_ ? local_.base() : peers_[rank].base();
}

void Communicator::buildParams() {
  for (int a = 0; a < device::kNumAlgorithms; ++a) {
    device::AllReduceParams& p = params_[a];
    p = device::AllReduceParams{};
    for (int r = 0; r < nranks_; ++r) {
      char* base = bufferOf(r);
      auto* control = reinterpret_cast<ControlBlock*>(base);
      p.staging[r] = base + layout_.stagingOffset;
      p.scratch[r] = base + layout_.scratchOffset;
      p.barrier.inbox[r] = control->inbox[a];
    }
    auto* mine = reinterpret_cast<ControlBlock*>(local_.base());
    p.barrier.epochs = mine->epochs[a];
    p.failure.claim = &mine->failureClaim;
    p.failure.record = failure_.device();
    p.failure.timeoutNs = static_cast<unsigned long long>(config_.timeoutMs) * 1000000ull;
    p.rank = rank_;
    p.nranks = nranks_;
  }
}

std::string Communicator::describeFailure(const device::FailureRecord& record) const {
  static const char* const kAlgorithms[] = {"one-shot", "two-shot"};
  static const char* const kWaits[] = {"to copy its input", "to reduce its slice",
                                       "to finish reading"};
  const char* algorithm = record.algorithm >= 0 && record.algorithm < device::kNumAlgorithms
                              ? kAlgorithms[record.algorithm]
                              : "unknown";
  char text[512];
  if (record.kind == device::kFailureUnregistered) {
    std::snprintf(text, sizeof(text),
                  "rank %d (device %d): a CUDA graph with zero-copy all-reduces ran before "
                  "tpcCommRegisterGraphBuffers registered its buffers; the communicator can no "
                  "longer be used",
                  record.rank, device_);
    return text;
  }
  const char* waitingFor = record.phase >= 0 && record.phase <= device::kPhasePeersDone
                               ? kWaits[record.phase]
                               : "to signal";
  std::snprintf(text, sizeof(text),
                "rank %d (device %d): %s all-reduce timed out after %.3f s in block %d waiting "
                "for rank %d %s; the communicator can no longer be used",
                record.rank, device_, algorithm, static_cast<double>(record.waitedNs) * 1e-9,
                record.block, record.peer, waitingFor);
  return text;
}

tpcResult_t Communicator::checkHealthy() {
  if (stickyError_ == tpcSuccess && failure_.host() != nullptr && failure_.host()->ready) {
    std::atomic_thread_fence(std::memory_order_acquire);
    stickyError_ =
        failure_.host()->kind == device::kFailureUnregistered ? tpcInvalidUsage : tpcTimeout;
    stickyMessage_ = describeFailure(*failure_.host());
  }
  if (stickyError_ == tpcSuccess) return tpcSuccess;
  return fail(stickyError_, "%s", stickyMessage_.c_str());
}

tpcResult_t Communicator::allReduce(const void* sendbuff, void* recvbuff, size_t count,
                                    tpcDataType_t type, tpcRedOp_t op, cudaStream_t stream) {
  TPC_CHECK(checkHealthy());
  if (type < 0 || type >= tpcNumTypes) {
    return fail(tpcInvalidArgument, "rank %d: datatype %d is not a tpcDataType_t", rank_,
                static_cast<int>(type));
  }
  if (op < 0 || op >= tpcNumOps) {
    return fail(tpcInvalidArgument, "rank %d: op %d is not a tpcRedOp_t", rank_,
                static_cast<int>(op));
  }
  const size_t elemBytes = typeSize(type);
  if (count > SIZE_MAX / 2 / elemBytes) {
    return fail(tpcInvalidArgument, "rank %d: count %zu of %zu-byte elements overflows", rank_,
                count, elemBytes);
  }
  if (count == 0) return tpcSuccess;
  if (sendbuff == nullptr || recvbuff == nullptr) {
    return fail(tpcInvalidArgument, "rank %d: %s is NULL for a count of %zu", rank_,
                sendbuff == nullptr ? "sendbuff" : "recvbuff", count);
  }

  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  bool capturing = false;
  TPC_CHECK(checkStream(stream, &capturing));
  const size_t bytes = count * elemBytes;
  const bool kernelsCan = kernelSupports(type) && op == tpcSum;
  const Route route =
      kernelsCan ? chooseRoute(table_, policy_, nranks_, bytes, capturing) : Route::kNccl;
  TPC_TRACE("rank %d: all-reduce of %zu bytes (%s%s) on stream %p", rank_, bytes, routeName(route),
            capturing ? ", captured" : "", static_cast<void*>(stream));
  if (route == Route::kNccl && nccl_.available()) {
    return nccl_.allReduce(sendbuff, recvbuff, count, type, op, stream, rank_);
  }
  if (nranks_ == 1) {
    // Every reduction over one rank is the identity.
    if (sendbuff != recvbuff) {
      TPC_CUDA_CHECK(cudaMemcpyAsync(recvbuff, sendbuff, bytes, cudaMemcpyDeviceToDevice, stream));
    }
    return tpcSuccess;
  }
  if (!kernelsCan) {
    return fail(tpcNotSupported,
                "rank %d: all-reduce %s over %s needs NCCL (tpcomm's kernels sum float32, "
                "float16 and bfloat16), and NCCL is not available (%s)",
                rank_, opName(op), typeName(type), nccl_.description().c_str());
  }
  return launchKernels(route, sendbuff, recvbuff, count, type, stream, capturing);
}

tpcResult_t Communicator::launchKernels(Route route, const void* sendbuff, void* recvbuff,
                                        size_t count, tpcDataType_t type, cudaStream_t stream,
                                        bool capturing) {
  const size_t elemBytes = typeSize(type);
  const size_t bytes = count * elemBytes;
  // Zero-copy: out of place only, since peers read this rank's input while it writes its output.
  const device::SourceSlot* slot = nullptr;
  size_t sourceOffset = 0;
  if (sendbuff != recvbuff) {
    int s = -1;
    if (registry_.findRegistered(sendbuff, bytes, &s, &sourceOffset)) {
      slot = registry_.deviceSlot(s);
    } else if (capturing && config_.zeroCopyGraphs) {
      s = registry_.reserveGraphSlot(sendbuff, bytes);
      if (s >= 0) {
        slot = registry_.deviceSlot(s);
      } else if (!warnedSlotsExhausted_) {
        warnedSlotsExhausted_ = true;
        TPC_WARN(
            "rank %d: all %d zero-copy slots are taken; further captured calls copy through "
            "staging (raise graphSlots)",
            rank_, registry_.capacity());
      }
    }
  }
  const device::Algorithm algorithm =
      route == Route::kTwoShot ? device::kTwoShot : device::kOneShot;
  device::AllReduceParams p = params_[algorithm];
  p.slot = slot;
  const size_t chunkElems = layout_.stagingBytes / elemBytes;
  for (size_t offset = 0; offset < count; offset += chunkElems) {
    p.input = static_cast<const char*>(sendbuff) + offset * elemBytes;
    p.output = static_cast<char*>(recvbuff) + offset * elemBytes;
    p.count = std::min(chunkElems, count - offset);
    p.inputAligned = reinterpret_cast<uintptr_t>(p.input) % 16 == 0;
    p.outputAligned = reinterpret_cast<uintptr_t>(p.output) % 16 == 0;
    p.sourceOffset = sourceOffset + offset * elemBytes;
    const int blocks = gridBlocks(route, nranks_, p.count, elemBytes, blockCap_);
    TPC_CUDA_CHECK(launchAllReduce(type, algorithm, p, blocks, stream));
  }
  return tpcSuccess;
}

tpcResult_t Communicator::registerGraphBuffers() {
  TPC_CHECK(checkHealthy());
  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  TPC_INFO("rank %d: registering the buffers of %zu captured calls", rank_,
           registry_.pendingGraphCalls());
  return registry_.registerGraphBuffers(*bootstrap_);
}

tpcResult_t Communicator::registerBuffer(void* buff, size_t bytes, void** handle) {
  TPC_CHECK(checkHealthy());
  if (buff == nullptr || bytes == 0 || handle == nullptr) {
    return fail(tpcInvalidArgument, "rank %d: tpcCommRegister needs a buffer, a size and a handle",
                rank_);
  }
  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  uint64_t id = 0;
  TPC_CHECK(registry_.registerBuffer(*bootstrap_, buff, bytes, &id));
  *handle = reinterpret_cast<void*>(id);
  return tpcSuccess;
}

tpcResult_t Communicator::deregister(void* handle) {
  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  return registry_.deregister(*bootstrap_, reinterpret_cast<uint64_t>(handle));
}

tpcMemoryInfo_t Communicator::memoryInfo() const {
  tpcMemoryInfo_t info{};
  info.deviceBytes = layout_.totalBytes + registry_.tableBytes();
  info.hostBytes = sizeof(device::FailureRecord);
  for (const PeerMapping& peer : peers_) {
    if (peer.opened()) info.peerBytes += layout_.totalBytes;
  }
  info.peerBytes += registry_.mappedBytes();
  info.slotsUsed = registry_.slotsUsed();
  info.slotsStaged = registry_.slotsStaged();
  info.slots = registry_.capacity();
  return info;
}

Route Communicator::routeFor(size_t count, tpcDataType_t type) const {
  if (!kernelSupports(type) || !policy_.customPath) return Route::kNccl;
  return chooseRoute(table_, policy_, nranks_, count * typeSize(type), false);
}

tpcResult_t Communicator::checkStream(cudaStream_t stream, bool* capturing) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(stream, &capture);
  if (err == cudaErrorStreamCaptureImplicit) {
    cudaGetLastError();
    return fail(tpcInvalidUsage,
                "rank %d: the legacy default stream cannot be used while another stream captures "
                "a graph",
                rank_);
  }
  if (err != cudaSuccess) return failCuda(err, "cudaStreamIsCapturing", __FILE__, __LINE__);
  *capturing = capture != cudaStreamCaptureStatusNone;
  // A capturing stream cannot be asked for its device; the check waits for its next eager use.
  if (capture != cudaStreamCaptureStatusNone || (streamChecked_ && stream == checkedStream_)) {
    return tpcSuccess;
  }
  int streamDevice = -1;
  TPC_CUDA_CHECK(cudaStreamGetDevice(stream, &streamDevice));
  if (streamDevice != device_) {
    return fail(tpcInvalidArgument,
                "rank %d: the stream belongs to device %d but the communicator to device %d", rank_,
                streamDevice, device_);
  }
  if (sharesDeviceInProcess_ && !warnedBlockingStream_) {
    unsigned int flags = 0;
    TPC_CUDA_CHECK(cudaStreamGetFlags(stream, &flags));
    if (stream != cudaStreamPerThread && !(flags & cudaStreamNonBlocking)) {
      warnedBlockingStream_ = true;
      TPC_WARN(
          "rank %d: other ranks of this process share device %d, and this stream synchronizes "
          "with the legacy default stream: a blocking call of one rank (cudaMemcpy, work on "
          "another blocking stream) can wait for this rank's all-reduce, which waits for that "
          "rank, until the timeout. Create the ranks' streams with cudaStreamNonBlocking.",
          rank_, device_);
    }
  }
  checkedStream_ = stream;
  streamChecked_ = true;
  return tpcSuccess;
}

tpcResult_t Communicator::releaseResources() {
  tpcResult_t result = tpcSuccess;
  nccl_.release();
  registry_.release();
  for (PeerMapping& peer : peers_) {
    if (peer.release() != tpcSuccess) result = tpcUnhandledCudaError;
  }
  peers_.clear();
  if (local_.release() != tpcSuccess) result = tpcUnhandledCudaError;
  bootstrap_.reset();
  return result;
}

tpcResult_t Communicator::destroy() {
  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  // Kernels still in flight may read or signal these buffers; peers' kernels that read this
  // rank's memory finish before this rank's own kernels pass their last barrier.
  const cudaError_t syncError = cudaDeviceSynchronize();
  if (syncError != cudaSuccess) {
    TPC_WARN("rank %d: device %d reported %s while destroying the communicator", rank_, device_,
             cudaGetErrorString(syncError));
    cudaGetLastError();
  }
  TPC_CHECK(releaseResources());
  return tpcSuccess;
}

}  // namespace tpcomm
