// One rank of the multi-process tests: joins a communicator through tpcCommInitRank (the public
// API of the shared library only), does what its mode says, and exits 0 when every check held.
//
// usage: tpcomm_mp_worker RANK NRANKS MODE ID_HEX...
//   kernels ID1 ID2 ID3 ID4  verified all-reduces with each of tpcomm's kernels (pull one-shot,
//                            pull two-shot, push one-shot, push two-shot), a communicator each
//   zerocopy ID              captured all-reduces whose inputs lie in cudaMalloc memory (at
//                            offsets that differ between ranks) and in cuMem memory, registered
//                            across the processes (CUDA IPC handles and file descriptors over the
//                            rendezvous socket), replayed with fresh inputs; then 1,000 eager
//                            registrations, after which no descriptor, device memory or mapping
//                            may remain
//   teardown ID FILE         rank 0 destroys its communicator and then creates FILE; the others
//                            destroy theirs only once FILE exists: a destroy that waited for its
//                            peers (NCCL's collective finalization) would never return
//   killed ID                rank 1 kills itself after one verified call; rank 0 then calls again
//                            and must fail within its timeout, naming rank 1, and still tear down
#include <cuda_runtime.h>
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gpu/gpu_test_util.cuh"
#include "gpu/vmm_buffer.h"
#include "tpcomm/tpcomm.h"

namespace {

using tpcomm::verifiable::exactValue;

bool decodeId(const char* hex, tpcUniqueId* id) {
  if (std::strlen(hex) != 2 * sizeof(id->internal)) return false;
  for (size_t i = 0; i < sizeof(id->internal); ++i) {
    unsigned byte = 0;
    if (std::sscanf(hex + 2 * i, "%2x", &byte) != 1) return false;
    id->internal[i] = static_cast<char>(byte);
  }
  return true;
}

#define CHECK_TPC(call)                                                               \
  do {                                                                                \
    const tpcResult_t res_ = (call);                                                  \
    if (res_ != tpcSuccess) {                                                         \
      std::fprintf(stderr, "rank %d: %s failed: %s\n", rank, #call, lastError(comm)); \
      return 2;                                                                       \
    }                                                                                 \
  } while (0)

const char* lastError(tpcComm_t comm) { return tpcCommGetLastError(comm); }

template <typename T>
int verifiedCall(tpcComm_t comm, int rank, int nranks, size_t count, bool inPlace, uint32_t seed) {
  std::vector<T> host(count);
  for (size_t i = 0; i < count; ++i) {
    host[i] = tpcomm::device::fromFloat<T>(static_cast<float>(exactValue(rank, i, seed)));
  }
  T *in = nullptr, *out = nullptr;
  cudaMalloc(&in, count * sizeof(T));
  cudaMalloc(&out, count * sizeof(T));
  cudaMemcpy(in, host.data(), count * sizeof(T), cudaMemcpyHostToDevice);
  cudaMemset(out, 0xff, count * sizeof(T));
  T* dst = inPlace ? in : out;
  CHECK_TPC(
      tpcAllReduce(in, dst, count, tpcomm::testing::TypeInfo<T>::kType, tpcSum, comm, nullptr));
  if (cudaDeviceSynchronize() != cudaSuccess) {
    std::fprintf(stderr, "rank %d: device error\n", rank);
    return 3;
  }
  cudaMemcpy(host.data(), dst, count * sizeof(T), cudaMemcpyDeviceToHost);
  cudaFree(in);
  cudaFree(out);
  size_t wrong = 0;
  for (size_t i = 0; i < count; ++i) {
    int sum = 0;
    for (int r = 0; r < nranks; ++r) sum += exactValue(r, i, seed);
    wrong += tpcomm::device::toFloat(host[i]) != static_cast<float>(sum);
  }
  if (wrong != 0) {
    std::fprintf(stderr, "rank %d: %zu of %zu elements wrong\n", rank, wrong, count);
    return 1;
  }
  return 0;
}

// Fills `count` inputs of this rank on the host and copies them to `in`.
template <typename T>
void upload(T* in, size_t count, int rank, uint32_t seed) {
  std::vector<T> host(count);
  for (size_t i = 0; i < count; ++i) {
    host[i] = tpcomm::device::fromFloat<T>(static_cast<float>(exactValue(rank, i, seed)));
  }
  cudaMemcpy(in, host.data(), count * sizeof(T), cudaMemcpyHostToDevice);
}

// Elements of `out` that differ from the exact sum.
template <typename T>
size_t wrongElements(const T* out, size_t count, int nranks, uint32_t seed) {
  std::vector<T> host(count);
  cudaMemcpy(host.data(), out, count * sizeof(T), cudaMemcpyDeviceToHost);
  size_t wrong = 0;
  for (size_t i = 0; i < count; ++i) {
    wrong += tpcomm::device::toFloat(host[i]) !=
             static_cast<float>(tpcomm::verifiable::exactSum(nranks, i, seed));
  }
  return wrong;
}

// Open file descriptors of this process.
int openDescriptors() {
  int n = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (readdir(dir) != nullptr) ++n;
    closedir(dir);
  }
  return n;
}

int zeroCopyMain(int rank, int nranks, const tpcUniqueId& id) {
  using T = __nv_bfloat16;
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.algorithm = tpcAlgoOneShot;  // the pull kernels read registered inputs in place
  config.zeroCopyGraphs = 1;
  config.stagingBytes = 256 << 10;
  config.timeoutMs = 60000;
  tpcComm_t comm = nullptr;
  CHECK_TPC(tpcCommInitRank(&comm, nranks, id, rank, &config));
  cudaStream_t stream;
  cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);

  const size_t counts[] = {7, 4099, 300001};
  T *legacy = nullptr, *outs = nullptr;
  cudaMalloc(&legacy, size_t{4} << 20);
  cudaMalloc(&outs, size_t{4} << 20);
  tpcomm::testing::VmmBuffer vmm(size_t{4} << 20);
  if (!vmm.ok()) {
    std::fprintf(stderr, "rank %d: cannot allocate cuMem memory\n", rank);
    return 5;
  }
  struct Call {
    T* in;
    T* out;
    size_t count;
  };
  std::vector<Call> calls;
  size_t inAt = 64 * (rank + 1), vmmAt = 128 * rank, outAt = 0;  // ranks place them differently
  for (size_t count : counts) {
    calls.push_back(Call{legacy + inAt, outs + outAt, count});
    outAt += count + 8;
    calls.push_back(Call{vmm.get<T>() + vmmAt, outs + outAt, count});
    outAt += count + 8;
    inAt += (count + 7) / 8 * 8 + 8;
    vmmAt += (count + 7) / 8 * 8 + 16;
  }

  cudaGraph_t graph;
  cudaGraphExec_t exec;
  cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal);
  for (const Call& c : calls) {
    CHECK_TPC(tpcAllReduce(c.in, c.out, c.count, tpcBfloat16, tpcSum, comm, stream));
  }
  cudaStreamEndCapture(stream, &graph);
  cudaGraphInstantiate(&exec, graph, 0);
  CHECK_TPC(tpcCommRegisterGraphBuffers(comm));
  tpcMemoryInfo_t info;
  CHECK_TPC(tpcCommGetMemoryInfo(comm, &info));
  if (info.peerBytes == 0 || info.slotsUsed != static_cast<int>(calls.size())) {
    std::fprintf(stderr, "rank %d: after registration %zu peer bytes mapped, %d slots used\n", rank,
                 info.peerBytes, info.slotsUsed);
    return 6;
  }
  for (uint32_t replay = 0; replay < 2; ++replay) {
    for (size_t k = 0; k < calls.size(); ++k) {
      upload(calls[k].in, calls[k].count, rank, 100 * replay + k);
      cudaMemset(calls[k].out, 0xff, calls[k].count * sizeof(T));
    }
    cudaGraphLaunch(exec, stream);
    if (cudaStreamSynchronize(stream) != cudaSuccess) return 3;
    tpcResult_t async = tpcSuccess;
    CHECK_TPC(tpcCommGetAsyncError(comm, &async));
    if (async != tpcSuccess) {
      std::fprintf(stderr, "rank %d: %s\n", rank, lastError(comm));
      return 2;
    }
    for (size_t k = 0; k < calls.size(); ++k) {
      const size_t wrong = wrongElements(calls[k].out, calls[k].count, nranks, 100 * replay + k);
      if (wrong != 0) {
        std::fprintf(stderr, "rank %d: replay %u call %zu: %zu of %zu wrong\n", rank, replay, k,
                     wrong, calls[k].count);
        return 1;
      }
    }
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);

  // Eager registrations: the first one carries a verified call; none may leave anything mapped,
  // open or allocated.
  tpcMemoryInfo_t before, after;
  CHECK_TPC(tpcCommGetMemoryInfo(comm, &before));
  const int fdsBefore = openDescriptors();
  size_t freeBefore = 0, freeAfter = 0, total = 0;
  cudaMemGetInfo(&freeBefore, &total);
  for (int cycle = 0; cycle < 1000; ++cycle) {
    void* handle = nullptr;
    CHECK_TPC(tpcCommRegister(comm, cycle % 2 ? vmm.get() : static_cast<void*>(legacy),
                              size_t{4} << 20, &handle));
    if (cycle < 2) {
      T* base = cycle % 2 ? vmm.get<T>() : legacy;
      upload(base + 1024, 4099, rank, 555 + cycle);
      CHECK_TPC(tpcAllReduce(base + 1024, outs, 4099, tpcBfloat16, tpcSum, comm, stream));
      cudaStreamSynchronize(stream);
      if (wrongElements(outs, 4099, nranks, 555 + cycle) != 0) {
        std::fprintf(stderr, "rank %d: the eager call on a registered buffer is wrong\n", rank);
        return 1;
      }
    }
    CHECK_TPC(tpcCommDeregister(comm, handle));
  }
  CHECK_TPC(tpcCommGetMemoryInfo(comm, &after));
  cudaMemGetInfo(&freeAfter, &total);
  const int fdsAfter = openDescriptors();
  if (after.peerBytes != before.peerBytes || after.slotsUsed != before.slotsUsed ||
      fdsAfter != fdsBefore || freeBefore > freeAfter + (size_t{8} << 20)) {
    std::fprintf(stderr,
                 "rank %d: registrations leaked: %zu -> %zu peer bytes, %d -> %d slots, %d -> %d "
                 "descriptors, %zu -> %zu bytes of free device memory\n",
                 rank, before.peerBytes, after.peerBytes, before.slotsUsed, after.slotsUsed,
                 fdsBefore, fdsAfter, freeBefore, freeAfter);
    return 7;
  }
  CHECK_TPC(tpcCommDestroy(comm));
  cudaFree(legacy);
  cudaFree(outs);
  cudaStreamDestroy(stream);
  return 0;
}

int kernelsMain(int rank, int nranks, const std::vector<tpcUniqueId>& ids) {
  const tpcAlgorithm_t algorithms[] = {tpcAlgoOneShot, tpcAlgoTwoShot, tpcAlgoPushOneShot,
                                       tpcAlgoPushTwoShot};
  if (ids.size() != 4) return 64;
  for (int a = 0; a < 4; ++a) {
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    config.algorithm = algorithms[a];
    config.timeoutMs = 60000;
    tpcComm_t comm = nullptr;
    CHECK_TPC(tpcCommInitRank(&comm, nranks, ids[a], rank, &config));
    for (size_t count : {size_t{1}, size_t{4099}, size_t{300000}}) {
      int rc = verifiedCall<__nv_bfloat16>(comm, rank, nranks, count, false, 17 + a);
      if (rc == 0) rc = verifiedCall<float>(comm, rank, nranks, count, true, 29 + a);
      if (rc != 0) return rc;
    }
    CHECK_TPC(tpcCommDestroy(comm));
  }
  return 0;
}

int teardownMain(int rank, int nranks, const tpcUniqueId& id, const std::string& file) {
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = 60000;
  tpcComm_t comm = nullptr;
  CHECK_TPC(tpcCommInitRank(&comm, nranks, id, rank, &config));
  const int rc = verifiedCall<float>(comm, rank, nranks, 4099, false, 5);
  if (rc != 0) return rc;
  if (rank != 0) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (access(file.c_str(), F_OK) != 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "rank %d: rank 0 never finished destroying its communicator\n", rank);
        return 8;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  CHECK_TPC(tpcCommDestroy(comm));
  if (rank == 0) {
    FILE* f = std::fopen(file.c_str(), "w");
    if (f == nullptr) return 9;
    std::fclose(f);
  }
  return 0;
}

int killedMain(int rank, int nranks, const tpcUniqueId& id) {
  constexpr int kTimeoutMs = 2000;
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = kTimeoutMs;
  tpcComm_t comm = nullptr;
  CHECK_TPC(tpcCommInitRank(&comm, nranks, id, rank, &config));
  const int rc = verifiedCall<float>(comm, rank, nranks, 4099, false, 6);
  if (rc != 0) return rc;
  if (rank == 1) raise(SIGKILL);
  if (rank != 0) return 0;
  const auto start = std::chrono::steady_clock::now();
  std::vector<float> host(4099, 1.0f);
  float* buf = nullptr;
  cudaMalloc(&buf, host.size() * sizeof(float));
  cudaMemcpy(buf, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
  CHECK_TPC(tpcAllReduce(buf, buf, host.size(), tpcFloat32, tpcSum, comm, nullptr));
  if (cudaDeviceSynchronize() != cudaSuccess) {
    std::fprintf(stderr, "rank 0: device error after the peer died\n");
    return 3;
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  tpcResult_t async = tpcSuccess;
  CHECK_TPC(tpcCommGetAsyncError(comm, &async));
  const std::string message = lastError(comm);
  if (async != tpcTimeout || message.find("for rank 1") == std::string::npos ||
      waited > kTimeoutMs * 1e-3 + 10) {
    std::fprintf(stderr, "rank 0: after %.1f s: %d, %s\n", waited, async, message.c_str());
    return 10;
  }
  if (tpcCommDestroy(comm) != tpcSuccess) {
    std::fprintf(stderr, "rank 0: destroy failed: %s\n", lastError(nullptr));
    return 11;
  }
  cudaFree(buf);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s RANK NRANKS MODE ID_HEX...\n", argv[0]);
    return 64;
  }
  const int rank = std::atoi(argv[1]);
  const int nranks = std::atoi(argv[2]);
  const std::string mode = argv[3];
  int gpus = 0;
  cudaGetDeviceCount(&gpus);
  cudaSetDevice(gpus > 0 ? rank % gpus : 0);
  std::vector<tpcUniqueId> ids;
  for (int i = 4; i < argc; ++i) {
    tpcUniqueId id;
    if (decodeId(argv[i], &id)) ids.push_back(id);
  }
  if (ids.empty()) return 64;
  if (mode == "kernels") return kernelsMain(rank, nranks, ids);
  if (mode == "zerocopy") return zeroCopyMain(rank, nranks, ids[0]);
  if (mode == "teardown" && argc == 6) return teardownMain(rank, nranks, ids[0], argv[5]);
  if (mode == "killed") return killedMain(rank, nranks, ids[0]);
  return 64;
}
