// The launcher tpcomm-perf and tpcomm-decode start their rank processes with.
#include "launch/launcher.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace tpcomm {
namespace launch {
namespace {

// Rank processes that write messages to their pipe the way tpcomm-perf's ranks do.
std::vector<std::string> shellRank(const std::string& script) { return {"/bin/sh", "-c", script}; }

TEST(Launcher, MessagesArriveInOrderFromEveryRank) {
  RankProcesses ranks;
  std::string error;
  ASSERT_TRUE(spawnRanks({shellRank("echo 'ROW a' >&3; echo 'ROW b' >&3; echo DONE >&3"),
                          shellRank("printf 'ROW c\\nDONE\\n' >&3")},
                         &ranks, &error))
      << error;
  std::vector<std::vector<std::string>> seen(2);
  EXPECT_TRUE(collectMessages(ranks.fds, [&](int rank, const std::string& line) {
    seen[rank].push_back(line);
    return true;
  }));
  EXPECT_EQ((std::vector<std::string>{"ROW a", "ROW b", "DONE", kClosed}), seen[0]);
  EXPECT_EQ((std::vector<std::string>{"ROW c", "DONE", kClosed}), seen[1]);
  EXPECT_TRUE(reapRanks(ranks, false, &error)) << error;
}

TEST(Launcher, ARankThatFailsFailsTheRun) {
  RankProcesses ranks;
  std::string error;
  ASSERT_TRUE(spawnRanks({shellRank("echo DONE >&3"), shellRank("exit 3"), shellRank("sleep 30")},
                         &ranks, &error));
  collectMessages(ranks.fds, [&](int rank, const std::string& line) {
    // The coordinator stops listening when a rank closes its pipe without DONE.
    return !(rank == 1 && line == kClosed);
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(reapRanks(ranks, true, &error));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10))
      << "the sleeping rank must be killed, not waited for";
  EXPECT_FALSE(error.empty());
}

TEST(Launcher, NonZeroExitIsReported) {
  RankProcesses ranks;
  std::string error;
  ASSERT_TRUE(spawnRanks({shellRank("exit 0"), shellRank("exit 3")}, &ranks, &error));
  collectMessages(ranks.fds, [](int, const std::string&) { return true; });
  EXPECT_FALSE(reapRanks(ranks, false, &error));
  EXPECT_NE(std::string::npos, error.find("rank 1"));
  EXPECT_NE(std::string::npos, error.find("exited with status 3"));
}

TEST(Launcher, MissingProgramIsAnError) {
  RankProcesses ranks;
  std::string error;
  EXPECT_FALSE(spawnRanks({{"/nonexistent/tpcomm-perf"}}, &ranks, &error));
  EXPECT_NE(std::string::npos, error.find("cannot start rank 0"));
}

// A rank that cannot start would leave the ranks started before it waiting for it at the
// rendezvous: they are stopped and reaped, so this process has no child left.
TEST(Launcher, ARankThatCannotStartStopsTheOnesStarted) {
  RankProcesses ranks;
  std::string error;
  EXPECT_FALSE(spawnRanks({shellRank("sleep 30"), {"/nonexistent/tpcomm-perf"}}, &ranks, &error));
  EXPECT_NE(std::string::npos, error.find("cannot start rank 1")) << error;
  EXPECT_TRUE(ranks.pids.empty() && ranks.fds.empty());
  errno = 0;
  EXPECT_EQ(-1, waitpid(-1, nullptr, WNOHANG)) << "a rank is still running";
  EXPECT_EQ(ECHILD, errno);
}

// With SIGCHLD ignored (inherited that way from some parents) children are reaped unseen: a rank
// whose exit status is lost counts as failed, not as one that exited 0.
TEST(Launcher, ARankWhoseExitStatusIsLostFails) {
  struct sigaction ignore = {}, before = {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(0, sigaction(SIGCHLD, &ignore, &before));
  RankProcesses ranks;
  std::string error;
  const bool spawned = spawnRanks({shellRank("exit 3")}, &ranks, &error);
  collectMessages(ranks.fds, [](int, const std::string&) { return true; });
  const bool reaped = reapRanks(ranks, false, &error);
  sigaction(SIGCHLD, &before, nullptr);
  ASSERT_TRUE(spawned);
  EXPECT_FALSE(reaped);
  EXPECT_NE(std::string::npos, error.find("left no exit status")) << error;
}

TEST(Launcher, HexRoundTripsAndRejectsBadText) {
  const unsigned char bytes[] = {0x00, 0x7f, 0x80, 0xff, 0x12};
  const std::string hex = toHex(bytes, sizeof(bytes));
  EXPECT_EQ("007f80ff12", hex);
  unsigned char back[sizeof(bytes)] = {};
  ASSERT_TRUE(fromHex(hex, back, sizeof(back)));
  EXPECT_EQ(0, std::memcmp(bytes, back, sizeof(bytes)));
  EXPECT_FALSE(fromHex("007f80ff1", back, sizeof(back))) << "odd length";
  EXPECT_FALSE(fromHex("007f80ffzz", back, sizeof(back))) << "not hexadecimal";
}

}  // namespace
}  // namespace launch
}  // namespace tpcomm
