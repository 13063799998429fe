// AArch64 NEON path of softmax_scalar.hpp, bit for bit: 16 elements per step as four
// float32x4, which hold the specification's partials 0–3, 4–7, 8–11 and 12–15. A last
// short step goes through a padded copy (pad: −inf for the max, whose exp is 0).
#pragma once

#include <arm_neon.h>

#include <cstddef>
#include <cstring>
#include <limits>

#include "softmax_scalar.hpp"

#include "unroll.hpp"

namespace nibble::detail::softmax_neon {

// exp_for_softmax on 4 lanes, in its order of operations (vfmaq_f32(a, b, c) = a + b·c).
inline float32x4_t exp4(float32x4_t x) {
  using namespace softmax_exp;
  const uint32x4_t zero_lanes = vcltq_f32(x, vdupq_n_f32(kLowest));
  x = vbslq_f32(vcgtq_f32(x, vdupq_n_f32(kHighest)), vdupq_n_f32(kHighest), x);  // NaN compares false: kept
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(kLog2e)));
  float32x4_t r = vfmaq_f32(x, n, vdupq_n_f32(-kLn2Hi));
  r = vfmaq_f32(r, n, vdupq_n_f32(-kLn2Lo));
  float32x4_t p = vfmaq_f32(vdupq_n_f32(kP1), vdupq_n_f32(kP0), r);
  p = vfmaq_f32(vdupq_n_f32(kP2), p, r);
  p = vfmaq_f32(vdupq_n_f32(kP3), p, r);
  p = vfmaq_f32(vdupq_n_f32(kP4), p, r);
  p = vfmaq_f32(vdupq_n_f32(kP5), p, r);
  const float32x4_t y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
  // 2ⁿ from its exponent bits: n is in [−126, 127] on every lane that is kept.
  const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t e = vmulq_f32(y, vreinterpretq_f32_s32(bits));
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(e), zero_lanes));
}

// max that skips a NaN in `a` as the scalar rule does (keeps b unless a > b).
inline float32x4_t max_keep(float32x4_t a, float32x4_t b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }

inline void softmax(float* v, std::size_t n) {
  const std::size_t full = n / 16 * 16, rest = n - full;
  float pad[16];
  if (rest) {
    NIBBLE_UNROLL
    for (std::size_t i = 0; i < 16; ++i) pad[i] = -std::numeric_limits<float>::infinity();
    std::memcpy(pad, v + full, rest * sizeof(float));
  }
  const std::size_t steps = full / 16 + (rest ? 1 : 0);
  auto step = [&](std::size_t k) { return k * 16 < full ? v + k * 16 : pad; };
  float32x4_t m[4];
  for (auto& q : m) q = vdupq_n_f32(-std::numeric_limits<float>::infinity());
  for (std::size_t k = 0; k < steps; ++k) {
    NIBBLE_UNROLL
    for (int j = 0; j < 4; ++j) m[j] = max_keep(vld1q_f32(step(k) + 4 * j), m[j]);
  }
  const float32x4_t mx = vdupq_n_f32(vmaxvq_f32(vmaxq_f32(vmaxq_f32(m[0], m[1]), vmaxq_f32(m[2], m[3]))));

  float32x4_t s[4];
  for (auto& q : s) q = vdupq_n_f32(0.0f);
  for (std::size_t k = 0; k < steps; ++k) {
    float* p = step(k);
    NIBBLE_UNROLL
    for (int j = 0; j < 4; ++j) {
      const float32x4_t e = exp4(vsubq_f32(vld1q_f32(p + 4 * j), mx));
      vst1q_f32(p + 4 * j, e);
      s[j] = vaddq_f32(s[j], e);  // pad lanes add +0, which leaves a partial as it is
    }
  }
  const float32x4_t s4 = vaddq_f32(vaddq_f32(s[0], s[2]), vaddq_f32(s[1], s[3]));  // w = 8, then 4
  const float32x2_t s2 = vadd_f32(vget_low_f32(s4), vget_high_f32(s4));          // w = 2
  const float32x4_t inv = vdupq_n_f32(1.0f / (vget_lane_f32(s2, 0) + vget_lane_f32(s2, 1)));
  for (std::size_t k = 0; k < steps; ++k) {
    float* p = step(k);
    NIBBLE_UNROLL
    for (int j = 0; j < 4; ++j) vst1q_f32(p + 4 * j, vmulq_f32(vld1q_f32(p + 4 * j), inv));
  }
  if (rest) std::memcpy(v + full, pad, rest * sizeof(float));
}

// softmax_scalar::silu_mul, 4 lanes at a time; the last n mod 4 elements by the scalar rule.
inline void silu_mul(const float* gate, const float* up, float* out, std::size_t n) {
  const std::size_t full = n / 4 * 4;
  const float32x4_t one = vdupq_n_f32(1.0f);
  for (std::size_t i = 0; i < full; i += 4) {
    const float32x4_t g = vld1q_f32(gate + i);
    const float32x4_t e = exp4(vnegq_f32(g));
    vst1q_f32(out + i, vmulq_f32(vdivq_f32(g, vaddq_f32(one, e)), vld1q_f32(up + i)));
  }
  softmax_scalar::silu_mul(gate + full, up + full, out + full, n - full);
}

}  // namespace nibble::detail::softmax_neon
