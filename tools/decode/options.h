// tpcomm-decode's command line.
#pragma once

#include <string>
#include <vector>

#include "decode/model.h"

namespace tpcomm {
namespace decode {

// What carries the forward pass's all-reduces.
enum class Comm {
  kNccl,           // ncclAllReduce, then tpcomm's norm kernel
  kTpcomm,         // tpcAllReduceAddRmsNorm: all-reduce, residual add and norm in one call
  kTpcommUnfused,  // tpcAllReduce, then the norm kernel
};
const char* commName(Comm comm);

struct Options {
  std::vector<std::string> models = {"llama3-8b"};
  std::vector<int> batches = {1, 8, 32, 64};
  int inputLen = 256;
  int outputLen = 256;
  std::vector<Comm> comms = {Comm::kNccl, Comm::kTpcomm};
  int layers = 0;  // 0: the model's
  int ranks = 0;   // 0: one per GPU
  WeightLayout weights = WeightLayout::kAuto;
  bool tpcommNccl = false;  // tpcomm keeps NCCL for what its kernels should not carry
  std::string jsonPath;

  // Set on the rank processes tpcomm-decode starts: one (model, batch, comm) each.
  int workerRank = -1;
  std::string workerIds;  // "NRANKS:HEX" of the communicator's id
  std::string workerDir;  // where ranks leave their logits
};

// Parses argv into *out. Returns false with a one-line *error on a bad argument; *help is set for
// -h/--help (and parsing stops).
bool parseOptions(int argc, char** argv, Options* out, std::string* error, bool* help);
std::string usage();

// The arguments of rank `rank`'s process for one run.
std::vector<std::string> workerArguments(const Options& o, const std::string& model, int batch,
                                         Comm comm, int rank, const std::string& ids,
                                         const std::string& dir);

// The model a run uses: the preset, with --layers applied.
ModelShape modelFor(const Options& o, const std::string& name);

}  // namespace decode
}  // namespace tpcomm
