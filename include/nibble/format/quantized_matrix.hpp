// QuantizedMatrix: the one container for 4-bit weights. Every quantizer emits it;
// every kernel, metric and exporter consumes it.
//
// Layout of a rows × cols matrix W (row-major, y = W·x, groups along a row):
//
//   codes   row r occupies bytes [r·row_bytes, (r+1)·row_bytes), row_bytes = ⌈cols/2⌉,
//           canonical nibble order (element 2k in the high nibble). Rows never share
//           a byte; an odd cols leaves the last low nibble of each row 0.
//   groups  row r, group g covers columns [g·group_size, min(cols, (g+1)·group_size));
//           the last group of a row may be shorter (ragged). Scale / zero index = r·G + g,
//           G = groups_per_row = ⌈cols/group_size⌉.
//   value   w[r][c] = scale(r, g) · (codebook_values(cb)[code] − zero(r, g)).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "codebook.hpp"
#include "packing.hpp"
#include "scales.hpp"

namespace nibble {

enum class ZeroFormat : std::uint8_t { none = 0, uint4 = 1, f32 = 2, f16 = 3, bf16 = 4 };

// Zero points of an asymmetric matrix: either 4-bit integers (packed like codes, one
// per group in scale order) or floats (HQQ optimises a real-valued zero).
struct ZeroPoints {
  ZeroFormat format = ZeroFormat::none;
  std::vector<std::uint8_t> packed;  // uint4: packed_size(group count) bytes
  ScaleArray values;                 // f32 / f16 / bf16

  static ZeroPoints none() { return {}; }
  static ZeroPoints uint4(const std::vector<std::uint8_t>& zeros) {
    ZeroPoints z;
    z.format = ZeroFormat::uint4;
    z.packed = pack_nibbles(zeros);
    return z;
  }
  static ZeroPoints floats(const std::vector<float>& zeros, ScaleFormat storage) {
    detail::require(storage != ScaleFormat::dq8, "float zero points cannot be double-quantized");
    ZeroPoints z;
    z.format = storage == ScaleFormat::f32 ? ZeroFormat::f32
               : storage == ScaleFormat::f16 ? ZeroFormat::f16 : ZeroFormat::bf16;
    z.values = ScaleArray::encode(zeros, storage);
    return z;
  }
};

// Checks a group size against a row length: the whole row (group_size == cols), or
// an even size no larger than the row.
inline void validate_group_size(std::size_t group_size, std::size_t cols) {
  detail::require(group_size != 0, "group_size is 0 (expected an even size >= 2 or the whole row)");
  detail::require(group_size <= cols, "group_size ", group_size, " is larger than the row length ", cols,
                  " (use per-row groups instead)");
  detail::require(group_size == cols || group_size % 2 == 0, "group_size ", group_size,
                  " is odd (expected an even size, or the whole row)");
}

class QuantizedMatrix {
 public:
  QuantizedMatrix() = default;

  QuantizedMatrix(std::size_t rows, std::size_t cols, std::size_t group_size, Codebook codebook,
                  std::vector<std::uint8_t> codes, ScaleArray scales, ZeroPoints zeros = ZeroPoints::none())
      : rows_(rows), cols_(cols), group_size_(group_size), codebook_(codebook), codes_(std::move(codes)),
        scales_(std::move(scales)), zeros_(std::move(zeros)) {
    validate();
  }

  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  std::size_t group_size() const { return group_size_; }
  std::size_t groups_per_row() const { return (cols_ + group_size_ - 1) / group_size_; }
  std::size_t group_count() const { return rows_ * groups_per_row(); }
  std::size_t row_bytes() const { return packed_size(cols_); }
  Codebook codebook() const { return codebook_; }

  const std::vector<std::uint8_t>& codes() const { return codes_; }
  const std::uint8_t* row_codes(std::size_t r) const { return codes_.data() + r * row_bytes(); }
  std::uint8_t code(std::size_t r, std::size_t c) const { return get_nibble(row_codes(r), c); }

  const ScaleArray& scales() const { return scales_; }
  float scale(std::size_t r, std::size_t g) const { return scales_.get(r * groups_per_row() + g); }

  const ZeroPoints& zeros() const { return zeros_; }
  bool has_zeros() const { return zeros_.format != ZeroFormat::none; }
  float zero(std::size_t r, std::size_t g) const { return zero_at(r * groups_per_row() + g); }

  // All zero points in scale order (0 for codebooks without zeros).
  std::vector<float> decoded_zeros() const {
    std::vector<float> z(group_count());
    for (std::size_t i = 0; i < z.size(); ++i) z[i] = zero_at(i);
    return z;
  }

  float value(std::size_t r, std::size_t c) const {
    const std::size_t g = c / group_size_;
    return scale(r, g) * (codebook_values(codebook_)[code(r, c)] - zero(r, g));
  }

  Eigen::MatrixXf dequantize() const {
    Eigen::MatrixXf out(rows_, cols_);
    const auto& table = codebook_values(codebook_);
    const std::size_t G = groups_per_row();
    for (std::size_t r = 0; r < rows_; ++r) {
      const std::uint8_t* row = row_codes(r);
      for (std::size_t g = 0; g < G; ++g) {
        const float s = scales_.get(r * G + g);
        const float z = zero_at(r * G + g);
        const std::size_t end = std::min(cols_, (g + 1) * group_size_);
        for (std::size_t c = g * group_size_; c < end; ++c)
          out(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c)) = s * (table[get_nibble(row, c)] - z);
      }
    }
    return out;
  }

  // Everything stored, in bytes: codes, scales (with second-level statistics), zeros.
  std::size_t storage_bytes() const { return (storage_bits() + 7) / 8; }

  double bits_per_weight() const {
    return static_cast<double>(storage_bits()) / (static_cast<double>(rows_) * static_cast<double>(cols_));
  }

 private:
  std::size_t storage_bits() const {
    std::size_t bits = 8 * codes_.size() + scales_.storage_bits();
    if (zeros_.format == ZeroFormat::uint4) bits += 8 * zeros_.packed.size();
    else if (has_zeros()) bits += zeros_.values.storage_bits();
    return bits;
  }

  float zero_at(std::size_t i) const {
    switch (zeros_.format) {
      case ZeroFormat::none: return 0.0f;
      case ZeroFormat::uint4: return static_cast<float>(get_nibble(zeros_.packed.data(), i));
      default: return zeros_.values.get(i);
    }
  }

  void validate() const {
    detail::require(rows_ > 0 && cols_ > 0, "empty matrix (", rows_, " x ", cols_, ")");
    detail::require(rows_ <= std::numeric_limits<std::size_t>::max() / cols_ / 8, "matrix ", rows_, " x ", cols_,
                    " is too large");
    validate_group_size(group_size_, cols_);
    detail::require(is_valid_codebook(static_cast<std::uint8_t>(codebook_)), "invalid codebook ",
                    static_cast<int>(codebook_));
    detail::require(codes_.size() == rows_ * row_bytes(), "codes: expected ", rows_ * row_bytes(), " bytes for ",
                    rows_, " x ", cols_, ", got ", codes_.size());
    if (cols_ % 2 == 1)
      for (std::size_t r = 0; r < rows_; ++r)
        detail::require((codes_[(r + 1) * row_bytes() - 1] & 0x0F) == 0, "codes: padding nibble of row ", r,
                        " is not zero");
    detail::require(scales_.size() == group_count(), "scales: expected ", group_count(), " (", rows_, " rows x ",
                    groups_per_row(), " groups), got ", scales_.size());
    const bool asym = codebook_ == Codebook::uint4_asym;
    detail::require(asym == has_zeros(), asym ? "uint4_asym needs zero points" : "zero points given for ",
                    asym ? "" : to_string(codebook_), asym ? "" : ", which has none");
    if (zeros_.format == ZeroFormat::uint4)
      detail::require(zeros_.packed.size() == packed_size(group_count()), "zero points: expected ",
                      packed_size(group_count()), " packed bytes, got ", zeros_.packed.size());
    else if (has_zeros())
      detail::require(zeros_.values.size() == group_count(), "zero points: expected ", group_count(), ", got ",
                      zeros_.values.size());
  }

  std::size_t rows_ = 0, cols_ = 0, group_size_ = 0;
  Codebook codebook_ = Codebook::int4_sym;
  std::vector<std::uint8_t> codes_;
  ScaleArray scales_;
  ZeroPoints zeros_;
};

// The rows of several matrices stacked into one (e.g. a layer's q, k and v
// projections, which share their input): same columns, group size, codebook, scale and
// zero formats. Lossless: the codes, scale and zero bits are copied. Double-quantized
// scales are refused (their second-level blocks would straddle the seams).
// Whether b's rows can be stacked under a's (concat_rows).
inline bool rows_stackable(const QuantizedMatrix& a, const QuantizedMatrix& b) {
  return a.scales().format() != ScaleFormat::dq8 && a.cols() == b.cols() && a.group_size() == b.group_size() &&
         a.codebook() == b.codebook() && a.scales().format() == b.scales().format() &&
         a.zeros().format == b.zeros().format;
}

inline QuantizedMatrix concat_rows(const std::vector<const QuantizedMatrix*>& parts) {
  detail::require(!parts.empty() && parts.front() != nullptr, "concat_rows: no matrices");
  const QuantizedMatrix& a = *parts.front();
  const ScaleFormat sf = a.scales().format();
  detail::require(sf != ScaleFormat::dq8, "concat_rows: double-quantized scales cannot be stacked");
  std::size_t rows = 0;
  for (const QuantizedMatrix* p : parts) {
    detail::require(p != nullptr && rows_stackable(a, *p), "concat_rows: the matrices differ in shape or format");
    rows += p->rows();
  }
  std::vector<std::uint8_t> codes;
  std::vector<float> s32, z32;
  std::vector<std::uint16_t> s16, z16;
  std::vector<std::uint8_t> z4;
  for (const QuantizedMatrix* p : parts) {
    codes.insert(codes.end(), p->codes().begin(), p->codes().end());
    const ScaleArray& s = p->scales();
    if (sf == ScaleFormat::f32) s32.insert(s32.end(), s.f32_values().begin(), s.f32_values().end());
    else s16.insert(s16.end(), s.raw16().begin(), s.raw16().end());
    const ZeroPoints& z = p->zeros();
    if (z.format == ZeroFormat::uint4)
      for (std::size_t i = 0; i < p->group_count(); ++i) z4.push_back(get_nibble(z.packed.data(), i));
    else if (z.format == ZeroFormat::f32)
      z32.insert(z32.end(), z.values.f32_values().begin(), z.values.f32_values().end());
    else if (z.format != ZeroFormat::none)
      z16.insert(z16.end(), z.values.raw16().begin(), z.values.raw16().end());
  }
  ScaleArray scales = sf == ScaleFormat::f32 ? ScaleArray::encode(s32, ScaleFormat::f32) : ScaleArray::from_raw16(s16, sf);
  ZeroPoints zeros;
  switch (a.zeros().format) {
    case ZeroFormat::none: break;
    case ZeroFormat::uint4: zeros = ZeroPoints::uint4(z4); break;
    case ZeroFormat::f32: zeros = ZeroPoints::floats(z32, ScaleFormat::f32); break;
    case ZeroFormat::f16:
    case ZeroFormat::bf16:
      zeros.format = a.zeros().format;
      zeros.values = ScaleArray::from_raw16(z16, a.zeros().format == ZeroFormat::f16 ? ScaleFormat::f16 : ScaleFormat::bf16);
      break;
  }
  return QuantizedMatrix(rows, a.cols(), a.group_size(), a.codebook(), std::move(codes), std::move(scales),
                         std::move(zeros));
}

}  // namespace nibble
