#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "nibble/quant/hqq.hpp"
#include "nibble/quant/rtn.hpp"
#include "test_util.hpp"

namespace hqq_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

namespace {

double lp_error(const Eigen::MatrixXf& W, const Eigen::MatrixXf& D, double p) {
  double s = 0.0;
  for (Eigen::Index i = 0; i < W.size(); ++i) s += std::pow(std::fabs(static_cast<double>(W(i)) - D(i)), p);
  return s;
}

// Heavy-tailed weights (Student-t, 3 degrees of freedom): what LLM layers look like.
Eigen::MatrixXf heavy_tailed(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> t(3.0f);
  Eigen::MatrixXf W(rows, cols);
  for (Eigen::Index i = 0; i < W.size(); ++i) W(i) = 0.02f * t(rng);
  return W;
}

QuantConfig asym(int gs) {
  QuantConfig q;
  q.codebook = Codebook::uint4_asym;
  q.group_size = gs;
  return q;
}

}  // namespace

TEST(Hqq, LowersLpErrorVersusRtn) {
  for (std::uint32_t seed : {1u, 2u}) {
    const Eigen::MatrixXf W = seed == 1 ? heavy_tailed(64, 256, seed) : test::gaussian_matrix(64, 256, seed);
    for (int gs : {32, 64, 128}) {
      HqqConfig cfg;
      cfg.quant.group_size = gs;
      const Eigen::MatrixXf hqq = hqq_quantize(W, cfg).dequantize();
      const Eigen::MatrixXf rtn = quantize(W, asym(gs)).dequantize();
      const double lp_hqq = lp_error(W, hqq, 0.7), lp_rtn = lp_error(W, rtn, 0.7);
      EXPECT_LT(lp_hqq, 0.985 * lp_rtn) << "seed " << seed << " gs " << gs;
      EXPECT_LT(lp_error(W, hqq, 1.0), lp_error(W, rtn, 1.0)) << "seed " << seed << " gs " << gs;
      cfg.optimize_scale = true;
      EXPECT_LT(lp_error(W, hqq_quantize(W, cfg).dequantize(), 0.7), lp_rtn) << "optimize_scale, gs " << gs;
    }
  }
}

// With no iterations HQQ is plain min/max rounding with a rounded zero, written here directly.
TEST(Hqq, ZeroIterationsIsMinMaxRounding) {
  const Eigen::MatrixXf W = test::uniform_matrix(5, 40, 3, -1.0f, 2.0f);  // 40 = 32 + 8: ragged
  HqqConfig cfg;
  cfg.quant.group_size = 32;
  cfg.iters = 0;
  const QuantizedMatrix q = hqq_quantize(W, cfg);
  ASSERT_EQ(q.codebook(), Codebook::uint4_asym);
  ASSERT_EQ(q.zeros().format, ZeroFormat::f32);
  for (Eigen::Index r = 0; r < 5; ++r)
    for (Eigen::Index g = 0; g < 2; ++g) {
      const Eigen::Index b = g * 32, n = g == 0 ? 32 : 8;
      const float lo = W.row(r).segment(b, n).minCoeff(), hi = W.row(r).segment(b, n).maxCoeff();
      const float s = 15.0f / (hi - lo), z = std::nearbyint(-lo * s);
      EXPECT_FLOAT_EQ(q.scale(r, g), 1.0f / s);
      EXPECT_EQ(q.zero(r, g), z);
      for (Eigen::Index c = b; c < b + n; ++c)
        EXPECT_EQ(q.code(r, c), std::clamp(std::nearbyint(W(r, c) / q.scale(r, g) + z), 0.0f, 15.0f));
    }
}

TEST(Hqq, ZeroPointsAreRealValuedAndCodesUseStoredValues) {
  const Eigen::MatrixXf W = heavy_tailed(16, 128, 4);
  for (ScaleFormat zf : {ScaleFormat::f32, ScaleFormat::f16, ScaleFormat::bf16}) {
    HqqConfig cfg;
    cfg.zero_format = zf;
    cfg.quant.scale_format = ScaleFormat::f16;
    const QuantizedMatrix q = hqq_quantize(W, cfg);
    bool any_fractional = false;
    for (std::size_t r = 0; r < q.rows(); ++r)
      for (std::size_t g = 0; g < q.groups_per_row(); ++g) {
        any_fractional |= q.zero(r, g) != std::nearbyint(q.zero(r, g));
        for (std::size_t c = g * 64; c < (g + 1) * 64; ++c) {
          const float expect = std::clamp(std::nearbyint(W(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c)) /
                                                             q.scale(r, g) + q.zero(r, g)),
                                          0.0f, 15.0f);
          ASSERT_EQ(q.code(r, c), expect);
        }
      }
    EXPECT_TRUE(any_fractional) << to_string(zf);
  }
}

TEST(Hqq, ConstantAndZeroGroupsStayFinite) {
  Eigen::MatrixXf W = Eigen::MatrixXf::Zero(3, 64);
  W.row(1).setConstant(0.3f);
  W.row(2).setConstant(-7.25f);
  const Eigen::MatrixXf d = hqq_quantize(W).dequantize();
  ASSERT_TRUE(d.allFinite());
  EXPECT_EQ(d.row(0).cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_NEAR(d(1, 5), 0.3f, 1e-5f);
  EXPECT_NEAR(d(2, 5), -7.25f, 1e-4f);
}

TEST(Hqq, KappaOneKeepsBetaConstantAndEarlyStopNeverHurts) {
  const Eigen::MatrixXf W = heavy_tailed(32, 128, 5);
  HqqConfig cfg;
  const double with_stop = lp_error(W, hqq_quantize(W, cfg).dequantize(), 1.0);
  cfg.early_stop = false;
  cfg.kappa = 1.0f;
  const double no_stop = lp_error(W, hqq_quantize(W, cfg).dequantize(), 1.0);
  const double rtn = lp_error(W, quantize(W, asym(64)).dequantize(), 1.0);
  EXPECT_LT(with_stop, rtn);
  EXPECT_LT(no_stop, rtn);
  // Same input, same options: bit-identical.
  EXPECT_EQ(hqq_quantize(W, cfg).codes(), hqq_quantize(W, cfg).codes());
}

TEST(Hqq, RejectsBadInput) {
  const Eigen::MatrixXf W = test::gaussian_matrix(4, 64, 6);
  HqqConfig cfg;
  cfg.quant.codebook = Codebook::nf4;
  EXPECT_THROW(hqq_quantize(W, cfg), Error);
  cfg = {};
  cfg.zero_format = ScaleFormat::dq8;
  EXPECT_THROW(hqq_quantize(W, cfg), Error);
  cfg = {};
  cfg.lp_norm = 0.0f;
  EXPECT_THROW(hqq_quantize(W, cfg), Error);
  cfg = {};
  cfg.beta = -1.0f;
  EXPECT_THROW(hqq_quantize(W, cfg), Error);
  cfg = {};
  cfg.iters = -1;
  EXPECT_THROW(hqq_quantize(W, cfg), Error);
  cfg = {};
  cfg.quant.group_size = 100;
  EXPECT_THROW(hqq_quantize(W, cfg), Error);
  Eigen::MatrixXf bad = W;
  bad(2, 3) = std::nanf("");
  EXPECT_THROW(hqq_quantize(bad), Error);
}

}  // namespace hqq_test
