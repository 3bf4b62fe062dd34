#include "memory/shared_buffer.h"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "common/error.h"
#include "kernels/allreduce.h"

namespace tpcomm {
namespace {

constexpr size_t kPage = 4096;

size_t roundUp(size_t value, size_t to) { return (value + to - 1) / to * to; }

// Enables access from the current device to `peer` once per process and pair: asking again
// fails with cudaErrorPeerAccessAlreadyEnabled, which would linger in the caller's
// cudaGetLastError and in every checker's report. Access enabled by someone else before is
// still reported that way once, and taken as success.
tpcResult_t enablePeerAccess(int device, int peer) {
  static std::mutex mutex;
  static std::set<std::pair<int, int>> enabled;
  std::lock_guard<std::mutex> lock(mutex);
  if (!enabled.insert({device, peer}).second) return tpcSuccess;
  const cudaError_t err = cudaDeviceEnablePeerAccess(peer, 0);
  if (err == cudaErrorPeerAccessAlreadyEnabled) {
    cudaGetLastError();
  } else if (err != cudaSuccess) {
    enabled.erase({device, peer});
    return failCuda(err, "cudaDeviceEnablePeerAccess", __FILE__, __LINE__);
  }
  return tpcSuccess;
}

}  // namespace

BufferLayout BufferLayout::make(size_t stagingBytes, size_t pushBytes, int nranks) {
  BufferLayout l;
  l.stagingOffset = roundUp(sizeof(ControlBlock), kPage);
  l.stagingBytes = roundUp(stagingBytes, 16);
  l.scratchOffset = roundUp(l.stagingOffset + l.stagingBytes, kPage);
  l.scratchBytes = roundUp((l.stagingBytes / 16 + 1) / 2 * 16, 16);
  size_t end = l.scratchOffset + l.scratchBytes;
  if (nranks > 1) {
    const size_t peers = static_cast<size_t>(nranks - 1);
    ReceiveRegion& one = l.push[0];
    one.chunkBytes = std::max<size_t>(std::min(pushBytes, kPushOneShotBytes) / peers / 16 * 16, 16);
    one.slotVectors = static_cast<uint32_t>(device::kSlotDataVector +
                                            roundUp(one.chunkBytes / 16, device::kSlotDataVector));
    one.bufferBytes = peers * one.slotVectors * 16;
    ReceiveRegion& two = l.push[1];
    const size_t slice = std::max<size_t>(pushBytes / (16 * nranks), 1);
    two.chunkBytes = slice * 16 * nranks;
    two.slotVectors =
        static_cast<uint32_t>(device::kSlotDataVector + roundUp(slice, device::kSlotDataVector));
    two.bufferBytes = 2 * peers * two.slotVectors * 16;
    for (ReceiveRegion& region : l.push) {
      region.offset = roundUp(end, kPage);
      end = region.offset + region.bytes();
    }
  }
  l.totalBytes = roundUp(end, kPage);
  return l;
}

uint64_t processToken() {
  static const uint64_t token = [] {
    uint64_t t = 0;
    if (getrandom(&t, sizeof(t), 0) != sizeof(t)) t = 0;
    // pid alone is not unique across pid namespaces on one host; the random part is.
    return t ^ (static_cast<uint64_t>(getpid()) << 32);
  }();
  return token;
}

tpcResult_t LocalBuffer::allocate(const BufferLayout& layout) {
  TPC_CUDA_CHECK(cudaGetDevice(&device_));
  void* p = nullptr;
  TPC_CUDA_CHECK(cudaMalloc(&p, layout.totalBytes));
  base_ = static_cast<char*>(p);
  TPC_CUDA_CHECK(cudaMemset(base_, 0, layout.totalBytes));
  for (const ReceiveRegion& region : layout.push) {
    TPC_CUDA_CHECK(fillEmpty(base_ + region.offset, region.bytes()));
  }
  TPC_CUDA_CHECK(cudaDeviceSynchronize());
  return tpcSuccess;
}

tpcResult_t LocalBuffer::exportTo(BufferExport* out) const {
  *out = BufferExport{};
  out->processToken = processToken();
  out->device = device_;
  out->address = reinterpret_cast<uint64_t>(base_);
  // Peers in this process need no handle; where the driver cannot export memory (some virtual
  // machines), only peers in other processes fail, and they say why.
  const cudaError_t err = cudaIpcGetMemHandle(&out->handle, base_);
  out->hasHandle = err == cudaSuccess;
  if (err != cudaSuccess) {
    cudaGetLastError();
    TPC_INFO("cannot export the rank buffer through CUDA IPC: %s", cudaGetErrorString(err));
  }
  return tpcSuccess;
}

tpcResult_t LocalBuffer::release() {
  if (base_ == nullptr) return tpcSuccess;
  char* p = std::exchange(base_, nullptr);
  TPC_CUDA_CHECK(cudaFree(p));
  return tpcSuccess;
}

namespace {

struct Published {
  std::mutex mutex;
  std::map<std::pair<std::string, int>, std::weak_ptr<LocalBuffer>> buffers;
};

Published& published() {
  static Published p;
  return p;
}

}  // namespace

void publishLocalBuffer(const std::string& communicator, int rank,
                        const std::shared_ptr<LocalBuffer>& buffer) {
  Published& p = published();
  std::lock_guard<std::mutex> lock(p.mutex);
  for (auto it = p.buffers.begin(); it != p.buffers.end();) {
    it = it->second.expired() ? p.buffers.erase(it) : std::next(it);
  }
  p.buffers[{communicator, rank}] = buffer;
}

PeerMapping::PeerMapping(PeerMapping&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)),
      opened_(std::exchange(other.opened_, false)),
      kept_(std::move(other.kept_)) {}

PeerMapping& PeerMapping::operator=(PeerMapping&& other) noexcept {
  if (this != &other) {
    release();
    base_ = std::exchange(other.base_, nullptr);
    opened_ = std::exchange(other.opened_, false);
    kept_ = std::move(other.kept_);
  }
  return *this;
}

tpcResult_t PeerMapping::open(int rank, int peerRank, const BufferExport& peer,
                              const std::string& communicator) {
  int device = -1;
  TPC_CUDA_CHECK(cudaGetDevice(&device));
  if (peer.processToken != processToken()) {
    if (!peer.hasHandle) {
      return fail(tpcNotSupported,
                  "rank %d (device %d): rank %d runs in another process but its driver could not "
                  "export its buffer through CUDA IPC",
                  rank, device, peerRank);
    }
    void* p = nullptr;
    const cudaError_t err = cudaIpcOpenMemHandle(&p, peer.handle, cudaIpcMemLazyEnablePeerAccess);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return fail(tpcUnhandledCudaError,
                  "rank %d (device %d): cannot map rank %d's buffer through CUDA IPC: %s", rank,
                  device, peerRank, cudaGetErrorString(err));
    }
    base_ = static_cast<char*>(p);
    opened_ = true;
    return tpcSuccess;
  }
  if (peer.device != device) {
    int canAccess = 0;
    TPC_CUDA_CHECK(cudaDeviceCanAccessPeer(&canAccess, device, peer.device));
    if (!canAccess) {
      return fail(tpcNotSupported,
                  "rank %d (device %d): no peer access to device %d of rank %d; tpcomm needs "
                  "every pair of devices to reach each other's memory",
                  rank, device, peer.device, peerRank);
    }
    TPC_CHECK(enablePeerAccess(device, peer.device));
  }
  {
    Published& p = published();
    std::lock_guard<std::mutex> lock(p.mutex);
    auto it = p.buffers.find({communicator, peerRank});
    if (it != p.buffers.end()) kept_ = it->second.lock();
  }
  if (kept_ == nullptr || reinterpret_cast<uint64_t>(kept_->base()) != peer.address) {
    kept_.reset();
    return fail(tpcInternalError, "rank %d: rank %d of this process has not published its buffer",
                rank, peerRank);
  }
  base_ = kept_->base();
  opened_ = false;
  return tpcSuccess;
}

tpcResult_t PeerMapping::release() {
  kept_.reset();
  if (base_ == nullptr) return tpcSuccess;
  char* p = std::exchange(base_, nullptr);
  if (std::exchange(opened_, false)) TPC_CUDA_CHECK(cudaIpcCloseMemHandle(p));
  return tpcSuccess;
}

}  // namespace tpcomm
