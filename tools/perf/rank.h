// One rank of tpcomm-perf: joins the communicators, runs the sweep and reports every row to the
// coordinator through a message pipe.
#pragma once

#include <string>

#include "fallback/nccl_library.h"
#include "perf/options.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace perf {

struct RankSetup {
  int rank = 0;
  int nranks = 0;
  int device = 0;
  tpcUniqueId id;
  bool useNccl = false;
  nccl::UniqueId ncclId;
  int messageFd = -1;  // the rank writes its messages here
};

// Returns the rank's exit status: 0 when every check passed, 1 when some element was wrong,
// 2 when something failed (explained in an ERR message).
int runRank(const Options& options, const RankSetup& setup);

}  // namespace perf
}  // namespace tpcomm
