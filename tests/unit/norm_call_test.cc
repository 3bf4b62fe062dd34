// The checks of tpcAllReduceAddRmsNorm that need no device: every refusal has its code.
#include "core/norm_call.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "common/error.h"

namespace tpcomm {
namespace {

// Five disjoint, aligned fake device ranges of 1 MiB each: nothing dereferences them.
uintptr_t base(int k) { return (uintptr_t{1} << 40) + (static_cast<uintptr_t>(k) << 20); }

NormCall validCall() {
  NormCall c{};
  c.input = reinterpret_cast<const void*>(base(0));
  c.residualIn = reinterpret_cast<const void*>(base(1));
  c.residualOut = reinterpret_cast<void*>(base(1));
  c.weight = reinterpret_cast<const void*>(base(2));
  c.out = reinterpret_cast<void*>(base(3));
  c.rows = 16;
  c.hidden = 8192;
  c.eps = 1e-6f;
  c.type = tpcBfloat16;
  c.outType = tpcBfloat16;
  c.scale = nullptr;
  return c;
}

TEST(NormCall, AcceptsWhatEnginesPass) {
  EXPECT_EQ(tpcSuccess, checkNormCall(validCall(), 0));
  for (size_t hidden : {8, 2048, 5120, 6144, 7168, 16384}) {
    NormCall c = validCall();
    c.hidden = hidden;
    EXPECT_EQ(tpcSuccess, checkNormCall(c, 0)) << hidden;
  }
  NormCall fp8 = validCall();
  fp8.outType = tpcFloat8e4m3;
  fp8.scale = reinterpret_cast<const float*>(base(4));
  EXPECT_EQ(tpcSuccess, checkNormCall(fp8, 0));
  NormCall inPlace = validCall();
  inPlace.out = const_cast<void*>(inPlace.input);
  EXPECT_EQ(tpcSuccess, checkNormCall(inPlace, 0));
  NormCall apart = validCall();
  apart.residualOut = reinterpret_cast<void*>(base(4));
  EXPECT_EQ(tpcSuccess, checkNormCall(apart, 0));
  NormCall none = validCall();
  none.rows = 0;
  none.input = nullptr;
  EXPECT_EQ(tpcSuccess, checkNormCall(none, 0)) << "no rows, nothing to point at";
}

TEST(NormCall, RefusesTypesAndSizesItCannotDo) {
  NormCall c = validCall();
  c.type = c.outType = tpcFloat32;
  EXPECT_EQ(tpcNotSupported, checkNormCall(c, 0));
  c = validCall();
  c.type = static_cast<tpcDataType_t>(42);
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0));
  c = validCall();
  c.outType = tpcFloat16;
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0)) << "neither the input's type nor FP8";
  c = validCall();
  c.outType = tpcFloat8e5m2;
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0)) << "FP8 without a scale";
  for (size_t hidden : {0, 4, 4100, 16392, 1 << 20}) {
    c = validCall();
    c.hidden = hidden;
    EXPECT_EQ(tpcNotSupported, checkNormCall(c, 0)) << hidden;
  }
  c = validCall();
  c.rows = SIZE_MAX / 1024;
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0)) << "overflow";
  for (float eps : {-1e-6f, __builtin_nanf(""), __builtin_inff()}) {
    c = validCall();
    c.eps = eps;
    EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0)) << eps;
  }
}

TEST(NormCall, RefusesNullUnalignedAndOverlappingBuffers) {
  NormCall c = validCall();
  c.weight = nullptr;
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0));
  c = validCall();
  c.out = reinterpret_cast<void*>(base(3) + 8);
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0));
  c = validCall();
  c.out = reinterpret_cast<void*>(base(1) + 16);  // inside the residual
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0));
  c = validCall();
  c.residualOut = const_cast<void*>(c.input);
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0)) << "the residual over the input";
  c = validCall();
  c.out = const_cast<void*>(c.weight);
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0));
  c = validCall();
  c.outType = tpcFloat8e4m3;
  c.scale = reinterpret_cast<const float*>(base(4));
  c.out = const_cast<void*>(c.input);
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0)) << "FP8 rows are narrower than the input's";
  c = validCall();
  c.out = c.residualOut;
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0));
}

// The scale is read by every block as it starts, some after others have written rows.
TEST(NormCall, TheScaleIsAnAlignedFloatNoOutputCovers) {
  NormCall c = validCall();
  c.outType = tpcFloat8e4m3;
  c.scale = reinterpret_cast<const float*>(base(4) + 4);
  EXPECT_EQ(tpcSuccess, checkNormCall(c, 0)) << "a float needs 4-byte alignment, not 16";
  c.scale = reinterpret_cast<const float*>(base(2) + 64);
  EXPECT_EQ(tpcSuccess, checkNormCall(c, 0)) << "inside the weight, which no one writes";
  c.scale = reinterpret_cast<const float*>(base(4) + 2);
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0));
  EXPECT_NE(std::string::npos, threadLastError().find("normScale")) << threadLastError();
  c.scale = reinterpret_cast<const float*>(base(3) + 64);
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0)) << "inside normOut";
  EXPECT_NE(std::string::npos, threadLastError().find("normOut")) << threadLastError();
  c.scale = reinterpret_cast<const float*>(base(1) + 4);
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0)) << "inside residualOut (= residualIn)";
  // The last float of the output's rows (16 rows of 8192 one-byte elements), and the one after.
  c.scale = reinterpret_cast<const float*>(base(3) + 16 * 8192 - 4);
  EXPECT_EQ(tpcInvalidArgument, checkNormCall(c, 0));
  c.scale = reinterpret_cast<const float*>(base(3) + 16 * 8192);
  EXPECT_EQ(tpcSuccess, checkNormCall(c, 0));
}

TEST(NormCall, ParamsAddressEachChunk) {
  NormCall c = validCall();
  c.outType = tpcFloat8e4m3;
  c.scale = reinterpret_cast<const float*>(base(4));
  const device::NormParams n = normParams(c, 3, 5);
  EXPECT_EQ(5u, n.rows);
  EXPECT_EQ(8192u, n.hidden);
  EXPECT_EQ(1024u, n.hiddenVectors);
  EXPECT_EQ(device::kNormOutE4M3, n.outType);
  EXPECT_EQ(base(1) + 3 * 8192 * 2, reinterpret_cast<uintptr_t>(n.residualIn));
  EXPECT_EQ(base(1) + 3 * 8192 * 2, reinterpret_cast<uintptr_t>(n.residualOut));
  EXPECT_EQ(base(3) + 3 * 8192, reinterpret_cast<uintptr_t>(n.out)) << "one byte an element";
  EXPECT_EQ(base(2), reinterpret_cast<uintptr_t>(n.weight)) << "every row has the same weight";
}

}  // namespace
}  // namespace tpcomm
