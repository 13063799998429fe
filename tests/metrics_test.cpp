#include <gtest/gtest.h>

#include <cmath>

#include "nibble/quant/metrics.hpp"
#include "nibble/quant/rtn.hpp"
#include "test_util.hpp"

namespace metrics_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

TEST(Metrics, HandComputedValues) {
  Eigen::MatrixXf ref(1, 4), approx(1, 4);
  ref << 1, 2, 3, 4;      // Σ ref² = 30
  approx << 1, 2, 3, 3;   // one error of 1
  const ErrorStats s = compare(ref, approx);
  EXPECT_DOUBLE_EQ(s.mse, 0.25);
  EXPECT_DOUBLE_EQ(s.max_abs, 1.0);
  EXPECT_NEAR(s.sqnr_db, 10 * std::log10(30.0), 1e-12);
  EXPECT_NEAR(s.rel_frobenius, std::sqrt(1.0 / 30.0), 1e-12);
  const ErrorStats exact = compare(ref, ref);
  EXPECT_TRUE(std::isinf(exact.sqnr_db) && exact.sqnr_db > 0);
  EXPECT_EQ(exact.rel_frobenius, 0.0);
  const Eigen::MatrixXf zero = Eigen::MatrixXf::Zero(1, 4);
  EXPECT_FALSE(std::isnan(compare(zero, zero).sqnr_db));
  EXPECT_THROW(compare(ref, Eigen::MatrixXf(2, 2)), Error);
}

TEST(Metrics, OutputErrorAgainstDirectComputation) {
  const Eigen::MatrixXf W = test::gaussian_matrix(16, 64, 21);
  const Eigen::MatrixXf X = test::gaussian_matrix(50, 64, 22);
  QuantConfig c;
  c.codebook = Codebook::nf4;
  c.group_size = 32;
  const QuantizedMatrix q = quantize(W, c);
  const ErrorStats s = output_error(W, q, X);
  const Eigen::MatrixXf diff = X * W.transpose() - X * q.dequantize().transpose();
  EXPECT_NEAR(s.rel_frobenius, diff.norm() / (X * W.transpose()).norm(), 1e-5);
  EXPECT_THROW(output_error(W, q, Eigen::MatrixXf(5, 63)), Error);
  EXPECT_THROW(output_error(Eigen::MatrixXf(W.leftCols(32)), q, X), Error);
}

}  // namespace metrics_test
