// AVX-512 path of attention_scalar.hpp, bit for bit. A score's 16 partials are one
// __m512; a short last step is a zero-masked load. The mix keeps 16 outputs per
// register and finishes a head size that is not a multiple of 16 with a masked step
// (each lane is the scalar rule's own fma chain).
#pragma once

#include <immintrin.h>

#include <cstddef>

#include "avx512.hpp"
#include "softmax_avx512.hpp"
#include "unroll.hpp"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace nibble::detail::attention_avx512 {

NIBBLE_TARGET_AVX512 inline void scores(const float* q, const float* K, std::size_t stride, std::size_t n,
                                        std::size_t hs, float* s) {
  const std::size_t full = hs / 16 * 16, rest = hs - full;
  const __mmask16 tail = static_cast<__mmask16>((1u << rest) - 1u);
  std::size_t j = 0;
  if (hs == 64) {  // the common head size: two keys at a time, for overlap
    const __m512 q0 = _mm512_loadu_ps(q), q1 = _mm512_loadu_ps(q + 16), q2 = _mm512_loadu_ps(q + 32),
                 q3 = _mm512_loadu_ps(q + 48);
    for (; j + 2 <= n; j += 2) {
      const float* k = K + j * stride;
      const float* l = k + stride;
      __m512 a = _mm512_fmadd_ps(q0, _mm512_loadu_ps(k), _mm512_setzero_ps());
      __m512 b = _mm512_fmadd_ps(q0, _mm512_loadu_ps(l), _mm512_setzero_ps());
      a = _mm512_fmadd_ps(q1, _mm512_loadu_ps(k + 16), a);
      b = _mm512_fmadd_ps(q1, _mm512_loadu_ps(l + 16), b);
      a = _mm512_fmadd_ps(q2, _mm512_loadu_ps(k + 32), a);
      b = _mm512_fmadd_ps(q2, _mm512_loadu_ps(l + 32), b);
      a = _mm512_fmadd_ps(q3, _mm512_loadu_ps(k + 48), a);
      b = _mm512_fmadd_ps(q3, _mm512_loadu_ps(l + 48), b);
      s[j] = softmax_avx512::fold16(a);
      s[j + 1] = softmax_avx512::fold16(b);
    }
  }
  for (; j < n; ++j) {
    const float* k = K + j * stride;
    __m512 a = _mm512_setzero_ps();
    for (std::size_t i = 0; i < full; i += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + i), a);
    if (rest) a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, q + full), _mm512_maskz_loadu_ps(tail, k + full), a);
    s[j] = softmax_avx512::fold16(a);
  }
}

NIBBLE_TARGET_AVX512 inline void mix(const float* p, const float* V, std::size_t stride, std::size_t n,
                                     std::size_t hs, float* out) {
  std::size_t d = 0;
  for (; d + 64 <= hs; d += 64) {  // four independent chains per key
    __m512 o[4];
    for (auto& r : o) r = _mm512_setzero_ps();
    for (std::size_t j = 0; j < n; ++j) {
      const __m512 pj = _mm512_set1_ps(p[j]);
      const float* v = V + j * stride + d;
      NIBBLE_UNROLL
      for (int c = 0; c < 4; ++c) o[c] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(v + 16 * c), o[c]);
    }
    NIBBLE_UNROLL
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(out + d + 16 * c, o[c]);
  }
  for (; d < hs; d += 16) {
    const __mmask16 m = static_cast<__mmask16>(hs - d >= 16 ? 0xFFFFu : (1u << (hs - d)) - 1u);
    __m512 o = _mm512_setzero_ps();
    for (std::size_t j = 0; j < n; ++j)
      o = _mm512_fmadd_ps(_mm512_set1_ps(p[j]), _mm512_maskz_loadu_ps(m, V + j * stride + d), o);
    _mm512_mask_storeu_ps(out + d, m, o);
  }
}

}  // namespace nibble::detail::attention_avx512

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
