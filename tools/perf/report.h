// What tpcomm-perf measured, and how it prints it: nccl-tests' preamble, table and footer with
// tpcomm's extra columns, and JSON. Pure functions, so that the formats can be tested exactly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpcomm {
namespace perf {

struct Measurement {
  double timeUs = 0;
  uint64_t wrong = 0;
};

struct Row {
  size_t bytes = 0;
  size_t count = 0;
  Measurement outOfPlace;
  Measurement inPlace;
  std::string algo;       // what tpcomm chose (or "nccl")
  double ncclUs = -1;     // NCCL's out-of-place time in the same run; negative when not run
  double ncclSymUs = -1;  // ... on symmetric registered windows (NCCL 2.27+); negative when not
  // Fused rows (--fused): the all-reduce with the residual add and RMSNorm, by `algo`. outOfPlace
  // writes the norm to its own buffer, inPlace over the input; ncclUs is NCCL's all-reduce
  // followed by the norm kernel, and allReduceUs tpcomm's all-reduce of the same bytes alone.
  size_t hidden = 0;  // elements per row; 0 for a plain all-reduce row
  double allReduceUs = -1;
  std::string allReduceAlgo = "-";  // what tpcomm chose for the all-reduce alone
  size_t tokens() const { return hidden == 0 ? 0 : count / hidden; }
  // The faster NCCL time of the two, or negative when neither ran.
  double bestNcclUs() const;
};

// The device memory tpcomm holds on a rank, as tpcCommGetMemoryInfo reports it.
struct MemoryReport {
  size_t deviceBytes = 0;
  size_t stagingBytes = 0;  // of deviceBytes: the pull kernels' staging and scratch
  size_t receiveBytes = 0;  // of deviceBytes: the push kernels' receive buffers
  size_t peerBytes = 0;
  int slotsUsed = 0;
};

struct RankInfo {
  int rank = 0;
  int pid = 0;
  int device = 0;
  std::string busId;
  std::string host;
  std::string name;
};

// Timed sections per size; a rank's time is their median.
constexpr int kTimedSections = 3;

// Graph launches per timed section unless -G says otherwise.
constexpr int kDefaultGraphLaunches = 10;

// Eager mode times as many calls a section as graph mode does by default: a section's first
// launch waits out the host's submission latency, which a graph section spreads over its
// iters x kDefaultGraphLaunches calls. Over 20 eager calls a section instead of 200, eager calls
// of 8 B to 128 KB took 0.3-1.1 us longer each (2 H200s).
constexpr int kEagerSectionRepeats = kDefaultGraphLaunches;

// Calls in one timed section: the graph of `iters` calls replayed `graphLaunches` times, or
// (graphLaunches 0) the iterations issued eagerly kEagerSectionRepeats times.
inline long long sectionCalls(int iters, int graphLaunches) {
  return static_cast<long long>(iters) * (graphLaunches > 0 ? graphLaunches : kEagerSectionRepeats);
}

struct Report {
  std::string version;  // tpcomm version
  size_t minBytes = 0, maxBytes = 0;
  double stepFactor = 2;
  size_t stepBytes = 0;
  int warmup = 0, iters = 0, graphLaunches = 0;
  bool check = true;
  std::string dtype;
  std::string algo;
  int nranks = 0;
  bool threads = false;
  bool loopback = false;    // ranks share GPUs: kernel diagnostics, not NVLink figures
  std::string ncclNote;     // NCCL's version, or why its column is empty
  std::string ncclSymNote;  // why NCCL's symmetric-window column is empty, or empty
  bool zeroCopy = false;
  size_t fusedHidden = 0;  // --fused: rows of this many elements
  // tpcomm's memory on the rank that holds the most, once a rank reports it
  MemoryReport memory;
  std::vector<RankInfo> ranks;
  std::vector<Row> rows;
};

double algbwGBs(size_t bytes, double timeUs);
double busbwGBs(double algbw, int nranks);  // algbw * 2(n-1)/n

// One row from every rank's view of it: the slowest rank's times, every rank's #wrong added up.
Row combineRanks(const std::vector<Row>& perRank);

std::string formatPreamble(const Report& report);
std::string formatHeader(const Report& report);
std::string formatRow(const Report& report, const Row& row);
std::string formatFooter(const Report& report);
std::string formatJson(const Report& report);

uint64_t totalWrong(const Report& report);

// The lines a rank sends to the process that prints the table.
std::string encodeRank(const RankInfo& info);
std::string encodeRow(const Row& row);
bool decodeRank(const std::string& line, RankInfo* info);
bool decodeRow(const std::string& line, Row* row);
std::string encodeMemory(const MemoryReport& memory);
bool decodeMemory(const std::string& line, MemoryReport* memory);

}  // namespace perf
}  // namespace tpcomm
