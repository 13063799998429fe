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
// costs (next to) nothing, they are kept in tile order instead of row order
// (tile_scales16 / tile_scales32 / tile_offsets32 / tile_offsets16 / tile_zeros8
// below): the same bits, laid out as the kernels read them (group g, tile row i at
// 8g + i; 16g + i for panels), so a product widens them instead of gathering and
// transposing them again on every call (at group size 32 that per-call decoding cost
// as much as the dot products).
//
// That is the row_tiles layout. The other one, row_panels, is for the AVX-512 VNNI
// kernels (the default where they run, see preferred_code_layout): rows in panels of
// kPanelRows = 16 (the last one padded with zero rows), and each panel stores dword d
// (code bytes 4d .. 4d + 3) of its 16 rows side by side, 64 bytes, for d = 0, 1, ...:
//
//   panel p:  [row 16p+0 bytes 0..3][row 16p+1 bytes 0..3] ... [row 16p+15 bytes 0..3]
//             [row 16p+0 bytes 4..7] ...
//
// One 64-byte load then gives vpdpbusd four codes of each of 16 rows, one row per
// int32 lane, against one activation dword broadcast to all lanes: no horizontal sums
// and no shuffles, and the float steps run 16 rows wide. A 4096² g32 GEMV (AMD EPYC
// Zen 4, 1 thread, hot) took 218–309 µs on it against 397–451 µs on row_tiles.
// Every path runs on either layout and gives the same bits (the layout only moves
// bytes); paths other than AVX-512 VNNI's fast mode read row_panels through
// code_byte / bytes16 (exact mode) or run the scalar kernels (fast mode), so a matrix
// packed for one CPU stays correct, if slow, on another path.
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
#include <type_traits>
#include <vector>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "../core/weight_arena.hpp"
#include "../format/codebook.hpp"
#include "../format/dynamic_map.hpp"
#include "../format/quantized_matrix.hpp"
#include "cpu.hpp"

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
inline constexpr std::size_t kPanelRows = 16;

enum class CodeLayout { row_tiles, row_panels };

// The layout whose kernels are fastest on `isa` with this CPU: row_panels for AVX-512
// with VNNI, row_tiles everywhere else.
inline CodeLayout preferred_code_layout(Isa isa) {
  return isa == Isa::avx512 && cpu_features().avx512vnni ? CodeLayout::row_panels : CodeLayout::row_tiles;
}

class PackedMatrix {
 public:
  // layout: by default the one the selected path (cpu.hpp's selected_isa) runs fastest.
  // arena: where the arrays the kernels stream (codes, tile-ordered scales and zeros)
  // are allocated; by default each on its own (core/weight_arena.hpp). Copies of a
  // PackedMatrix share those arrays, which are never written after construction.
  explicit PackedMatrix(const QuantizedMatrix& q, CodeLayout layout = preferred_code_layout(selected_isa()),
                        WeightArena* arena = nullptr)
      : rows_(q.rows()), cols_(q.cols()), group_size_(q.group_size()), codebook_(q.codebook()),
        storage_bytes_(q.storage_bytes()), scales_(q.scales()), zeros_(q.zeros()), layout_(layout) {
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
    panel_dwords_ = (row_bytes() + 3) / 4;
    panels_ = (rows_ + kPanelRows - 1) / kPanelRows;
    build_tile_order(arena);
    if (layout_ == CodeLayout::row_tiles) {
      codes_ = WeightBuffer<std::uint8_t>(tiles_ * chunks_ * kTileRows * kChunkBytes, arena);
      for (std::size_t r = 0; r < rows_; ++r)
        for (std::size_t c = 0; c < chunks_; ++c) {
          const std::size_t n = std::min(kChunkBytes, row_bytes() - c * kChunkBytes);
          std::uint8_t* dst = codes_.data() + ((r / kTileRows * chunks_ + c) * kTileRows + r % kTileRows) * kChunkBytes;
          std::memcpy(dst, q.row_codes(r) + c * kChunkBytes, n);
        }
    } else {
      codes_ = WeightBuffer<std::uint8_t>(panels_ * panel_dwords_ * kPanelRows * 4, arena);
      for (std::size_t r = 0; r < rows_; ++r)
        for (std::size_t d = 0; d < panel_dwords_; ++d)
          std::memcpy(codes_.data() + panel_byte_index(r, 4 * d), q.row_codes(r) + 4 * d,
                      std::min<std::size_t>(4, row_bytes() - 4 * d));
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
    if (!tile_scales32_.empty()) {
      std::vector<float> v(rows_ * groups_per_row());
      for (std::size_t i = 0; i < v.size(); ++i) v[i] = tile_scales32_[tile_index(i)];
      return ScaleArray::encode(v, ScaleFormat::f32);
    }
    if (tile_scales16_.empty()) return scales_;
    std::vector<std::uint16_t> bits(rows_ * groups_per_row());
    for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = tile_scales16_[tile_index(i)];
    return ScaleArray::from_raw16(std::move(bits), scale_format_);
  }
  // The row-ordered scales, empty when only the tile-ordered copy is kept (f16 and f32
  // scales, see build_tile_order); for paths that run without it.
  const ScaleArray& row_ordered_scales() const { return scales_; }
  // The zero format; zero values are read through offset() / float_zero() (their
  // row-ordered copy may have been dropped, see build_tile_order).
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
  CodeLayout code_layout() const { return layout_; }
  // Threads split the rows in multiples of this (the kernels' tile or panel height).
  std::size_t rows_per_split() const { return layout_ == CodeLayout::row_panels ? kPanelRows : kTileRows; }
  std::size_t row_bytes() const { return packed_size(cols_); }
  // row_tiles only: the 8 rows × 32 bytes of chunk c of tile t (row i of the tile at + 32·i).
  const std::uint8_t* chunk(std::size_t t, std::size_t c) const {
    return codes_.data() + (t * chunks_ + c) * kTileRows * kChunkBytes;
  }
  // row_panels only: dword d (bytes 4d .. 4d + 3) of panel p's 16 rows, row i at + 4·i.
  std::size_t panel_dwords() const { return panel_dwords_; }
  const std::uint8_t* panel_dword(std::size_t p, std::size_t d) const {
    return codes_.data() + (p * panel_dwords_ + d) * kPanelRows * 4;
  }
  // Byte k of row r; reads 0 past the stored row (the padding of its chunks or dwords).
  // r may be a padding row of the last tile or panel.
  std::uint8_t code_byte(std::size_t r, std::size_t k) const {
    if (layout_ == CodeLayout::row_panels) return k < 4 * panel_dwords_ ? codes_[panel_byte_index(r, k)] : 0;
    return k < chunks_ * kChunkBytes ? chunk(r / kTileRows, k / kChunkBytes)[(r % kTileRows) * kChunkBytes + k % kChunkBytes] : 0;
  }
  // row_tiles: the 16 bytes from byte k of row r in place, when they lie in one chunk
  // (then row r + 1 of the same tile has its bytes kChunkBytes further on); else (and
  // always for row_panels) nullptr.
  const std::uint8_t* bytes16_in_chunk(std::size_t r, std::size_t k) const {
    if (layout_ != CodeLayout::row_tiles || k % kChunkBytes > kChunkBytes - 16) return nullptr;
    return chunk(r / kTileRows, k / kChunkBytes) + (r % kTileRows) * kChunkBytes + k % kChunkBytes;
  }
  // 16 readable bytes starting at byte k of row r: in place when they lie in one
  // chunk, else gathered into tmp (bytes past the stored row read as 0).
  const std::uint8_t* bytes16(std::size_t r, std::size_t k, std::uint8_t* tmp) const {
    if (const std::uint8_t* in_place = bytes16_in_chunk(r, k)) return in_place;
    if (layout_ == CodeLayout::row_panels && k % 4 == 0 && k / 4 + 4 <= panel_dwords_) {  // four whole dwords
      for (std::size_t j = 0; j < 16; j += 4) std::memcpy(tmp + j, codes_.data() + panel_byte_index(r, k + j), 4);
      return tmp;
    }
    for (std::size_t j = 0; j < 16; ++j) tmp[j] = code_byte(r, k + j);
    return tmp;
  }
  std::size_t block_count() const { return blocks_.size(); }
  const detail::BlockSpan* blocks() const { return blocks_.data(); }
  std::size_t first_block(std::size_t g) const { return group_first_block_[g]; }
  const std::array<float, 16>& base_values() const { return base_; }
  const std::array<std::int8_t, 16>& int8_base_values() const { return int8_base_; }
  bool table_codebook() const { return detail::is_table_codebook(codebook_); }

  // Tile-ordered copies (empty when not built): the scales when they are fp16 (bits) or
  // f32 (without fast mode's factor); negated float zero points of uint4_asym (f32 or
  // fp16 bits; negation only flips the sign bit, so the values are exact). They are
  // ordered by units of H = tile_order_rows() rows, the height of the layout's tile or
  // panel: element (u·G + g)·H + i belongs to row H·u + i, or to the unit's last real row
  // in padding. Each accessor points at group 0 of 8-row tile t (row 8t); group g of
  // its rows follows at + H·g.
  std::size_t tile_order_rows() const { return rows_per_split(); }
  const std::uint16_t* tile_scales16(std::size_t t) const {
    return tile_scales16_.empty() ? nullptr : tile_scales16_.data() + tile_order_base(t);
  }
  const float* tile_scales32(std::size_t t) const {
    return tile_scales32_.empty() ? nullptr : tile_scales32_.data() + tile_order_base(t);
  }
  const float* tile_offsets32(std::size_t t) const {
    return tile_offsets32_.empty() ? nullptr : tile_offsets32_.data() + tile_order_base(t);
  }
  const std::uint16_t* tile_offsets16(std::size_t t) const {
    return tile_offsets16_.empty() ? nullptr : tile_offsets16_.data() + tile_order_base(t);
  }
  // uint4 zero points of uint4_asym, one byte (0..15) each: twice the bytes of the packed
  // nibbles, which are dropped, but read as they stand instead of decoded per call.
  const std::uint8_t* tile_zeros8(std::size_t t) const {
    return tile_zeros8_.empty() ? nullptr : tile_zeros8_.data() + tile_order_base(t);
  }
  // Where group i = r·G + g sits in the tile-ordered arrays.
  std::size_t tile_index(std::size_t i) const {
    const std::size_t G = groups_per_row();
    return tile_index(i / G, i % G);
  }
  std::size_t tile_index(std::size_t r, std::size_t g) const {
    const std::size_t H = tile_order_rows();
    return ((r / H) * groups_per_row() + g) * H + r % H;
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
      case ScaleFormat::f32: return tile_scales32_.empty() ? s.f32_values()[i] : tile_scales32_[tile_index(i)];
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
        for (std::size_t j = 0; j < n; ++j) out[j * stride] = scale(i0 + j) * factor;
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
      for (std::size_t j = 0; j < n; ++j) out[j * stride] = -static_cast<float>(tile_zeros8_[tile_index(i0 + j)]);
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
        return zeros_.format == ZeroFormat::uint4 ? static_cast<float>(tile_zeros8_[tile_index(i)]) : float_zero(i);
      default: return 0.0f;
    }
  }

 private:
  // Byte k (< 4·panel_dwords_) of row r in the row_panels layout.
  std::size_t panel_byte_index(std::size_t r, std::size_t k) const {
    return ((r / kPanelRows * panel_dwords_ + k / 4) * kPanelRows + r % kPanelRows) * 4 + k % 4;
  }
  // Offset of 8-row tile t's group 0 in a tile-ordered array.
  std::size_t tile_order_base(std::size_t t) const {
    const std::size_t H = tile_order_rows(), r = t * kTileRows;
    return (r / H) * groups_per_row() * H + r % H;
  }

  void build_tile_order(WeightArena* arena) {
    const std::size_t G = groups_per_row(), H = tile_order_rows(), units = (rows_ + H - 1) / H;
    auto tile_order = [&](auto& out, auto value) {
      out = std::decay_t<decltype(out)>(units * G * H, arena);
      for (std::size_t u = 0; u < units; ++u)
        for (std::size_t g = 0; g < G; ++g)
          for (std::size_t i = 0; i < H; ++i) {
            const std::size_t r = std::min(u * H + i, rows_ - 1);
            out[(u * G + g) * H + i] = value(r * G + g);
          }
    };
    if (rows_ == 0) return;
    if (scale_format_ == ScaleFormat::f16) tile_order(tile_scales16_, [&](std::size_t i) { return scales_.raw16()[i]; });
    if (scale_format_ == ScaleFormat::f32)
      tile_order(tile_scales32_, [&](std::size_t i) { return scales_.f32_values()[i]; });
    if (codebook_ == Codebook::uint4_asym && zeros_.format == ZeroFormat::f32)
      tile_order(tile_offsets32_, [&](std::size_t i) { return -zeros_.values.f32_values()[i]; });
    if (codebook_ == Codebook::uint4_asym && zeros_.format == ZeroFormat::f16)
      tile_order(tile_offsets16_,
                 [&](std::size_t i) { return static_cast<std::uint16_t>(zeros_.values.raw16()[i] ^ 0x8000u); });
    if (codebook_ == Codebook::uint4_asym && zeros_.format == ZeroFormat::uint4) {
      tile_order(tile_zeros8_, [&](std::size_t i) { return get_nibble(zeros_.packed.data(), i); });
      zeros_.packed = std::vector<std::uint8_t>();  // offset() reads the copy
    }
    if (!tile_offsets32_.empty() || !tile_offsets16_.empty()) zeros_.values = ScaleArray();  // see float_zero
    // Likewise the row-ordered fp16 / f32 scales: at group 32 they are 0.5 / 1 bit per
    // weight held twice (scale(), scale_bits16() and scales() read the tile-ordered copy).
    if (!tile_scales16_.empty() || !tile_scales32_.empty()) scales_ = ScaleArray();
  }

  // The zero points as the QuantizedMatrix stored them (rebuilt from the tile-ordered
  // copy where the row-ordered one was dropped).
  ZeroPoints stored_zeros() const {
    if (!tile_zeros8_.empty()) {
      std::vector<std::uint8_t> z(rows_ * groups_per_row());
      for (std::size_t i = 0; i < z.size(); ++i) z[i] = tile_zeros8_[tile_index(i)];
      return ZeroPoints::uint4(z);
    }
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
  CodeLayout layout_ = CodeLayout::row_tiles;
  std::size_t chunks_ = 0, tiles_ = 0, panel_dwords_ = 0, panels_ = 0;
  WeightBuffer<std::uint8_t> codes_;  // tiles × chunks × 8 rows × 32 bytes, or panels × dwords × 16 rows × 4
  std::vector<detail::BlockSpan> blocks_;
  std::vector<std::uint32_t> group_first_block_;
  std::array<float, 16> base_{};
  std::array<std::int8_t, 16> int8_base_{};
  ScaleFormat scale_format_ = ScaleFormat::f32;
  const float* dq_map_ = nullptr;
  WeightBuffer<std::uint16_t> tile_scales16_, tile_offsets16_;
  WeightBuffer<std::uint8_t> tile_zeros8_;
  WeightBuffer<float> tile_scales32_, tile_offsets32_;
};

}  // namespace nibble
