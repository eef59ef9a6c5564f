#include "ff/gemm/numeric.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <random>

#include "test_util.h"

namespace ff::gemm {
namespace {

using testing::e4m3_reference;

TEST(E4m3, TableMatchesFloat64DefinitionForAll256Codes) {
  for (int code = 0; code < 256; ++code) {
    const double expected = e4m3_reference(static_cast<uint8_t>(code));
    const float actual = e4m3_to_float(static_cast<uint8_t>(code));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(actual)) << "code " << code;
    } else {
      EXPECT_EQ(static_cast<double>(actual), expected) << "code " << code;
      EXPECT_EQ(std::signbit(actual), code >= 0x80) << "code " << code;
    }
  }
}

TEST(E4m3, KnownCodes) {
  EXPECT_EQ(e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_float(0xfe), -448.0f);
  EXPECT_EQ(e4m3_to_float(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
  EXPECT_EQ(e4m3_to_float(0x07), 7.0f * std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3_to_float(0x08), std::ldexp(1.0f, -6));  // smallest normal
  EXPECT_EQ(e4m3_to_float(0x38), 1.0f);
  EXPECT_TRUE(std::isnan(e4m3_to_float(0x7f)));
  EXPECT_TRUE(std::isnan(e4m3_to_float(0xff)));
  EXPECT_EQ(e4m3_to_float(0x80), 0.0f);
  EXPECT_TRUE(std::signbit(e4m3_to_float(0x80)));
}

// Brute force: the nearest of all codes 0x00..0x7f, where 0x7f stands for 480 (the value its bit pattern would
// have), ties to the even code; choosing 0x7f means NaN (torch's behaviour without saturation).
uint8_t brute_force_e4m3(float value) {
  if (std::isnan(value)) return 0x7f;
  const double magnitude = std::fabs(static_cast<double>(value));
  int best = 0;
  double best_distance = INFINITY;
  for (int code = 0; code <= 0x7f; ++code) {
    const double candidate = code == 0x7f ? 480.0 : e4m3_reference(static_cast<uint8_t>(code));
    const double distance = std::fabs(candidate - magnitude);
    if (distance < best_distance || (distance == best_distance && code % 2 == 0)) {
      best = code;
      best_distance = distance;
    }
  }
  if (magnitude > 480.0) best = 0x7f;
  return static_cast<uint8_t>(best | (std::signbit(value) ? 0x80 : 0));
}

TEST(E4m3, RoundTripsEveryFiniteCode) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    EXPECT_EQ(float_to_e4m3(e4m3_to_float(static_cast<uint8_t>(code))), code) << "code " << code;
  }
}

TEST(E4m3, RoundsToNearestEvenAtEveryMidpointAndQuarter) {
  // Midpoints exercise ties-to-even; quarter points just below and above exercise plain nearest rounding.
  for (int code = 0; code < 0x7e; ++code) {
    const double low = e4m3_reference(static_cast<uint8_t>(code));
    const double high = e4m3_reference(static_cast<uint8_t>(code + 1));
    for (double fraction : {0.25, 0.5, 0.75}) {
      const auto value = static_cast<float>(low + (high - low) * fraction);
      EXPECT_EQ(float_to_e4m3(value), brute_force_e4m3(value)) << value;
      EXPECT_EQ(float_to_e4m3(-value), brute_force_e4m3(-value)) << -value;
    }
  }
}

TEST(E4m3, NoSaturationAbove464) {
  EXPECT_EQ(float_to_e4m3(448.0f), 0x7e);
  EXPECT_EQ(float_to_e4m3(464.0f), 0x7e);  // tie between 448 (even) and 480 (NaN): even wins
  EXPECT_EQ(float_to_e4m3(std::nextafter(464.0f, 500.0f)), 0x7f);
  EXPECT_EQ(float_to_e4m3(-470.0f), 0xff);
  EXPECT_EQ(float_to_e4m3(1e6f), 0x7f);
  EXPECT_EQ(float_to_e4m3(INFINITY), 0x7f);
  EXPECT_EQ(float_to_e4m3(-INFINITY), 0xff);
  EXPECT_EQ(float_to_e4m3(NAN), 0x7f);
  EXPECT_EQ(float_to_e4m3(-0.0f), 0x80);
  EXPECT_EQ(float_to_e4m3(std::ldexp(1.0f, -11)), 0x00);  // a quarter of the smallest subnormal rounds to 0
}

TEST(E4m3, MatchesBruteForceOnRandomFloats) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-14, 10);
  for (int i = 0; i < 20000; ++i) {
    const float value = std::ldexp(mantissa(rng), exponent(rng));
    ASSERT_EQ(float_to_e4m3(value), brute_force_e4m3(value)) << "value " << value;
  }
}

TEST(Bf16, RoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie, 0x3f80 is even
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie, 0x3f82 is even
  EXPECT_EQ(float_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)), 0x3f81);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(float_to_bf16(INFINITY), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(-NAN))));
  EXPECT_EQ(float_to_bf16(3.4e38f), 0x7f80);  // rounds past the largest bf16 to infinity
}

TEST(Bf16, MatchesNearestOfTwoCandidatesOnRandomFloats) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits(0, 0x7f7fffffu);
  for (int i = 0; i < 20000; ++i) {
    const float value = std::bit_cast<float>(bits(rng));
    const uint16_t below = static_cast<uint16_t>(std::bit_cast<uint32_t>(value) >> 16);
    const double low = testing::bf16_value(below);
    const double high = testing::bf16_value(static_cast<uint16_t>(below + 1));
    const double distance_low = value - low;
    const double distance_high = high - value;
    const uint16_t expected =
        distance_low < distance_high || (distance_low == distance_high && below % 2 == 0) ? below : below + 1;
    ASSERT_EQ(float_to_bf16(value), expected) << value;
    ASSERT_EQ(bf16_to_float(expected), static_cast<float>(expected == below ? low : high));
  }
}

}  // namespace
}  // namespace ff::gemm
