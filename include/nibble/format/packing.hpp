// Nibble packing in nibble's canonical order: the first element of each pair goes
// in the HIGH nibble (as bitsandbytes does).
//
//   element:   q0   q1   q2   q3   q4 ...
//   byte:    [ q0 | q1 ][ q2 | q3 ][ q4 | 0 ]     byte k = (q[2k] << 4) | q[2k+1]
//             hi   lo    hi   lo    hi   lo
//
// An odd count leaves the low nibble of the last byte zero.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"

namespace nibble {

inline std::size_t packed_size(std::size_t count) { return (count + 1) / 2; }

// Packs count 4-bit values (each must be < 16) into packed_size(count) bytes.
inline void pack_nibbles(const std::uint8_t* values, std::size_t count, std::uint8_t* out) {
  for (std::size_t k = 0; 2 * k < count; ++k) {
    const std::uint8_t hi = values[2 * k];
    const std::uint8_t lo = (2 * k + 1 < count) ? values[2 * k + 1] : 0;
    detail::require(hi < 16 && lo < 16, "pack_nibbles: value at index ",
                    (hi >= 16 ? 2 * k : 2 * k + 1), " does not fit in 4 bits");
    out[k] = static_cast<std::uint8_t>((hi << 4) | lo);
  }
}

inline std::uint8_t get_nibble(const std::uint8_t* packed, std::size_t i) {
  const std::uint8_t byte = packed[i / 2];
  return (i % 2 == 0) ? static_cast<std::uint8_t>(byte >> 4) : static_cast<std::uint8_t>(byte & 0x0F);
}

inline void set_nibble(std::uint8_t* packed, std::size_t i, std::uint8_t value) {
  std::uint8_t& byte = packed[i / 2];
  if (i % 2 == 0) byte = static_cast<std::uint8_t>((byte & 0x0F) | (value << 4));
  else byte = static_cast<std::uint8_t>((byte & 0xF0) | (value & 0x0F));
}

inline void unpack_nibbles(const std::uint8_t* packed, std::size_t count, std::uint8_t* out) {
  for (std::size_t i = 0; i < count; ++i) out[i] = get_nibble(packed, i);
}

inline std::vector<std::uint8_t> pack_nibbles(const std::vector<std::uint8_t>& values) {
  std::vector<std::uint8_t> out(packed_size(values.size()));
  pack_nibbles(values.data(), values.size(), out.data());
  return out;
}

inline std::vector<std::uint8_t> unpack_nibbles(const std::vector<std::uint8_t>& packed, std::size_t count) {
  detail::require(packed_size(count) <= packed.size(), "unpack_nibbles: ", count, " values need ",
                  packed_size(count), " bytes, got ", packed.size());
  std::vector<std::uint8_t> out(count);
  unpack_nibbles(packed.data(), count, out.data());
  return out;
}

}  // namespace nibble
