#include "memory/peer_memory.h"

#include <unistd.h>

#include <cstring>

#include "common/error.h"

namespace tpcomm {
namespace {

// Driver entry points, fetched through the runtime: tpcomm does not link libcuda.
struct Driver {
  CUresult (*getAttributes)(unsigned, CUpointer_attribute*, void**, CUdeviceptr) = nullptr;
  CUresult (*getAddressRange)(CUdeviceptr*, size_t*, CUdeviceptr) = nullptr;
  CUresult (*retainHandle)(CUmemGenericAllocationHandle*, void*) = nullptr;
  CUresult (*release)(CUmemGenericAllocationHandle) = nullptr;
  CUresult (*exportHandle)(void*, CUmemGenericAllocationHandle, CUmemAllocationHandleType,
                           unsigned long long) = nullptr;
  CUresult (*importHandle)(CUmemGenericAllocationHandle*, void*,
                           CUmemAllocationHandleType) = nullptr;
  CUresult (*reserve)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long) = nullptr;
  CUresult (*addressFree)(CUdeviceptr, size_t) = nullptr;
  CUresult (*map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                  unsigned long long) = nullptr;
  CUresult (*unmap)(CUdeviceptr, size_t) = nullptr;
  CUresult (*setAccess)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t) = nullptr;
  bool ok = false;
};

template <typename Fn>
bool entry(const char* name, Fn* fn) {
  void* p = nullptr;
  cudaDriverEntryPointQueryResult status;
  if (cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &status) !=
          cudaSuccess ||
      status != cudaDriverEntryPointSuccess) {
    cudaGetLastError();
    return false;
  }
  *fn = reinterpret_cast<Fn>(p);
  return true;
}

const Driver& driver() {
  static const Driver d = [] {
    Driver x;
    x.ok = entry("cuPointerGetAttributes", &x.getAttributes) &&
           entry("cuMemGetAddressRange", &x.getAddressRange) &&
           entry("cuMemRetainAllocationHandle", &x.retainHandle) &&
           entry("cuMemRelease", &x.release) &&
           entry("cuMemExportToShareableHandle", &x.exportHandle) &&
           entry("cuMemImportFromShareableHandle", &x.importHandle) &&
           entry("cuMemAddressReserve", &x.reserve) && entry("cuMemAddressFree", &x.addressFree) &&
           entry("cuMemMap", &x.map) && entry("cuMemUnmap", &x.unmap) &&
           entry("cuMemSetAccess", &x.setAccess);
    return x;
  }();
  return d;
}

void closeAll(std::vector<int>* fds, size_t from) {
  for (size_t i = from; i < fds->size(); ++i) close((*fds)[i]);
  fds->resize(from);
}

}  // namespace

tpcResult_t exportBuffer(const void* ptr, size_t bytes, ExportedBuffer* out, std::vector<int>* fds,
                         std::string* whyNot) {
  *out = ExportedBuffer{};
  out->kind = MemoryKind::kUnshareable;
  out->address = reinterpret_cast<uint64_t>(ptr);
  const Driver& drv = driver();
  if (!drv.ok) {
    *whyNot = "the driver lacks the entry points for sharing memory";
    return tpcSuccess;
  }
  // Asked all at once, these never fail for memory CUDA does not know (they read as zero), so
  // that sharing an unshareable buffer leaves no failed call behind.
  unsigned long long memoryType = 0, managed = 0, legacyIpc = 0, handleTypes = 0;
  CUdeviceptr base = 0;
  size_t size = 0;
  CUpointer_attribute attributes[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                      CU_POINTER_ATTRIBUTE_IS_MANAGED,
                                      CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE,
                                      CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES,
                                      CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                      CU_POINTER_ATTRIBUTE_RANGE_SIZE};
  void* values[] = {&memoryType, &managed, &legacyIpc, &handleTypes, &base, &size};
  const CUdeviceptr begin = reinterpret_cast<CUdeviceptr>(ptr);
  if (drv.getAttributes(6, attributes, values, begin) != CUDA_SUCCESS ||
      memoryType != CU_MEMORYTYPE_DEVICE || managed != 0 || base == 0) {
    *whyNot = "not device memory of this context (host or managed memory?)";
    return tpcSuccess;
  }
  // cudaMalloc memory: one handle for the whole allocation, from its base.
  if (legacyIpc != 0) {
    if (begin + bytes > base + size) {
      *whyNot = "the buffer runs past the end of its allocation";
      return tpcSuccess;
    }
    if (cudaIpcGetMemHandle(&out->ipc, reinterpret_cast<void*>(base)) != cudaSuccess) {
      cudaGetLastError();
      *whyNot = "cudaIpcGetMemHandle refused the allocation";
      return tpcSuccess;
    }
    out->kind = MemoryKind::kLegacyIpc;
    out->base = base;
    out->spanBytes = size;
    return tpcSuccess;
  }
  // cuMem memory: every segment the buffer touches, exported as a file descriptor.
  if ((handleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) == 0) {
    *whyNot = "cuMem memory allocated without a POSIX file descriptor handle type";
    return tpcSuccess;
  }
  CUmemGenericAllocationHandle handle;
  const size_t firstFd = fds->size();
  uint64_t span = 0;
  for (CUdeviceptr at = begin; at < begin + bytes;) {
    CUdeviceptr segment = 0;
    size_t segmentBytes = 0;
    if (out->segments == kMaxVmmSegments ||
        drv.getAddressRange(&segment, &segmentBytes, at) != CUDA_SUCCESS ||
        drv.retainHandle(&handle, reinterpret_cast<void*>(segment)) != CUDA_SUCCESS) {
      closeAll(fds, firstFd);
      *whyNot = "its cuMem segments cannot be walked (more than 32?)";
      return tpcSuccess;
    }
    int fd = -1;
    const CUresult res = drv.exportHandle(&fd, handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    drv.release(handle);
    if (res != CUDA_SUCCESS) {
      closeAll(fds, firstFd);
      *whyNot = "cuMem memory allocated without a POSIX file descriptor handle type";
      return tpcSuccess;
    }
    if (out->segments == 0) out->base = segment;
    fds->push_back(fd);
    out->segmentBytes[out->segments++] = segmentBytes;
    span += segmentBytes;
    at = segment + segmentBytes;
  }
  out->kind = MemoryKind::kVmm;
  out->spanBytes = span;
  return tpcSuccess;
}

tpcResult_t PeerMemory::mapVmm(const ExportedBuffer& e, const int* fds, Mapping* m) {
  const Driver& drv = driver();
  int device = 0;
  TPC_CUDA_CHECK(cudaGetDevice(&device));
  CUdeviceptr va = 0;
  if (!drv.ok || drv.reserve(&va, e.spanBytes, 0, 0, 0) != CUDA_SUCCESS) {
    return fail(tpcUnhandledCudaError, "cannot reserve %llu bytes of address space",
                static_cast<unsigned long long>(e.spanBytes));
  }
  m->base = reinterpret_cast<char*>(va);
  m->bytes = e.spanBytes;
  size_t offset = 0;
  for (uint32_t s = 0; s < e.segments; ++s) {
    CUmemGenericAllocationHandle handle;
    if (drv.importHandle(&handle, reinterpret_cast<void*>(static_cast<intptr_t>(fds[s])),
                         CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) != CUDA_SUCCESS) {
      return fail(tpcUnhandledCudaError, "cannot import segment %u of a peer's cuMem buffer", s);
    }
    m->handles.push_back(handle);
    if (drv.map(va + offset, e.segmentBytes[s], 0, handle, 0) != CUDA_SUCCESS) {
      return fail(tpcUnhandledCudaError, "cannot map segment %u of a peer's cuMem buffer", s);
    }
    offset += e.segmentBytes[s];
    m->mappedBytes = offset;
  }
  CUmemAccessDesc access = {};
  access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  access.location.id = device;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  if (drv.setAccess(va, e.spanBytes, &access, 1) != CUDA_SUCCESS) {
    return fail(tpcUnhandledCudaError, "cannot give device %d access to a peer's cuMem buffer",
                device);
  }
  return tpcSuccess;
}

tpcResult_t PeerMemory::open(int peer, const ExportedBuffer& e, const int* fds, const char** mapped,
                             uint64_t* ref) {
  const uint64_t offset = e.address - e.base;
  if (e.kind == MemoryKind::kLegacyIpc) {
    const std::string key = std::to_string(peer) + ":" +
                            std::string(reinterpret_cast<const char*>(&e.ipc), sizeof(e.ipc));
    for (auto& [id, m] : mappings_) {
      if (m.kind == MemoryKind::kLegacyIpc && m.key == key) {
        ++m.refs;
        *mapped = m.base + offset;
        *ref = id;
        return tpcSuccess;
      }
    }
    void* p = nullptr;
    const cudaError_t err = cudaIpcOpenMemHandle(&p, e.ipc, cudaIpcMemLazyEnablePeerAccess);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return fail(tpcUnhandledCudaError, "cannot open rank %d's buffer through CUDA IPC: %s", peer,
                  cudaGetErrorString(err));
    }
    Mapping m;
    m.kind = e.kind;
    m.peer = peer;
    m.key = key;
    m.base = static_cast<char*>(p);
    m.bytes = e.spanBytes;
    m.refs = 1;
    *ref = nextRef_++;
    *mapped = m.base + offset;
    mappings_.emplace(*ref, std::move(m));
    return tpcSuccess;
  }
  if (e.kind != MemoryKind::kVmm) {
    return fail(tpcInvalidArgument, "rank %d's buffer cannot be shared", peer);
  }
  Mapping m;
  m.kind = e.kind;
  m.peer = peer;
  const tpcResult_t res = mapVmm(e, fds, &m);
  for (uint32_t s = 0; s < e.segments; ++s) close(fds[s]);
  if (res != tpcSuccess) {
    unmap(&m);
    return res;
  }
  m.refs = 1;
  *ref = nextRef_++;
  *mapped = m.base + offset;
  mappings_.emplace(*ref, std::move(m));
  return tpcSuccess;
}

void PeerMemory::unmap(Mapping* m) {
  if (m->kind == MemoryKind::kLegacyIpc) {
    if (m->base != nullptr && cudaIpcCloseMemHandle(m->base) != cudaSuccess) cudaGetLastError();
    return;
  }
  const Driver& drv = driver();
  const CUdeviceptr va = reinterpret_cast<CUdeviceptr>(m->base);
  // Segments are mapped in order from the start: unmap exactly what was mapped.
  if (va != 0 && m->mappedBytes != 0) drv.unmap(va, m->mappedBytes);
  for (CUmemGenericAllocationHandle h : m->handles) drv.release(h);
  if (va != 0) drv.addressFree(va, m->bytes);
}

void PeerMemory::release(uint64_t ref) {
  auto it = mappings_.find(ref);
  if (it == mappings_.end() || --it->second.refs > 0) return;
  unmap(&it->second);
  mappings_.erase(it);
}

void PeerMemory::releaseAll() {
  for (auto& [id, m] : mappings_) unmap(&m);
  mappings_.clear();
}

size_t PeerMemory::mappedBytes() const {
  size_t total = 0;
  for (const auto& [id, m] : mappings_) total += m.bytes;
  return total;
}

}  // namespace tpcomm
