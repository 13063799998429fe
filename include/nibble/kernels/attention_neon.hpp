// AArch64 NEON path of attention_scalar.hpp, bit for bit. A score's 16 partials are
// four float32x4 (partials 0–3, 4–7, 8–11, 12–15); a short last step goes through a
// zero-padded copy. The mix keeps 4 outputs per register and finishes a head size that
// is not a multiple of 4 with the scalar rule, which is the same per lane.
#pragma once

#include <arm_neon.h>

#include <cmath>
#include <cstddef>
#include <cstring>

#include "unroll.hpp"

namespace nibble::detail::attention_neon {

inline void scores(const float* q, const float* K, std::size_t stride, std::size_t n, std::size_t hs, float* s) {
  const std::size_t full = hs / 16 * 16, rest = hs - full;
  float qpad[16] = {}, kpad[16] = {};
  if (rest) std::memcpy(qpad, q + full, rest * sizeof(float));
  for (std::size_t j = 0; j < n; ++j) {
    const float* k = K + j * stride;
    float32x4_t a[4];
    for (auto& r : a) r = vdupq_n_f32(0.0f);
    for (std::size_t i = 0; i < full; i += 16) {
      NIBBLE_UNROLL
      for (int c = 0; c < 4; ++c) a[c] = vfmaq_f32(a[c], vld1q_f32(q + i + 4 * c), vld1q_f32(k + i + 4 * c));
    }
    if (rest) {
      std::memcpy(kpad, k + full, rest * sizeof(float));
      NIBBLE_UNROLL
      for (int c = 0; c < 4; ++c) a[c] = vfmaq_f32(a[c], vld1q_f32(qpad + 4 * c), vld1q_f32(kpad + 4 * c));
    }
    const float32x4_t w4 = vaddq_f32(vaddq_f32(a[0], a[2]), vaddq_f32(a[1], a[3]));  // w = 8, then 4
    const float32x2_t w2 = vadd_f32(vget_low_f32(w4), vget_high_f32(w4));           // w = 2
    s[j] = vget_lane_f32(w2, 0) + vget_lane_f32(w2, 1);
  }
}

inline void mix(const float* p, const float* V, std::size_t stride, std::size_t n, std::size_t hs, float* out) {
  std::size_t d = 0;
  for (; d + 16 <= hs; d += 16) {  // four independent chains per key
    float32x4_t o[4];
    for (auto& r : o) r = vdupq_n_f32(0.0f);
    for (std::size_t j = 0; j < n; ++j) {
      const float* v = V + j * stride + d;
      NIBBLE_UNROLL
      for (int c = 0; c < 4; ++c) o[c] = vfmaq_n_f32(o[c], vld1q_f32(v + 4 * c), p[j]);
    }
    NIBBLE_UNROLL
    for (int c = 0; c < 4; ++c) vst1q_f32(out + d + 4 * c, o[c]);
  }
  for (; d + 4 <= hs; d += 4) {
    float32x4_t o = vdupq_n_f32(0.0f);
    for (std::size_t j = 0; j < n; ++j) o = vfmaq_n_f32(o, vld1q_f32(V + j * stride + d), p[j]);
    vst1q_f32(out + d, o);
  }
  for (; d < hs; ++d) {
    float o = 0.0f;
    for (std::size_t j = 0; j < n; ++j) o = std::fma(p[j], V[j * stride + d], o);
    out[d] = o;
  }
}

}  // namespace nibble::detail::attention_neon
