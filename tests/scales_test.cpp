#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "nibble/format/scales.hpp"

namespace scales_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

static std::vector<float> random_scales(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(0.01f, 0.2f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

TEST(ScaleArray, PlainFormatsRoundTrip) {
  const auto v = random_scales(300, 1);
  EXPECT_EQ(ScaleArray::encode(v, ScaleFormat::f32).decode(), v);
  const auto h = ScaleArray::encode(v, ScaleFormat::f16);
  const auto b = ScaleArray::encode(v, ScaleFormat::bf16);
  for (std::size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(h.get(i), half_to_float(float_to_half(v[i])));
    EXPECT_EQ(b.get(i), bf16_to_float(float_to_bf16(v[i])));
  }
  EXPECT_EQ(h.storage_bits(), 16u * 300u);
  EXPECT_THROW(ScaleArray::encode({1e6f}, ScaleFormat::f16), Error);
  EXPECT_THROW(ScaleArray::encode({NAN}, ScaleFormat::f32), Error);
}

// Double quantization reproduced step by step: offset = mean, blocks of 256,
// absmax2 per block, nearest dynamic code of the normalised deviation.
TEST(ScaleArray, DoubleQuantMatchesItsDefinition) {
  const auto v = random_scales(600, 2);  // 3 blocks, the last one ragged (88)
  const auto dq = ScaleArray::encode(v, ScaleFormat::dq8);
  double sum = 0;
  for (float x : v) sum += x;
  const float offset = static_cast<float>(sum / v.size());
  EXPECT_EQ(dq.dq_offset(), offset);
  ASSERT_EQ(dq.dq_absmax2().size(), 3u);
  for (std::size_t b = 0; b < 3; ++b) {
    float amax = 0;
    for (std::size_t i = b * 256; i < std::min<std::size_t>(600, (b + 1) * 256); ++i)
      amax = std::max(amax, std::fabs(v[i] - offset));
    EXPECT_EQ(dq.dq_absmax2()[b], amax);
  }
  for (std::size_t i = 0; i < v.size(); ++i) {
    const float amax = dq.dq_absmax2()[i / 256];
    const float xn = (v[i] - offset) * (1.0f / amax);
    int best = 0;
    for (int c = 1; c < 256; ++c)
      if (std::fabs(dynamic_map()[c] - xn) < std::fabs(dynamic_map()[best] - xn)) best = c;
    EXPECT_EQ(dq.dq_codes()[i], best) << i;
    EXPECT_FLOAT_EQ(dq.get(i), dynamic_map()[best] * amax + offset);
    // The error is bounded by half the widest gap of the dynamic map around 1 (and the
    // 0.7% lost at −1, where the map stops at −0.99296875).
    EXPECT_LE(std::fabs(dq.get(i) - v[i]), 0.0075f * amax) << i;
  }
  EXPECT_EQ(dq.storage_bits(), 600u * 8u + 3u * 32u + 32u);
  const auto again = ScaleArray::from_double_quant(dq.dq_codes(), dq.dq_absmax2(), dq.dq_offset());
  EXPECT_EQ(again.decode(), dq.decode());
}

TEST(ScaleArray, DoubleQuantOfConstantScalesIsExact) {
  const std::vector<float> v(300, 0.125f);
  const auto dq = ScaleArray::encode(v, ScaleFormat::dq8);
  for (std::size_t i = 0; i < v.size(); ++i) EXPECT_EQ(dq.get(i), 0.125f);
}

TEST(ScaleArray, ReadersValidateParts) {
  EXPECT_THROW(ScaleArray::from_double_quant(std::vector<std::uint8_t>(300), {1.0f}, 0.0f), Error);
  EXPECT_THROW(ScaleArray::from_double_quant(std::vector<std::uint8_t>(10), {NAN}, 0.0f), Error);
  EXPECT_THROW(ScaleArray::from_raw16({0x7C00}, ScaleFormat::f16), Error);  // Inf
}

}  // namespace scales_test
