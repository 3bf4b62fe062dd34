#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/config.h"
#include "launch/launcher.h"
#include "perf/rank.h"
#include "perf/report.h"
#include "tpcomm/device/fused.cuh"
#include "verifiable/verifiable.cuh"

namespace tpcomm {
namespace perf {
namespace {

using launch::sendMessage;

struct RankError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr float kEps = 1e-6f;

void cudaTry(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw RankError(std::string(what) + ": " + cudaGetErrorString(err));
}

// Who carries a timed call: tpcomm, NCCL on ordinary buffers, or NCCL on symmetric registered
// windows (its fastest single-node path without multicast). In --fused mode tpcomm makes the fused
// call and NCCL's all-reduce is followed by the norm kernel; kTpcommAllReduce is tpcomm's
// all-reduce alone.
enum class Carrier { kTpcomm, kNccl, kNcclSymmetric, kTpcommAllReduce };

bool tpcommCarries(Carrier c) { return c == Carrier::kTpcomm || c == Carrier::kTpcommAllReduce; }

// Everything one rank owns.
struct Rank {
  LocalRank id;
  cudaStream_t stream = nullptr;
  tpcComm_t comm = nullptr;
  nccl::Comm ncclComm = nullptr;
  void* send = nullptr;  // pools the timed calls rotate through
  void* recv = nullptr;
  void* symSend = nullptr;  // the same, from ncclMemAlloc, registered as symmetric windows
  void* symRecv = nullptr;
  nccl::Window symSendWindow = nullptr;
  nccl::Window symRecvWindow = nullptr;
  void* barrierBuf = nullptr;
  void* residual = nullptr;  // --fused: a pool like send's, updated in place by every call
  void* weight = nullptr;    // --fused: one row
  void* check = nullptr;     // --fused: the first residual, and the unfused sequence's results
  unsigned long long* wrong = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  cudaGraphExec_t exec = nullptr;
  void* registration = nullptr;
};

// Timed and verified all-reduces of the ranks this process drives.
class Bench {
 public:
  Bench(const Options& options, const RankGroup& group)
      : o_(options),
        g_(group),
        elemBytes_(options.dtype == tpcFloat32 ? 4 : 2),
        fused_(options.fusedHidden != 0) {
    for (const LocalRank& id : group.local) ranks_.push_back(Rank{id});
  }

  ~Bench() {
    forEach([&](Rank& r) {
      if (r.stream != nullptr) cudaStreamSynchronize(r.stream);
    });
    forEach([&](Rank& r) {
      for (void* p : {r.send, r.recv, r.barrierBuf, r.residual, r.weight, r.check,
                      static_cast<void*>(r.wrong)}) {
        if (p != nullptr) cudaFree(p);
      }
      if (r.start != nullptr) cudaEventDestroy(r.start);
      if (r.stop != nullptr) cudaEventDestroy(r.stop);
      if (r.exec != nullptr) cudaGraphExecDestroy(r.exec);
      if (r.symSendWindow != nullptr) nccl_->windowDeregister(r.ncclComm, r.symSendWindow);
      if (r.symRecvWindow != nullptr) nccl_->windowDeregister(r.ncclComm, r.symRecvWindow);
      if (r.symSend != nullptr) nccl_->memFree(r.symSend);
      if (r.symRecv != nullptr) nccl_->memFree(r.symRecv);
      if (r.ncclComm != nullptr) nccl_->commDestroy(r.ncclComm);
      if (r.comm != nullptr) tpcCommDestroy(r.comm);
      if (r.stream != nullptr) cudaStreamDestroy(r.stream);
    });
  }

  const std::vector<Rank>& ranks() const { return ranks_; }

  void setUp() {
    size_t l2 = 0;
    forEach([&](Rank& r) {
      cudaDeviceProp prop;
      cudaTry(cudaGetDeviceProperties(&prop, r.id.device), "cudaGetDeviceProperties");
      l2 = std::max(l2, static_cast<size_t>(prop.l2CacheSize));
      char busId[32] = "?";
      cudaDeviceGetPCIBusId(busId, sizeof(busId), r.id.device);
      char host[64] = "?";
      gethostname(host, sizeof(host) - 1);
      sendMessage(r.id.messageFd, encodeRank(RankInfo{r.id.rank, static_cast<int>(getpid()),
                                                      r.id.device, busId, host, prop.name}));
      // Ranks that share a GPU must not meet on the legacy default stream.
      cudaTry(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    });
    initCommunicators();

    // Room for a buffer per call of a timed loop (64 at most) up to a sixteenth of the L2 cache
    // and beyond, and for two at the largest size.
    poolBytes_ = std::max(2 * o_.maxBytes, 4 * l2);
    poolBytes_ = (poolBytes_ + 4095) / 4096 * 4096;
    forEach([&](Rank& r) {
      cudaTry(cudaMalloc(&r.send, poolBytes_), "cudaMalloc of the send pool");
      cudaTry(cudaMalloc(&r.recv, poolBytes_), "cudaMalloc of the receive pool");
      cudaTry(cudaMalloc(&r.barrierBuf, 16), "cudaMalloc");
      cudaTry(cudaMalloc(&r.wrong, sizeof(unsigned long long)), "cudaMalloc");
      cudaTry(cudaEventCreate(&r.start), "cudaEventCreate");
      cudaTry(cudaEventCreate(&r.stop), "cudaEventCreate");
      // Time real values, never zeros or garbage.
      dispatch([&](auto zero) {
        using T = decltype(zero);
        const size_t n = poolBytes_ / sizeof(T);
        verifiable::fillRandom<<<verifiable::grid(n), 256, 0, r.stream>>>(static_cast<T*>(r.send),
                                                                          n, r.id.rank, 1);
        verifiable::fillRandom<<<verifiable::grid(n), 256, 0, r.stream>>>(static_cast<T*>(r.recv),
                                                                          n, r.id.rank, 2);
      });
      if (fused_) {
        const size_t rowBytes = o_.fusedHidden * elemBytes_;
        cudaTry(cudaMalloc(&r.residual, poolBytes_), "cudaMalloc of the residual pool");
        cudaTry(cudaMalloc(&r.weight, rowBytes), "cudaMalloc of the weight");
        cudaTry(cudaMalloc(&r.check, 3 * o_.maxBytes), "cudaMalloc of the check buffers");
        dispatch([&](auto zero) {
          using T = decltype(zero);
          const size_t n = poolBytes_ / sizeof(T);
          verifiable::fillRandom<<<verifiable::grid(n), 256, 0, r.stream>>>(
              static_cast<T*>(r.residual), n, 0, 5);
          verifiable::fillRandom<<<verifiable::grid(o_.fusedHidden), 256, 0, r.stream>>>(
              static_cast<T*>(r.weight), o_.fusedHidden, 0, 6);
        });
      }
      cudaTry(cudaStreamSynchronize(r.stream), "filling the pools");
    });
    if (symmetric() && !fused_) setUpSymmetricWindows();
    if (o_.zeroCopy && o_.graphLaunches == 0) {
      // Eager zero-copy: every rank registers its send pool, and the calls' offsets into it agree.
      collective("tpcCommRegister", [&](Rank& r) {
        return tpcCommRegister(r.comm, r.send, poolBytes_, &r.registration);
      });
    }
  }

  // Memory tpcomm holds on each rank, once the sweep has registered all it registers.
  void reportMemory() {
    for (const Rank& r : ranks_) {
      tpcMemoryInfo_t info;
      if (tpcCommGetMemoryInfo(r.comm, &info) == tpcSuccess) {
        MemoryReport m;
        m.deviceBytes = info.deviceBytes;
        m.stagingBytes = info.stagingBytes;
        m.receiveBytes = info.receiveBytes;
        m.peerBytes = info.peerBytes;
        m.slotsUsed = info.slotsUsed;
        sendMessage(r.id.messageFd, encodeMemory(m));
      }
    }
  }

  bool run() {
    const bool ncclPrimary = o_.algo == "nccl";
    const Carrier primary = ncclPrimary ? Carrier::kNccl : Carrier::kTpcomm;
    const bool ncclBeside = !ncclPrimary && ranks_.front().ncclComm != nullptr;
    bool allRight = true;
    for (size_t bytes : sweepSizes(o_, sweepUnit(o_))) {
      std::vector<Row> rows(ranks_.size());
      const size_t count = bytes / elemBytes_;
      const std::vector<double> outOfPlace = measure(count, false, primary);
      const std::vector<double> inPlace = measure(count, true, primary);
      std::vector<uint64_t> wrongOut(ranks_.size()), wrongIn(ranks_.size());
      if (o_.check) {
        wrongOut = fused_ ? verifyFused(count, false) : verify(count, false, primary);
        wrongIn = fused_ ? verifyFused(count, true) : verify(count, true, primary);
        // The fused call is checked against tpcomm's own all-reduce and norm, which a wrong sum in
        // code they share would pass: the all-reduce timed beside it is checked against exact sums.
        if (fused_) {
          const std::vector<uint64_t> wrongSums = verify(count, false, Carrier::kTpcommAllReduce);
          for (size_t i = 0; i < wrongOut.size(); ++i) wrongOut[i] += wrongSums[i];
        }
      }
      std::vector<double> ncclTimes(ranks_.size(), -1), symTimes(ranks_.size(), -1);
      std::vector<double> allReduceTimes(ranks_.size(), -1);
      if (ncclBeside) ncclTimes = measure(count, false, Carrier::kNccl);
      if (ncclBeside && symmetric() && !fused_) {
        symTimes = measure(count, false, Carrier::kNcclSymmetric);
      }
      if (fused_) allReduceTimes = measure(count, false, Carrier::kTpcommAllReduce);
      for (size_t i = 0; i < ranks_.size(); ++i) {
        Row row;
        row.bytes = bytes;
        row.count = count;
        row.outOfPlace = {outOfPlace[i], wrongOut[i]};
        row.inPlace = {inPlace[i], wrongIn[i]};
        row.ncclUs = ncclTimes[i];
        row.ncclSymUs = symTimes[i];
        row.hidden = o_.fusedHidden;
        row.allReduceUs = allReduceTimes[i];
        const std::string allReduceAlgo = ncclPrimary ? "nccl" : chosenAlgorithm(ranks_[i], count);
        row.algo = fused_ ? chosenFusedAlgorithm(ranks_[i], count) : allReduceAlgo;
        if (fused_) row.allReduceAlgo = allReduceAlgo;
        allRight = allRight && wrongOut[i] == 0 && wrongIn[i] == 0;
        sendMessage(ranks_[i].id.messageFd, encodeRow(row));
      }
    }
    return allRight;
  }

 private:
  template <typename Fn>
  void forEach(Fn fn) {
    for (Rank& r : ranks_) {
      cudaSetDevice(r.id.device);
      fn(r);
    }
  }

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

  void initCommunicators() {
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    tpcAlgorithm_t algorithm = tpcAlgoAuto;
    if (o_.algo != "nccl" && parseAlgorithm(o_.algo.c_str(), &algorithm)) {
      config.algorithm = algorithm;
    }
    config.zeroCopyGraphs = o_.zeroCopy && o_.graphLaunches > 0;
    if (static_cast<int>(ranks_.size()) == g_.nranks) {
      std::vector<tpcComm_t> comms(ranks_.size());
      std::vector<int> devices;
      for (const Rank& r : ranks_) devices.push_back(r.id.device);
      if (tpcCommInitAll(comms.data(), g_.nranks, devices.data(), &config) != tpcSuccess) {
        throw RankError(std::string("tpcCommInitAll: ") + tpcCommGetLastError(nullptr));
      }
      for (size_t i = 0; i < ranks_.size(); ++i) ranks_[i].comm = comms[i];
    } else {
      Rank& r = ranks_.front();
      cudaTry(cudaSetDevice(r.id.device), "cudaSetDevice");
      if (tpcCommInitRank(&r.comm, g_.nranks, g_.id, r.id.rank, &config) != tpcSuccess) {
        r.comm = nullptr;
        throw RankError(std::string("tpcCommInitRank: ") + tpcCommGetLastError(nullptr));
      }
    }
    if (!g_.useNccl) return;
    std::string why;
    nccl_ = nccl::library(&why);
    if (nccl_ == nullptr) throw RankError("NCCL: " + why);
    ncclGroup([&] {
      forEach([&](Rank& r) {
        if (nccl_->commInitRank(&r.ncclComm, g_.nranks, g_.ncclId, r.id.rank) != nccl::kSuccess) {
          r.ncclComm = nullptr;
          throw RankError(std::string("ncclCommInitRank: ") + nccl_->getLastError(nullptr));
        }
      });
    });
  }

  bool symmetric() const {
    return !ranks_.empty() && ranks_.front().ncclComm != nullptr &&
           nccl_->windowRegister != nullptr;
  }

  // Pools of the same size as tpcomm's, from ncclMemAlloc, registered as symmetric windows on
  // every rank (collective, so in a group).
  void setUpSymmetricWindows() {
    forEach([&](Rank& r) {
      if (nccl_->memAlloc(&r.symSend, poolBytes_) != nccl::kSuccess ||
          nccl_->memAlloc(&r.symRecv, poolBytes_) != nccl::kSuccess) {
        throw RankError(std::string("ncclMemAlloc: ") + nccl_->getLastError(r.ncclComm));
      }
      dispatch([&](auto zero) {
        using T = decltype(zero);
        const size_t n = poolBytes_ / sizeof(T);
        verifiable::fillRandom<<<verifiable::grid(n), 256, 0, r.stream>>>(
            static_cast<T*>(r.symSend), n, r.id.rank, 3);
        verifiable::fillRandom<<<verifiable::grid(n), 256, 0, r.stream>>>(
            static_cast<T*>(r.symRecv), n, r.id.rank, 4);
      });
      cudaTry(cudaStreamSynchronize(r.stream), "filling the symmetric pools");
    });
    ncclGroup([&] {
      forEach([&](Rank& r) {
        if (nccl_->windowRegister(r.ncclComm, r.symSend, poolBytes_, &r.symSendWindow,
                                  nccl::kWindowSymmetric) != nccl::kSuccess ||
            nccl_->windowRegister(r.ncclComm, r.symRecv, poolBytes_, &r.symRecvWindow,
                                  nccl::kWindowSymmetric) != nccl::kSuccess) {
          throw RankError(std::string("ncclCommWindowRegister: ") +
                          nccl_->getLastError(r.ncclComm));
        }
      });
    });
  }

  // One thread driving several NCCL ranks must bracket their calls in a group.
  template <typename Fn>
  void ncclGroup(Fn fn) {
    const bool grouped = ranks_.size() > 1;
    if (grouped) nccl_->groupStart();
    fn();
    if (grouped && nccl_->groupEnd() != nccl::kSuccess) {
      throw RankError(std::string("ncclGroupEnd: ") + nccl_->getLastError(nullptr));
    }
  }

  // Runs a collective tpcomm call on every rank at once: a thread per rank when there are several.
  template <typename Fn>
  void collective(const char* what, Fn fn) {
    std::vector<tpcResult_t> results(ranks_.size(), tpcSuccess);
    if (ranks_.size() == 1) {
      cudaSetDevice(ranks_[0].id.device);
      results[0] = fn(ranks_[0]);
    } else {
      std::vector<std::thread> threads;
      for (size_t i = 0; i < ranks_.size(); ++i) {
        threads.emplace_back([&, i] {
          cudaSetDevice(ranks_[i].id.device);
          results[i] = fn(ranks_[i]);
        });
      }
      for (std::thread& t : threads) t.join();
    }
    for (size_t i = 0; i < ranks_.size(); ++i) {
      if (results[i] != tpcSuccess) {
        throw RankError(std::string(what) + ": " + tpcCommGetLastError(ranks_[i].comm));
      }
    }
  }

  std::string chosenAlgorithm(const Rank& r, size_t count) const {
    tpcAlgorithm_t algo = tpcAlgoAuto;
    if (tpcCommGetAlgorithm(r.comm, count, o_.dtype, &algo) != tpcSuccess) return "?";
    return algorithmName(algo);
  }

  std::string chosenFusedAlgorithm(const Rank& r, size_t count) const {
    tpcAlgorithm_t algo = tpcAlgoAuto;
    if (tpcCommGetAddRmsNormAlgorithm(r.comm, count / o_.fusedHidden, o_.fusedHidden, o_.dtype,
                                      &algo) != tpcSuccess) {
      return "?";
    }
    return algorithmName(algo);
  }

  // The norm of rows of `count` elements in place over their sums at `out`, with the residual at
  // `residual`: what an engine runs after NCCL's all-reduce.
  void normAfterAllReduce(Rank& r, void* out, void* residual, size_t count) {
    device::AddNormParams p{};
    p.sum = out;
    p.norm.residualIn = residual;
    p.norm.residualOut = residual;
    p.norm.weight = r.weight;
    p.norm.out = out;
    p.norm.eps = kEps;
    p.norm.outType = device::kNormOutInput;
    p.norm.hidden = static_cast<uint32_t>(o_.fusedHidden);
    p.norm.hiddenVectors = static_cast<uint32_t>(o_.fusedHidden * elemBytes_ / 16);
    p.norm.rows = count / o_.fusedHidden;
    const int blocks = static_cast<int>(std::min<size_t>(p.norm.rows, 1 << 16));
    dispatch([&](auto zero) {
      using T = decltype(zero);
      if constexpr (sizeof(T) == 2) {
        cudaTry(device::launchAddRmsNorm<T>(p, blocks, false, r.stream), "the norm kernel");
      }
    });
  }

  void fusedCall(Rank& r, const void* in, void* residual, void* out, size_t count) {
    if (tpcAllReduceAddRmsNorm(in, residual, residual, r.weight, out, count / o_.fusedHidden,
                               o_.fusedHidden, kEps, o_.dtype, o_.dtype, nullptr, r.comm,
                               r.stream) != tpcSuccess) {
      throw RankError(std::string("tpcAllReduceAddRmsNorm: ") + tpcCommGetLastError(r.comm));
    }
  }

  void allReduce(Rank& r, const void* in, void* out, size_t count, Carrier carrier) {
    if (carrier == Carrier::kTpcommAllReduce) carrier = Carrier::kTpcomm;
    if (carrier != Carrier::kTpcomm) {
      if (nccl_->allReduce(in, out, count, o_.dtype, tpcSum, r.ncclComm, r.stream) !=
          nccl::kSuccess) {
        throw RankError(std::string("ncclAllReduce: ") + nccl_->getLastError(r.ncclComm));
      }
    } else if (tpcAllReduce(in, out, count, o_.dtype, tpcSum, r.comm, r.stream) != tpcSuccess) {
      throw RankError(std::string("tpcAllReduce: ") + tpcCommGetLastError(r.comm));
    }
  }

  // Call `i` of a timed loop on every rank, on the i-th buffer of the pools: no two calls of a
  // loop share bytes, but the loop's buffers (iters of them) stay in L2 up to about L2 / iters
  // bytes a message, as an engine's activations do, written by the kernel before the call. Calls of
  // several ranks go out as a group, as a thread driving them all must issue whatever NCCL carries.
  void callAll(int i, size_t count, bool inPlace, Carrier carrier) {
    const size_t stride = (count * elemBytes_ + 255) / 256 * 256;
    const size_t slots = std::max<size_t>(1, std::min<size_t>(64, poolBytes_ / stride));
    const size_t offset = static_cast<size_t>(i) % slots * stride;
    auto each = [&] {
      forEach([&](Rank& r) {
        const bool sym = carrier == Carrier::kNcclSymmetric;
        char* out = static_cast<char*>(sym ? r.symRecv : r.recv) + offset;
        const char* in = inPlace ? out : static_cast<char*>(sym ? r.symSend : r.send) + offset;
        if (fused_ && carrier == Carrier::kTpcomm) {
          fusedCall(r, in, static_cast<char*>(r.residual) + offset, out, count);
        } else {
          allReduce(r, in, out, count, carrier);
        }
      });
    };
    if (fused_ && carrier == Carrier::kNccl) {
      ncclGroup(each);
      forEach([&](Rank& r) {
        normAfterAllReduce(r, static_cast<char*>(r.recv) + offset,
                           static_cast<char*>(r.residual) + offset, count);
      });
    } else if (carrier == Carrier::kNccl || carrier == Carrier::kNcclSymmetric) {
      ncclGroup(each);
    } else {
      grouped(each);
    }
  }

  // Lines every rank up before a timed section: a late start must not be timed. A group, as for
  // every call this thread makes for several ranks: NCCL may carry this one.
  void barrier() {
    grouped([&] {
      forEach([&](Rank& r) { allReduce(r, r.barrierBuf, r.barrierBuf, 1, Carrier::kTpcomm); });
    });
    forEach([&](Rank& r) { cudaTry(cudaStreamSynchronize(r.stream), "barrier"); });
  }

  // Captures calls 0 to calls - 1 of every rank into r.exec, and registers their buffers where
  // they are read in place.
  void captureCalls(int calls, size_t count, bool inPlace, Carrier carrier) {
    forEach([&](Rank& r) {
      cudaTry(cudaStreamBeginCapture(r.stream, cudaStreamCaptureModeThreadLocal), "capture");
    });
    for (int i = 0; i < calls; ++i) callAll(i, count, inPlace, carrier);
    // Instantiation is refused while any stream of this thread still captures: end all first.
    std::vector<cudaGraph_t> graphs;
    forEach([&](Rank& r) {
      graphs.emplace_back();
      cudaTry(cudaStreamEndCapture(r.stream, &graphs.back()), "capture");
    });
    size_t next = 0;
    forEach([&](Rank& r) {
      cudaTry(cudaGraphInstantiate(&r.exec, graphs[next], 0), "cudaGraphInstantiate");
      cudaTry(cudaGraphDestroy(graphs[next++]), "cudaGraphDestroy");
    });
    if (o_.zeroCopy && tpcommCarries(carrier)) {
      collective("tpcCommRegisterGraphBuffers",
                 [](Rank& r) { return tpcCommRegisterGraphBuffers(r.comm); });
    }
  }

  // Microseconds per call on every rank: the median of kTimedSections timed sections. The host
  // queues a section's launches while the device runs them, so a host thread that stalls for a
  // moment leaves the device idle inside that section; one such stall must not become the figure.
  std::vector<double> measure(size_t count, bool inPlace, Carrier carrier) {
    for (int i = 0; i < o_.warmup; ++i) callAll(i, count, inPlace, carrier);
    const bool graph = o_.graphLaunches > 0;
    if (graph) {
      captureCalls(o_.iters, count, inPlace, carrier);
      // The first launch uploads the graph.
      forEach([&](Rank& r) { cudaTry(cudaGraphLaunch(r.exec, r.stream), "cudaGraphLaunch"); });
    }
    const long long calls = sectionCalls(o_.iters, o_.graphLaunches);
    std::vector<std::vector<double>> timings(ranks_.size());  // [rank][timing]
    for (int t = 0; t < kTimedSections; ++t) {
      barrier();
      forEach([&](Rank& r) { cudaTry(cudaEventRecord(r.start, r.stream), "cudaEventRecord"); });
      if (graph) {
        for (int k = 0; k < o_.graphLaunches; ++k) {
          forEach([&](Rank& r) { cudaTry(cudaGraphLaunch(r.exec, r.stream), "cudaGraphLaunch"); });
        }
      } else {
        for (int k = 0; k < kEagerSectionRepeats; ++k) {
          for (int i = 0; i < o_.iters; ++i) callAll(i, count, inPlace, carrier);
        }
      }
      forEach([&](Rank& r) { cudaTry(cudaEventRecord(r.stop, r.stream), "cudaEventRecord"); });
      size_t k = 0;
      forEach([&](Rank& r) {
        cudaTry(cudaEventSynchronize(r.stop), "timed calls");
        float ms = 0;
        cudaTry(cudaEventElapsedTime(&ms, r.start, r.stop), "cudaEventElapsedTime");
        timings[k++].push_back(ms * 1e3 / static_cast<double>(calls));
      });
    }
    std::vector<double> times;
    for (std::vector<double>& rank : timings) {
      std::nth_element(rank.begin(), rank.begin() + kTimedSections / 2, rank.end());
      times.push_back(rank[kTimedSections / 2]);
    }
    dropGraphs();
    return times;
  }

  // Destroys every rank's captured graph (a launch in flight still completes).
  void dropGraphs() {
    forEach([&](Rank& r) {
      if (r.exec != nullptr) cudaTry(cudaGraphExecDestroy(r.exec), "cudaGraphExecDestroy");
      r.exec = nullptr;
    });
  }

  // The call a check looks at, on slot 0 of the pools (where the check filled its inputs): what is
  // timed, so in graph mode a captured call (with --zero-copy, reading its peers' inputs in
  // place), which may take another kernel than an eager call of the same size.
  void checkedCall(size_t count, bool inPlace, Carrier carrier) {
    if (o_.graphLaunches > 0 && tpcommCarries(carrier)) {
      captureCalls(1, count, inPlace, carrier);
      forEach([&](Rank& r) { cudaTry(cudaGraphLaunch(r.exec, r.stream), "cudaGraphLaunch"); });
      dropGraphs();
    } else {
      callAll(0, count, inPlace, carrier);
    }
  }

  // Elements of one exactly verifiable all-reduce that differ from the exact sum, per rank.
  std::vector<uint64_t> verify(size_t count, bool inPlace, Carrier carrier) {
    const uint32_t seed = ++seed_;
    dispatch([&](auto zero) {
      using T = decltype(zero);
      forEach([&](Rank& r) {
        T* out = static_cast<T*>(r.recv);
        T* in = inPlace ? out : static_cast<T*>(r.send);
        cudaTry(cudaMemsetAsync(r.wrong, 0, sizeof(*r.wrong), r.stream), "cudaMemsetAsync");
        if (!inPlace) cudaMemsetAsync(out, 0xff, count * sizeof(T), r.stream);
        verifiable::fillExact<<<verifiable::grid(count), 256, 0, r.stream>>>(in, count, r.id.rank,
                                                                             seed);
      });
      checkedCall(count, inPlace, carrier);
      forEach([&](Rank& r) {
        verifiable::checkExact<<<verifiable::grid(count), 256, 0, r.stream>>>(
            static_cast<T*>(r.recv), count, g_.nranks, seed, r.wrong);
      });
    });
    return readWrong();
  }

  // Elements of one fused call that differ from the unfused sequence tpcomm's all-reduce + the norm
  // kernel gives for the same inputs, per rank: both sum in rank order in float32 and normalise
  // with the same code, so every bit must agree.
  std::vector<uint64_t> verifyFused(size_t count, bool inPlace) {
    const size_t bytes = count * elemBytes_;
    const uint32_t seed = ++seed_;
    auto region = [&](Rank& r, int k) { return static_cast<char*>(r.check) + k * bytes; };
    forEach([&](Rank& r) {
      dispatch([&](auto zero) {
        using T = decltype(zero);
        verifiable::fillRandom<<<verifiable::grid(count), 256, 0, r.stream>>>(
            static_cast<T*>(r.send), count, r.id.rank, seed);
        verifiable::fillRandom<<<verifiable::grid(count), 256, 0, r.stream>>>(
            reinterpret_cast<T*>(region(r, 0)), count, 0, seed + 1);
      });
      cudaTry(
          cudaMemcpyAsync(region(r, 1), region(r, 0), bytes, cudaMemcpyDeviceToDevice, r.stream),
          "cudaMemcpyAsync");
      cudaTry(cudaMemcpyAsync(r.residual, region(r, 0), bytes, cudaMemcpyDeviceToDevice, r.stream),
              "cudaMemcpyAsync");
      if (inPlace) {
        cudaTry(cudaMemcpyAsync(r.recv, r.send, bytes, cudaMemcpyDeviceToDevice, r.stream),
                "cudaMemcpyAsync");
      } else {
        cudaTry(cudaMemsetAsync(r.recv, 0xff, bytes, r.stream), "cudaMemsetAsync");
      }
      cudaTry(cudaMemsetAsync(r.wrong, 0, sizeof(*r.wrong), r.stream), "cudaMemsetAsync");
    });
    // The unfused sequence: residual in region 1, sums and then the norm in region 2.
    grouped([&] {
      forEach([&](Rank& r) { allReduce(r, r.send, region(r, 2), count, Carrier::kTpcomm); });
    });
    forEach([&](Rank& r) { normAfterAllReduce(r, region(r, 2), region(r, 1), count); });
    checkedCall(count, inPlace, Carrier::kTpcomm);
    forEach([&](Rank& r) {
      dispatch([&](auto zero) {
        using T = decltype(zero);
        for (auto [a, b] : {std::make_pair(r.residual, static_cast<void*>(region(r, 1))),
                            std::make_pair(r.recv, static_cast<void*>(region(r, 2)))}) {
          verifiable::countDifferentBits<<<verifiable::grid(count), 256, 0, r.stream>>>(
              static_cast<const T*>(a), static_cast<const T*>(b), count, r.wrong);
        }
      });
    });
    return readWrong();
  }

  // Every rank's count of wrong elements, once its checks have run.
  std::vector<uint64_t> readWrong() {
    std::vector<uint64_t> wrong;
    forEach([&](Rank& r) {
      unsigned long long w = 0;
      cudaTry(cudaMemcpyAsync(&w, r.wrong, sizeof(w), cudaMemcpyDeviceToHost, r.stream),
              "reading the check");
      cudaTry(cudaStreamSynchronize(r.stream), "checking the result");
      wrong.push_back(w);
    });
    return wrong;
  }

  // Issues tpcomm calls of every rank, as a group where this thread drives several.
  template <typename Fn>
  void grouped(Fn fn) {
    if (ranks_.size() > 1) tpcGroupStart();
    fn();
    if (ranks_.size() > 1 && tpcGroupEnd() != tpcSuccess) {
      throw RankError(std::string("tpcGroupEnd: ") + tpcCommGetLastError(nullptr));
    }
  }

  const Options& o_;
  const RankGroup& g_;
  const size_t elemBytes_;
  const bool fused_;
  std::vector<Rank> ranks_;
  const nccl::Library* nccl_ = nullptr;
  size_t poolBytes_ = 0;
  uint32_t seed_ = 100;
};

}  // namespace

int runRanks(const Options& options, const RankGroup& group) {
  int status = 2;
  try {
    Bench bench(options, group);
    try {
      bench.setUp();
      status = bench.run() ? 0 : 1;
      bench.reportMemory();
      for (const Rank& r : bench.ranks()) sendMessage(r.id.messageFd, "DONE");
    } catch (const std::exception& e) {
      for (const Rank& r : bench.ranks()) {
        sendMessage(r.id.messageFd, std::string("ERR ") + e.what());
      }
      return 2;
    }
  } catch (const std::exception& e) {
    for (const LocalRank& r : group.local) {
      sendMessage(r.messageFd, std::string("ERR ") + e.what());
    }
    return 2;
  }
  return status;
}

}  // namespace perf
}  // namespace tpcomm
