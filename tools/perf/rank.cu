#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <string>
#include <vector>

#include "perf/rank.h"
#include "perf/report.h"
#include "verifiable/verifiable.cuh"

namespace tpcomm {
namespace perf {
namespace {

struct RankError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void cudaTry(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw RankError(std::string(what) + ": " + cudaGetErrorString(err));
}

class Messages {
 public:
  explicit Messages(int fd) : fd_(fd) {}
  void send(const std::string& line) const {
    const std::string text = line + "\n";
    size_t done = 0;
    while (done < text.size()) {
      const ssize_t n = write(fd_, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // the coordinator is gone; nothing left to tell
      done += static_cast<size_t>(n);
    }
  }

 private:
  int fd_;
};

// Timed and verified all-reduces of one rank, over rotating buffers in two pools.
class Bench {
 public:
  Bench(const Options& options, const RankSetup& setup, const Messages& messages)
      : o_(options), s_(setup), messages_(messages), elemBytes_(elemBytes(options.dtype)) {}

  ~Bench() {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (void* p : {send_, recv_, barrierBuf_, wrong_}) {
      if (p != nullptr) cudaFree(p);
    }
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (stop_ != nullptr) cudaEventDestroy(stop_);
    if (ncclComm_ != nullptr) nccl_->commDestroy(ncclComm_);
    if (comm_ != nullptr) tpcCommDestroy(comm_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  void setUp() {
    cudaTry(cudaSetDevice(s_.device), "cudaSetDevice");
    cudaDeviceProp prop;
    cudaTry(cudaGetDeviceProperties(&prop, s_.device), "cudaGetDeviceProperties");
    char busId[32] = "?";
    cudaDeviceGetPCIBusId(busId, sizeof(busId), s_.device);
    char host[64] = "?";
    gethostname(host, sizeof(host) - 1);
    messages_.send(encodeRank(
        RankInfo{s_.rank, static_cast<int>(getpid()), s_.device, busId, host, prop.name}));

    // Ranks that share a GPU must not meet on the legacy default stream.
    cudaTry(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    if (o_.algo == "oneshot") config.algorithm = tpcAlgoOneShot;
    if (o_.algo == "twoshot") config.algorithm = tpcAlgoTwoShot;
    if (tpcCommInitRank(&comm_, s_.nranks, s_.id, s_.rank, &config) != tpcSuccess) {
      comm_ = nullptr;
      throw RankError(std::string("tpcCommInitRank: ") + tpcCommGetLastError(nullptr));
    }
    if (s_.useNccl) {
      std::string why;
      nccl_ = nccl::library(&why);
      if (nccl_ == nullptr) throw RankError("NCCL: " + why);
      if (nccl_->commInitRank(&ncclComm_, s_.nranks, s_.ncclId, s_.rank) != nccl::kSuccess) {
        ncclComm_ = nullptr;
        throw RankError(std::string("ncclCommInitRank: ") + nccl_->getLastError(nullptr));
      }
    }

    // Enough memory to rotate several buffers even at the largest size, and to spread small
    // ones over more than the L2 cache holds.
    poolBytes_ = std::max(2 * o_.maxBytes, 4 * static_cast<size_t>(prop.l2CacheSize));
    poolBytes_ = (poolBytes_ + 4095) / 4096 * 4096;
    cudaTry(cudaMalloc(&send_, poolBytes_), "cudaMalloc of the send pool");
    cudaTry(cudaMalloc(&recv_, poolBytes_), "cudaMalloc of the receive pool");
    cudaTry(cudaMalloc(&barrierBuf_, 16), "cudaMalloc");
    cudaTry(cudaMalloc(&wrong_, sizeof(unsigned long long)), "cudaMalloc");
    cudaTry(cudaEventCreate(&start_), "cudaEventCreate");
    cudaTry(cudaEventCreate(&stop_), "cudaEventCreate");
    // Time real values, never zeros or garbage.
    dispatch([&](auto zero) {
      using T = decltype(zero);
      const size_t n = poolBytes_ / sizeof(T);
      verifiable::fillRandom<<<verifiable::grid(n), 256, 0, stream_>>>(static_cast<T*>(send_), n,
                                                                       s_.rank, 1);
      verifiable::fillRandom<<<verifiable::grid(n), 256, 0, stream_>>>(static_cast<T*>(recv_), n,
                                                                       s_.rank, 2);
    });
    cudaTry(cudaStreamSynchronize(stream_), "filling the pools");
    alignThreads();
  }

  bool run() {
    const bool ncclPrimary = o_.algo == "nccl";
    bool allRight = true;
    for (size_t bytes : sweepSizes(o_, elemBytes_)) {
      Row row;
      row.bytes = bytes;
      row.count = bytes / elemBytes_;
      row.outOfPlace.timeUs = measure(row.count, false, ncclPrimary);
      row.inPlace.timeUs = measure(row.count, true, ncclPrimary);
      if (o_.check) {
        row.outOfPlace.wrong = verify(row.count, false, ncclPrimary);
        row.inPlace.wrong = verify(row.count, true, ncclPrimary);
        allRight = allRight && row.outOfPlace.wrong == 0 && row.inPlace.wrong == 0;
      }
      if (ncclComm_ != nullptr && !ncclPrimary) row.ncclUs = measure(row.count, false, true);
      row.algo = ncclPrimary ? "nccl" : tpcomAlgorithm(row.count);
      messages_.send(encodeRow(row));
    }
    return allRight;
  }

 private:
  static size_t elemBytes(tpcDataType_t type) { return type == tpcFloat32 ? 4 : 2; }

  template <typename Fn>
  void dispatch(Fn fn) const {
    switch (o_.dtype) {
      case tpcFloat32:
        fn(float{});
        break;
      case tpcFloat16:
        fn(__half{});
        break;
      default:
        fn(__nv_bfloat16{});
    }
  }

  std::string tpcomAlgorithm(size_t count) {
    tpcAlgorithm_t algo = tpcAlgoAuto;
    if (tpcCommGetAlgorithm(comm_, count, o_.dtype, &algo) != tpcSuccess) return "?";
    return algo == tpcAlgoOneShot ? "oneshot" : "twoshot";
  }

  void allReduce(const void* in, void* out, size_t count, bool useNccl) {
    if (useNccl) {
      if (nccl_->allReduce(in, out, count, o_.dtype, tpcSum, ncclComm_, stream_) !=
          nccl::kSuccess) {
        throw RankError(std::string("ncclAllReduce: ") + nccl_->getLastError(ncclComm_));
      }
    } else if (tpcAllReduce(in, out, count, o_.dtype, tpcSum, comm_, stream_) != tpcSuccess) {
      throw RankError(std::string("tpcAllReduce: ") + tpcCommGetLastError(comm_));
    }
  }

  // Call `i` of a timed loop: buffers rotate so that small messages do not stay in L2.
  void rotatingCall(int i, size_t count, bool inPlace, bool useNccl) {
    const size_t stride = (count * elemBytes_ + 255) / 256 * 256;
    const size_t slots = std::max<size_t>(1, std::min<size_t>(64, poolBytes_ / stride));
    const size_t offset = static_cast<size_t>(i) % slots * stride;
    char* out = static_cast<char*>(recv_) + offset;
    const char* in = inPlace ? out : static_cast<char*>(send_) + offset;
    allReduce(in, out, count, useNccl);
  }

  void alignThreads() {
    if (s_.threads != nullptr) s_.threads->wait();
  }

  // Lines every rank up before a timed section: the slowest rank's late start must not be timed.
  void barrier() {
    allReduce(barrierBuf_, barrierBuf_, 1, false);
    cudaTry(cudaStreamSynchronize(stream_), "barrier");
  }

  double measure(size_t count, bool inPlace, bool useNccl) {
    // Capture and instantiate first: instantiation may wait for the device, so it must not
    // overlap another rank's all-reduce (see ThreadBarrier).
    cudaGraphExec_t exec = nullptr;
    if (o_.graphLaunches > 0) {
      cudaGraph_t graph;
      cudaTry(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "capture");
      for (int i = 0; i < o_.iters; ++i) rotatingCall(i, count, inPlace, useNccl);
      cudaTry(cudaStreamEndCapture(stream_, &graph), "capture");
      cudaTry(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
      cudaTry(cudaGraphDestroy(graph), "cudaGraphDestroy");
    }
    alignThreads();
    for (int i = 0; i < o_.warmup; ++i) rotatingCall(i, count, inPlace, useNccl);
    if (exec != nullptr) cudaTry(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");
    barrier();
    cudaTry(cudaEventRecord(start_, stream_), "cudaEventRecord");
    int calls = o_.iters;
    if (exec != nullptr) {
      for (int g = 0; g < o_.graphLaunches; ++g) {
        cudaTry(cudaGraphLaunch(exec, stream_), "cudaGraphLaunch");
      }
      calls *= o_.graphLaunches;
    } else {
      for (int i = 0; i < o_.iters; ++i) rotatingCall(i, count, inPlace, useNccl);
    }
    cudaTry(cudaEventRecord(stop_, stream_), "cudaEventRecord");
    cudaTry(cudaEventSynchronize(stop_), "timed calls");
    float ms = 0;
    cudaTry(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    alignThreads();
    if (exec != nullptr) cudaTry(cudaGraphExecDestroy(exec), "cudaGraphExecDestroy");
    return ms * 1e3 / calls;
  }

  // Elements of one exactly verifiable all-reduce that differ from the exact sum.
  uint64_t verify(size_t count, bool inPlace, bool useNccl) {
    const uint32_t seed = ++seed_;
    alignThreads();
    cudaTry(cudaMemsetAsync(wrong_, 0, sizeof(unsigned long long), stream_), "cudaMemsetAsync");
    dispatch([&](auto zero) {
      using T = decltype(zero);
      T* out = static_cast<T*>(recv_);
      T* in = inPlace ? out : static_cast<T*>(send_);
      if (!inPlace) cudaMemsetAsync(out, 0xff, count * sizeof(T), stream_);
      verifiable::fillExact<<<verifiable::grid(count), 256, 0, stream_>>>(in, count, s_.rank, seed);
      allReduce(in, out, count, useNccl);
      verifiable::checkExact<<<verifiable::grid(count), 256, 0, stream_>>>(
          out, count, s_.nranks, seed, static_cast<unsigned long long*>(wrong_));
    });
    unsigned long long wrong = 0;
    cudaTry(cudaMemcpyAsync(&wrong, wrong_, sizeof(wrong), cudaMemcpyDeviceToHost, stream_),
            "reading the check");
    cudaTry(cudaStreamSynchronize(stream_), "checking the result");
    return wrong;
  }

  const Options& o_;
  const RankSetup& s_;
  const Messages& messages_;
  const size_t elemBytes_;
  cudaStream_t stream_ = nullptr;
  tpcComm_t comm_ = nullptr;
  const nccl::Library* nccl_ = nullptr;
  nccl::Comm ncclComm_ = nullptr;
  size_t poolBytes_ = 0;
  void* send_ = nullptr;
  void* recv_ = nullptr;
  void* barrierBuf_ = nullptr;
  void* wrong_ = nullptr;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
  uint32_t seed_ = 100;
};

}  // namespace

int runRank(const Options& options, const RankSetup& setup) {
  const Messages messages(setup.messageFd);
  try {
    Bench bench(options, setup, messages);
    bench.setUp();
    const bool allRight = bench.run();
    messages.send("DONE");
    return allRight ? 0 : 1;
  } catch (const std::exception& e) {
    messages.send(std::string("ERR ") + e.what());
    return 2;
  }
}

}  // namespace perf
}  // namespace tpcomm
