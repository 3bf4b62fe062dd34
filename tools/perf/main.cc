// tpcomm-perf: all-reduce latency and bandwidth in nccl-tests' format, tpcomm beside NCCL.
//
// The coordinator (this process) starts one rank per GPU as a process of its own, or all ranks as
// threads when asked to (-t) or when ranks must share GPUs; ranks report rows over pipes and the
// coordinator prints each row once every rank has measured it, with the slowest rank's time.
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "fallback/nccl_library.h"
#include "launch/launcher.h"
#include "perf/options.h"
#include "perf/rank.h"
#include "perf/report.h"
#include "text/text.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace perf {
namespace {

using launch::collectMessages;
using launch::fromHex;
using launch::kClosed;
using launch::kMessageFd;
using launch::RankProcesses;
using launch::reapRanks;
using launch::spawnRanks;
using launch::toHex;

int fail(const std::string& message) {
  std::fprintf(stderr, "tpcomm-perf: %s\n", message.c_str());
  return 2;
}

// A rank process started by the coordinator: --ids carries "NRANKS:TPCOMM_ID:NCCL_ID|-".
int workerMain(const Options& o) {
  RankGroup group;
  const std::string& ids = o.workerIds;
  const size_t a = ids.find(':'), b = ids.find(':', a + 1);
  if (a == std::string::npos || b == std::string::npos) return fail("bad --ids");
  group.nranks = std::atoi(ids.substr(0, a).c_str());
  if (!fromHex(ids.substr(a + 1, b - a - 1), &group.id, sizeof(group.id))) {
    return fail("bad --ids");
  }
  const std::string ncclHex = ids.substr(b + 1);
  group.useNccl = ncclHex != "-";
  if (group.useNccl && !fromHex(ncclHex, &group.ncclId, sizeof(group.ncclId))) {
    return fail("bad --ids");
  }
  int gpus = 1;
  cudaGetDeviceCount(&gpus);
  LocalRank self;
  self.rank = o.workerRank;
  self.device = self.rank % (gpus > 0 ? gpus : 1);
  self.messageFd = kMessageFd;
  group.local.push_back(self);
  return runRanks(o, group);
}

// Prints rows as soon as every rank has delivered them.
class Coordinator {
 public:
  explicit Coordinator(Report* report) : report_(report), perRank_(report->nranks) {
    done_.assign(report->nranks, false);
    haveInfo_.assign(report->nranks, false);
    report->ranks.resize(report->nranks);
  }

  bool onMessage(int rank, const std::string& line) {
    if (line == kClosed) {
      if (done_[rank]) return true;
      error_ = "rank " + std::to_string(rank) + " stopped before finishing";
      return false;
    }
    if (line.rfind("DEV ", 0) == 0) {
      RankInfo info;
      if (!decodeRank(line, &info)) return protocolError(rank, line);
      report_->ranks[rank] = info;
      haveInfo_[rank] = true;
      if (++infos_ == report_->nranks) {
        std::fputs(formatPreamble(*report_).c_str(), stdout);
        std::fputs(formatHeader(*report_).c_str(), stdout);
        std::fflush(stdout);
      }
      return true;
    }
    if (line.rfind("ROW ", 0) == 0) {
      Row row;
      if (!decodeRow(line, &row)) return protocolError(rank, line);
      perRank_[rank].push_back(row);
      printCompleteRows();
      return true;
    }
    if (line.rfind("MEM ", 0) == 0) {
      MemoryReport m;
      if (!decodeMemory(line, &m)) return protocolError(rank, line);
      // The rank that holds the most.
      if (m.deviceBytes + m.peerBytes >= report_->memory.deviceBytes + report_->memory.peerBytes) {
        report_->memory = m;
      }
      return true;
    }
    if (line == "DONE") {
      done_[rank] = true;
      return true;
    }
    if (line.rfind("ERR ", 0) == 0) {
      error_ = "rank " + std::to_string(rank) + ": " + line.substr(4);
      return false;
    }
    return protocolError(rank, line);
  }

  const std::string& error() const { return error_; }

 private:
  bool protocolError(int rank, const std::string& line) {
    error_ = "rank " + std::to_string(rank) + " sent an unreadable message: " + line;
    return false;
  }

  void printCompleteRows() {
    const size_t next = report_->rows.size();
    for (const std::vector<Row>& rows : perRank_) {
      if (rows.size() <= next) return;
    }
    std::vector<Row> views;
    for (const std::vector<Row>& rows : perRank_) views.push_back(rows[next]);
    report_->rows.push_back(combineRanks(views));
    std::fputs(formatRow(*report_, report_->rows.back()).c_str(), stdout);
    std::fflush(stdout);
    if (isatty(STDERR_FILENO)) {
      std::fprintf(stderr, "\r[tpcomm-perf] %zu bytes done ", report_->rows.back().bytes);
    }
    printCompleteRows();
  }

  Report* report_;
  std::vector<std::vector<Row>> perRank_;
  std::vector<bool> done_;
  std::vector<bool> haveInfo_;
  int infos_ = 0;
  std::string error_;
};

int coordinatorMain(int argc, char** argv, const Options& o) {
  int gpus = 0;
  const cudaError_t err = cudaGetDeviceCount(&gpus);
  if (err != cudaSuccess || gpus == 0) {
    return fail(std::string("no CUDA device (") + cudaGetErrorString(err) + ")");
  }
  Report report;
  report.version = std::to_string(TPCOMM_MAJOR) + "." + std::to_string(TPCOMM_MINOR) + "." +
                   std::to_string(TPCOMM_PATCH);
  report.minBytes = o.minBytes;
  report.maxBytes = o.maxBytes;
  report.stepFactor = o.stepFactor;
  report.stepBytes = o.stepBytes;
  report.warmup = o.warmup;
  report.iters = o.iters;
  report.graphLaunches = o.graphLaunches;
  report.check = o.check;
  report.zeroCopy = o.zeroCopy;
  report.fusedHidden = o.fusedHidden;
  report.dtype = dataTypeName(o.dtype);
  report.algo = o.algo;
  report.nranks = o.nranks > 0 ? o.nranks : (gpus > 1 ? gpus : 4);
  report.loopback = report.nranks > gpus;
  // Kernels of different processes time-slice on one GPU; ranks that share one run as threads.
  report.threads = o.threads || (report.loopback && !o.processes);

  bool useNccl = false;
  nccl::UniqueId ncclId{};
  if (!o.nccl) {
    report.ncclNote = "off (--nccl off)";
  } else if (report.loopback) {
    report.ncclNote = "off: NCCL cannot run several ranks on one GPU";
  } else if (report.nranks == 1) {
    report.ncclNote = "off: one rank";
  } else {
    std::string why;
    const nccl::Library* lib = nccl::library(&why);
    if (lib == nullptr) {
      report.ncclNote = "off: " + why;
    } else if (lib->getUniqueId(&ncclId) != nccl::kSuccess) {
      report.ncclNote = std::string("off: ncclGetUniqueId failed: ") + lib->getLastError(nullptr);
    } else {
      useNccl = true;
      report.ncclNote = "NCCL " + std::to_string(lib->version) + " (" + lib->origin + ")";
      report.ncclSymNote = lib->windowRegister != nullptr
                               ? "ncclMemAlloc + ncclCommWindowRegister(NCCL_WIN_COLL_SYMMETRIC)"
                               : "off: this NCCL has no symmetric windows (2.27 and newer do)";
    }
  }
  if (o.algo == "nccl" && !useNccl) return fail("--algo nccl, but " + report.ncclNote);

  tpcUniqueId id;
  if (tpcGetUniqueId(&id) != tpcSuccess) return fail(tpcCommGetLastError(nullptr));

  Coordinator coordinator(&report);
  auto handler = [&](int rank, const std::string& line) {
    return coordinator.onMessage(rank, line);
  };
  bool ok = true;
  std::string error;
  if (report.threads) {
    // One thread drives every rank in lock-step; this thread prints.
    RankGroup group;
    group.nranks = report.nranks;
    group.id = id;
    group.useNccl = useNccl;
    group.ncclId = ncclId;
    std::vector<int> readFds;
    for (int r = 0; r < report.nranks; ++r) {
      int fds[2];
      if (pipe(fds) != 0) return fail("pipe failed");
      readFds.push_back(fds[0]);
      group.local.push_back(LocalRank{r, r % gpus, fds[1]});
    }
    std::thread driver([&o, &group] {
      runRanks(o, group);
      for (const LocalRank& r : group.local) close(r.messageFd);
    });
    ok = collectMessages(readFds, handler);
    if (!ok) {
      // The driver may wait on ranks that failed until tpcomm's timeout: leave at once.
      std::fprintf(stderr, "tpcomm-perf: %s\n", coordinator.error().c_str());
      std::fflush(stdout);
      _exit(2);
    }
    driver.join();
  } else {
    std::vector<std::vector<std::string>> argvs;
    const std::string ids = std::to_string(report.nranks) + ":" + toHex(&id, sizeof(id)) + ":" +
                            (useNccl ? toHex(&ncclId, sizeof(ncclId)) : "-");
    for (int r = 0; r < report.nranks; ++r) {
      argvs.push_back(workerArguments(argc, argv, r, ids));
      argvs.back()[0] = "/proc/self/exe";
    }
    RankProcesses ranks;
    if (!spawnRanks(argvs, &ranks, &error)) return fail(error);
    ok = collectMessages(ranks.fds, handler);
    const bool allExited = reapRanks(ranks, !ok, &error);
    if (!ok) return fail(coordinator.error().empty() ? error : coordinator.error());
    // A rank exits with 1 when it found wrong elements, which the table already shows.
    if (!allExited && totalWrong(report) == 0) return fail(error);
  }
  if (isatty(STDERR_FILENO)) std::fputs("\n", stderr);
  std::fputs(formatFooter(report).c_str(), stdout);
  if (!o.jsonPath.empty()) {
    const std::string json = formatJson(report);
    std::string error;
    if (!writeFile(o.jsonPath, json.data(), json.size(), &error)) return fail(error);
  }
  return totalWrong(report) == 0 ? 0 : 1;
}

}  // namespace
}  // namespace perf
}  // namespace tpcomm

int main(int argc, char** argv) {
  using namespace tpcomm::perf;
  Options options;
  std::string error;
  bool help = false;
  if (!parseOptions(argc, argv, &options, &error, &help)) {
    std::fprintf(stderr, "tpcomm-perf: %s (see --help)\n", error.c_str());
    return 2;
  }
  if (help) {
    std::fputs(usage().c_str(), stdout);
    return 0;
  }
  if (options.workerRank >= 0) return workerMain(options);
  return coordinatorMain(argc, argv, options);
}
