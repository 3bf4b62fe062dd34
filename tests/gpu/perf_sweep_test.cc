// tpcomm-perf on a GPU: a short verified sweep per data type must report zero #wrong (its exit
// status says so), in graph and eager mode, with ranks as threads and as processes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <string>

#include "run_tool.h"

namespace {

bool haveGpu() { return access("/dev/nvidiactl", F_OK) == 0; }

int runPerf(const std::string& args, std::string* out) {
  return tpcomm::tooltest::runTool(TPCOMM_PERF, args, out);
}

class PerfSweep : public ::testing::TestWithParam<const char*> {};

TEST_P(PerfSweep, ShortSweepHasNoWrongElements) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  for (const char* mode : {"--graph", "--eager"}) {
    std::string out;
    const int status = runPerf(
        std::string("-b 8 -e 4M -f 8 -n 3 -w 1 -c 1 -g 3 -d ") + GetParam() + " " + mode, &out);
    EXPECT_EQ(0, status) << out;
    EXPECT_NE(std::string::npos, out.find("# Out of bounds values : 0 OK")) << out;
  }
}

INSTANTIATE_TEST_SUITE_P(DataTypes, PerfSweep, ::testing::Values("float", "half", "bfloat16"));

TEST(PerfProcesses, RanksAsProcessesReportToTheCoordinator) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  std::string out;
  // Processes on one GPU time-slice; keep it to a few calls.
  const int status = runPerf("--processes -g 2 -b 64K -e 64K -n 2 -w 1 -G 0 -c 1", &out);
  EXPECT_EQ(0, status) << out;
  EXPECT_NE(std::string::npos, out.find("ranks as processes")) << out;
  EXPECT_NE(std::string::npos, out.find("# Out of bounds values : 0 OK")) << out;
}

TEST(PerfZeroCopy, GraphAndEagerSweepsVerify) {
  if (!haveGpu()) GTEST_SKIP() << "no CUDA device";
  for (const char* mode : {"--graph", "--eager"}) {
    std::string out;
    const int status =
        runPerf(std::string("-b 8K -e 1M -f 8 -n 3 -w 1 -c 1 -g 3 --zero-copy ") + mode, &out);
    EXPECT_EQ(0, status) << out;
    EXPECT_NE(std::string::npos, out.find(", zero-copy")) << out;
    EXPECT_NE(std::string::npos, out.find("# tpcomm memory per rank")) << out;
    EXPECT_NE(std::string::npos, out.find("# Out of bounds values : 0 OK")) << out;
  }
}

TEST(PerfErrors, BadFlagIsAOneLineError) {
  std::string out;
  EXPECT_EQ(2, runPerf("-d int8", &out));
  EXPECT_NE(std::string::npos, out.find("unknown data type")) << out;
}

}  // namespace
