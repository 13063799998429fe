// Round-to-nearest group quantization: quantize(W, config) → QuantizedMatrix.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../format/quantized_matrix.hpp"
#include "bnb_exact.hpp"
#include "group_quantizer.hpp"

namespace nibble {

// group_size value meaning "one group per row".
inline constexpr int kPerRow = 0;

// What to do with NaN / ±Inf weights.
enum class NonFinitePolicy : std::uint8_t {
  reject,        // throw nibble::Error naming the first position (default)
  replace_zero,  // treat the value as 0 before quantizing
};

struct QuantConfig {
  Codebook codebook = Codebook::int4_sym;
  int group_size = 128;                          // even, >= 16, <= cols; or kPerRow
  ScaleFormat scale_format = ScaleFormat::f32;
  SymScale sym_scale = SymScale::absmax_over_7;  // int4_sym only
  ClipSearch clip;                               // MSE-optimal clipping per group
  NonFinitePolicy non_finite = NonFinitePolicy::reject;
  // nf4 / fp4: restored (default) codes weights against the scales as decoded and picks
  // the nearest scale codes; bitsandbytes reproduces bitsandbytes' quantize_4bit byte for
  // byte (codes from the exact absmax, float32 mean; see quant/bnb_exact.hpp). The latter
  // needs a blocksize bitsandbytes accepts (32…4096, powers of two), f32 or dq8 scales and
  // no clip search. Its blocks are nibble's row groups: equal to bitsandbytes' flat blocks
  // when cols % group_size == 0 or rows == 1; otherwise each row's short last group follows
  // bitsandbytes' rule for a final partial block.
  CodeFit code_fit = CodeFit::restored;
};

using RowMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Group size a config gives for rows of length `cols`, validated.
inline std::size_t effective_group_size(int group_size, std::size_t cols) {
  if (group_size == kPerRow) return cols;
  detail::require(group_size > 0, "group_size ", group_size, " is negative (expected an even size >= 16, or kPerRow)");
  detail::require(group_size >= 16, "group_size ", group_size, " is below 16 (expected an even size >= 16, or kPerRow)");
  validate_group_size(static_cast<std::size_t>(group_size), cols);
  return static_cast<std::size_t>(group_size);
}

// Copies any dense Eigen expression into a row-major float matrix, checking values.
template <class Derived>
RowMatrixXf to_checked_float(const Eigen::MatrixBase<Derived>& W, NonFinitePolicy policy, const char* what) {
  detail::require(W.rows() > 0 && W.cols() > 0, what, " is empty (", W.rows(), " x ", W.cols(), ")");
  RowMatrixXf out(W.rows(), W.cols());
  for (Eigen::Index r = 0; r < W.rows(); ++r)
    for (Eigen::Index c = 0; c < W.cols(); ++c) {
      const float v = static_cast<float>(W(r, c));
      if (!std::isfinite(v)) {
        detail::require(policy == NonFinitePolicy::replace_zero, what, " has a non-finite value (", v, ") at row ",
                        r, ", column ", c, std::isfinite(static_cast<double>(W(r, c))) ? " after conversion to float" : "");
        out(r, c) = 0.0f;
      } else {
        out(r, c) = v;
      }
    }
  return out;
}

// Encodes one row-major float matrix with given per-group parameters (scale
// index r·G + g). The stored scales may differ from params (f16 rounding, double
// quantization): codes are chosen with the scales as they will be decoded.
inline QuantizedMatrix encode_matrix(const RowMatrixXf& W, std::size_t group_size, Codebook codebook,
                                     const std::vector<GroupParams>& params, ScaleFormat scale_format) {
  const std::size_t rows = static_cast<std::size_t>(W.rows()), cols = static_cast<std::size_t>(W.cols());
  const std::size_t G = (cols + group_size - 1) / group_size;
  std::vector<float> scales(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) scales[i] = params[i].scale;
  ScaleArray stored = ScaleArray::encode(scales, scale_format);

  std::vector<std::uint8_t> codes(rows * packed_size(cols), 0);
  std::vector<std::uint8_t> zeros;
  if (codebook == Codebook::uint4_asym) zeros.resize(params.size());
  for (std::size_t r = 0; r < rows; ++r) {
    std::uint8_t* row = codes.data() + r * packed_size(cols);
    for (std::size_t g = 0; g < G; ++g) {
      GroupParams p = params[r * G + g];
      p.scale = stored.get(r * G + g);
      if (!zeros.empty()) zeros[r * G + g] = static_cast<std::uint8_t>(p.zero);
      const std::size_t end = std::min(cols, (g + 1) * group_size);
      for (std::size_t c = g * group_size; c < end; ++c)
        set_nibble(row, c, encode_value(W(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c)), p, codebook));
    }
  }
  return QuantizedMatrix(rows, cols, group_size, codebook, std::move(codes), std::move(stored),
                         zeros.empty() ? ZeroPoints::none() : ZeroPoints::uint4(zeros));
}

// CodeFit::bitsandbytes: codes and absmax per row group as bitsandbytes' quantize_4bit.
inline QuantizedMatrix quantize_bnb_exact(const RowMatrixXf& W, std::size_t gs, Codebook codebook,
                                          ScaleFormat scale_format) {
  const std::size_t rows = static_cast<std::size_t>(W.rows()), cols = static_cast<std::size_t>(W.cols());
  const std::size_t G = (cols + gs - 1) / gs;
  std::vector<float> absmax(rows * G);
  std::vector<std::uint8_t> codes(rows * packed_size(cols), 0), group_codes(gs);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t n = std::min(cols, (g + 1) * gs) - g * gs;
      absmax[r * G + g] = bnb_encode_group(W.row(static_cast<Eigen::Index>(r)).data() + g * gs, n, codebook,
                                           n < gs, group_codes.data());
      for (std::size_t i = 0; i < n; ++i) set_nibble(codes.data() + r * packed_size(cols), g * gs + i, group_codes[i]);
    }
  ScaleArray scales = scale_format == ScaleFormat::dq8 ? bnb_double_quant(absmax)
                                                        : ScaleArray::encode(absmax, ScaleFormat::f32);
  return QuantizedMatrix(rows, cols, gs, codebook, std::move(codes), std::move(scales));
}

// Round-to-nearest quantization of W (rows = out_features, cols = in_features; any
// dense Eigen input, float or double, either storage order).
template <class Derived>
QuantizedMatrix quantize(const Eigen::MatrixBase<Derived>& W, const QuantConfig& config = {}) {
  const RowMatrixXf Wf = to_checked_float(W, config.non_finite, "weight matrix");
  const std::size_t cols = static_cast<std::size_t>(Wf.cols());
  const std::size_t gs = effective_group_size(config.group_size, cols);
  if (config.clip.enabled)
    detail::require(config.clip.step > 0.0f && config.clip.min_shrink > 0.0f && config.clip.min_shrink <= 1.0f,
                    "clip search needs 0 < min_shrink <= 1 and step > 0");
  const std::size_t G = (cols + gs - 1) / gs;
  if (config.code_fit == CodeFit::bitsandbytes) {
    validate_bnb_exact(config.codebook, config.group_size, config.scale_format, config.clip.enabled);
    return quantize_bnb_exact(Wf, gs, config.codebook, config.scale_format);
  }
  std::vector<GroupParams> params(static_cast<std::size_t>(Wf.rows()) * G);
  for (Eigen::Index r = 0; r < Wf.rows(); ++r)
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t n = std::min(cols, (g + 1) * gs) - g * gs;
      params[static_cast<std::size_t>(r) * G + g] =
          fit_group_mse(Wf.row(r).data() + g * gs, n, config.codebook, config.sym_scale, config.clip,
                        config.scale_format);
    }
  return encode_matrix(Wf, gs, config.codebook, params, config.scale_format);
}

}  // namespace nibble
