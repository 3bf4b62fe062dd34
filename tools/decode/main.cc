// tpcomm-decode: what tpcomm does to a tensor-parallel model's latency and memory, against NCCL.
//
// The coordinator (this process) runs every (model, batch, communicator) as a fresh set of rank
// processes, one per GPU, so that each run's peak memory is its own; ranks report their figures
// over pipes and leave their logits in a scratch folder, which the coordinator compares across
// communicators before it prints the tables.
#include <cuda_runtime.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "decode/options.h"
#include "decode/rank.h"
#include "decode/report.h"
#include "fallback/nccl_library.h"
#include "launch/launcher.h"
#include "text/text.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace decode {
namespace {

int fail(const std::string& message) {
  std::fprintf(stderr, "tpcomm-decode: %s\n", message.c_str());
  return 2;
}

// The communicator's id, as hex, for the ranks of one run.
bool makeId(Comm comm, std::string* hex, std::string* error) {
  if (comm == Comm::kNccl) {
    const nccl::Library* lib = nccl::library(error);
    if (lib == nullptr) return false;
    nccl::UniqueId id;
    if (lib->getUniqueId(&id) != nccl::kSuccess) {
      *error = std::string("ncclGetUniqueId: ") + lib->getLastError(nullptr);
      return false;
    }
    *hex = launch::toHex(&id, sizeof(id));
    return true;
  }
  tpcUniqueId id;
  if (tpcGetUniqueId(&id) != tpcSuccess) {
    *error = tpcCommGetLastError(nullptr);
    return false;
  }
  *hex = launch::toHex(&id, sizeof(id));
  return true;
}

// Starts the ranks of one run and gathers their results; false with *error when any failed.
bool runOnce(const Options& o, const Report& report, const std::string& model, int batch, Comm comm,
             const std::string& dir, std::string* gpu, RankResult* out, std::string* error) {
  std::string id;
  if (!makeId(comm, &id, error)) return false;
  const std::string ids = std::to_string(report.ranks) + ":" + id;
  std::vector<std::vector<std::string>> argvs;
  for (int r = 0; r < report.ranks; ++r) {
    argvs.push_back(workerArguments(o, model, batch, comm, r, ids, dir));
  }
  launch::RankProcesses processes;
  if (!launch::spawnRanks(argvs, &processes, error)) return false;
  std::vector<RankResult> results(report.ranks);
  std::vector<bool> done(report.ranks, false);
  std::string why;
  const bool heard =
      launch::collectMessages(processes.fds, [&](int rank, const std::string& line) -> bool {
        if (line == launch::kClosed) {
          if (!done[rank]) why = "rank " + std::to_string(rank) + " stopped before finishing";
          return done[rank];
        }
        if (line.rfind("GPU ", 0) == 0) {
          *gpu = line.substr(4);
          return true;
        }
        if (line.rfind("RES ", 0) == 0) {
          if (decodeResult(line, &results[rank])) return true;
          why = "rank " + std::to_string(rank) + " sent an unreadable result: " + line;
          return false;
        }
        if (line == "DONE") {
          done[rank] = true;
          return true;
        }
        why = "rank " + std::to_string(rank) + ": " +
              (line.rfind("ERR ", 0) == 0 ? line.substr(4) : "unreadable message: " + line);
        return false;
      });
  std::string exitError;
  const bool exited = launch::reapRanks(processes, !heard, &exitError);
  if (!heard || !exited) {
    *error = why.empty() ? exitError : why;
    return false;
  }
  *out = slowestOf(results);
  return true;
}

bool readLogits(const std::string& path, std::vector<uint16_t>* out) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  out->clear();
  uint16_t buf[4096];
  size_t n;
  while ((n = std::fread(buf, sizeof(uint16_t), 4096, f)) > 0)
    out->insert(out->end(), buf, buf + n);
  std::fclose(f);
  return true;
}

// Each later communicator's logits against the first's, rank by rank.
std::vector<LogitsCheck> checkLogits(const Report& report, const std::string& model, int batch,
                                     const std::vector<Comm>& ran, const std::string& dir) {
  std::vector<LogitsCheck> checks;
  for (size_t i = 1; i < ran.size(); ++i) {
    LogitsCheck c;
    c.model = model;
    c.batch = batch;
    c.comm = ran[i];
    c.reference = ran[0];
    c.bitwise = report.ranks <= 2;
    for (int r = 0; r < report.ranks; ++r) {
      std::vector<uint16_t> reference, got;
      readLogits(logitsPath(dir, model, batch, ran[0], r), &reference);
      readLogits(logitsPath(dir, model, batch, ran[i], r), &got);
      compareLogits(reference, got, &c);
    }
    checks.push_back(c);
  }
  for (Comm comm : ran) {
    for (int r = 0; r < report.ranks; ++r) {
      std::remove(logitsPath(dir, model, batch, comm, r).c_str());
    }
  }
  return checks;
}

int coordinatorMain(const Options& o) {
  int gpus = 0;
  const cudaError_t err = cudaGetDeviceCount(&gpus);
  if (err != cudaSuccess || gpus == 0) {
    return fail(std::string("no CUDA device (") + cudaGetErrorString(err) + ")");
  }
  Report report;
  report.version = std::to_string(TPCOMM_MAJOR) + "." + std::to_string(TPCOMM_MINOR) + "." +
                   std::to_string(TPCOMM_PATCH);
  report.gpus = gpus;
  report.ranks = o.ranks > 0 ? o.ranks : gpus;
  report.inputLen = o.inputLen;
  report.outputLen = o.outputLen;
  report.tpcommNccl = o.tpcommNccl;
  if (report.ranks > gpus) {
    return fail("--tp " + std::to_string(report.ranks) + " needs as many GPUs; this machine has " +
                std::to_string(gpus) + " (NCCL runs one rank per GPU)");
  }
  for (const std::string& name : o.models) {
    report.models.push_back(modelFor(o, name));
    Shard shard;
    std::string error;
    if (!shardModel(report.models.back(), report.ranks, 0, &shard, &error)) return fail(error);
  }
  char dirTemplate[] = "/tmp/tpcomm-decode-XXXXXX";
  if (mkdtemp(dirTemplate) == nullptr) return fail(std::string("mkdtemp: ") + strerror(errno));
  const std::string dir = dirTemplate;

  bool printedHeader = false;
  int failedRuns = 0, failedChecks = 0;
  for (const std::string& model : o.models) {
    for (int batch : o.batches) {
      std::vector<Comm> ran;
      for (Comm comm : o.comms) {
        Run run{model, batch, comm, {}};
        std::string error;
        const bool ok =
            runOnce(o, report, model, batch, comm, dir, &report.gpu, &run.result, &error);
        if (!printedHeader && !report.gpu.empty()) {
          std::fputs((formatPreamble(report) + formatHeader()).c_str(), stdout);
          printedHeader = true;
        }
        if (!ok) {
          std::printf("   %-12s %5d  %-14s  FAILED: %s\n", model.c_str(), batch, commName(comm),
                      error.c_str());
          ++failedRuns;
        } else {
          report.runs.push_back(run);
          ran.push_back(comm);
          std::fputs(formatRun(report, run).c_str(), stdout);
        }
        std::fflush(stdout);
      }
      for (const LogitsCheck& c : checkLogits(report, model, batch, ran, dir)) {
        report.checks.push_back(c);
        if (!c.passed()) ++failedChecks;
        std::fputs(formatCheck(c).c_str(), stdout);
      }
      std::fflush(stdout);
    }
  }
  rmdir(dir.c_str());
  std::fputs(formatSummary(report).c_str(), stdout);
  if (!o.jsonPath.empty()) {
    const std::string json = formatJson(report);
    std::string error;
    if (!writeFile(o.jsonPath, json.data(), json.size(), &error)) return fail(error);
  }
  if (failedRuns > 0) return fail(std::to_string(failedRuns) + " run(s) failed");
  if (failedChecks > 0) {
    std::fprintf(stderr, "tpcomm-decode: the communicators' logits differ\n");
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace decode
}  // namespace tpcomm

int main(int argc, char** argv) {
  using namespace tpcomm::decode;
  Options options;
  std::string error;
  bool help = false;
  if (!parseOptions(argc, argv, &options, &error, &help)) {
    std::fprintf(stderr, "tpcomm-decode: %s (see --help)\n", error.c_str());
    return 2;
  }
  if (help) {
    std::fputs(usage().c_str(), stdout);
    return 0;
  }
  if (options.workerRank >= 0) return runRank(options);
  return coordinatorMain(options);
}
