// The real multi-process path on one GPU: rendezvous over the socket, CUDA IPC mapping of every
// peer's buffer, and verified all-reduces. Kernels of different processes time-slice on one GPU
// (milliseconds per barrier), so the workers make only a few calls.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "tpcomm/tpcomm.h"

extern char** environ;

namespace {

bool haveGpu() {
  // The worker finds out for itself; here, avoid initializing CUDA in the test process.
  return access("/dev/nvidiactl", F_OK) == 0;
}

std::string hexId() {
  tpcUniqueId id;
  if (tpcGetUniqueId(&id) != tpcSuccess) return "";
  std::string hex;
  char byte[3];
  for (char c : id.internal) {
    std::snprintf(byte, sizeof(byte), "%02x", static_cast<unsigned char>(c));
    hex += byte;
  }
  return hex;
}

// Starts one worker per rank with `args` after the rank and the rank count; waits for all. Every
// rank must exit 0, except `killed`, which must die of a signal.
void runWorkers(int nranks, const std::vector<std::string>& args, int killed = -1) {
  std::vector<pid_t> pids;
  for (int r = 0; r < nranks; ++r) {
    std::vector<std::string> words = {TPCOMM_MP_WORKER, std::to_string(r), std::to_string(nranks)};
    words.insert(words.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& w : words) argv.push_back(w.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    ASSERT_EQ(0, posix_spawn(&pid, TPCOMM_MP_WORKER, nullptr, nullptr, argv.data(), environ));
    pids.push_back(pid);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(180);
  for (int r = 0; r < nranks; ++r) {
    int status = 0;
    while (waitpid(pids[r], &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        for (pid_t p : pids) kill(p, SIGKILL);
        waitpid(pids[r], &status, 0);
        FAIL() << "rank " << r << " did not finish in time";
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (r == killed) {
      EXPECT_TRUE(WIFSIGNALED(status)) << "rank " << r << " was meant to die";
    } else {
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "rank " << r << " exit status " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
  }
}

class MultiProcess : public ::testing::TestWithParam<int> {};

// Every kernel, rendezvous over the socket, CUDA IPC mapping of every peer's buffer.
TEST_P(MultiProcess, RanksInSeparateProcessesAgree) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  runWorkers(GetParam(), {"kernels", hexId(), hexId(), hexId(), hexId()});
}

// Zero-copy across processes: CUDA IPC handles of cudaMalloc allocations and cuMem file
// descriptors passed over the rendezvous socket, mapped once per allocation; 1,000
// registrations leave no descriptor, device memory or mapping behind.
TEST_P(MultiProcess, ZeroCopyGraphsAndRegistrations) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  runWorkers(GetParam(), {"zerocopy", hexId()});
}

INSTANTIATE_TEST_SUITE_P(Processes, MultiProcess, ::testing::Values(2, 4));

// Destroying a communicator never waits for the peers to destroy theirs (with one GPU per rank,
// tpcomm's NCCL communicator is there too).
TEST(MultiProcessTeardown, DestroyDoesNotWaitForPeers) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  char dir[] = "/tmp/tpcomm-teardown-XXXXXX";
  ASSERT_NE(nullptr, mkdtemp(dir));
  const std::string file = std::string(dir) + "/rank0-destroyed";
  runWorkers(2, {"teardown", hexId(), file});
  unlink(file.c_str());
  rmdir(dir);
}

// A peer process that dies mid-run makes the survivor fail within its timeout, naming it, instead
// of hanging; the survivor still tears down.
TEST(MultiProcessTeardown, DeadPeerMakesSurvivorsFail) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  runWorkers(2, {"killed", hexId()}, 1);
}

}  // namespace
