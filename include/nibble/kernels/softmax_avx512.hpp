// AVX-512 path of softmax_scalar.hpp, bit for bit: 16 elements per step, one vector
// whose lanes are the specification's 16 partial sums. A last short step uses masked
// loads (masked-off lanes: −inf for the max, whose exp is 0) and a masked store.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <limits>

#include "avx512.hpp"
#include "softmax_avx2.hpp"
#include "softmax_scalar.hpp"

// GCC bug 105593 (see avx512.hpp): false uninitialized warnings from its intrinsics.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace nibble::detail::softmax_avx512 {

// exp_for_softmax on 16 lanes, in its order of operations.
NIBBLE_TARGET_AVX512 inline __m512 exp16(__m512 x) {
  using namespace softmax_exp;
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kLowest), _CMP_NLT_UQ);  // not below: NaN is kept
  x = _mm512_min_ps(_mm512_set1_ps(kHighest), x);  // a NaN x stays NaN (min returns its second operand)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Hi), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(-kLn2Lo), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(kP0), r, _mm512_set1_ps(kP1));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP2));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP3));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP4));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kP5));
  const __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  // 2ⁿ from its exponent bits: n is in [−126, 127] on every lane that is kept.
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(keep, y, _mm512_castsi512_ps(bits));
}

// The 16 partials of one vector folded by the whole tree, w = 8, 4, 2, 1 (also the score
// fold of attention_avx512.hpp).
NIBBLE_TARGET_AVX512 inline float fold16(__m512 s) {
  return softmax_avx2::fold16(_mm512_castps512_ps256(s), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
}

NIBBLE_TARGET_AVX512 inline void softmax(float* v, std::size_t n) {
  const std::size_t full = n / 16 * 16, rest = n - full;
  const __mmask16 tail = static_cast<__mmask16>((1u << rest) - 1u);
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m = neg_inf;
  for (std::size_t i = 0; i < full; i += 16) m = _mm512_max_ps(_mm512_loadu_ps(v + i), m);  // NaN leaves the max
  if (rest) m = _mm512_max_ps(_mm512_mask_loadu_ps(neg_inf, tail, v + full), m);
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));

  __m512 s = _mm512_setzero_ps();
  for (std::size_t i = 0; i < full; i += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(v + i), mx));
    _mm512_storeu_ps(v + i, e);
    s = _mm512_add_ps(s, e);
  }
  if (rest) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(neg_inf, tail, v + full), mx));
    _mm512_mask_storeu_ps(v + full, tail, e);
    s = _mm512_add_ps(s, e);  // masked-off lanes add +0, which leaves a partial as it is
  }
  const float sum = fold16(s);
  const __m512 inv = _mm512_set1_ps(1.0f / sum);
  for (std::size_t i = 0; i < full; i += 16) _mm512_storeu_ps(v + i, _mm512_mul_ps(_mm512_loadu_ps(v + i), inv));
  if (rest) _mm512_mask_storeu_ps(v + full, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, v + full), inv));
}

// softmax_scalar::silu_mul, 16 lanes at a time; the last n mod 16 elements by the scalar rule.
NIBBLE_TARGET_AVX512 inline void silu_mul(const float* gate, const float* up, float* out, std::size_t n) {
  const std::size_t full = n / 16 * 16;
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  for (std::size_t i = 0; i < full; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 e = exp16(_mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(g), sign)));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
  }
  softmax_scalar::silu_mul(gate + full, up + full, out + full, n - full);
}

}  // namespace nibble::detail::softmax_avx512

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
