// PackedMatrix: a QuantizedMatrix prepacked for the GEMV/GEMM kernels (lossless:
// unpack() gives the container back bit for bit).
//
// Codes: rows are grouped in tiles of kTileRows = 8 and each row is cut into
// 32-byte chunks (zero-padded at the row's end; a short last tile is padded with
// zero rows). A tile stores chunk 0 of its 8 rows, then chunk 1 of its 8 rows, ...:
//
//   tile t:  [row 8t+0 bytes 0..31][row 8t+1 bytes 0..31] ... [row 8t+7 bytes 0..31]
//            [row 8t+0 bytes 32..63] ...
//
// so a kernel working on 8 rows at once streams one contiguous buffer instead of 8
// rows far apart (on the AVX2 path that alone halved the time of a hot 4096² GEMV).
// Inside a chunk the bytes keep nibble's canonical order (element 2k in the high
// nibble of byte k): instead of reordering nibbles, each call de-interleaves the
// activations once, so byte k meets x[2k] (high nibble) and x[2k+1] (low nibble).
// Scales and zero points stay in their stored format (f32/f16/bf16/dq8; uint4 or
// float zeros), so the bytes a kernel streams are the bytes of the format. Where that
// costs nothing, fast mode also gets them in tile order (tile_scales16 / tile_offsets32
// / tile_offsets16 below): the same bits, laid out as the tile kernels read them
// (group g, tile row i at 8g + i), so a product widens them instead of gathering and
// transposing them again on every call (at group size 32 that per-call decoding cost
// as much as the dot products).
//
// Block plan: every group is cut into activation blocks of kActivationBlock = 32
// elements (the last block of a group may be shorter), starting at the group's
// first column. Blocks never straddle groups, so one block has one weight scale and
// one activation scale. Both activation modes and every ISA walk the same plan.
//
// Per group the kernels use w = s·(base[code] − offset), where base/offset are
//   int4_sym    base = code, offset = 8        uint4_asym  base = code, offset = zero
//   nf4 / fp4 / iq4_nl   base = table[code], offset 0
// which equals the container's w = scale·(value[code] − zero).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "../format/codebook.hpp"
#include "../format/dynamic_map.hpp"
#include "../format/quantized_matrix.hpp"

namespace nibble {

inline constexpr std::size_t kActivationBlock = 32;

namespace detail {

// Codebooks whose values are not the code itself: the kernels look them up in a table.
inline bool is_table_codebook(Codebook c) { return c == Codebook::nf4 || c == Codebook::fp4 || c == Codebook::iq4_nl; }

// Fast mode's int8 value of each code and the factor the group scale is multiplied by
// to compensate: NF4/FP4 values in [−1, 1] become round(127·value) (ties away from 0)
// with factor 1/127; iq4_nl values are integers already (exact, factor 1); int4/uint4
// use the code itself (the offset is applied separately).
inline std::array<std::int8_t, 16> int8_table(Codebook c) {
  std::array<std::int8_t, 16> t{};
  const auto& v = codebook_values(c);
  for (int i = 0; i < 16; ++i) {
    if (c == Codebook::nf4 || c == Codebook::fp4) t[i] = static_cast<std::int8_t>(std::lround(127.0 * v[i]));
    else if (c == Codebook::iq4_nl) t[i] = static_cast<std::int8_t>(v[i]);
    else t[i] = static_cast<std::int8_t>(i);
  }
  return t;
}
inline float int8_table_factor(Codebook c) {
  return c == Codebook::nf4 || c == Codebook::fp4 ? 1.0f / 127.0f : 1.0f;
}

struct BlockSpan {
  std::uint32_t byte_begin;  // first code byte within a row
  std::uint32_t elements;    // 1..32 (odd only for the last block of an odd-length row)
};

}  // namespace detail

inline constexpr std::size_t kTileRows = 8;
inline constexpr std::size_t kChunkBytes = 32;

class PackedMatrix {
 public:
  explicit PackedMatrix(const QuantizedMatrix& q)
      : rows_(q.rows()), cols_(q.cols()), group_size_(q.group_size()), codebook_(q.codebook()),
        storage_bytes_(q.storage_bytes()), scales_(q.scales()), zeros_(q.zeros()) {
    const std::size_t G = groups_per_row(), gs = group_size_;
    detail::require(cols_ < (std::size_t{1} << 31), "PackedMatrix: cols ", cols_, " is too large (max 2^31 - 1)");
    group_first_block_.resize(G + 1);
    for (std::size_t g = 0; g < G; ++g) {
      group_first_block_[g] = static_cast<std::uint32_t>(blocks_.size());
      const std::size_t end = std::min(cols_, (g + 1) * gs);
      for (std::size_t c = g * gs; c < end; c += kActivationBlock)
        blocks_.push_back({static_cast<std::uint32_t>(c / 2),
                           static_cast<std::uint32_t>(std::min(kActivationBlock, end - c))});
    }
    group_first_block_[G] = static_cast<std::uint32_t>(blocks_.size());
    const auto& values = codebook_values(codebook_);
    for (int i = 0; i < 16; ++i)
      base_[i] = detail::is_table_codebook(codebook_) ? values[i] : static_cast<float>(i);
    int8_base_ = detail::int8_table(codebook_);
    scale_format_ = scales_.format();
    if (scale_format_ == ScaleFormat::dq8) dq_map_ = dynamic_map().data();

    chunks_ = (row_bytes() + kChunkBytes - 1) / kChunkBytes;
    tiles_ = (rows_ + kTileRows - 1) / kTileRows;
    build_tile_order();
    codes_.assign(tiles_ * chunks_ * kTileRows * kChunkBytes, 0);
    for (std::size_t r = 0; r < rows_; ++r)
      for (std::size_t c = 0; c < chunks_; ++c) {
        const std::size_t n = std::min(kChunkBytes, row_bytes() - c * kChunkBytes);
        std::uint8_t* dst = codes_.data() + ((r / kTileRows * chunks_ + c) * kTileRows + r % kTileRows) * kChunkBytes;
        std::memcpy(dst, q.row_codes(r) + c * kChunkBytes, n);
      }
  }

  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  std::size_t group_size() const { return group_size_; }
  std::size_t groups_per_row() const { return (cols_ + group_size_ - 1) / group_size_; }
  Codebook codebook() const { return codebook_; }
  ScaleFormat scale_format() const { return scale_format_; }
  // The scales as the QuantizedMatrix stored them (rebuilt when only the tile-ordered
  // copy is kept: a copy, not for per-group use; kernels read scale() / scale_bits16()).
  ScaleArray scales() const {
    if (tile_scales16_.empty() || !scales_.raw16().empty()) return scales_;
    std::vector<std::uint16_t> bits(rows_ * groups_per_row());
    for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = tile_scales16_[tile_index(i)];
    return ScaleArray::from_raw16(std::move(bits), scale_format_);
  }
  // The row-ordered scales, empty when only the tile-ordered copy is kept (f16 scales
  // with fast mode's factor 1, see build_tile_order); for paths that run without it.
  const ScaleArray& row_ordered_scales() const { return scales_; }
  // Format and uint4 zero points; float zero values are read through float_zero()
  // (their row-ordered copy may have been dropped, see build_tile_order).
  const ZeroPoints& zeros() const { return zeros_; }

  // Lossless inverse: the canonical codes, scales and zeros as given.
  QuantizedMatrix unpack() const {
    std::vector<std::uint8_t> codes(rows_ * row_bytes());
    for (std::size_t r = 0; r < rows_; ++r)
      for (std::size_t k = 0; k < row_bytes(); ++k) codes[r * row_bytes() + k] = code_byte(r, k);
    return QuantizedMatrix(rows_, cols_, group_size_, codebook_, std::move(codes), scales(), stored_zeros());
  }

  // Bytes of the format a kernel reads per product: codes, scales (with
  // second-level statistics), zeros. (Tile and chunk padding is not counted.)
  std::size_t weight_bytes() const { return storage_bytes_; }

  // --- what the kernels use ---
  std::size_t row_bytes() const { return packed_size(cols_); }
  std::size_t tiles() const { return tiles_; }
  std::size_t chunks_per_row() const { return chunks_; }
  // The 8 rows × 32 bytes of chunk c of tile t (row i of the tile at + 32·i).
  const std::uint8_t* chunk(std::size_t t, std::size_t c) const {
    return codes_.data() + (t * chunks_ + c) * kTileRows * kChunkBytes;
  }
  // Byte k of row r (k may reach into the row's zero padding, < 32·chunks_per_row()).
  std::uint8_t code_byte(std::size_t r, std::size_t k) const {
    return chunk(r / kTileRows, k / kChunkBytes)[(r % kTileRows) * kChunkBytes + k % kChunkBytes];
  }
  // The 16 bytes from byte k of row r in place, when they lie in one chunk (then row
  // r + 1 of the same tile has its bytes kChunkBytes further on); else nullptr.
  const std::uint8_t* bytes16_in_chunk(std::size_t r, std::size_t k) const {
    if (k % kChunkBytes > kChunkBytes - 16) return nullptr;
    return chunk(r / kTileRows, k / kChunkBytes) + (r % kTileRows) * kChunkBytes + k % kChunkBytes;
  }
  // 16 readable bytes starting at byte k of row r: in place when they lie in one
  // chunk, else gathered into tmp (bytes past the padded row read as 0).
  const std::uint8_t* bytes16(std::size_t r, std::size_t k, std::uint8_t* tmp) const {
    if (const std::uint8_t* in_place = bytes16_in_chunk(r, k)) return in_place;
    for (std::size_t j = 0; j < 16; ++j) tmp[j] = k + j < chunks_ * kChunkBytes ? code_byte(r, k + j) : 0;
    return tmp;
  }
  std::size_t block_count() const { return blocks_.size(); }
  const detail::BlockSpan* blocks() const { return blocks_.data(); }
  std::size_t first_block(std::size_t g) const { return group_first_block_[g]; }
  const std::array<float, 16>& base_values() const { return base_; }
  const std::array<std::int8_t, 16>& int8_base_values() const { return int8_base_; }
  bool table_codebook() const { return detail::is_table_codebook(codebook_); }

  // Tile-ordered copies (empty when not built): fp16 scale bits when the scales are
  // fp16 and fast mode's factor is 1; negated float zero points of uint4_asym (f32 or
  // fp16 bits; negation only flips the sign bit, so the values are exact). Element
  // (t·G + g)·8 + i belongs to row 8t + i, or to the tile's last real row in padding.
  const std::uint16_t* tile_scales16(std::size_t t) const {
    return tile_scales16_.empty() ? nullptr : tile_scales16_.data() + t * groups_per_row() * kTileRows;
  }
  const float* tile_offsets32(std::size_t t) const {
    return tile_offsets32_.empty() ? nullptr : tile_offsets32_.data() + t * groups_per_row() * kTileRows;
  }
  const std::uint16_t* tile_offsets16(std::size_t t) const {
    return tile_offsets16_.empty() ? nullptr : tile_offsets16_.data() + t * groups_per_row() * kTileRows;
  }
  // Where group i = r·G + g sits in the tile-ordered arrays.
  std::size_t tile_index(std::size_t i) const {
    const std::size_t G = groups_per_row();
    return tile_index(i / G, i % G);
  }
  std::size_t tile_index(std::size_t r, std::size_t g) const {
    return ((r / kTileRows) * groups_per_row() + g) * kTileRows + r % kTileRows;
  }
  // fp16 / bf16 bits of the scale of group i = r·G + g, from whichever copy is kept.
  std::uint16_t scale_bits16(std::size_t i) const {
    return tile_scales16_.empty() ? scales_.raw16()[i] : tile_scales16_[tile_index(i)];
  }
  std::uint16_t scale_bits16(std::size_t r, std::size_t g) const {
    return tile_scales16_.empty() ? scales_.raw16()[r * groups_per_row() + g] : tile_scales16_[tile_index(r, g)];
  }
  // Float zero point of group i (uint4_asym with f32/f16/bf16 zeros). Float zeros that
  // have a tile-ordered copy are kept only there (the row-ordered ones are dropped to
  // save memory), so this reads whichever exists; negation is exact either way.
  float float_zero(std::size_t i) const {
    if (!tile_offsets32_.empty()) return -tile_offsets32_[tile_index(i)];
    if (!tile_offsets16_.empty()) return half_to_float(static_cast<std::uint16_t>(tile_offsets16_[tile_index(i)] ^ 0x8000u));
    return zeros_.values.get(i);
  }

  // Fast mode multiplies group scales by this (see int8_table).
  float int8_factor() const { return detail::int8_table_factor(codebook_); }

  // Scale of group i = r·G + g, decoded the same way on every path. Double
  // quantization uses an explicit fma so no compiler contraction choice can make
  // two paths disagree.
  float scale(std::size_t i) const {
    const ScaleArray& s = scales_;
    switch (scale_format_) {
      case ScaleFormat::f32: return s.f32_values()[i];
      case ScaleFormat::f16: return half_to_float(scale_bits16(i));
      case ScaleFormat::bf16: return bf16_to_float(s.raw16()[i]);
      case ScaleFormat::dq8:
        return std::fma(dq_map_[s.dq_codes()[i]], s.dq_absmax2()[i / kDoubleQuantBlock], s.dq_offset());
    }
    return 0.0f;
  }

  // The same for row r, group g (no division to find an fp16 scale's tile position).
  float scale(std::size_t r, std::size_t g) const {
    return scale_format_ == ScaleFormat::f16 ? half_to_float(scale_bits16(r, g)) : scale(r * groups_per_row() + g);
  }

  // scale(i0 + j) · factor → out[j·stride] for j < n, with the format switch hoisted
  // out of the loop (the kernels call this once per row tile).
  void decode_scales(std::size_t i0, std::size_t n, float factor, float* out, std::size_t stride) const {
    const ScaleArray& s = scales_;
    switch (scale_format_) {
      case ScaleFormat::f32:
        for (std::size_t j = 0; j < n; ++j) out[j * stride] = s.f32_values()[i0 + j] * factor;
        return;
      case ScaleFormat::f16:
        for (std::size_t j = 0; j < n; ++j) out[j * stride] = half_to_float(scale_bits16(i0 + j)) * factor;
        return;
      case ScaleFormat::bf16:
        for (std::size_t j = 0; j < n; ++j) out[j * stride] = bf16_to_float(s.raw16()[i0 + j]) * factor;
        return;
      case ScaleFormat::dq8: {
        const std::uint8_t* codes = s.dq_codes().data();
        const float* absmax2 = s.dq_absmax2().data();
        const float offset = s.dq_offset();
        for (std::size_t j = 0; j < n; ++j) {
          const std::size_t i = i0 + j;  // the same expression as scale(i)
          out[j * stride] = std::fma(dq_map_[codes[i]], absmax2[i / kDoubleQuantBlock], offset) * factor;
        }
        return;
      }
    }
  }

  // −offset(i0 + j) → out[j·stride] for j < n (the same values as offset(); the zero
  // format switch is hoisted out of the loop, which runs once per row and tile).
  void decode_negated_offsets(std::size_t i0, std::size_t n, float* out, std::size_t stride) const {
    if (codebook_ == Codebook::uint4_asym && zeros_.format == ZeroFormat::uint4) {
      const std::uint8_t* packed = zeros_.packed.data();
      for (std::size_t j = 0; j < n; ++j) out[j * stride] = -static_cast<float>(get_nibble(packed, i0 + j));
    } else if (codebook_ == Codebook::uint4_asym) {
      for (std::size_t j = 0; j < n; ++j) out[j * stride] = -float_zero(i0 + j);
    } else {
      const float v = -offset(i0);
      for (std::size_t j = 0; j < n; ++j) out[j * stride] = v;
    }
  }

  // Offset of group i (see the header comment).
  float offset(std::size_t i) const {
    switch (codebook_) {
      case Codebook::int4_sym: return 8.0f;
      case Codebook::uint4_asym:
        return zeros_.format == ZeroFormat::uint4 ? static_cast<float>(get_nibble(zeros_.packed.data(), i))
                                                  : float_zero(i);
      default: return 0.0f;
    }
  }

 private:
  void build_tile_order() {
    const std::size_t G = groups_per_row();
    auto tile_order = [&](auto& out, auto value) {
      out.resize(tiles_ * G * kTileRows);
      for (std::size_t t = 0; t < tiles_; ++t)
        for (std::size_t g = 0; g < G; ++g)
          for (std::size_t i = 0; i < kTileRows; ++i) {
            const std::size_t r = std::min(t * kTileRows + i, rows_ - 1);
            out[(t * G + g) * kTileRows + i] = value(r * G + g);
          }
    };
    if (rows_ == 0) return;
    if (scale_format_ == ScaleFormat::f16 && int8_factor() == 1.0f)
      tile_order(tile_scales16_, [&](std::size_t i) { return scales_.raw16()[i]; });
    if (codebook_ == Codebook::uint4_asym && zeros_.format == ZeroFormat::f32)
      tile_order(tile_offsets32_, [&](std::size_t i) { return -zeros_.values.f32_values()[i]; });
    if (codebook_ == Codebook::uint4_asym && zeros_.format == ZeroFormat::f16)
      tile_order(tile_offsets16_,
                 [&](std::size_t i) { return static_cast<std::uint16_t>(zeros_.values.raw16()[i] ^ 0x8000u); });
    if (!tile_offsets32_.empty() || !tile_offsets16_.empty()) zeros_.values = ScaleArray();  // see float_zero
    // Likewise the row-ordered fp16 scales: at group 32 they are 0.5 bit per weight held
    // twice (scale_bits16 and scales() read the tile-ordered copy).
    if (!tile_scales16_.empty()) scales_ = ScaleArray();
  }

  // The zero points as the QuantizedMatrix stored them (rebuilt from the tile-ordered
  // copy where the row-ordered one was dropped).
  ZeroPoints stored_zeros() const {
    if (tile_offsets32_.empty() && tile_offsets16_.empty()) return zeros_;
    ZeroPoints z;
    z.format = zeros_.format;
    const std::size_t n = rows_ * groups_per_row();
    if (!tile_offsets32_.empty()) {
      std::vector<float> v(n);
      for (std::size_t i = 0; i < n; ++i) v[i] = float_zero(i);
      z.values = ScaleArray::encode(v, ScaleFormat::f32);
    } else {
      std::vector<std::uint16_t> bits(n);
      for (std::size_t i = 0; i < n; ++i) bits[i] = static_cast<std::uint16_t>(tile_offsets16_[tile_index(i)] ^ 0x8000u);
      z.values = ScaleArray::from_raw16(std::move(bits), ScaleFormat::f16);
    }
    return z;
  }

  std::size_t rows_ = 0, cols_ = 0, group_size_ = 0;
  Codebook codebook_ = Codebook::int4_sym;
  std::size_t storage_bytes_ = 0;
  ScaleArray scales_;
  ZeroPoints zeros_;
  std::size_t chunks_ = 0, tiles_ = 0;
  std::vector<std::uint8_t> codes_;  // tiles × chunks × 8 rows × 32 bytes
  std::vector<detail::BlockSpan> blocks_;
  std::vector<std::uint32_t> group_first_block_;
  std::array<float, 16> base_{};
  std::array<std::int8_t, 16> int8_base_{};
  ScaleFormat scale_format_ = ScaleFormat::f32;
  const float* dq_map_ = nullptr;
  std::vector<std::uint16_t> tile_scales16_, tile_offsets16_;
  std::vector<float> tile_offsets32_;
};

}  // namespace nibble
