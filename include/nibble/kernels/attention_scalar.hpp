// One query row of attention against a head's keys and values, the way decode runs it
// (a single new token per step): scores s_j = q·k_j for the n visible keys, and, after
// the softmax, out = Σ_j p_j·v_j. Prefill chunks use matrix products (model/
// transformer.hpp); for one row those are a GEMV each, and a BLAS call per head and
// layer costs more than the arithmetic, so decode takes these loops instead.
//
// This file is the specification; every ISA path (attention_avx2/avx512/neon.hpp)
// gives its result bit for bit:
//   score  16 partials, element i of the head into partial i mod 16 by
//          fma(q_i, k_i, partial) in order from +0, then folded as softmax's sum is:
//          partial j += partial j + w for w = 8, 4, 2, 1 (a short last step reads as
//          if padded with zeros, which leaves a partial as it is);
//   mix    out_d = fma(p_j, v_j,d, out_d) for j = 0, 1, … from out_d = +0.
// K and V rows are `stride` floats apart (a key/value cache row holds every KV head).
#pragma once

#include <cmath>
#include <cstddef>

namespace nibble::detail::attention_scalar {

inline void scores(const float* q, const float* K, std::size_t stride, std::size_t n, std::size_t hs, float* s) {
  for (std::size_t j = 0; j < n; ++j) {
    const float* k = K + j * stride;
    float part[16] = {};
    for (std::size_t i = 0; i < hs; ++i) part[i % 16] = std::fma(q[i], k[i], part[i % 16]);
    for (std::size_t w = 8; w >= 1; w /= 2)
      for (std::size_t m = 0; m < w; ++m) part[m] += part[m + w];
    s[j] = part[0];
  }
}

inline void mix(const float* p, const float* V, std::size_t stride, std::size_t n, std::size_t hs, float* out) {
  for (std::size_t d = 0; d < hs; ++d) out[d] = 0.0f;
  for (std::size_t j = 0; j < n; ++j) {
    const float* v = V + j * stride;
    for (std::size_t d = 0; d < hs; ++d) out[d] = std::fma(p[j], v[d], out[d]);
  }
}

}  // namespace nibble::detail::attention_scalar
