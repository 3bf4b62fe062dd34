#include <cublas_v2.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "decode/forward.h"
#include "decode/rank.h"
#include "decode/report.h"
#include "fallback/nccl_library.h"
#include "launch/launcher.h"
#include "text/text.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace decode {
namespace {

using launch::sendMessage;

constexpr size_t kBlasWorkspaceBytes = size_t{32} << 20;
constexpr int kWarmupSteps = 2;
constexpr int kLocalSteps = 32;

double usedMb() {
  size_t free = 0, total = 0;
  cudaTry(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  return double(total - free) / (1 << 20);
}

// Owns a CUDA object, destroyed with `destroy`.
template <typename T, cudaError_t (*destroy)(T)>
struct Owned {
  Owned() = default;
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  T handle = nullptr;
  ~Owned() {
    if (handle != nullptr) destroy(handle);
  }
};

// A communicator, and the end of a block made with it.
class CommReducer : public Reducer {
 public:
  // A small all-reduce the host waits for: every rank is ready.
  virtual void barrier(cudaStream_t stream) = 0;
};

class NcclReducer : public CommReducer {
 public:
  NcclReducer(const nccl::UniqueId& id, int ranks, int rank, int hidden, float eps)
      : hidden_(hidden), eps_(eps) {
    std::string why;
    lib_ = nccl::library(&why);
    if (lib_ == nullptr) throw DecodeError("no NCCL: " + why);
    cudaTry(cudaMalloc(&scratch_.handle, 16), "cudaMalloc");
    if (lib_->commInitRank(&comm_, ranks, id, rank) != nccl::kSuccess) {
      throw DecodeError(std::string("ncclCommInitRank: ") + lib_->getLastError(nullptr));
    }
  }
  ~NcclReducer() override { lib_->commDestroy(comm_); }
  void addNorm(bf16* partial, bf16* residual, const bf16* weight, bf16* normed, size_t rows,
               cudaStream_t stream) override {
    allReduce(partial, rows * hidden_, stream);
    addRmsNorm(partial, residual, weight, normed, rows, hidden_, eps_, stream);
  }
  void barrier(cudaStream_t stream) override {
    allReduce(scratch_.handle, 1, stream);
    cudaTry(cudaStreamSynchronize(stream), "the barrier");
  }

 private:
  void allReduce(void* data, size_t count, cudaStream_t stream) {
    if (lib_->allReduce(data, data, count, tpcBfloat16, tpcSum, comm_, stream) != nccl::kSuccess) {
      throw DecodeError(std::string("ncclAllReduce: ") + lib_->getLastError(comm_));
    }
  }

  const nccl::Library* lib_ = nullptr;
  nccl::Comm comm_ = nullptr;
  Owned<void*, cudaFree> scratch_;
  int hidden_;
  float eps_;
};

class TpcommReducer : public CommReducer {
 public:
  TpcommReducer(const tpcUniqueId& id, int ranks, int rank, bool fused, bool ncclFallback,
                int hidden, float eps)
      : fused_(fused), hidden_(hidden), eps_(eps) {
    cudaTry(cudaMalloc(&scratch_.handle, 16), "cudaMalloc");
    tpcConfig_t config = TPC_CONFIG_INITIALIZER;
    config.ncclFallback = ncclFallback ? TPC_NCCL_AUTO : TPC_NCCL_OFF;
    if (tpcCommInitRank(&comm_, ranks, id, rank, &config) != tpcSuccess) {
      throw DecodeError(std::string("tpcCommInitRank: ") + tpcCommGetLastError(nullptr));
    }
  }
  ~TpcommReducer() override { tpcCommDestroy(comm_); }
  void addNorm(bf16* partial, bf16* residual, const bf16* weight, bf16* normed, size_t rows,
               cudaStream_t stream) override {
    if (fused_) {
      check(tpcAllReduceAddRmsNorm(partial, residual, residual, weight, normed, rows, hidden_, eps_,
                                   tpcBfloat16, tpcBfloat16, nullptr, comm_, stream),
            "tpcAllReduceAddRmsNorm");
    } else {
      check(tpcAllReduce(partial, partial, rows * hidden_, tpcBfloat16, tpcSum, comm_, stream),
            "tpcAllReduce");
      addRmsNorm(partial, residual, weight, normed, rows, hidden_, eps_, stream);
    }
  }
  void barrier(cudaStream_t stream) override {
    check(tpcAllReduce(scratch_.handle, scratch_.handle, 1, tpcBfloat16, tpcSum, comm_, stream),
          "tpcAllReduce");
    cudaTry(cudaStreamSynchronize(stream), "the barrier");
  }

 private:
  void check(tpcResult_t result, const char* what) {
    if (result != tpcSuccess) {
      throw DecodeError(std::string(what) + ": " + tpcCommGetLastError(comm_));
    }
  }

  tpcComm_t comm_ = nullptr;
  Owned<void*, cudaFree> scratch_;
  bool fused_;
  int hidden_;
  float eps_;
};

struct BlasHandle {
  cublasHandle_t handle = nullptr;
  ~BlasHandle() {
    if (handle != nullptr) cublasDestroy(handle);
  }
};

// Captures `step` on `stream` into an executable graph, uploaded so that its first replay costs
// what the others do.
template <typename Step>
cudaGraphExec_t capture(cudaStream_t stream, Step step) {
  cudaTry(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capturing");
  try {
    step();
  } catch (...) {
    cudaGraph_t discarded = nullptr;
    cudaStreamEndCapture(stream, &discarded);
    if (discarded != nullptr) cudaGraphDestroy(discarded);
    throw;
  }
  cudaGraph_t graph = nullptr;
  cudaTry(cudaStreamEndCapture(stream, &graph), "capturing");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  cudaTry(err, "cudaGraphInstantiate");
  cudaTry(cudaGraphUpload(exec, stream), "cudaGraphUpload");
  return exec;
}

// Times `count` replays of `exec`, each waited for by the host, between the completions of
// consecutive replays (the first from `after`).
std::vector<double> timeReplays(cudaGraphExec_t exec, int count, cudaEvent_t after,
                                cudaStream_t stream) {
  Owned<cudaEvent_t, cudaEventDestroy> done[2];
  for (auto& e : done) cudaTry(cudaEventCreate(&e.handle), "cudaEventCreate");
  std::vector<double> us(count);
  cudaEvent_t previous = after;
  for (int i = 0; i < count; ++i) {
    const cudaEvent_t now = done[i % 2].handle;
    cudaTry(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    cudaTry(cudaEventRecord(now, stream), "cudaEventRecord");
    cudaTry(cudaStreamSynchronize(stream), "a decode step");
    float ms = 0;
    cudaTry(cudaEventElapsedTime(&ms, previous, now), "cudaEventElapsedTime");
    us[i] = 1000.0 * ms;
    previous = now;
  }
  return us;
}

void writeLogits(const std::string& path, const Transformer& t, cudaStream_t stream) {
  std::vector<bf16> host(t.logitsCount());
  cudaTry(cudaMemcpyAsync(host.data(), t.logits(), host.size() * sizeof(bf16),
                          cudaMemcpyDeviceToHost, stream),
          "copying the logits");
  cudaTry(cudaStreamSynchronize(stream), "copying the logits");
  std::string error;
  if (!writeFile(path, host.data(), host.size() * sizeof(bf16), &error)) throw DecodeError(error);
}

RankResult run(const Options& o, int ranks, const std::string& idHex) {
  const int rank = o.workerRank;
  const ModelShape model = modelFor(o, o.models.at(0));
  const int batch = o.batches.at(0);
  const Comm comm = o.comms.at(0);
  Shard shard;
  std::string error;
  if (!shardModel(model, ranks, rank, &shard, &error)) throw DecodeError(error);

  int gpus = 0;
  cudaTry(cudaGetDeviceCount(&gpus), "cudaGetDeviceCount");
  const int device = rank % gpus;
  cudaTry(cudaSetDevice(device), "cudaSetDevice");
  cudaDeviceProp prop{};
  cudaTry(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  if (rank == 0) sendMessage(launch::kMessageFd, std::string("GPU ") + prop.name);
  Owned<cudaStream_t, cudaStreamDestroy> stream;
  cudaTry(cudaStreamCreateWithFlags(&stream.handle, cudaStreamNonBlocking), "cudaStreamCreate");
  const cudaStream_t s = stream.handle;

  RankResult result;
  double peak = usedMb();
  const auto track = [&peak] { peak = std::max(peak, usedMb()); };
  const double beforeComm = peak;
  std::unique_ptr<CommReducer> reducer;
  if (comm == Comm::kNccl) {
    nccl::UniqueId id;
    if (!launch::fromHex(idHex, &id, sizeof(id))) throw DecodeError("bad --worker-ids");
    reducer.reset(new NcclReducer(id, ranks, rank, model.hidden, model.normEps));
  } else {
    tpcUniqueId id;
    if (!launch::fromHex(idHex, &id, sizeof(id))) throw DecodeError("bad --worker-ids");
    reducer.reset(new TpcommReducer(id, ranks, rank, comm == Comm::kTpcomm, o.tpcommNccl,
                                    model.hidden, model.normEps));
  }
  track();
  const double commCreated = peak - beforeComm;

  BlasHandle blas;
  if (cublasCreate(&blas.handle) != CUBLAS_STATUS_SUCCESS) throw DecodeError("cublasCreate failed");
  Owned<void*, cudaFree> workspace;
  cudaTry(cudaMalloc(&workspace.handle, kBlasWorkspaceBytes), "cudaMalloc");
  // A workspace of its own keeps cuBLAS from allocating inside graph capture.
  if (cublasSetStream(blas.handle, s) != CUBLAS_STATUS_SUCCESS ||
      cublasSetWorkspace(blas.handle, workspace.handle, kBlasWorkspaceBytes) !=
          CUBLAS_STATUS_SUCCESS) {
    throw DecodeError("cannot give cuBLAS its stream and workspace");
  }

  const WeightLayout layout =
      resolveLayout(o.weights, model, shard, batch, o.inputLen, o.outputLen, prop.totalGlobalMem);
  result.weights = layout == WeightLayout::kShared ? "shared" : "distinct";
  Transformer t(model, shard, layout, batch, o.inputLen, o.outputLen, s);
  LocalReducer local(model.hidden, model.normEps);
  track();

  // Every kernel and every cuBLAS choice is loaded before capture: first without the
  // communicator, so that what its first calls allocate (NCCL sets up its channels lazily) is
  // told apart from what cuBLAS and the kernels load.
  const auto warmUp = [&](Reducer& with) {
    t.prefill(with, blas.handle, s);
    t.setPosition(o.inputLen, s);
    for (int i = 0; i < kWarmupSteps; ++i) t.decodeStep(with, blas.handle, s, true);
    cudaTry(cudaStreamSynchronize(s), "the warm-up");
    track();
  };
  warmUp(local);
  const double beforeFirstCalls = usedMb();
  warmUp(*reducer);
  result.commMb = commCreated + usedMb() - beforeFirstCalls;

  const double beforeGraphs = usedMb();
  Owned<cudaGraphExec_t, cudaGraphExecDestroy> step, localStep;
  step.handle = capture(s, [&] { t.decodeStep(*reducer, blas.handle, s, true); });
  localStep.handle = capture(s, [&] { t.decodeStep(local, blas.handle, s, false); });
  cudaTry(cudaStreamSynchronize(s), "uploading the graphs");
  track();
  result.graphMb = usedMb() - beforeGraphs;

  // The request: its prompt, then every decode step.
  t.setPosition(o.inputLen, s);
  reducer->barrier(s);
  Owned<cudaEvent_t, cudaEventDestroy> start, prefilled;
  cudaTry(cudaEventCreate(&start.handle), "cudaEventCreate");
  cudaTry(cudaEventCreate(&prefilled.handle), "cudaEventCreate");
  cudaTry(cudaEventRecord(start.handle, s), "cudaEventRecord");
  t.prefill(*reducer, blas.handle, s);
  cudaTry(cudaEventRecord(prefilled.handle, s), "cudaEventRecord");
  cudaTry(cudaStreamSynchronize(s), "the prompt");
  float ms = 0;
  cudaTry(cudaEventElapsedTime(&ms, start.handle, prefilled.handle), "cudaEventElapsedTime");
  result.prefillMs = ms;
  std::vector<double> steps = timeReplays(step.handle, o.outputLen, prefilled.handle, s);
  result.totalMs = result.prefillMs;
  for (double us : steps) result.totalMs += us / 1000;
  for (double us : steps) result.stepMeanUs += us / steps.size();
  result.stepP50Us = percentile(steps, 0.5);
  result.stepP99Us = percentile(steps, 0.99);
  track();
  writeLogits(logitsPath(o.workerDir, model.name, batch, comm, rank), t, s);

  // The same step without its all-reduces, at the middle of the decode (its median attention).
  t.setPosition(o.inputLen + o.outputLen / 2, s);
  Owned<cudaEvent_t, cudaEventDestroy> ready;
  cudaTry(cudaEventCreate(&ready.handle), "cudaEventCreate");
  cudaTry(cudaEventRecord(ready.handle, s), "cudaEventRecord");
  cudaTry(cudaStreamSynchronize(s), "setting the position");
  std::vector<double> localSteps = timeReplays(localStep.handle, kLocalSteps, ready.handle, s);
  result.localStepUs = percentile(localSteps, 0.5);
  track();
  result.peakMb = peak;
  return result;
}

}  // namespace

std::string logitsPath(const std::string& dir, const std::string& model, int batch, Comm comm,
                       int rank) {
  return dir + "/" + model + "-b" + std::to_string(batch) + "-" + commName(comm) + "-r" +
         std::to_string(rank) + ".bin";
}

int runRank(const Options& o) {
  const size_t colon = o.workerIds.find(':');
  const int ranks = std::atoi(o.workerIds.substr(0, colon).c_str());
  try {
    if (colon == std::string::npos || ranks < 1) throw DecodeError("bad --worker-ids");
    const RankResult r = run(o, ranks, o.workerIds.substr(colon + 1));
    sendMessage(launch::kMessageFd, encodeResult(r));
    sendMessage(launch::kMessageFd, "DONE");
    return 0;
  } catch (const std::exception& e) {
    sendMessage(launch::kMessageFd, std::string("ERR ") + e.what());
    return 2;
  }
}

}  // namespace decode
}  // namespace tpcomm
