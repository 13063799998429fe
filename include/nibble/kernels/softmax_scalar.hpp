// In-place softmax of one row of attention scores, v ← exp(v − max v) / Σ exp(v − max v),
// and the feed-forward gate silu(g)·u (silu_mul), with AVX2 / AVX-512 / NEON paths. They
// exist because the model spends its non-matrix time in exp: nibble is compiled without
// -m flags, so Eigen's vectorized exp is its SSE2 one, 4 lanes wide, and glibc's expf is
// one element at a time; these paths are 8 and 16 wide and use FMA.
//
// This file is the specification; every ISA path gives its result bit for bit:
//   max   the largest element (NaNs skipped; a NaN still poisons the row through exp);
//   exp   exp_for_softmax below, per element, of v − max;
//   sum   16 partial sums, element i into partial i mod 16 in order, then folded as a
//         fixed tree: partial j += partial j + w for w = 8, 4, 2, 1;
//   scale v ← v · (1 / sum).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

namespace nibble::detail {

// exp(x) for x <= 88 (softmax passes x − max <= 0). Cody–Waite range reduction
// x = n·ln2 + r with n = round(x·log2 e) (ties to even), ln2 split in two so n·ln2_hi is
// exact; exp(r) on |r| <= ln2/2 by the degree-7 polynomial of Cephes' expf (S. L.
// Moshier, Cephes Math Library), about 1 ulp; then · 2ⁿ. Below −87 (e⁻⁸⁷ ≈ 1.6e−38,
// next to float's smallest normal) the result is 0. NaN gives NaN.
namespace softmax_exp {
inline constexpr float kLowest = -87.0f, kHighest = 88.0f;
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
inline constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f,
                       kP3 = 4.1665795894e-2f, kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
}  // namespace softmax_exp

inline float exp_for_softmax(float x) {
  using namespace softmax_exp;
  if (std::isnan(x)) return x;
  if (x < kLowest) return 0.0f;
  x = std::min(x, kHighest);
  const float n = std::nearbyint(x * kLog2e);
  float r = std::fma(n, -kLn2Hi, x);
  r = std::fma(n, -kLn2Lo, r);
  float p = std::fma(kP0, r, kP1);
  p = std::fma(p, r, kP2);
  p = std::fma(p, r, kP3);
  p = std::fma(p, r, kP4);
  p = std::fma(p, r, kP5);
  const float y = std::fma(p, r * r, r + 1.0f);
  return std::ldexp(y, static_cast<int>(n));  // exact: y·2ⁿ is a normal float or rounds once
}

namespace softmax_scalar {
inline void softmax(float* v, std::size_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (std::size_t i = 0; i < n; ++i) mx = v[i] > mx ? v[i] : mx;
  float part[16] = {};
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = exp_for_softmax(v[i] - mx);
    part[i % 16] += v[i];
  }
  for (std::size_t w = 8; w >= 1; w /= 2)
    for (std::size_t j = 0; j < w; ++j) part[j] += part[j + w];
  const float inv = 1.0f / part[0];
  for (std::size_t i = 0; i < n; ++i) v[i] *= inv;
}

// SwiGLU's gate, out[i] = silu(gate[i]) · up[i] with silu(g) = g / (1 + exp(−g)), in that
// order of operations and with exp_for_softmax as exp: above g = 87 exp(−g) is 0 and
// silu(g) = g; below g = −88 the exp stays at e⁸⁸ and the result is g·up / (1 + e⁸⁸),
// about 0. out may be gate (element i is read before it is written).
inline void silu_mul(const float* gate, const float* up, float* out, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + exp_for_softmax(-gate[i])) * up[i];
}
}  // namespace softmax_scalar

}  // namespace nibble::detail
