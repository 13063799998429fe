#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "nibble/quant/awq.hpp"
#include "test_util.hpp"

namespace awq_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

namespace {

// Activations where a few channels are 20× louder than the rest, as in LLMs.
RowMatrixXf outlier_activations(Eigen::Index tokens, Eigen::Index cols, std::uint32_t seed) {
  RowMatrixXf X = test::gaussian_matrix(tokens, cols, seed);
  for (Eigen::Index c = 3; c < cols; c += 29) X.col(c) *= 20.0f;
  return X;
}

// Output MSE of the effective weights, computed directly from X·Wᵀ.
double output_mse(const std::vector<RowMatrixXf>& W, const std::vector<Eigen::MatrixXf>& Wq, const RowMatrixXf& X) {
  double sum = 0.0, count = 0.0;
  for (std::size_t i = 0; i < W.size(); ++i) {
    const Eigen::MatrixXd ref = X.cast<double>() * W[i].cast<double>().transpose();
    const Eigen::MatrixXd got = X.cast<double>() * Wq[i].cast<double>().transpose();
    sum += (ref - got).squaredNorm();
    count += static_cast<double>(ref.size());
  }
  return sum / count;
}

AwqConfig awq(Codebook cb, int gs, bool clip = true) {
  AwqConfig c;
  c.quant.codebook = cb;
  c.quant.group_size = gs;
  c.clip_search = clip;
  return c;
}

std::vector<RowMatrixXf> qkv(Eigen::Index in, std::uint32_t seed) {
  return {test::gaussian_matrix(24, in, seed), test::gaussian_matrix(16, in, seed + 1),
          test::gaussian_matrix(16, in, seed + 2)};
}

}  // namespace

TEST(Awq, ReportedLossesMatchDirectComputation) {
  const auto W = qkv(96, 1);
  for (Eigen::Index tokens : {64, 300}) {  // fewer and more tokens than channels: both objective paths
    const RowMatrixXf X = outlier_activations(tokens, 96, 2);
    const AwqConfig cfg = awq(Codebook::uint4_asym, 32);
    const AwqResult r = awq_quantize(W, X, cfg);
    ASSERT_EQ(r.matrices.size(), 3u);
    std::vector<Eigen::MatrixXf> rtn, final_weights;
    for (std::size_t i = 0; i < 3; ++i) {
      rtn.push_back(quantize(W[i], cfg.quant).dequantize());
      final_weights.push_back(awq_dequantize(r.matrices[i], r.scales));
    }
    const double direct_rtn = output_mse(W, rtn, X);
    EXPECT_NEAR(r.loss_rtn, direct_rtn, 1e-6 * direct_rtn);
    const double direct_final = output_mse(W, final_weights, X);
    EXPECT_NEAR(r.loss_final, direct_final, 1e-6 * direct_final);
    EXPECT_LE(r.loss_best, r.loss_rtn);
  }
}

TEST(Awq, IdenticalForEveryThreadCount) {
  // 300 rows: the objective's rows go in blocks of 128 (three blocks, the last ragged).
  const std::vector<RowMatrixXf> W{test::gaussian_matrix(300, 80, 30)};
  for (Eigen::Index tokens : {50, 400}) {  // both objective paths (X·Δᵀ and the Gram matrix)
    const RowMatrixXf X = outlier_activations(tokens, 80, 31);
    AwqConfig cfg = awq(Codebook::uint4_asym, 16);
    const AwqResult first = awq_quantize(W, X, cfg);
    for (int threads : {2, 3, 8}) {
      cfg.threads = threads;
      const AwqResult again = awq_quantize(W, X, cfg);
      EXPECT_EQ(again.loss_rtn, first.loss_rtn) << threads << " threads, " << tokens << " tokens";
      EXPECT_EQ(again.loss_best, first.loss_best);
      EXPECT_EQ(again.loss_final, first.loss_final);
      EXPECT_TRUE(again.scales == first.scales);
      EXPECT_TRUE(again.matrices[0].dequantize() == first.matrices[0].dequantize());
    }
  }
}

TEST(Awq, NeverWorseThanRtnOnItsObjective) {
  // Plain Gaussian activations: scaling has little to gain, but must not lose.
  const auto W = qkv(64, 3);
  const RowMatrixXf X = test::gaussian_matrix(128, 64, 4);
  for (Codebook cb : {Codebook::int4_sym, Codebook::uint4_asym, Codebook::nf4, Codebook::fp4})
    for (ScaleFormat sf : {ScaleFormat::f32, ScaleFormat::f16, ScaleFormat::dq8})
      for (bool duo : {false, true}) {
        if (sf != ScaleFormat::f32 && (cb == Codebook::int4_sym || cb == Codebook::fp4 || duo)) continue;  // keep it short
        AwqConfig cfg = awq(cb, 32, false);
        cfg.quant.scale_format = sf;
        cfg.duo_scaling = duo;
        const AwqResult r = awq_quantize(W, X, cfg);
        EXPECT_LE(r.loss_best, r.loss_rtn) << to_string(cb) << " " << to_string(sf) << " duo " << duo;
        EXPECT_DOUBLE_EQ(r.loss_final, r.loss_best);  // no clipping: the returned matrices are the best candidate
        EXPECT_EQ(r.matrices[0].scales().format(), sf);
      }
}

TEST(Awq, ClearlyBetterWithOutlierChannels) {
  const auto W = qkv(96, 5);
  const RowMatrixXf X = outlier_activations(160, 96, 6);
  for (Codebook cb : {Codebook::int4_sym, Codebook::uint4_asym, Codebook::nf4, Codebook::fp4})
    for (bool duo : {false, true}) {
      if (duo && cb != Codebook::uint4_asym) continue;  // duo scaling once is enough
      AwqConfig cfg = awq(cb, 32);
      cfg.duo_scaling = duo;
      const AwqResult r = awq_quantize(W, X, cfg);
      EXPECT_LT(r.loss_best, 0.7 * r.loss_rtn) << to_string(cb) << " duo " << duo;
      EXPECT_LT(r.loss_final, 0.7 * r.loss_rtn) << to_string(cb) << " duo " << duo;
      EXPECT_GT(r.best_ratio, 0.0);
      // Loud channels get scales above 1.
      EXPECT_GT(r.scales[3], r.scales[4]);
    }
}

// The clip search against a brute force written here: each group of each row keeps
// the shrink (1, 0.95, …, 0.55) with the least Σ_tokens (x·(Q(clip(w)) − w))².
TEST(Awq, ClipSearchMatchesBruteForce) {
  RowMatrixXf Ws = test::gaussian_matrix(3, 32, 7);
  Ws(0, 5) = 6.0f;  // an outlier worth clipping
  const RowMatrixXf Xs = test::gaussian_matrix(40, 32, 8);
  AwqConfig cfg = awq(Codebook::uint4_asym, 16);
  RowMatrixXf expected = Ws;
  for (Eigen::Index r = 0; r < 3; ++r)
    for (Eigen::Index b = 0; b < 32; b += 16) {
      const float amax = Ws.row(r).segment(b, 16).cwiseAbs().maxCoeff();
      double best = INFINITY;
      float best_limit = amax;
      for (int k = 0; k < 10; ++k) {
        const float limit = amax * (1.0f - k / 20.0f);
        std::vector<float> c(16);
        for (int j = 0; j < 16; ++j) c[j] = std::clamp(Ws(r, b + j), -limit, limit);
        const GroupParams p = fit_group(c.data(), 16, Codebook::uint4_asym);
        double err = 0.0;
        for (Eigen::Index t = 0; t < Xs.rows(); ++t) {
          double dot = 0.0;
          for (int j = 0; j < 16; ++j)
            dot += Xs(t, b + j) * (decode_value(encode_value(c[j], p, Codebook::uint4_asym), p, Codebook::uint4_asym) -
                                   static_cast<double>(Ws(r, b + j)));
          err += dot * dot;
        }
        if (err < best) {
          best = err;
          best_limit = limit;
        }
      }
      for (int j = 0; j < 16; ++j) expected(r, b + j) = std::clamp(Ws(r, b + j), -best_limit, best_limit);
    }
  detail::awq_clip(Ws, Xs, cfg);
  EXPECT_EQ(Ws, expected);
  EXPECT_LT(expected(0, 5), 6.0f);  // the outlier was clipped
}

// awq_clip_quantize is awq_quantize with s ≡ 1 (grid 1) and the clip search, without
// the objective: the same codes and scales, and it clips (differs from plain RTN).
TEST(Awq, ClipQuantizeIsTheGridOneResult) {
  RowMatrixXf W = test::gaussian_matrix(20, 64, 31);
  W(2, 9) = 7.0f;  // an outlier worth clipping
  const RowMatrixXf X = outlier_activations(700, 64, 32);  // more tokens than max_clip_tokens: strided
  for (Codebook cb : {Codebook::uint4_asym, Codebook::int4_sym, Codebook::nf4}) {
    AwqConfig cfg = awq(cb, 32);
    cfg.grid = 1;
    const QuantizedMatrix expected = std::move(awq_quantize({W}, X, cfg).matrices.front());
    cfg.grid = 20;  // not used: no scale search
    const QuantizedMatrix got = awq_clip_quantize(W, X, cfg);
    EXPECT_EQ(got.codes(), expected.codes()) << to_string(cb);
    EXPECT_EQ(got.scales().decode(), expected.scales().decode()) << to_string(cb);
    EXPECT_NE(got.codes(), quantize(W, cfg.quant).codes()) << to_string(cb);
  }
  // With scales folded upstream: the search sees X·diag(s)⁻¹, as if given those inputs.
  Eigen::VectorXf s = Eigen::VectorXf::Ones(64);
  for (Eigen::Index c = 0; c < 64; c += 5) s[c] = 2.5f;
  const RowMatrixXf Ws = W * s.asDiagonal();
  RowMatrixXf Xdiv = X;
  for (Eigen::Index t = 0; t < X.rows(); ++t) Xdiv.row(t) = X.row(t).cwiseQuotient(s.transpose());
  const AwqConfig cfg = awq(Codebook::uint4_asym, 32);
  EXPECT_EQ(awq_clip_quantize(Ws, X, cfg, s).codes(), awq_clip_quantize(Ws, Xdiv, cfg).codes());
  EXPECT_NE(awq_clip_quantize(Ws, X, cfg, s).codes(), awq_clip_quantize(Ws, X, cfg).codes());
  s[7] = 0.0f;
  EXPECT_THROW(awq_clip_quantize(Ws, X, cfg, s), Error);
  EXPECT_THROW(awq_clip_quantize(Ws, X, cfg, Eigen::VectorXf::Ones(63)), Error);
  EXPECT_THROW(awq_clip_quantize(W, RowMatrixXf(test::gaussian_matrix(10, 63, 1))), Error);
  RowMatrixXf bad = X;
  bad(1, 1) = std::nanf("");
  EXPECT_THROW(awq_clip_quantize(W, bad), Error);
}

TEST(Awq, FoldingLeavesTheFloatModelUnchanged) {
  const Eigen::Index d = 48;
  const RowMatrixXf W = test::gaussian_matrix(20, d, 9);
  const Eigen::VectorXf s = (test::uniform_matrix(d, 1, 10, 0.2f, 5.0f)).col(0);
  const Eigen::VectorXf x = test::gaussian_matrix(d, 1, 11).col(0);
  const RowMatrixXf Ws = W * s.asDiagonal();

  // RMSNorm with gain and bias → W.
  Eigen::VectorXf gain = test::uniform_matrix(d, 1, 12, 0.5f, 1.5f).col(0);
  Eigen::VectorXf bias = test::gaussian_matrix(d, 1, 13).col(0);
  const float rms = std::sqrt(x.squaredNorm() / d + 1e-6f);
  const Eigen::VectorXf y_ref = W * ((x / rms).cwiseProduct(gain) + bias);
  fold_scales_into_norm(gain, bias, s);
  const Eigen::VectorXf y_fold = Ws * ((x / rms).cwiseProduct(gain) + bias);
  EXPECT_LT((y_fold - y_ref).norm(), 1e-5f * y_ref.norm());

  // Previous linear (with bias) → W.
  RowMatrixXf prev = test::gaussian_matrix(d, 30, 14);
  Eigen::VectorXf prev_bias = test::gaussian_matrix(d, 1, 15).col(0);
  const Eigen::VectorXf u = test::gaussian_matrix(30, 1, 16).col(0);
  const Eigen::VectorXf z_ref = W * (prev * u + prev_bias);
  fold_scales_into_linear_rows(prev, prev_bias, s);
  const Eigen::VectorXf z_fold = Ws * (prev * u + prev_bias);
  EXPECT_LT((z_fold - z_ref).norm(), 1e-5f * z_ref.norm());

  // And the AWQ result used that way gives the same output as awq_dequantize.
  const RowMatrixXf X = outlier_activations(64, d, 17);
  const AwqResult r = awq_quantize({W}, X, awq(Codebook::uint4_asym, 16));
  const Eigen::VectorXf xin = X.row(0).transpose();
  const Eigen::VectorXf via_fold = r.matrices[0].dequantize() * xin.cwiseQuotient(r.scales);
  const Eigen::VectorXf via_effective = awq_dequantize(r.matrices[0], r.scales) * xin;
  EXPECT_LT((via_fold - via_effective).norm(), 1e-5f * via_effective.norm());
}

TEST(Awq, RejectsBadInput) {
  const auto W = qkv(32, 18);
  const RowMatrixXf X = test::gaussian_matrix(10, 32, 19);
  const AwqConfig cfg = awq(Codebook::uint4_asym, 16);
  EXPECT_THROW(awq_quantize({}, X, cfg), Error);
  EXPECT_THROW(awq_quantize({W[0], RowMatrixXf(test::gaussian_matrix(4, 31, 1))}, X, cfg), Error);
  EXPECT_THROW(awq_quantize(W, RowMatrixXf(test::gaussian_matrix(10, 31, 1)), cfg), Error);
  EXPECT_THROW(awq_quantize(W, RowMatrixXf(0, 32), cfg), Error);
  RowMatrixXf bad = X;
  bad(4, 7) = std::nanf("");
  try {
    awq_quantize(W, bad, cfg);
    FAIL() << "NaN activation accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 4, column 7"), std::string::npos) << e.what();
  }
  auto Wbad = W;
  Wbad[1](0, 0) = INFINITY;
  EXPECT_THROW(awq_quantize(Wbad, X, cfg), Error);
  AwqConfig c = cfg;
  c.grid = 0;
  EXPECT_THROW(awq_quantize(W, X, c), Error);
  c = cfg;
  c.quant.group_size = 10;
  EXPECT_THROW(awq_quantize(W, X, c), Error);
  c = cfg;
  c.threads = 0;
  EXPECT_THROW(awq_quantize(W, X, c), Error);
  Eigen::VectorXf norm = Eigen::VectorXf::Ones(32);
  EXPECT_THROW(fold_scales_into_norm(norm, Eigen::VectorXf::Ones(31)), Error);
  Eigen::VectorXf s = Eigen::VectorXf::Ones(32);
  s[3] = 0.0f;
  EXPECT_THROW(fold_scales_into_norm(norm, s), Error);
  RowMatrixXf prev = RowMatrixXf::Ones(31, 8);
  EXPECT_THROW(fold_scales_into_linear_rows(prev, Eigen::VectorXf::Ones(32)), Error);
}

// A dead channel (never active) and a single calibration token: no NaN anywhere.
TEST(Awq, DegenerateCalibrationStaysFinite) {
  const auto W = qkv(32, 20);
  RowMatrixXf X = test::gaussian_matrix(1, 32, 21);
  X(0, 4) = 0.0f;
  const AwqResult r = awq_quantize(W, X, awq(Codebook::nf4, 16));
  EXPECT_TRUE(r.scales.allFinite());
  EXPECT_GT(r.scales.minCoeff(), 0.0f);
  for (const auto& m : r.matrices) EXPECT_TRUE(m.dequantize().allFinite());
  EXPECT_TRUE(std::isfinite(r.loss_final));
  EXPECT_LE(r.loss_best, r.loss_rtn);
}

}  // namespace awq_test
