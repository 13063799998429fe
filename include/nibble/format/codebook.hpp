// The four 4-bit codebooks. Every format dequantizes with one formula,
//
//     w = scale · (value[code] − zero)
//
// where `value` is the codebook's 16-entry table below and `zero` is 0 except
// for uint4 asymmetric groups. Writing all four this way lets kernels, metrics
// and exporters treat them alike.
//
//   int4_sym    value[u] = u − 8, so the nibble holds q + 8 for q ∈ [−8, 7]
//               (the same offset-binary nibble as llama.cpp Q4_0).
//   uint4_asym  value[u] = u, zero ∈ [0, 15] per group (GPTQ / AWQ convention).
//   nf4         bitsandbytes NormalFloat4, scale = group absmax.
//   fp4         bitsandbytes' own 4-bit float (sign bit 3, 3-bit magnitude LUT),
//               scale = group absmax. Not OCP E2M1.
//   iq4_nl      llama.cpp's non-linear table of 16 integers in [−127, 113] (GGUF
//               IQ4_NL), so scale is the block's d; d may be negative (llama.cpp's
//               fit maps the group's signed extreme to −127).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <string>

#include "../core/error.hpp"

namespace nibble {

enum class Codebook : std::uint8_t { int4_sym = 0, uint4_asym = 1, nf4 = 2, fp4 = 3, iq4_nl = 4 };

inline const char* to_string(Codebook c) {
  switch (c) {
    case Codebook::int4_sym: return "int4_sym";
    case Codebook::uint4_asym: return "uint4_asym";
    case Codebook::nf4: return "nf4";
    case Codebook::fp4: return "fp4";
    case Codebook::iq4_nl: return "iq4_nl";
  }
  return "unknown";
}

inline Codebook codebook_from_string(const std::string& s) {
  if (s == "int4_sym") return Codebook::int4_sym;
  if (s == "uint4_asym") return Codebook::uint4_asym;
  if (s == "nf4") return Codebook::nf4;
  if (s == "fp4") return Codebook::fp4;
  if (s == "iq4_nl") return Codebook::iq4_nl;
  detail::throw_error("unknown codebook '", s, "' (expected int4_sym, uint4_asym, nf4, fp4 or iq4_nl)");
}

inline bool is_valid_codebook(std::uint8_t c) { return c <= 4; }

// bitsandbytes get_4bit_type("nf4"), bit-for-bit (reference/algorithms.md §1.1).
inline constexpr std::array<float, 16> kNF4Values = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// bitsandbytes fp4_dequantization_lut: bit 3 is the sign, bits 0-2 index the
// magnitudes {0, 0.0625, 8, 12, 4, 6, 2, 3}/12. Code 8 is −0.
inline constexpr std::array<float, 16> kFP4Values = {
    0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f,
    -0.0f, -0.005208333333f, -0.66666667f, -1.0f, -0.33333333f, -0.5f, -0.16666667f, -0.25f};

// llama.cpp kvalues_iq4nl (ggml-common.h), the table of GGUF's IQ4_NL blocks.
inline constexpr std::array<float, 16> kIQ4NLValues = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                       1,    13,   25,  38,  53,  69,  89,  113};

inline constexpr std::array<float, 16> kInt4SymValues = {-8, -7, -6, -5, -4, -3, -2, -1,
                                                         0,  1,  2,  3,  4,  5,  6,  7};
inline constexpr std::array<float, 16> kUInt4Values = {0, 1, 2,  3,  4,  5,  6,  7,
                                                       8, 9, 10, 11, 12, 13, 14, 15};

inline const std::array<float, 16>& codebook_values(Codebook c) {
  switch (c) {
    case Codebook::int4_sym: return kInt4SymValues;
    case Codebook::uint4_asym: return kUInt4Values;
    case Codebook::nf4: return kNF4Values;
    case Codebook::fp4: return kFP4Values;
    case Codebook::iq4_nl: return kIQ4NLValues;
  }
  detail::throw_error("invalid codebook value ", static_cast<int>(c));
}

// Decision thresholds of bitsandbytes' dQuantizeNF4, sorted: the code is the number
// of thresholds the normalised value is strictly greater than, so a value exactly
// on a midpoint goes to the lower code.
inline constexpr std::array<float, 15> kNF4Thresholds = {
    -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
    0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};

inline std::uint8_t nearest_nf4(float xn) {
  std::uint8_t code = 0;
  for (float t : kNF4Thresholds) code = static_cast<std::uint8_t>(code + (xn > t ? 1 : 0));
  return code;
}

// bitsandbytes dQuantizeFP4: sign = (x < 0); the magnitude goes to the nearest of
// the sorted magnitudes {0, 0.0052, 1/6, 1/4, 1/3, 1/2, 2/3, 1}, ties low.
inline std::uint8_t nearest_fp4(float xn) {
  static constexpr float kThresholds[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f,
                                           0.41666667f, 0.583333f,  0.8333333f};
  static constexpr std::uint8_t kCodeByRank[8] = {0b000, 0b001, 0b110, 0b111,
                                                  0b100, 0b101, 0b010, 0b011};
  const float a = std::fabs(xn);
  int rank = 0;
  for (float t : kThresholds) rank += (a > t) ? 1 : 0;
  const std::uint8_t sign = (xn < 0.0f) ? 0b1000 : 0;
  return static_cast<std::uint8_t>(sign | kCodeByRank[rank]);
}

// Index of the kIQ4NLValues entry nearest to x (in table units, x = w / d), as
// llama.cpp's best_index_int8: a value exactly between two entries takes the upper.
inline std::uint8_t nearest_iq4_nl(float x) {
  if (!(x > kIQ4NLValues[0])) return 0;  // also NaN, which callers have rejected before
  if (x >= kIQ4NLValues[15]) return 15;
  int lo = 0, hi = 15;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (x < kIQ4NLValues[mid]) hi = mid;
    else lo = mid;
  }
  return static_cast<std::uint8_t>(x - kIQ4NLValues[hi - 1] < kIQ4NLValues[hi] - x ? hi - 1 : hi);
}

// Round half to even, as torch.round and ggml's nearest_int do: std::nearbyint under the
// default rounding mode, written out because without SSE4.1 (nibble's baseline x86-64
// build) nearbyint is a libm call, and the clip search rounds every weight ~50 times.
// Adding and removing 2^23 leaves no fraction bits, so the FPU's round-to-nearest-even
// does the rounding; values of 2^23 and beyond (and inf, NaN) are integers already;
// copysign keeps the sign of a zero result (−0.3 → −0) as nearbyint does. Under
// -ffast-math the compiler may cancel the two additions, so such builds keep nearbyint.
inline float round_half_even(float x) {
#if defined(__FAST_MATH__)
  return std::nearbyint(x);
#else
  constexpr float kTwo23 = 8388608.0f;
  if (!(std::fabs(x) < kTwo23)) return x;
  const float magic = std::copysign(kTwo23, x);
  return std::copysign((x + magic) - magic, x);
#endif
}

}  // namespace nibble
