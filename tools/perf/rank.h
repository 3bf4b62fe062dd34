// The ranks one process of tpcomm-perf drives: its single rank when ranks are processes, every
// rank when they are threads of one process. One host thread launches all of its ranks' calls in
// lock-step (call k of every rank before call k + 1 of any), so that no rank's later all-reduce
// can sit in a queue ahead of another rank's earlier one; each rank reports its rows to the
// coordinator through its own message pipe.
#pragma once

#include <vector>

#include "fallback/nccl_library.h"
#include "perf/options.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace perf {

struct LocalRank {
  int rank = 0;
  int device = 0;
  int messageFd = -1;
};

struct RankGroup {
  int nranks = 0;                // ranks of the whole communicator
  std::vector<LocalRank> local;  // the ranks this process drives
  tpcUniqueId id;                // rendezvous, when the ranks are spread over processes
  bool useNccl = false;
  nccl::UniqueId ncclId;
};

// Returns the exit status: 0 when every check passed, 1 when some element was wrong, 2 when
// something failed (explained to the coordinator in an ERR message).
int runRanks(const Options& options, const RankGroup& group);

}  // namespace perf
}  // namespace tpcomm
