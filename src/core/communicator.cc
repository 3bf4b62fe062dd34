#include "core/communicator.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <utility>

#include "common/cuda_util.h"
#include "common/error.h"
#include "core/algorithm.h"
#include "core/group.h"
#include "kernels/allreduce.h"
#include "kernels/fused.h"

namespace tpcomm {

static_assert(device::kMaxBlocks <= device::kMaxPushBlocks,
              "a push grid may be as large as a pull grid: every block needs a rotation entry");

// What every rank tells the others at init.
struct Communicator::RankInfo {
  BufferExport buffer;
  char busId[32];
  uint8_t uuid[16];
  int32_t smCount;
  int32_t pullBlocksPerSm;
  int32_t pushBlocksPerSm;
  int32_t pushTwoShotBlocksPerSm;
  int32_t rowClusters[device::kMaxRowBlocks + 1];  // [c]: fused clusters of c blocks the device
                                                   // holds at once
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
  key_.assign(id.internal, sizeof(id.internal));
  layout_ = BufferLayout::make(config_.stagingBytes, config_.pushBytes, nranks_);
  Bootstrap::Options options;
  options.rank = rank_;
  options.nranks = nranks_;
  options.configDigest = config_.digest();
  options.timeout = std::chrono::milliseconds(config_.timeoutMs);
  TPC_CHECK(Bootstrap::connect(id, options, &bootstrap_));

  // From here on every rank takes part in every exchange even when its own step failed, so that
  // a failure reaches all ranks at once instead of leaving them waiting for the timeout.
  RankInfo mine{};
  TPC_CHECK(bootstrap_->agree(prepareLocal(&mine), "allocating its buffers"));
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
  ranksInProcess_ = 0;
  for (int i = 0; i < nranks_; ++i) {
    ranksInProcess_ += all[i].buffer.processToken == processToken();
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
  std::vector<bool> sameDevice(nranks_);
  for (int r = 0; r < nranks_; ++r) {
    sameDevice[r] = sameProcess[r] && all[r].buffer.device == all[rank_].buffer.device;
  }
  TPC_CHECK(bootstrap_->agree(
      registry_.init(rank_, nranks_,
                     config_.zeroCopyGraphs ? config_.graphSlots : kRegistrationSlots, sameProcess,
                     sameDevice),
      "allocating its zero-copy slots"));
  if (topology_.decision.custom) {
    chooseBlockCaps(all);
    buildParams();
  }
  // A dependent kernel's blocks become resident before the kernel it follows has finished: where
  // ranks share a device they could take the place the running kernels of other ranks need.
  dependentLaunch_ = config_.pdl && !sharesDevice_;
  if (config_.pdl && sharesDevice_) {
    TPC_INFO("rank %d: programmatic dependent launch stays off: ranks share a device", rank_);
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
  TPC_INFO(
      "rank %d/%d on device %d ready: staging %zu bytes, push chunks %zu / %zu bytes, at most %d "
      "(pull), %d (push) and %d (push two-shot) blocks per kernel, fused rows over clusters of %d "
      "blocks up to %d rows, %s",
      rank_, nranks_, device_, layout_.stagingBytes,
      layout_.receive(device::kPushOneShot).chunkBytes,
      layout_.receive(device::kPushTwoShot).chunkBytes, pullBlockCap_, pushBlockCap_,
      pushTwoShotBlockCap_, device::kMaxRowBlocks, fusedClusters_[device::kMaxRowBlocks],
      config_.digest().c_str());
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
  int pull = 0, push = 0, fused = 0;
  TPC_CUDA_CHECK(allReduceBlocksPerSm(&pull, &push));
  // The fused kernels wait on their peers like the push kernels, from the same grids.
  TPC_CUDA_CHECK(fusedBlocksPerSm(&fused));
  push = std::min(push, fused);
  if (pull < 1 || push < 1) {
    return fail(tpcInternalError, "rank %d: the all-reduce kernels cannot run on device %d", rank_,
                device_);
  }
  mine->pullBlocksPerSm = pull;
  mine->pushBlocksPerSm = push;
  TPC_CUDA_CHECK(pushTwoShotBlocksPerSm(nranks_, &mine->pushTwoShotBlocksPerSm));
  // Clusters only speed up few fused rows: a device that cannot say how many it holds runs
  // without them.
  std::fill(std::begin(mine->rowClusters), std::end(mine->rowClusters), 0);
  for (int c = 2; c <= device::kMaxRowBlocks; ++c) {
    if (const cudaError_t err = fusedRowClusters(c, &mine->rowClusters[c]); err != cudaSuccess) {
      cudaGetLastError();
      mine->rowClusters[c] = 0;
      TPC_INFO("rank %d: the fused kernel's rows stay out of clusters of %d blocks: %s", rank_, c,
               cudaGetErrorString(err));
    }
  }
  // Created here, their failure reaches the peers through the exchange that follows; after the
  // last exchange it would reach them only as a timeout in their first call.
  TPC_CUDA_CHECK(cudaStreamCreateWithFlags(&controlStream_, cudaStreamNonBlocking));
  TPC_CUDA_CHECK(cudaEventCreateWithFlags(&lastCall_, cudaEventDisableTiming));
  local_ = std::make_shared<LocalBuffer>();
  TPC_CHECK(local_->allocate(layout_));
  publishLocalBuffer(key_, rank_, local_);
  TPC_CUDA_CHECK(failure_.allocate());
  TPC_CHECK(local_->exportTo(&mine->buffer));
  return tpcSuccess;
}

void Communicator::mapPeers(const std::vector<RankInfo>& all) {
  peers_.clear();
  peers_.resize(nranks_);
  for (int r = 0; r < nranks_; ++r) {
    if (r != rank_ && peers_[r].open(rank_, r, all[r].buffer, key_) != tpcSuccess) {
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
    char hex[2 * sizeof(all[r].uuid) + 1];
    for (size_t i = 0; i < sizeof(all[r].uuid); ++i) {
      std::snprintf(hex + 2 * i, 3, "%02x", all[r].uuid[i]);
    }
    v.uuid = hex;
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
  TPC_CHECK(bootstrap_->agree(nccl_.setUp(config_, *bootstrap_, sharesDevice_), "setting up NCCL"));
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

void Communicator::chooseBlockCaps(const std::vector<RankInfo>& all) {
  // Every rank computes the same caps from the same gathered facts, so all launch equal grids.
  int pullCap = device::kMaxBlocks, pushCap = device::kMaxBlocks, twoShotCap = device::kMaxBlocks;
  RowClusters clusters;
  clusters.fill(device::kMaxBlocks);
  for (int r = 0; r < nranks_; ++r) {
    int onDevice = 0;
    for (int q = 0; q < nranks_; ++q) {
      onDevice += std::memcmp(all[q].uuid, all[r].uuid, sizeof(all[r].uuid)) == 0;
    }
    // A cluster a row, and every rank's clusters resident at once.
    for (int c = 0; c <= device::kMaxRowBlocks; ++c) {
      clusters[c] = std::min(clusters[c], all[r].rowClusters[c] / onDevice);
    }
    // Ranks sharing a device spin on each other: all their blocks must be resident at once.
    pullCap =
        std::min(pullCap, residentBlockShare(all[r].pullBlocksPerSm, all[r].smCount, onDevice));
    pushCap =
        std::min(pushCap, residentBlockShare(all[r].pushBlocksPerSm, all[r].smCount, onDevice));
    twoShotCap = std::min(
        twoShotCap, residentBlockShare(all[r].pushTwoShotBlocksPerSm, all[r].smCount, onDevice));
  }
  // With a device each, the pull kernels stay at the published NVLink cap; the push kernels may
  // fill every multiprocessor (one block each, push two-shot as many as it holds, up to
  // kMaxBlocks), to keep enough stores and polls in flight.
  if (!sharesDevice_) pullCap = std::min(pullCap, kNvlinkMaxBlocks);
  if (config_.maxBlocks > 0) {
    if (config_.maxBlocks > std::min(pullCap, pushCap)) {
      TPC_INFO(
          "rank %d: maxBlocks %d lowered to %d (pull) and %d (push) so that every rank's "
          "blocks stay resident",
          rank_, config_.maxBlocks, std::min(pullCap, config_.maxBlocks),
          std::min(pushCap, config_.maxBlocks));
    }
    pullCap = std::min(pullCap, config_.maxBlocks);
    pushCap = std::min(pushCap, config_.maxBlocks);
    twoShotCap = std::min(twoShotCap, config_.maxBlocks);
  }
  pullBlockCap_ = pullCap;
  pushBlockCap_ = pushCap;
  pushTwoShotBlockCap_ = twoShotCap;
  fusedClusters_ = clusters;
}

char* Communicator::bufferOf(int rank) const {
  return rank == rank_ ? local_->base() : peers_[rank].base();
}

void Communicator::buildParams() {
  auto* mine = controlOf(rank_);
  device::CallParams call{};
  for (int r = 0; r < nranks_; ++r) call.failure.claims[r] = &controlOf(r)->failureClaim;
  call.failure.record = failure_.device();
  call.failure.timeoutNs = static_cast<unsigned long long>(config_.timeoutMs) * 1000000ull;
  call.rank = rank_;
  call.nranks = nranks_;
  for (int a = 0; a < device::kNumPullAlgorithms; ++a) {
    device::PullParams& p = pull_[a];
    p = device::PullParams{};
    static_cast<device::CallParams&>(p) = call;
    for (int r = 0; r < nranks_; ++r) {
      char* base = bufferOf(r);
      p.staging[r] = base + layout_.stagingOffset;
      p.scratch[r] = base + layout_.scratchOffset;
      p.barrier.inbox[r] = controlOf(r)->inbox[a];
      p.barrier.tags[r] = controlOf(r)->tags[a];
    }
    p.barrier.epochs = mine->epochs[a];
  }
  for (int a = 0; a < device::kNumPushAlgorithms; ++a) {
    const ReceiveRegion& region = layout_.push[a];
    device::PushParams& p = push_[a];
    p = device::PushParams{};
    static_cast<device::CallParams&>(p) = call;
    for (int r = 0; r < nranks_; ++r) p.receive[r] = bufferOf(r) + region.offset;
    p.bufferBytes = region.bufferBytes;
    p.slotVectors = region.slotVectors;
    p.state = mine->push[a];
  }
}

namespace {

// Tags that differ for calls the kernels must not mix: size, type, protocol, and a fused call's
// row size and output type.
uint32_t callTag(int algorithm, tpcDataType_t type, size_t count, size_t hidden = 0,
                 int outType = 0) {
  const uint64_t shape = static_cast<uint64_t>(hidden) << 24 |
                         static_cast<uint64_t>(outType) << 16 | static_cast<uint64_t>(type) << 8 |
                         static_cast<uint64_t>(algorithm);
  uint64_t h = count * 0x9e3779b97f4a7c15ull ^ shape;
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 29;
  return static_cast<uint32_t>(h);
}

// Where a zero-copy launch reads its peers' inputs: through a registration at this rank's offset
// into it, which every rank's call must share, or through a captured call's slot of its own.
// Mixed into the call's tag, so that ranks that read differently fail as ranks that made
// different calls instead of summing what is not their peers' input.
uint32_t sourceTag(bool registered, size_t offset) {
  uint64_t h = (offset << 1 | (registered ? 1u : 0u)) * 0xd6e8feb86659fd93ull;
  h ^= h >> 32;
  return static_cast<uint32_t>(h) | 1u;
}

tpcResult_t resultOf(int failureKind) {
  switch (failureKind) {
    case device::kFailureTimeout:
      return tpcTimeout;
    case device::kFailurePeerFailed:
      return tpcRemoteError;
    default:
      return tpcInvalidUsage;
  }
}

}  // namespace

std::string Communicator::describeFailure(const device::FailureRecord& record) const {
  static const char* const kAlgorithms[] = {"one-shot",
                                            "two-shot",
                                            "push one-shot",
                                            "push two-shot",
                                            "push one-shot (fused with RMSNorm)",
                                            "push two-shot (fused with RMSNorm)"};
  static_assert(sizeof(kAlgorithms) / sizeof(kAlgorithms[0]) == device::kNumAlgorithms,
                "a name for every algorithm");
  static const char* const kWaits[] = {"to copy its input", "to reduce its slice",
                                       "to finish reading", "to send its data",
                                       "to send its reduced slice"};
  const char* algorithm = record.algorithm >= 0 && record.algorithm < device::kNumAlgorithms
                              ? kAlgorithms[record.algorithm]
                              : "unknown";
  const char* waitingFor =
      record.phase >= 0 && record.phase < device::kNumPhases ? kWaits[record.phase] : "to signal";
  char text[512];
  switch (record.kind) {
    case device::kFailureUnregistered:
      std::snprintf(text, sizeof(text),
                    "rank %d (device %d): a zero-copy all-reduce ran while its buffers were not "
                    "registered (a CUDA graph launched before tpcCommRegisterGraphBuffers, or "
                    "after its buffer was deregistered); the communicator can no longer be used",
                    record.rank, device_);
      break;
    case device::kFailureStaleSlot:
      std::snprintf(text, sizeof(text),
                    "rank %d (device %d): a CUDA graph ran a zero-copy all-reduce whose registered "
                    "buffer was deregistered since it was captured; the communicator can no longer "
                    "be used",
                    record.rank, device_);
      break;
    case device::kFailurePeerFailed:
      std::snprintf(text, sizeof(text),
                    "rank %d (device %d): rank %d failed or was aborted while this rank's %s "
                    "all-reduce waited for it in block %d; the communicator can no longer be used",
                    record.rank, device_, record.peer, algorithm, record.block);
      break;
    case device::kFailureMismatch:
      std::snprintf(text, sizeof(text),
                    "rank %d (device %d): rank %d made a different call at the same point as this "
                    "rank's %s all-reduce (another size, type, algorithm, zero-copy mode or "
                    "offset into a registered buffer; every rank must make the same calls in the "
                    "same order); the communicator can no longer be used",
                    record.rank, device_, record.peer, algorithm);
      break;
    default:
      std::snprintf(text, sizeof(text),
                    "rank %d (device %d): %s all-reduce timed out after %.3f s in block %d "
                    "waiting for rank %d %s; the communicator can no longer be used",
                    record.rank, device_, algorithm, static_cast<double>(record.waitedNs) * 1e-9,
                    record.block, record.peer, waitingFor);
  }
  return text;
}

tpcResult_t Communicator::checkHealthy() {
  if (stickyError_ != tpcSuccess) return repeatFailure(stickyError_, stickyMessage_);
  if (failure_.host() == nullptr || !failure_.host()->ready) return tpcSuccess;
  std::atomic_thread_fence(std::memory_order_acquire);
  stickyError_ = resultOf(failure_.host()->kind);
  stickyMessage_ = describeFailure(*failure_.host());
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
  // The kernels write some of the output before they have read all of the input, and NCCL may.
  const uintptr_t in = reinterpret_cast<uintptr_t>(sendbuff);
  const uintptr_t out = reinterpret_cast<uintptr_t>(recvbuff);
  const size_t bytes = count * elemBytes;
  if (in != out && in < out + bytes && out < in + bytes) {
    return fail(tpcInvalidArgument,
                "rank %d: recvbuff (%p) overlaps sendbuff (%p) for %zu bytes; in place, recvbuff "
                "must be sendbuff",
                rank_, recvbuff, sendbuff, bytes);
  }

  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  CallStream on;
  TPC_CHECK(checkStream(stream, &on));
  const bool capturing = on.capturing;
  const bool kernelsCan = kernelSupports(type) && op == tpcSum;
  const Route route = kernelsCan ? chooseRoute(table_, policy_, nranks_, bytes,
                                               capturing ? CallKind::kGraph : CallKind::kEager)
                                 : Route::kNccl;
  TPC_TRACE("rank %d: all-reduce of %zu bytes (%s%s) on stream %p", rank_, bytes, routeName(route),
            capturing ? ", captured" : "", static_cast<void*>(stream));
  if (!capturing) TPC_CHECK(orderAfterPreviousCall(on));
  if (route == Route::kNccl && nccl_.available()) {
    TPC_CHECK(ncclAllReduce(sendbuff, recvbuff, count, type, op, stream));
    if (capturing) return tpcSuccess;
    // Inside a group NCCL issues its work at tpcGroupEnd: the call ends after that.
    if (ranksInProcess_ > 1) return deferOnDevice([this, on] { return noteCall(on); });
    return noteCall(on);
  }
  if (nranks_ == 1) {
    // Every reduction over one rank is the identity.
    if (sendbuff != recvbuff) {
      TPC_CUDA_CHECK(cudaMemcpyAsync(recvbuff, sendbuff, bytes, cudaMemcpyDeviceToDevice, stream));
    }
    return capturing ? tpcSuccess : noteCall(on);
  }
  if (!kernelsCan) {
    return fail(tpcNotSupported,
                "rank %d: all-reduce %s over %s needs NCCL (tpcomm's kernels sum float32, "
                "float16 and bfloat16), and NCCL is not available (%s)",
                rank_, opName(op), typeName(type), nccl_.description().c_str());
  }
  TPC_CHECK(launchKernels(route, sendbuff, recvbuff, count, type, stream, capturing));
  return capturing ? tpcSuccess : noteEagerCall(on);
}

tpcResult_t Communicator::orderAfterPreviousCall(const CallStream& stream) {
  if (haveLastCall_ && stream.id != lastStream_) {
    TPC_CUDA_CHECK(cudaStreamWaitEvent(stream.handle, lastCall_, 0));
    // A programmatic completion lets a kernel start before the previous call ends; this one waits
    // for the end, so that NCCL and whatever else follows on `stream` comes after that call.
    if (dependentLaunch_) TPC_CUDA_CHECK(awaitProgrammaticCompletion(stream.handle));
  }
  return tpcSuccess;
}

tpcResult_t Communicator::noteEagerCall(const CallStream& stream) {
  // Programmatic dependents recorded their completion in lastCall_ as they launched.
  if (dependentLaunch_) {
    lastStream_ = stream.id;
    haveLastCall_ = true;
    return tpcSuccess;
  }
  return noteCall(stream);
}

tpcResult_t Communicator::joinNcclGroup() {
  groupWithCalls_ = groupSerial();
  return tpcomm::joinNcclGroup(nccl_.library());
}

tpcResult_t Communicator::deferOnDevice(std::function<tpcResult_t()> work) {
  groupWithCalls_ = groupSerial();
  return deferUntilGroupEnd([this, work = std::move(work)] {
    DeviceScope scope;
    TPC_CHECK(scope.enter(device_));
    return work();
  });
}

tpcResult_t Communicator::noteCall(const CallStream& stream) {
  TPC_CUDA_CHECK(cudaEventRecord(lastCall_, stream.handle));
  lastStream_ = stream.id;
  haveLastCall_ = true;
  return tpcSuccess;
}

tpcResult_t Communicator::allReduceAddRmsNorm(const NormCall& call, cudaStream_t stream) {
  TPC_CHECK(checkHealthy());
  TPC_CHECK(checkNormCall(call, rank_));
  if (call.rows == 0) return tpcSuccess;
  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  CallStream on;
  TPC_CHECK(checkStream(stream, &on));
  const bool capturing = on.capturing;
  Route route = Route::kNccl;
  TPC_CHECK(fusedRoute(call.rows, call.hidden, call.rowBytes(), &route));
  TPC_TRACE("rank %d: all-reduce + RMSNorm of %zu rows of %zu (%s%s) on stream %p", rank_,
            call.rows, call.hidden, routeName(route), capturing ? ", captured" : "",
            static_cast<void*>(stream));
  if (!capturing) TPC_CHECK(orderAfterPreviousCall(on));
  if (nranks_ == 1) {
    TPC_CHECK(launchNorm(call, call.input, 0, call.rows, stream, capturing));
  } else if (route == Route::kNccl && nccl_.available()) {
    TPC_CHECK(ncclAddRmsNorm(call, on));
  } else {
    TPC_CHECK(launchFusedKernels(route, call, stream, capturing));
  }
  return capturing ? tpcSuccess : noteEagerCall(on);
}

tpcResult_t Communicator::launchNorm(const NormCall& call, const void* sum, size_t first,
                                     size_t rows, cudaStream_t stream, bool capturing) {
  device::AddNormParams p{};
  p.sum = sum;
  p.norm = normParams(call, first, rows);
  // The norm kernel never waits for a peer: any grid may run.
  const int blocks = static_cast<int>(std::min<size_t>(rows, 1 << 16));
  TPC_CUDA_CHECK(
      launchAddRmsNorm(call.type, p, blocks, dependentLaunch_, stream, completionEvent(capturing)));
  return tpcSuccess;
}

tpcResult_t Communicator::ncclAddRmsNorm(const NormCall& call, const CallStream& on) {
  const cudaStream_t stream = on.handle;
  // Inside a group NCCL issues its part at tpcGroupEnd: the norm must wait until then.
  const bool deferred = ranksInProcess_ > 1;
  auto normAfterNccl = [this, call, on, deferred](const void* sum, size_t first,
                                                  size_t rows) -> tpcResult_t {
    if (!deferred) return launchNorm(call, sum, first, rows, on.handle, on.capturing);
    return deferOnDevice([this, call, sum, first, rows, on] {
      TPC_CHECK(launchNorm(call, sum, first, rows, on.handle, on.capturing));
      return on.capturing ? tpcSuccess : noteEagerCall(on);
    });
  };
  if (call.outType == call.type) {
    // NCCL sums into the output, and the norm replaces each row of sums with its normalised row.
    TPC_CHECK(
        ncclAllReduce(call.input, call.out, call.rows * call.hidden, call.type, tpcSum, stream));
    return normAfterNccl(call.out, 0, call.rows);
  }
  // An FP8 output cannot hold the sums: they go through the staging buffer, a chunk at a time.
  // Deferred, all of a call's rows wait there for the group's end, beside those of the group's
  // earlier such calls.
  if (deferred && stagingGroup_ != groupSerial()) {
    stagingGroup_ = groupSerial();
    stagingTaken_ = 0;
  }
  const size_t taken = deferred ? stagingTaken_ : 0;
  const size_t chunkRows = (layout_.stagingBytes - taken) / call.rowBytes();
  if (chunkRows == 0 || (deferred && call.rows > chunkRows)) {
    return fail(tpcInvalidUsage,
                "rank %d: tpcAllReduceAddRmsNorm with an FP8 output goes to NCCL here, through a "
                "staging buffer of %zu bytes%s, which holds %zu of its %zu rows%s; raise "
                "stagingBytes",
                rank_, layout_.stagingBytes,
                taken != 0 ? ", of which earlier FP8 calls of this group hold some" : "", chunkRows,
                call.rows,
                deferred ? " (a group of ranks of one process needs them all at once)" : "");
  }
  char* staging = local_->base() + layout_.stagingOffset + taken;
  for (size_t first = 0; first < call.rows; first += chunkRows) {
    const size_t rows = std::min(chunkRows, call.rows - first);
    TPC_CHECK(ncclAllReduce(static_cast<const char*>(call.input) + first * call.rowBytes(), staging,
                            rows * call.hidden, call.type, tpcSum, stream));
    TPC_CHECK(normAfterNccl(staging, first, rows));
  }
  // Only a call that NCCL took holds its rows there (one refused outside a group does not).
  if (deferred) stagingTaken_ += call.rows * call.rowBytes();
  return tpcSuccess;
}

tpcResult_t Communicator::launchFusedKernels(Route route, const NormCall& call, cudaStream_t stream,
                                             bool capturing) {
  // fusedRoute chose a kernel whose slots hold a row.
  const size_t mostRows = fusedLaunchRows(route, call.rowBytes());
  const bool inPlace = call.out == call.input;
  const uint32_t hiddenVectors = static_cast<uint32_t>(call.rowBytes() / 16);
  device::FusedParams p{};
  const size_t chunkRows = launchShare(call.rows, mostRows, 1);
  for (size_t first = 0; first < call.rows; first += chunkRows) {
    const size_t rows = std::min(chunkRows, call.rows - first);
    const bool twoShot = route == Route::kPushTwoShot;
    const FusedShape shape =
        twoShot ? fusedTwoShotShape(rows, nranks_, hiddenVectors, fusedClusters_, pushBlockCap_)
                : fusedOneShotShape(rows, hiddenVectors, fusedClusters_, pushBlockCap_, inPlace);
    const device::Algorithm protocol = twoShot ? device::kPushTwoShot : device::kPushOneShot;
    const device::Algorithm algorithm =
        twoShot ? device::kPushTwoShotNorm : device::kPushOneShotNorm;
    static_cast<device::PushParams&>(p) = push_[protocol - device::kPushOneShot];
    p.inputAligned = 1;
    p.outputAligned = 1;
    p.input = static_cast<const char*>(call.input) + first * call.rowBytes();
    p.output = nullptr;
    p.count = rows * call.hidden;
    p.norm = normParams(call, first, rows);
    p.tag = callTag(algorithm, call.type, p.count, call.hidden, p.norm.outType);
    TPC_CUDA_CHECK(launchFused(call.type, algorithm, p, shape.blocks, shape.clusterBlocks,
                               shape.ownerSends, dependentLaunch_, stream,
                               completionEvent(capturing)));
  }
  return tpcSuccess;
}

tpcResult_t Communicator::ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                                        tpcDataType_t type, tpcRedOp_t op, cudaStream_t stream) {
  if (ranksInProcess_ > 1) {
    // This process drives several ranks: NCCL would wait in this call for ranks not called yet.
    if (!inGroup()) {
      return fail(tpcInvalidUsage,
                  "rank %d: this process holds %d ranks of the communicator, and this all-reduce "
                  "(%zu elements of %s, %s) goes to NCCL, which needs every rank's call at once: "
                  "bracket the ranks' calls with tpcGroupStart and tpcGroupEnd",
                  rank_, ranksInProcess_, count, typeName(type), opName(op));
    }
    TPC_CHECK(joinNcclGroup());
  }
  return nccl_.allReduce(sendbuff, recvbuff, count, type, op, stream, rank_);
}

tpcResult_t Communicator::launchKernels(Route route, const void* sendbuff, void* recvbuff,
                                        size_t count, tpcDataType_t type, cudaStream_t stream,
                                        bool capturing) {
  if (isPush(route)) {
    return launchPushKernels(route, sendbuff, recvbuff, count, type, stream, capturing);
  }
  const size_t elemBytes = typeSize(type);
  const size_t bytes = count * elemBytes;
  // Zero-copy: out of place only, since peers read this rank's input while it writes its output;
  // and 16-byte aligned, as every rank's input then is (ranks call at the same offsets into
  // registered buffers whose bases registration found aligned).
  const device::SourceSlot* slot = nullptr;
  uint32_t generation = 0;
  size_t sourceOffset = 0;
  bool registered = false;
  if (sendbuff != recvbuff) {
    int s = -1;
    if (registry_.findRegistered(sendbuff, bytes, &s, &sourceOffset)) {
      registered = sourceOffset % 16 == 0;
      if (registered) slot = registry_.deviceSlot(s);
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
    if (slot != nullptr) generation = registry_.generation(s);
  }
  const device::Algorithm algorithm =
      route == Route::kTwoShot ? device::kTwoShot : device::kOneShot;
  device::PullParams p = pull_[algorithm];
  p.slot = slot;
  p.slotGeneration = generation;
  const size_t chunkElems = layout_.stagingBytes / elemBytes;
  for (size_t offset = 0; offset < count; offset += chunkElems) {
    p.input = static_cast<const char*>(sendbuff) + offset * elemBytes;
    p.output = static_cast<char*>(recvbuff) + offset * elemBytes;
    p.count = std::min(chunkElems, count - offset);
    p.inputAligned = reinterpret_cast<uintptr_t>(p.input) % 16 == 0;
    p.outputAligned = reinterpret_cast<uintptr_t>(p.output) % 16 == 0;
    p.sourceOffset = sourceOffset + offset * elemBytes;
    p.tag = callTag(algorithm, type, p.count);
    if (slot != nullptr) p.tag ^= sourceTag(registered, p.sourceOffset);
    const int blocks = gridBlocks(route, nranks_, p.count, elemBytes, pullBlockCap_);
    TPC_CUDA_CHECK(launchPull(type, algorithm, p, blocks, dependentLaunch_, stream,
                              completionEvent(capturing)));
  }
  return tpcSuccess;
}

tpcResult_t Communicator::launchPushKernels(Route route, const void* sendbuff, void* recvbuff,
                                            size_t count, tpcDataType_t type, cudaStream_t stream,
                                            bool capturing) {
  const size_t elemBytes = typeSize(type);
  const device::Algorithm algorithm =
      route == Route::kPushTwoShot ? device::kPushTwoShot : device::kPushOneShot;
  device::PushParams p = push_[algorithm - device::kPushOneShot];
  const size_t chunkElems =
      launchShare(count, layout_.receive(algorithm).chunkBytes / elemBytes, 16 / elemBytes);
  for (size_t offset = 0; offset < count; offset += chunkElems) {
    p.input = static_cast<const char*>(sendbuff) + offset * elemBytes;
    p.output = static_cast<char*>(recvbuff) + offset * elemBytes;
    p.count = std::min(chunkElems, count - offset);
    p.inputAligned = reinterpret_cast<uintptr_t>(p.input) % 16 == 0;
    p.outputAligned = reinterpret_cast<uintptr_t>(p.output) % 16 == 0;
    p.tag = callTag(algorithm, type, p.count);
    const LaunchShape shape =
        pushLaunchShape(route, nranks_, p.count, elemBytes,
                        route == Route::kPushTwoShot ? pushTwoShotBlockCap_ : pushBlockCap_);
    TPC_CUDA_CHECK(launchPush(type, algorithm, p, shape.blocks, shape.threads, dependentLaunch_,
                              stream, completionEvent(capturing)));
  }
  return tpcSuccess;
}

// A rank that refuses a collective host call still takes part in its first exchange, so that its
// peers fail at once, naming it, instead of waiting for it until the timeout.
tpcResult_t Communicator::registerGraphBuffers() {
  TPC_CHECK(bootstrap_->agree(checkHealthy(), "registering graph buffers"));
  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  TPC_INFO("rank %d: registering the buffers of %zu captured calls", rank_,
           registry_.pendingGraphCalls());
  return registry_.registerGraphBuffers(*bootstrap_);
}

tpcResult_t Communicator::registerBuffer(void* buff, size_t bytes, void** handle) {
  tpcResult_t usable = checkHealthy();
  if (usable == tpcSuccess && (buff == nullptr || bytes == 0 || handle == nullptr)) {
    usable = fail(tpcInvalidArgument,
                  "rank %d: tpcCommRegister needs a buffer, a size and a handle", rank_);
  }
  TPC_CHECK(bootstrap_->agree(usable, "registering a buffer"));
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
  info.stagingBytes = layout_.stagingBytes + layout_.scratchBytes;
  for (const ReceiveRegion& region : layout_.push) info.receiveBytes += region.bytes();
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
  return chooseRoute(table_, policy_, nranks_, count * typeSize(type), CallKind::kEager);
}

size_t Communicator::fusedLaunchRows(Route route, size_t rowBytes) const {
  const bool twoShot = route == Route::kPushTwoShot;
  const ReceiveRegion& region =
      layout_.receive(twoShot ? device::kPushTwoShot : device::kPushOneShot);
  const size_t hiddenVectors = rowBytes / 16;
  // All of a launch's rows must fit its slots (one-shot), or a slice of whole rows per rank, each
  // with a vector for its inverse RMS (two-shot).
  const size_t rowsPerSlot =
      (region.slotVectors - device::kSlotDataVector) /
      (twoShot ? device::twoShotNormRowVectors(hiddenVectors) : hiddenVectors);
  return twoShot ? rowsPerSlot * static_cast<size_t>(nranks_) : rowsPerSlot;
}

tpcResult_t Communicator::fusedRoute(size_t rows, size_t hidden, size_t rowBytes,
                                     Route* route) const {
  Route r = chooseRoute(table_, policy_, nranks_, rows * rowBytes, CallKind::kAddRmsNorm);
  // The fused kernels are push kernels: a forced pull route takes the one of its shape.
  if (r == Route::kOneShot) r = Route::kPushOneShot;
  if (r == Route::kTwoShot) r = Route::kPushTwoShot;
  // A small pushBytes leaves this kernel's slots without room for a row: NCCL then carries the
  // call, or else the other kernel if its slots hold one.
  if (r != Route::kNccl && nranks_ > 1 && fusedLaunchRows(r, rowBytes) == 0) {
    const Route other = r == Route::kPushOneShot ? Route::kPushTwoShot : Route::kPushOneShot;
    if (nccl_.available()) {
      r = Route::kNccl;
    } else if (fusedLaunchRows(other, rowBytes) > 0) {
      r = other;
    } else {
      return fail(tpcInvalidUsage,
                  "rank %d: a row of %zu elements does not fit the push kernels' receive buffers "
                  "(pushBytes %zu), and no NCCL carries the call instead; raise pushBytes",
                  rank_, hidden, config_.pushBytes);
    }
  }
  *route = r;
  return tpcSuccess;
}

tpcResult_t Communicator::addRmsNormRouteFor(size_t rows, size_t hidden, tpcDataType_t type,
                                             Route* route) const {
  TPC_CHECK(checkNormRows(type, rows, hidden, rank_, "tpcCommGetAddRmsNormAlgorithm"));
  return fusedRoute(rows, hidden, hidden * typeSize(type), route);
}

tpcResult_t Communicator::checkStream(cudaStream_t stream, CallStream* call) {
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
  // Nothing can join such a capture; a zero-copy call would take a slot that its peers' calls
  // never pair.
  if (capture == cudaStreamCaptureStatusInvalidated) {
    return fail(tpcInvalidUsage,
                "rank %d: an earlier operation invalidated the stream's graph capture; end the "
                "capture (cudaStreamEndCapture) and capture again",
                rank_);
  }
  call->handle = stream;
  call->capturing = capture != cudaStreamCaptureStatusNone;
  // A capturing stream cannot be asked for its id or device; the check waits for its next eager
  // use.
  if (call->capturing) return tpcSuccess;
  TPC_CUDA_CHECK(cudaStreamGetId(stream, &call->id));
  if (streamChecked_ && call->id == checkedStream_) return tpcSuccess;
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
  checkedStream_ = call->id;
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
  // Freed here unless a rank of this process still holds it; then with the last of them.
  local_.reset();
  if (lastCall_ != nullptr) cudaEventDestroy(std::exchange(lastCall_, nullptr));
  if (controlStream_ != nullptr) cudaStreamDestroy(std::exchange(controlStream_, nullptr));
  bootstrap_.reset();
  return result;
}

bool Communicator::failed() const {
  return stickyError_ != tpcSuccess || (failure_.host() != nullptr && failure_.host()->ready);
}

tpcResult_t Communicator::destroy() {
  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  // After a failure NCCL's kernels may wait for a peer that is gone: the device synchronization
  // below would wait with them.
  if (failed()) nccl_.release();
  // Kernels still in flight may read or signal these buffers; peers' kernels that read this
  // rank's memory finish before this rank's own kernels pass their last barrier.
  return releaseAfter(cudaDeviceSynchronize(), "destroying");
}

tpcResult_t Communicator::releaseAfter(cudaError_t syncError, const char* doing) {
  if (syncError != cudaSuccess) {
    TPC_WARN("rank %d: device %d reported %s while %s the communicator", rank_, device_,
             cudaGetErrorString(syncError), doing);
    cudaGetLastError();
  }
  return releaseResources();
}

tpcResult_t Communicator::abort() {
  DeviceScope scope;
  TPC_CHECK(scope.enter(device_));
  if (stickyError_ == tpcSuccess) {
    stickyError_ = tpcInvalidUsage;
    stickyMessage_ = "rank " + std::to_string(rank_) + " was aborted (tpcCommAbort)";
  }
  TPC_INFO("rank %d: aborting", rank_);
  // The failure word stops this rank's kernels at their next check and tells its peers. The copy
  // engine sets it: every multiprocessor may be busy with a kernel that waits.
  if (local_ != nullptr && controlStream_ != nullptr) {
    static const uint32_t kFailed = 1;
    cudaError_t err = cudaMemcpyAsync(&controlOf(rank_)->failureClaim, &kFailed, sizeof(kFailed),
                                      cudaMemcpyHostToDevice, controlStream_);
    if (err == cudaSuccess) err = cudaStreamSynchronize(controlStream_);
    if (err != cudaSuccess) {
      TPC_WARN("rank %d: could not mark the rank failed on device %d: %s", rank_, device_,
               cudaGetErrorString(err));
      cudaGetLastError();
    }
  }
  // NCCL's kernels in flight would otherwise keep the device busy.
  nccl_.release();
  // This rank's kernels now end within a poll, but the device may also run work nothing here can
  // stop: the kernels of a borrowed NCCL communicator waiting for a dead peer, or anyone's. Both a
  // device synchronization and cudaFree would wait for it, so the wait is bounded like a wait for
  // a peer, and past it the rank's memory stays allocated.
  cudaError_t syncError = cudaSuccess;
  if (!synchronizeDeviceWithin(device_, std::chrono::milliseconds(config_.timeoutMs), &syncError)) {
    TPC_WARN(
        "rank %d: device %d still runs work %d ms after the abort (another library's kernels "
        "waiting for a peer?); the rank's device memory stays allocated, as freeing it would wait "
        "for that work",
        rank_, device_, config_.timeoutMs);
    bootstrap_.reset();
    leftAllocated_ = true;
    return tpcSuccess;
  }
  return releaseAfter(syncError, "aborting");
}

}  // namespace tpcomm
