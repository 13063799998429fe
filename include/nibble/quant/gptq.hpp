// GPTQ (Frantar et al. 2022, arXiv 2210.17323): quantizes a weight matrix one input
// column at a time and pushes each column's rounding error onto the columns not yet
// quantized, weighted by the inverse Hessian of the layer's inputs, so the layer
// output X·Wᵀ moves as little as possible.
//
// Follows IST-DASLab gptq fasterquant (reference/algorithms.md §2.1):
//   1. dead inputs (diag H == 0): H[d,d] = 1, W[:,d] = 0
//   2. act_order: columns processed by descending diag H (stable sort, deterministic)
//   3. H += damp · mean(diag H) · I; U = upper Cholesky factor of H⁻¹ (Uᵀ U = H⁻¹)
//   4. column i: q = Q(w_i); e = (w_i − q) / U[i,i]; later columns −= e · U[i, later]
//      inside a block of `block_size` columns, and one matrix product per block for
//      the columns after it (the "lazy batch" update)
//   loss = ½ Σ e², which equals ½ tr(ΔW·H_damped·ΔWᵀ) for ΔW = W − Ŵ.
//
// Where nibble differs from the reference, on purpose:
//   - Dynamic groups (the default without act_order) get their scale/zero from the
//     weights as updated by every earlier column, also for columns that lie past the
//     current block (their pending block update is applied first). The reference reads
//     stale values there when group_size < block_size. Result: any block_size gives the
//     same math as the unblocked algorithm.
//   - act_order uses static groups by default (parameters fitted on the original W in
//     original column order, before any update), so a stored group is a contiguous
//     column range and inference needs no g_idx. permuted_groups instead forms groups
//     along the processing order, from updated weights (AutoGPTQ's desc_act without
//     static_groups, whose checkpoints carry a non-monotonic g_idx): the returned
//     matrix then holds the columns in processing order and input_order says which
//     input each column reads, y = Q · x[input_order].
//   - Group parameters come from fit_group / fit_group_mse (the library's RTN rules):
//     uint4_asym is GPTQ's min/max widened to contain 0; int4_sym, NF4 and FP4 work
//     the same way, and the error fed back is always the dequantized value.
//   - Stored scales: for f16/bf16 the scale is rounded to its stored value right after
//     it is fitted, before any column is quantized with it. dq8 (double quantization)
//     needs all scales at once, so: static groups are fitted, double-quantized, then
//     used; dynamic groups run GPTQ twice, the first pass only to find the scales, the
//     second pass with those scales (as stored after double quantization) and their
//     zero points held fixed. Either way the returned matrix holds exactly the values
//     GPTQ chose and fed back.
//   - Rows are processed in fixed chunks of kGptqRowChunk rows (GPTQ treats rows
//     independently); chunks are dealt to threads, so results are bit-identical for
//     every thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <numeric>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/Core>

#include "../core/error.hpp"
#include "../format/quantized_matrix.hpp"
#include "group_quantizer.hpp"
#include "linalg.hpp"
#include "rtn.hpp"

namespace nibble {

inline constexpr std::size_t kGptqRowChunk = 64;

struct GptqConfig {
  QuantConfig quant;                  // codebook, group_size (or kPerRow), scale_format, sym_scale, clip
  double damp = 0.01;                 // fraction of mean(diag H) added to the diagonal
  int block_size = 128;               // lazy-batch width (any value >= 1 gives the same math)
  bool act_order = false;             // descending diag H order; implies static groups
  bool static_groups = false;         // group params from the original W (on with act_order ...)
  bool permuted_groups = false;       // ... unless this: act_order groups along the processing order
  int max_damp_retries = 10;          // on Cholesky failure: damp doubles (at least 0.01) per retry
  bool allow_rtn_fallback = false;    // after the retries: RTN instead of nibble::Error
  int threads = 1;
  // Called after each chunk of rows with (rows done, rows total), from worker threads
  // but never concurrently. dq8 scales with dynamic groups run two passes, so the
  // count goes from 0 to total twice.
  std::function<void(std::size_t done, std::size_t total)> progress;
};

struct GptqReport {
  double damp_used = 0.0;        // relative damping that succeeded (fraction of mean diag H)
  int damp_retries = 0;          // Cholesky failures before it succeeded
  bool fell_back_to_rtn = false;
  double loss = 0.0;             // ½ Σ e²; for the RTN fallback ½ tr(ΔW·H·ΔWᵀ) with the undamped H
  std::size_t dead_columns = 0;  // inputs with diag H == 0 (weights set to 0)
};

struct GptqResult {
  QuantizedMatrix matrix;
  GptqReport report;
  // Empty, or (permuted_groups) column j of matrix belongs to input column input_order[j].
  std::vector<std::uint32_t> input_order;
};

// The weight a matrix with an input order stands for, in the original input order
// (column j of m becomes column input_order[j]; an empty order is the identity).
inline Eigen::MatrixXf gptq_dequantize(const QuantizedMatrix& m, const std::vector<std::uint32_t>& input_order) {
  const Eigen::MatrixXf q = m.dequantize();
  if (input_order.empty()) return q;
  detail::require(input_order.size() == m.cols(), "gptq_dequantize: input_order has ", input_order.size(),
                  " entries for ", m.cols(), " columns");
  Eigen::MatrixXf w(q.rows(), q.cols());
  for (Eigen::Index j = 0; j < q.cols(); ++j) w.col(input_order[static_cast<std::size_t>(j)]) = q.col(j);
  return w;
}
inline Eigen::MatrixXf gptq_dequantize(const GptqResult& r) { return gptq_dequantize(r.matrix, r.input_order); }

using RowMatrixXd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace detail {

// Upper Cholesky factor U of (H + λI)⁻¹ with Uᵀ U = (H + λI)⁻¹, or false if the
// factorisation fails or produces non-finite values.
//
// Without forming the inverse: with P the reversal permutation, factor P·H·P = L·Lᵀ;
// then H = V·Vᵀ with V = P·L·P upper triangular, so H⁻¹ = V⁻ᵀ·V⁻¹ and U = V⁻¹ (upper,
// positive diagonal: the unique Cholesky factor the reference gets from
// chol(cholesky_inverse(chol(H)), upper=True)). One Cholesky and one triangular
// inverse instead of a Cholesky, a full inverse and a second Cholesky.
inline bool gptq_inverse_factor(const Eigen::MatrixXd& H, double lambda, RowMatrixXd& U) {
  const Eigen::Index n = H.rows();
  Eigen::MatrixXd reversed = H.reverse();
  reversed.diagonal().array() += lambda;
  if (!cholesky_lower_in_place(reversed)) return false;
  Eigen::MatrixXd V = reversed.reverse();  // upper triangular, strictly lower part zero
  for (Eigen::Index i = 0; i < n; ++i)
    if (!(V(i, i) > 0.0)) return false;
  upper_triangular_inverse_in_place(V);
  U = V;
  if (!U.allFinite()) return false;
  return true;
}

struct GptqPlan {
  std::size_t rows = 0, cols = 0, group_size = 0, groups_per_row = 0;
  Codebook codebook = Codebook::int4_sym;
  SymScale sym_scale = SymScale::absmax_over_7;
  ClipSearch clip;
  ScaleFormat fit_storage = ScaleFormat::f32;  // rounding applied when a scale is fitted
  std::vector<std::size_t> perm;               // processing position → original column
  bool fixed_params = false;                   // params given up front (static groups, dq8 pass 2)
  std::size_t block_size = 128;
};

// Runs GPTQ on rows [row0, row0 + count) of W (original column order). Writes codes
// (unpacked, rows × cols, original order) and, for dynamic groups, the params of these
// rows. Returns the chunk's Σ e².
inline double gptq_chunk(const RowMatrixXf& W, std::size_t row0, std::size_t count, const RowMatrixXd& U,
                         const GptqPlan& plan, std::vector<GroupParams>& params, std::vector<std::uint8_t>& codes) {
  const auto R = static_cast<Eigen::Index>(count);
  const auto n = static_cast<Eigen::Index>(plan.cols);
  const std::size_t G = plan.groups_per_row;
  Eigen::MatrixXd Wc(R, n);  // column-major: a column of this chunk is contiguous
  for (Eigen::Index r = 0; r < R; ++r)
    for (Eigen::Index i = 0; i < n; ++i)
      Wc(r, i) = W(static_cast<Eigen::Index>(row0) + r, static_cast<Eigen::Index>(plan.perm[static_cast<std::size_t>(i)]));

  const auto B = static_cast<Eigen::Index>(plan.block_size);
  Eigen::MatrixXd Err(R, B);
  std::vector<GroupParams> current(count);
  std::vector<float> group_values(plan.group_size);
  Eigen::MatrixXd overhang;
  double sum_e2 = 0.0;

  for (Eigen::Index i1 = 0; i1 < n; i1 += B) {
    const Eigen::Index i2 = std::min(i1 + B, n);
    for (Eigen::Index i = i1; i < i2; ++i) {
      const std::size_t col = plan.perm[static_cast<std::size_t>(i)];
      const std::size_t g = col / plan.group_size;
      if (!plan.fixed_params && static_cast<std::size_t>(i) % plan.group_size == 0) {
        // Group start: fit on the weights as updated by every earlier column. Columns
        // past this block have not yet received this block's pending update.
        const Eigen::Index end = std::min<Eigen::Index>(i + static_cast<Eigen::Index>(plan.group_size), n);
        const Eigen::Index inside = std::min(end, i2) - i;
        if (end > i2) {
          overhang = Wc.middleCols(i2, end - i2);
          if (i > i1) gemm(overhang, Err.leftCols(i - i1), U.block(i1, i2, i - i1, end - i2), -1.0, true);
        }
        for (Eigen::Index r = 0; r < R; ++r) {
          for (Eigen::Index j = 0; j < inside; ++j) group_values[static_cast<std::size_t>(j)] = static_cast<float>(Wc(r, i + j));
          for (Eigen::Index j = inside; j < end - i; ++j)
            group_values[static_cast<std::size_t>(j)] = static_cast<float>(overhang(r, j - inside));
          const GroupParams p = fit_group_mse(group_values.data(), static_cast<std::size_t>(end - i), plan.codebook,
                                              plan.sym_scale, plan.clip, plan.fit_storage);
          current[static_cast<std::size_t>(r)] = p;
          params[(row0 + static_cast<std::size_t>(r)) * G + g] = p;
        }
      }
      const double d = U(i, i);
      for (Eigen::Index r = 0; r < R; ++r) {
        const GroupParams& p = plan.fixed_params ? params[(row0 + static_cast<std::size_t>(r)) * G + g]
                                                 : current[static_cast<std::size_t>(r)];
        const double w = Wc(r, i);
        const std::uint8_t code = encode_value(static_cast<float>(w), p, plan.codebook);
        const double q = decode_value(code, p, plan.codebook);
        codes[(row0 + static_cast<std::size_t>(r)) * plan.cols + col] = code;
        const double e = (w - q) / d;
        Err(r, i - i1) = e;
        sum_e2 += e * e;
      }
      if (i + 1 < i2)
        Wc.middleCols(i + 1, i2 - i - 1).noalias() -= Err.col(i - i1) * U.row(i).segment(i + 1, i2 - i - 1);
    }
    if (i2 < n) gemm(Wc.rightCols(n - i2), Err.leftCols(i2 - i1), U.block(i1, i2, i2 - i1, n - i2), -1.0, true);
  }
  return sum_e2;
}

// Runs every chunk of rows, on `threads` threads. Returns ½ Σ e² (summed in chunk order).
inline double gptq_run(const RowMatrixXf& W, const RowMatrixXd& U, const GptqPlan& plan, int threads,
                       const std::function<void(std::size_t, std::size_t)>& progress,
                       std::vector<GroupParams>& params, std::vector<std::uint8_t>& codes) {
  const std::size_t chunks = (plan.rows + kGptqRowChunk - 1) / kGptqRowChunk;
  std::vector<double> chunk_sums(chunks, 0.0);
  std::atomic<std::size_t> next{0};
  std::mutex progress_mutex;
  std::size_t rows_done = 0;
  auto work = [&] {
    for (std::size_t c = next++; c < chunks; c = next++) {
      const std::size_t row0 = c * kGptqRowChunk;
      const std::size_t count = std::min(kGptqRowChunk, plan.rows - row0);
      chunk_sums[c] = gptq_chunk(W, row0, count, U, plan, params, codes);
      if (progress) {
        std::lock_guard<std::mutex> lock(progress_mutex);
        rows_done += count;
        progress(rows_done, plan.rows);
      }
    }
  };
  // Workers take chunks in any order (chunk_sums keeps the order of the sum); the first
  // error stops the handing out of further chunks.
  auto worker = [&](int) {
    try {
      work();
    } catch (...) {
      next = chunks;
      throw;
    }
  };
  detail::run_workers(static_cast<int>(std::clamp<std::size_t>(chunks, 1, static_cast<std::size_t>(threads))), worker);
  double total = 0.0;
  for (double s : chunk_sums) total += s;
  return 0.5 * total;
}

// Fits every group on the original (unupdated) W, in original column order.
inline std::vector<GroupParams> gptq_static_params(const RowMatrixXf& W, const GptqPlan& plan) {
  std::vector<GroupParams> params(plan.rows * plan.groups_per_row);
  for (std::size_t r = 0; r < plan.rows; ++r)
    for (std::size_t g = 0; g < plan.groups_per_row; ++g) {
      const std::size_t begin = g * plan.group_size;
      const std::size_t n = std::min(plan.cols, begin + plan.group_size) - begin;
      params[r * plan.groups_per_row + g] =
          fit_group_mse(W.row(static_cast<Eigen::Index>(r)).data() + begin, n, plan.codebook, plan.sym_scale,
                        plan.clip, plan.fit_storage);
    }
  return params;
}

inline std::vector<float> scales_of(const std::vector<GroupParams>& params) {
  std::vector<float> s(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) s[i] = params[i].scale;
  return s;
}

// Replaces each group's scale by the value `format` stores for it (double
// quantization depends on all scales together), so GPTQ optimises what is kept.
inline void use_stored_scales(std::vector<GroupParams>& params, const std::vector<float>& scales, ScaleFormat format) {
  const ScaleArray stored = ScaleArray::encode(scales, format);
  for (std::size_t i = 0; i < params.size(); ++i) params[i].scale = stored.get(i);
}

}  // namespace detail

// GPTQ-quantizes W (rows = out_features, cols = in_features) with the input Hessian H
// (cols × cols, e.g. HessianAccumulator::hessian(); only its lower triangle is read).
// Throws nibble::Error on bad shapes, non-finite values, a negative diagonal, or a
// Cholesky failure after all damping retries (unless allow_rtn_fallback).
template <class Derived>
GptqResult gptq_quantize(const Eigen::MatrixBase<Derived>& W_in, const Eigen::MatrixXd& H_in, const GptqConfig& cfg) {
  RowMatrixXf W = to_checked_float(W_in, cfg.quant.non_finite, "GPTQ weight matrix");
  const std::size_t rows = static_cast<std::size_t>(W.rows()), cols = static_cast<std::size_t>(W.cols());
  const auto n = static_cast<Eigen::Index>(cols);
  detail::require(H_in.rows() == n && H_in.cols() == n, "GPTQ: Hessian is ", H_in.rows(), " x ", H_in.cols(),
                  ", expected ", cols, " x ", cols, " (in_features of the weight)");
  for (Eigen::Index c = 0; c < n; ++c)
    for (Eigen::Index r = c; r < n; ++r)
      detail::require(std::isfinite(H_in(r, c)), "GPTQ: Hessian is not finite (", H_in(r, c), ") at (", r, ", ", c,
                      ")");
  for (Eigen::Index i = 0; i < n; ++i)
    detail::require(H_in(i, i) >= 0.0, "GPTQ: Hessian diagonal entry ", i, " is negative (", H_in(i, i),
                    "); a Hessian 2/n·Σ x xᵀ has a non-negative diagonal");
  detail::require(std::isfinite(cfg.damp) && cfg.damp >= 0.0, "GPTQ: damp is ", cfg.damp,
                  " (expected a finite value >= 0, typically 0.01)");
  detail::require(cfg.block_size >= 1, "GPTQ: block_size is ", cfg.block_size, " (expected >= 1, typically 128)");
  detail::require(cfg.quant.code_fit == CodeFit::restored, "GPTQ: CodeFit::bitsandbytes is bitsandbytes' round-to-",
                  "nearest rule (quantize()); GPTQ chooses its own codes, use CodeFit::restored");
  detail::require(cfg.threads >= 1, "GPTQ: threads is ", cfg.threads, " (expected >= 1)");
  detail::require(cfg.max_damp_retries >= 0, "GPTQ: max_damp_retries is negative");
  if (cfg.quant.clip.enabled)
    detail::require(cfg.quant.clip.step > 0.0f && cfg.quant.clip.min_shrink > 0.0f && cfg.quant.clip.min_shrink <= 1.0f,
                    "clip search needs 0 < min_shrink <= 1 and step > 0");

  if (cfg.act_order && cfg.permuted_groups) {
    // Dynamic groups in processing order are plain GPTQ on the permuted problem.
    std::vector<std::uint32_t> order(cols);
    std::iota(order.begin(), order.end(), 0u);
    auto diag = [&](std::uint32_t c) { return H_in(c, c) == 0.0 ? 1.0 : H_in(c, c); };  // dead inputs count as 1
    std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) { return diag(a) > diag(b); });
    RowMatrixXf Wp(W.rows(), W.cols());
    Eigen::MatrixXd Hp(n, n);
    const Eigen::MatrixXd H_full = H_in.selfadjointView<Eigen::Lower>();
    for (Eigen::Index j = 0; j < n; ++j) {
      Wp.col(j) = W.col(order[static_cast<std::size_t>(j)]);
      for (Eigen::Index i = 0; i < n; ++i) Hp(i, j) = H_full(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(j)]);
    }
    GptqConfig plain = cfg;
    plain.act_order = plain.permuted_groups = plain.static_groups = false;
    GptqResult result = gptq_quantize(Wp, Hp, plain);
    if (!result.report.fell_back_to_rtn) result.input_order = std::move(order);
    else result.matrix = quantize(W, cfg.quant);  // RTN needs no order
    return result;
  }

  detail::GptqPlan plan;
  plan.rows = rows;
  plan.cols = cols;
  plan.group_size = effective_group_size(cfg.quant.group_size, cols);
  plan.groups_per_row = (cols + plan.group_size - 1) / plan.group_size;
  plan.codebook = cfg.quant.codebook;
  plan.sym_scale = cfg.quant.sym_scale;
  plan.clip = cfg.quant.clip;
  const ScaleFormat format = cfg.quant.scale_format;
  plan.fit_storage = format == ScaleFormat::dq8 ? ScaleFormat::f32 : format;
  plan.block_size = static_cast<std::size_t>(cfg.block_size);

  GptqReport report;
  Eigen::MatrixXd H = H_in.selfadjointView<Eigen::Lower>();
  for (Eigen::Index i = 0; i < n; ++i)
    if (H(i, i) == 0.0) {
      H(i, i) = 1.0;
      W.col(i).setZero();
      ++report.dead_columns;
    }

  plan.perm.resize(cols);
  std::iota(plan.perm.begin(), plan.perm.end(), std::size_t{0});
  if (cfg.act_order)
    std::stable_sort(plan.perm.begin(), plan.perm.end(), [&](std::size_t a, std::size_t b) {
      return H(static_cast<Eigen::Index>(a), static_cast<Eigen::Index>(a)) >
             H(static_cast<Eigen::Index>(b), static_cast<Eigen::Index>(b));
    });
  Eigen::MatrixXd Hp(n, n);
  for (Eigen::Index j = 0; j < n; ++j)
    for (Eigen::Index i = 0; i < n; ++i)
      Hp(i, j) = H(static_cast<Eigen::Index>(plan.perm[static_cast<std::size_t>(i)]),
                   static_cast<Eigen::Index>(plan.perm[static_cast<std::size_t>(j)]));

  // Damping, retried with growing values when a factorisation fails.
  // From the permuted matrix, so that a permuted input gives bit-identical damping.
  const double mean_diag = Hp.diagonal().mean();
  RowMatrixXd U;
  double rel = cfg.damp;
  bool factored = false;
  for (int attempt = 0; attempt <= cfg.max_damp_retries; ++attempt) {
    if (attempt > 0) {
      rel = std::max(2.0 * rel, 0.01);
      ++report.damp_retries;
    }
    if (detail::gptq_inverse_factor(Hp, rel * mean_diag, U)) {
      factored = true;
      break;
    }
  }
  if (!factored) {
    detail::require(cfg.allow_rtn_fallback, "GPTQ: Cholesky factorisation of the Hessian failed even with damp ", rel,
                    " after ", report.damp_retries,
                    " retries (the Hessian is not positive semi-definite; add calibration data, or set "
                    "allow_rtn_fallback to accept round-to-nearest)");
    RowMatrixXf W_orig = to_checked_float(W_in, cfg.quant.non_finite, "GPTQ weight matrix");
    QuantizedMatrix q = quantize(W_orig, cfg.quant);
    const Eigen::MatrixXd delta = (W_orig.cast<double>() - q.dequantize().cast<double>());
    const Eigen::MatrixXd H_full = H_in.selfadjointView<Eigen::Lower>();
    report.fell_back_to_rtn = true;
    report.damp_used = rel;
    report.loss = 0.5 * (delta * H_full).cwiseProduct(delta).sum();
    return {std::move(q), report, {}};
  }
  report.damp_used = rel;

  std::vector<GroupParams> params(rows * plan.groups_per_row);
  std::vector<std::uint8_t> codes(rows * cols, 0);
  std::vector<float> scales_to_store;
  const bool static_groups = cfg.act_order || cfg.static_groups || plan.groups_per_row == 1;
  if (static_groups) {
    params = detail::gptq_static_params(W, plan);
    scales_to_store = detail::scales_of(params);
    if (format == ScaleFormat::dq8) detail::use_stored_scales(params, scales_to_store, format);
    plan.fixed_params = true;
    report.loss = detail::gptq_run(W, U, plan, cfg.threads, cfg.progress, params, codes);
  } else {
    report.loss = detail::gptq_run(W, U, plan, cfg.threads, cfg.progress, params, codes);
    scales_to_store = detail::scales_of(params);
    if (format == ScaleFormat::dq8) {
      // Second pass with the scales as double quantization stores them.
      detail::use_stored_scales(params, scales_to_store, format);
      plan.fixed_params = true;
      report.loss = detail::gptq_run(W, U, plan, cfg.threads, cfg.progress, params, codes);
    }
  }

  ScaleArray stored = ScaleArray::encode(scales_to_store, format);
  for (std::size_t i = 0; i < params.size(); ++i)
    detail::require(stored.get(i) == params[i].scale, "GPTQ internal error: stored scale ", i, " (", stored.get(i),
                    ") differs from the scale used (", params[i].scale, ")");
  std::vector<std::uint8_t> packed(rows * packed_size(cols), 0);
  for (std::size_t r = 0; r < rows; ++r) pack_nibbles(codes.data() + r * cols, cols, packed.data() + r * packed_size(cols));
  ZeroPoints zeros;
  if (plan.codebook == Codebook::uint4_asym) {
    std::vector<std::uint8_t> z(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) z[i] = static_cast<std::uint8_t>(params[i].zero);
    zeros = ZeroPoints::uint4(z);
  }
  return {QuantizedMatrix(rows, cols, plan.group_size, plan.codebook, std::move(packed), std::move(stored),
                          std::move(zeros)),
          report, {}};
}

}  // namespace nibble
