// AWQ, Activation-aware Weight Quantization (Lin et al. 2023, arXiv 2306.00978):
// input channels that carry large activations matter more, so before rounding each
// input column of W is multiplied by a per-channel factor s_c > 1 for loud channels
// (their weights get relatively finer steps) and the input is divided by s_c:
//
//     y = W·x = (W·diag(s)) · (diag(s)⁻¹·x)  →  quantize W·diag(s), fold 1/s upstream.
//
// Follows llm-awq / AutoAWQ (reference/algorithms.md §3):
//   statistic  x̄_c = mean over tokens of |x_c|
//   grid       for ratio r in {0, 1/grid, …, (grid−1)/grid}:
//                s = max(x̄^r, 1e-4), then s /= sqrt(max(s)·min(s))
//              (duo_scaling: s = max(x̄^r / (w̄^(1−r) + 1e-4), 1e-4), w̄_c = mean over all rows
//               of |W| divided by its quantization group's max |W|)
//   objective  output MSE  mean((X·Wᵀ − X·diag(1/s)·Q(W·diag(s))ᵀ)²) over every linear
//              that shares the input (q/k/v, gate/up), all calibration tokens
//   clip       per group of W·diag(s): clamp to ±shrink·max|w| for shrink 1.0, 0.95, …,
//              0.55, keeping the shrink with the lowest output error on up to
//              max_clip_tokens tokens (inputs divided by s). The reference skips this for
//              q_proj/k_proj (their product makes the error hard to measure): pass
//              clip_search = false for those groups.
//
// s ≡ 1 (plain RTN with the same quantizer) is always the first candidate and is only
// replaced by a strictly lower loss, so loss_best <= loss_rtn always. With duo scaling
// ratio 0 is not RTN, so RTN is evaluated as an extra candidate.
//
// The quantizer is the library's (fit_group rules, any codebook and scale format);
// for uint4_asym that widens min/max to contain 0, where llm-awq clamps the zero instead
// (the two differ only for groups that do not straddle 0).
//
// Folding is explicit: the returned matrices hold Q(W·diag(s)); the op that produces
// the input must divide by s (fold_scales_into_norm / fold_scales_into_linear_rows),
// or use awq_dequantize to get the effective weight Q(W·diag(s))·diag(s)⁻¹.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../format/quantized_matrix.hpp"
#include "group_quantizer.hpp"
#include "hessian.hpp"
#include "linalg.hpp"
#include "rtn.hpp"

namespace nibble {

namespace detail {
inline QuantConfig awq_default_quant() {
  QuantConfig q;
  q.codebook = Codebook::uint4_asym;  // AWQ's default: zero_point = True, w_bit 4, group 128
  q.group_size = 128;
  return q;
}
}  // namespace detail

struct AwqConfig {
  QuantConfig quant = detail::awq_default_quant();
  int grid = 20;              // ratios 0, 1/grid, …, (grid − 1)/grid
  bool duo_scaling = false;   // AutoAWQ's duo scaling (its default is on; llm-awq's off)
  bool clip_search = true;    // turn off for q/k projections, as the reference does
  int max_clip_tokens = 512;  // tokens (evenly strided) used by the clip search
  int clip_grid = 20;         // shrink step 1/clip_grid
  float max_shrink = 0.5f;    // shrinks tried: 1 − k/clip_grid for k < max_shrink·clip_grid
  int threads = 1;            // for the objective's products (results identical for any count)
};

struct AwqResult {
  std::vector<QuantizedMatrix> matrices;  // Q(clip(W_i·diag(s))), one per input weight
  Eigen::VectorXf scales;                 // s, one per input channel
  double best_ratio = 0.0;                // 0 when no candidate beat RTN
  double loss_rtn = 0.0;                  // objective with s ≡ 1
  double loss_best = 0.0;                 // objective with the chosen s, before clipping
  double loss_final = 0.0;                // objective of the returned matrices (after clipping)
};

// Effective weight of an AWQ matrix in the original input space: Q·diag(s)⁻¹.
inline Eigen::MatrixXf awq_dequantize(const QuantizedMatrix& q, const Eigen::VectorXf& s) {
  detail::require(static_cast<std::size_t>(s.size()) == q.cols(), "awq_dequantize: ", s.size(),
                  " scales for a matrix with ", q.cols(), " columns");
  return q.dequantize() * s.cwiseInverse().asDiagonal();
}

namespace detail {

inline void awq_check_scales(const Eigen::VectorXf& s, const char* what) {
  for (Eigen::Index i = 0; i < s.size(); ++i)
    detail::require(std::isfinite(s[i]) && s[i] > 0.0f, what, ": scale ", i, " is ", s[i],
                    " (expected a finite value > 0)");
}

template <class M>
inline void awq_check_finite(const M& m, const char* what) {
  if (m.allFinite()) return;  // vectorized; the loop below only finds where
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index c = 0; c < m.cols(); ++c)
      if (!std::isfinite(m(r, c))) detail::throw_error(what, " has a non-finite value (", m(r, c), ") at row ", r, ", column ", c);
}

inline constexpr Eigen::Index kAwqBlock = 128;

// Output-error objective for one candidate s: Σ over linears of ‖X·Δᵀ‖² / (tokens · outputs),
// Δ = W − Q(W·diag(s))·diag(s)⁻¹. With more tokens than inputs it uses the Gram matrix
// G = XᵀX: ‖X·Δᵀ‖² = ⟨G, ΔᵀΔ⟩, and ΔᵀΔ is symmetric, so only its lower triangle is
// formed (a syrk: half the multiplications of Δ·G), in column panels of kAwqBlock.
// Otherwise X·Δᵀ in blocks of kAwqBlock rows of Δ. Blocks are fixed, dealt to threads,
// and their sums added in block order: the value does not depend on the thread count.
struct AwqObjective {
  const std::vector<RowMatrixXf>* weights = nullptr;
  const RowMatrixXf* X = nullptr;
  Eigen::MatrixXd gram;  // XᵀX, when used
  bool use_gram = false;
  double denominator = 1.0;
  int threads = 1;

  double operator()(const std::vector<Eigen::MatrixXf>& effective) const {
    double sum = 0.0;
    for (std::size_t i = 0; i < effective.size(); ++i) {
      const Eigen::MatrixXf delta = (*weights)[i] - effective[i];
      Eigen::MatrixXd delta_d;
      if (use_gram) delta_d = delta.cast<double>();  // products of floats are exact in double
      const Eigen::Index n = delta.cols();
      const Eigen::Index blocks = ((use_gram ? n : delta.rows()) + kAwqBlock - 1) / kAwqBlock;
      std::vector<double> block_sums(static_cast<std::size_t>(blocks), 0.0);
      const int workers = static_cast<int>(std::min<Eigen::Index>(threads, blocks));
      auto work = [&](int worker) {
        Eigen::MatrixXd panel;
        Eigen::MatrixXf product;
        for (Eigen::Index b = worker; b < blocks; b += workers) {
          double block_sum = 0.0;
          if (use_gram) {
            // Columns [j0, j0 + w) of the lower triangle of ΔᵀΔ, rows j0 .. n − 1.
            const Eigen::Index j0 = b * kAwqBlock, w = std::min(kAwqBlock, n - j0), below = n - j0 - w;
            panel.resize(n - j0, w);
            syrk_lower(panel.topRows(w), delta_d.middleCols(j0, w).transpose(), false);
            gemm(panel.bottomRows(below), delta_d.middleCols(j0 + w, below).transpose(), delta_d.middleCols(j0, w),
                 1.0, false);
            for (Eigen::Index c = 0; c < w; ++c) {
              const Eigen::Index len = n - j0 - c;  // from the diagonal down
              const double off = panel.col(c).tail(len - 1).dot(gram.col(j0 + c).tail(len - 1));
              block_sum += panel(c, c) * gram(j0 + c, j0 + c) + 2.0 * off;
            }
          } else {
            const Eigen::Index r0 = b * kAwqBlock, count = std::min(kAwqBlock, delta.rows() - r0);
            product.resize(X->rows(), count);
            gemm(product, *X, delta.middleRows(r0, count).transpose(), 1.0f, false);
            block_sum = product.cast<double>().squaredNorm();
          }
          block_sums[static_cast<std::size_t>(b)] = block_sum;
        }
      };
      run_workers(workers, work);
      for (double v : block_sums) sum += v;
    }
    return sum / denominator;
  }
};

inline std::vector<Eigen::MatrixXf> awq_fake_quantize(const std::vector<RowMatrixXf>& weights, const Eigen::VectorXf& s,
                                                      const QuantConfig& quant) {
  std::vector<Eigen::MatrixXf> out;
  for (const RowMatrixXf& W : weights) {
    const RowMatrixXf scaled = W * s.asDiagonal();
    out.push_back(awq_dequantize(quantize(scaled, quant), s));
  }
  return out;
}

// AWQ's clip search on one scaled weight, in place. Xs: the subsampled inputs, divided by s.
inline void awq_clip(RowMatrixXf& Ws, const RowMatrixXf& Xs, const AwqConfig& cfg) {
  const std::size_t cols = static_cast<std::size_t>(Ws.cols());
  const std::size_t gs = effective_group_size(cfg.quant.group_size, cols);
  const std::size_t G = (cols + gs - 1) / gs;
  const ScaleFormat fit_storage = cfg.quant.scale_format == ScaleFormat::dq8 ? ScaleFormat::f32 : cfg.quant.scale_format;
  const int steps = std::max(1, static_cast<int>(cfg.max_shrink * static_cast<float>(cfg.clip_grid)));
  std::vector<float> clipped(gs);
  Eigen::VectorXd delta(static_cast<Eigen::Index>(gs));
  for (std::size_t g = 0; g < G; ++g) {
    const auto begin = static_cast<Eigen::Index>(g * gs);
    const auto n = static_cast<Eigen::Index>(std::min(cols, (g + 1) * gs) - g * gs);
    const Eigen::MatrixXd Xg = Xs.middleCols(begin, n).cast<double>();
    const Eigen::MatrixXd gram = Xg.transpose() * Xg;  // error of a row = δᵀ·gram·δ
    for (Eigen::Index r = 0; r < Ws.rows(); ++r) {
      float* w = Ws.row(r).data() + begin;
      float amax = 0.0f;
      for (Eigen::Index j = 0; j < n; ++j) amax = std::max(amax, std::fabs(w[j]));
      double best_err = std::numeric_limits<double>::infinity();
      float best_limit = amax;
      for (int k = 0; k < steps; ++k) {
        const float limit = amax * (1.0f - static_cast<float>(k) / static_cast<float>(cfg.clip_grid));
        for (Eigen::Index j = 0; j < n; ++j) clipped[static_cast<std::size_t>(j)] = std::clamp(w[j], -limit, limit);
        GroupParams p = fit_group(clipped.data(), static_cast<std::size_t>(n), cfg.quant.codebook, cfg.quant.sym_scale);
        p.scale = round_scale(p.scale, fit_storage);
        for (Eigen::Index j = 0; j < n; ++j) {
          const float c = clipped[static_cast<std::size_t>(j)];
          delta[j] = decode_value(encode_value(c, p, cfg.quant.codebook), p, cfg.quant.codebook) - static_cast<double>(w[j]);
        }
        const auto d = delta.head(n);
        const double err = d.dot(gram * d);
        if (err < best_err) {
          best_err = err;
          best_limit = limit;
        }
      }
      for (Eigen::Index j = 0; j < n; ++j) w[j] = std::clamp(w[j], -best_limit, best_limit);
    }
  }
}

// The checks every AWQ entry point makes, on weights[0 .. count); returns their total
// output rows.
inline std::size_t awq_check_inputs(const RowMatrixXf* weights, std::size_t count, const RowMatrixXf& X,
                                    const AwqConfig& cfg) {
  detail::require(count > 0, "AWQ: no weight matrices given (expected the linears that share one input)");
  const Eigen::Index in = weights[0].cols();
  detail::require(in > 0, "AWQ: weight 0 has no columns");
  std::size_t outputs = 0;
  for (std::size_t i = 0; i < count; ++i) {
    detail::require(weights[i].rows() > 0 && weights[i].cols() == in, "AWQ: weight ", i, " is ", weights[i].rows(),
                    " x ", weights[i].cols(), ", expected rows > 0 and ", in, " columns (the shared input size)");
    detail::awq_check_finite(weights[i], ("AWQ weight " + std::to_string(i)).c_str());
    outputs += static_cast<std::size_t>(weights[i].rows());
  }
  detail::require(X.rows() > 0, "AWQ: no calibration tokens (X has 0 rows)");
  detail::require(cfg.quant.code_fit == CodeFit::restored, "AWQ: CodeFit::bitsandbytes is bitsandbytes' round-to-",
                  "nearest rule (quantize()); AWQ scales and clips the weights first, use CodeFit::restored");
  detail::require(X.cols() == in, "AWQ: activations have ", X.cols(), " columns, expected in_features = ", in);
  detail::awq_check_finite(X, "AWQ activations");
  detail::require(cfg.grid >= 1, "AWQ: grid is ", cfg.grid, " (expected >= 1, default 20)");
  detail::require(cfg.threads >= 1, "AWQ: threads is ", cfg.threads, " (expected >= 1)");
  detail::require(cfg.max_clip_tokens >= 1, "AWQ: max_clip_tokens is ", cfg.max_clip_tokens, " (expected >= 1)");
  detail::require(cfg.clip_grid >= 1 && cfg.max_shrink > 0.0f && cfg.max_shrink < 1.0f,
                  "AWQ: clip search needs clip_grid >= 1 and 0 < max_shrink < 1");
  effective_group_size(cfg.quant.group_size, static_cast<std::size_t>(in));  // validates
  return outputs;
}

// The clip search's inputs: up to max_clip_tokens rows of X, evenly strided, divided by s.
inline RowMatrixXf awq_clip_inputs(const RowMatrixXf& X, const Eigen::VectorXf& s, const AwqConfig& cfg) {
  const Eigen::Index stride = std::max<Eigen::Index>(1, X.rows() / cfg.max_clip_tokens);
  const Eigen::Index count = std::min<Eigen::Index>((X.rows() + stride - 1) / stride, cfg.max_clip_tokens);
  RowMatrixXf Xs(count, X.cols());
  for (Eigen::Index t = 0; t < count; ++t) Xs.row(t) = X.row(t * stride).cwiseQuotient(s.transpose());
  return Xs;
}

}  // namespace detail

// AWQ for the linears that share one input. weights[i]: out_i × in; X: tokens × in.
// Throws nibble::Error on empty or mismatched shapes, non-finite values, bad options.
inline AwqResult awq_quantize(const std::vector<RowMatrixXf>& weights, const RowMatrixXf& X, const AwqConfig& cfg = {}) {
  const std::size_t outputs = detail::awq_check_inputs(weights.data(), weights.size(), X, cfg);
  const Eigen::Index in = weights[0].cols();

  // Per-channel statistics.
  const Eigen::VectorXd x_mean = X.cwiseAbs().cast<double>().colwise().sum().transpose() / static_cast<double>(X.rows());
  Eigen::VectorXd w_mean = Eigen::VectorXd::Zero(in);
  if (cfg.duo_scaling) {
    const std::size_t gs = effective_group_size(cfg.quant.group_size, static_cast<std::size_t>(in));
    for (const RowMatrixXf& W : weights)
      for (Eigen::Index r = 0; r < W.rows(); ++r)
        for (Eigen::Index b = 0; b < in; b += static_cast<Eigen::Index>(gs)) {
          const Eigen::Index n = std::min<Eigen::Index>(static_cast<Eigen::Index>(gs), in - b);
          const double gmax = W.row(r).segment(b, n).cwiseAbs().maxCoeff();
          for (Eigen::Index c = b; c < b + n; ++c) w_mean[c] += std::fabs(W(r, c)) / (gmax + 1e-6);
        }
    w_mean /= static_cast<double>(outputs);
  }

  detail::AwqObjective objective;
  objective.weights = &weights;
  objective.X = &X;
  objective.use_gram = X.rows() > in;
  objective.threads = cfg.threads;
  if (objective.use_gram) {
    // Products of floats are exact in double, so this is the Gram matrix in double.
    HessianAccumulator acc(static_cast<std::size_t>(in), objective.threads, HessianPrecision::f64);
    acc.add(X);
    objective.gram = acc.gram();
  }
  objective.denominator = static_cast<double>(X.rows()) * static_cast<double>(outputs);

  AwqResult result;
  Eigen::VectorXf best_s = Eigen::VectorXf::Ones(in);
  result.loss_rtn = objective(detail::awq_fake_quantize(weights, best_s, cfg.quant));
  result.loss_best = result.loss_rtn;
  std::vector<double> ratios;
  std::vector<Eigen::VectorXf> candidates;
  for (int k = cfg.duo_scaling ? 0 : 1; k < cfg.grid; ++k) {
    const double ratio = static_cast<double>(k) / cfg.grid;
    Eigen::VectorXf s(in);
    for (Eigen::Index c = 0; c < in; ++c) {
      double v = std::pow(x_mean[c], ratio);
      if (cfg.duo_scaling) v /= std::pow(w_mean[c], 1.0 - ratio) + 1e-4;
      s[c] = static_cast<float>(std::max(v, 1e-4));
    }
    s /= std::sqrt(s.maxCoeff() * s.minCoeff());
    for (Eigen::Index c = 0; c < in; ++c)
      if (!std::isfinite(s[c]) || !(s[c] > 0.0f)) s[c] = 1.0f;
    ratios.push_back(ratio);
    candidates.push_back(std::move(s));
  }
  // The objective deals its blocks of kAwqBlock columns (or rows) to cfg.threads; a
  // layer too narrow for that (fewer blocks than threads) has its candidates evaluated
  // side by side instead, one thread each. A loss does not depend on how many threads
  // computed it, so neither does the choice.
  std::vector<double> losses(candidates.size());
  const Eigen::Index width = objective.use_gram ? in : static_cast<Eigen::Index>(outputs);
  const int side_by_side =
      width < detail::kAwqBlock * cfg.threads
          ? static_cast<int>(std::clamp<std::size_t>(candidates.size(), 1, static_cast<std::size_t>(cfg.threads)))
          : 1;
  if (side_by_side > 1) objective.threads = 1;
  auto evaluate = [&](int worker) {
    for (std::size_t i = static_cast<std::size_t>(worker); i < candidates.size(); i += static_cast<std::size_t>(side_by_side))
      losses[i] = objective(detail::awq_fake_quantize(weights, candidates[i], cfg.quant));
  };
  detail::run_workers(side_by_side, evaluate);
  for (std::size_t i = 0; i < candidates.size(); ++i)
    if (losses[i] < result.loss_best) {
      result.loss_best = losses[i];
      result.best_ratio = ratios[i];
      best_s = candidates[i];
    }
  result.scales = best_s;

  std::vector<RowMatrixXf> scaled;
  for (const RowMatrixXf& W : weights) scaled.push_back(W * best_s.asDiagonal());
  if (cfg.clip_search) {
    const RowMatrixXf Xs = detail::awq_clip_inputs(X, best_s, cfg);
    for (RowMatrixXf& Ws : scaled) detail::awq_clip(Ws, Xs, cfg);
  }
  std::vector<Eigen::MatrixXf> effective;
  for (const RowMatrixXf& Ws : scaled) {
    result.matrices.push_back(quantize(Ws, cfg.quant));
    effective.push_back(awq_dequantize(result.matrices.back(), best_s));
  }
  result.loss_final = objective(effective);
  return result;
}

// AWQ's clip search alone on one linear, then its quantization: with s ≡ 1 the matrix
// awq_quantize({W}, X, cfg) returns with grid = 1, duo_scaling off and clip_search on,
// without the objective (its Gram matrix of X and the losses it reports), which is
// most of the work at small sizes. For linears whose input takes no scales of their
// own (o_proj under grouped-query attention) or whose scales were searched with another
// linear: W is then the scaled weight and input_scales the s already folded upstream,
// so the search sees the inputs X·diag(s)⁻¹ (only the rows it uses are divided).
inline QuantizedMatrix awq_clip_quantize(const RowMatrixXf& W, const RowMatrixXf& X, const AwqConfig& cfg,
                                         const Eigen::VectorXf& input_scales) {
  detail::awq_check_inputs(&W, 1, X, cfg);
  detail::require(input_scales.size() == X.cols(), "AWQ: ", input_scales.size(), " input scales for ", X.cols(),
                  " input channels");
  detail::awq_check_scales(input_scales, "awq_clip_quantize");
  RowMatrixXf Ws = W;
  detail::awq_clip(Ws, detail::awq_clip_inputs(X, input_scales, cfg), cfg);
  return quantize(Ws, cfg.quant);
}

inline QuantizedMatrix awq_clip_quantize(const RowMatrixXf& W, const RowMatrixXf& X, const AwqConfig& cfg = {}) {
  return awq_clip_quantize(W, X, cfg, Eigen::VectorXf::Ones(X.cols()));
}

// Folds AWQ scales into the RMSNorm / LayerNorm that feeds the quantized linears:
// gain_c /= s_c (and bias_c /= s_c), so the norm emits x/s.
inline void fold_scales_into_norm(Eigen::Ref<Eigen::VectorXf> norm_weight, const Eigen::VectorXf& s) {
  detail::require(norm_weight.size() == s.size(), "fold_scales_into_norm: norm has ", norm_weight.size(),
                  " channels, scales have ", s.size());
  detail::awq_check_scales(s, "fold_scales_into_norm");
  norm_weight.array() /= s.array();
}

inline void fold_scales_into_norm(Eigen::Ref<Eigen::VectorXf> norm_weight, Eigen::Ref<Eigen::VectorXf> norm_bias,
                                  const Eigen::VectorXf& s) {
  detail::require(norm_bias.size() == s.size(), "fold_scales_into_norm: bias has ", norm_bias.size(),
                  " channels, scales have ", s.size());
  fold_scales_into_norm(norm_weight, s);
  norm_bias.array() /= s.array();
}

// Folds AWQ scales into the previous linear (e.g. v_proj before o_proj, up_proj before
// down_proj): its output row c is divided by s_c (and its bias entry c).
inline void fold_scales_into_linear_rows(Eigen::Ref<RowMatrixXf> prev_weight, const Eigen::VectorXf& s) {
  detail::require(prev_weight.rows() == s.size(), "fold_scales_into_linear_rows: previous linear has ",
                  prev_weight.rows(), " output rows, scales have ", s.size());
  detail::awq_check_scales(s, "fold_scales_into_linear_rows");
  for (Eigen::Index r = 0; r < prev_weight.rows(); ++r) prev_weight.row(r) /= s[r];
}

inline void fold_scales_into_linear_rows(Eigen::Ref<RowMatrixXf> prev_weight, Eigen::Ref<Eigen::VectorXf> prev_bias,
                                         const Eigen::VectorXf& s) {
  detail::require(prev_bias.size() == s.size(), "fold_scales_into_linear_rows: bias has ", prev_bias.size(),
                  " entries, scales have ", s.size());
  fold_scales_into_linear_rows(prev_weight, s);
  prev_bias.array() /= s.array();
}

}  // namespace nibble
