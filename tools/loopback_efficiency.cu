// Kernel efficiency with several ranks on one GPU: the effective bandwidth of large all-reduces
// (bytes every rank's kernel reads and writes, over the time of one all-reduce) against a
// device-to-device copy counted the same way, and the graph-replayed latency of small ones.
// Loopback figures: diagnostics of the kernels, not NVLink claims.
//
// usage: tpcomm-loopback-efficiency [BANDWIDTH_BYTES [LATENCY_BYTES]]
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "check_cuda.h"
#include "tpcomm/tpcomm.h"

namespace {

#define CHECK_TPC(call)                                                 \
  do {                                                                  \
    const tpcResult_t res_ = (call);                                    \
    if (res_ != tpcSuccess) {                                           \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, \
                   tpcCommGetLastError(nullptr));                       \
      std::exit(1);                                                     \
    }                                                                   \
  } while (0)

constexpr int kRotation = 4;  // input buffers per rank, so that small sizes do not sit in L2

struct Group {
  int n;
  std::vector<tpcComm_t> comms;
  std::vector<cudaStream_t> streams;
  std::vector<void*> in, out;
  cudaStream_t control;
  cudaEvent_t fork, start, stop;
  std::vector<cudaEvent_t> joins;

  Group(int nranks, tpcAlgorithm_t algorithm, size_t bytes) : n(nranks) {
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    config.algorithm = algorithm;
    comms.resize(n);
    const std::vector<int> devices(n, 0);
    CHECK_TPC(tpcCommInitAll(comms.data(), n, devices.data(), &config));
    CHECK_CUDA(cudaSetDevice(0));
    streams.resize(n);
    joins.resize(n);
    for (int r = 0; r < n; ++r) {
      CHECK_CUDA(cudaStreamCreateWithFlags(&streams[r], cudaStreamNonBlocking));
      CHECK_CUDA(cudaEventCreateWithFlags(&joins[r], cudaEventDisableTiming));
      for (int k = 0; k < kRotation; ++k) {
        void* p;
        CHECK_CUDA(cudaMalloc(&p, bytes));
        CHECK_CUDA(cudaMemset(p, 0x3c, bytes));  // small finite bf16 values
        in.push_back(p);
      }
      void* p;
      CHECK_CUDA(cudaMalloc(&p, bytes));
      out.push_back(p);
    }
    CHECK_CUDA(cudaStreamCreateWithFlags(&control, cudaStreamNonBlocking));
    CHECK_CUDA(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    CHECK_CUDA(cudaEventCreate(&start));
    CHECK_CUDA(cudaEventCreate(&stop));
  }

  ~Group() {
    cudaDeviceSynchronize();
    for (void* p : in) cudaFree(p);
    for (void* p : out) cudaFree(p);
    for (int r = 0; r < n; ++r) {
      cudaStreamDestroy(streams[r]);
      cudaEventDestroy(joins[r]);
      tpcCommDestroy(comms[r]);
    }
    cudaStreamDestroy(control);
  }

  void launch(int r, int call, size_t count) {
    CHECK_TPC(tpcAllReduce(in[r * kRotation + call % kRotation], out[r], count, tpcBfloat16, tpcSum,
                           comms[r], streams[r]));
  }

  // Seconds per all-reduce over `calls` calls on every rank, started together.
  template <typename Body>
  double time(int calls, Body body) {
    CHECK_CUDA(cudaEventRecord(start, control));
    CHECK_CUDA(cudaEventRecord(fork, control));
    for (int r = 0; r < n; ++r) CHECK_CUDA(cudaStreamWaitEvent(streams[r], fork));
    body();
    for (int r = 0; r < n; ++r) {
      CHECK_CUDA(cudaEventRecord(joins[r], streams[r]));
      CHECK_CUDA(cudaStreamWaitEvent(control, joins[r]));
    }
    CHECK_CUDA(cudaEventRecord(stop, control));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    return ms * 1e-3 / calls;
  }

  double eager(size_t count, int calls) {
    auto body = [&] {
      for (int c = 0; c < calls; ++c) {
        for (int r = 0; r < n; ++r) launch(r, c, count);
      }
    };
    time(calls, body);  // warm-up
    return time(calls, body);
  }

  double graph(size_t count, int callsPerGraph, int replays) {
    std::vector<cudaGraphExec_t> exec(n);
    for (int r = 0; r < n; ++r) {
      cudaGraph_t g;
      CHECK_CUDA(cudaStreamBeginCapture(streams[r], cudaStreamCaptureModeThreadLocal));
      for (int c = 0; c < callsPerGraph; ++c) launch(r, c, count);
      CHECK_CUDA(cudaStreamEndCapture(streams[r], &g));
      CHECK_CUDA(cudaGraphInstantiate(&exec[r], g, 0));
      CHECK_CUDA(cudaGraphDestroy(g));
    }
    auto body = [&] {
      for (int k = 0; k < replays; ++k) {
        for (int r = 0; r < n; ++r) CHECK_CUDA(cudaGraphLaunch(exec[r], streams[r]));
      }
    };
    time(callsPerGraph * replays, body);  // warm-up
    const double t = time(callsPerGraph * replays, body);
    for (cudaGraphExec_t e : exec) CHECK_CUDA(cudaGraphExecDestroy(e));
    return t;
  }
};

double memcpyBandwidth(size_t bytes) {
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  const int iters = 20;
  double best = 0;
  for (int round = 0; round < 2; ++round) {
    CHECK_CUDA(cudaEventRecord(start));
    for (int i = 0; i < iters; ++i) {
      CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    }
    CHECK_CUDA(cudaEventRecord(stop));
    CHECK_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
    best = 2.0 * bytes * iters / (ms * 1e-3);  // bytes read plus bytes written
  }
  cudaFree(a);
  cudaFree(b);
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const size_t bwBytes = argc > 1 ? std::strtoull(argv[1], nullptr, 0) : size_t{64} << 20;
  const size_t latBytes = argc > 2 ? std::strtoull(argv[2], nullptr, 0) : size_t{8} << 10;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("# tpcomm loopback efficiency on %s (%d SMs): every rank shares GPU 0.\n", prop.name,
              prop.multiProcessorCount);
  std::printf("# LOOPBACK figures: kernel diagnostics, not NVLink performance.\n");
  const double copy = memcpyBandwidth(bwBytes);
  std::printf("# device-to-device copy of %zu bytes: %.0f GB/s (read + write)\n", bwBytes,
              copy * 1e-9);

  struct Kernel {
    tpcAlgorithm_t algorithm;
    const char* name;
    // Bytes one rank's kernels read and write in its own memory per all-reduce of M bytes over n
    // ranks, peers' stores into it included, in units of M.
    double (*moved)(int n);
  };
  const Kernel kernels[] = {
      // copy into staging 2, read n staged inputs, write the output
      {tpcAlgoOneShot, "oneshot", [](int n) { return n + 3.0; }},
      // copy 2, read n slices of 1/n, write scratch and output slice, gather (n-1)/n twice
      {tpcAlgoTwoShot, "twoshot", [](int) { return 5.0; }},
      // read the input twice, write the output; (n-1) peers' stores, their reads and resets
      {tpcAlgoPushOneShot, "push-oneshot", [](int n) { return 3.0 + 3.0 * (n - 1); }},
      // read the input, write the output; per peer slot: stores, reads and a reset, twice
      {tpcAlgoPushTwoShot, "push-twoshot", [](int n) { return 2.0 + 7.0 * (n - 1) / n; }},
  };
  std::printf("\n%-6s %-13s %12s %12s %14s %9s\n", "ranks", "algo", "bytes", "time(us)",
              "effbw(GB/s)", "vs copy");
  const size_t count = bwBytes / sizeof(__nv_bfloat16);
  for (int n : {2, 4, 8}) {
    for (const Kernel& k : kernels) {
      Group g(n, k.algorithm, bwBytes);
      const double t = g.eager(count, 10);
      const double moved = k.moved(n) * n * bwBytes;  // every rank's kernels on the one GPU
      std::printf("%-6d %-13s %12zu %12.1f %14.0f %8.0f%%\n", n, k.name, bwBytes, t * 1e6,
                  moved / t * 1e-9, 100.0 * moved / t / copy);
    }
  }

  std::printf("\n%-6s %-13s %12s %16s %16s\n", "ranks", "algo", "bytes", "graph(us/call)",
              "eager(us/call)");
  for (int n : {2, 4, 8}) {
    for (const Kernel& k : kernels) {
      Group g(n, k.algorithm, latBytes);
      const size_t latCount = latBytes / sizeof(__nv_bfloat16);
      const double graph = g.graph(latCount, 100, 20);
      const double eager = g.eager(latCount, 1000);
      std::printf("%-6d %-13s %12zu %16.2f %16.2f\n", n, k.name, latBytes, graph * 1e6,
                  eager * 1e6);
    }
  }
  return 0;
}
