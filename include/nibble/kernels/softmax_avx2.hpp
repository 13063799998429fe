// AVX2 + FMA path of softmax_scalar.hpp, bit for bit: 16 elements per step as two
// 8-float vectors, which hold partials 0–7 and 8–15 of the specification's sum. A last
// short step goes through a padded copy (pad: −inf for the max, whose exp is 0).
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstring>
#include <limits>

#include "avx2.hpp"
#include "softmax_scalar.hpp"

#include "unroll.hpp"

namespace nibble::detail::softmax_avx2 {

// exp_for_softmax on 8 lanes, in its order of operations.
NIBBLE_TARGET_AVX2 inline __m256 exp8(__m256 x) {
  using namespace softmax_exp;
  const __m256 zero_lanes = _mm256_cmp_ps(x, _mm256_set1_ps(kLowest), _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_set1_ps(kHighest), x);  // a NaN x stays NaN (min returns its second operand)
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Hi), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-kLn2Lo), r);
  __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(kP0), r, _mm256_set1_ps(kP1));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP2));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP3));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP4));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP5));
  const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2ⁿ from its exponent bits: n is in [−126, 127] on every lane that is kept.
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(zero_lanes, _mm256_mul_ps(y, _mm256_castsi256_ps(bits)));
}

// Partials j and j + 4 of a 4-lane vector, then j and j + 1: the specification's tree
// from w = 2 on, after the caller folded w = 8 and w = 4.
NIBBLE_TARGET_AVX2 inline float fold4(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// The 16 partials (a: 0–7, b: 8–15) folded by the whole tree, w = 8, 4, 2, 1 (also the
// score fold of attention_avx2.hpp).
NIBBLE_TARGET_AVX2 inline float fold16(__m256 a, __m256 b) {
  const __m256 s = _mm256_add_ps(a, b);  // w = 8
  return fold4(_mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

NIBBLE_TARGET_AVX2 inline void softmax(float* v, std::size_t n) {
  const std::size_t full = n / 16 * 16, rest = n - full;
  alignas(32) float pad[16];
  if (rest) {
    NIBBLE_UNROLL
    for (std::size_t i = 0; i < 16; ++i) pad[i] = -std::numeric_limits<float>::infinity();
    std::memcpy(pad, v + full, rest * sizeof(float));
  }
  __m256 m0 = _mm256_set1_ps(-std::numeric_limits<float>::infinity()), m1 = m0;
  for (std::size_t i = 0; i < full; i += 16) {
    m0 = _mm256_max_ps(_mm256_loadu_ps(v + i), m0);  // a NaN element leaves the running max
    m1 = _mm256_max_ps(_mm256_loadu_ps(v + i + 8), m1);
  }
  if (rest) {
    m0 = _mm256_max_ps(_mm256_load_ps(pad), m0);
    m1 = _mm256_max_ps(_mm256_load_ps(pad + 8), m1);
  }
  __m256 m = _mm256_max_ps(m0, m1);
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
  const __m256 mx = _mm256_set1_ps(_mm_cvtss_f32(m4));

  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  for (std::size_t i = 0; i < full; i += 16) {
    const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(v + i), mx));
    const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(v + i + 8), mx));
    _mm256_storeu_ps(v + i, e0);
    _mm256_storeu_ps(v + i + 8, e1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  if (rest) {
    const __m256 e0 = exp8(_mm256_sub_ps(_mm256_load_ps(pad), mx));
    const __m256 e1 = exp8(_mm256_sub_ps(_mm256_load_ps(pad + 8), mx));
    _mm256_store_ps(pad, e0);
    _mm256_store_ps(pad + 8, e1);
    s0 = _mm256_add_ps(s0, e0);  // pad lanes add +0, which leaves a partial as it is
    s1 = _mm256_add_ps(s1, e1);
  }
  const float sum = fold16(s0, s1);
  const __m256 inv = _mm256_set1_ps(1.0f / sum);
  for (std::size_t i = 0; i < full; i += 8) _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), inv));
  if (rest) {
    _mm256_store_ps(pad, _mm256_mul_ps(_mm256_load_ps(pad), inv));
    _mm256_store_ps(pad + 8, _mm256_mul_ps(_mm256_load_ps(pad + 8), inv));
    std::memcpy(v + full, pad, rest * sizeof(float));
  }
}

// softmax_scalar::silu_mul, 8 lanes at a time; the last n mod 8 elements by the scalar rule.
NIBBLE_TARGET_AVX2 inline void silu_mul(const float* gate, const float* up, float* out, std::size_t n) {
  const std::size_t full = n / 8 * 8;
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  for (std::size_t i = 0; i < full; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp8(_mm256_xor_ps(g, sign));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
  }
  softmax_scalar::silu_mul(gate + full, up + full, out + full, n - full);
}

}  // namespace nibble::detail::softmax_avx2
