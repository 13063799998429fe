#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include <Eigen/Cholesky>
#include <Eigen/LU>

#include "nibble/quant/gptq.hpp"
#include "nibble/quant/hessian.hpp"
#include "nibble/quant/metrics.hpp"
#include "test_util.hpp"

namespace gptq_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

namespace {

QuantConfig quant(Codebook cb, int gs, ScaleFormat sf = ScaleFormat::f32) {
  QuantConfig c;
  c.codebook = cb;
  c.group_size = gs;
  c.scale_format = sf;
  return c;
}

GptqConfig gptq(const QuantConfig& q, int block = 128, bool act_order = false) {
  GptqConfig c;
  c.quant = q;
  c.block_size = block;
  c.act_order = act_order;
  return c;
}

// Activations with correlated channels and a few loud ones, as LLM inputs have.
Eigen::MatrixXf correlated_activations(Eigen::Index tokens, Eigen::Index cols, std::uint32_t seed) {
  const Eigen::MatrixXf Z = test::gaussian_matrix(tokens, cols, seed);
  const Eigen::MatrixXf mix = test::gaussian_matrix(cols, cols, seed + 1, 0.3f) + Eigen::MatrixXf::Identity(cols, cols);
  Eigen::MatrixXf X = Z * mix;
  for (Eigen::Index c = 0; c < cols; c += 7) X.col(c) *= 4.0f;
  return X;
}

Eigen::MatrixXd hessian_of(const Eigen::MatrixXf& X) {
  const Eigen::MatrixXd Xd = X.cast<double>();
  return (2.0 / static_cast<double>(X.rows())) * Xd.transpose() * Xd;
}

std::vector<std::uint8_t> all_codes(const QuantizedMatrix& q) {
  std::vector<std::uint8_t> out;
  for (std::size_t r = 0; r < q.rows(); ++r)
    for (std::size_t c = 0; c < q.cols(); ++c) out.push_back(q.code(r, c));
  return out;
}

void expect_same_matrix(const QuantizedMatrix& a, const QuantizedMatrix& b) {
  ASSERT_EQ(a.rows(), b.rows());
  ASSERT_EQ(a.cols(), b.cols());
  EXPECT_EQ(a.codes(), b.codes());
  EXPECT_EQ(a.scales().decode(), b.scales().decode());
  EXPECT_EQ(a.decoded_zeros(), b.decoded_zeros());
}

struct Reference {
  Eigen::MatrixXf dequantized;
  std::vector<std::uint8_t> codes;  // row-major, original column order
  double loss = 0.0;
};

// Straightforward unblocked GPTQ, written independently of the library's loop: full
// inverse by LU, every column's update applied at once to all later columns, groups
// fitted on the fully updated weights (dynamic, every gs processed columns) or on the
// original W (act_order, unless permuted_groups).
Reference reference_gptq(const Eigen::MatrixXf& W0, const Eigen::MatrixXd& H0, Codebook cb, int gs, bool act_order,
                         double damp = 0.01, bool permuted_groups = false) {
  const Eigen::Index rows = W0.rows(), n = W0.cols();
  std::vector<Eigen::Index> perm(static_cast<std::size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  if (act_order)
    std::stable_sort(perm.begin(), perm.end(), [&](Eigen::Index a, Eigen::Index b) { return H0(a, a) > H0(b, b); });
  Eigen::MatrixXd W(rows, n), H(n, n);
  for (Eigen::Index i = 0; i < n; ++i) {
    W.col(i) = W0.col(perm[static_cast<std::size_t>(i)]).cast<double>();
    for (Eigen::Index j = 0; j < n; ++j) H(i, j) = H0(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
  }
  H.diagonal().array() += damp * H.diagonal().mean();
  const Eigen::MatrixXd Hinv = H.inverse();
  const Eigen::MatrixXd U = Eigen::LLT<Eigen::MatrixXd>(Hinv).matrixU();

  Reference ref;
  ref.dequantized.resize(rows, n);
  ref.codes.assign(static_cast<std::size_t>(rows * n), 0);
  std::vector<GroupParams> p(static_cast<std::size_t>(rows));
  for (Eigen::Index i = 0; i < n; ++i) {
    const Eigen::Index col = perm[static_cast<std::size_t>(i)];
    for (Eigen::Index r = 0; r < rows; ++r) {
      if (act_order && !permuted_groups) {  // static groups: original W, original column order
        const Eigen::Index g0 = (col / gs) * gs, len = std::min<Eigen::Index>(gs, n - g0);
        std::vector<float> v(static_cast<std::size_t>(len));
        for (Eigen::Index j = 0; j < len; ++j) v[static_cast<std::size_t>(j)] = W0(r, g0 + j);
        p[static_cast<std::size_t>(r)] = fit_group(v.data(), v.size(), cb);
      } else if (i % gs == 0) {
        const Eigen::Index len = std::min<Eigen::Index>(gs, n - i);
        std::vector<float> v(static_cast<std::size_t>(len));
        for (Eigen::Index j = 0; j < len; ++j) v[static_cast<std::size_t>(j)] = static_cast<float>(W(r, i + j));
        p[static_cast<std::size_t>(r)] = fit_group(v.data(), v.size(), cb);
      }
      const double w = W(r, i);
      const std::uint8_t code = encode_value(static_cast<float>(w), p[static_cast<std::size_t>(r)], cb);
      const double q = decode_value(code, p[static_cast<std::size_t>(r)], cb);
      ref.codes[static_cast<std::size_t>(r * n + col)] = code;
      ref.dequantized(r, col) = static_cast<float>(q);
      const double e = (w - q) / U(i, i);
      ref.loss += 0.5 * e * e;
      for (Eigen::Index j = i + 1; j < n; ++j) W(r, j) -= e * U(i, j);
    }
  }
  return ref;
}

}  // namespace

TEST(Gptq, IdentityHessianReproducesRtnExactly) {
  const Eigen::MatrixXf W = test::gaussian_matrix(20, 100, 1);  // 100 = 3·32 + 4: ragged
  const Eigen::MatrixXd I = Eigen::MatrixXd::Identity(100, 100);
  for (Codebook cb : {Codebook::int4_sym, Codebook::uint4_asym, Codebook::nf4, Codebook::fp4, Codebook::iq4_nl})
    for (ScaleFormat sf : {ScaleFormat::f32, ScaleFormat::f16, ScaleFormat::bf16, ScaleFormat::dq8})
      for (int gs : {32, kPerRow})
        for (bool act_order : {false, true}) {
          SCOPED_TRACE(std::string(to_string(cb)) + " " + to_string(sf) + " gs " + std::to_string(gs) +
                       (act_order ? " act_order" : ""));
          const QuantizedMatrix rtn = quantize(W, quant(cb, gs, sf));
          const GptqResult g = gptq_quantize(W, I, gptq(quant(cb, gs, sf), 16, act_order));
          expect_same_matrix(g.matrix, rtn);
          EXPECT_EQ(g.report.damp_retries, 0);
          EXPECT_FALSE(g.report.fell_back_to_rtn);
          EXPECT_DOUBLE_EQ(g.report.damp_used, 0.01);
        }
}

TEST(Gptq, MatchesUnblockedReferenceForEveryBlockSize) {
  const Eigen::MatrixXf W = test::gaussian_matrix(12, 72, 2);  // 72 = 4·16 + 8: ragged group
  const Eigen::MatrixXd H = hessian_of(correlated_activations(400, 72, 3));
  for (Codebook cb : {Codebook::uint4_asym, Codebook::int4_sym, Codebook::nf4, Codebook::fp4, Codebook::iq4_nl})
    for (bool act_order : {false, true}) {
      const Reference ref = reference_gptq(W, H, cb, 16, act_order);
      for (int block : {1, 7, 16, 128}) {
        SCOPED_TRACE(std::string(to_string(cb)) + " block " + std::to_string(block) + (act_order ? " act_order" : ""));
        const GptqResult g = gptq_quantize(W, H, gptq(quant(cb, 16), block, act_order));
        EXPECT_EQ(all_codes(g.matrix), ref.codes);
        EXPECT_LT((g.matrix.dequantize() - ref.dequantized).cwiseAbs().maxCoeff(), 1e-6f);
        EXPECT_NEAR(g.report.loss, ref.loss, 1e-9 * ref.loss);
      }
    }
}

// AutoGPTQ's desc_act without static groups: groups of 16 consecutive columns in the
// descending-diag(H) order, fitted on updated weights; the matrix holds the columns in
// that order and input_order maps them back.
TEST(Gptq, PermutedGroupsMatchUnblockedReference) {
  const Eigen::MatrixXf W = test::gaussian_matrix(12, 72, 2);  // 72 = 4·16 + 8: ragged group
  const Eigen::MatrixXf X = correlated_activations(400, 72, 3);
  const Eigen::MatrixXd H = hessian_of(X);
  for (Codebook cb : {Codebook::uint4_asym, Codebook::nf4}) {
    SCOPED_TRACE(to_string(cb));
    const Reference ref = reference_gptq(W, H, cb, 16, true, 0.01, true);
    GptqConfig c = gptq(quant(cb, 16), 7, true);
    c.permuted_groups = true;
    const GptqResult g = gptq_quantize(W, H, c);
    ASSERT_EQ(g.input_order.size(), 72u);
    std::vector<std::uint32_t> sorted = g.input_order;
    std::sort(sorted.begin(), sorted.end());
    for (std::uint32_t i = 0; i < 72; ++i) ASSERT_EQ(sorted[i], i);  // a permutation
    for (std::size_t j = 1; j < 72; ++j)                             // by descending diag H
      EXPECT_GE(H(g.input_order[j - 1], g.input_order[j - 1]), H(g.input_order[j], g.input_order[j]));
    const Eigen::MatrixXf deq = gptq_dequantize(g);
    EXPECT_LT((deq - ref.dequantized).cwiseAbs().maxCoeff(), 1e-6f);
    for (Eigen::Index r = 0; r < 12; ++r)
      for (std::size_t j = 0; j < 72; ++j)
        EXPECT_EQ(g.matrix.code(static_cast<std::size_t>(r), j), ref.codes[static_cast<std::size_t>(r) * 72 + g.input_order[j]]);
    EXPECT_NEAR(g.report.loss, ref.loss, 1e-9 * ref.loss);
    // Better than RTN on the layer output.
    const Eigen::MatrixXf rtn = quantize(W, quant(cb, 16)).dequantize();
    EXPECT_LT((X * (W - deq).transpose()).squaredNorm(), (X * (W - rtn).transpose()).squaredNorm());
  }
}

// loss = ½ Σ e² equals ½ tr(ΔW·H_damped·ΔWᵀ) for the stored matrix — which only holds
// if the stored scales are exactly the ones GPTQ used (f16, bf16, dq8 included).
TEST(Gptq, ReportedLossEqualsQuadraticFormOfStoredMatrix) {
  const Eigen::MatrixXf W = test::gaussian_matrix(40, 96, 4);
  const Eigen::MatrixXd H = hessian_of(correlated_activations(300, 96, 5));
  Eigen::MatrixXd Hd = H;
  Hd.diagonal().array() += 0.01 * H.diagonal().mean();
  for (Codebook cb : {Codebook::uint4_asym, Codebook::nf4})
    for (ScaleFormat sf : {ScaleFormat::f32, ScaleFormat::f16, ScaleFormat::bf16, ScaleFormat::dq8})
      for (bool act_order : {false, true}) {
        SCOPED_TRACE(std::string(to_string(cb)) + " " + to_string(sf) + (act_order ? " act_order" : ""));
        const GptqResult g = gptq_quantize(W, H, gptq(quant(cb, 32, sf), 128, act_order));
        EXPECT_EQ(g.matrix.scales().format(), sf);
        const Eigen::MatrixXd dW = W.cast<double>() - g.matrix.dequantize().cast<double>();
        const double quad = 0.5 * (dW * Hd).cwiseProduct(dW).sum();
        EXPECT_NEAR(g.report.loss, quad, 1e-7 * quad);
      }
}

TEST(Gptq, ActOrderIsPermutationConsistent) {
  const Eigen::Index n = 64;
  const Eigen::MatrixXf W = test::gaussian_matrix(10, n, 6);
  const Eigen::MatrixXd H = hessian_of(correlated_activations(500, n, 7));
  // A permutation that keeps each static group together: shuffle inside groups of
  // 16, then shuffle the groups.
  std::mt19937 rng(8);
  std::vector<Eigen::Index> groups = {0, 1, 2, 3};
  std::shuffle(groups.begin(), groups.end(), rng);
  std::vector<Eigen::Index> perm;
  for (Eigen::Index g : groups) {
    std::vector<Eigen::Index> inside(16);
    std::iota(inside.begin(), inside.end(), g * 16);
    std::shuffle(inside.begin(), inside.end(), rng);
    perm.insert(perm.end(), inside.begin(), inside.end());
  }
  Eigen::MatrixXf Wp(W.rows(), n);
  Eigen::MatrixXd Hp(n, n);
  for (Eigen::Index i = 0; i < n; ++i) {
    Wp.col(i) = W.col(perm[static_cast<std::size_t>(i)]);
    for (Eigen::Index j = 0; j < n; ++j) Hp(i, j) = H(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
  }
  for (int gs : {16, kPerRow}) {
    const GptqResult a = gptq_quantize(W, H, gptq(quant(Codebook::uint4_asym, gs), 128, true));
    const GptqResult b = gptq_quantize(Wp, Hp, gptq(quant(Codebook::uint4_asym, gs), 128, true));
    const Eigen::MatrixXf da = a.matrix.dequantize(), db = b.matrix.dequantize();
    for (Eigen::Index i = 0; i < n; ++i) EXPECT_EQ(db.col(i), da.col(perm[static_cast<std::size_t>(i)])) << i;
    EXPECT_DOUBLE_EQ(a.report.loss, b.report.loss);
  }
}

TEST(Gptq, OutputErrorBelowRtnOnCorrelatedActivations) {
  const Eigen::MatrixXf W = test::gaussian_matrix(32, 96, 9);
  const Eigen::MatrixXf X = correlated_activations(384, 96, 10);
  const Eigen::MatrixXd H = hessian_of(X);
  for (Codebook cb : {Codebook::uint4_asym, Codebook::int4_sym, Codebook::nf4, Codebook::fp4, Codebook::iq4_nl})
    for (bool act_order : {false, true}) {
      SCOPED_TRACE(std::string(to_string(cb)) + (act_order ? " act_order" : ""));
      const double rtn = output_error(W, quantize(W, quant(cb, 32)), X).mse;
      const double g = output_error(W, gptq_quantize(W, H, gptq(quant(cb, 32), 128, act_order)).matrix, X).mse;
      EXPECT_LT(g, 0.8 * rtn) << "gptq " << g << " rtn " << rtn;
    }
}

TEST(Gptq, DeterministicAcrossRunsAndThreadCounts) {
  const Eigen::MatrixXf W = test::gaussian_matrix(150, 64, 11);  // 3 chunks of rows
  const Eigen::MatrixXd H = hessian_of(correlated_activations(256, 64, 12));
  for (bool act_order : {false, true}) {
    GptqConfig c = gptq(quant(Codebook::uint4_asym, 32), 16, act_order);
    const GptqResult first = gptq_quantize(W, H, c);
    for (int threads : {1, 2, 3, 8}) {
      c.threads = threads;
      const GptqResult again = gptq_quantize(W, H, c);
      expect_same_matrix(again.matrix, first.matrix);
      EXPECT_EQ(again.report.loss, first.report.loss);
    }
  }
}

// U is the upper Cholesky factor of (H + λI)⁻¹: upper triangular, positive diagonal,
// and (H + λI)·UᵀU = I, through either route of linalg.hpp (Eigen or LAPACK).
TEST(Gptq, InverseFactorInvertsTheDampedHessian) {
  const Eigen::MatrixXd H = hessian_of(correlated_activations(500, 150, 40));
  const double lambda = 0.01 * H.diagonal().mean();
  RowMatrixXd U;
  ASSERT_TRUE(detail::gptq_inverse_factor(H, lambda, U));
  ASSERT_EQ(U.rows(), 150);
  EXPECT_EQ(U.triangularView<Eigen::StrictlyLower>().toDenseMatrix().cwiseAbs().maxCoeff(), 0.0);
  EXPECT_GT(U.diagonal().minCoeff(), 0.0);
  Eigen::MatrixXd damped = H;
  damped.diagonal().array() += lambda;
  const Eigen::MatrixXd product = damped * (U.transpose() * U);
  EXPECT_LT((product - Eigen::MatrixXd::Identity(150, 150)).cwiseAbs().maxCoeff(), 1e-8);
  Eigen::MatrixXd indefinite = H;
  indefinite(5, 5) = -1.0;
  EXPECT_FALSE(detail::gptq_inverse_factor(indefinite, 0.0, U));
}

TEST(Gptq, ProgressReachesTotal) {
  const Eigen::MatrixXf W = test::gaussian_matrix(130, 32, 13);
  GptqConfig c = gptq(quant(Codebook::nf4, 16));
  c.threads = 2;
  std::size_t last = 0, calls = 0;
  c.progress = [&](std::size_t done, std::size_t total) {
    EXPECT_EQ(total, 130u);
    EXPECT_GT(done, last);
    last = done;
    ++calls;
  };
  gptq_quantize(W, Eigen::MatrixXd::Identity(32, 32), c);
  EXPECT_EQ(last, 130u);
  EXPECT_EQ(calls, 3u);
}

TEST(Gptq, DeadColumnsAreZeroedAndCounted) {
  const Eigen::MatrixXf W = test::gaussian_matrix(8, 48, 14);
  Eigen::MatrixXf X = correlated_activations(200, 48, 15);
  X.col(3).setZero();
  X.col(40).setZero();
  const GptqResult g = gptq_quantize(W, hessian_of(X), gptq(quant(Codebook::uint4_asym, 16)));
  EXPECT_EQ(g.report.dead_columns, 2u);
  const Eigen::MatrixXf d = g.matrix.dequantize();
  EXPECT_TRUE(d.allFinite());
  EXPECT_EQ(d.col(3).cwiseAbs().maxCoeff(), 0.0f);
  EXPECT_EQ(d.col(40).cwiseAbs().maxCoeff(), 0.0f);
}

TEST(Gptq, TinyRankDeficientCalibrationStillWorks) {
  const Eigen::MatrixXf W = test::gaussian_matrix(16, 64, 16);
  const Eigen::MatrixXf X = test::gaussian_matrix(3, 64, 17);  // rank 3 Hessian
  const GptqResult g = gptq_quantize(W, hessian_of(X), gptq(quant(Codebook::int4_sym, 32)));
  EXPECT_EQ(g.report.damp_retries, 0);
  EXPECT_TRUE(g.matrix.dequantize().allFinite());
  EXPECT_TRUE(std::isfinite(g.report.loss));
  // On the calibration tokens themselves GPTQ must beat plain rounding.
  EXPECT_LT(output_error(W, g.matrix, X).mse, output_error(W, quantize(W, quant(Codebook::int4_sym, 32)), X).mse);
}

TEST(Gptq, IndefiniteHessianRetriesThenFailsOrFallsBack) {
  const Eigen::MatrixXf W = test::gaussian_matrix(4, 32, 18);
  // Eigenvalues of [[1, a], [a, 1]] are 1 ± a: a = 1.5 needs relative damping > 0.5.
  Eigen::MatrixXd H = Eigen::MatrixXd::Identity(32, 32);
  H(1, 0) = H(0, 1) = 1.5;
  const GptqResult g = gptq_quantize(W, H, gptq(quant(Codebook::uint4_asym, 16)));
  EXPECT_GT(g.report.damp_retries, 0);
  EXPECT_GT(g.report.damp_used, 0.5);
  EXPECT_TRUE(g.matrix.dequantize().allFinite());

  H(1, 0) = H(0, 1) = 1e6;  // hopeless
  EXPECT_THROW(gptq_quantize(W, H, gptq(quant(Codebook::uint4_asym, 16))), Error);
  GptqConfig c = gptq(quant(Codebook::uint4_asym, 16));
  c.allow_rtn_fallback = true;
  const GptqResult f = gptq_quantize(W, H, c);
  EXPECT_TRUE(f.report.fell_back_to_rtn);
  EXPECT_TRUE(std::isfinite(f.report.loss));
  expect_same_matrix(f.matrix, quantize(W, quant(Codebook::uint4_asym, 16)));
}

TEST(Gptq, RejectsBadInput) {
  const Eigen::MatrixXf W = test::gaussian_matrix(4, 32, 19);
  const Eigen::MatrixXd I = Eigen::MatrixXd::Identity(32, 32);
  const GptqConfig c = gptq(quant(Codebook::uint4_asym, 16));
  EXPECT_THROW(gptq_quantize(W, Eigen::MatrixXd::Identity(31, 31), c), Error);
  Eigen::MatrixXd bad = I;
  bad(5, 2) = std::nan("");
  EXPECT_THROW(gptq_quantize(W, bad, c), Error);
  bad = I;
  bad(7, 7) = -1.0;
  EXPECT_THROW(gptq_quantize(W, bad, c), Error);
  Eigen::MatrixXf Wbad = W;
  Wbad(1, 1) = INFINITY;
  EXPECT_THROW(gptq_quantize(Wbad, I, c), Error);
  GptqConfig b = c;
  b.block_size = 0;
  EXPECT_THROW(gptq_quantize(W, I, b), Error);
  b = c;
  b.damp = -0.1;
  EXPECT_THROW(gptq_quantize(W, I, b), Error);
  b = c;
  b.threads = 0;
  EXPECT_THROW(gptq_quantize(W, I, b), Error);
  b = c;
  b.quant.group_size = 12;
  EXPECT_THROW(gptq_quantize(W, I, b), Error);
  EXPECT_THROW(gptq_quantize(Eigen::MatrixXf(0, 0), Eigen::MatrixXd(0, 0), c), Error);
}

// The streamed accumulator and GPTQ together, as a caller uses them.
TEST(Gptq, WorksWithStreamedHessian) {
  const Eigen::MatrixXf W = test::gaussian_matrix(16, 64, 20);
  const Eigen::MatrixXf X = correlated_activations(600, 64, 21);
  HessianAccumulator acc(64);
  acc.add(RowMatrixXf(X.topRows(250)));
  acc.add(RowMatrixXf(X.bottomRows(350)));
  const GptqResult g = gptq_quantize(W, acc.hessian(), gptq(quant(Codebook::uint4_asym, 32)));
  EXPECT_LT(output_error(W, g.matrix, X).mse, output_error(W, quantize(W, quant(Codebook::uint4_asym, 32)), X).mse);
}

}  // namespace gptq_test
