// Storage for a vector of per-group scales (and float zero points): f32, f16,
// bf16, or QLoRA double quantization.
//
// Double quantization (bitsandbytes quantize_4bit with compress_statistics=True):
//   offset     = mean of all scales (one float32 for the whole matrix)
//   per block of 256 consecutive scales:
//     absmax2  = max |scale − offset|                     (float32, stored)
//     code     = nearest entry of the 8-bit dynamic map to (scale − offset)/absmax2
//   decode:     scale = dynamic_map[code] · absmax2 + offset
// Cost per scale: 8 bits + 32/256 bits, plus one 32-bit offset per matrix.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "dynamic_map.hpp"

namespace nibble {

enum class ScaleFormat : std::uint8_t { f32 = 0, f16 = 1, bf16 = 2, dq8 = 3 };

inline const char* to_string(ScaleFormat f) {
  switch (f) {
    case ScaleFormat::f32: return "f32";
    case ScaleFormat::f16: return "f16";
    case ScaleFormat::bf16: return "bf16";
    case ScaleFormat::dq8: return "dq8";
  }
  return "unknown";
}

inline constexpr std::size_t kDoubleQuantBlock = 256;

// Index of the dynamic-map entry nearest to x (ties go to the lower index).
inline std::uint8_t nearest_dynamic_code(float x) {
  const auto& map = dynamic_map();
  // The map is sorted ascending; find the first entry >= x, then compare with its neighbour.
  const auto it = std::lower_bound(map.begin(), map.end(), x);
  if (it == map.begin()) return 0;
  if (it == map.end()) return 255;
  const auto hi = static_cast<std::size_t>(it - map.begin());
  const float mid = 0.5f * (map[hi - 1] + map[hi]);
  return static_cast<std::uint8_t>(x > mid ? hi : hi - 1);
}

class ScaleArray {
 public:
  ScaleArray() = default;

  // Encodes `values` in the given format. Values must be finite (checked).
  static ScaleArray encode(const std::vector<float>& values, ScaleFormat format) {
    ScaleArray a;
    a.format_ = format;
    a.size_ = values.size();
    for (std::size_t i = 0; i < values.size(); ++i)
      detail::require(std::isfinite(values[i]), "scale ", i, " is not finite (", values[i], ")");
    switch (format) {
      case ScaleFormat::f32: a.f32_ = values; break;
      case ScaleFormat::f16:
        a.u16_.resize(values.size());
        for (std::size_t i = 0; i < values.size(); ++i) {
          detail::require(std::fabs(values[i]) < 65520.0f, "scale ", i, " = ", values[i],
                          " overflows f16 (max 65504); use f32 or bf16 scales");
          a.u16_[i] = float_to_half(values[i]);
        }
        break;
      case ScaleFormat::bf16:
        a.u16_.resize(values.size());
        for (std::size_t i = 0; i < values.size(); ++i) a.u16_[i] = float_to_bf16(values[i]);
        break;
      case ScaleFormat::dq8: a.encode_double_quant(values); break;
      default: detail::throw_error("invalid scale format ", static_cast<int>(format));
    }
    return a;
  }

  // Builds a double-quantized array from its stored parts (used by readers).
  static ScaleArray from_double_quant(std::vector<std::uint8_t> codes, std::vector<float> absmax2, float offset) {
    ScaleArray a;
    a.format_ = ScaleFormat::dq8;
    a.size_ = codes.size();
    detail::require(absmax2.size() == (codes.size() + kDoubleQuantBlock - 1) / kDoubleQuantBlock,
                    "double-quantized scales: ", codes.size(), " codes need ",
                    (codes.size() + kDoubleQuantBlock - 1) / kDoubleQuantBlock, " second-level absmax values, got ",
                    absmax2.size());
    for (float v : absmax2) detail::require(std::isfinite(v), "double-quantized scales: absmax2 is not finite");
    detail::require(std::isfinite(offset), "double-quantized scales: offset is not finite");
    a.q8_ = std::move(codes);
    a.absmax2_ = std::move(absmax2);
    a.offset_ = offset;
    return a;
  }

  // Builds an f16/bf16 array from raw 16-bit patterns (used by readers).
  static ScaleArray from_raw16(std::vector<std::uint16_t> bits, ScaleFormat format) {
    detail::require(format == ScaleFormat::f16 || format == ScaleFormat::bf16, "from_raw16 needs f16 or bf16");
    ScaleArray a;
    a.format_ = format;
    a.size_ = bits.size();
    a.u16_ = std::move(bits);
    for (std::size_t i = 0; i < a.size_; ++i)
      detail::require(std::isfinite(a.get(i)), "scale ", i, " is not finite");
    return a;
  }

  ScaleFormat format() const { return format_; }
  std::size_t size() const { return size_; }

  float get(std::size_t i) const {
    switch (format_) {
      case ScaleFormat::f32: return f32_[i];
      case ScaleFormat::f16: return half_to_float(u16_[i]);
      case ScaleFormat::bf16: return bf16_to_float(u16_[i]);
      case ScaleFormat::dq8: return dynamic_map()[q8_[i]] * absmax2_[i / kDoubleQuantBlock] + offset_;
    }
    return 0.0f;
  }

  std::vector<float> decode() const {
    std::vector<float> out(size_);
    for (std::size_t i = 0; i < size_; ++i) out[i] = get(i);
    return out;
  }

  // Bits stored for the whole array, second-level statistics included.
  std::size_t storage_bits() const {
    switch (format_) {
      case ScaleFormat::f32: return 32 * size_;
      case ScaleFormat::f16:
      case ScaleFormat::bf16: return 16 * size_;
      case ScaleFormat::dq8: return 8 * size_ + 32 * absmax2_.size() + 32;
    }
    return 0;
  }

  // Raw parts, for kernels and writers.
  const std::vector<float>& f32_values() const { return f32_; }
  const std::vector<std::uint16_t>& raw16() const { return u16_; }
  const std::vector<std::uint8_t>& dq_codes() const { return q8_; }
  const std::vector<float>& dq_absmax2() const { return absmax2_; }
  float dq_offset() const { return offset_; }

 private:
  void encode_double_quant(const std::vector<float>& values) {
    double sum = 0.0;
    for (float v : values) sum += v;
    offset_ = values.empty() ? 0.0f : static_cast<float>(sum / static_cast<double>(values.size()));
    const std::size_t blocks = (values.size() + kDoubleQuantBlock - 1) / kDoubleQuantBlock;
    absmax2_.assign(blocks, 0.0f);
    q8_.resize(values.size());
    for (std::size_t b = 0; b < blocks; ++b) {
      const std::size_t begin = b * kDoubleQuantBlock;
      const std::size_t end = std::min(values.size(), begin + kDoubleQuantBlock);
      float amax = 0.0f;
      for (std::size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(values[i] - offset_));
      absmax2_[b] = amax;
      // bitsandbytes multiplies by the reciprocal; a zero block maps every entry to code 0.0 (index 127).
      const float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
      for (std::size_t i = begin; i < end; ++i) q8_[i] = nearest_dynamic_code((values[i] - offset_) * inv);
    }
  }

  ScaleFormat format_ = ScaleFormat::f32;
  std::size_t size_ = 0;
  std::vector<float> f32_;
  std::vector<std::uint16_t> u16_;
  std::vector<std::uint8_t> q8_;
  std::vector<float> absmax2_;
  float offset_ = 0.0f;
};

}  // namespace nibble
