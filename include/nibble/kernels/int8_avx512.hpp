// AVX-512 kernels of the 8-bit weight form (F + BW + VL; VNNI's vpdpbusd where the CPU
// has it), x86-64 GCC/Clang. The tile, lane order and float steps are int8_avx2.hpp's,
// so results equal the scalar reference bit for bit.
//
// fast:  two blocks per step: one 64-byte load per row holds blocks k and k+1, and the
//        activations of both are one 64-byte load. Integer dot products, 4 bytes per
//        int32 lane:
//          VNNI:    vpdpbusd(w + 128, q) (w xor 0x80 is w + 128 as an unsigned byte), and
//                   128·Σq of the block subtracted after: no sign fix-ups at all.
//          no VNNI: maddubs(|w|, q negated where w < 0) + madd(1) (AVX-512 has no vpsignb).
//        Per row the four 128-bit lanes hold [block k | block k | block k+1 | block k+1]
//        partials; two lane shuffles per row pair bring them to the layout of
//        avx512::pair_sums, which returns [block k rows 0..7 | block k+1 rows 0..7]. A
//        last odd block takes the AVX2 single-block step.
// exact: 16 weights per vector: t = fma(w[16..31], x[16..31], w[0..15]·x[0..15]) is the
//        scalar rule's t_0..15 at once, u = its two halves added, then the AVX2 tree.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "../format/int8_matrix.hpp"
#include "avx512.hpp"
#include "int8_activation.hpp"
#include "int8_avx2.hpp"
#include "unroll.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace nibble::detail::int8_avx512 {

NIBBLE_TARGET_AVX512 inline __m256 high_half(__m512 v) {
  return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

// u of one row's block at w for NB batch rows of x (int8_avx2::exact_u, 16 lanes wide).
template <int NB>
NIBBLE_TARGET_AVX512 __attribute__((always_inline)) inline void exact_u(const std::int8_t* w, const float* x,
                                                                        std::size_t cols, __m256* u) {
  const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
  const __m512 hi =
      _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16))));
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) {
    const float* xj = x + static_cast<std::size_t>(j) * cols;
    const __m512 t = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xj + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xj)));
    u[j] = _mm256_add_ps(_mm512_castps512_ps256(t), high_half(t));
  }
}

template <int NB>
NIBBLE_TARGET_AVX512 inline void exact_tile(const Int8Matrix& W, const int8_avx2::Tile& t, const float* sv,
                                            const float* X, const Int8Activations&, std::size_t b0, float* out) {
  const std::size_t nb = W.blocks_per_row(), cols = W.cols();
  __m256 y[NB];
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) y[j] = _mm256_setzero_ps();
  for (std::size_t k = 0; k < nb; ++k) {
    int8_avx2::prefetch_next_tile(t, cols, k);
    const float* x = X + b0 * cols + k * kQ8Block;
    __m256 quad[2][NB];
    NIBBLE_UNROLL
    for (int h = 0; h < 2; ++h) {
      __m256 pair[2][NB];
      NIBBLE_UNROLL
      for (int pr = 0; pr < 2; ++pr) {
        __m256 ua[NB], ub[NB];
        exact_u<NB>(t.row[4 * h + 2 * pr] + k * kQ8Block, x, cols, ua);
        exact_u<NB>(t.row[4 * h + 2 * pr + 1] + k * kQ8Block, x, cols, ub);
        NIBBLE_UNROLL
        for (int j = 0; j < NB; ++j) pair[pr][j] = _mm256_hadd_ps(ua[j], ub[j]);
      }
      NIBBLE_UNROLL
      for (int j = 0; j < NB; ++j) quad[h][j] = _mm256_hadd_ps(pair[0][j], pair[1][j]);
    }
    const __m256 d = _mm256_loadu_ps(sv + 8 * k);
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) y[j] = _mm256_fmadd_ps(d, int8_avx2::finish_tree(quad[0][j], quad[1][j]), y[j]);
  }
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) _mm256_storeu_ps(out + 8 * j, y[j]);
}

// 64 weight bytes of one row made ready for dot(): VNNI w + 128; else |w| and w's sign mask.
struct Weights {
  __m512i u;
  __mmask64 neg;
};

template <bool kVnni>
NIBBLE_TARGET_AVX512 inline Weights load_weights(const std::int8_t* w) {
  const __m512i v = _mm512_loadu_si512(w);
  if constexpr (kVnni) return {_mm512_xor_si512(v, _mm512_set1_epi8(static_cast<char>(0x80))), 0};
  else return {_mm512_abs_epi8(v), _mm512_movepi8_mask(v)};  // |−128| = 0x80 = 128 unsigned
}

// 16 int32 partial sums of w·q (VNNI: of (w + 128)·q). Without VNNI a maddubs pair is at
// most 2·128·127 = 32512: no saturation.
template <bool kVnni>
NIBBLE_TARGET_AVX512 inline __m512i dot(const Weights& w, __m512i q) {
  if constexpr (kVnni) {
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), w.u, q);
  } else {
    const __m512i qs = _mm512_mask_sub_epi8(q, w.neg, _mm512_setzero_si512(), q);
    return _mm512_madd_epi16(_mm512_maddubs_epi16(w.u, qs), _mm512_set1_epi16(1));
  }
}

// Rows 2m, 2m+1 (a, b: lanes [k | k | k+1 | k+1] each) → [a: k, a: k+1, b: k, b: k+1],
// 4 partial sums per 128-bit lane: the input avx512::pair_sums expects.
NIBBLE_TARGET_AVX512 inline __m512i combine_rows(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i64x2(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

template <bool kVnni, int NB>
NIBBLE_TARGET_AVX512 inline void fast_tile(const Int8Matrix& W, const int8_avx2::Tile& t, const float* sv,
                                           const float*, const Int8Activations& p, std::size_t b0, float* out) {
  const std::size_t nb = W.blocks_per_row(), cols = W.cols();
  __m256 y[NB];
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) y[j] = _mm256_setzero_ps();
  std::size_t k = 0;
  for (; k + 2 <= nb; k += 2) {
    int8_avx2::prefetch_next_tile(t, cols, k);
    int8_avx2::prefetch_next_tile(t, cols, k + 1);
    Weights w[8];
    NIBBLE_UNROLL
    for (int i = 0; i < 8; ++i) w[i] = load_weights<kVnni>(t.row[i] + k * kQ8Block);
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) {
      const std::size_t slot = (b0 + static_cast<std::size_t>(j)) * nb + k;
      const __m512i q = _mm512_loadu_si512(p.q.data() + slot * kQ8Block);
      __m512i acc[4];
      NIBBLE_UNROLL
      for (int m = 0; m < 4; ++m) acc[m] = combine_rows(dot<kVnni>(w[2 * m], q), dot<kVnni>(w[2 * m + 1], q));
      __m512i sums = avx512::pair_sums(acc);
      if constexpr (kVnni) {  // remove the + 128 bias: 128·Σq of each block
        const __m512i qsum = _mm512_inserti64x4(_mm512_set1_epi32(p.qsum[slot]), _mm256_set1_epi32(p.qsum[slot + 1]), 1);
        sums = _mm512_sub_epi32(sums, _mm512_slli_epi32(qsum, 7));
      }
      y[j] = int8_avx2::fast_step(y[j], sv + 8 * k, p.d[slot], _mm512_castsi512_si256(sums));
      y[j] = int8_avx2::fast_step(y[j], sv + 8 * (k + 1), p.d[slot + 1], _mm512_extracti64x4_epi64(sums, 1));
    }
  }
  if (k < nb) {
    int8_avx2::prefetch_next_tile(t, cols, k);
    __m256i isum[NB];
    int8_avx2::fast_block_sums<NB>(t, k, p, cols, b0, isum);
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j)
      y[j] = int8_avx2::fast_step(y[j], sv + 8 * k, p.d[(b0 + static_cast<std::size_t>(j)) * nb + k], isum[j]);
  }
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) _mm256_storeu_ps(out + 8 * j, y[j]);
}

NIBBLE_TARGET_AVX512 inline void gemm_exact(const Int8Matrix& W, const float* X, std::size_t batch, float* Y,
                                            std::size_t r0, std::size_t r1) {
  static const Int8Activations none;
  int8_avx2::run_tiles<exact_tile<1>, exact_tile<2>, exact_tile<4>>(W, X, none, batch, Y, r0, r1);
}

// vnni: whether to use vpdpbusd (cpu.hpp's avx512vnni).
NIBBLE_TARGET_AVX512 inline void gemm_fast(const Int8Matrix& W, const Int8Activations& p, float* Y, std::size_t r0,
                                           std::size_t r1, bool vnni) {
  if (vnni)
    int8_avx2::run_tiles<fast_tile<true, 1>, fast_tile<true, 2>, fast_tile<true, 4>>(W, nullptr, p, p.batch, Y, r0, r1);
  else
    int8_avx2::run_tiles<fast_tile<false, 1>, fast_tile<false, 2>, fast_tile<false, 4>>(W, nullptr, p, p.batch, Y, r0,
                                                                                        r1);
}

// ---- row_panels layout (format/int8_matrix.hpp), VNNI fast mode ----------------------
// One int32 lane per row: a 64-byte load is dword d of block k for 16 rows, and
// vpdpbusd(w + 128, broadcast activation dword d) adds its 4 products to each row's
// sum. No horizontal sums: after 8 dwords each lane holds the block's i_k + 128·Σq,
// and the scalar rule's float step runs 16 rows wide (scales: one vcvtph2ps).

// y[j] for rows of panel pn, batch rows b0 .. b0+NB-1 (lanes past the matrix's rows
// hold padding and are not stored).
template <int NB>
NIBBLE_TARGET_AVX512 inline void panel_fast_rows(const Int8Matrix& W, const Int8Activations& p, std::size_t pn,
                                                 std::size_t b0, __m512* y) {
  const std::size_t nb = W.blocks_per_row(), cols = W.cols();
  const std::int8_t* codes = W.codes().data() + pn * kInt8PanelRows * cols;
  const std::uint16_t* scales = W.scale_bits().data() + pn * kInt8PanelRows * nb;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) y[j] = _mm512_setzero_ps();
  for (std::size_t k = 0; k < nb; ++k) {
    const std::int8_t* block = codes + k * 8 * 64;
    const std::uintptr_t ahead = reinterpret_cast<std::uintptr_t>(block) + avx2::kPrefetchBytes;
    __m512i acc[NB];
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) acc[j] = _mm512_setzero_si512();
    NIBBLE_UNROLL
    for (std::size_t d = 0; d < 8; ++d) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + 64 * d), _MM_HINT_T1);
      const __m512i w = _mm512_xor_si512(_mm512_loadu_si512(block + 64 * d), bias);
      NIBBLE_UNROLL
      for (int j = 0; j < NB; ++j) {
        std::int32_t q4;
        std::memcpy(&q4, p.q.data() + ((b0 + static_cast<std::size_t>(j)) * nb + k) * kQ8Block + 4 * d, 4);
        acc[j] = _mm512_dpbusd_epi32(acc[j], w, _mm512_set1_epi32(q4));
      }
    }
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + k * kInt8PanelRows)));
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) {
      const std::size_t slot = (b0 + static_cast<std::size_t>(j)) * nb + k;
      const __m512i isum = _mm512_sub_epi32(acc[j], _mm512_set1_epi32(p.qsum[slot] * 128));
      const __m512 dd = _mm512_mul_ps(s, _mm512_set1_ps(p.d[slot]));
      y[j] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(isum), y[j]);
    }
  }
}

// Rows [r0, r1) of Y (r0 on a panel boundary) from a row_panels matrix.
NIBBLE_TARGET_AVX512 inline void panel_gemm_fast(const Int8Matrix& W, const Int8Activations& p, float* Y,
                                                 std::size_t r0, std::size_t r1) {
  const std::size_t rows = W.rows();
  for (std::size_t r = r0; r < r1; r += kInt8PanelRows) {
    const std::size_t pn = r / kInt8PanelRows, nr = std::min(kInt8PanelRows, r1 - r);
    const __mmask16 keep = static_cast<__mmask16>(nr == 16 ? 0xFFFFu : (1u << nr) - 1u);
    __m512 y[4];
    std::size_t b = 0;
    for (; b + 4 <= p.batch; b += 4) {
      panel_fast_rows<4>(W, p, pn, b, y);
      NIBBLE_UNROLL
      for (std::size_t j = 0; j < 4; ++j) _mm512_mask_storeu_ps(Y + (b + j) * rows + r, keep, y[j]);
    }
    for (; b < p.batch; ++b) {
      panel_fast_rows<1>(W, p, pn, b, y);
      _mm512_mask_storeu_ps(Y + b * rows + r, keep, y[0]);
    }
  }
}

}  // namespace nibble::detail::int8_avx512

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
