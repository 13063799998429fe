// AArch64 NEON kernels of the 8-bit weight form (Int8Matrix). One row at a time; the
// float steps are int8_scalar.hpp's in its order, so results equal it bit for bit.
//
// fast:  a block's Σ w·q by sdot (vdotq_s32) with dotprod, else by neon.hpp's widening
//        multiplies (|w·q| <= 128·127, two products fit int16); exact int32 either way.
// exact: the block's 32 codes widen to 8 float32x4 (exact); t_m for m = 0..15 is four
//        vectors fma(w[m+16]·x[m+16] + w[m]·x[m]), u = t[0..7] + t[8..15] as two
//        vectors, and two pairwise adds give ((u0+u1)+(u2+u3)) and ((u4+u5)+(u6+u7)).
#pragma once

#include <arm_neon.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../core/half.hpp"
#include "../format/int8_matrix.hpp"
#include "int8_activation.hpp"
#include "neon.hpp"
#include "unroll.hpp"

namespace nibble::detail::int8_neon {

inline void gemm_fast(const Int8Matrix& W, const Int8Activations& p, float* Y, std::size_t r0, std::size_t r1) {
  const std::size_t cols = W.cols(), rows = W.rows(), nb = W.blocks_per_row();
  for (std::size_t r = r0; r < r1; ++r) {
    const std::int8_t* w = W.row_codes(r);
    const std::uint16_t* s = W.scale_bits().data() + r * nb;
    for (std::size_t b = 0; b < p.batch; ++b) {
      const std::int8_t* q = p.q.data() + b * cols;
      const float* dx = p.d.data() + b * nb;
      float y = 0.0f;
      for (std::size_t k = 0; k < nb; ++k) {
        const std::int8_t* wk = w + k * kQ8Block;
        const std::int8_t* qk = q + k * kQ8Block;
        const std::int32_t i = neon::block_dot(vld1q_s8(wk), vld1q_s8(wk + 16), vld1q_s8(qk), vld1q_s8(qk + 16));
        const float dd = half_to_float(s[k]) * dx[k];
        y = std::fma(dd, static_cast<float>(i), y);
      }
      Y[b * rows + r] = y;
    }
  }
}

// The 16 codes as 4 float32x4 (elements 0..3, 4..7, 8..11, 12..15).
inline void widen16(int8x16_t v, float32x4_t* f) {
  const int16x8_t lo = vmovl_s8(vget_low_s8(v)), hi = vmovl_high_s8(v);
  f[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
  f[1] = vcvtq_f32_s32(vmovl_high_s16(lo));
  f[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
  f[3] = vcvtq_f32_s32(vmovl_high_s16(hi));
}

inline void gemm_exact(const Int8Matrix& W, const float* X, std::size_t batch, float* Y, std::size_t r0,
                       std::size_t r1) {
  const std::size_t cols = W.cols(), rows = W.rows(), nb = W.blocks_per_row();
  for (std::size_t r = r0; r < r1; ++r) {
    const std::int8_t* w = W.row_codes(r);
    const std::uint16_t* s = W.scale_bits().data() + r * nb;
    for (std::size_t b = 0; b < batch; ++b) {
      const float* x = X + b * cols;
      float y = 0.0f;
      for (std::size_t k = 0; k < nb; ++k) {
        float32x4_t e[8];
        widen16(vld1q_s8(w + k * kQ8Block), e);
        widen16(vld1q_s8(w + k * kQ8Block + 16), e + 4);
        const float* xk = x + k * kQ8Block;
        float32x4_t t[4];
        NIBBLE_UNROLL
        for (int m = 0; m < 4; ++m)  // t lanes 4m..4m+3 = fma(w[16+4m..], x[16+4m..], w[4m..]·x[4m..])
          t[m] = vfmaq_f32(vmulq_f32(e[m], vld1q_f32(xk + 4 * m)), e[m + 4], vld1q_f32(xk + 16 + 4 * m));
        const float32x4_t u_lo = vaddq_f32(t[0], t[2]), u_hi = vaddq_f32(t[1], t[3]);  // u0..3, u4..7
        const float32x4_t p1 = vpaddq_f32(u_lo, u_hi);  // u0+u1, u2+u3, u4+u5, u6+u7
        const float32x4_t p2 = vpaddq_f32(p1, p1);      // (u0+u1)+(u2+u3), (u4+u5)+(u6+u7), ...
        const float sk = vgetq_lane_f32(p2, 0) + vgetq_lane_f32(p2, 1);
        y = std::fma(half_to_float(s[k]), sk, y);
      }
      Y[b * rows + r] = y;
    }
  }
}

}  // namespace nibble::detail::int8_neon
