// Error metrics between a reference and its quantized version.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../format/quantized_matrix.hpp"

namespace nibble {

struct ErrorStats {
  double mse = 0.0;             // mean squared error
  double sqnr_db = 0.0;         // 10·log10(Σ ref² / Σ err²); +inf when exact
  double max_abs = 0.0;         // largest |ref − approx|
  double rel_frobenius = 0.0;   // ‖ref − approx‖_F / ‖ref‖_F
};

template <class A, class B>
ErrorStats compare(const Eigen::MatrixBase<A>& ref, const Eigen::MatrixBase<B>& approx) {
  detail::require(ref.rows() == approx.rows() && ref.cols() == approx.cols(), "compare: shapes differ (",
                  ref.rows(), " x ", ref.cols(), " vs ", approx.rows(), " x ", approx.cols(), ")");
  detail::require(ref.size() > 0, "compare: empty matrices");
  double signal = 0.0, noise = 0.0, max_abs = 0.0;
  for (Eigen::Index c = 0; c < ref.cols(); ++c)
    for (Eigen::Index r = 0; r < ref.rows(); ++r) {
      const double x = static_cast<double>(ref(r, c));
      const double e = x - static_cast<double>(approx(r, c));
      signal += x * x;
      noise += e * e;
      max_abs = std::max(max_abs, std::fabs(e));
    }
  const double inf = std::numeric_limits<double>::infinity();
  ErrorStats s;
  s.mse = noise / static_cast<double>(ref.size());
  s.max_abs = max_abs;
  s.sqnr_db = noise == 0.0 ? inf : (signal == 0.0 ? -inf : 10.0 * std::log10(signal / noise));
  s.rel_frobenius = noise == 0.0 ? 0.0 : (signal == 0.0 ? inf : std::sqrt(noise / signal));
  return s;
}

// Weight-space error of a quantized matrix.
template <class Derived>
ErrorStats weight_error(const Eigen::MatrixBase<Derived>& W, const QuantizedMatrix& Q) {
  return compare(W.template cast<float>(), Q.dequantize());
}

// Output error for activations X (tokens × in_features): compares X·Wᵀ with X·Ŵᵀ.
template <class DW, class DX>
ErrorStats output_error(const Eigen::MatrixBase<DW>& W, const QuantizedMatrix& Q, const Eigen::MatrixBase<DX>& X) {
  detail::require(static_cast<std::size_t>(W.rows()) == Q.rows() && static_cast<std::size_t>(W.cols()) == Q.cols(),
                  "output_error: W is ", W.rows(), " x ", W.cols(), " but the quantized matrix is ", Q.rows(), " x ",
                  Q.cols());
  detail::require(static_cast<std::size_t>(X.cols()) == Q.cols(), "output_error: activations have ", X.cols(),
                  " columns, expected in_features = ", Q.cols());
  const Eigen::MatrixXf Xf = X.template cast<float>();
  const Eigen::MatrixXf ref = Xf * W.template cast<float>().transpose();
  const Eigen::MatrixXf approx = Xf * Q.dequantize().transpose();
  return compare(ref, approx);
}

}  // namespace nibble
