// HessianAccumulator: the second-moment matrix of a layer's inputs, built from
// calibration activations streamed in batches, for GPTQ.
//
//   H = (2/n) · Σ_tokens x xᵀ          (cols × cols, n = number of tokens)
//
// GPTQ's reference (IST-DASLab gptq, add_batch) keeps a running average in fp32 and
// counts n in *sequences*; nibble counts tokens. The absolute scale of H does not
// change GPTQ's result (damping is relative to mean diag H and the updates use ratios
// of the inverse factor), so only the conditioning matters.
//
// Work: only the lower triangle, as a symmetric rank-k update (syrk) per block, on
// detail::syrk_lower / detail::gemm (linalg.hpp: Eigen, or a BLAS with NIBBLE_USE_BLAS).
//
// Accuracy, HessianPrecision::f32 (the default): each batch is cut into chunks of at
// most kHessianChunkTokens tokens; a chunk's XᵀX is one float product (sums of at most
// 512 terms: about 1e-5 relative rounding at worst), and chunk products are added into
// a double-precision sum, so the error does not grow with the number of tokens.
// HessianPrecision::f64 converts each chunk to double and accumulates in double
// (products of floats are exact in double; about 1e-16 relative per addition), at
// about twice the cost: for inputs whose Hessian is so ill-conditioned that 1e-5
// matters (GPTQ damps by 1% of the mean diagonal, which usually dwarfs it).
//
// Threads: the lower triangle is cut into fixed column panels and panels are dealt
// to threads; a panel's arithmetic does not depend on which thread runs it, so the
// result is bit-identical for every thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "linalg.hpp"
#include "rtn.hpp"

namespace nibble {

inline constexpr Eigen::Index kHessianChunkTokens = 512;
inline constexpr Eigen::Index kHessianPanelCols = 128;

enum class HessianPrecision {
  f32,  // float products of <= kHessianChunkTokens tokens, summed in double
  f64,  // double products and sums
};

class HessianAccumulator {
 public:
  explicit HessianAccumulator(std::size_t cols, int threads = 1, HessianPrecision precision = HessianPrecision::f32)
      : cols_(cols), threads_(threads), precision_(precision) {
    detail::require(cols > 0, "HessianAccumulator: cols is 0 (expected in_features > 0)");
    detail::require(threads >= 1, "HessianAccumulator: threads is ", threads, " (expected >= 1)");
    const auto n = static_cast<Eigen::Index>(cols);
    sum_ = Eigen::MatrixXd::Zero(n, n);
  }

  // Adds a batch of activations, X: tokens × cols (one token per row). The whole batch
  // is checked before anything is added, so a rejected batch leaves the sum unchanged.
  void add(const Eigen::Ref<const RowMatrixXf>& X) {
    const auto n = static_cast<Eigen::Index>(cols_);
    detail::require(X.cols() == n, "HessianAccumulator::add: activations have ", X.cols(),
                    " columns, expected in_features = ", cols_);
    for (Eigen::Index t = 0; t < X.rows(); ++t)
      for (Eigen::Index c = 0; c < n; ++c)
        if (!std::isfinite(X(t, c)))
          detail::throw_error("HessianAccumulator::add: activation is not finite (", X(t, c), ") at token ", t,
                              " of this batch (token ", tokens_ + static_cast<std::size_t>(t),
                              " overall), column ", c);
    if (X.rows() == 0) return;

    const Eigen::Index panels = (n + kHessianPanelCols - 1) / kHessianPanelCols;
    const int workers = static_cast<int>(std::min<Eigen::Index>(threads_, panels));
    // Panels are fixed (they do not depend on the thread count) and dealt round robin.
    // Panel p: columns [j0, j0 + width) of the lower triangle, rows j0 .. n − 1; its
    // diagonal block is a syrk, the part below it a general product.
    auto work = [&](int worker) {
      Eigen::MatrixXf buffer;   // f32: a chunk's panel, before it is added in double
      if (precision_ == HessianPrecision::f32) buffer.resize(n, std::min(kHessianPanelCols, n));
      Eigen::MatrixXd chunk_d;  // f64: the chunk in double, transposed (cols × tokens)
      for (Eigen::Index t0 = 0; t0 < X.rows(); t0 += kHessianChunkTokens) {
        const Eigen::Index count = std::min(kHessianChunkTokens, X.rows() - t0);
        const auto chunk = X.middleRows(t0, count);
        if (precision_ == HessianPrecision::f64) chunk_d = chunk.transpose().cast<double>();
        for (Eigen::Index p = worker; p < panels; p += workers) {
          const Eigen::Index j0 = p * kHessianPanelCols;
          const Eigen::Index width = std::min(kHessianPanelCols, n - j0);
          const Eigen::Index below = n - j0 - width;
          auto target = sum_.block(j0, j0, n - j0, width);
          if (precision_ == HessianPrecision::f64) {
            detail::syrk_lower(target.topRows(width), chunk_d.middleRows(j0, width), true);
            detail::gemm(target.bottomRows(below), chunk_d.middleRows(j0 + width, below),
                         chunk_d.middleRows(j0, width).transpose(), 1.0, true);
            continue;
          }
          auto product = buffer.topLeftCorner(n - j0, width);
          detail::syrk_lower(product.topRows(width), chunk.middleCols(j0, width).transpose(), false);
          detail::gemm(product.bottomRows(below), chunk.middleCols(j0 + width, below).transpose(),
                       chunk.middleCols(j0, width), 1.0f, false);
          target.topRows(width).triangularView<Eigen::Lower>() += product.topRows(width).cast<double>();
          target.bottomRows(below) += product.bottomRows(below).cast<double>();
        }
      }
    };
    detail::run_workers(workers, work);
    tokens_ += static_cast<std::size_t>(X.rows());
  }

  std::size_t tokens() const { return tokens_; }
  HessianPrecision precision() const { return precision_; }
  std::size_t cols() const { return cols_; }

  // H = (2/n)·Σ x xᵀ, full symmetric matrix. Throws if no token was added.
  Eigen::MatrixXd hessian() const {
    detail::require(tokens_ > 0, "HessianAccumulator::hessian: no calibration tokens were added");
    Eigen::MatrixXd H = gram();
    H *= 2.0 / static_cast<double>(tokens_);
    return H;
  }

  // Σ x xᵀ, full symmetric matrix, without the 2/n factor (zero before any token).
  Eigen::MatrixXd gram() const {
    Eigen::MatrixXd G = sum_.triangularView<Eigen::Lower>();
    G.triangularView<Eigen::StrictlyUpper>() = sum_.transpose();
    return G;
  }

 private:
  std::size_t cols_;
  int threads_;
  HessianPrecision precision_;
  std::size_t tokens_ = 0;
  Eigen::MatrixXd sum_;  // Σ x xᵀ, lower triangle valid
};

}  // namespace nibble
