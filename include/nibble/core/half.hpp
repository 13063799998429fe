// fp16 (IEEE binary16) and bf16 conversions, written out in integer arithmetic so
// no compiler half type or F16C instruction is required. Float → half rounds to
// nearest, ties to even, in one step (no double rounding through an intermediate).
#pragma once

#include <cstdint>
#include <cstring>

namespace nibble {

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// binary16: 1 sign bit | 5 exponent bits (bias 15) | 10 mantissa bits.
inline std::uint16_t float_to_half(float f) {
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {                       // Inf or NaN
    if (abs == 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7C00u);
    // Keep a quiet NaN and as much of the payload as fits.
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  }
  if (abs >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // rounds to >= 65520 → Inf
  const int exp = static_cast<int>(abs >> 23) - 127;
  if (exp >= -14) {                               // normal half
    // Drop 13 mantissa bits with round-to-nearest-even; a carry into the
    // exponent field is exactly the right result (including to Inf, handled above).
    std::uint32_t h = ((static_cast<std::uint32_t>(exp + 15) << 10) | ((abs >> 13) & 0x3FFu));
    const std::uint32_t rest = abs & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }
  if (exp < -25) return static_cast<std::uint16_t>(sign);  // below half the smallest subnormal → ±0
  // Subnormal half: value = m · 2^-24. Shift the full 24-bit significand.
  const std::uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;
  const int shift = -exp - 1;                     // 14..24: 2^exp·(mant/2^23) / 2^-24
  std::uint32_t h = mant >> shift;
  const std::uint32_t rest = mant & ((1u << shift) - 1u);
  const std::uint32_t half_ulp = 1u << (shift - 1);
  if (rest > half_ulp || (rest == half_ulp && (h & 1u))) ++h;
  return static_cast<std::uint16_t>(sign | h);
}

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (mant << 13));  // Inf / NaN
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_to_float(sign);
  // Subnormal: normalise the mantissa.
  int e = -1;
  do { mant <<= 1; ++e; } while ((mant & 0x400u) == 0);
  return bits_to_float(sign | (static_cast<std::uint32_t>(112 - e) << 23) | ((mant & 0x3FFu) << 13));
}

// bf16 is the top half of a float32; rounding is to nearest even on the dropped 16 bits.
inline std::uint16_t float_to_bf16(float f) {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((x >> 16) | 0x0040u);  // quiet NaN
  const std::uint32_t rounding = 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

inline float bf16_to_float(std::uint16_t b) { return bits_to_float(static_cast<std::uint32_t>(b) << 16); }

}  // namespace nibble
