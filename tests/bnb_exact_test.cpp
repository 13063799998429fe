// CodeFit::bitsandbytes (quant/bnb_exact.hpp) without Python: the rules measured
// against bitsandbytes 0.50.2, and how the mode differs from nibble's restored fit.
// scripts/test-bnb.sh compares with bitsandbytes itself.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include <nibble/nibble.hpp>

#include "test_util.hpp"

namespace bnb_exact_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

namespace {

using nibble::Codebook;
using nibble::CodeFit;
using nibble::QuantConfig;
using nibble::ScaleFormat;

QuantConfig bnb_config(Codebook cb, int group, ScaleFormat sf, CodeFit fit = CodeFit::bitsandbytes) {
  QuantConfig c;
  c.codebook = cb;
  c.group_size = group;
  c.scale_format = sf;
  c.code_fit = fit;
  return c;
}

// Inputs whose float32 values do not depend on FMA contraction.
std::vector<float> ramp(std::size_t n) {
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i)
    x[i] = nibble::detail::rounded(0.1f * static_cast<float>(i % 7)) +
           nibble::detail::rounded(1e-3f * static_cast<float>(i));
  return x;
}

TEST(BnbExact, TorchSumOrderMatchesTorchNotSequential) {
  // torch 2.15 (torch.set_num_threads(1)): tensor(ramp(n)).sum() and .mean().
  const auto x1000 = ramp(1000), x4099 = ramp(4099), x5 = ramp(5);
  EXPECT_EQ(nibble::torch_float_sum(x1000.data(), x1000.size()), 799.2000122070312f);
  EXPECT_EQ(nibble::torch_float_sum(x4099.data(), x4099.size()), 9627.951171875f);
  EXPECT_EQ(nibble::torch_float_mean(x4099), 2.348853588104248f);
  EXPECT_EQ(nibble::torch_float_sum(x5.data(), x5.size()), 1.0099999904632568f);
  // A left-to-right float sum gives other values (so the order is really being tested).
  float seq = 0.0f;
  for (float v : x1000) seq += v;
  EXPECT_EQ(seq, 799.2000732421875f);
  EXPECT_NE(seq, nibble::torch_float_sum(x1000.data(), x1000.size()));
}

TEST(BnbExact, Fp4ZeroAndTinyValuesUseBitsandbytesSignBits) {
  Eigen::MatrixXf W = Eigen::MatrixXf::Zero(1, 64);
  W(0, 0) = 1.0f;
  W(0, 2) = 1e-4f;   // below the first threshold: a zero code
  W(0, 3) = -1e-4f;
  W(0, 4) = -0.0f;
  const auto exact = nibble::quantize(W, bnb_config(Codebook::fp4, 64, ScaleFormat::f32));
  EXPECT_EQ(exact.code(0, 1), 0);      // +0 → code 0
  EXPECT_EQ(exact.code(0, 2), 0b1000); // small positive → code 8 (bitsandbytes' "−0")
  EXPECT_EQ(exact.code(0, 3), 0);      // small negative → code 0
  EXPECT_EQ(exact.code(0, 4), 0);
  const auto restored = nibble::quantize(W, bnb_config(Codebook::fp4, 64, ScaleFormat::f32, CodeFit::restored));
  EXPECT_EQ(restored.code(0, 2), 0);
  EXPECT_EQ(restored.code(0, 3), 0b1000);
  // Values are equal either way: both codes are a zero.
  EXPECT_EQ(exact.dequantize()(0, 2), 0.0f);
  EXPECT_EQ(restored.dequantize()(0, 2), 0.0f);
}

TEST(BnbExact, Fp4NegativeTieGoesToLargerMagnitude) {
  // A value exactly on the float32 midpoint of −1/4 and −1/3.
  const float mid = (nibble::kFP4Values[15] + nibble::kFP4Values[12]) / 2.0f;  // (−0.25 − 0.3333)/2
  EXPECT_EQ(nibble::bnb_code_4bit(mid, Codebook::fp4), 12);   // −1/3: lower in sorted order
  EXPECT_EQ(nibble::bnb_code_4bit(-mid, Codebook::fp4), 7);   // +1/4: lower value too
}

TEST(BnbExact, ZeroGroupsAndZeroRaggedTail) {
  Eigen::MatrixXf W = Eigen::MatrixXf::Zero(1, 96);  // one full block of 64 and a tail of 32
  const auto q = nibble::quantize(W, bnb_config(Codebook::nf4, 64, ScaleFormat::f32));
  EXPECT_EQ(q.scale(0, 0), 0.0f);
  EXPECT_EQ(q.scale(0, 1), static_cast<float>(1e-38));  // bitsandbytes stores the clamped tail absmax
  for (std::size_t c = 0; c < 96; ++c) EXPECT_EQ(q.code(0, c), 7) << c;  // NF4's 0.0
  EXPECT_EQ(q.dequantize().cwiseAbs().maxCoeff(), 0.0f);
}

TEST(BnbExact, SecondLevelUsesTheLookupTableNotTheNearestCode) {
  EXPECT_EQ(nibble::bnb_dynamic_code(0.0f, 1.0f), 131);  // the table's bin for 0 holds 2.1e-5
  EXPECT_EQ(nibble::nearest_dynamic_code(0.0f), 127);    // restored: the exact 0.0
  EXPECT_EQ(nibble::bnb_dynamic_code(-2.0f, 0.5f), 0);
  EXPECT_EQ(nibble::bnb_dynamic_code(1.0f, 1.0f), 255);
  // All scales equal: every deviation is 0, absmax2 is 0 and bitsandbytes writes code 0.
  const auto s = nibble::bnb_double_quant(std::vector<float>(300, 0.5f));
  EXPECT_EQ(s.dq_offset(), 0.5f);
  EXPECT_EQ(s.dq_absmax2()[0], 0.0f);
  for (auto c : s.dq_codes()) EXPECT_EQ(c, 0);
  EXPECT_EQ(s.get(0), 0.5f);
}

TEST(BnbExact, DoubleQuantKeepsTheCodesOfTheExactAbsmax) {
  std::mt19937 rng(7);
  std::student_t_distribution<float> heavy(3.0f);
  Eigen::MatrixXf W(64, 512);
  for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = 0.02f * heavy(rng);
  const auto plain = nibble::quantize(W, bnb_config(Codebook::nf4, 32, ScaleFormat::f32));
  const auto exact = nibble::quantize(W, bnb_config(Codebook::nf4, 32, ScaleFormat::dq8));
  const auto restored = nibble::quantize(W, bnb_config(Codebook::nf4, 32, ScaleFormat::dq8, CodeFit::restored));
  EXPECT_EQ(exact.codes(), plain.codes());  // bitsandbytes codes before compressing absmax
  std::size_t differ = 0;
  for (std::size_t i = 0; i < exact.codes().size(); ++i) differ += exact.codes()[i] != restored.codes()[i];
  EXPECT_GT(differ, 0u);
  // Plain NF4 with f32 absmax is the same in both fits (no ragged group here).
  EXPECT_EQ(nibble::quantize(W, bnb_config(Codebook::nf4, 32, ScaleFormat::f32, CodeFit::restored)).codes(),
            plain.codes());
  // restored re-rounds against the decoded scales: less weight error.
  EXPECT_LT(nibble::weight_error(W, restored).mse, nibble::weight_error(W, exact).mse);
  // The offset is torch's float32 mean of the absmax values.
  std::vector<float> absmax(plain.group_count());
  for (std::size_t i = 0; i < absmax.size(); ++i) absmax[i] = plain.scales().get(i);
  EXPECT_EQ(exact.scales().dq_offset(), nibble::torch_float_mean(absmax));
}

TEST(BnbExact, RejectsWhatBitsandbytesRejects) {
  Eigen::MatrixXf W = Eigen::MatrixXf::Random(4, 256);
  EXPECT_THROW(nibble::quantize(W, bnb_config(Codebook::int4_sym, 64, ScaleFormat::f32)), nibble::Error);
  EXPECT_THROW(nibble::quantize(W, bnb_config(Codebook::nf4, 48, ScaleFormat::f32)), nibble::Error);
  EXPECT_THROW(nibble::quantize(W, bnb_config(Codebook::nf4, 16, ScaleFormat::f32)), nibble::Error);
  EXPECT_THROW(nibble::quantize(W, bnb_config(Codebook::nf4, nibble::kPerRow, ScaleFormat::f32)), nibble::Error);
  EXPECT_THROW(nibble::quantize(W, bnb_config(Codebook::fp4, 64, ScaleFormat::f16)), nibble::Error);
  auto c = bnb_config(Codebook::nf4, 64, ScaleFormat::f32);
  c.clip.enabled = true;
  EXPECT_THROW(nibble::quantize(W, c), nibble::Error);
  try {
    nibble::quantize(W, bnb_config(Codebook::nf4, 48, ScaleFormat::f32));
  } catch (const nibble::Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocksize 48"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(nibble::quantize(W, bnb_config(Codebook::fp4, 128, ScaleFormat::dq8)));
}

TEST(BnbExact, CalibratedMethodsRefuseTheBitsandbytesFit) {
  const Eigen::MatrixXf W = Eigen::MatrixXf::Random(8, 64);
  const nibble::RowMatrixXf X = Eigen::MatrixXf::Random(32, 64);
  nibble::GptqConfig g;
  g.quant = bnb_config(Codebook::nf4, 32, ScaleFormat::f32);
  const Eigen::MatrixXd H = (X.cast<double>().transpose() * X.cast<double>()) / 32.0;
  EXPECT_THROW(nibble::gptq_quantize(W, H, g), nibble::Error);
  nibble::AwqConfig a;
  a.quant = bnb_config(Codebook::nf4, 32, ScaleFormat::f32);
  EXPECT_THROW(nibble::awq_quantize({nibble::RowMatrixXf(W)}, X, a), nibble::Error);
  g.quant.code_fit = CodeFit::restored;
  EXPECT_NO_THROW(nibble::gptq_quantize(W, H, g));
}

}  // namespace

}  // namespace bnb_exact_test
