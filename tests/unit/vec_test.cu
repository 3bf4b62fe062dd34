// The device headers' conversions and fixed-order reduction, run on the host against float64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>

#include "tpcomm/device/vec.cuh"

namespace tpcomm {
namespace device {
namespace {

template <typename T>
uint16_t bitsOf(T x) {
  uint16_t b;
  std::memcpy(&b, &x, sizeof(b));
  return b;
}

template <typename T>
T fromBits(uint16_t b) {
  T x;
  std::memcpy(&x, &b, sizeof(b));
  return x;
}

template <typename T>
class HalfTypes : public ::testing::Test {};
using Types16 = ::testing::Types<__half, __nv_bfloat16>;
TYPED_TEST_SUITE(HalfTypes, Types16);

TYPED_TEST(HalfTypes, EveryValueSurvivesARoundTripThroughFloat) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const TypeParam x = fromBits<TypeParam>(static_cast<uint16_t>(b));
    const float f = toFloat(x);
    if (std::isnan(f)) continue;
    ASSERT_EQ(b, bitsOf(fromFloat<TypeParam>(f))) << std::hex << b;
  }
}

// fromFloat must pick the nearest representable value, ties to the even bit pattern.
TYPED_TEST(HalfTypes, ConversionRoundsToNearestEven) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mantissa(-2.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-30, 30);
  for (int i = 0; i < 200000; ++i) {
    const float f = std::ldexp(mantissa(rng), exponent(rng));
    const uint16_t b = bitsOf(fromFloat<TypeParam>(f));
    const double got = toFloat(fromBits<TypeParam>(b));
    if (std::isinf(got)) continue;  // overflow of the 16-bit range
    const double err = std::fabs(got - f);
    for (int step : {-1, 1}) {
      const double other = toFloat(fromBits<TypeParam>(static_cast<uint16_t>(b + step)));
      if (std::isnan(other) || std::isinf(other)) continue;
      const double otherErr = std::fabs(other - f);
      ASSERT_LE(err, otherErr) << f;
      if (err == otherErr) ASSERT_EQ(0, b & 1) << "tie must go to even: " << f;
    }
  }
}

template <typename T>
class AllTypes : public ::testing::Test {};
using Types = ::testing::Types<float, __half, __nv_bfloat16>;
TYPED_TEST_SUITE(AllTypes, Types);

TYPED_TEST(AllTypes, VectorsHoldSixteenBytes) {
  EXPECT_EQ(16u, sizeof(Vec<TypeParam>));
  EXPECT_EQ(16u / sizeof(TypeParam), static_cast<size_t>(Vec<TypeParam>::kElems));
  EXPECT_EQ(0u, vecCount<TypeParam>(0));
  EXPECT_EQ(1u, vecCount<TypeParam>(1));
  EXPECT_EQ(1u, vecCount<TypeParam>(Vec<TypeParam>::kElems));
  EXPECT_EQ(2u, vecCount<TypeParam>(Vec<TypeParam>::kElems + 1));
}

// The accumulator adds ranks in order in float32 and rounds once: exactly what a float32 loop in
// rank order gives, and within the float32 and output rounding of the float64 sum.
TYPED_TEST(AllTypes, FixedOrderSumMatchesFloat64) {
  using T = TypeParam;
  constexpr int kElems = Vec<T>::kElems;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  const double outputEps = sizeof(T) == 4                   ? std::ldexp(1.0, -24)
                           : std::is_same<T, __half>::value ? std::ldexp(1.0, -11)
                                                            : std::ldexp(1.0, -8);
  for (int nranks = 2; nranks <= 8; ++nranks) {
    for (int trial = 0; trial < 2000; ++trial) {
      Vec<T> in[8];
      for (int r = 0; r < nranks; ++r) {
        for (int k = 0; k < kElems; ++k) in[r].elem[k] = fromFloat<T>(value(rng));
      }
      Accumulator<T> acc;
      acc.set(in[0]);
      for (int r = 1; r < nranks; ++r) acc.add(in[r]);
      const Vec<T> out = acc.result();
      for (int k = 0; k < kElems; ++k) {
        float loop = toFloat(in[0].elem[k]);
        double exact = loop, magnitude = std::fabs(loop);
        for (int r = 1; r < nranks; ++r) {
          loop += toFloat(in[r].elem[k]);
          exact += toFloat(in[r].elem[k]);
          magnitude += std::fabs(toFloat(in[r].elem[k]));
        }
        const T expected = fromFloat<T>(loop);
        ASSERT_EQ(0, std::memcmp(&expected, &out.elem[k], sizeof(T)));
        const double tolerance =
            outputEps * std::fabs(exact) + nranks * std::ldexp(1.0, -24) * magnitude + 1e-30;
        ASSERT_NEAR(exact, toFloat(out.elem[k]), tolerance) << "nranks " << nranks;
      }
    }
  }
}

}  // namespace
}  // namespace device
}  // namespace tpcomm
