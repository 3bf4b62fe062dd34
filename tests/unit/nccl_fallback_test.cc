// The NCCL communicator tpcomm creates for itself, against a stand-in NCCL whose init ends only
// when the test says: NCCL's init has no deadline of its own, so tpcomm bounds it by the
// communicator's timeout.
#include "fallback/nccl_fallback.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "bootstrap/bootstrap.h"
#include "common/error.h"

namespace tpcomm {
namespace {

using std::chrono::milliseconds;

// What the stand-in's calls saw, and whether its init may end.
struct StandIn {
  std::mutex mutex;
  std::condition_variable changed;
  bool initMayEnd = false;
  int inits = 0;
  int aborts = 0;

  void allowInit() {
    std::lock_guard<std::mutex> lock(mutex);
    initMayEnd = true;
    changed.notify_all();
  }
  // Until `n` communicators have been aborted, or `limit` has passed.
  bool awaitAborts(int n, milliseconds limit) {
    std::unique_lock<std::mutex> lock(mutex);
    return changed.wait_for(lock, limit, [&] { return aborts >= n; });
  }
};

// A process-wide stand-in (NCCL's entry points are plain functions): reset by each test, never
// destroyed, since an init thread tpcomm left behind may still use it.
StandIn& standIn() {
  static StandIn* s = new StandIn();
  return *s;
}

nccl::Comm fakeComm() { return reinterpret_cast<nccl::Comm>(0x1000); }

const nccl::Library* standInNccl() {
  static const nccl::Library lib = [] {
    nccl::Library l;
    l.version = 22800;
    l.origin = "a stand-in";
    l.getUniqueId = [](nccl::UniqueId* id) {
      std::memset(id, 7, sizeof(*id));
      return nccl::kSuccess;
    };
    l.commInitRank = [](nccl::Comm* comm, int, nccl::UniqueId, int) {
      StandIn& s = standIn();
      std::unique_lock<std::mutex> lock(s.mutex);
      ++s.inits;
      s.changed.notify_all();
      s.changed.wait(lock, [&] { return s.initMayEnd; });
      *comm = fakeComm();
      return nccl::kSuccess;
    };
    l.commAbort = [](nccl::Comm comm) {
      EXPECT_EQ(fakeComm(), comm);
      StandIn& s = standIn();
      std::lock_guard<std::mutex> lock(s.mutex);
      ++s.aborts;
      s.changed.notify_all();
      return nccl::kSuccess;
    };
    l.getLastError = [](nccl::Comm) { return ""; };
    return l;
  }();
  return &lib;
}

class OwnNccl : public ::testing::Test {
 protected:
  void SetUp() override {
    StandIn& s = standIn();
    std::lock_guard<std::mutex> lock(s.mutex);
    s.initMayEnd = false;
    s.inits = 0;
    s.aborts = 0;
  }
  // A rendezvous of one rank.
  std::unique_ptr<Bootstrap> lonelyBootstrap() {
    tpcUniqueId id;
    EXPECT_EQ(tpcSuccess, newRendezvousId(&id));
    Bootstrap::Options o;
    o.rank = 0;
    o.nranks = 1;
    o.configDigest = "cfg";
    o.timeout = milliseconds(5000);
    std::unique_ptr<Bootstrap> boot;
    EXPECT_EQ(tpcSuccess, Bootstrap::connect(id, o, &boot));
    return boot;
  }
};

TEST_F(OwnNccl, AnInitThatNeverEndsTimesOutAndItsLateCommunicatorIsAborted) {
  std::unique_ptr<Bootstrap> boot = lonelyBootstrap();
  ASSERT_NE(nullptr, boot);
  NcclFallback nccl;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(tpcTimeout, nccl.createOwn(standInNccl(), "", *boot, milliseconds(300)));
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, milliseconds(3300)) << "the previous library waited in NCCL's init for ever";
  EXPECT_GE(took, milliseconds(300));
  const std::string error = threadLastError();
  EXPECT_NE(std::string::npos, error.find("ncclCommInitRank did not end within 300 ms")) << error;
  EXPECT_FALSE(nccl.available());
  EXPECT_EQ(1, standIn().inits);
  // The init ends after all: its communicator is aborted, not left to leak.
  standIn().allowInit();
  EXPECT_TRUE(standIn().awaitAborts(1, milliseconds(5000)));
}

TEST_F(OwnNccl, AnInitThatEndsInTimeGivesTheCommunicator) {
  std::unique_ptr<Bootstrap> boot = lonelyBootstrap();
  ASSERT_NE(nullptr, boot);
  standIn().allowInit();
  {
    NcclFallback nccl;
    ASSERT_EQ(tpcSuccess, nccl.createOwn(standInNccl(), "", *boot, milliseconds(5000)));
    EXPECT_TRUE(nccl.available());
    EXPECT_EQ(0, standIn().aborts);
  }
  EXPECT_EQ(1, standIn().aborts) << "tpcomm's own communicator is aborted when released";
}

TEST_F(OwnNccl, ARankWithoutNcclLeavesEveryRankWithout) {
  std::unique_ptr<Bootstrap> boot = lonelyBootstrap();
  ASSERT_NE(nullptr, boot);
  NcclFallback nccl;
  ASSERT_EQ(tpcSuccess,
            nccl.createOwn(nullptr, "libnccl.so.2 not found", *boot, milliseconds(300)));
  EXPECT_FALSE(nccl.available());
  EXPECT_NE(std::string::npos, nccl.description().find("libnccl.so.2 not found"))
      << nccl.description();
  EXPECT_EQ(0, standIn().inits);
}

}  // namespace
}  // namespace tpcomm
