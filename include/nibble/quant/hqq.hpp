// HQQ, Half-Quadratic Quantization (Badri & Shaji 2023, mobiusml/hqq): a
// calibration-free quantizer that optimizes each group's zero point (optionally its
// scale too) to minimize the lp error Σ|W − Ŵ|^p with p < 1, which cares less about a
// few large outliers than the squared error does.
//
// Per group of n weights (uint4 asymmetric, float zero point; reference/algorithms.md §4):
//   init     s = 15/(max − min) (an inverse scale; s = 1 when max − min <= 1e-4; s <= 2e4),
//            z = round(−min·s)
//   iterate  Wq = clamp(round(W·s + z), 0, 15);  Wr = (Wq − z)/s
//            We = shrink_p(W − Wr),  shrink_p(x) = sign(x)·max(|x| − |x|^(p−1)/beta, 0)
//            z  = mean(Wq − (W − We)·s)                  (closed-form zero step)
//            beta *= kappa
//   stored   scale = 1/s, zero = z (a float), w = scale·(code − zero)
//
// Choices, documented because hqq itself changed over time:
//   - beta grows by kappa every iteration (the paper and hqq's proximal_v2 do this;
//     hqq HEAD's legacy solver does not — set kappa = 1 for that behaviour).
//   - Early stop is per group: iteration stops when a group's mean |W − Wr| does not
//     decrease, and the group keeps the best zero (and scale) it has seen. The
//     reference stops on the error averaged over the whole tensor and returns the zero
//     of the iteration that got worse.
//   - optimize_scale (off by default, not in hqq's default solver): the zero step
//     instead fits scale and zero together by least squares, (W − We) ≈ (Wq − z)/s.
//   - Groups run along the input dimension (hqq axis = 1), like every nibble format.
//   - Codes are chosen with the scale and zero as stored (f16/bf16/dq8 rounding applied
//     first), so the matrix decodes to the nearest grid points of what it stores.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../format/quantized_matrix.hpp"
#include "rtn.hpp"

namespace nibble {

namespace detail {
inline QuantConfig hqq_default_quant() {
  QuantConfig q;
  q.codebook = Codebook::uint4_asym;
  q.group_size = 64;  // hqq's default group size
  return q;
}
}  // namespace detail

struct HqqConfig {
  QuantConfig quant = detail::hqq_default_quant();  // codebook must be uint4_asym
  float lp_norm = 0.7f;                             // p in Σ|W − Ŵ|^p, 0 < p <= 1
  float beta = 10.0f;
  float kappa = 1.01f;                              // beta *= kappa per iteration (1 = constant)
  int iters = 20;
  bool early_stop = true;
  bool optimize_scale = false;
  bool round_zero = true;                           // round the initial zero (hqq default for 4 bits)
  ScaleFormat zero_format = ScaleFormat::f32;       // f32, f16 or bf16
};

namespace detail {

struct HqqGroup {
  float inv_scale = 1.0f;  // s
  float zero = 0.0f;       // z
};

inline float hqq_shrink(float x, float beta, float p) {
  const float a = std::fabs(x);
  if (a == 0.0f) return 0.0f;
  const float t = a - std::pow(a, p - 1.0f) / beta;
  return t > 0.0f ? std::copysign(t, x) : 0.0f;
}

inline double hqq_mean_abs_error(const float* w, std::size_t n, const HqqGroup& g) {
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const float q = std::clamp(round_half_even(w[i] * g.inv_scale + g.zero), 0.0f, 15.0f);
    sum += std::fabs(w[i] - (q - g.zero) / g.inv_scale);
  }
  return sum / static_cast<double>(n);
}

inline HqqGroup hqq_optimize_group(const float* w, std::size_t n, const HqqConfig& cfg, std::vector<float>& wq,
                                   std::vector<float>& target) {
  float lo = w[0], hi = w[0];
  for (std::size_t i = 1; i < n; ++i) {
    lo = std::min(lo, w[i]);
    hi = std::max(hi, w[i]);
  }
  HqqGroup g;
  g.inv_scale = (hi - lo) > 1e-4f ? std::min(15.0f / (hi - lo), 2e4f) : 1.0f;
  g.zero = -lo * g.inv_scale;
  if (cfg.round_zero) g.zero = round_half_even(g.zero);

  HqqGroup best = g;
  double best_err = hqq_mean_abs_error(w, n, g);
  float beta = cfg.beta;
  for (int it = 0; it < cfg.iters; ++it) {
    // Half-quadratic split: We is the lp-prox of the residual, then (s, z) solve the
    // quadratic part in closed form.
    for (std::size_t i = 0; i < n; ++i) {
      wq[i] = std::clamp(round_half_even(w[i] * g.inv_scale + g.zero), 0.0f, 15.0f);
      const float wr = (wq[i] - g.zero) / g.inv_scale;
      target[i] = w[i] - hqq_shrink(w[i] - wr, beta, cfg.lp_norm);
    }
    HqqGroup next = g;
    bool solved = false;
    if (cfg.optimize_scale) {
      // target ≈ a·wq + b with a = 1/s, b = −z/s (least squares).
      double sq = 0, st = 0, sqq = 0, sqt = 0;
      for (std::size_t i = 0; i < n; ++i) {
        sq += wq[i];
        st += target[i];
        sqq += static_cast<double>(wq[i]) * wq[i];
        sqt += static_cast<double>(wq[i]) * target[i];
      }
      const double dn = static_cast<double>(n);
      const double det = dn * sqq - sq * sq;
      if (det > 1e-9 * dn * sqq) {
        const double a = (dn * sqt - sq * st) / det;
        const double b = (st - a * sq) / dn;
        if (a > 1.0 / 2e4 && std::isfinite(a) && std::isfinite(b)) {
          next.inv_scale = static_cast<float>(1.0 / a);
          next.zero = static_cast<float>(-b / a);
          solved = true;
        }
      }
    }
    if (!solved) {
      double sum = 0.0;
      for (std::size_t i = 0; i < n; ++i) sum += wq[i] - target[i] * g.inv_scale;
      next.zero = static_cast<float>(sum / static_cast<double>(n));
    }
    beta *= cfg.kappa;
    g = next;
    const double err = hqq_mean_abs_error(w, n, g);
    if (err < best_err) {
      best_err = err;
      best = g;
    } else if (cfg.early_stop) {
      break;
    }
  }
  return best;
}

}  // namespace detail

// HQQ-quantizes W (rows = out_features, cols = in_features) to uint4 with float zero
// points. Throws nibble::Error on bad shapes, non-finite weights or bad options.
template <class Derived>
QuantizedMatrix hqq_quantize(const Eigen::MatrixBase<Derived>& W_in, const HqqConfig& cfg = {}) {
  detail::require(cfg.quant.codebook == Codebook::uint4_asym, "HQQ: codebook is ", to_string(cfg.quant.codebook),
                  ", expected uint4_asym (HQQ optimizes a zero point)");
  detail::require(cfg.lp_norm > 0.0f && cfg.lp_norm <= 1.0f, "HQQ: lp_norm is ", cfg.lp_norm,
                  " (expected 0 < p <= 1, default 0.7)");
  detail::require(std::isfinite(cfg.beta) && cfg.beta > 0.0f, "HQQ: beta is ", cfg.beta, " (expected > 0, default 10)");
  detail::require(std::isfinite(cfg.kappa) && cfg.kappa >= 1.0f, "HQQ: kappa is ", cfg.kappa,
                  " (expected >= 1, default 1.01)");
  detail::require(cfg.iters >= 0, "HQQ: iters is ", cfg.iters, " (expected >= 0, default 20)");
  detail::require(cfg.zero_format != ScaleFormat::dq8, "HQQ: zero_format dq8 is not supported (use f32, f16 or bf16)");
  const RowMatrixXf W = to_checked_float(W_in, cfg.quant.non_finite, "HQQ weight matrix");
  const std::size_t rows = static_cast<std::size_t>(W.rows()), cols = static_cast<std::size_t>(W.cols());
  const std::size_t gs = effective_group_size(cfg.quant.group_size, cols);
  const std::size_t G = (cols + gs - 1) / gs;

  std::vector<float> scales(rows * G), zeros(rows * G);
  std::vector<float> wq(gs), target(gs);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t begin = g * gs, n = std::min(cols, begin + gs) - begin;
      const detail::HqqGroup p =
          detail::hqq_optimize_group(W.row(static_cast<Eigen::Index>(r)).data() + begin, n, cfg, wq, target);
      scales[r * G + g] = 1.0f / p.inv_scale;
      zeros[r * G + g] = p.zero;
    }

  ScaleArray stored_scales = ScaleArray::encode(scales, cfg.quant.scale_format);
  ZeroPoints stored_zeros = ZeroPoints::floats(zeros, cfg.zero_format);
  std::vector<std::uint8_t> codes(rows * packed_size(cols), 0);
  for (std::size_t r = 0; r < rows; ++r) {
    std::uint8_t* row = codes.data() + r * packed_size(cols);
    for (std::size_t g = 0; g < G; ++g) {
      const float s = stored_scales.get(r * G + g), z = stored_zeros.values.get(r * G + g);
      for (std::size_t c = g * gs; c < std::min(cols, (g + 1) * gs); ++c) {
        const float w = W(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c));
        const float q = s != 0.0f ? round_half_even(w / s + z) : round_half_even(z);
        set_nibble(row, c, static_cast<std::uint8_t>(std::clamp(q, 0.0f, 15.0f)));
      }
    }
  }
  return QuantizedMatrix(rows, cols, gs, Codebook::uint4_asym, std::move(codes), std::move(stored_scales),
                         std::move(stored_zeros));
}

}  // namespace nibble
