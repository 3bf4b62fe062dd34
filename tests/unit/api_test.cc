// The C API's validation and error reporting, none of which needs a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>

#include "tpcomm/tpcomm.h"
#include "tpcomm/tpcomm.hpp"

namespace {

std::string lastError() { return tpcCommGetLastError(nullptr); }

TEST(Api, VersionMatchesHeader) {
  int version = 0;
  ASSERT_EQ(tpcSuccess, tpcGetVersion(&version));
  EXPECT_EQ(TPCOMM_VERSION_CODE, version);
  EXPECT_EQ(tpcInvalidArgument, tpcGetVersion(nullptr));
}

TEST(Api, UniqueIds) {
  EXPECT_EQ(tpcInvalidArgument, tpcGetUniqueId(nullptr));
  tpcUniqueId a, b;
  ASSERT_EQ(tpcSuccess, tpcGetUniqueId(&a));
  ASSERT_EQ(tpcSuccess, tpcGetUniqueId(&b));
  EXPECT_NE(0, std::memcmp(&a, &b, sizeof(a)));
}

TEST(Api, InitRankRejectsBadArguments) {
  tpcUniqueId id;
  ASSERT_EQ(tpcSuccess, tpcGetUniqueId(&id));
  tpcComm_t comm = reinterpret_cast<tpcComm_t>(0x1);
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitRank(nullptr, 2, id, 0, nullptr));
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitRank(&comm, 0, id, 0, nullptr));
  EXPECT_EQ(nullptr, comm) << "a failed init leaves the handle null";
  EXPECT_NE(std::string::npos, lastError().find("nranks 0"));
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitRank(&comm, 9, id, 0, nullptr));
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitRank(&comm, 2, id, 2, nullptr));
  EXPECT_NE(std::string::npos, lastError().find("rank 2"));
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitRank(&comm, 2, id, -1, nullptr));
  tpcConfig_t config = TPC_CONFIG_INITIALIZER;
  config.magic = 7;
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitRank(&comm, 2, id, 0, &config));
  EXPECT_NE(std::string::npos, lastError().find("TPC_CONFIG_INITIALIZER"));
}

TEST(Api, InitAllRejectsBadArguments) {
  tpcComm_t comms[2];
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitAll(nullptr, 2, nullptr, nullptr));
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitAll(comms, 0, nullptr, nullptr));
  EXPECT_EQ(tpcInvalidArgument, tpcCommInitAll(comms, 9, nullptr, nullptr));
}

TEST(Api, CallsOnNonCommunicatorsAreRejected) {
  int value = 0;
  EXPECT_EQ(tpcInvalidArgument, tpcCommCount(nullptr, &value));
  EXPECT_EQ(tpcInvalidArgument, tpcCommUserRank(nullptr, &value));
  EXPECT_EQ(tpcInvalidArgument, tpcCommCuDevice(nullptr, &value));
  EXPECT_EQ(tpcInvalidArgument, tpcCommDestroy(nullptr));
  EXPECT_EQ(tpcInvalidArgument,
            tpcAllReduce(nullptr, nullptr, 1, tpcFloat32, tpcSum, nullptr, nullptr));
  EXPECT_NE(std::string::npos, lastError().find("tpcAllReduce"));
  EXPECT_EQ(tpcInvalidArgument,
            tpcAllReduceAddRmsNorm(nullptr, nullptr, nullptr, nullptr, nullptr, 1, 4096, 1e-6f,
                                   tpcBfloat16, tpcBfloat16, nullptr, nullptr, nullptr));
  EXPECT_NE(std::string::npos, lastError().find("tpcAllReduceAddRmsNorm"));
  tpcResult_t async;
  EXPECT_EQ(tpcInvalidArgument, tpcCommGetAsyncError(nullptr, &async));

  alignas(64) unsigned char junk[256];
  std::memset(junk, 0x3c, sizeof(junk));
  EXPECT_EQ(tpcInvalidArgument, tpcCommCount(reinterpret_cast<tpcComm_t>(junk), &value));
  EXPECT_NE(std::string::npos, lastError().find("not a tpcomm communicator"));
}

TEST(Api, EveryResultHasItsOwnText) {
  std::set<std::string> seen;
  for (int r = 0; r < tpcNumResults; ++r) {
    const char* text = tpcGetErrorString(static_cast<tpcResult_t>(r));
    ASSERT_NE(nullptr, text);
    EXPECT_GT(std::strlen(text), 0u);
    seen.insert(text);
  }
  EXPECT_EQ(static_cast<size_t>(tpcNumResults), seen.size());
  EXPECT_STREQ("unknown result code", tpcGetErrorString(static_cast<tpcResult_t>(99)));
}

TEST(Api, LastErrorIsNeverNull) {
  EXPECT_NE(nullptr, tpcCommGetLastError(nullptr));
  alignas(64) unsigned char junk[256] = {};
  EXPECT_NE(nullptr, tpcCommGetLastError(reinterpret_cast<tpcComm_t>(junk)));
}

TEST(CppApi, CheckThrowsWithCodeAndMessage) {
  EXPECT_NO_THROW(tpcomm::check(tpcSuccess));
  try {
    tpcomm::check(tpcCommCount(nullptr, nullptr));
    FAIL() << "expected an exception";
  } catch (const tpcomm::Error& e) {
    EXPECT_EQ(tpcInvalidArgument, e.code());
    EXPECT_NE(std::string::npos, std::string(e.what()).find("comm is NULL"));
  }
}

TEST(CppApi, EmptyCommunicatorIsHarmless) {
  tpcomm::Communicator comm;
  EXPECT_EQ(nullptr, comm.get());
  EXPECT_NO_THROW(comm.destroy());
  tpcomm::Communicator moved = std::move(comm);
  EXPECT_EQ(nullptr, moved.get());
  EXPECT_THROW(moved.size(), tpcomm::Error);
}

TEST(CppApi, DataTypesMapToEnums) {
  EXPECT_EQ(tpcFloat32, tpcomm::DataTypeOf<float>::value);
  EXPECT_EQ(tpcFloat16, tpcomm::DataTypeOf<__half>::value);
  EXPECT_EQ(tpcBfloat16, tpcomm::DataTypeOf<__nv_bfloat16>::value);
}

}  // namespace
