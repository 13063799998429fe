// Activation preparation, done once per call and shared by every ISA path, so all
// paths see bit-identical inputs.
//
// Both modes follow the PackedMatrix block plan (blocks of 32 elements inside a
// group) and store each block de-interleaved: 16 even elements, then 16 odd ones,
// zero-padded. Byte k of a block's codes then pairs its high nibble with slot k and
// its low nibble with slot 16 + k.
//
// exact mode: fp32 values, plus the plain sum of x over each group (for offsets).
// fast mode:  per block, d = absmax/127 and q = round(x·(127/absmax)) clamped to
//             [−127, 127], rounding to nearest with ties away from zero; an
//             all-zero block has d = 0 and q = 0. Also Σq per block (for offsets).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "packed_matrix.hpp"

namespace nibble {

enum class ActivationMode { exact, fast };

namespace detail {

struct PreparedActivations {
  std::size_t batch = 0;
  std::size_t blocks = 0;  // per batch row
  std::size_t groups = 0;  // per batch row
  // exact
  std::vector<float> x;       // batch × blocks × 32
  std::vector<float> group_sum;  // batch × groups
  // fast
  std::vector<std::int8_t> q;     // batch × blocks × 32
  std::vector<float> d;           // batch × blocks
  std::vector<std::int32_t> qsum; // batch × blocks
  std::vector<float> qsum_f;      // the same sums as floats (exact: |Σq| <= 32·127)
};

inline void check_finite_activation(float v, std::size_t b, std::size_t c) {
  if (!std::isfinite(v)) throw_error("activation at batch row ", b, ", column ", c, " is not finite (", v, ")");
}

struct QuantizedBlock {
  float d;            // amax / 127 (0 for an all-zero block)
  std::int32_t qsum;  // Σq
};

// Fast mode's rule for one block of n <= 32 activations (shared with the 8-bit
// kernels, kernels/int8_activation.hpp): q[i] = round(src[i]·(127/amax)), to nearest
// with ties away from zero, clamped to [−127, 127], in element order; an all-zero
// block gives q = 0 and d = 0.
inline QuantizedBlock quantize_activation_block(const float* src, std::size_t n, std::int8_t* q) {
  float amax = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    const float a = std::fabs(src[i]);
    amax = a > amax ? a : amax;
  }
  if (amax == 0.0f) {
    for (std::size_t i = 0; i < n; ++i) q[i] = 0;
    return {0.0f, 0};
  }
  const float inv = 127.0f / amax;
  // Below amax ≈ 3.7e-37 the reciprocal overflows to inf; such blocks divide instead
  // (the common path keeps its single multiply, so its results do not change).
  const bool tiny = !(inv <= 3.0e38f);
  std::int32_t qsum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float v = tiny ? src[i] / amax * 127.0f : src[i] * inv;
    // |v| <= 127 up to rounding, so the truncating conversion cannot overflow.
    int r = static_cast<int>(v + (v >= 0.0f ? 0.5f : -0.5f));
    r = r > 127 ? 127 : (r < -127 ? -127 : r);
    q[i] = static_cast<std::int8_t>(r);
    qsum += r;
  }
  return {amax / 127.0f, qsum};
}

inline void prepare_exact(const PackedMatrix& W, const float* X, std::size_t batch, PreparedActivations& p) {
  const std::size_t nb = W.block_count(), G = W.groups_per_row(), cols = W.cols();
  p.batch = batch;
  p.blocks = nb;
  p.groups = G;
  p.x.assign(batch * nb * kActivationBlock, 0.0f);
  p.group_sum.assign(batch * G, 0.0f);
  for (std::size_t b = 0; b < batch; ++b) {
    const float* x = X + b * cols;
    for (std::size_t c = 0; c < cols; ++c) check_finite_activation(x[c], b, c);
    float* out = p.x.data() + b * nb * kActivationBlock;
    for (std::size_t g = 0; g < G; ++g) {
      float sum = 0.0f;
      for (std::size_t k = W.first_block(g); k < W.first_block(g + 1); ++k) {
        const BlockSpan& blk = W.blocks()[k];
        const float* src = x + 2 * static_cast<std::size_t>(blk.byte_begin);
        float* dst = out + k * kActivationBlock;
        for (std::uint32_t i = 0; i < blk.elements; ++i) {
          dst[(i % 2) * 16 + i / 2] = src[i];
          sum += src[i];
        }
      }
      p.group_sum[b * G + g] = sum;
    }
  }
}

// A SIMD version of fast mode's rule for one whole block of 32: writes the 32 codes
// de-interleaved (16 even elements, then 16 odd ones) and returns true, or returns false
// and writes nothing when the block needs the scalar path (a non-finite value, or an
// amax so small that the rule divides). Its results equal quantize_activation_block's.
using FullBlockQuantizer = bool (*)(const float* src, std::int8_t* dst, QuantizedBlock* out);

inline void prepare_fast(const PackedMatrix& W, const float* X, std::size_t batch, PreparedActivations& p,
                         FullBlockQuantizer full_block = nullptr) {
  const std::size_t nb = W.block_count(), cols = W.cols();
  p.batch = batch;
  p.blocks = nb;
  p.groups = W.groups_per_row();
  p.q.assign(batch * nb * kActivationBlock, 0);
  p.d.assign(batch * nb, 0.0f);
  p.qsum.assign(batch * nb, 0);
  p.qsum_f.assign(batch * nb, 0.0f);
  for (std::size_t b = 0; b < batch; ++b) {
    const float* x = X + b * cols;
    // The whole row is checked first, so the error names its first non-finite column;
    // with a SIMD quantizer each block it takes is checked by it instead.
    if (full_block == nullptr)
      for (std::size_t c = 0; c < cols; ++c) check_finite_activation(x[c], b, c);
    for (std::size_t k = 0; k < nb; ++k) {
      const BlockSpan& blk = W.blocks()[k];
      const std::size_t slot = b * nb + k, c0 = 2 * static_cast<std::size_t>(blk.byte_begin);
      std::int8_t* dst = p.q.data() + slot * kActivationBlock;
      QuantizedBlock qb;
      if (full_block == nullptr || blk.elements != kActivationBlock || !full_block(x + c0, dst, &qb)) {
        if (full_block != nullptr)
          for (std::size_t c = c0; c < c0 + blk.elements; ++c) check_finite_activation(x[c], b, c);
        std::int8_t q[kActivationBlock];
        qb = quantize_activation_block(x + c0, blk.elements, q);
        for (std::uint32_t i = 0; i < blk.elements; ++i) dst[(i % 2) * 16 + i / 2] = q[i];
      }
      p.d[slot] = qb.d;
      p.qsum[slot] = qb.qsum;
      p.qsum_f[slot] = static_cast<float>(qb.qsum);
    }
  }
}

}  // namespace detail
}  // namespace nibble
