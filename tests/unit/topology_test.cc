// The custom-path decision from described machines, and the topology cache on disk.
#include "topology/topology.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>
#include <string>
#include <vector>

namespace tpcomm {
namespace {

// A machine of `gpus` GPUs, one rank each, where every pair has `link`.
Topology machine(int gpus, const LinkFacts& link, bool nvml = true) {
  Topology t;
  for (int g = 0; g < gpus; ++g) t.busIds.push_back("0000:" + std::to_string(16 + g) + ":00.0");
  t.nvmlAvailable = nvml;
  t.facts.assign(static_cast<size_t>(gpus) * gpus, link);
  return t;
}

void setPair(Topology* t, int i, int j, const LinkFacts& f) {
  t->at(i, j) = f;
  t->at(j, i) = f;
}

const LinkFacts kNvlink{Fact::kYes, Fact::kYes, Fact::kYes};
const LinkFacts kPcie{Fact::kYes, Fact::kNo, Fact::kYes};

TEST(Topology, NvlinkMeshOfEightIsOn) {
  const PathDecision d = decidePath(machine(8, kNvlink), PathSwitches{});
  EXPECT_TRUE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("8 devices is NVLink-connected")) << d.reason;
}

TEST(Topology, PciePairIsOn) {
  const PathDecision d = decidePath(machine(2, kPcie), PathSwitches{});
  EXPECT_TRUE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("PCIe")) << d.reason;
}

TEST(Topology, FourPcieGpusAreOff) {
  const PathDecision d = decidePath(machine(4, kPcie), PathSwitches{});
  EXPECT_FALSE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("ranks 0 and 1")) << d.reason;
  EXPECT_NE(std::string::npos, d.reason.find("not connected by NVLink")) << d.reason;
}

TEST(Topology, OneMissingNvlinkPairTurnsItOffAndIsNamed) {
  Topology t = machine(4, kNvlink);
  setPair(&t, 1, 3, kPcie);
  const PathDecision d = decidePath(t, PathSwitches{});
  EXPECT_FALSE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("ranks 1 and 3")) << d.reason;
}

TEST(Topology, MissingPeerAccessIsOff) {
  Topology t = machine(2, LinkFacts{Fact::kNo, Fact::kNo, Fact::kNo});
  const PathDecision d = decidePath(t, PathSwitches{});
  EXPECT_FALSE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("ranks 0 and 1")) << d.reason;
}

TEST(Topology, NvmlAbsent) {
  const LinkFacts unknownLink{Fact::kYes, Fact::kUnknown, Fact::kYes};
  EXPECT_TRUE(decidePath(machine(2, unknownLink, false), PathSwitches{}).custom)
      << "two GPUs with working peer access need no NVML";
  const PathDecision d = decidePath(machine(4, unknownLink, false), PathSwitches{});
  EXPECT_FALSE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("NVML unavailable")) << d.reason;
}

TEST(Topology, FailingPeerCheckIsOffEvenOverNvlink) {
  Topology t = machine(8, kNvlink);
  setPair(&t, 2, 5, LinkFacts{Fact::kYes, Fact::kYes, Fact::kNo});
  const PathDecision d = decidePath(t, PathSwitches{});
  EXPECT_FALSE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("ranks 2 and 5")) << d.reason;
  EXPECT_FALSE(
      decidePath(machine(2, LinkFacts{Fact::kYes, Fact::kNo, Fact::kNo}), PathSwitches{}).custom)
      << "a PCIe pair whose advertised peer access does not work";
}

TEST(Topology, UncheckedPairsAreTrustedWhenTheCheckIsOff) {
  PathSwitches noCheck;
  noCheck.p2pCheck = false;
  const PathDecision d =
      decidePath(machine(2, LinkFacts{Fact::kYes, Fact::kNo, Fact::kUnknown}), noCheck);
  EXPECT_TRUE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("not checked")) << d.reason;
}

TEST(Topology, RanksSharingOneDeviceAreOn) {
  Topology t;
  t.busIds.assign(4, "0000:18:00.0");
  t.facts.assign(16, LinkFacts{});
  const PathDecision d = decidePath(t, PathSwitches{});
  EXPECT_TRUE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("share device")) << d.reason;
}

TEST(Topology, DisableSwitchWins) {
  PathSwitches off;
  off.disabled = true;
  const PathDecision d = decidePath(machine(8, kNvlink), off);
  EXPECT_FALSE(d.custom);
  EXPECT_NE(std::string::npos, d.reason.find("TPCOMM_DISABLE")) << d.reason;
}

TEST(Topology, FactsMergeNoBeforeYes) {
  const LinkFacts m = mergeFacts(LinkFacts{Fact::kYes, Fact::kUnknown, Fact::kYes},
                                 LinkFacts{Fact::kUnknown, Fact::kYes, Fact::kNo});
  EXPECT_EQ(Fact::kYes, m.peerAccess);
  EXPECT_EQ(Fact::kYes, m.nvlink);
  EXPECT_EQ(Fact::kNo, m.works);
}

class TopologyCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir[] = "/tmp/tpcomm-cache-XXXXXX";
    ASSERT_NE(nullptr, mkdtemp(dir));
    directory_ = std::string(dir) + "/nested/tpcomm";
  }
  void TearDown() override {
    std::system(("rm -rf '" + directory_.substr(0, directory_.find("/nested")) + "'").c_str());
  }

  static TopologyCache sample(const std::string& driver, const std::string& host = "node7") {
    TopologyCache c;
    c.machine = "host " + host + " boot 3f2a driver " + driver;
    c.devices = {"1b2c", "5e6f", "9a0b"};
    c.pairs = {kNvlink, kPcie, LinkFacts{Fact::kYes, Fact::kYes, Fact::kUnknown}};
    return c;
  }

  std::string directory_;
};

TEST_F(TopologyCacheTest, StoredFactsComeBack) {
  ASSERT_TRUE(storeTopologyCache(directory_, sample("580.159.04")));
  TopologyCache back = sample("580.159.04");
  back.pairs.assign(3, LinkFacts{});
  ASSERT_TRUE(loadTopologyCache(directory_, &back));
  EXPECT_EQ(Fact::kYes, back.pair(1, 0).nvlink);  // either order names the same pair
  EXPECT_EQ(Fact::kYes, back.pair(0, 1).peerAccess);
  EXPECT_EQ(Fact::kNo, back.pair(0, 2).nvlink);
  EXPECT_EQ(Fact::kUnknown, back.pair(2, 1).works);
  EXPECT_EQ(Fact::kYes, back.pair(1, 2).nvlink);
  EXPECT_FALSE(back.verified()) << "one pair was never checked";
}

// A failed check says something about this run, not about the hardware: it is not kept, and the
// next run checks again. A passed check is kept.
TEST_F(TopologyCacheTest, FailedChecksAreNeverStored) {
  TopologyCache c = sample("580.159.04");
  c.record(0, 1, LinkFacts{Fact::kYes, Fact::kYes, Fact::kNo});
  c.record(0, 2, LinkFacts{Fact::kYes, Fact::kNo, Fact::kYes});
  c.record(1, 2, LinkFacts{Fact::kYes, Fact::kYes, Fact::kYes});
  EXPECT_EQ(Fact::kUnknown, c.pair(0, 1).works);
  EXPECT_EQ(Fact::kYes, c.pair(0, 1).nvlink);
  ASSERT_TRUE(storeTopologyCache(directory_, c));
  TopologyCache back = sample("580.159.04");
  ASSERT_TRUE(loadTopologyCache(directory_, &back));
  EXPECT_EQ(Fact::kUnknown, back.pair(0, 1).works);
  EXPECT_EQ(Fact::kYes, back.pair(0, 2).works);
  EXPECT_FALSE(back.verified());
  back.record(0, 1, LinkFacts{Fact::kYes, Fact::kYes, Fact::kYes});
  EXPECT_TRUE(back.verified());
  // A file that claims a failed check is not one tpcomm wrote.
  const std::string text = back.serialize();
  TopologyCache forged = sample("580.159.04");
  EXPECT_FALSE(forged.parse(text.substr(0, text.rfind(" 1\n")) + " 0\n"));
}

TEST_F(TopologyCacheTest, AnotherHostOrBootMisses) {
  ASSERT_TRUE(storeTopologyCache(directory_, sample("580.159.04", "node7")));
  TopologyCache other = sample("580.159.04", "node8");
  EXPECT_FALSE(loadTopologyCache(directory_, &other)) << "a home directory shared by two hosts";
  TopologyCache rebooted = sample("580.159.04");
  rebooted.machine = "host node7 boot 77aa driver 580.159.04";
  EXPECT_FALSE(loadTopologyCache(directory_, &rebooted));
}

// Rank 0 reads the cache and sends it to every rank, whose process may see another driver string
// (NVML not loaded there) or host name: every rank takes rank 0's facts, and rank 0's machine.
TEST_F(TopologyCacheTest, AnotherRankTakesRankZerosCache) {
  const std::string text = sample("580.159.04").serialize();
  TopologyCache other = sample("cuda-13000");
  other.pairs.assign(3, LinkFacts{});
  EXPECT_FALSE(other.parse(text)) << "a file of another driver misses";
  ASSERT_TRUE(other.parse(text, /*anyMachine=*/true));
  EXPECT_EQ(sample("580.159.04").machine, other.machine);
  EXPECT_EQ(Fact::kYes, other.pair(0, 1).nvlink);
  EXPECT_EQ(Fact::kNo, other.pair(0, 2).nvlink);
  TopologyCache fewer = sample("cuda-13000");
  fewer.devices.pop_back();
  fewer.pairs.resize(1);
  EXPECT_FALSE(fewer.parse(text, /*anyMachine=*/true)) << "the GPUs must still be the same";
}

TEST_F(TopologyCacheTest, MissWhenNothingIsStored) {
  TopologyCache c = sample("580.159.04");
  EXPECT_FALSE(loadTopologyCache(directory_, &c));
  EXPECT_FALSE(loadTopologyCache("", &c));
}

TEST_F(TopologyCacheTest, AnotherDriverOrDeviceSetMisses) {
  ASSERT_TRUE(storeTopologyCache(directory_, sample("580.159.04")));
  TopologyCache other = sample("590.10");
  EXPECT_FALSE(loadTopologyCache(directory_, &other));
  TopologyCache fewer = sample("580.159.04");
  fewer.devices.pop_back();
  fewer.pairs.resize(1);
  EXPECT_FALSE(loadTopologyCache(directory_, &fewer));
}

TEST_F(TopologyCacheTest, CorruptOrForeignFilesAreIgnoredAndRewritten) {
  const TopologyCache good = sample("580.159.04");
  ASSERT_TRUE(storeTopologyCache(directory_, good));
  const std::string path = good.path(directory_);
  for (const std::string& junk :
       {std::string("garbage\n"), good.serialize().substr(0, 40),
        good.serialize() + "pair 0 1 1 1 1\n", std::string("tpcomm-topology 2\nmachine other\n"),
        good.serialize().replace(good.serialize().find("pair 0 1 1 1 1"), 14, "pair 0 1 7 1 1")}) {
    std::ofstream(path, std::ios::trunc) << junk;
    TopologyCache c = sample("580.159.04");
    EXPECT_FALSE(loadTopologyCache(directory_, &c)) << junk;
    ASSERT_TRUE(storeTopologyCache(directory_, good));
    EXPECT_TRUE(loadTopologyCache(directory_, &c)) << "rewritten after: " << junk;
  }
}

TEST_F(TopologyCacheTest, DirectoryFollowsXdgThenHome) {
  const char* oldXdg = std::getenv("XDG_CACHE_HOME");
  const std::string savedXdg = oldXdg != nullptr ? oldXdg : "";
  setenv("XDG_CACHE_HOME", "/var/cache/me", 1);
  EXPECT_EQ("/var/cache/me/tpcomm", defaultCacheDirectory());
  unsetenv("XDG_CACHE_HOME");
  setenv("HOME", "/home/me", 1);
  EXPECT_EQ("/home/me/.cache/tpcomm", defaultCacheDirectory());
  if (oldXdg != nullptr) setenv("XDG_CACHE_HOME", savedXdg.c_str(), 1);
}

}  // namespace
}  // namespace tpcomm
