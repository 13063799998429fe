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
// Accuracy: each batch is cut into chunks of at most kHessianChunkTokens tokens; a
// chunk's XᵀX is one float matrix product (sums of at most 512 terms: about 1e-5
// relative rounding at worst), and chunk products are added into a double-precision
// sum. The error therefore does not grow with the number of tokens.
//
// Threads: the lower triangle is cut into fixed column panels and panels are dealt
// to threads; a panel's arithmetic does not depend on which thread runs it, so the
// result is bit-identical for every thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <exception>
#include <thread>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "rtn.hpp"

namespace nibble {

inline constexpr Eigen::Index kHessianChunkTokens = 512;
inline constexpr Eigen::Index kHessianPanelCols = 128;

class HessianAccumulator {
 public:
  explicit HessianAccumulator(std::size_t cols, int threads = 1) : cols_(cols), threads_(threads) {
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
    auto work = [&](int worker) {
      Eigen::MatrixXf product;
      for (Eigen::Index t0 = 0; t0 < X.rows(); t0 += kHessianChunkTokens) {
        const Eigen::Index count = std::min(kHessianChunkTokens, X.rows() - t0);
        const auto chunk = X.middleRows(t0, count);
        for (Eigen::Index p = worker; p < panels; p += workers) {
          // Panel p: columns [j0, j0 + width) of the lower triangle, rows j0 .. n − 1.
          const Eigen::Index j0 = p * kHessianPanelCols;
          const Eigen::Index width = std::min(kHessianPanelCols, n - j0);
          product.noalias() = chunk.rightCols(n - j0).transpose() * chunk.middleCols(j0, width);
          sum_.block(j0, j0, n - j0, width) += product.cast<double>();
        }
      }
    };
    run_workers(workers, work);
    tokens_ += static_cast<std::size_t>(X.rows());
  }

  std::size_t tokens() const { return tokens_; }
  std::size_t cols() const { return cols_; }

  // H = (2/n)·Σ x xᵀ, full symmetric matrix. Throws if no token was added.
  Eigen::MatrixXd hessian() const {
    detail::require(tokens_ > 0, "HessianAccumulator::hessian: no calibration tokens were added");
    Eigen::MatrixXd H = sum_.triangularView<Eigen::Lower>();
    H.triangularView<Eigen::StrictlyUpper>() = sum_.transpose();
    H *= 2.0 / static_cast<double>(tokens_);
    return H;
  }

 private:
  template <class Work>
  static void run_workers(int workers, Work& work) {
    std::vector<std::thread> pool;
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
    for (int w = 1; w < workers; ++w)
      pool.emplace_back([&, w] {
        try {
          work(w);
        } catch (...) {
          errors[static_cast<std::size_t>(w)] = std::current_exception();
        }
      });
    try {
      work(0);
    } catch (...) {
      errors[0] = std::current_exception();
    }
    for (auto& t : pool) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
  }

  std::size_t cols_;
  int threads_;
  std::size_t tokens_ = 0;
  Eigen::MatrixXd sum_;  // Σ x xᵀ, lower triangle valid
};

}  // namespace nibble
