#include "core/config.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <string>

#include "common/env.h"
#include "common/log.h"
#include "tpcomm/device/params.cuh"

namespace tpcomm {
namespace {

// The defaults below hold only when the environment sets none of tpcomm's variables.
bool environmentIsClean() {
  for (int v = 0; v < static_cast<int>(EnvVar::kCount); ++v) {
    if (v == static_cast<int>(EnvVar::kDebug) || v == static_cast<int>(EnvVar::kDebugFile)) {
      continue;
    }
    if (std::getenv(envName(static_cast<EnvVar>(v))) != nullptr) return false;
  }
  return true;
}

#define SKIP_UNLESS_CLEAN_ENV() \
  if (!environmentIsClean()) GTEST_SKIP() << "a TPCOMM_ variable is set"

TEST(Config, NullConfigGivesDefaults) {
  SKIP_UNLESS_CLEAN_ENV();
  ResolvedConfig r;
  ASSERT_EQ(tpcSuccess, resolveConfig(nullptr, &r));
  EXPECT_EQ(kDefaultStagingBytes, r.stagingBytes);
  EXPECT_EQ(0, r.maxBlocks);
  EXPECT_EQ(tpcAlgoAuto, r.algorithm);
  EXPECT_EQ(kDefaultTimeoutMs, r.timeoutMs);
}

TEST(Config, InitializerGivesDefaults) {
  SKIP_UNLESS_CLEAN_ENV();
  const tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  ResolvedConfig a, b;
  ASSERT_EQ(tpcSuccess, resolveConfig(&config, &a));
  ASSERT_EQ(tpcSuccess, resolveConfig(nullptr, &b));
  EXPECT_EQ(a.digest(), b.digest());
}

TEST(Config, FieldsAreTaken) {
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.stagingBytes = 1 << 20;
  config.maxBlocks = 12;
  config.algorithm = tpcAlgoTwoShot;
  config.timeoutMs = 1234;
  ResolvedConfig r;
  ASSERT_EQ(tpcSuccess, resolveConfig(&config, &r));
  EXPECT_EQ(size_t{1} << 20, r.stagingBytes);
  EXPECT_EQ(12, r.maxBlocks);
  EXPECT_EQ(tpcAlgoTwoShot, r.algorithm);
  EXPECT_EQ(1234, r.timeoutMs);
}

TEST(Config, StagingIsRoundedToWholeVectors) {
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.stagingBytes = kMinStagingBytes + 3;
  ResolvedConfig r;
  ASSERT_EQ(tpcSuccess, resolveConfig(&config, &r));
  EXPECT_EQ(kMinStagingBytes + 16, r.stagingBytes);
}

TEST(Config, BadValuesAreRejected) {
  ResolvedConfig r;
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.magic = 0;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));

  config = TPC_CONFIG_INITIALIZER;
  config.size = 4;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));

  config = TPC_CONFIG_INITIALIZER;
  config.stagingBytes = kMinStagingBytes - 1;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));

  config = TPC_CONFIG_INITIALIZER;
  config.stagingBytes = kMaxStagingBytes + 1;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));

  config = TPC_CONFIG_INITIALIZER;
  config.maxBlocks = device::kMaxBlocks + 1;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));

  config = TPC_CONFIG_INITIALIZER;
  config.maxBlocks = -1;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));

  config = TPC_CONFIG_INITIALIZER;
  config.algorithm = tpcNumAlgos;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));

  config = TPC_CONFIG_INITIALIZER;
  config.timeoutMs = -5;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));
}

TEST(Config, FieldsBeyondAnOlderCallersSizeAreIgnored) {
  SKIP_UNLESS_CLEAN_ENV();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.size = offsetof(tpcConfig_t, maxBlocks);  // a caller compiled before maxBlocks existed
  config.stagingBytes = 1 << 20;
  config.maxBlocks = -7;  // garbage the caller's struct does not have
  config.timeoutMs = -7;
  ResolvedConfig r;
  ASSERT_EQ(tpcSuccess, resolveConfig(&config, &r));
  EXPECT_EQ(size_t{1} << 20, r.stagingBytes);
  EXPECT_EQ(0, r.maxBlocks);
  EXPECT_EQ(kDefaultTimeoutMs, r.timeoutMs);
}

TEST(Config, DigestTellsConfigurationsApart) {
  ResolvedConfig a, b;
  EXPECT_EQ(a.digest(), b.digest());
  b.timeoutMs += 1;
  EXPECT_NE(a.digest(), b.digest());
  b = a;
  b.maxBlocks = 3;
  EXPECT_NE(a.digest(), b.digest());
  b = a;
  b.algorithm = tpcAlgoOneShot;
  EXPECT_NE(a.digest(), b.digest());
  b = a;
  b.stagingBytes *= 2;
  EXPECT_NE(a.digest(), b.digest());
  b = a;
  b.disabled = true;
  EXPECT_NE(a.digest(), b.digest());
  b = a;
  b.p2pCheck = false;
  EXPECT_NE(a.digest(), b.digest());
  b = a;
  b.maxBytes = 1;
  EXPECT_NE(a.digest(), b.digest());
  b = a;
  b.ncclOff = true;
  EXPECT_NE(a.digest(), b.digest());
}

TEST(Config, ByteSizes) {
  size_t v = 0;
  EXPECT_TRUE(parseByteSize("4096", &v));
  EXPECT_EQ(4096u, v);
  EXPECT_TRUE(parseByteSize("64K", &v));
  EXPECT_EQ(65536u, v);
  EXPECT_TRUE(parseByteSize("16M", &v));
  EXPECT_EQ(size_t{16} << 20, v);
  EXPECT_TRUE(parseByteSize("2G", &v));
  EXPECT_EQ(size_t{2} << 30, v);
  EXPECT_TRUE(parseByteSize("8KiB", &v));
  EXPECT_EQ(8192u, v);
  EXPECT_FALSE(parseByteSize("", &v));
  EXPECT_FALSE(parseByteSize("-1", &v));
  EXPECT_FALSE(parseByteSize("12Q", &v));
  EXPECT_FALSE(parseByteSize("K", &v));
  EXPECT_FALSE(parseByteSize("99999999999999999999", &v));
  EXPECT_FALSE(parseByteSize("17179869184G", &v));
}

TEST(Config, AlgorithmNames) {
  tpcAlgorithm_t a;
  EXPECT_TRUE(parseAlgorithm("oneshot", &a));
  EXPECT_EQ(tpcAlgoOneShot, a);
  EXPECT_TRUE(parseAlgorithm("TwoShot", &a));
  EXPECT_EQ(tpcAlgoTwoShot, a);
  EXPECT_TRUE(parseAlgorithm("auto", &a));
  EXPECT_EQ(tpcAlgoAuto, a);
  EXPECT_FALSE(parseAlgorithm("ring", &a));
  for (int i = 0; i < tpcNumAlgos; ++i) {
    ASSERT_TRUE(parseAlgorithm(algorithmName(static_cast<tpcAlgorithm_t>(i)), &a));
    EXPECT_EQ(i, a);
  }
}

// The environment is read once per process, so these run the probe below in a fresh process.
int runProbe(const char* variable, const char* value, const char* expectation,
             const char* configAlgorithm = nullptr) {
  const pid_t pid = fork();
  if (pid == 0) {
    setenv(variable, value, 1);
    if (configAlgorithm != nullptr) setenv("TPCOMM_TEST_CONFIG_ALGO", configAlgorithm, 1);
    setenv("TPCOMM_TEST_EXPECT", expectation, 1);
    execl("/proc/self/exe", "probe", "--gtest_filter=ConfigEnvProbe.DISABLED_Resolve",
          "--gtest_also_run_disabled_tests", static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Resolves a default config (with the algorithm TPCOMM_TEST_CONFIG_ALGO names, if set) and
// compares with TPCOMM_TEST_EXPECT: a digest, or "error".
TEST(ConfigEnvProbe, DISABLED_Resolve) {
  const char* expect = std::getenv("TPCOMM_TEST_EXPECT");
  ASSERT_NE(nullptr, expect);
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  if (const char* algorithm = std::getenv("TPCOMM_TEST_CONFIG_ALGO")) {
    tpcAlgorithm_t a;
    ASSERT_TRUE(parseAlgorithm(algorithm, &a));
    config.algorithm = a;
  }
  ResolvedConfig r;
  const tpcResult_t res = resolveConfig(&config, &r);
  if (std::string(expect) == "error") {
    EXPECT_EQ(tpcInvalidArgument, res);
  } else {
    ASSERT_EQ(tpcSuccess, res);
    EXPECT_EQ(expect, r.digest());
  }
}

TEST(Config, EnvironmentFillsUnsetFields) {
  SKIP_UNLESS_CLEAN_ENV();
  ResolvedConfig expected;
  expected.algorithm = tpcAlgoTwoShot;
  EXPECT_EQ(0, runProbe("TPCOMM_ALGO", "twoshot", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.stagingBytes = size_t{1} << 20;
  EXPECT_EQ(0, runProbe("TPCOMM_STAGING_BYTES", "1M", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.maxBlocks = 8;
  EXPECT_EQ(0, runProbe("TPCOMM_MAX_BLOCKS", "8", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.timeoutMs = 2500;
  EXPECT_EQ(0, runProbe("TPCOMM_TIMEOUT_MS", "2500", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.disabled = true;
  EXPECT_EQ(0, runProbe("TPCOMM_DISABLE", "1", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.p2pCheck = false;
  EXPECT_EQ(0, runProbe("TPCOMM_P2P_CHECK", "0", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.maxBytes = size_t{4} << 20;
  EXPECT_EQ(0, runProbe("TPCOMM_MAX_BYTES", "4M", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.ncclOff = true;
  EXPECT_EQ(0, runProbe("TPCOMM_NCCL", "0", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.algorithm = tpcAlgoNccl;
  EXPECT_EQ(0, runProbe("TPCOMM_ALGO", "nccl", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.algorithm = tpcAlgoPushTwoShot;
  EXPECT_EQ(0, runProbe("TPCOMM_ALGO", "push-twoshot", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.pushBytes = size_t{2} << 20;
  EXPECT_EQ(0, runProbe("TPCOMM_PUSH_BYTES", "2M", expected.digest().c_str()));
  expected = ResolvedConfig{};
  expected.pdl = false;
  EXPECT_EQ(0, runProbe("TPCOMM_PDL", "0", expected.digest().c_str()));
  EXPECT_EQ(0, runProbe("TPCOMM_DISABLE", "0", ResolvedConfig{}.digest().c_str()));
}

TEST(Config, BadEnvironmentValuesAreErrors) {
  SKIP_UNLESS_CLEAN_ENV();
  EXPECT_EQ(0, runProbe("TPCOMM_ALGO", "ring", "error"));
  EXPECT_EQ(0, runProbe("TPCOMM_STAGING_BYTES", "lots", "error"));
  EXPECT_EQ(0, runProbe("TPCOMM_MAX_BLOCKS", "-3", "error"));
  EXPECT_EQ(0, runProbe("TPCOMM_TIMEOUT_MS", "soon", "error"));
  EXPECT_EQ(0, runProbe("TPCOMM_DISABLE", "yes", "error"));
  EXPECT_EQ(0, runProbe("TPCOMM_P2P_CHECK", "off", "error"));
  EXPECT_EQ(0, runProbe("TPCOMM_MAX_BYTES", "big", "error"));
  EXPECT_EQ(0, runProbe("TPCOMM_NCCL", "2", "error"));
  EXPECT_EQ(0, runProbe("TPCOMM_PUSH_BYTES", "1K", "error"));
  EXPECT_EQ(0, runProbe("TPCOMM_PDL", "on", "error"));
}

TEST(Config, PushBytesAndPdl) {
  SKIP_UNLESS_CLEAN_ENV();
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  ResolvedConfig r;
  ASSERT_EQ(tpcSuccess, resolveConfig(&config, &r));
  EXPECT_EQ(0u, r.pushBytes) << "chosen by the world size when a communicator starts";
  EXPECT_TRUE(r.pdl) << "measured to help";
  config.pushBytes = (size_t{1} << 20) + 5;
  config.pdl = -1;
  ASSERT_EQ(tpcSuccess, resolveConfig(&config, &r));
  EXPECT_EQ((size_t{1} << 20) + 16, r.pushBytes) << "whole vectors";
  EXPECT_FALSE(r.pdl);
  config.pdl = 2;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));
  config.pdl = 0;
  config.pushBytes = kMinPushBytes - 16;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));
}

TEST(Config, NcclFieldsAreCheckedAgainstEachOther) {
  SKIP_UNLESS_CLEAN_ENV();
  ResolvedConfig r;
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.ncclFallback = 7;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));
  int fakeComm = 0;
  config = TPC_CONFIG_INITIALIZER;
  config.ncclComm = &fakeComm;
  config.ncclFallback = TPC_NCCL_OFF;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));
  config = TPC_CONFIG_INITIALIZER;
  config.algorithm = tpcAlgoNccl;
  config.ncclFallback = TPC_NCCL_OFF;
  EXPECT_EQ(tpcInvalidArgument, resolveConfig(&config, &r));
  config = TPC_CONFIG_INITIALIZER;
  config.ncclComm = &fakeComm;
  config.maxBytes = 12345;
  ASSERT_EQ(tpcSuccess, resolveConfig(&config, &r));
  EXPECT_EQ(&fakeComm, r.ncclComm);
  EXPECT_EQ(12345u, r.maxBytes);
  EXPECT_NE(std::string::npos, r.digest().find("nccl=borrowed"))
      << "ranks must agree on whether they lend a communicator";
}

TEST(Config, ExplicitFieldsWinOverTheEnvironment) {
  SKIP_UNLESS_CLEAN_ENV();
  ResolvedConfig expected;
  expected.algorithm = tpcAlgoOneShot;
  EXPECT_EQ(0, runProbe("TPCOMM_ALGO", "twoshot", expected.digest().c_str(), "oneshot"));
}

// What a fresh process with `variable` set to `value` writes on stderr once it first logs.
std::string logProbeStderr(const char* variable, const char* value) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(fds[1], STDERR_FILENO);
    close(fds[0]);
    close(fds[1]);
    setenv(variable, value, 1);
    execl("/proc/self/exe", "probe", "--gtest_filter=LogEnvProbe.DISABLED_Log",
          "--gtest_also_run_disabled_tests", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof(buf))) > 0;)
    out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  waitpid(pid, nullptr, 0);
  return out;
}

TEST(LogEnvProbe, DISABLED_Log) { EXPECT_NE(LogLevel::kTrace, logLevel()); }

// TPCOMM_DEBUG and TPCOMM_DEBUG_FILE are read when the first line is logged, where no call can
// fail for them: a value they cannot take is said on stderr instead of passing unseen.
TEST(LogEnv, ValuesItCannotTakeAreSaid) {
  EXPECT_NE(std::string::npos,
            logProbeStderr("TPCOMM_DEBUG", "INFOO")
                .find("TPCOMM_DEBUG=INFOO is none of NONE, WARN, INFO and TRACE"));
  EXPECT_NE(std::string::npos, logProbeStderr("TPCOMM_DEBUG_FILE", "/nonexistent/dir/log")
                                   .find("cannot open TPCOMM_DEBUG_FILE /nonexistent/dir/log"));
  EXPECT_EQ(std::string::npos, logProbeStderr("TPCOMM_DEBUG", "info").find("TPCOMM_DEBUG"));
}

}  // namespace
}  // namespace tpcomm
