// Device memory allocated through the cuMem (VMM) API and exportable as POSIX file descriptors,
// as PyTorch's expandable segments allocate it. Driver entry points come through the runtime, so
// the tests need no libcuda at link time.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace tpcomm {
namespace testing {

class VmmBuffer {
 public:
  // `bytes` rounded up to the allocation granularity, on the current device.
  explicit VmmBuffer(size_t bytes) {
    int device = 0;
    if (!load() || cudaGetDevice(&device) != cudaSuccess) return;
    CUmemAllocationProp prop = {};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    size_t granularity = 0;
    if (granularity_(&granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS) return;
    bytes_ = (bytes + granularity - 1) / granularity * granularity;
    if (create_(&handle_, bytes_, &prop, 0) != CUDA_SUCCESS) return;
    if (reserve_(&va_, bytes_, 0, 0, 0) != CUDA_SUCCESS) return;
    if (map_(va_, bytes_, 0, handle_, 0) != CUDA_SUCCESS) return;
    CUmemAccessDesc access = {};
    access.location = prop.location;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    ok_ = setAccess_(va_, bytes_, &access, 1) == CUDA_SUCCESS;
  }
  VmmBuffer(const VmmBuffer&) = delete;
  VmmBuffer& operator=(const VmmBuffer&) = delete;
  ~VmmBuffer() {
    if (va_ != 0) {
      unmap_(va_, bytes_);
      addressFree_(va_, bytes_);
    }
    if (handle_ != 0) release_(handle_);
  }

  bool ok() const { return ok_; }
  template <typename T = void>
  T* get() const {
    return reinterpret_cast<T*>(va_);
  }

 private:
  template <typename Fn>
  static bool entry(const char* name, Fn* fn) {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult status;
    return cudaGetDriverEntryPointByVersion(name, &p, 12000, cudaEnableDefault, &status) ==
               cudaSuccess &&
           status == cudaDriverEntryPointSuccess && (*fn = reinterpret_cast<Fn>(p)) != nullptr;
  }
  bool load() {
    return entry("cuMemGetAllocationGranularity", &granularity_) &&
           entry("cuMemCreate", &create_) && entry("cuMemAddressReserve", &reserve_) &&
           entry("cuMemMap", &map_) && entry("cuMemSetAccess", &setAccess_) &&
           entry("cuMemUnmap", &unmap_) && entry("cuMemAddressFree", &addressFree_) &&
           entry("cuMemRelease", &release_);
  }

  CUresult (*granularity_)(size_t*, const CUmemAllocationProp*,
                           CUmemAllocationGranularity_flags) = nullptr;
  CUresult (*create_)(CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*,
                      unsigned long long) = nullptr;
  CUresult (*reserve_)(CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long) = nullptr;
  CUresult (*map_)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                   unsigned long long) = nullptr;
  CUresult (*setAccess_)(CUdeviceptr, size_t, const CUmemAccessDesc*, size_t) = nullptr;
  CUresult (*unmap_)(CUdeviceptr, size_t) = nullptr;
  CUresult (*addressFree_)(CUdeviceptr, size_t) = nullptr;
  CUresult (*release_)(CUmemGenericAllocationHandle) = nullptr;
  CUmemGenericAllocationHandle handle_ = 0;
  CUdeviceptr va_ = 0;
  size_t bytes_ = 0;
  bool ok_ = false;
};

}  // namespace testing
}  // namespace tpcomm
