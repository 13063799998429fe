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

// What fit_group reads from a group: its range (widened to contain 0), and its
// largest magnitude with that value's sign.
struct GroupRange {
  float lo = 0.0f, hi = 0.0f, amax = 0.0f, extreme = 0.0f;
};

inline GroupRange group_range(const float* w, std::size_t n) {
  GroupRange r;
  for (std::size_t i = 0; i < n; ++i) {
    r.lo = std::min(r.lo, w[i]);
    r.hi = std::max(r.hi, w[i]);
    if (std::fabs(w[i]) > r.amax) {
      r.amax = std::fabs(w[i]);
      r.extreme = w[i];
    }
  }
  return r;
}

// Fits scale (and zero) to n values. `shrink` ∈ (0, 1] narrows the range that is
// covered (clip search); 1 means plain min/max or absmax.
//   int4_sym   see SymScale
//   uint4_asym GPTQ/AWQ min-max: the range is widened to contain 0, scale = (max − min)/15,
//              zero = round(−min/scale); an all-zero group gets scale 0 (decodes to 0).
//   nf4, fp4   scale = max|w| (bitsandbytes absmax)
//   iq4_nl     scale = w_extreme / −127: the signed extreme maps to the table's −127
//              (llama.cpp's starting point; its least-squares refinement lives in
//              io/gguf.hpp, the clip search and GPTQ work from this rule)
inline GroupParams fit_group(const GroupRange& range, Codebook codebook, SymScale sym_scale = SymScale::absmax_over_7,
                             float shrink = 1.0f) {
  GroupParams p;
  switch (codebook) {
    case Codebook::int4_sym:
      p.scale = sym_scale == SymScale::absmax_over_7 ? shrink * range.amax / 7.0f : shrink * range.extreme / -8.0f;
      break;
    case Codebook::uint4_asym: {
      const float lo = range.lo * shrink, hi = range.hi * shrink;
      if (hi > lo) {
        p.scale = (hi - lo) / 15.0f;
        p.zero = std::clamp(round_half_even(-lo / p.scale), 0.0f, 15.0f);
      }
      break;
    }
    case Codebook::nf4:
    case Codebook::fp4: p.scale = shrink * range.amax; break;
    case Codebook::iq4_nl: p.scale = shrink * range.extreme / -127.0f; break;
  }
  return p;
}

inline GroupParams fit_group(const float* w, std::size_t n, Codebook codebook,
                             SymScale sym_scale = SymScale::absmax_over_7, float shrink = 1.0f) {
  return fit_group(group_range(w, n), codebook, sym_scale, shrink);
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

// Sum of squared errors of n values quantized and dequantized with p. With `stop_at`
// the sum stops growing once it reaches that value (the clip search only asks whether
// a candidate beats the best so far; the terms are never negative and rounding is
// monotonic, so a partial sum ≥ stop_at means the full sum is too).
namespace detail {
template <Codebook C>
double group_squared_error_as(const float* w, std::size_t n, const GroupParams& p, double stop_at) {
  double sse = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double e = static_cast<double>(w[i]) - decode_value(encode_value(w[i], p, C), p, C);
    sse += e * e;
    if (sse >= stop_at) break;
  }
  return sse;
}
}  // namespace detail

inline double group_squared_error(const float* w, std::size_t n, const GroupParams& p, Codebook codebook,
                                  double stop_at = HUGE_VAL) {
  // One loop per codebook, so encode_value's switch is decided once, not per value.
  switch (codebook) {
    case Codebook::int4_sym: return detail::group_squared_error_as<Codebook::int4_sym>(w, n, p, stop_at);
    case Codebook::uint4_asym: return detail::group_squared_error_as<Codebook::uint4_asym>(w, n, p, stop_at);
    case Codebook::nf4: return detail::group_squared_error_as<Codebook::nf4>(w, n, p, stop_at);
    case Codebook::fp4: return detail::group_squared_error_as<Codebook::fp4>(w, n, p, stop_at);
    case Codebook::iq4_nl: return detail::group_squared_error_as<Codebook::iq4_nl>(w, n, p, stop_at);
  }
  return 0.0;
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
  const GroupRange range = group_range(w, n);  // the same for every candidate
  GroupParams best = fit_group(range, codebook, sym_scale, 1.0f);
  best.scale = round_scale(best.scale, storage);
  if (!search.enabled) return best;
  double best_err = group_squared_error(w, n, best, codebook);
  const int steps = static_cast<int>(std::floor((1.0f - search.min_shrink) / search.step + 1e-4f));
  for (int i = 1; i <= steps; ++i) {
    GroupParams p = fit_group(range, codebook, sym_scale, 1.0f - static_cast<float>(i) * search.step);
    p.scale = round_scale(p.scale, storage);
    const double err = group_squared_error(w, n, p, codebook, best_err);
    if (err < best_err) {
      best_err = err;
      best = p;
    }
  }
  return best;
}

}  // namespace nibble
