// Shared helpers of the 8-bit tests (int8_matrix_test.cpp, int8_layout_test.cpp): random
// Q8_0 matrices and activations, a gemm on a forced ISA, the shapes every path meets.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <nibble/nibble.hpp>

namespace int8_test {

using nibble::ActivationMode;
using nibble::GemvOptions;
using nibble::Int8Matrix;
using nibble::Isa;

struct IsaGuard {
  ~IsaGuard() { nibble::clear_forced_isa(); }
};

inline std::vector<Isa> simd_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::avx2, Isa::avx512, Isa::neon})
    if (nibble::isa_available(isa)) out.push_back(isa);
  return out;
}

// fp16 → double from the bit fields (independent of nibble's half_to_float).
inline double half_value(std::uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  const double v = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  return sign ? -v : v;
}

// Random finite fp16 scale bits in [2^-14·(1/16), ~0.06] with random sign, plus some
// subnormals and zeros.
inline std::uint16_t random_scale(std::mt19937& rng) {
  const std::uint32_t u = rng();
  if (u % 61 == 0) return static_cast<std::uint16_t>((u >> 8) & 0x83FF);  // ±subnormal or ±0
  const std::uint16_t exp = static_cast<std::uint16_t>(1 + (u >> 12) % 10);  // 2^-14 .. 2^-5
  return static_cast<std::uint16_t>(((u >> 20) & 1) << 15 | exp << 10 | ((u >> 1) & 0x3FF));
}

// Q8_0 bytes of a rows × cols matrix: random scales and codes (−128 included).
inline std::vector<std::uint8_t> random_q8_0(std::size_t rows, std::size_t cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::uint8_t> b(rows * cols / 32 * 34);
  for (std::size_t i = 0; i < b.size(); i += 34) {
    const std::uint16_t d = random_scale(rng);
    b[i] = static_cast<std::uint8_t>(d & 0xFF);
    b[i + 1] = static_cast<std::uint8_t>(d >> 8);
    for (std::size_t j = 2; j < 34; ++j) b[i + j] = static_cast<std::uint8_t>(rng());
  }
  return b;
}

inline Int8Matrix random_matrix(std::size_t rows, std::size_t cols, std::uint32_t seed) {
  const auto b = random_q8_0(rows, cols, seed);
  return Int8Matrix::from_q8_0_blocks(rows, cols, b.data(), b.size());
}

inline std::vector<float> random_activations(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  if (n > 40) {  // an all-zero block and a huge one
    for (std::size_t i = 0; i < 32 && i < n; ++i) x[i] = 0.0f;
    if (n >= 64) x[33] = 1e30f;
  }
  return x;
}

inline std::vector<float> run(Isa isa, const Int8Matrix& W, const std::vector<float>& X, std::size_t batch,
                       ActivationMode mode, int threads = 1) {
  IsaGuard guard;
  nibble::force_isa(isa);
  std::vector<float> Y(batch * W.rows(), -1.0f);
  nibble::gemm(W, X.data(), batch, Y.data(), GemvOptions{mode, threads});
  return Y;
}

inline bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

struct Shape {
  std::size_t rows, cols;
};
// Rows around the 8-row tile, cols of 1, 2, 3 blocks (the AVX-512 block pairs and a
// left-over block), SmolLM2's 576 (18 blocks) and 1536 (48), and a tall thin matrix.
const Shape kShapes[] = {{1, 32},  {7, 32},  {8, 64},   {9, 96},    {17, 576},
                         {1, 1536}, {23, 1536}, {3, 160}, {2053, 576}};

inline std::string label(const Shape& s) { return std::to_string(s.rows) + "x" + std::to_string(s.cols); }

}  // namespace int8_test
