#include "memory/shared_buffer.h"

#include <sys/random.h>
#include <unistd.h>

#include <utility>

#include "common/error.h"

namespace tpcomm {
namespace {

constexpr size_t kPage = 4096;

size_t roundUp(size_t value, size_t to) { return (value + to - 1) / to * to; }

}  // namespace

BufferLayout BufferLayout::forStaging(size_t stagingBytes) {
  BufferLayout l;
  l.stagingOffset = roundUp(sizeof(ControlBlock), kPage);
  l.stagingBytes = roundUp(stagingBytes, 16);
  l.scratchOffset = roundUp(l.stagingOffset + l.stagingBytes, kPage);
  l.scratchBytes = roundUp((l.stagingBytes / 16 + 1) / 2 * 16, 16);
  l.totalBytes = roundUp(l.scratchOffset + l.scratchBytes, kPage);
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

PeerMapping::PeerMapping(PeerMapping&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), opened_(std::exchange(other.opened_, false)) {}

PeerMapping& PeerMapping::operator=(PeerMapping&& other) noexcept {
  if (this != &other) {
    release();
    base_ = std::exchange(other.base_, nullptr);
    opened_ = std::exchange(other.opened_, false);
  }
  return *this;
}

tpcResult_t PeerMapping::open(int rank, int peerRank, const BufferExport& peer) {
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
    const cudaError_t err = cudaDeviceEnablePeerAccess(peer.device, 0);
    if (err == cudaErrorPeerAccessAlreadyEnabled) {
      cudaGetLastError();
    } else if (err != cudaSuccess) {
      return failCuda(err, "cudaDeviceEnablePeerAccess", __FILE__, __LINE__);
    }
  }
  base_ = reinterpret_cast<char*>(peer.address);
  opened_ = false;
  return tpcSuccess;
}

tpcResult_t PeerMapping::release() {
  if (base_ == nullptr) return tpcSuccess;
  char* p = std::exchange(base_, nullptr);
  if (std::exchange(opened_, false)) TPC_CUDA_CHECK(cudaIpcCloseMemHandle(p));
  return tpcSuccess;
}

}  // namespace tpcomm
