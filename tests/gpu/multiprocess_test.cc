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

class MultiProcess : public ::testing::TestWithParam<int> {};

TEST_P(MultiProcess, RanksInSeparateProcessesAgree) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  const int nranks = GetParam();
  const std::string oneShot = hexId(), twoShot = hexId();
  std::vector<pid_t> pids;
  for (int r = 0; r < nranks; ++r) {
    const std::string rank = std::to_string(r), n = std::to_string(nranks);
    char* argv[] = {const_cast<char*>(TPCOMM_MP_WORKER), const_cast<char*>(rank.c_str()),
                    const_cast<char*>(n.c_str()),        const_cast<char*>(oneShot.c_str()),
                    const_cast<char*>(twoShot.c_str()),  nullptr};
    pid_t pid = 0;
    ASSERT_EQ(0, posix_spawn(&pid, TPCOMM_MP_WORKER, nullptr, nullptr, argv, environ));
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
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "rank " << r << " exit status " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
}

INSTANTIATE_TEST_SUITE_P(Processes, MultiProcess, ::testing::Values(2, 4));

}  // namespace
