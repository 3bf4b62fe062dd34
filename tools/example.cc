// Sums a vector over every local GPU (four ranks on one GPU when there is only one) through the
// C++ layer, one thread per rank, and checks every element of every rank's result.
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
        finished.arriveAndWait();
        cudaStreamDestroy(stream);
        cudaFree(buf);
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
      std::printf("rank %d on GPU %d: %zu floats summed over %d ranks, all correct\n", r, r % gpus,
                  count, nranks);
    } else {
      std::fprintf(stderr, "rank %d: %s\n", r, errors[r].c_str());
      ++failed;
    }
  }
  if (gpus == 1) std::printf("(all ranks shared one GPU: a loopback run, not NVLink)\n");
  return failed == 0 ? 0 : 1;
}
