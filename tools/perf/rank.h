// One rank of tpcomm-perf: joins the communicators, runs the sweep and reports every row to the
// coordinator through a message pipe.
#pragma once

#include <condition_variable>
#include <mutex>
#include <string>

#include "fallback/nccl_library.h"
#include "perf/options.h"
#include "tpcomm/tpcomm.h"

namespace tpcomm {
namespace perf {

// Lines up the threads of ranks that run in one process. Ranks that share a GPU in one process
// must not make a call that can wait for the whole device (allocation, graph instantiation) while
// another rank's all-reduce waits for them: such calls happen only between two of these barriers.
class ThreadBarrier {
 public:
  explicit ThreadBarrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const unsigned long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      changed_.notify_all();
      return;
    }
    changed_.wait(lock, [&] { return generation != generation_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  const int count_;
  int arrived_ = 0;
  unsigned long generation_ = 0;
};

struct RankSetup {
  int rank = 0;
  int nranks = 0;
  int device = 0;
  tpcUniqueId id;
  bool useNccl = false;
  nccl::UniqueId ncclId;
  int messageFd = -1;                // the rank writes its messages here
  ThreadBarrier* threads = nullptr;  // set when the ranks are threads of one process
};

// Returns the rank's exit status: 0 when every check passed, 1 when some element was wrong,
// 2 when something failed (explained in an ERR message).
int runRank(const Options& options, const RankSetup& setup);

}  // namespace perf
}  // namespace tpcomm
