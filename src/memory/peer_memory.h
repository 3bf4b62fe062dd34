// Sharing arbitrary device buffers with peer processes, for zero-copy all-reduces.
//
// A buffer is exported by the allocation it lies in: cudaMalloc memory through a legacy CUDA IPC
// handle of the allocation's base (handles name whole allocations) plus the offset; cuMem (VMM)
// memory, such as PyTorch's expandable segments, segment by segment, each as a POSIX file
// descriptor that travels over the rendezvous socket (SCM_RIGHTS) and is mapped by the peer into
// one contiguous range. Other memory (host, managed) cannot be shared and says so.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tpcomm/tpcomm.h"

namespace tpcomm {

enum class MemoryKind : uint32_t { kUnshareable = 0, kLegacyIpc = 1, kVmm = 2 };

constexpr int kMaxVmmSegments = 32;

// What a rank tells its peers about one buffer. Plain data: it travels as bytes.
struct ExportedBuffer {
  MemoryKind kind;
  uint32_t segments;       // VMM: how many segments (and file descriptors) describe it
  uint64_t address;        // the buffer in the owner's process
  uint64_t base;           // the start of its allocation (legacy) or of its first segment (VMM)
  uint64_t spanBytes;      // the allocation's size (legacy) or all segments together (VMM)
  cudaIpcMemHandle_t ipc;  // legacy
  uint64_t segmentBytes[kMaxVmmSegments];  // VMM, in address order
};

// Describes the `bytes` at `ptr` for peers in other processes. VMM segments add one file
// descriptor each to *fds (owned by the caller). Unshareable memory is not an error: kind says.
tpcResult_t exportBuffer(const void* ptr, size_t bytes, ExportedBuffer* out, std::vector<int>* fds,
                         std::string* whyNot);

// The peer buffers this rank has mapped. A legacy allocation is opened once per peer however
// many buffers lie in it (opening it twice fails); VMM buffers are mapped per import. Every
// import is counted, and the mapping goes when its last reference is released.
class PeerMemory {
 public:
  PeerMemory() = default;
  PeerMemory(const PeerMemory&) = delete;
  PeerMemory& operator=(const PeerMemory&) = delete;
  ~PeerMemory() { releaseAll(); }

  // Maps peer `peer`'s buffer `e` (VMM: with its segments' descriptors, which this call closes)
  // and returns where e.address lies in this process, plus a reference to release.
  tpcResult_t open(int peer, const ExportedBuffer& e, const int* fds, const char** mapped,
                   uint64_t* ref);
  void release(uint64_t ref);
  void releaseAll();
  // Bytes of peer memory mapped now.
  size_t mappedBytes() const;

 private:
  struct Mapping {
    MemoryKind kind;
    int peer;
    std::string key;  // legacy: the peer and its handle's bytes
    char* base = nullptr;
    size_t bytes = 0;        // the address range reserved (VMM) or opened (legacy)
    size_t mappedBytes = 0;  // VMM: of it, mapped so far
    std::vector<CUmemGenericAllocationHandle> handles;  // VMM segments
    int refs = 0;
  };
  tpcResult_t mapVmm(const ExportedBuffer& e, const int* fds, Mapping* m);
  void unmap(Mapping* m);

  std::map<uint64_t, Mapping> mappings_;
  uint64_t nextRef_ = 1;
};

}  // namespace tpcomm
