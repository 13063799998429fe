// Scalar kernels of the 8-bit weight form (Int8Matrix): the specification every
// SIMD path reproduces bit for bit. Per output y[b][r], blocks k = 0, 1, ... of row r
// in order, with w_j = q_j of the block (int8), d_k its fp16 scale as a float:
//
// exact (fp32 activations x):
//     t_m = fma(w_{m+16}, x_{m+16}, w_m·x_m)             m = 0..15
//     u_m = t_m + t_{m+8}                                m = 0..7
//     s_k = ((u_0 + u_1) + (u_2 + u_3)) + ((u_4 + u_5) + (u_6 + u_7))
//     y   = fma(d_k, s_k, y)                              from y = 0
//   This order is the one an 8-lane (AVX2), 16-lane (AVX-512) and 4-lane (NEON)
//   register computes naturally with the rows of a tile side by side, so the SIMD
//   results equal these bit for bit. It is within float rounding of Σ d·w·x (tested
//   against a double computation).
// fast (activations quantized per block, int8_activation.hpp: q'_j, d'_k):
//     i_k = Σ_j w_j·q'_j                                  exact int32 (|i_k| <= 32·128·127)
//     y   = fma(d_k·d'_k, float(i_k), y)                  from y = 0; float(i_k) is exact
//   llama.cpp's Q8_0 × Q8_0 dot computes the same sums (its float order differs).
//
// Every fma is explicit, so no compiler contraction choice can make two paths differ.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/half.hpp"
#include "../format/int8_matrix.hpp"
#include "int8_activation.hpp"

namespace nibble::detail::int8_scalar {

// s_k of the exact rule for one block (w: 32 codes, x: 32 floats).
inline float exact_block(const std::int8_t* w, const float* x) {
  float t[16], u[8];
  for (int m = 0; m < 16; ++m)
    t[m] = std::fma(static_cast<float>(w[m + 16]), x[m + 16], static_cast<float>(w[m]) * x[m]);
  for (int m = 0; m < 8; ++m) u[m] = t[m] + t[m + 8];
  return ((u[0] + u[1]) + (u[2] + u[3])) + ((u[4] + u[5]) + (u[6] + u[7]));
}

// Row r of W for the scalar kernels, which read either layout: its codes and fp16
// scales in place when W is row-major, else gathered into buffers sized on first use
// (a row-major call allocates nothing).
struct RowReader {
  std::vector<std::int8_t> codes;
  std::vector<std::uint16_t> scales;
  const std::int8_t* w = nullptr;
  const std::uint16_t* s = nullptr;

  void read(const Int8Matrix& W, std::size_t r) {
    const std::size_t nb = W.blocks_per_row();
    if (W.layout() == Int8Layout::row_major) {
      w = W.row_codes(r);
      s = W.scale_bits().data() + r * nb;
      return;
    }
    codes.resize(W.cols());
    scales.resize(nb);
    W.copy_row_codes(r, codes.data());
    for (std::size_t k = 0; k < nb; ++k) scales[k] = W.scale_bit(r, k);
    w = codes.data();
    s = scales.data();
  }
};

// Rows [r0, r1) of Y (batch × rows) from fp32 X (batch × cols).
inline void gemm_exact(const Int8Matrix& W, const float* X, std::size_t batch, float* Y, std::size_t r0,
                       std::size_t r1) {
  const std::size_t cols = W.cols(), rows = W.rows(), nb = W.blocks_per_row();
  RowReader row;
  for (std::size_t r = r0; r < r1; ++r) {
    row.read(W, r);
    const std::int8_t* w = row.w;
    const std::uint16_t* s = row.s;
    for (std::size_t b = 0; b < batch; ++b) {
      const float* x = X + b * cols;
      float y = 0.0f;
      for (std::size_t k = 0; k < nb; ++k)
        y = std::fma(half_to_float(s[k]), exact_block(w + k * kQ8Block, x + k * kQ8Block), y);
      Y[b * rows + r] = y;
    }
  }
}

inline void gemm_fast(const Int8Matrix& W, const Int8Activations& p, float* Y, std::size_t r0, std::size_t r1) {
  const std::size_t cols = W.cols(), rows = W.rows(), nb = W.blocks_per_row();
  RowReader row;
  for (std::size_t r = r0; r < r1; ++r) {
    row.read(W, r);
    const std::int8_t* w = row.w;
    const std::uint16_t* s = row.s;
    for (std::size_t b = 0; b < p.batch; ++b) {
      const std::int8_t* q = p.q.data() + b * cols;
      const float* dx = p.d.data() + b * nb;
      float y = 0.0f;
      for (std::size_t k = 0; k < nb; ++k) {
        std::int32_t i = 0;
        for (std::size_t j = 0; j < kQ8Block; ++j) i += w[k * kQ8Block + j] * q[k * kQ8Block + j];
        const float dd = half_to_float(s[k]) * dx[k];
        y = std::fma(dd, static_cast<float>(i), y);
      }
      Y[b * rows + r] = y;
    }
  }
}

}  // namespace nibble::detail::int8_scalar
