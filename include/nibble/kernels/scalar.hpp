// Scalar kernels: the specification every SIMD path is tested against.
//
// exact: straight from the container's definition, per group
//            y_r += s_g · Σ_c (value[code_c] − zero_g) · x_c
//        (summed in column order). SIMD paths match it to float rounding.
// fast:  integer dot products per 32-element block, then float scales in this
//        fixed order, with explicit fma so no compiler contraction can differ:
//            i_b = Σ base8[code]·q               (exact int32)
//            t_b = fma(−offset_g, Σq_b, i_b)
//            a_g = fma(d_b, t_b, a_g)            over the group's blocks, in order
//            y_r = fma(s_g·k, a_g, y_r)          over groups, in order; k = 1, or 1/127 for nf4/fp4 (int8_table_factor)
//        SIMD paths reproduce this bit for bit.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../format/packing.hpp"
#include "activation.hpp"
#include "packed_matrix.hpp"

namespace nibble::detail::scalar {

// Rows [row_begin, row_end) of Y (batch × rows) from fp32 X (batch × cols).
inline void gemm_exact(const PackedMatrix& W, const float* X, std::size_t batch, float* Y, std::size_t row_begin,
                       std::size_t row_end) {
  const auto& values = codebook_values(W.codebook());
  const std::size_t G = W.groups_per_row(), gs = W.group_size(), cols = W.cols(), rows = W.rows();
  const bool asym = W.codebook() == Codebook::uint4_asym;
  std::vector<std::uint8_t> codes(cols);
  for (std::size_t r = row_begin; r < row_end; ++r) {
    for (std::size_t c = 0; c < cols; ++c) {
      const std::uint8_t byte = W.code_byte(r, c / 2);
      codes[c] = c % 2 == 0 ? static_cast<std::uint8_t>(byte >> 4) : static_cast<std::uint8_t>(byte & 0x0F);
    }
    for (std::size_t b = 0; b < batch; ++b) {
      const float* x = X + b * cols;
      float y = 0.0f;
      for (std::size_t g = 0; g < G; ++g) {
        const float s = W.scale(r, g);
        const float z = asym ? W.offset(r * G + g) : 0.0f;
        float acc = 0.0f;
        const std::size_t end = std::min(cols, (g + 1) * gs);
        for (std::size_t c = g * gs; c < end; ++c) acc += (values[codes[c]] - z) * x[c];
        y += s * acc;
      }
      Y[b * rows + r] = y;
    }
  }
}

inline void gemm_fast(const PackedMatrix& W, const PreparedActivations& p, float* Y, std::size_t row_begin,
                      std::size_t row_end) {
  const std::size_t G = W.groups_per_row(), rows = W.rows(), nb = W.block_count();
  const auto& base8 = W.int8_base_values();
  const float k = W.int8_factor();
  for (std::size_t r = row_begin; r < row_end; ++r) {
    for (std::size_t b = 0; b < p.batch; ++b) {
      float y = 0.0f;
      for (std::size_t g = 0; g < G; ++g) {
        const float off = W.offset(r * G + g);
        float a = 0.0f;
        for (std::size_t blk = W.first_block(g); blk < W.first_block(g + 1); ++blk) {
          const BlockSpan& span = W.blocks()[blk];
          const std::int8_t* qv = p.q.data() + (b * nb + blk) * kActivationBlock;
          std::int32_t i = 0;
          for (std::uint32_t j = 0; j < (span.elements + 1) / 2; ++j) {
            const std::uint8_t byte = W.code_byte(r, span.byte_begin + j);
            i += base8[byte >> 4] * qv[j] + base8[byte & 0x0F] * qv[16 + j];
          }
          const float t = std::fma(-off, static_cast<float>(p.qsum[b * nb + blk]), static_cast<float>(i));
          a = std::fma(p.d[b * nb + blk], t, a);
        }
        y = std::fma(W.scale(r, g) * k, a, y);
      }
      Y[b * rows + r] = y;
    }
  }
}

}  // namespace nibble::detail::scalar
