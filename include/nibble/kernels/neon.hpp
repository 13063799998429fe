// AArch64 NEON kernels (always available on AArch64, so no run-time dispatch is
// needed there). The fast path uses sdot (vdotq_s32) when the compiler targets
// dotprod (__ARM_FEATURE_DOTPROD, e.g. -march=armv8.2-a+dotprod), else widening
// multiplies (smull/smlal, then pairwise adds).
//
// Fast mode takes four rows at a time (one per float lane), exact mode one. Codes: a
// block's 16 bytes split into high nibbles (even elements) and low nibbles (odd
// elements), matching the de-interleaved activations. Table codebooks (nf4/fp4/iq4_nl)
// decode through vqtbl1q: in fast mode to int8 directly, in exact mode as four byte
// planes of the float table, zipped back into floats.
// fast: the block's int32 sum is exact, and the float steps are the scalar
// reference's, in its order, so results are bit-identical to it.
#pragma once

#include <arm_neon.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "activation.hpp"
#include "packed_matrix.hpp"

namespace nibble::detail::neon {

// The (up to) 16 code bytes of a block of row r (bytes past a short block are
// multiplied by zero activations).
inline uint8x16_t load_codes(const PackedMatrix& W, std::size_t r, const BlockSpan& span) {
  std::uint8_t tmp[16];
  return vld1q_u8(W.bytes16(r, span.byte_begin, tmp));
}

// Four int32 partial sums whose total is the block's integer dot product.
inline int32x4_t block_partials(int8x16_t wh, int8x16_t wl, int8x16_t qe, int8x16_t qo) {
#if defined(__ARM_FEATURE_DOTPROD)
  return vdotq_s32(vdotq_s32(vdupq_n_s32(0), wh, qe), wl, qo);
#else
  // |w·q| <= 127·127, so two products fit in int16.
  int16x8_t p0 = vmull_s8(vget_low_s8(wh), vget_low_s8(qe));
  p0 = vmlal_s8(p0, vget_low_s8(wl), vget_low_s8(qo));
  int16x8_t p1 = vmull_high_s8(wh, qe);
  p1 = vmlal_high_s8(p1, wl, qo);
  return vpadalq_s16(vpaddlq_s16(p0), p1);
#endif
}

inline std::int32_t block_dot(int8x16_t wh, int8x16_t wl, int8x16_t qe, int8x16_t qo) {
  return vaddvq_s32(block_partials(wh, wl, qe, qo));
}

// A block's codes as int8 values: high nibbles (even elements), low nibbles (odd).
template <bool kTable>
inline void block_values(uint8x16_t v, int8x16_t table, int8x16_t& wh, int8x16_t& wl) {
  wh = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
  wl = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
  if (kTable) {
    wh = vqtbl1q_s8(table, vreinterpretq_u8_s8(wh));
    wl = vqtbl1q_s8(table, vreinterpretq_u8_s8(wl));
  }
}

template <bool kTable>
inline int32x4_t row_partials(uint8x16_t v, int8x16_t table, int8x16_t qe, int8x16_t qo) {
  int8x16_t wh, wl;
  block_values<kTable>(v, table, wh, wl);
  return block_partials(wh, wl, qe, qo);
}

// Four rows (r … r+3, r a multiple of 4, so one row tile) at once, fast mode: each
// row's block sum lands in one lane (two pairwise adds instead of four horizontal
// sums), and the float steps run four rows wide in the scalar reference's order, so
// results stay bit-identical to it.
// sk[4g + j] = scale(r+j, g) · int8 factor; noff[4g + j] = −offset(r+j, g).
template <bool kTable>
inline void rows4_fast(const PackedMatrix& W, const PreparedActivations& p, float* Y, std::size_t r,
                       const float* sk, const float* noff, int8x16_t table) {
  const std::size_t G = W.groups_per_row(), rows = W.rows(), nb = W.block_count();
  for (std::size_t b = 0; b < p.batch; ++b) {
    float32x4_t y = vdupq_n_f32(0.0f);
    for (std::size_t g = 0; g < G; ++g) {
      const float32x4_t nof = vld1q_f32(noff + 4 * g);
      float32x4_t a = vdupq_n_f32(0.0f);
      for (std::size_t blk = W.first_block(g); blk < W.first_block(g + 1); ++blk) {
        const std::size_t slot = b * nb + blk;
        const std::int8_t* q = p.q.data() + slot * kActivationBlock;
        const int8x16_t qe = vld1q_s8(q), qo = vld1q_s8(q + 16);
        uint8x16_t v0, v1, v2, v3;
        if (const std::uint8_t* c = W.bytes16_in_chunk(r, W.blocks()[blk].byte_begin)) {  // rows kChunkBytes apart
          v0 = vld1q_u8(c);
          v1 = vld1q_u8(c + kChunkBytes);
          v2 = vld1q_u8(c + 2 * kChunkBytes);
          v3 = vld1q_u8(c + 3 * kChunkBytes);
        } else {
          v0 = load_codes(W, r, W.blocks()[blk]);
          v1 = load_codes(W, r + 1, W.blocks()[blk]);
          v2 = load_codes(W, r + 2, W.blocks()[blk]);
          v3 = load_codes(W, r + 3, W.blocks()[blk]);
        }
        const int32x4_t i = vpaddq_s32(
            vpaddq_s32(row_partials<kTable>(v0, table, qe, qo), row_partials<kTable>(v1, table, qe, qo)),
            vpaddq_s32(row_partials<kTable>(v2, table, qe, qo), row_partials<kTable>(v3, table, qe, qo)));
        const float32x4_t t = vfmaq_f32(vcvtq_f32_s32(i), nof, vdupq_n_f32(p.qsum_f[slot]));  // i − off·qsum
        a = vfmaq_f32(a, vdupq_n_f32(p.d[slot]), t);                                          // a + d·t
      }
      y = vfmaq_f32(y, vld1q_f32(sk + 4 * g), a);  // y + scale·k·a
    }
    float out[4];
    vst1q_f32(out, y);
    for (std::size_t j = 0; j < 4; ++j) Y[b * rows + r + j] = out[j];
  }
}

inline void gemm_fast(const PackedMatrix& W, const PreparedActivations& p, float* Y, std::size_t r0,
                      std::size_t r1) {
  const std::size_t G = W.groups_per_row(), rows = W.rows(), nb = W.block_count();
  const bool table_cb = W.table_codebook();
  const int8x16_t table = vld1q_s8(W.int8_base_values().data());
  const float k = W.int8_factor();
  thread_local std::vector<float> sk, noff;  // per thread, so no allocation once warm
  sk.resize(4 * G);
  noff.resize(4 * G);
  std::size_t r = r0;
  auto one_row = [&](std::size_t row) {
    for (std::size_t b = 0; b < p.batch; ++b) {
      float y = 0.0f;
      for (std::size_t g = 0; g < G; ++g) {
        const float off = W.offset(row * G + g);
        float a = 0.0f;
        for (std::size_t blk = W.first_block(g); blk < W.first_block(g + 1); ++blk) {
          const std::size_t slot = b * nb + blk;
          int8x16_t wh, wl;
          const uint8x16_t v = load_codes(W, row, W.blocks()[blk]);
          if (table_cb) block_values<true>(v, table, wh, wl);
          else block_values<false>(v, table, wh, wl);
          const std::int8_t* q = p.q.data() + slot * kActivationBlock;
          const std::int32_t i = block_dot(wh, wl, vld1q_s8(q), vld1q_s8(q + 16));
          const float t = std::fma(-off, p.qsum_f[slot], static_cast<float>(i));
          a = std::fma(p.d[slot], t, a);
        }
        y = std::fma(W.scale(row, g) * k, a, y);
      }
      Y[b * rows + row] = y;
    }
  };
  for (; r < r1 && r % 4 != 0; ++r) one_row(r);  // up to a multiple of 4: then 4 rows share a tile
  for (; r + 4 <= r1; r += 4) {
    for (std::size_t j = 0; j < 4; ++j) {
      W.decode_scales((r + j) * G, G, k, sk.data() + j, 4);
      W.decode_negated_offsets((r + j) * G, G, noff.data() + j, 4);
    }
    if (table_cb) rows4_fast<true>(W, p, Y, r, sk.data(), noff.data(), table);
    else rows4_fast<false>(W, p, Y, r, sk.data(), noff.data(), table);
  }
  for (; r < r1; ++r) one_row(r);  // the last rows of the range
}

// 16 codes → 16 floats of the base values, in 4 vectors.
struct Decoded {
  float32x4_t v[4];
};

inline Decoded decode16(uint8x16_t idx, bool table_cb, const uint8x16_t* planes) {
  Decoded d;
  if (!table_cb) {
    const uint16x8_t lo = vmovl_u8(vget_low_u8(idx)), hi = vmovl_high_u8(idx);
    d.v[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo)));
    d.v[1] = vcvtq_f32_u32(vmovl_high_u16(lo));
    d.v[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi)));
    d.v[3] = vcvtq_f32_u32(vmovl_high_u16(hi));
    return d;
  }
  // Byte k of each float comes from plane k; zip bytes into halves, halves into words.
  const uint8x16_t b0 = vqtbl1q_u8(planes[0], idx), b1 = vqtbl1q_u8(planes[1], idx);
  const uint8x16_t b2 = vqtbl1q_u8(planes[2], idx), b3 = vqtbl1q_u8(planes[3], idx);
  const uint16x8_t l0 = vreinterpretq_u16_u8(vzip1q_u8(b0, b1)), l1 = vreinterpretq_u16_u8(vzip2q_u8(b0, b1));
  const uint16x8_t h0 = vreinterpretq_u16_u8(vzip1q_u8(b2, b3)), h1 = vreinterpretq_u16_u8(vzip2q_u8(b2, b3));
  d.v[0] = vreinterpretq_f32_u16(vzip1q_u16(l0, h0));
  d.v[1] = vreinterpretq_f32_u16(vzip2q_u16(l0, h0));
  d.v[2] = vreinterpretq_f32_u16(vzip1q_u16(l1, h1));
  d.v[3] = vreinterpretq_f32_u16(vzip2q_u16(l1, h1));
  return d;
}

inline void gemm_exact(const PackedMatrix& W, const PreparedActivations& p, float* Y, std::size_t r0,
                       std::size_t r1) {
  const std::size_t G = W.groups_per_row(), rows = W.rows(), nb = W.block_count();
  const bool table_cb = W.table_codebook();
  std::uint8_t plane_bytes[4][16];
  for (int e = 0; e < 16; ++e) {
    std::uint32_t bits;
    std::memcpy(&bits, &W.base_values()[e], 4);
    for (int k = 0; k < 4; ++k) plane_bytes[k][e] = static_cast<std::uint8_t>(bits >> (8 * k));
  }
  const uint8x16_t planes[4] = {vld1q_u8(plane_bytes[0]), vld1q_u8(plane_bytes[1]), vld1q_u8(plane_bytes[2]),
                                vld1q_u8(plane_bytes[3])};
  const uint8x16_t mask = vdupq_n_u8(0x0F);
  for (std::size_t r = r0; r < r1; ++r) {
    for (std::size_t b = 0; b < p.batch; ++b) {
      float y = 0.0f;
      for (std::size_t g = 0; g < G; ++g) {
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
        for (std::size_t blk = W.first_block(g); blk < W.first_block(g + 1); ++blk) {
          const uint8x16_t v = load_codes(W, r, W.blocks()[blk]);
          const Decoded even = decode16(vshrq_n_u8(v, 4), table_cb, planes);
          const Decoded odd = decode16(vandq_u8(v, mask), table_cb, planes);
          const float* x = p.x.data() + (b * nb + blk) * kActivationBlock;
          a0 = vfmaq_f32(a0, even.v[0], vld1q_f32(x));
          a1 = vfmaq_f32(a1, even.v[1], vld1q_f32(x + 4));
          a0 = vfmaq_f32(a0, even.v[2], vld1q_f32(x + 8));
          a1 = vfmaq_f32(a1, even.v[3], vld1q_f32(x + 12));
          a0 = vfmaq_f32(a0, odd.v[0], vld1q_f32(x + 16));
          a1 = vfmaq_f32(a1, odd.v[1], vld1q_f32(x + 20));
          a0 = vfmaq_f32(a0, odd.v[2], vld1q_f32(x + 24));
          a1 = vfmaq_f32(a1, odd.v[3], vld1q_f32(x + 28));
        }
        const float s = W.scale(r, g), off = W.offset(r * G + g);
        y += s * (vaddvq_f32(vaddq_f32(a0, a1)) - off * p.group_sum[b * G + g]);
      }
      Y[b * rows + r] = y;
    }
  }
}

}  // namespace nibble::detail::neon
