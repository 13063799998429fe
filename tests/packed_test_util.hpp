// Shared helper of the 4-bit kernel tests (kernels_test.cpp, weight_arena_test.cpp): a
// random QuantizedMatrix of any codebook, scale format, group size and zero format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include <nibble/nibble.hpp>

namespace packed_test {

enum class ZeroKind { uint4, f32, f16 };

// A random container, built directly (not through a quantizer) so any group size
// the container allows can be used, including tiny and odd per-row groups.
inline nibble::QuantizedMatrix random_matrix(std::size_t rows, std::size_t cols, std::size_t gs, nibble::Codebook cb,
                                             nibble::ScaleFormat sf, std::uint32_t seed,
                                             ZeroKind zk = ZeroKind::uint4) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> scale(0.01f, 0.5f);
  std::vector<std::uint8_t> values(cols);
  std::vector<std::uint8_t> codes(rows * nibble::packed_size(cols));
  for (std::size_t r = 0; r < rows; ++r) {
    for (auto& v : values) v = static_cast<std::uint8_t>(code(rng));
    nibble::pack_nibbles(values.data(), cols, codes.data() + r * nibble::packed_size(cols));
  }
  const std::size_t groups = rows * ((cols + gs - 1) / gs);
  std::vector<float> s(groups);
  for (auto& v : s) v = scale(rng);
  if (groups > 2) s[1] = 0.0f;  // an all-zero group must not produce NaN
  if (cb == nibble::Codebook::iq4_nl)     // llama.cpp's IQ4_NL fit gives negative d as often as positive
    for (std::size_t i = 0; i < groups; i += 2) s[i] = -s[i];
  auto scales = nibble::ScaleArray::encode(s, sf);
  nibble::ZeroPoints zeros;
  if (cb == nibble::Codebook::uint4_asym) {
    if (zk == ZeroKind::uint4) {
      std::vector<std::uint8_t> z(groups);
      for (auto& v : z) v = static_cast<std::uint8_t>(code(rng));
      zeros = nibble::ZeroPoints::uint4(z);
    } else {
      std::vector<float> z(groups);
      for (auto& v : z) v = std::uniform_real_distribution<float>(-1.0f, 16.0f)(rng);
      zeros = nibble::ZeroPoints::floats(z, zk == ZeroKind::f32 ? nibble::ScaleFormat::f32 : nibble::ScaleFormat::f16);
    }
  }
  return nibble::QuantizedMatrix(rows, cols, gs, cb, std::move(codes), std::move(scales), std::move(zeros));
}

}  // namespace packed_test
