// Sums a vector over every local GPU (four ranks on one GPU when there is only one) through the
// C++ layer, one thread per rank, then ends a transformer block the way engines do (all-reduce,
// residual add and RMSNorm in one call), and checks every element of every rank's results.
//
// usage: tpcomm-example [NRANKS]
#include <cuda_runtime.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tpcomm/tpcomm.hpp"

// Ranks that share a GPU in one process must finish calls that can wait for the whole device
// (allocations, frees) before any of them starts an all-reduce that waits for the others.
class Barrier {
 public:
  explicit Barrier(int count) : left_(count) {}
  void arriveAndWait() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (--left_ == 0) all_.notify_all();
    all_.wait(lock, [&] { return left_ <= 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable all_;
  int left_;
};

int main(int argc, char** argv) {
  // Ranks that share a GPU launch on their own streams; with the default 8 hardware queues two
  // of them may share one, and a rank's later all-reduce could then block another rank's earlier
  // one. 32 queues (set before CUDA starts) keep them apart.
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
  int gpus = 0;
  if (cudaGetDeviceCount(&gpus) != cudaSuccess || gpus == 0) {
    std::fprintf(stderr, "tpcomm-example: no CUDA device\n");
    return 1;
  }
  const int nranks = argc > 1 ? std::atoi(argv[1]) : (gpus > 1 ? gpus : 4);
  const size_t count = (size_t{1} << 20) + 3;
  constexpr size_t kRows = 4, kHidden = 4096;
  const tpcUniqueId id = tpcomm::uniqueId();
  std::vector<std::string> errors(nranks);
  std::vector<std::thread> threads;
  Barrier allocated(nranks), finished(nranks);
  for (int r = 0; r < nranks; ++r) {
    threads.emplace_back([&, r] {
      try {
        cudaSetDevice(r % gpus);
        tpcomm::Communicator comm(nranks, id, r);
        std::vector<float> host(count);
        for (size_t i = 0; i < count; ++i) host[i] = static_cast<float>((i % 7) + r);
        // Ranks that share a GPU must not meet on the legacy default stream: a blocking copy of
        // one rank would wait for another rank's all-reduce, which waits for the first rank.
        cudaStream_t stream;
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
        float* buf = nullptr;
        cudaMalloc(&buf, count * sizeof(float));
        cudaMemcpyAsync(buf, host.data(), count * sizeof(float), cudaMemcpyHostToDevice, stream);
        // Rows of the block's output: every rank's partial sums are r + 1, the residual 1, so the
        // new residual is 1 + n(n+1)/2 everywhere and each normalised row equals the weight.
        std::vector<__nv_bfloat16> partial(kRows * kHidden, __float2bfloat16(r + 1.0f));
        std::vector<__nv_bfloat16> residual(kRows * kHidden, __float2bfloat16(1.0f));
        std::vector<__nv_bfloat16> weight(kHidden), normed(kRows * kHidden);
        for (size_t i = 0; i < kHidden; ++i) weight[i] = __float2bfloat16((i % 4) + 1.0f);
        __nv_bfloat16 *dPartial = nullptr, *dResidual = nullptr, *dWeight = nullptr,
                      *dNormed = nullptr;
        const size_t rowsBytes = kRows * kHidden * sizeof(__nv_bfloat16);
        cudaMalloc(&dPartial, rowsBytes);
        cudaMalloc(&dResidual, rowsBytes);
        cudaMalloc(&dNormed, rowsBytes);
        cudaMalloc(&dWeight, kHidden * sizeof(__nv_bfloat16));
        cudaMemcpyAsync(dPartial, partial.data(), rowsBytes, cudaMemcpyHostToDevice, stream);
        cudaMemcpyAsync(dResidual, residual.data(), rowsBytes, cudaMemcpyHostToDevice, stream);
        cudaMemcpyAsync(dWeight, weight.data(), kHidden * sizeof(__nv_bfloat16),
                        cudaMemcpyHostToDevice, stream);
        cudaStreamSynchronize(stream);
        allocated.arriveAndWait();
        comm.allReduce(buf, buf, count, stream);  // in place
        cudaMemcpyAsync(host.data(), buf, count * sizeof(float), cudaMemcpyDeviceToHost, stream);
        cudaStreamSynchronize(stream);
        size_t wrong = 0;
        for (size_t i = 0; i < count; ++i) {
          const float expected = static_cast<float>(nranks * (i % 7) + nranks * (nranks - 1) / 2);
          wrong += host[i] != expected;
        }
        if (wrong != 0) errors[r] = std::to_string(wrong) + " wrong elements";

        comm.allReduceAddRmsNorm(dPartial, dResidual, dWeight, dNormed, kRows, kHidden, 1e-6f,
                                 stream);
        cudaMemcpyAsync(residual.data(), dResidual, rowsBytes, cudaMemcpyDeviceToHost, stream);
        cudaMemcpyAsync(normed.data(), dNormed, rowsBytes, cudaMemcpyDeviceToHost, stream);
        cudaStreamSynchronize(stream);
        size_t wrongRows = 0;
        for (size_t i = 0; i < kRows * kHidden; ++i) {
          wrongRows += __bfloat162float(residual[i]) != 1.0f + nranks * (nranks + 1) / 2 ||
                       __bfloat162float(normed[i]) != __bfloat162float(weight[i % kHidden]);
        }
        if (wrongRows != 0) errors[r] += std::to_string(wrongRows) + " wrong normalised elements";
        finished.arriveAndWait();
        cudaStreamDestroy(stream);
        for (void* p :
             {static_cast<void*>(buf), static_cast<void*>(dPartial), static_cast<void*>(dResidual),
              static_cast<void*>(dNormed), static_cast<void*>(dWeight)}) {
          cudaFree(p);
        }
      } catch (const std::exception& e) {
        // The other ranks would wait for this one at the barriers: stop the whole example.
        std::fprintf(stderr, "rank %d: %s\n", r, e.what());
        std::_Exit(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  int failed = 0;
  for (int r = 0; r < nranks; ++r) {
    if (errors[r].empty()) {
      std::printf(
          "rank %d on GPU %d: %zu floats summed over %d ranks, and %zu rows of %zu normalised "
          "after their all-reduce and residual add, all correct\n",
          r, r % gpus, count, nranks, kRows, kHidden);
    } else {
      std::fprintf(stderr, "rank %d: %s\n", r, errors[r].c_str());
      ++failed;
    }
  }
  if (gpus == 1) std::printf("(all ranks shared one GPU: a loopback run, not NVLink)\n");
  return failed == 0 ? 0 : 1;
}
