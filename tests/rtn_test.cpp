#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>

#include "nibble/quant/metrics.hpp"
#include "nibble/quant/rtn.hpp"
#include "test_util.hpp"

namespace rtn_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

static QuantConfig config(Codebook cb, int gs, ScaleFormat sf = ScaleFormat::f32) {
  QuantConfig c;
  c.codebook = cb;
  c.group_size = gs;
  c.scale_format = sf;
  return c;
}

TEST(Rtn, Int4SymmetricErrorIsAtMostHalfAScale) {
  const Eigen::MatrixXf W = test::gaussian_matrix(37, 200, 1);  // ragged: 200 = 3·64 + 8
  for (SymScale rule : {SymScale::absmax_over_7, SymScale::full_range}) {
    QuantConfig c = config(Codebook::int4_sym, 64);
    c.sym_scale = rule;
    const QuantizedMatrix q = quantize(W, c);
    ASSERT_EQ(q.groups_per_row(), 4u);
    const Eigen::MatrixXf d = q.dequantize();
    for (int r = 0; r < W.rows(); ++r)
      for (int col = 0; col < W.cols(); ++col) {
        const float s = std::fabs(q.scale(r, col / 64));
        // Inside the representable range [−8s, 7s] (sign of s folded in) the error is at most s/2;
        // full range lets the side opposite the extreme run up to 8s, so there it may reach s.
        const float q_real = W(r, col) / q.scale(r, col / 64);
        const float bound = (q_real >= -8.5f && q_real <= 7.5f) ? 0.5f * s : s;
        if (rule == SymScale::absmax_over_7) {
          ASSERT_LE(bound, 0.5f * s);
        }
        ASSERT_LE(std::fabs(W(r, col) - d(r, col)), bound * (1 + 1e-5f)) << r << "," << col;
      }
  }
}

TEST(Rtn, ScaleRulesFollowTheirDefinitions) {
  Eigen::MatrixXf W(1, 16);
  for (int i = 0; i < 16; ++i) W(0, i) = 0.1f * (i - 5);  // extreme is +1.0
  QuantConfig c = config(Codebook::int4_sym, 16);
  EXPECT_FLOAT_EQ(quantize(W, c).scale(0, 0), 1.0f / 7.0f);
  c.sym_scale = SymScale::full_range;
  const QuantizedMatrix q = quantize(W, c);
  EXPECT_FLOAT_EQ(q.scale(0, 0), 1.0f / -8.0f);
  EXPECT_EQ(q.code(0, 15), 0);  // the extreme maps to −8 exactly
  EXPECT_FLOAT_EQ(q.value(0, 15), 1.0f);
}

// uint4 asymmetric against the GPTQ definition computed here directly.
TEST(Rtn, Uint4AsymmetricMatchesMinMaxDefinition) {
  const Eigen::MatrixXf W = test::uniform_matrix(5, 48, 3, -0.3f, 1.0f);
  const QuantizedMatrix q = quantize(W, config(Codebook::uint4_asym, 16));
  for (int r = 0; r < 5; ++r)
    for (int g = 0; g < 3; ++g) {
      const auto block = W.row(r).segment(16 * g, 16);
      const float lo = std::min(block.minCoeff(), 0.0f), hi = std::max(block.maxCoeff(), 0.0f);
      const float scale = (hi - lo) / 15.0f;
      const float zero = std::nearbyint(-lo / scale);
      EXPECT_FLOAT_EQ(q.scale(r, g), scale);
      EXPECT_EQ(q.zero(r, g), zero);
      for (int i = 0; i < 16; ++i) {
        const float code = std::clamp(std::nearbyint(block(i) / scale) + zero, 0.0f, 15.0f);
        EXPECT_EQ(q.code(r, 16 * g + i), code);
      }
    }
}

TEST(Rtn, NF4BeatsInt4AbsmaxOnGaussianWeights) {
  const Eigen::MatrixXf W = test::gaussian_matrix(128, 512, 4);
  for (int gs : {32, 64, 128}) {
    const double nf4 = weight_error(W, quantize(W, config(Codebook::nf4, gs))).mse;
    const double int4 = weight_error(W, quantize(W, config(Codebook::int4_sym, gs))).mse;
    EXPECT_LT(nf4, int4) << "group " << gs;
  }
}

TEST(Rtn, NF4CodesAreNearestToNormalisedValue) {
  const Eigen::MatrixXf W = test::gaussian_matrix(4, 64, 5);
  const QuantizedMatrix q = quantize(W, config(Codebook::nf4, 64));
  for (int r = 0; r < 4; ++r) {
    const float absmax = W.row(r).cwiseAbs().maxCoeff();
    EXPECT_EQ(q.scale(r, 0), absmax);
    for (int c = 0; c < 64; ++c) EXPECT_EQ(q.code(r, c), nearest_nf4(W(r, c) * (1.0f / absmax)));
  }
}

// iq4_nl: the signed extreme of a group maps to the table's −127 (so d has the opposite
// sign of the extreme), and every other code is the brute-force nearest table entry.
TEST(Rtn, Iq4NlExtremeMapsToMinus127AndCodesAreNearest) {
  const Eigen::MatrixXf W = test::gaussian_matrix(6, 64, 12);
  const QuantizedMatrix q = quantize(W, config(Codebook::iq4_nl, 32, ScaleFormat::f32));
  const auto& table = codebook_values(Codebook::iq4_nl);
  for (int r = 0; r < 6; ++r)
    for (int g = 0; g < 2; ++g) {
      int arg = 0;
      for (int c = 1; c < 32; ++c)
        if (std::fabs(W(r, 32 * g + c)) > std::fabs(W(r, 32 * g + arg))) arg = c;
      const float d = q.scale(r, g);
      EXPECT_EQ(d, W(r, 32 * g + arg) / -127.0f);
      EXPECT_EQ(q.code(r, 32 * g + arg), 0);
      for (int c = 0; c < 32; ++c) {
        const float x = W(r, 32 * g + c) * (1.0f / d);
        for (int k = 0; k < 16; ++k)
          EXPECT_LE(std::fabs(x - table[q.code(r, 32 * g + c)]), std::fabs(x - table[k])) << r << " " << c;
      }
    }
}

TEST(Rtn, DoubleQuantAddsUnderOnePercentRelativeError) {
  const Eigen::MatrixXf W = test::gaussian_matrix(256, 1024, 6);
  for (Codebook cb : {Codebook::nf4, Codebook::int4_sym, Codebook::fp4}) {
    const double f32 = weight_error(W, quantize(W, config(cb, 64, ScaleFormat::f32))).rel_frobenius;
    const double dq = weight_error(W, quantize(W, config(cb, 64, ScaleFormat::dq8))).rel_frobenius;
    EXPECT_LE(dq, f32 * 1.01) << to_string(cb) << " f32 " << f32 << " dq " << dq;
  }
}

TEST(Rtn, ClipSearchIsNeverWorseThanAbsmax) {
  const Eigen::MatrixXf W = test::gaussian_matrix(64, 256, 7);
  for (Codebook cb : {Codebook::int4_sym, Codebook::uint4_asym, Codebook::nf4, Codebook::fp4, Codebook::iq4_nl}) {
    for (int gs : {16, 64, kPerRow}) {
      QuantConfig plain = config(cb, gs);
      QuantConfig clip = plain;
      clip.clip.enabled = true;
      const QuantizedMatrix a = quantize(W, plain), b = quantize(W, clip);
      const Eigen::MatrixXf da = a.dequantize(), db = b.dequantize();
      // Per group, by construction; and strictly better overall on Gaussian data.
      const std::size_t g = a.group_size();
      for (int r = 0; r < W.rows(); ++r)
        for (std::size_t start = 0; start < 256; start += g) {
          const double ea = (W.row(r).segment(start, g) - da.row(r).segment(start, g)).squaredNorm();
          const double eb = (W.row(r).segment(start, g) - db.row(r).segment(start, g)).squaredNorm();
          ASSERT_LE(eb, ea * (1 + 1e-6) + 1e-12) << to_string(cb) << " group " << gs;
        }
      EXPECT_LT(weight_error(W, b).mse, weight_error(W, a).mse) << to_string(cb) << " group " << gs;
    }
  }
}

TEST(Rtn, AcceptsAnyDenseEigenInput) {
  const Eigen::MatrixXf W = test::gaussian_matrix(8, 32, 8);
  const QuantConfig c = config(Codebook::nf4, 16);
  const QuantizedMatrix ref = quantize(W, c);
  const Eigen::Matrix<float, -1, -1, Eigen::RowMajor> row_major = W;
  const Eigen::MatrixXd as_double = W.cast<double>();
  EXPECT_EQ(quantize(row_major, c).codes(), ref.codes());
  EXPECT_EQ(quantize(as_double, c).codes(), ref.codes());
  EXPECT_EQ(quantize(Eigen::Ref<const Eigen::MatrixXf>(W), c).codes(), ref.codes());
  Eigen::MatrixXf bigger = test::gaussian_matrix(20, 40, 9);
  bigger.block(3, 5, 8, 32) = W;
  EXPECT_EQ(quantize(bigger.block(3, 5, 8, 32), c).codes(), ref.codes());
}

TEST(Rtn, AllZeroGroupsDequantizeToZero) {
  Eigen::MatrixXf W = test::gaussian_matrix(4, 64, 10);
  W.row(1).setZero();
  W.block(2, 0, 1, 32).setZero();
  for (Codebook cb : {Codebook::int4_sym, Codebook::uint4_asym, Codebook::nf4, Codebook::fp4, Codebook::iq4_nl})
    for (ScaleFormat sf : {ScaleFormat::f32, ScaleFormat::f16, ScaleFormat::bf16, ScaleFormat::dq8}) {
      const Eigen::MatrixXf d = quantize(W, config(cb, 32, sf)).dequantize();
      EXPECT_TRUE(d.allFinite());
      // iq4_nl has no zero entry (its table's nearest to 0 is 1), so a zero group is exact
      // only while its scale stays exactly 0; double quantization reconstructs scales as
      // offset + code·absmax, so there it is only tiny.
      const float tol = cb == Codebook::iq4_nl && sf == ScaleFormat::dq8 ? 1e-3f * W.cwiseAbs().maxCoeff() : 0.0f;
      EXPECT_LE(d.row(1).cwiseAbs().maxCoeff(), tol) << to_string(cb) << " " << to_string(sf);
      EXPECT_LE(d.block(2, 0, 1, 32).cwiseAbs().maxCoeff(), tol) << to_string(cb) << " " << to_string(sf);
    }
  const Eigen::MatrixXf zeros = Eigen::MatrixXf::Zero(3, 32);
  EXPECT_EQ(quantize(zeros, config(Codebook::nf4, 16)).dequantize(), zeros);
}

static std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no nibble::Error)";
}

TEST(Rtn, BadInputNamesTheProblem) {
  Eigen::MatrixXf W = test::gaussian_matrix(4, 64, 11);
  const QuantConfig c = config(Codebook::int4_sym, 32);
  W(2, 17) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NE(message_of([&] { quantize(W, c); }).find("row 2, column 17"), std::string::npos);
  W(2, 17) = std::numeric_limits<float>::infinity();
  EXPECT_NE(message_of([&] { quantize(W, c); }).find("non-finite"), std::string::npos);
  QuantConfig lenient = c;
  lenient.non_finite = NonFinitePolicy::replace_zero;
  EXPECT_EQ(quantize(W, lenient).dequantize()(2, 17), 0.0f);
  Eigen::MatrixXd huge = Eigen::MatrixXd::Ones(2, 32);
  huge(1, 3) = 1e300;  // finite as double, Inf as float
  EXPECT_NE(message_of([&] { quantize(huge, c); }).find("after conversion to float"), std::string::npos);

  W = test::gaussian_matrix(4, 64, 12);
  EXPECT_NE(message_of([&] { quantize(Eigen::MatrixXf(0, 64), c); }).find("empty"), std::string::npos);
  EXPECT_NE(message_of([&] { quantize(W, config(Codebook::nf4, 33)); }).find("odd"), std::string::npos);
  EXPECT_NE(message_of([&] { quantize(W, config(Codebook::nf4, 8)); }).find("below 16"), std::string::npos);
  EXPECT_NE(message_of([&] { quantize(W, config(Codebook::nf4, 128)); }).find("larger than the row"),
            std::string::npos);
  EXPECT_NE(message_of([&] { quantize(W, config(Codebook::nf4, -4)); }).find("negative"), std::string::npos);
  Eigen::MatrixXf big = Eigen::MatrixXf::Constant(1, 16, 1e6f);
  EXPECT_NE(message_of([&] { quantize(big, config(Codebook::nf4, 16, ScaleFormat::f16)); }).find("overflows f16"),
            std::string::npos);
}

TEST(Rtn, PerRowAndOddRows) {
  const Eigen::MatrixXf W = test::gaussian_matrix(3, 171, 13);
  const QuantizedMatrix q = quantize(W, config(Codebook::uint4_asym, kPerRow));
  EXPECT_EQ(q.group_size(), 171u);
  EXPECT_EQ(q.row_bytes(), 86u);
  EXPECT_LT(weight_error(W, q).rel_frobenius, 0.15);
}

TEST(Rtn, Deterministic) {
  const Eigen::MatrixXf W = test::gaussian_matrix(32, 128, 14);
  QuantConfig c = config(Codebook::nf4, 64, ScaleFormat::dq8);
  c.clip.enabled = true;
  const QuantizedMatrix a = quantize(W, c), b = quantize(W, c);
  EXPECT_EQ(a.codes(), b.codes());
  EXPECT_EQ(a.scales().decode(), b.scales().decode());
}

}  // namespace rtn_test
