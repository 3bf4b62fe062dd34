// tpcomm._tpcomm: the C API as Python sees it. Thin on purpose: handles and pointers are
// integers, results are tpcResult_t codes, and the Python package (tpcomm/__init__.py) turns them
// into tensors, streams and exceptions. Calls that may wait for peers release the GIL.
#include <cuda_runtime.h>
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>

#include "tpcomm/device/params.cuh"
#include "tpcomm/tpcomm.h"

namespace nb = nanobind;

namespace {

tpcComm_t handle(uintptr_t comm) { return reinterpret_cast<tpcComm_t>(comm); }
void* pointer(uintptr_t p) { return reinterpret_cast<void*>(p); }
cudaStream_t stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// tpcDataType_t of a DLPack type, or -1 for one tpcomm has no number for.
int dataType(nb::dlpack::dtype t) {
  if (t.lanes != 1) return -1;
  using Code = nb::dlpack::dtype_code;
  switch (static_cast<Code>(t.code)) {
    case Code::Int:
      return t.bits == 8 ? tpcInt8 : t.bits == 32 ? tpcInt32 : t.bits == 64 ? tpcInt64 : -1;
    case Code::UInt:
      return t.bits == 8 ? tpcUint8 : t.bits == 32 ? tpcUint32 : t.bits == 64 ? tpcUint64 : -1;
    case Code::Float:
      return t.bits == 16 ? tpcFloat16 : t.bits == 32 ? tpcFloat32 : t.bits == 64 ? tpcFloat64 : -1;
    case Code::Bfloat:
      return t.bits == 16 ? tpcBfloat16 : -1;
    default:
      break;
  }
  // DLPack 1.1's float8 codes, which nanobind does not name: e4m3fn is CUDA's e4m3 (no
  // infinities), e5m2 IEEE-like. The fnuz and e3m4 variants have no tpcomm type.
  constexpr uint8_t kFloat8E4M3Fn = 10;
  constexpr uint8_t kFloat8E5M2 = 12;
  if (t.bits != 8) return -1;
  return t.code == kFloat8E4M3Fn ? tpcFloat8e4m3 : t.code == kFloat8E5M2 ? tpcFloat8e5m2 : -1;
}

// Whether the array's elements lie densely in row-major order (size-1 dimensions aside).
bool rowMajor(const nb::ndarray<>& a) {
  if (a.size() == 0) return true;  // no element to lie anywhere; producers give any strides
  int64_t expected = 1;
  for (size_t d = a.ndim(); d-- > 0;) {
    if (a.shape(d) != 1 && a.stride(d) != expected) return false;
    expected *= static_cast<int64_t>(a.shape(d));
  }
  return true;
}

}  // namespace

NB_MODULE(_tpcomm, m) {
  m.doc() = "tpcomm's C API for the Python package; use the tpcomm package instead.";

  m.def("version", [] {
    int v = 0;
    tpcGetVersion(&v);
    return v;
  });
  m.def("unique_id", [] {
    tpcUniqueId id;
    const tpcResult_t r = tpcGetUniqueId(&id);
    return std::make_tuple(static_cast<int>(r), nb::bytes(id.internal, sizeof(id.internal)));
  });
  m.def("error_string",
        [](int code) { return std::string(tpcGetErrorString(static_cast<tpcResult_t>(code))); });
  m.def("last_error",
        [](uintptr_t comm) { return std::string(tpcCommGetLastError(handle(comm))); });
  m.def("device_count", [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  });

  m.def(
      "comm_init",
      [](int nranks, nb::bytes id, int rank, int device, int timeoutMs, bool nccl, bool zeroCopy) {
        tpcUniqueId uid{};
        if (id.size() != sizeof(uid.internal)) {
          return std::make_tuple(static_cast<int>(tpcInvalidArgument), uintptr_t{0},
                                 std::string("a unique id is ") +
                                     std::to_string(sizeof(uid.internal)) + " bytes, not " +
                                     std::to_string(id.size()));
        }
        std::memcpy(uid.internal, id.c_str(), sizeof(uid.internal));
        tpcConfig_t config = TPC_CONFIG_INITIALIZER;
        config.timeoutMs = timeoutMs;
        config.ncclFallback = nccl ? TPC_NCCL_AUTO : TPC_NCCL_OFF;
        config.zeroCopyGraphs = zeroCopy ? 1 : 0;
        tpcComm_t comm = nullptr;
        tpcResult_t r;
        std::string why;
        {
          nb::gil_scoped_release release;
          // The rank joins on `device`; the thread's current device stays as it was.
          int current = -1;
          cudaError_t err = cudaGetDevice(&current);
          if (err == cudaSuccess) err = cudaSetDevice(device);
          if (err != cudaSuccess) {
            cudaGetLastError();
            r = tpcUnhandledCudaError;
            why =
                "cannot use CUDA device " + std::to_string(device) + ": " + cudaGetErrorString(err);
          } else {
            r = tpcCommInitRank(&comm, nranks, uid, rank, &config);
            if (r != tpcSuccess) why = tpcCommGetLastError(nullptr);
            cudaSetDevice(current);
          }
        }
        return std::make_tuple(static_cast<int>(r), reinterpret_cast<uintptr_t>(comm), why);
      },
      nb::arg("nranks"), nb::arg("id"), nb::arg("rank"), nb::arg("device"), nb::arg("timeout_ms"),
      nb::arg("nccl"), nb::arg("zero_copy_graphs"));
  m.def("group_start", [] { return static_cast<int>(tpcGroupStart()); });
  // The outermost end issues what NCCL carries, which waits for the group's other ranks.
  m.def(
      "group_end", [] { return static_cast<int>(tpcGroupEnd()); },
      nb::call_guard<nb::gil_scoped_release>());
  m.def(
      "comm_destroy", [](uintptr_t comm) { return static_cast<int>(tpcCommDestroy(handle(comm))); },
      nb::call_guard<nb::gil_scoped_release>());
  m.def(
      "comm_abort", [](uintptr_t comm) { return static_cast<int>(tpcCommAbort(handle(comm))); },
      nb::call_guard<nb::gil_scoped_release>());
  m.def("async_error", [](uintptr_t comm) {
    tpcResult_t asyncError = tpcSuccess;
    const tpcResult_t r = tpcCommGetAsyncError(handle(comm), &asyncError);
    return static_cast<int>(r != tpcSuccess ? r : asyncError);
  });

  m.def(
      "all_reduce",
      [](uintptr_t comm, uintptr_t send, uintptr_t recv, size_t count, int dtype, int op,
         uintptr_t s) {
        return static_cast<int>(tpcAllReduce(pointer(send), pointer(recv), count,
                                             static_cast<tpcDataType_t>(dtype),
                                             static_cast<tpcRedOp_t>(op), handle(comm), stream(s)));
      },
      nb::arg("comm"), nb::arg("send"), nb::arg("recv"), nb::arg("count"), nb::arg("dtype"),
      nb::arg("op"), nb::arg("stream"), nb::call_guard<nb::gil_scoped_release>());
  m.def(
      "all_reduce_add_rmsnorm",
      [](uintptr_t comm, uintptr_t send, uintptr_t residualIn, uintptr_t residualOut,
         uintptr_t weight, uintptr_t out, size_t rows, size_t hidden, float eps, int dtype,
         int outType, uintptr_t scale, uintptr_t s) {
        return static_cast<int>(tpcAllReduceAddRmsNorm(
            pointer(send), pointer(residualIn), pointer(residualOut), pointer(weight), pointer(out),
            rows, hidden, eps, static_cast<tpcDataType_t>(dtype),
            static_cast<tpcDataType_t>(outType), static_cast<const float*>(pointer(scale)),
            handle(comm), stream(s)));
      },
      nb::arg("comm"), nb::arg("send"), nb::arg("residual_in"), nb::arg("residual_out"),
      nb::arg("weight"), nb::arg("out"), nb::arg("rows"), nb::arg("hidden"), nb::arg("eps"),
      nb::arg("dtype"), nb::arg("out_dtype"), nb::arg("scale"), nb::arg("stream"),
      nb::call_guard<nb::gil_scoped_release>());
  m.def(
      "register_graph_buffers",
      [](uintptr_t comm) { return static_cast<int>(tpcCommRegisterGraphBuffers(handle(comm))); },
      nb::call_guard<nb::gil_scoped_release>());

  m.def("comm_info", [](uintptr_t comm) {
    int count = 0, rank = 0, device = 0;
    tpcResult_t r = tpcCommCount(handle(comm), &count);
    if (r == tpcSuccess) r = tpcCommUserRank(handle(comm), &rank);
    if (r == tpcSuccess) r = tpcCommCuDevice(handle(comm), &device);
    return std::make_tuple(static_cast<int>(r), count, rank, device);
  });
  m.def("path_info", [](uintptr_t comm) {
    tpcPathInfo_t info{};
    const tpcResult_t r = tpcCommGetPathInfo(handle(comm), &info);
    return std::make_tuple(static_cast<int>(r), info.customPath != 0, info.ncclAvailable != 0,
                           info.p2pVerified != 0, std::string(info.reason), std::string(info.nccl));
  });
  m.def("memory_info", [](uintptr_t comm) {
    tpcMemoryInfo_t info{};
    const tpcResult_t r = tpcCommGetMemoryInfo(handle(comm), &info);
    return std::make_tuple(static_cast<int>(r), info.deviceBytes, info.hostBytes, info.peerBytes,
                           info.stagingBytes, info.receiveBytes, info.slotsUsed, info.slotsStaged,
                           info.slots);
  });
  m.def("algorithm", [](uintptr_t comm, size_t count, int dtype) {
    tpcAlgorithm_t algo = tpcAlgoAuto;
    const tpcResult_t r =
        tpcCommGetAlgorithm(handle(comm), count, static_cast<tpcDataType_t>(dtype), &algo);
    return std::make_tuple(static_cast<int>(r), static_cast<int>(algo));
  });
  m.def("rmsnorm_algorithm", [](uintptr_t comm, size_t rows, size_t hidden, int dtype) {
    tpcAlgorithm_t algo = tpcAlgoAuto;
    const tpcResult_t r = tpcCommGetAddRmsNormAlgorithm(handle(comm), rows, hidden,
                                                        static_cast<tpcDataType_t>(dtype), &algo);
    return std::make_tuple(static_cast<int>(r), static_cast<int>(algo));
  });

  // What the package needs of any DLPack array: its address, element count, last dimension,
  // tpcomm type (-1 when none) with DLPack's own code and bits for messages, device type and
  // index, and whether it is dense and row-major.
  m.def("describe", [](nb::ndarray<> a) {
    const size_t last = a.ndim() > 0 ? a.shape(a.ndim() - 1) : 1;
    return std::make_tuple(reinterpret_cast<uintptr_t>(a.data()), a.size(), last,
                           dataType(a.dtype()), static_cast<int>(a.dtype().code),
                           static_cast<int>(a.dtype().bits), static_cast<int>(a.device_type()),
                           static_cast<int>(a.device_id()), rowMajor(a));
  });
  m.attr("DEVICE_CUDA") = static_cast<int>(nb::device::cuda::value);
  m.attr("DEVICE_CUDA_MANAGED") = static_cast<int>(nb::device::cuda_managed::value);
  m.attr("UNIQUE_ID_BYTES") = TPC_UNIQUE_ID_BYTES;
  m.attr("MAX_RANKS") = tpcomm::device::kMaxRanks;
}
