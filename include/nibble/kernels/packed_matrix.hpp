// PackedMatrix: a QuantizedMatrix prepared for the GEMV/GEMM kernels.
//
// The kernels read the codes in nibble's canonical layout as they are (row r at
// r·⌈cols/2⌉, element 2k in the high nibble of byte k): instead of reordering the
// weights, each call de-interleaves the activations once, so byte k of a row meets
// x[2k] (high nibble) and x[2k+1] (low nibble). Scales and zero points are read in
// their stored format (f32/f16/bf16/dq8; uint4 or float zeros), so the bytes a
// kernel streams are exactly the bytes of the format.
//
// What prepacking adds is a block plan: every group is cut into activation blocks
// of kActivationBlock = 32 elements (the last block of a group may be shorter),
// starting at the group's first column. Blocks never straddle groups, so one
// block has one weight scale and one activation scale. Both activation modes and
// every ISA walk the same plan.
//
// Per group the kernels use w = s·(base[code] − offset), where base/offset are
//   int4_sym    base = code, offset = 8        uint4_asym  base = code, offset = zero
//   nf4 / fp4   base = table[code], offset 0
// which equals the container's w = scale·(value[code] − zero).
#pragma once

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "../format/codebook.hpp"
#include "../format/dynamic_map.hpp"
#include "../format/quantized_matrix.hpp"

namespace nibble {

inline constexpr std::size_t kActivationBlock = 32;

namespace detail {

// Fast mode stores NF4/FP4 values as int8 = round(127·value) (ties away from 0);
// the kernels multiply the group scale by 1/127 to compensate.
inline std::array<std::int8_t, 16> int8_table(Codebook c) {
  std::array<std::int8_t, 16> t{};
  const auto& v = codebook_values(c);
  for (int i = 0; i < 16; ++i) {
    if (c == Codebook::nf4 || c == Codebook::fp4) t[i] = static_cast<std::int8_t>(std::lround(127.0 * v[i]));
    else t[i] = static_cast<std::int8_t>(i);
  }
  return t;
}

inline bool is_table_codebook(Codebook c) { return c == Codebook::nf4 || c == Codebook::fp4; }

struct BlockSpan {
  std::uint32_t byte_begin;  // first code byte within a row
  std::uint32_t elements;    // 1..32 (odd only for the last block of an odd-length row)
};

}  // namespace detail

class PackedMatrix {
 public:
  explicit PackedMatrix(const QuantizedMatrix& q) : q_(q) {
    const std::size_t G = q_.groups_per_row(), gs = q_.group_size(), cols = q_.cols();
    detail::require(cols < (std::size_t{1} << 31), "PackedMatrix: cols ", cols, " is too large (max 2^31 - 1)");
    group_first_block_.resize(G + 1);
    for (std::size_t g = 0; g < G; ++g) {
      group_first_block_[g] = static_cast<std::uint32_t>(blocks_.size());
      const std::size_t end = std::min(cols, (g + 1) * gs);
      for (std::size_t c = g * gs; c < end; c += kActivationBlock)
        blocks_.push_back({static_cast<std::uint32_t>(c / 2),
                           static_cast<std::uint32_t>(std::min(kActivationBlock, end - c))});
    }
    group_first_block_[G] = static_cast<std::uint32_t>(blocks_.size());
    const auto& values = codebook_values(q_.codebook());
    for (int i = 0; i < 16; ++i)
      base_[i] = detail::is_table_codebook(q_.codebook()) ? values[i] : static_cast<float>(i);
    int8_base_ = detail::int8_table(q_.codebook());
    const ScaleArray& s = q_.scales();
    scale_format_ = s.format();
    if (scale_format_ == ScaleFormat::dq8) dq_map_ = dynamic_map().data();
  }

  std::size_t rows() const { return q_.rows(); }
  std::size_t cols() const { return q_.cols(); }
  std::size_t group_size() const { return q_.group_size(); }
  std::size_t groups_per_row() const { return q_.groups_per_row(); }
  Codebook codebook() const { return q_.codebook(); }
  ScaleFormat scale_format() const { return scale_format_; }

  // Lossless inverse (the codes, scales and zeros are kept exactly as given).
  QuantizedMatrix unpack() const { return q_; }
  const QuantizedMatrix& source() const { return q_; }

  // Bytes a kernel reads per product: codes, scales (with second-level statistics), zeros.
  std::size_t weight_bytes() const { return q_.storage_bytes(); }

  // --- what the kernels use ---
  std::size_t row_bytes() const { return q_.row_bytes(); }
  const std::uint8_t* row_codes(std::size_t r) const { return q_.row_codes(r); }
  std::size_t block_count() const { return blocks_.size(); }
  const detail::BlockSpan* blocks() const { return blocks_.data(); }
  std::size_t first_block(std::size_t g) const { return group_first_block_[g]; }
  const std::array<float, 16>& base_values() const { return base_; }
  const std::array<std::int8_t, 16>& int8_base_values() const { return int8_base_; }
  bool table_codebook() const { return detail::is_table_codebook(q_.codebook()); }

  // Scale of group i = r·G + g, decoded the same way on every path. Double
  // quantization uses an explicit fma so no compiler contraction choice can make
  // two paths disagree.
  float scale(std::size_t i) const {
    const ScaleArray& s = q_.scales();
    switch (scale_format_) {
      case ScaleFormat::f32: return s.f32_values()[i];
      case ScaleFormat::f16: return half_to_float(s.raw16()[i]);
      case ScaleFormat::bf16: return bf16_to_float(s.raw16()[i]);
      case ScaleFormat::dq8:
        return std::fma(dq_map_[s.dq_codes()[i]], s.dq_absmax2()[i / kDoubleQuantBlock], s.dq_offset());
    }
    return 0.0f;
  }

  // scale(i0 + j) · factor → out[j·stride] for j < n, with the format switch hoisted
  // out of the loop (the kernels call this once per row tile).
  void decode_scales(std::size_t i0, std::size_t n, float factor, float* out, std::size_t stride) const {
    const ScaleArray& s = q_.scales();
    switch (scale_format_) {
      case ScaleFormat::f32:
        for (std::size_t j = 0; j < n; ++j) out[j * stride] = s.f32_values()[i0 + j] * factor;
        return;
      case ScaleFormat::f16:
        for (std::size_t j = 0; j < n; ++j) out[j * stride] = half_to_float(s.raw16()[i0 + j]) * factor;
        return;
      case ScaleFormat::bf16:
        for (std::size_t j = 0; j < n; ++j) out[j * stride] = bf16_to_float(s.raw16()[i0 + j]) * factor;
        return;
      case ScaleFormat::dq8:
        for (std::size_t j = 0; j < n; ++j) out[j * stride] = scale(i0 + j) * factor;
        return;
    }
  }

  // −offset(i0 + j) → out[j·stride] for j < n.
  void decode_negated_offsets(std::size_t i0, std::size_t n, float* out, std::size_t stride) const {
    if (q_.codebook() == Codebook::uint4_asym) {
      for (std::size_t j = 0; j < n; ++j) out[j * stride] = -offset(i0 + j);
    } else {
      const float v = -offset(i0);
      for (std::size_t j = 0; j < n; ++j) out[j * stride] = v;
    }
  }

  // Offset of group i (see the header comment).
  float offset(std::size_t i) const {
    switch (q_.codebook()) {
      case Codebook::int4_sym: return 8.0f;
      case Codebook::uint4_asym:
        return q_.zeros().format == ZeroFormat::uint4
                   ? static_cast<float>(get_nibble(q_.zeros().packed.data(), i))
                   : q_.zeros().values.get(i);
      default: return 0.0f;
    }
  }

 private:
  QuantizedMatrix q_;
  std::vector<detail::BlockSpan> blocks_;
  std::vector<std::uint32_t> group_first_block_;
  std::array<float, 16> base_{};
  std::array<std::int8_t, 16> int8_base_{};
  ScaleFormat scale_format_ = ScaleFormat::f32;
  const float* dq_map_ = nullptr;
};

}  // namespace nibble
