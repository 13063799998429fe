// AVX2 path of attention_scalar.hpp, bit for bit. A score's 16 partials are two
// __m256 (partials 0–7 and 8–15); a short last step is a masked load, whose
// masked-off lanes read 0. The mix keeps 8 outputs per register; a head size that is
// not a multiple of 8 finishes with the scalar rule, which is the same per lane.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstddef>

#include "avx2.hpp"
#include "softmax_avx2.hpp"
#include "unroll.hpp"

namespace nibble::detail::attention_avx2 {

// Loads lanes i < rest of p (rest 1..8), zeros the others.
NIBBLE_TARGET_AVX2 inline __m256 load_first(const float* p, std::size_t rest) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(rest)), lane));
}

NIBBLE_TARGET_AVX2 inline void scores(const float* q, const float* K, std::size_t stride, std::size_t n,
                                      std::size_t hs, float* s) {
  const std::size_t full = hs / 16 * 16, rest = hs - full;
  for (std::size_t j = 0; j < n; ++j) {
    const float* k = K + j * stride;
    __m256 a = _mm256_setzero_ps(), b = a;
    for (std::size_t i = 0; i < full; i += 16) {
      a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), a);
      b = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), _mm256_loadu_ps(k + i + 8), b);
    }
    if (rest) {
      a = _mm256_fmadd_ps(load_first(q + full, rest < 8 ? rest : 8), load_first(k + full, rest < 8 ? rest : 8), a);
      if (rest > 8) b = _mm256_fmadd_ps(load_first(q + full + 8, rest - 8), load_first(k + full + 8, rest - 8), b);
    }
    s[j] = softmax_avx2::fold16(a, b);
  }
}

NIBBLE_TARGET_AVX2 inline void mix(const float* p, const float* V, std::size_t stride, std::size_t n,
                                   std::size_t hs, float* out) {
  std::size_t d = 0;
  for (; d + 32 <= hs; d += 32) {  // four independent chains per key
    __m256 o[4];
    for (auto& r : o) r = _mm256_setzero_ps();
    for (std::size_t j = 0; j < n; ++j) {
      const __m256 pj = _mm256_set1_ps(p[j]);
      const float* v = V + j * stride + d;
      NIBBLE_UNROLL
      for (int c = 0; c < 4; ++c) o[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(v + 8 * c), o[c]);
    }
    NIBBLE_UNROLL
    for (int c = 0; c < 4; ++c) _mm256_storeu_ps(out + d + 8 * c, o[c]);
  }
  for (; d + 8 <= hs; d += 8) {
    __m256 o = _mm256_setzero_ps();
    for (std::size_t j = 0; j < n; ++j) o = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(V + j * stride + d), o);
    _mm256_storeu_ps(out + d, o);
  }
  for (; d < hs; ++d) {
    float o = 0.0f;
    for (std::size_t j = 0; j < n; ++j) o = std::fma(p[j], V[j * stride + d], o);
    out[d] = o;
  }
}

}  // namespace nibble::detail::attention_avx2
