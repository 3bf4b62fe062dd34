// tpcomm-decode's results: what a rank reports, how the coordinator combines the ranks, checks the
// logits and prints the tables and the JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "decode/model.h"
#include "decode/options.h"

namespace tpcomm {
namespace decode {

// One rank's figures for one run (model, batch, comm).
struct RankResult {
  std::string weights;    // "distinct" or "shared"
  double prefillMs = 0;   // the prompt's forward pass
  double totalMs = 0;     // prefill and every decode step, as a request sees it
  double stepMeanUs = 0;  // decode steps, each a graph replay the host waits for
  double stepP50Us = 0;
  double stepP99Us = 0;
  double localStepUs = 0;  // median of the same step without its all-reduces
  double peakMb = 0;       // device memory in use at its highest, as the driver reports it
  double commMb = 0;       // of which the communicator took, at creation and first calls
  double graphMb = 0;      // of which capturing and instantiating the graphs took
};

std::string encodeResult(const RankResult& r);  // "RES key=value ..."
bool decodeResult(const std::string& line, RankResult* out);
// Every figure the largest over the ranks: the slowest rank is the step's time.
RankResult slowestOf(const std::vector<RankResult>& ranks);

// The median and the 99th percentile of `values` (sorted in place).
double percentile(std::vector<double>& values, double p);

struct Run {
  std::string model;
  int batch = 0;
  Comm comm = Comm::kNccl;
  RankResult result;
};

// One run's logits against another's (the first communicator's), rank by rank.
struct LogitsCheck {
  std::string model;
  int batch = 0;
  Comm comm = Comm::kNccl;
  Comm reference = Comm::kNccl;
  bool bitwise = false;  // required for one or two ranks: both sum each element the same way
  size_t elements = 0;
  size_t differing = 0;  // elements whose bits differ
  size_t nonFinite = 0;  // NaN or infinity in either
  double maxAbsDiff = 0;
  double maxAbs = 0;  // the reference's largest magnitude
  bool passed() const;
};

// Compares two runs' bf16 logits of one rank into *check (accumulating over ranks).
void compareLogits(const std::vector<uint16_t>& reference, const std::vector<uint16_t>& got,
                   LogitsCheck* check);

struct Report {
  std::string version;
  std::string gpu;
  int gpus = 0;
  int ranks = 0;
  int inputLen = 0;
  int outputLen = 0;
  bool tpcommNccl = false;
  std::vector<ModelShape> models;
  std::vector<Run> runs;
  std::vector<LogitsCheck> checks;
};

std::string formatPreamble(const Report& report);
std::string formatHeader();
std::string formatRun(const Report& report, const Run& run);
std::string formatCheck(const LogitsCheck& check);
std::string formatSummary(const Report& report);
std::string formatJson(const Report& report);

}  // namespace decode
}  // namespace tpcomm
