#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "nibble/format/codebook.hpp"
#include "nibble/format/dynamic_map.hpp"
#include "nibble/format/scales.hpp"

namespace codebook_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

// Values transcribed from shared/reference/algorithms.md §1.1 (bitsandbytes get_4bit_type).
TEST(Codebook, NF4TableMatchesReference) {
  const double expected[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                               -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                               0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                               0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(kNF4Values[i], static_cast<float>(expected[i])) << i;
}

// Inverse normal CDF by bisection on erfc: an independent route to the NF4 levels.
static double norm_ppf(double p) {
  double lo = -10, hi = 10;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

// bitsandbytes create_normal_map(offset=0.9677083): 8 positive quantiles from
// linspace(offset, 0.5, 9)[:-1], 7 negative from linspace(offset, 0.5, 8)[:-1], a zero,
// normalised by the maximum.
TEST(Codebook, NF4TableFollowsFromItsConstruction) {
  const double offset = 0.9677083;
  std::vector<double> v;
  for (int i = 0; i < 8; ++i) v.push_back(norm_ppf(offset + (0.5 - offset) * i / 8.0));
  for (int i = 0; i < 7; ++i) v.push_back(-norm_ppf(offset + (0.5 - offset) * i / 7.0));
  v.push_back(0.0);
  std::sort(v.begin(), v.end());
  const double mx = v.back();
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(kNF4Values[i], v[i] / mx, 2e-7) << i;
}

TEST(Codebook, FP4TableIsBitsandbytesLut) {
  const double raw[8] = {0, 0.0625, 8, 12, 4, 6, 2, 3};
  for (int code = 0; code < 16; ++code) {
    const double sign = (code & 8) ? -1.0 : 1.0;
    EXPECT_NEAR(kFP4Values[code], sign * raw[code & 7] / 12.0, 3e-8) << code;  // bnb's 8-digit literals
    EXPECT_EQ(std::signbit(kFP4Values[code]), (code & 8) != 0) << code;
  }
}

// Brute force: the chosen NF4 code is the nearest table value; exact midpoints go low.
TEST(Codebook, NF4NearestCodeBruteForce) {
  for (int i = -12000; i <= 12000; ++i) {
    const float x = static_cast<float>(i) / 10000.0f;
    const std::uint8_t got = nearest_nf4(x);
    for (int c = 0; c < 16; ++c)
      ASSERT_LE(std::fabs(kNF4Values[got] - x), std::fabs(kNF4Values[c] - x) + 1e-6f) << x;
  }
  for (std::size_t t = 0; t < kNF4Thresholds.size(); ++t) {
    EXPECT_EQ(nearest_nf4(kNF4Thresholds[t]), t) << "tie goes to the lower code";
    EXPECT_EQ(nearest_nf4(std::nextafter(kNF4Thresholds[t], 2.0f)), t + 1);
  }
  EXPECT_EQ(nearest_nf4(0.0f), 7);
  EXPECT_EQ(nearest_nf4(-5.0f), 0);
  EXPECT_EQ(nearest_nf4(5.0f), 15);
}

TEST(Codebook, FP4NearestCodeBruteForce) {
  for (int i = -12000; i <= 12000; ++i) {
    const float x = static_cast<float>(i) / 10000.0f;
    const std::uint8_t got = nearest_fp4(x);
    for (int c = 0; c < 16; ++c)
      ASSERT_LE(std::fabs(kFP4Values[got] - x), std::fabs(kFP4Values[c] - x) + 1e-6f) << x;
  }
  // Thresholds of reference/algorithms.md §1.3.
  EXPECT_EQ(nearest_fp4(0.00260417f), 0b000);
  EXPECT_EQ(nearest_fp4(0.0859375f), 0b001);
  EXPECT_EQ(nearest_fp4(0.20833333f), 0b110);
  EXPECT_EQ(nearest_fp4(0.29166667f), 0b111);
  EXPECT_EQ(nearest_fp4(0.41666667f), 0b100);
  EXPECT_EQ(nearest_fp4(0.583333f), 0b101);
  EXPECT_EQ(nearest_fp4(0.8333333f), 0b010);
  EXPECT_EQ(nearest_fp4(0.9f), 0b011);
  EXPECT_EQ(nearest_fp4(-0.9f), 0b1011);
}

TEST(Codebook, Int4TablesAndNames) {
  for (int u = 0; u < 16; ++u) {
    EXPECT_EQ(codebook_values(Codebook::int4_sym)[u], u - 8);
    EXPECT_EQ(codebook_values(Codebook::uint4_asym)[u], u);
  }
  for (Codebook c : {Codebook::int4_sym, Codebook::uint4_asym, Codebook::nf4, Codebook::fp4, Codebook::iq4_nl})
    EXPECT_EQ(codebook_from_string(to_string(c)), c);
  EXPECT_FALSE(is_valid_codebook(5));
  EXPECT_THROW(codebook_from_string("int3"), Error);
}

// Both copies of the dynamic map in tests/data (from shared/reference): ours is column A,
// and differs from column B by at most two ulps.
TEST(DynamicMap, MatchesReferenceFile) {
  std::ifstream in(std::string(NIBBLE_TEST_DATA_DIR) + "/bnb_dynamic_map.txt");
  ASSERT_TRUE(in) << "tests/data/bnb_dynamic_map.txt is missing";
  std::string line;
  int rows = 0;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    int index;
    double a, b;
    ASSERT_TRUE(fields >> index >> a >> b) << line;
    ASSERT_EQ(index, rows);
    EXPECT_EQ(dynamic_map()[index], static_cast<float>(a)) << index;
    // The two published copies differ in the last bits only (at most 2 ulps, 4 entries need 2).
    const float fa = static_cast<float>(a), fb = static_cast<float>(b);
    const float big = std::max(std::fabs(fa), std::fabs(fb));
    EXPECT_LE(std::fabs(fa - fb), 2 * (std::nextafter(big, 2.0f) - big)) << index;
    ++rows;
  }
  EXPECT_EQ(rows, 256);
  EXPECT_EQ(dynamic_map()[127], 0.0f);
  EXPECT_EQ(dynamic_map()[255], 1.0f);
  EXPECT_FLOAT_EQ(dynamic_map()[0], -0.99296875f);
  EXPECT_TRUE(std::is_sorted(dynamic_map().begin(), dynamic_map().end()));
}

TEST(DynamicMap, NearestCodeBruteForce) {
  for (int i = -11000; i <= 11000; ++i) {
    const float x = static_cast<float>(i) / 10000.0f;
    const std::uint8_t got = nearest_dynamic_code(x);
    for (int c = 0; c < 256; ++c)
      ASSERT_LE(std::fabs(dynamic_map()[got] - x), std::fabs(dynamic_map()[c] - x) + 1e-7f) << x;  // float midpoints
  }
}

// round_half_even is nearbyint written out (2^23 added and removed); it must agree with
// std::nearbyint bit for bit, sign of zero included, on ties, near 2^22 … 2^24 where the
// spacing of floats is 0.5 … 2, and on every kind of special value.
TEST(RoundHalfEven, EqualsNearbyintBitForBit) {
  std::vector<float> xs = {0.0f, -0.0f, 0.3f, -0.3f, 0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f, 7.5f, -8.5f,
                           0.49999997f, -0.49999997f, 1e-30f, -1e-45f, 4194303.5f, 4194304.5f, -4194304.5f,
                           8388607.5f, -8388607.5f, 8388608.0f, 8388609.0f, 16777216.0f, 3e38f,
                           std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::denorm_min(), std::numeric_limits<float>::max()};
  for (float x = 0.0f; x < 40.0f; x += 0.25f) {  // every tie below 40 and the values between
    xs.push_back(x);
    xs.push_back(-x);
  }
  std::uint32_t state = 12345;  // random bit patterns: every exponent, including NaNs
  for (int i = 0; i < 200000; ++i) {
    state = state * 1664525u + 1013904223u;
    float x;
    std::memcpy(&x, &state, sizeof x);
    xs.push_back(x);
  }
  for (float x : xs) {
    const float want = std::nearbyint(x), got = nibble::round_half_even(x);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(got)) << x;
      continue;
    }
    std::uint32_t a, b;
    std::memcpy(&a, &want, sizeof a);
    std::memcpy(&b, &got, sizeof b);
    ASSERT_EQ(a, b) << "x = " << x << ": nearbyint " << want << ", round_half_even " << got;
  }
}

}  // namespace codebook_test
