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
// launch goes to the driver directly: cuLaunchKernelEx on the kernel's function in the current
// context where the stream belongs to it (contextFunction), else on its context-independent handle
// (cudaGetKernel), each looked up once per thread. On one host with slow launches (2 H200s), 300
// launches with these attributes took 3.77-4.08 us each that way and 4.34-4.63 through
// cudaLaunchKernelEx; eager push one-shot calls of 8 B to 256 KB took 4.69-5.34 us against
// 4.95-5.67 (medians of three alternating runs, in and out of place: 10 of 12 faster), graph
// calls the same (through the context-independent handle, before contextFunction). Where the driver
// path is missing or refuses the launch, cudaLaunchKernelEx launches it, and reports the error if
// any.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <unordered_map>

#include "tpcomm/device/namespace.cuh"
#include "tpcomm/device/params.cuh"

TPCOMM_DEVICE_NAMESPACE_BEGIN

namespace launch_detail {

using DriverLaunch = CUresult (*)(const CUlaunchConfig*, CUfunction, void**, void**);
using CurrentContext = CUresult (*)(CUcontext*);
using StreamContext = CUresult (*)(CUstream, CUcontext*);
using ContextId = CUresult (*)(CUcontext, unsigned long long*);

// The driver's entry point `name` (as of CUDA 12.0), through the runtime (tpcomm does not link the
// driver library); null where the driver lacks it.
template <typename Fn>
inline Fn driverEntry(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult status;
  if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &status) !=
          cudaSuccess ||
      status != cudaDriverEntryPointSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return reinterpret_cast<Fn>(fn);
}

struct Driver {
  DriverLaunch launch = driverEntry<DriverLaunch>("cuLaunchKernelEx");
  CurrentContext currentContext = driverEntry<CurrentContext>("cuCtxGetCurrent");
  StreamContext streamContext = driverEntry<StreamContext>("cuStreamGetCtx");
  ContextId contextId = driverEntry<ContextId>("cuCtxGetId");
};

inline const Driver& driver() {
  static const Driver entries;
  return entries;
}

// `handle` as the driver takes it, where the runtime call that gave it succeeded; else null, with
// the runtime's error cleared (the launch falls back, and the runtime reports what it refuses).
template <typename Handle>
inline CUfunction driverHandle(cudaError_t looked, Handle handle) {
  if (looked == cudaSuccess) return reinterpret_cast<CUfunction>(handle);
  cudaGetLastError();
  return nullptr;
}

// The handle `handles` keeps for `key`, looked up by `lookUp` the first time: a null one too, so
// that the runtime is asked only once.
template <typename Map, typename Key, typename LookUp>
inline CUfunction kept(Map& handles, const Key& key, LookUp lookUp) {
  const auto found = handles.find(key);
  if (found != handles.end()) return found->second;
  const CUfunction handle = lookUp();
  handles.emplace(key, handle);
  return handle;
}

// The handle the driver launches `entry` by on any device (a CUkernel, passed as a CUfunction);
// null where the runtime has none.
inline CUfunction driverKernel(const void* entry) {
  thread_local std::unordered_map<const void*, CUfunction> handles;
  return kept(handles, entry, [entry] {
    cudaKernel_t kernel = nullptr;
    const cudaError_t looked = cudaGetKernel(&kernel, entry);
    return driverHandle(looked, kernel);
  });
}

// `entry` as loaded in the current context, where `stream` belongs to it; else null. The driver
// launches such a function sooner than the context-independent handle, which it must first
// resolve to the stream's context: 400 launches of the push one-shot kernel with tpcomm's
// attributes, these three queries and the lookup included, took 3.01 / 2.97 / 3.36 us each
// against 3.11 / 3.04 / 3.72 (medians of nine, three runs, one host of 2 H200s); eager calls gain
// as much only where the host is steady (bench/results/h200x2-nvlink, "Where an eager call's host
// time goes"). Functions are kept by the context's id, which no later context reuses (its
// address may be, after a device reset).
inline CUfunction contextFunction(const void* entry, cudaStream_t stream) {
  const Driver& d = driver();
  if (d.currentContext == nullptr || d.streamContext == nullptr || d.contextId == nullptr) {
    return nullptr;
  }
  CUcontext current = nullptr;
  CUcontext owner = nullptr;
  unsigned long long id = 0;
  if (d.currentContext(&current) != CUDA_SUCCESS || current == nullptr ||
      d.streamContext(stream, &owner) != CUDA_SUCCESS || owner != current ||
      d.contextId(current, &id) != CUDA_SUCCESS) {
    return nullptr;
  }
  struct Key {
    const void* entry;
    unsigned long long context;
    bool operator==(const Key& o) const { return entry == o.entry && context == o.context; }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return std::hash<const void*>()(k.entry) ^ std::hash<unsigned long long>()(k.context) * 31;
    }
  };
  thread_local std::unordered_map<Key, CUfunction, KeyHash> functions;
  return kept(functions, Key{entry, id}, [entry] {
    cudaFunction_t function = nullptr;
    const cudaError_t looked = cudaGetFuncBySymbol(&function, entry);
    return driverHandle(looked, function);
  });
}

constexpr unsigned kMaxAttributes = 3;

// Launches `entry` as `config` says through the driver; false where it did not launch.
inline bool launchThroughDriver(const cudaLaunchConfig_t& config, const void* entry, void* params) {
  const DriverLaunch launch = driver().launch;
  if (launch == nullptr || config.numAttrs > kMaxAttributes) return false;
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
  // What the context's function cannot launch, the context-independent handle may (and what
  // neither can, the runtime reports).
  const CUfunction function = contextFunction(entry, config.stream);
  if (function != nullptr && launch(&driverConfig, function, args, nullptr) == CUDA_SUCCESS) {
    return true;
  }
  const CUfunction kernel = driverKernel(entry);
  return kernel != nullptr && launch(&driverConfig, kernel, args, nullptr) == CUDA_SUCCESS;
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
