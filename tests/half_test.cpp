#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "nibble/core/half.hpp"

namespace half_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

// Exact value of a binary16 pattern computed independently from its fields.
static double half_value(std::uint16_t h) {
  const int sign = (h >> 15) ? -1 : 1;
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  return sign * std::ldexp(1024 + mant, exp - 25);
}

TEST(Half, EveryFiniteHalfRoundTripsThroughFloat) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const int exp = (bits >> 10) & 0x1F;
    const float f = half_to_float(bits);
    if (exp == 0x1F) {
      if ((bits & 0x3FF) == 0) EXPECT_TRUE(std::isinf(f));
      else EXPECT_TRUE(std::isnan(f));
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), half_value(bits)) << std::hex << h;
    ASSERT_EQ(float_to_half(f), bits) << std::hex << h;
  }
}

TEST(Half, KnownPatterns) {
  EXPECT_EQ(float_to_half(0.0f), 0x0000);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half(1.0f), 0x3C00);
  EXPECT_EQ(float_to_half(-2.0f), 0xC000);
  EXPECT_EQ(float_to_half(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_half(65519.0f), 0x7BFF);   // just below the rounding point
  EXPECT_EQ(float_to_half(65520.0f), 0x7C00);   // ties to even → Inf
  EXPECT_EQ(float_to_half(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(float_to_half(-std::numeric_limits<float>::infinity()), 0xFC00);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);  // exact tie → even (0)
  EXPECT_EQ(float_to_half(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(float_to_half(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 ulp tie → even (2)
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(float_to_half(std::ldexp(1023.0f, -24)), 0x03FF);  // largest subnormal
  EXPECT_EQ(float_to_half(0.1f), 0x2E66);
  const std::uint16_t nan = float_to_half(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
}

// Round-to-nearest-even checked against an exhaustive search over all halves for
// floats between representable values (a brute-force reference).
TEST(Half, RoundingMatchesNearestEvenSearch) {
  std::uint32_t state = 12345;
  for (int i = 0; i < 200000; ++i) {
    state = state * 1664525u + 1013904223u;
    // Random floats with |x| < 65504, spread over exponents.
    const float x = bits_to_float((state & 0x807FFFFFu) | (((state >> 23) % 31 + 97u) << 23));
    const std::uint16_t got = float_to_half(x);
    // Neighbours of the result must not be closer.
    const double v = half_value(got);
    const double err = std::fabs(v - x);
    for (int d : {-1, 1}) {
      const std::uint16_t n = static_cast<std::uint16_t>(got + d);
      if (((n >> 10) & 0x1F) == 0x1F || ((n ^ got) & 0x8000)) continue;
      const double ne = std::fabs(half_value(n) - x);
      ASSERT_TRUE(ne > err || (ne == err && (got & 1) == 0)) << x;
    }
  }
}

TEST(BFloat16, KnownPatternsAndRounding) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3F808000u)), 0x3F80);  // tie → even
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3F818000u)), 0x3F82);  // tie → even (up)
  EXPECT_EQ(float_to_bf16(bits_to_float(0x3F808001u)), 0x3F81);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(float_to_bf16(bits_to_float(0x7F7FFFFFu)), 0x7F80);  // max float rounds to Inf
  EXPECT_EQ(float_to_bf16(bits_to_float(0x00010000u)), 0x0001);  // subnormal
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(bits_to_float(0x7F800001u)))));  // signalling NaN stays NaN
  for (std::uint32_t b = 0; b < 0x10000; ++b) {
    const float f = bf16_to_float(static_cast<std::uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bf16(f), b);
  }
}

}  // namespace half_test
