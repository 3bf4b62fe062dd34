// The device memory a rank shares with its peers, and its peers' memory mapped into this rank.
//
// Each rank owns one allocation: a control block of signal words at its head, then the staging
// buffer, the scratch buffer and the push kernels' receive buffers. Peers in other processes map
// it through a CUDA IPC handle; peers in this process use the pointer directly (through peer
// access when on another device) and share ownership of it, so that a rank destroyed or aborted
// before them never frees memory their kernels still read.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace tpcomm {

struct ControlBlock {
  uint32_t inbox[device::kNumPullAlgorithms][device::kInboxWords];
  uint32_t tags[device::kNumPullAlgorithms][device::kInboxWords];
  uint32_t epochs[device::kNumPullAlgorithms][device::kMaxBlocks];
  device::PushState push[device::kNumPushAlgorithms][device::kMaxPushBlocks];
  uint32_t failureClaim;                 // nonzero once this rank failed; peers read it
  uint32_t p2pCheck[device::kMaxRanks];  // rank q's check pattern lands in word q
};

// One push protocol's receive buffers in a rank's allocation: three rotating buffers of `slots`
// slots of `slotVectors` 16-byte vectors (see device/params.cuh). Every rank has the same shape.
struct ReceiveRegion {
  size_t offset = 0;
  size_t bufferBytes = 0;
  uint32_t slotVectors = 0;
  size_t chunkBytes = 0;  // the largest message one launch carries
  size_t bytes() const { return 3 * bufferBytes; }
};

// The most push one-shot's buffers hold per launch, all peers together. The algorithm table sends
// it messages up to 2 MB (two ranks; less with more), so larger buffers would only take memory
// from push two-shot, whose bandwidth grows with its launches (see defaultPushBytes). Larger calls
// forced onto push one-shot go in chunks.
constexpr size_t kPushOneShotBytes = size_t{4} << 20;

struct BufferLayout {
  size_t stagingOffset = 0;
  size_t stagingBytes = 0;
  size_t scratchOffset = 0;
  size_t scratchBytes = 0;
  ReceiveRegion push[device::kNumPushAlgorithms];  // by algorithm - kPushOneShot
  size_t totalBytes = 0;

  // Two-shot keeps one reduced slice of at most half a chunk (nranks >= 2) in scratch. Push
  // one-shot receives a message of min(pushBytes, kPushOneShotBytes) / (nranks - 1) from every
  // peer; push two-shot receives, per peer, a slice of pushBytes / nranks and a reduced slice as
  // large.
  static BufferLayout make(size_t stagingBytes, size_t pushBytes, int nranks);
  const ReceiveRegion& receive(int algorithm) const {
    return push[algorithm - device::kPushOneShot];
  }
};

// Random per process: ranks with the same token share an address space.
uint64_t processToken();

// What a rank tells its peers about its allocation.
struct BufferExport {
  uint64_t processToken;
  int32_t device;     // CUDA ordinal inside the owning process
  int32_t hasHandle;  // 0 when the driver could not export the memory (only same-process peers)
  cudaIpcMemHandle_t handle;
  uint64_t address;  // valid inside the owning process
};

class LocalBuffer {
 public:
  LocalBuffer() = default;
  LocalBuffer(const LocalBuffer&) = delete;
  LocalBuffer& operator=(const LocalBuffer&) = delete;
  ~LocalBuffer() { release(); }

  // Allocates the buffer on the current device, zeroed and with empty receive buffers, before
  // any peer can see it.
  tpcResult_t allocate(const BufferLayout& layout);
  tpcResult_t exportTo(BufferExport* out) const;
  char* base() const { return base_; }
  tpcResult_t release();

 private:
  char* base_ = nullptr;
  int device_ = -1;
};

// A peer's allocation, mapped into this rank.
class PeerMapping {
 public:
  PeerMapping() = default;
  PeerMapping(const PeerMapping&) = delete;
  PeerMapping& operator=(const PeerMapping&) = delete;
  PeerMapping(PeerMapping&& other) noexcept;
  PeerMapping& operator=(PeerMapping&& other) noexcept;
  ~PeerMapping() { release(); }

  // Maps rank `peerRank`'s buffer for use by kernels of `rank` on the current device. A peer in
  // this process is found among the buffers published under `communicator`.
  tpcResult_t open(int rank, int peerRank, const BufferExport& peer,
                   const std::string& communicator);
  char* base() const { return base_; }
  // Mapped through CUDA IPC (memory of another process), rather than shared within this one.
  bool opened() const { return opened_; }
  tpcResult_t release();

 private:
  char* base_ = nullptr;
  bool opened_ = false;                // through cudaIpcOpenMemHandle, which must be closed
  std::shared_ptr<LocalBuffer> kept_;  // a peer in this process: its buffer, kept alive
};

// Makes a rank's buffer findable by the other ranks of `communicator` in this process.
void publishLocalBuffer(const std::string& communicator, int rank,
                        const std::shared_ptr<LocalBuffer>& buffer);

// One object of T in pinned host memory that kernels can write (a mapped allocation).
template <typename T>
class MappedHost {
 public:
  MappedHost() = default;
  MappedHost(const MappedHost&) = delete;
  MappedHost& operator=(const MappedHost&) = delete;
  ~MappedHost() {
    if (host_ != nullptr) cudaFreeHost(host_);
  }
  cudaError_t allocate() {
    void* p = nullptr;
    cudaError_t err = cudaHostAlloc(&p, sizeof(T), cudaHostAllocMapped | cudaHostAllocPortable);
    if (err != cudaSuccess) return err;
    host_ = static_cast<T*>(p);
    *host_ = T{};
    return cudaHostGetDevicePointer(reinterpret_cast<void**>(&device_), p, 0);
  }
  T* host() const { return host_; }
  T* device() const { return device_; }

 private:
  T* host_ = nullptr;
  T* device_ = nullptr;
};

}  // namespace tpcomm
