// AVX2 + FMA + F16C kernels of the 8-bit weight form (Int8Matrix), x86-64 GCC/Clang.
// As in avx2.hpp every function carries the target attribute (no -mavx2 needed);
// only called after cpu.hpp found the features.
//
// Tiles of 8 rows, one row per lane: each block's per-row sums of the 8 rows are
// reduced by one horizontal-add tree into a vector whose lane i belongs to row i, and
// the float steps of int8_scalar.hpp then run lane-wise in its order, so results equal
// the scalar reference bit for bit. The rows stay in the matrix's row-major storage
// (no repacking: the runtime keeps one copy of the bytes); 8 row streams are what the
// hardware prefetchers follow. A last short tile repeats its last row in the unused
// lanes and stores only the real rows. Scales: F16C converts a row's fp16 scales 8 at
// a time and an 8 × 8 transpose puts them in tile order (vcvtph2ps is exact, so the
// floats equal half_to_float's).
//
// fast:  the sign trick, since maddubs wants an unsigned first operand:
//        maddubs(|w|, sign(q, w)) — |w| <= 128 (a code may be −128) and |q| <= 127, so a
//        pair sum is at most 2·128·127 = 32512 and never saturates; madd(1) widens to
//        int32, and the horizontal adds of the tree stay exact.
// exact: w widens to int32 and converts to float (exact); t, u and the lane tree are
//        the scalar rule's (t_lo = lanes m 0..7, t_hi = lanes 8..15, u = t_lo + t_hi).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/half.hpp"
#include "../format/int8_matrix.hpp"
#include "avx2.hpp"
#include "int8_activation.hpp"
#include "unroll.hpp"

namespace nibble::detail::int8_avx2 {

// The 8 rows of the tile starting at row r (nr real rows) and their scales.
struct Tile {
  const std::int8_t* row[8];
  const std::uint16_t* scales[8];
};

inline Tile make_tile(const Int8Matrix& W, std::size_t r, std::size_t nr) {
  Tile t;
  const std::size_t nb = W.blocks_per_row();
  NIBBLE_UNROLL
  for (std::size_t i = 0; i < 8; ++i) {
    const std::size_t row = r + std::min(i, nr - 1);
    t.row[i] = W.row_codes(row);
    t.scales[i] = W.scale_bits().data() + row * nb;
  }
  return t;
}

// sv[8k + i] = scale of the tile's row i, block k, for k < nb.
NIBBLE_TARGET_AVX2 inline void tile_scales(const Tile& t, std::size_t nb, float* sv) {
  std::size_t k = 0;
  for (; k + 8 <= nb; k += 8) {
    __m256 m[8];
    NIBBLE_UNROLL
    for (std::size_t i = 0; i < 8; ++i)
      m[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t.scales[i] + k)));
    avx2::transpose8(m);
    NIBBLE_UNROLL
    for (std::size_t j = 0; j < 8; ++j) _mm256_storeu_ps(sv + 8 * (k + j), m[j]);
  }
  for (; k < nb; ++k)
    for (std::size_t i = 0; i < 8; ++i) sv[8 * k + i] = _cvtsh_ss(t.scales[i][k]);
}

// Lane i of the result = the lane sum of row i's vector, for two halves of the tree:
// q0 holds rows 0..3 (hadd of hadds), q1 rows 4..7; see finish_tree.
NIBBLE_TARGET_AVX2 inline __m256 finish_tree(__m256 q0, __m256 q1) {
  // q0 = [r0 r1 r2 r3 (lanes 0..3 sums) | r0 r1 r2 r3 (lanes 4..7 sums)], q1 the same for rows 4..7.
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}
NIBBLE_TARGET_AVX2 inline __m256i finish_tree(__m256i q0, __m256i q1) {
  return _mm256_add_epi32(_mm256_permute2x128_si256(q0, q1, 0x20), _mm256_permute2x128_si256(q0, q1, 0x31));
}

// Row-major storage puts a tile's 8 rows in one contiguous run of 8·cols bytes, and the
// next tile right after it. Block step k of a tile's nb steps requests the k-th
// 1/nb-th of the next tile, so the whole next tile is on its way one tile ahead (the
// 8 row streams read 32 bytes each per step, too little for the hardware prefetchers
// to run far enough ahead from DRAM). Into L2, as avx2::pair_chunk (q8_0 cold 16384² at
// 1 thread on AMD EPYC Zen 4: 9.8 GB/s with T0, 14.9–16.3 with T1). The address is
// formed as an integer: a prefetch past the buffer's end is harmless and no
// out-of-range pointer arithmetic happens.
NIBBLE_TARGET_AVX2 inline void prefetch_next_tile(const Tile& t, std::size_t cols, std::size_t k) {
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(t.row[0]) + 8 * cols + 8 * kQ8Block * k;
  for (std::size_t line = 0; line < 8 * kQ8Block; line += 64)
    _mm_prefetch(reinterpret_cast<const char*>(at + line), _MM_HINT_T1);
}

NIBBLE_TARGET_AVX2 inline __m256 widen8(const std::int8_t* w) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
}

// u (int8_scalar.hpp's exact rule) of one row's block at w for NB batch rows of x.
template <int NB>
NIBBLE_TARGET_AVX2 __attribute__((always_inline)) inline void exact_u(const std::int8_t* w, const float* x,
                                                                      std::size_t cols, __m256* u) {
  const __m256 e0 = widen8(w), e1 = widen8(w + 8), e2 = widen8(w + 16), e3 = widen8(w + 24);
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) {
    const float* xj = x + static_cast<std::size_t>(j) * cols;
    const __m256 lo = _mm256_fmadd_ps(e2, _mm256_loadu_ps(xj + 16), _mm256_mul_ps(e0, _mm256_loadu_ps(xj)));
    const __m256 hi = _mm256_fmadd_ps(e3, _mm256_loadu_ps(xj + 24), _mm256_mul_ps(e1, _mm256_loadu_ps(xj + 8)));
    u[j] = _mm256_add_ps(lo, hi);
  }
}

// Tile kernels: the tile's 8 results for batch rows [b0, b0 + NB) to out[8j + i].
// exact reads X (batch × cols fp32), fast reads p.
using TileFn = void (*)(const Int8Matrix& W, const Tile& t, const float* sv, const float* X,
                        const Int8Activations& p, std::size_t b0, float* out);

template <int NB>
NIBBLE_TARGET_AVX2 inline void exact_tile(const Int8Matrix& W, const Tile& t, const float* sv, const float* X,
                                          const Int8Activations&, std::size_t b0, float* out) {
  const std::size_t nb = W.blocks_per_row(), cols = W.cols();
  __m256 y[NB];
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) y[j] = _mm256_setzero_ps();
  for (std::size_t k = 0; k < nb; ++k) {
    prefetch_next_tile(t, cols, k);
    const float* x = X + b0 * cols + k * kQ8Block;
    // The tree built as rows arrive (pairs, then quads), so few vectors are live.
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
    for (int j = 0; j < NB; ++j) y[j] = _mm256_fmadd_ps(d, finish_tree(quad[0][j], quad[1][j]), y[j]);
  }
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) _mm256_storeu_ps(out + 8 * j, y[j]);
}

// Σ w·q of one row's block at w (32 bytes) with activations q: 8 int32 partial sums.
NIBBLE_TARGET_AVX2 inline __m256i dot32(__m256i w, __m256i absw, const std::int8_t* q) {
  const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(absw, _mm256_sign_epi8(qv, w)), _mm256_set1_epi16(1));
}

// Exact int32 sums of block k for the tile's rows (lane i = row i), batch rows [b0, b0 + NB).
// Also the AVX-512 path's step for a block left over after its block pairs.
template <int NB>
NIBBLE_TARGET_AVX2 __attribute__((always_inline)) inline void fast_block_sums(const Tile& t, std::size_t k,
                                                                              const Int8Activations& p,
                                                                              std::size_t cols, std::size_t b0,
                                                                              __m256i* isum) {
  const std::int8_t* q = p.q.data() + b0 * cols + k * kQ8Block;
  __m256i quad[2][NB];
  NIBBLE_UNROLL
  for (int h = 0; h < 2; ++h) {
    __m256i pair[2][NB];
    NIBBLE_UNROLL
    for (int pr = 0; pr < 2; ++pr) {
      const __m256i wa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.row[4 * h + 2 * pr] + k * kQ8Block));
      const __m256i wb =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t.row[4 * h + 2 * pr + 1] + k * kQ8Block));
      const __m256i aa = _mm256_sign_epi8(wa, wa), ab = _mm256_sign_epi8(wb, wb);  // −128 stays 0x80 = 128 unsigned
      NIBBLE_UNROLL
      for (int j = 0; j < NB; ++j) {
        const std::int8_t* qj = q + static_cast<std::size_t>(j) * cols;
        pair[pr][j] = _mm256_hadd_epi32(dot32(wa, aa, qj), dot32(wb, ab, qj));
      }
    }
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) quad[h][j] = _mm256_hadd_epi32(pair[0][j], pair[1][j]);
  }
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) isum[j] = finish_tree(quad[0][j], quad[1][j]);
}

// y = fma(d_w·d_x, float(isum), y), lane-wise: the scalar reference's float step.
NIBBLE_TARGET_AVX2 inline __m256 fast_step(__m256 y, const float* sv_k, float dx, __m256i isum) {
  return _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(sv_k), _mm256_set1_ps(dx)), _mm256_cvtepi32_ps(isum), y);
}

template <int NB>
NIBBLE_TARGET_AVX2 inline void fast_tile(const Int8Matrix& W, const Tile& t, const float* sv, const float*,
                                         const Int8Activations& p, std::size_t b0, float* out) {
  const std::size_t nb = W.blocks_per_row(), cols = W.cols();
  __m256 y[NB];
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) y[j] = _mm256_setzero_ps();
  for (std::size_t k = 0; k < nb; ++k) {
    prefetch_next_tile(t, cols, k);
    __m256i isum[NB];
    fast_block_sums<NB>(t, k, p, cols, b0, isum);
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) y[j] = fast_step(y[j], sv + 8 * k, p.d[(b0 + static_cast<std::size_t>(j)) * nb + k], isum[j]);
  }
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) _mm256_storeu_ps(out + 8 * j, y[j]);
}

// Rows [r0, r1) tile by tile (any r0): the tile's scales, then the batch in steps of 4,
// 2 and 1 rows. Shared with the AVX-512 path, which brings its own tile kernels.
template <TileFn Tile1, TileFn Tile2, TileFn Tile4>
NIBBLE_TARGET_AVX2 inline void run_tiles(const Int8Matrix& W, const float* X, const Int8Activations& p,
                                         std::size_t batch, float* Y, std::size_t r0, std::size_t r1) {
  const std::size_t rows = W.rows();
  std::vector<float> sv(8 * W.blocks_per_row());
  alignas(32) float out[8 * 4];
  for (std::size_t r = r0; r < r1; r += 8) {
    const std::size_t nr = std::min<std::size_t>(8, r1 - r);
    const Tile t = make_tile(W, r, nr);
    tile_scales(t, W.blocks_per_row(), sv.data());
    for (std::size_t b = 0; b < batch;) {
      std::size_t step = 1;
      if (batch - b >= 4) {
        step = 4;
        Tile4(W, t, sv.data(), X, p, b, out);
      } else if (batch - b >= 2) {
        step = 2;
        Tile2(W, t, sv.data(), X, p, b, out);
      } else {
        Tile1(W, t, sv.data(), X, p, b, out);
      }
      for (std::size_t j = 0; j < step; ++j)
        for (std::size_t i = 0; i < nr; ++i) Y[(b + j) * rows + r + i] = out[8 * j + i];
      b += step;
    }
  }
}

NIBBLE_TARGET_AVX2 inline void gemm_exact(const Int8Matrix& W, const float* X, std::size_t batch, float* Y,
                                          std::size_t r0, std::size_t r1) {
  static const Int8Activations none;
  run_tiles<exact_tile<1>, exact_tile<2>, exact_tile<4>>(W, X, none, batch, Y, r0, r1);
}

NIBBLE_TARGET_AVX2 inline void gemm_fast(const Int8Matrix& W, const Int8Activations& p, float* Y, std::size_t r0,
                                         std::size_t r1) {
  run_tiles<fast_tile<1>, fast_tile<2>, fast_tile<4>>(W, nullptr, p, p.batch, Y, r0, r1);
}

}  // namespace nibble::detail::int8_avx2
