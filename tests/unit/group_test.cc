// Groups and NCCL's group inside them, against a stand-in NCCL whose ncclGroupEnd fails as told:
// tpcGroupEnd passes NCCL's reason on, runs no work that waited for NCCL's calls, and leaves the
// thread ready for the next group.
#include "core/group.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "fallback/nccl_library.h"

namespace tpcomm {
namespace {

nccl::Result groupEndResult = nccl::kSuccess;
int groupStarts = 0;
int groupEnds = 0;

nccl::Library standIn() {
  nccl::Library lib;
  lib.groupStart = [] {
    ++groupStarts;
    return nccl::kSuccess;
  };
  lib.groupEnd = [] {
    ++groupEnds;
    return groupEndResult;
  };
  lib.getLastError = [](nccl::Comm) { return "what NCCL said"; };
  return lib;
}

class Group : public ::testing::Test {
 protected:
  void SetUp() override {
    groupEndResult = nccl::kSuccess;
    groupStarts = 0;
    groupEnds = 0;
  }
  // Opens a group with NCCL's group inside and work that waits for its end, which sets *ran.
  void openGroupWithWork(bool* ran) {
    *ran = false;
    ASSERT_EQ(tpcSuccess, groupStart());
    ASSERT_EQ(tpcSuccess, joinNcclGroup(&lib_));
    ASSERT_EQ(tpcSuccess, deferUntilGroupEnd([ran] {
                *ran = true;
                return tpcSuccess;
              }));
  }

  const nccl::Library lib_ = standIn();
};

TEST_F(Group, TheOutermostEndIssuesNcclsGroupThenTheWorkThatWaitedForIt) {
  int ran = 0;
  ASSERT_EQ(tpcSuccess, groupStart());
  ASSERT_EQ(tpcSuccess, groupStart());
  ASSERT_EQ(tpcSuccess, joinNcclGroup(&lib_));
  ASSERT_EQ(tpcSuccess, joinNcclGroup(&lib_));
  ASSERT_EQ(tpcSuccess, deferUntilGroupEnd([&] {
              EXPECT_EQ(1, groupEnds) << "after NCCL issued the group's calls";
              ++ran;
              return tpcSuccess;
            }));
  EXPECT_EQ(1, groupStarts) << "NCCL's group opens once";
  ASSERT_EQ(tpcSuccess, groupEnd());
  EXPECT_EQ(0, groupEnds) << "an inner end issues nothing";
  EXPECT_EQ(0, ran);
  ASSERT_EQ(tpcSuccess, groupEnd());
  EXPECT_EQ(1, groupEnds);
  EXPECT_EQ(1, ran);
  EXPECT_FALSE(inGroup());
}

TEST_F(Group, AFailedNcclGroupEndSaysWhy) {
  const struct {
    nccl::Result nccl;
    tpcResult_t expected;
  } cases[] = {{static_cast<nccl::Result>(1), tpcUnhandledCudaError},
               {static_cast<nccl::Result>(2), tpcSystemError},
               {static_cast<nccl::Result>(4), tpcInvalidArgument},
               {static_cast<nccl::Result>(5), tpcInvalidUsage},
               {static_cast<nccl::Result>(6), tpcRemoteError},
               {nccl::kInProgress, tpcInternalError}};
  for (const auto& c : cases) {
    SCOPED_TRACE("ncclGroupEnd returned " + std::to_string(c.nccl));
    groupEndResult = c.nccl;
    bool ran = false;
    openGroupWithWork(&ran);
    EXPECT_EQ(c.expected, groupEnd());
    const std::string message = threadLastError();
    EXPECT_NE(std::string::npos, message.find("ncclGroupEnd failed: what NCCL said")) << message;
    EXPECT_FALSE(ran) << "work that reads what NCCL did not write";
    EXPECT_FALSE(inGroup());
  }

  // The next group starts afresh.
  groupEndResult = nccl::kSuccess;
  const int endsBefore = groupEnds;
  bool ran = false;
  openGroupWithWork(&ran);
  EXPECT_EQ(tpcSuccess, groupEnd());
  EXPECT_EQ(endsBefore + 1, groupEnds);
  EXPECT_TRUE(ran);
}

// A communicator keeps what a group's calls took by the group's serial (the staging of FP8 calls
// NCCL carries), and may be used by one thread after another: no two groups share a serial,
// whichever threads open them.
TEST_F(Group, GroupsOfDifferentThreadsHaveDifferentSerials) {
  EXPECT_EQ(0u, groupSerial());
  std::vector<uint64_t> serials;
  for (int t = 0; t < 3; ++t) {
    std::thread([&serials] {
      for (int g = 0; g < 2; ++g) {
        ASSERT_EQ(tpcSuccess, groupStart());
        ASSERT_EQ(tpcSuccess, groupStart());
        serials.push_back(groupSerial());
        ASSERT_EQ(tpcSuccess, groupEnd());
        EXPECT_EQ(serials.back(), groupSerial()) << "an inner end keeps the outermost's serial";
        ASSERT_EQ(tpcSuccess, groupEnd());
      }
    }).join();
  }
  ASSERT_EQ(6u, serials.size());
  EXPECT_EQ(serials.size(), std::set<uint64_t>(serials.begin(), serials.end()).size());
  EXPECT_EQ(0u, std::count(serials.begin(), serials.end(), 0u));
}

// A communicator ended inside a group that holds its calls ends after the work that waits for
// NCCL, which uses it, and ends also where NCCL's group end failed: it is gone from the caller's
// hands already.
TEST_F(Group, EndsRunAfterTheWorkAndAlsoAfterAFailedNcclGroupEnd) {
  for (const nccl::Result result : {nccl::kSuccess, static_cast<nccl::Result>(5)}) {
    SCOPED_TRACE("ncclGroupEnd returned " + std::to_string(result));
    groupEndResult = result;
    bool ran = false;
    openGroupWithWork(&ran);
    std::vector<std::string> order;
    ASSERT_EQ(tpcSuccess, deferEndUntilGroupEnd([&] {
                order.push_back(ran ? "end after the work" : "end");
                return tpcSuccess;
              }));
    ASSERT_EQ(tpcSuccess, deferUntilGroupEnd([&] {
                order.push_back("work deferred after the end");
                return tpcSuccess;
              }));
    ASSERT_EQ(tpcSuccess, deferEndUntilGroupEnd([&] {
                order.push_back("a failing end");
                return fail(tpcUnhandledCudaError, "the end failed");
              }));
    const tpcResult_t res = groupEnd();
    if (result == nccl::kSuccess) {
      EXPECT_EQ(tpcUnhandledCudaError, res) << "an end's failure is the group's";
      EXPECT_EQ("the end failed", threadLastError());
      EXPECT_EQ((std::vector<std::string>{"work deferred after the end", "end after the work",
                                          "a failing end"}),
                order);
    } else {
      EXPECT_EQ(tpcInvalidUsage, res) << "NCCL's failure comes first";
      EXPECT_NE(std::string::npos, threadLastError().find("ncclGroupEnd failed"))
          << threadLastError();
      EXPECT_EQ((std::vector<std::string>{"end", "a failing end"}), order);
    }
    EXPECT_FALSE(inGroup());
  }
  groupEndResult = nccl::kSuccess;
  bool ran = false;
  openGroupWithWork(&ran);
  EXPECT_EQ(tpcSuccess, groupEnd()) << "the next group has no ends left over";
}

TEST_F(Group, AnEndWithoutAStartIsRefused) {
  EXPECT_EQ(tpcInvalidUsage, groupEnd());
  EXPECT_EQ(tpcInternalError, deferUntilGroupEnd([] { return tpcSuccess; }));
  EXPECT_EQ(tpcInternalError, deferEndUntilGroupEnd([] { return tpcSuccess; }));
}

}  // namespace
}  // namespace tpcomm
