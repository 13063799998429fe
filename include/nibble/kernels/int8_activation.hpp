// Activations of the 8-bit kernels (kernels/int8_gemv.hpp), prepared once per call
// and shared by every ISA path, so all paths see bit-identical inputs.
//
// exact mode reads the caller's fp32 activations in place (only checked for finite
// values). fast mode quantizes every 32-element block of every batch row with the
// 4-bit path's rule (activation.hpp, quantize_activation_block): d = amax/127,
// q = round(x·127/amax), ties away from zero, in element order — the Q8_0 blocks
// llama.cpp's CPU backend makes of the activations for a Q8_0 × Q8_0 dot (its x86
// quantizer rounds ties to even instead, which changes a q on exact ties only).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../format/int8_matrix.hpp"
#include "activation.hpp"

namespace nibble::detail {

struct Int8Activations {
  std::size_t batch = 0;
  std::size_t blocks = 0;       // per batch row (cols / 32)
  std::vector<std::int8_t> q;   // batch × cols, element order
  std::vector<float> d;         // batch × blocks
  std::vector<std::int32_t> qsum;  // batch × blocks: Σq (the VNNI path's bias correction)
};

inline void check_finite_activations(const float* X, std::size_t batch, std::size_t cols) {
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t c = 0; c < cols; ++c) check_finite_activation(X[b * cols + c], b, c);
}

inline void prepare_int8_fast(const Int8Matrix& W, const float* X, std::size_t batch, Int8Activations& p) {
  const std::size_t cols = W.cols(), nb = W.blocks_per_row();
  check_finite_activations(X, batch, cols);
  p.batch = batch;
  p.blocks = nb;
  p.q.resize(batch * cols);
  p.d.resize(batch * nb);
  p.qsum.resize(batch * nb);
  for (std::size_t i = 0; i < batch * nb; ++i) {
    const QuantizedBlock qb = quantize_activation_block(X + i * kQ8Block, kQ8Block, p.q.data() + i * kQ8Block);
    p.d[i] = qb.d;
    p.qsum[i] = qb.qsum;
  }
}

}  // namespace nibble::detail
