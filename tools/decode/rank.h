// A rank process of tpcomm-decode: one (model, batch, communicator) run on one GPU, reported to
// the coordinator through its message pipe ("RES ..." then "DONE", or "ERR why").
#pragma once

#include <string>

#include "decode/options.h"

namespace tpcomm {
namespace decode {

// Where rank `rank` leaves its logits of a run, for the coordinator to compare.
std::string logitsPath(const std::string& dir, const std::string& model, int batch, Comm comm,
                       int rank);

// Runs the rank described by the worker fields of `o`; returns the process's exit status.
int runRank(const Options& o);

}  // namespace decode
}  // namespace tpcomm
