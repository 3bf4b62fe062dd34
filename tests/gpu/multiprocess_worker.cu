// One rank of the multi-process tests: joins a communicator through tpcCommInitRank (the public
// API of the shared library only), runs a few verified all-reduces, and exits 0 when every
// result was exact.
//
// usage: tpcomm_mp_worker RANK NRANKS ID_ONESHOT_HEX ID_TWOSHOT_HEX
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "gpu/gpu_test_util.cuh"
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

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s RANK NRANKS ID_ONESHOT ID_TWOSHOT\n", argv[0]);
    return 64;
  }
  const int rank = std::atoi(argv[1]);
  const int nranks = std::atoi(argv[2]);
  int gpus = 0;
  cudaGetDeviceCount(&gpus);
  cudaSetDevice(gpus > 0 ? rank % gpus : 0);
  const tpcAlgorithm_t algorithms[] = {tpcAlgoOneShot, tpcAlgoTwoShot};
  for (int a = 0; a < 2; ++a) {
    tpcUniqueId id;
    if (!decodeId(argv[3 + a], &id)) return 64;
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    config.algorithm = algorithms[a];
    config.timeoutMs = 60000;
    tpcComm_t comm = nullptr;
    CHECK_TPC(tpcCommInitRank(&comm, nranks, id, rank, &config));
    for (size_t count : {size_t{1}, size_t{4099}, size_t{300000}}) {
      int rc = verifiedCall<__nv_bfloat16>(comm, rank, nranks, count, false, 17 + a);
      if (rc == 0) rc = verifiedCall<float>(comm, rank, nranks, count, true, 29 + a);
      if (rc != 0) return rc;
    }
    CHECK_TPC(tpcCommDestroy(comm));
  }
  return 0;
}
