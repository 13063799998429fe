#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "nibble/quant/hessian.hpp"
#include "test_util.hpp"

namespace hessian_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

// One-shot reference: 2/n · XᵀX in double, computed directly.
static Eigen::MatrixXd reference_hessian(const Eigen::MatrixXf& X) {
  const Eigen::MatrixXd Xd = X.cast<double>();
  return (2.0 / static_cast<double>(X.rows())) * (Xd.transpose() * Xd);
}

TEST(Hessian, StreamedBatchesEqualOneShotProduct) {
  const Eigen::MatrixXf X = test::gaussian_matrix(1300, 150, 7);  // 150 cols: two panels, ragged
  const Eigen::MatrixXd ref = reference_hessian(X);
  HessianAccumulator acc(150);
  Eigen::Index t = 0;
  for (Eigen::Index batch : {1, 37, 600, 662}) {  // 600 > one chunk of 512 tokens
    const RowMatrixXf part = X.middleRows(t, batch);
    acc.add(part);
    t += batch;
  }
  ASSERT_EQ(t, X.rows());
  EXPECT_EQ(acc.tokens(), 1300u);
  EXPECT_EQ(acc.cols(), 150u);
  const Eigen::MatrixXd H = acc.hessian();
  EXPECT_TRUE(H.isApprox(H.transpose(), 0.0));  // exactly symmetric
  EXPECT_LT((H - ref).cwiseAbs().maxCoeff(), 1e-5 * ref.cwiseAbs().maxCoeff());
}

TEST(Hessian, BitIdenticalForEveryThreadCount) {
  const Eigen::MatrixXf X = test::gaussian_matrix(700, 300, 8);
  const RowMatrixXf Xr = X;
  Eigen::MatrixXd first;
  for (int threads : {1, 2, 3}) {
    HessianAccumulator acc(300, threads);
    acc.add(Xr);
    if (threads == 1) first = acc.hessian();
    else EXPECT_TRUE(acc.hessian() == first) << threads << " threads";
  }
}

// A million tokens: the double accumulation keeps the float rounding of one 512-token
// chunk (about 1e-5 relative at worst); a plain float running sum would be off by %.
TEST(Hessian, AccurateForAMillionTokens) {
  RowMatrixXf X(1000000, 3);
  for (Eigen::Index t = 0; t < X.rows(); ++t) {
    X(t, 0) = 0.1f;
    X(t, 1) = (t % 2 == 0) ? 1.0f : -1.0f;
    X(t, 2) = 3.0f;
  }
  HessianAccumulator acc(3);
  acc.add(X.topRows(400000));
  acc.add(X.bottomRows(600000));
  const Eigen::MatrixXd H = acc.hessian();
  const double x0 = static_cast<double>(0.1f);
  const double tol = 2e-5;
  EXPECT_NEAR(H(0, 0), 2 * x0 * x0, tol * 2 * x0 * x0);
  EXPECT_NEAR(H(1, 1), 2.0, tol * 2);
  EXPECT_NEAR(H(2, 2), 18.0, tol * 18);
  EXPECT_NEAR(H(1, 0), 0.0, 1e-9);
  EXPECT_NEAR(H(2, 0), 2 * 3 * x0, tol * 0.6);
}

TEST(Hessian, Float64PrecisionMatchesADoubleProduct) {
  // Large offsets make float products of 512 tokens lose about 1e-5 relative; the f64
  // option multiplies and sums in double (products of floats are exact there).
  Eigen::MatrixXf X = test::gaussian_matrix(1500, 140, 9);
  X.array() += 100.0f;
  const Eigen::MatrixXd ref = reference_hessian(X);
  const RowMatrixXf Xr = X;
  Eigen::MatrixXd first;
  for (int threads : {1, 2, 3}) {
    HessianAccumulator acc(140, threads, HessianPrecision::f64);
    EXPECT_EQ(acc.precision(), HessianPrecision::f64);
    acc.add(Xr.topRows(700));
    acc.add(Xr.bottomRows(800));
    const Eigen::MatrixXd H = acc.hessian();
    EXPECT_LT((H - ref).cwiseAbs().maxCoeff(), 1e-12 * ref.cwiseAbs().maxCoeff());
    if (threads == 1) first = H;
    else EXPECT_TRUE(H == first) << threads << " threads";
  }
  HessianAccumulator f32(140);
  f32.add(Xr);
  EXPECT_GT((f32.hessian() - ref).cwiseAbs().maxCoeff(), 1e-9 * ref.cwiseAbs().maxCoeff());  // the f32 path differs
}

TEST(Hessian, GramIsTheUnscaledSum) {
  const Eigen::MatrixXf X = test::gaussian_matrix(600, 130, 10);
  HessianAccumulator acc(130, 2);
  acc.add(RowMatrixXf(X));
  const Eigen::MatrixXd G = acc.gram();
  EXPECT_TRUE(G == G.transpose());
  EXPECT_LT((acc.hessian() - (2.0 / 600) * G).cwiseAbs().maxCoeff(), 1e-15 * G.cwiseAbs().maxCoeff());
  EXPECT_LT((G - X.cast<double>().transpose() * X.cast<double>()).cwiseAbs().maxCoeff(), 1e-5 * G.cwiseAbs().maxCoeff());
}

// The build says what runs the math: OpenBLAS when NIBBLE_USE_BLAS is defined (the
// *_blas test executables), Eigen otherwise.
TEST(Hessian, BackendIsTheOneThisBuildAskedFor) {
  const std::string backend = calibration_backend();
#if defined(NIBBLE_USE_BLAS)
  EXPECT_TRUE(calibration_uses_blas());
  EXPECT_NE(backend.find("OpenBLAS"), std::string::npos) << backend;
#else
  EXPECT_FALSE(calibration_uses_blas());
  EXPECT_EQ(backend.rfind("Eigen ", 0), 0u) << backend;
#endif
}

TEST(Hessian, RejectsBadInput) {
  EXPECT_THROW(HessianAccumulator(0), Error);
  EXPECT_THROW(HessianAccumulator(4, 0), Error);
  HessianAccumulator acc(4);
  EXPECT_THROW(acc.hessian(), Error);  // nothing added
  EXPECT_THROW(acc.add(RowMatrixXf::Ones(3, 5)), Error);
  RowMatrixXf X = RowMatrixXf::Ones(3, 4);
  acc.add(X);
  X(2, 1) = std::nanf("");
  try {
    acc.add(X);
    FAIL() << "NaN accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("column 1"), std::string::npos) << e.what();
  }
  X(2, 1) = INFINITY;
  EXPECT_THROW(acc.add(X), Error);
  EXPECT_EQ(acc.tokens(), 3u);  // rejected batches left nothing behind
  EXPECT_TRUE(acc.hessian().isApprox(Eigen::MatrixXd::Constant(4, 4, 2.0)));
}

}  // namespace hessian_test
