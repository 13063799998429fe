// Per-group scale/zero fitting and element encoding: the building blocks of
// round-to-nearest, clip search, GPTQ, AWQ and HQQ.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "../format/codebook.hpp"
#include "../format/scales.hpp"

namespace nibble {

// How an int4 symmetric group picks its scale.
enum class SymScale : std::uint8_t {
  absmax_over_7,  // scale = max|w| / 7: the largest magnitude maps to ±7, −8 unused for it
  full_range,     // scale = w_extreme / −8 (llama.cpp Q4_0): the signed extreme maps to −8 exactly
};

// One group's parameters: w ≈ scale · (codebook_values[code] − zero).
struct GroupParams {
  float scale = 0.0f;
  float zero = 0.0f;
};

// Fits scale (and zero) to n values. `shrink` ∈ (0, 1] narrows the range that is
// covered (clip search); 1 means plain min/max or absmax.
//   int4_sym   see SymScale
//   uint4_asym GPTQ/AWQ min-max: the range is widened to contain 0, scale = (max − min)/15,
//              zero = round(−min/scale); an all-zero group gets scale 0 (decodes to 0).
//   nf4, fp4   scale = max|w| (bitsandbytes absmax)
//   iq4_nl     scale = w_extreme / −127: the signed extreme maps to the table's −127
//              (llama.cpp's starting point; its least-squares refinement lives in
//              io/gguf.hpp, the clip search and GPTQ work from this rule)
inline GroupParams fit_group(const float* w, std::size_t n, Codebook codebook,
                             SymScale sym_scale = SymScale::absmax_over_7, float shrink = 1.0f) {
  float lo = 0.0f, hi = 0.0f, amax = 0.0f, extreme = 0.0f;
  for (std::size_t i = 0; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
    if (std::fabs(w[i]) > amax) {
      amax = std::fabs(w[i]);
      extreme = w[i];
    }
  }
  GroupParams p;
  switch (codebook) {
    case Codebook::int4_sym:
      p.scale = sym_scale == SymScale::absmax_over_7 ? shrink * amax / 7.0f : shrink * extreme / -8.0f;
      break;
    case Codebook::uint4_asym: {
      lo *= shrink;
      hi *= shrink;
      if (hi > lo) {
        p.scale = (hi - lo) / 15.0f;
        p.zero = std::clamp(round_half_even(-lo / p.scale), 0.0f, 15.0f);
      }
      break;
    }
    case Codebook::nf4:
    case Codebook::fp4: p.scale = shrink * amax; break;
    case Codebook::iq4_nl: p.scale = shrink * extreme / -127.0f; break;
  }
  return p;
}

// Nearest code for one value under given parameters. A zero scale encodes every
// value as the code whose dequantized value is 0.
inline std::uint8_t encode_value(float w, const GroupParams& p, Codebook codebook) {
  switch (codebook) {
    case Codebook::int4_sym: {
      const float q = p.scale != 0.0f ? round_half_even(w / p.scale) : 0.0f;
      return static_cast<std::uint8_t>(std::clamp(q, -8.0f, 7.0f) + 8.0f);
    }
    case Codebook::uint4_asym: {
      const float q = p.scale != 0.0f ? round_half_even(w / p.scale + p.zero) : round_half_even(p.zero);
      return static_cast<std::uint8_t>(std::clamp(q, 0.0f, 15.0f));
    }
    case Codebook::nf4:
    case Codebook::fp4: {
      // bitsandbytes multiplies by the reciprocal of absmax rather than dividing.
      const float xn = p.scale != 0.0f ? w * (1.0f / p.scale) : 0.0f;
      return codebook == Codebook::nf4 ? nearest_nf4(xn) : nearest_fp4(xn);
    }
    case Codebook::iq4_nl:  // as llama.cpp: multiply by the reciprocal; a zero scale gives code 8 (value 1 · 0)
      return nearest_iq4_nl(p.scale != 0.0f ? (1.0f / p.scale) * w : 0.0f);
  }
  return 0;
}

inline float decode_value(std::uint8_t code, const GroupParams& p, Codebook codebook) {
  return p.scale * (codebook_values(codebook)[code] - p.zero);
}

// The value a scale takes once stored (f16 / bf16 rounding); double quantization
// depends on all scales together, so it is left to ScaleArray.
inline float round_scale(float s, ScaleFormat format) {
  switch (format) {
    case ScaleFormat::f16:
      detail::require(std::fabs(s) < 65520.0f, "scale ", s, " overflows f16 (max 65504); use f32 or bf16 scales");
      return half_to_float(float_to_half(s));
    case ScaleFormat::bf16: return bf16_to_float(float_to_bf16(s));
    default: return s;
  }
}

// Sum of squared errors of n values quantized and dequantized with p.
inline double group_squared_error(const float* w, std::size_t n, const GroupParams& p, Codebook codebook) {
  double sse = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double e = static_cast<double>(w[i]) - decode_value(encode_value(w[i], p, codebook), p, codebook);
    sse += e * e;
  }
  return sse;
}

// Options of the MSE clip search: shrink factors 1, 1 − step, …, down to min_shrink.
struct ClipSearch {
  bool enabled = false;
  float min_shrink = 0.5f;
  float step = 0.01f;
};

// Best parameters over the clip-search grid. Shrink 1 (plain absmax / min-max) is
// always a candidate and only a strictly lower error replaces it, so the result is
// never worse than plain rounding on this group.
inline GroupParams fit_group_mse(const float* w, std::size_t n, Codebook codebook, SymScale sym_scale,
                                 const ClipSearch& search, ScaleFormat storage) {
  GroupParams best = fit_group(w, n, codebook, sym_scale, 1.0f);
  best.scale = round_scale(best.scale, storage);
  if (!search.enabled) return best;
  double best_err = group_squared_error(w, n, best, codebook);
  const int steps = static_cast<int>(std::floor((1.0f - search.min_shrink) / search.step + 1e-4f));
  for (int i = 1; i <= steps; ++i) {
    GroupParams p = fit_group(w, n, codebook, sym_scale, 1.0f - static_cast<float>(i) * search.step);
    p.scale = round_scale(p.scale, storage);
    const double err = group_squared_error(w, n, p, codebook);
    if (err < best_err) {
      best_err = err;
      best = p;
    }
  }
  return best;
}

}  // namespace nibble
