// tpcomm-perf's command line, in nccl-tests' vocabulary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "perf/report.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace perf {

struct Options {
  size_t minBytes = 8;
  size_t maxBytes = size_t{256} << 20;
  double stepFactor = 2;  // -f; used when stepBytes is 0
  size_t stepBytes = 0;   // -i
  int iters = 20;
  int warmup = 5;
  bool check = true;
  tpcDataType_t dtype = tpcBfloat16;
  // -G: 0 times eager calls; N captures the iterations, replays N times
  int graphLaunches = kDefaultGraphLaunches;
  std::string algo = "auto";  // auto, oneshot, twoshot or nccl
  int nranks = 0;             // 0: one per GPU, or four on a single GPU
  bool threads = false;       // all ranks as threads of this process
  bool processes = false;     // one process per rank even where ranks share a GPU
  bool nccl = true;           // time NCCL beside tpcomm where it can run
  bool zeroCopy = false;      // graph calls read peers' inputs in place; eager calls too, from a
                              // registered pool
  size_t fusedHidden = 0;     // --fused: time tpcAllReduceAddRmsNorm on rows of this many
                              // elements (message sizes become whole rows)
  std::string jsonPath;

  // Set on the processes tpcomm-perf starts for its ranks.
  int workerRank = -1;
  std::string workerIds;  // hex of the tpcomm id, then of the NCCL id or "-"
};

// Parses argv into *out. Returns false with a one-line *error on a bad argument; *help is set for
// -h/--help (and parsing stops).
bool parseOptions(int argc, char** argv, Options* out, std::string* error, bool* help);
std::string usage();

// "8", "64K", "16M", "1G" (powers of 1024).
bool parseSize(const std::string& text, size_t* bytes);
bool parseDataType(const std::string& text, tpcDataType_t* type);
const char* dataTypeName(tpcDataType_t type);  // nccl-tests' names: float, half, bfloat16

// Bytes of the unit a sweep's sizes are whole numbers of: a row in --fused mode, else an element.
size_t sweepUnit(const Options& options);

// Message sizes of the sweep in bytes, each a whole number of elements of `elemBytes`, from
// minBytes to maxBytes by stepBytes or stepFactor. Sizes smaller than one element are skipped.
// At most `most` of them (the first ones).
std::vector<size_t> sweepSizes(const Options& options, size_t elemBytes, size_t most = SIZE_MAX);

// The arguments a rank process gets: the user's arguments plus its rank and the ids.
std::vector<std::string> workerArguments(int argc, char** argv, int rank, const std::string& ids);

}  // namespace perf
}  // namespace tpcomm
