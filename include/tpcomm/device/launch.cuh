// How every tpcomm kernel is launched: one parameter block, a grid, a stream, and the launch
// attributes below.
//
// With `dependent` set the kernel is launched as a programmatic dependent of the kernel before it
// in the stream: it starts while that kernel finishes and waits for it before touching memory. A
// `completion` event records the launch's programmatic completion
// (cudaLaunchAttributeProgrammaticEvent): a kernel on another stream that waits for the event and
// for the kernels before it (griddepcontrol.wait), as every tpcomm kernel does, runs after this
// one, and no event record between this stream's kernels ends their overlap.
//
// An eager call of a few kilobytes is bound by the host's launch (its kernel takes less), so the
// launch goes to the driver directly: cuLaunchKernelEx on the kernel's context-independent handle
// (cudaGetKernel), looked up once per thread. On one host with slow launches (2 H200s), 300
// launches with these attributes took 3.77-4.08 us each that way and 4.34-4.63 through
// cudaLaunchKernelEx; eager push one-shot calls of 8 B to 256 KB took 4.69-5.34 us against
// 4.95-5.67 (medians of three alternating runs, in and out of place: 10 of 12 faster), graph
// calls the same. Where the driver path is missing or refuses the launch, cudaLaunchKernelEx
// launches it, and reports the error if any.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <unordered_map>

#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

namespace launch_detail {

using DriverLaunch = CUresult (*)(const CUlaunchConfig*, CUfunction, void**, void**);

// The driver's cuLaunchKernelEx, through the runtime (tpcomm does not link the driver library);
// null where the driver lacks it.
inline DriverLaunch driverLaunch() {
  static const DriverLaunch launch = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status;
    if (cudaGetDriverEntryPointByVersion("cuLaunchKernelEx", &fn, 12000, cudaEnableDefault,
                                         &status) != cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return DriverLaunch{nullptr};
    }
    return reinterpret_cast<DriverLaunch>(fn);
  }();
  return launch;
}

// The handle the driver launches `entry` by on any device (a CUkernel, passed as a CUfunction);
// null where the runtime has none.
inline CUfunction driverKernel(const void* entry) {
  thread_local std::unordered_map<const void*, CUfunction> handles;
  const auto found = handles.find(entry);
  if (found != handles.end()) return found->second;
  cudaKernel_t kernel = nullptr;
  if (cudaGetKernel(&kernel, entry) != cudaSuccess) {
    cudaGetLastError();
    kernel = nullptr;
  }
  const CUfunction handle = reinterpret_cast<CUfunction>(kernel);
  handles.emplace(entry, handle);
  return handle;
}

constexpr unsigned kMaxAttributes = 3;

// Launches `entry` as `config` says through the driver; false where it did not launch.
inline bool launchThroughDriver(const cudaLaunchConfig_t& config, const void* entry, void* params) {
  const DriverLaunch launch = driverLaunch();
  const CUfunction kernel = launch != nullptr ? driverKernel(entry) : nullptr;
  if (kernel == nullptr || config.numAttrs > kMaxAttributes) return false;
  CUlaunchAttribute attributes[kMaxAttributes] = {};
  for (unsigned i = 0; i < config.numAttrs; ++i) {
    const cudaLaunchAttribute& from = config.attrs[i];
    CUlaunchAttribute& to = attributes[i];
    switch (from.id) {
      case cudaLaunchAttributeProgrammaticEvent:
        to.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT;
        to.value.programmaticEvent.event = from.val.programmaticEvent.event;
        to.value.programmaticEvent.flags = from.val.programmaticEvent.flags;
        to.value.programmaticEvent.triggerAtBlockStart =
            from.val.programmaticEvent.triggerAtBlockStart;
        break;
      case cudaLaunchAttributeProgrammaticStreamSerialization:
        to.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        to.value.programmaticStreamSerializationAllowed =
            from.val.programmaticStreamSerializationAllowed;
        break;
      case cudaLaunchAttributeClusterDimension:
        to.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        to.value.clusterDim.x = from.val.clusterDim.x;
        to.value.clusterDim.y = from.val.clusterDim.y;
        to.value.clusterDim.z = from.val.clusterDim.z;
        break;
      default:
        return false;
    }
  }
  CUlaunchConfig driverConfig = {};
  driverConfig.gridDimX = config.gridDim.x;
  driverConfig.gridDimY = config.gridDim.y;
  driverConfig.gridDimZ = config.gridDim.z;
  driverConfig.blockDimX = config.blockDim.x;
  driverConfig.blockDimY = config.blockDim.y;
  driverConfig.blockDimZ = config.blockDim.z;
  driverConfig.sharedMemBytes = static_cast<unsigned>(config.dynamicSmemBytes);
  driverConfig.hStream = config.stream;
  driverConfig.attrs = config.numAttrs > 0 ? attributes : nullptr;
  driverConfig.numAttrs = config.numAttrs;
  void* args[] = {params};
  return launch(&driverConfig, kernel, args, nullptr) == CUDA_SUCCESS;
}

}  // namespace launch_detail

// `cluster` > 1: in thread block clusters of that many blocks (a divisor of `blocks`).
template <typename Params>
inline cudaError_t launchKernel(void (*kernel)(Params), const Params& p, int blocks, bool dependent,
                                cudaStream_t stream, int threads = kBlockThreads, int cluster = 1,
                                cudaEvent_t completion = nullptr) {
  cudaLaunchAttribute attributes[launch_detail::kMaxAttributes];
  unsigned count = 0;
  if (completion != nullptr) {
    attributes[count].id = cudaLaunchAttributeProgrammaticEvent;
    attributes[count].val.programmaticEvent.event = completion;
    attributes[count].val.programmaticEvent.flags = 0;
    attributes[count++].val.programmaticEvent.triggerAtBlockStart = 0;
  }
  if (dependent) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster > 1) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count++].val.clusterDim = {static_cast<unsigned>(cluster), 1, 1};
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.stream = stream;
  config.attrs = count > 0 ? attributes : nullptr;
  config.numAttrs = count;
  // The driver only reads the parameters.
  if (launch_detail::launchThroughDriver(config, reinterpret_cast<const void*>(kernel),
                                         const_cast<Params*>(&p))) {
    return cudaSuccess;
  }
  return cudaLaunchKernelEx(&config, kernel, p);
}

TPCOMM_DEVICE_NAMESPACE_END
