// The 8-bit weight form (format/int8_matrix.hpp) and its kernels (kernels/int8_gemv.hpp):
// GGUF Q8_0 bytes in and out, dequantization against an independent decoding,
// quantization against gguf-py's bytes, every ISA path against the scalar reference
// (bit for bit, both activation modes), the scalar reference against a double
// computation (exact) and an independent int8 emulation (fast), threads, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <nibble/io/ggml_types.hpp>
#include <nibble/nibble.hpp>

#include "int8_test_util.hpp"

namespace {

using namespace int8_test;

// ---- the format --------------------------------------------------------------------

TEST(Int8Matrix, Q8_0BytesRoundTrip) {
  for (const Shape& s : kShapes) {
    const auto b = random_q8_0(s.rows, s.cols, 3);
    const Int8Matrix m = Int8Matrix::from_q8_0_blocks(s.rows, s.cols, b.data(), b.size());
    EXPECT_EQ(m.rows(), s.rows);
    EXPECT_EQ(m.cols(), s.cols);
    EXPECT_EQ(m.blocks_per_row(), s.cols / 32);
    EXPECT_EQ(m.to_q8_0_blocks(), b) << label(s);
    EXPECT_EQ(m.storage_bytes(), b.size());
    EXPECT_DOUBLE_EQ(m.bits_per_weight(), 8.5);
    // Element (r, c) is byte 2 + c % 32 of block r·(cols/32) + c/32.
    for (std::size_t r = 0; r < s.rows; r += 5)
      for (std::size_t c = 0; c < s.cols; c += 7) {
        const std::size_t blk = r * (s.cols / 32) + c / 32;
        ASSERT_EQ(static_cast<std::uint8_t>(m.code(r, c)), b[blk * 34 + 2 + c % 32]);
        ASSERT_EQ(m.scale_bits()[blk], b[blk * 34] | (b[blk * 34 + 1] << 8));
      }
    // The constructor from codes and scales gives the same matrix.
    const Int8Matrix m2(s.rows, s.cols, m.codes(), m.scale_bits());
    EXPECT_EQ(m2.to_q8_0_blocks(), b);
  }
}

TEST(Int8Matrix, NegativeZeroAndSubnormalScalesSurvive) {
  std::vector<std::uint8_t> b(2 * 34, 0);
  b[1] = 0x80;           // −0
  b[34] = 0x01;          // smallest subnormal, 2^-24
  b[36] = 0x80;          // code −128
  const Int8Matrix m = Int8Matrix::from_q8_0_blocks(1, 64, b.data(), b.size());
  EXPECT_EQ(m.to_q8_0_blocks(), b);
  EXPECT_TRUE(std::signbit(m.scale(0, 0)));
  EXPECT_EQ(m.value(0, 32), static_cast<float>(-128.0 * std::ldexp(1.0, -24)));
}

// float(d)·q, computed from the bit fields in double: d has 11 significant bits and q 8,
// so the product is exact in float32 and the dequantization must equal it exactly.
TEST(Int8Matrix, DequantizeEqualsIndependentDecoding) {
  for (const Shape& s : kShapes) {
    const auto b = random_q8_0(s.rows, s.cols, 5);
    const Int8Matrix m = Int8Matrix::from_q8_0_blocks(s.rows, s.cols, b.data(), b.size());
    const nibble::RowMatrixXf w = m.dequantize();
    std::vector<float> row(s.cols), ggml(32);
    for (std::size_t r = 0; r < s.rows; ++r) {
      m.dequantize_row(r, row.data());
      for (std::size_t k = 0; k < s.cols / 32; ++k) {
        const std::uint8_t* blk = b.data() + (r * (s.cols / 32) + k) * 34;
        const double d = half_value(static_cast<std::uint16_t>(blk[0] | (blk[1] << 8)));
        // The GGUF reader's decoder (checked against gguf-py by scripts/test-interop.sh).
        nibble::io::detail_ggml::decode_q8_0(blk, ggml.data());
        for (std::size_t j = 0; j < 32; ++j) {
          const std::size_t c = k * 32 + j;
          const auto want = static_cast<float>(d * static_cast<std::int8_t>(blk[2 + j]));
          ASSERT_TRUE(same_bits(w(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c)), want))
              << label(s) << " r " << r << " c " << c;
          ASSERT_TRUE(same_bits(row[c], want));
          ASSERT_TRUE(same_bits(ggml[j], want));
          ASSERT_TRUE(same_bits(m.value(r, c), want));
        }
      }
    }
  }
}

// ---- quantize_q8_0 -----------------------------------------------------------------

// gguf-py 0.19.0 Q8_0.quantize_blocks on the matrix of tests/interop/q8_0_golden.py: a
// block whose x·id are exact ties (amax 127, so d = 1; roundf rounds them away from
// zero), an all-zero block, a block whose fp16 d rounds to 0, and plain values.
TEST(QuantizeQ8_0, MatchesGgufPy) {
  const char* hex =
    "cf3281746a5f54493e34291e1308fef3e8ddd2c8bdb2a79c92877a6f655a4f44392fc33224190e03f9eee3d8cdc2b7aca297"
    "8c81766b60554b40352a1f1409fef4e9ded3b732c8bdb2a79c91867d72675c51463b30251a0f04f9eee4d9cec3b8ada2978c"
    "8178003c7ff1f2f3f4f5f6f7f8f9fafbfcfdfeff0102030405060708090a0b0c0d0e0f100000000000000000000000000000"
    "00000000000000000000000000000000000000000000b3a89d92877f74695e53483d32271c1106fbf0e5dacfc4b9aea3988d"
    "827a6f64be32584d43382d22170c01f6ebe0d6cbc0b5aa9f94897f74695e53483e33281d12079232fcf1e6dacfc4b9aea397"
    "8c817d72675c50453a2f24180d02f7ece1d5cabfb4a9ca32a1968b7f74695f54493e33281e1308fdf2e7ddd2c7bcb1a69c91"
    "867a6f645a4f";
  std::vector<std::uint8_t> want;
  for (const char* p = hex; p[0] && p[1]; p += 2) want.push_back(static_cast<std::uint8_t>(std::stoi(std::string(p, 2), nullptr, 16)));
  ASSERT_EQ(want.size(), 3u * 3 * 34);
  nibble::RowMatrixXf x(3, 96);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 96; ++c) {
      const int i = r * 96 + c, n = (i * 7919) % 2001 - 1000;
      double v = n / 37.0;
      if (r == 1 && c < 32) v = c == 0 ? 127.0 : (c - 16) + 0.5;
      else if (r == 1 && c < 64) v = 0.0;
      else if (r == 1) v = 1e-30 * n;
      x(r, c) = static_cast<float>(v);
    }
  const Int8Matrix q = nibble::quantize_q8_0(x);
  EXPECT_EQ(q.to_q8_0_blocks(), want);
  // The ties: 0.5 → 1, 1.5 → 2, −0.5 → −1, −14.5 → −15 (half away from zero; half to
  // even would give 0, 2, 0, −14).
  EXPECT_EQ(q.code(1, 16), 1);
  EXPECT_EQ(q.code(1, 17), 2);
  EXPECT_EQ(q.code(1, 15), -1);
  EXPECT_EQ(q.code(1, 1), -15);
  EXPECT_EQ(q.code(1, 0), 127);
}

TEST(QuantizeQ8_0, RoundTripErrorWithinHalfAStep) {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  nibble::RowMatrixXf w(37, 576);
  for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = nd(rng);
  const Int8Matrix q = nibble::quantize_q8_0(w);
  const nibble::RowMatrixXf back = q.dequantize();
  for (Eigen::Index r = 0; r < w.rows(); ++r)
    for (Eigen::Index k = 0; k < w.cols() / 32; ++k) {
      const auto blk = w.row(r).segment(k * 32, 32);
      const float amax = blk.cwiseAbs().maxCoeff();
      const double d = amax / 127.0;  // codes use the float32 d; the stored fp16 d differs by <= 2^-11 relative
      int extreme = 0;
      for (Eigen::Index j = 0; j < 32; ++j) {
        const double err = std::fabs(double(back(r, k * 32 + j)) - w(r, k * 32 + j));
        ASSERT_LE(err, d * (0.5 + 1e-6) + 127 * d * std::ldexp(1.0, -11));
        extreme = std::max(extreme, std::abs(int(q.code(static_cast<std::size_t>(r), static_cast<std::size_t>(k * 32 + j)))));
      }
      EXPECT_EQ(extreme, 127);  // the largest |w| maps to ±127
      EXPECT_EQ(q.scale_bits()[static_cast<std::size_t>(r * 18 + k)], nibble::float_to_half(amax / 127.0f));
    }
}

TEST(QuantizeQ8_0, TinyAndZeroBlocksStayFinite) {
  nibble::RowMatrixXf w = nibble::RowMatrixXf::Zero(2, 64);
  w(0, 3) = 1e-38f;   // 1/d overflows float: q clamps to ±127, 0 elsewhere, d stored as 0
  w(0, 4) = -1e-39f;  // subnormal
  w(1, 40) = -3.0f;
  const Int8Matrix q = nibble::quantize_q8_0(w);
  EXPECT_EQ(q.code(0, 3), 127);
  EXPECT_EQ(q.code(0, 0), 0);
  EXPECT_EQ(q.scale_bits()[0], 0);
  EXPECT_EQ(q.scale_bits()[1], 0);  // all-zero block: d = 0, q = 0
  EXPECT_EQ(q.code(1, 40), -127);
  const nibble::RowMatrixXf back = q.dequantize();
  EXPECT_TRUE(back.allFinite());
  EXPECT_NEAR(back(1, 40), -3.0f, 3.0 / 127 / 2);
}

// ---- kernels -----------------------------------------------------------------------

// Σ|d·w·x| per output, and Σ d·w·x in double.
void reference(const Int8Matrix& W, const float* X, std::size_t batch, std::vector<double>& y,
               std::vector<double>& mag) {
  y.assign(batch * W.rows(), 0.0);
  mag.assign(batch * W.rows(), 0.0);
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t r = 0; r < W.rows(); ++r) {
      double s = 0, m = 0;
      for (std::size_t c = 0; c < W.cols(); ++c) {
        const double v = half_value(W.scale_bits()[r * W.blocks_per_row() + c / 32]) * W.code(r, c) *
                         static_cast<double>(X[b * W.cols() + c]);
        s += v;
        m += std::fabs(v);
      }
      y[b * W.rows() + r] = s;
      mag[b * W.rows() + r] = m;
    }
}

// Exact mode's error bound: per block a product, an fma, an add and 3 tree levels (6
// roundings), then one fma per block into y: |y − Σ d·w·x| <= (blocks + 6)·2^-24·Σ|d·w·x|
// (first order); tested with blocks + 8.
TEST(Int8Kernels, ScalarExactWithinStatedBoundOfDouble) {
  for (const Shape& s : kShapes) {
    if (s.rows > 1000) continue;
    const Int8Matrix W = random_matrix(s.rows, s.cols, 7);
    const std::size_t batch = 3;
    const auto X = random_activations(batch * s.cols, 11);
    const auto Y = run(Isa::scalar, W, X, batch, ActivationMode::exact);
    std::vector<double> want, mag;
    reference(W, X.data(), batch, want, mag);
    const double bound = (static_cast<double>(W.blocks_per_row()) + 8) * std::ldexp(1.0, -24);
    for (std::size_t i = 0; i < Y.size(); ++i)
      ASSERT_LE(std::fabs(Y[i] - want[i]), bound * mag[i] + 1e-38) << label(s) << " i " << i;
  }
}

// Fast mode against an independent emulation of the documented rules: activations
// q = round(x·127/amax) (ties away from zero) per 32-block, d' = amax/127, the block's
// integer dot product, y = fma(d·d', i, y) block by block — bit for bit — and, in double,
// Σ d·d'·i within float rounding.
TEST(Int8Kernels, ScalarFastMatchesIndependentEmulation) {
  for (const Shape& s : kShapes) {
    if (s.rows > 1000) continue;
    const Int8Matrix W = random_matrix(s.rows, s.cols, 8);
    const std::size_t batch = 2;
    const auto X = random_activations(batch * s.cols, 12);
    const auto Y = run(Isa::scalar, W, X, batch, ActivationMode::fast);
    const std::size_t nb = s.cols / 32;
    for (std::size_t b = 0; b < batch; ++b) {
      std::vector<int> qx(s.cols);
      std::vector<float> dx(nb);
      for (std::size_t k = 0; k < nb; ++k) {
        float amax = 0;
        for (std::size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(X[b * s.cols + k * 32 + j]));
        dx[k] = amax / 127.0f;
        for (std::size_t j = 0; j < 32; ++j)
          qx[k * 32 + j] = amax == 0 ? 0 : static_cast<int>(std::round(X[b * s.cols + k * 32 + j] * (127.0f / amax)));
      }
      for (std::size_t r = 0; r < s.rows; ++r) {
        float y = 0;
        double yd = 0, mag = 0;
        for (std::size_t k = 0; k < nb; ++k) {
          long long i = 0;
          for (std::size_t j = 0; j < 32; ++j) i += static_cast<long long>(W.code(r, k * 32 + j)) * qx[k * 32 + j];
          const float d = static_cast<float>(half_value(W.scale_bits()[r * nb + k]));
          y = std::fma(d * dx[k], static_cast<float>(i), y);
          yd += static_cast<double>(d) * dx[k] * static_cast<double>(i);
          mag += std::fabs(static_cast<double>(d) * dx[k] * static_cast<double>(i));
        }
        ASSERT_TRUE(same_bits(Y[b * s.rows + r], y)) << label(s) << " b " << b << " r " << r << ": "
                                                     << Y[b * s.rows + r] << " vs " << y;
        ASSERT_NEAR(Y[b * s.rows + r], yd, (nb + 2) * std::ldexp(1.0, -24) * mag + 1e-38);
      }
    }
  }
}

TEST(Int8Kernels, EverySimdPathEqualsScalarBitForBit) {
  const auto isas = simd_isas();
  if (isas.empty()) GTEST_SKIP() << "no SIMD path on this CPU/build; the scalar path is covered elsewhere";
  for (const Shape& s : kShapes) {
    const Int8Matrix W = random_matrix(s.rows, s.cols, 21);
    for (std::size_t batch : {std::size_t{1}, std::size_t{2}, std::size_t{5}, std::size_t{33}}) {
      if (s.rows > 1000 && batch > 5) continue;
      const auto X = random_activations(batch * s.cols, static_cast<std::uint32_t>(9 + batch));
      for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
        const auto ref = run(Isa::scalar, W, X, batch, mode);
        for (Isa isa : isas) {
          const auto got = run(isa, W, X, batch, mode);
          for (std::size_t i = 0; i < ref.size(); ++i)
            ASSERT_TRUE(same_bits(got[i], ref[i]))
                << nibble::to_string(isa) << (mode == ActivationMode::fast ? " fast " : " exact ") << label(s)
                << " batch " << batch << " i " << i << ": " << got[i] << " vs " << ref[i];
        }
      }
    }
  }
}

// The AVX-512 fast kernel without VNNI (maddubs) is chosen only on CPUs without VNNI;
// on one with VNNI it is called directly here (its instructions are all AVX-512BW).
// scripts/test-avx512.sh also runs it as selected, under bochs' Skylake-X.
TEST(Int8Kernels, Avx512WithoutVnniEqualsScalar) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
  if (!nibble::isa_available(Isa::avx512)) GTEST_SKIP() << "no AVX-512 on this CPU";
  for (const Shape& s : kShapes) {
    const Int8Matrix W = random_matrix(s.rows, s.cols, 22);
    for (std::size_t batch : {std::size_t{1}, std::size_t{2}, std::size_t{5}, std::size_t{33}}) {
      if (s.rows > 1000 && batch > 5) continue;
      const auto X = random_activations(batch * s.cols, static_cast<std::uint32_t>(batch));
      const auto ref = run(Isa::scalar, W, X, batch, ActivationMode::fast);
      nibble::detail::Int8Activations p;
      nibble::detail::prepare_int8_fast(W, X.data(), batch, p);
      std::vector<float> Y(ref.size());
      nibble::detail::int8_avx512::gemm_fast(W, p, Y.data(), 0, W.rows(), false);
      ASSERT_EQ(std::memcmp(Y.data(), ref.data(), ref.size() * sizeof(float)), 0) << label(s) << " batch " << batch;
    }
  }
#else
  GTEST_SKIP() << "x86-64 only";
#endif
}

// SmolLM2-135M's tied output projection (token_embd, 49152 × 576): every path, both
// modes, one and two threads, against the scalar reference.
TEST(Int8Kernels, SmolLM2OutputProjectionShape) {
  const Int8Matrix W = random_matrix(49152, 576, 31);
  const auto x = random_activations(576, 32);
  std::vector<Isa> isas = simd_isas();
  for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
    const auto ref = run(Isa::scalar, W, x, 1, mode);
    for (Isa isa : isas)
      for (int t : {1, 2}) {
        const auto got = run(isa, W, x, 1, mode, t);
        ASSERT_EQ(std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)), 0) << nibble::to_string(isa) << " t" << t;
      }
  }
}

TEST(Int8Kernels, ThreadCountsGiveIdenticalResults) {
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  for (const Shape& s : {Shape{45, 576}, Shape{2053, 576}, Shape{7, 1536}}) {
    const Int8Matrix W = random_matrix(s.rows, s.cols, 2);
    const auto X = random_activations(5 * s.cols, 3);
    for (Isa isa : isas)
      for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
        const auto y1 = run(isa, W, X, 5, mode, 1);
        for (int t : {2, 3, 7})
          EXPECT_EQ(std::memcmp(run(isa, W, X, 5, mode, t).data(), y1.data(), y1.size() * sizeof(float)), 0)
              << nibble::to_string(isa) << " " << label(s) << " t=" << t;
      }
  }
  // Too little work to split: one thread runs it, whatever was asked.
  EXPECT_EQ(nibble::detail::thread_count(64, 576, 1, 2), 1u);
  EXPECT_EQ(nibble::detail::thread_count(7, 1536, 33, 2), 1u);  // one 8-row tile
  EXPECT_EQ(nibble::detail::thread_count(49152, 576, 1, 2), 2u);
  EXPECT_EQ(nibble::detail::thread_count(64, 576, 33, 2), 2u);  // 1.2 M multiply-adds
  EXPECT_EQ(nibble::detail::thread_count(64, 576, std::numeric_limits<std::size_t>::max(), 3), 3u);
}

TEST(Int8Kernels, UnalignedPointersAndGemvEqualsGemmRow) {
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  const Int8Matrix W = random_matrix(19, 160, 4);
  const std::size_t batch = 5;
  const auto X = random_activations(batch * W.cols(), 6);
  std::vector<float> xbuf(batch * W.cols() + 1), ybuf(batch * W.rows() + 1);
  std::copy(X.begin(), X.end(), xbuf.begin() + 1);
  for (Isa isa : isas)
    for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
      const auto ref = run(Isa::scalar, W, X, batch, mode);
      IsaGuard guard;
      nibble::force_isa(isa);
      nibble::gemm(W, xbuf.data() + 1, batch, ybuf.data() + 1, GemvOptions{mode, 2});
      for (std::size_t i = 0; i < ref.size(); ++i) ASSERT_TRUE(same_bits(ybuf[i + 1], ref[i])) << nibble::to_string(isa);
      const Eigen::VectorXf xv = Eigen::Map<const Eigen::VectorXf>(X.data() + 4 * W.cols(), W.cols());
      Eigen::VectorXf yv(W.rows());
      nibble::gemv(W, xv, yv, GemvOptions{mode, 1});
      for (std::size_t r = 0; r < W.rows(); ++r) ASSERT_TRUE(same_bits(yv[r], ref[4 * W.rows() + r]));
    }
}

// The largest integer sums: codes −128 or 127 everywhere against activations ±1 (q = ±127).
TEST(Int8Kernels, ExtremeCodesDoNotOverflow) {
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  for (int code : {-128, 127})
    for (float sign : {1.0f, -1.0f}) {
      const std::size_t rows = 9, cols = 1536;
      std::vector<std::int8_t> codes(rows * cols, static_cast<std::int8_t>(code));
      std::vector<std::uint16_t> scales(rows * cols / 32, nibble::float_to_half(0.5f));
      const Int8Matrix W(rows, cols, codes, scales);
      const std::vector<float> x(cols, sign);
      const double want = 0.5 * code * sign * cols;
      const auto ref = run(Isa::scalar, W, x, 1, ActivationMode::fast);
      for (Isa isa : isas)
        for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
          const auto got = run(isa, W, x, 1, mode);
          for (std::size_t r = 0; r < rows; ++r) {
            if (mode == ActivationMode::fast) {
              ASSERT_TRUE(same_bits(got[r], ref[r])) << nibble::to_string(isa);
            }
            ASSERT_NEAR(got[r], want, 1e-5 * std::fabs(want)) << nibble::to_string(isa) << " code " << code;
          }
        }
    }
}

TEST(Int8Kernels, FastCloseToExact) {
  // int8 activations per 32-block: relative L2 error well under 1% on gaussian data.
  const Int8Matrix W = nibble::quantize_q8_0(nibble::RowMatrixXf::Random(256, 576));
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(576);
  for (auto& v : x) v = nd(rng);
  const auto e = run(nibble::detected_isa(), W, x, 1, ActivationMode::exact);
  const auto f = run(nibble::detected_isa(), W, x, 1, ActivationMode::fast);
  double num = 0, den = 0;
  for (std::size_t i = 0; i < e.size(); ++i) {
    num += (f[i] - e[i]) * double(f[i] - e[i]);
    den += double(e[i]) * e[i];
  }
  EXPECT_LT(std::sqrt(num / den), 0.01);
}

TEST(Int8Kernels, SelectedThroughNibbleIsa) {
  const Int8Matrix W = random_matrix(16, 64, 1);
  const auto x = random_activations(64, 1);
  const auto ref = run(Isa::scalar, W, x, 1, ActivationMode::fast);
  ASSERT_EQ(setenv("NIBBLE_ISA", "scalar", 1), 0);
  std::vector<float> y(16);
  nibble::gemv(W, x.data(), y.data(), GemvOptions{ActivationMode::fast, 1});
  EXPECT_EQ(y, ref);
  ASSERT_EQ(setenv("NIBBLE_ISA", "sse9", 1), 0);
  EXPECT_THROW(nibble::gemv(W, x.data(), y.data()), nibble::Error);
  ASSERT_EQ(unsetenv("NIBBLE_ISA"), 0);
}

// As kernels_test: under bochs (scripts/test-avx512.sh) a missing AVX-512 path must fail.
TEST(Int8Kernels, RequiredPathsArePresent) {
  const char* req = std::getenv("NIBBLE_TEST_REQUIRE");
  if (req == nullptr || *req == '\0') GTEST_SKIP() << "NIBBLE_TEST_REQUIRE not set";
  const std::string r = std::string(",") + req + ",";
  if (r.find(",scalar,") != std::string::npos) {
    EXPECT_EQ(nibble::detected_isa(), Isa::scalar);
  }
  if (r.find(",avx512,") != std::string::npos) {
    EXPECT_TRUE(nibble::isa_available(Isa::avx512));
  }
  if (r.find(",vnni,") != std::string::npos) {
    EXPECT_TRUE(nibble::cpu_features().avx512vnni);
  }
  if (r.find(",novnni,") != std::string::npos) {
    EXPECT_FALSE(nibble::cpu_features().avx512vnni);
  }
}

// ---- bad input ---------------------------------------------------------------------

template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const nibble::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Int8Matrix, RejectsBadInput) {
  const auto b = random_q8_0(2, 64, 1);
  // cols not a multiple of 32, empty shapes.
  EXPECT_NE(error_of([&] { Int8Matrix::from_q8_0_blocks(2, 48, b.data(), b.size()); }).find("multiple of 32"),
            std::string::npos);
  EXPECT_THROW(Int8Matrix::from_q8_0_blocks(0, 64, b.data(), b.size()), nibble::Error);
  EXPECT_THROW(Int8Matrix::from_q8_0_blocks(2, 0, b.data(), b.size()), nibble::Error);
  // Truncated, too long, null, overflowing sizes.
  EXPECT_NE(error_of([&] { Int8Matrix::from_q8_0_blocks(2, 64, b.data(), b.size() - 1); }).find("expected 136"),
            std::string::npos);
  EXPECT_THROW(Int8Matrix::from_q8_0_blocks(2, 64, b.data(), b.size() + 1), nibble::Error);
  EXPECT_THROW(Int8Matrix::from_q8_0_blocks(2, 64, nullptr, b.size()), nibble::Error);
  EXPECT_THROW(Int8Matrix::from_q8_0_blocks(std::numeric_limits<std::size_t>::max() / 64, 64, b.data(), b.size()),
               nibble::Error);
  EXPECT_THROW(Int8Matrix::from_q8_0_blocks(3, std::size_t{1} << 62, b.data(), b.size()), nibble::Error);
  // NaN and Inf scales, named by row and block.
  for (std::uint16_t bad : {std::uint16_t{0x7E00}, std::uint16_t{0xFC00}, std::uint16_t{0x7C01}}) {
    auto c = b;
    c[3 * 34] = static_cast<std::uint8_t>(bad & 0xFF);
    c[3 * 34 + 1] = static_cast<std::uint8_t>(bad >> 8);
    const std::string e = error_of([&] { Int8Matrix::from_q8_0_blocks(2, 64, c.data(), c.size()); });
    EXPECT_NE(e.find("row 1, block 1"), std::string::npos) << e;
  }
  // The constructor checks sizes and scales as well.
  EXPECT_THROW(Int8Matrix(2, 64, std::vector<std::int8_t>(127), std::vector<std::uint16_t>(4)), nibble::Error);
  EXPECT_THROW(Int8Matrix(2, 64, std::vector<std::int8_t>(128), std::vector<std::uint16_t>(3)), nibble::Error);
  EXPECT_THROW(Int8Matrix(2, 64, std::vector<std::int8_t>(128), std::vector<std::uint16_t>(4, 0x7E00)), nibble::Error);
  EXPECT_THROW(Int8Matrix(1, 40, std::vector<std::int8_t>(40), std::vector<std::uint16_t>(1)), nibble::Error);
  // dequantize_row range.
  const Int8Matrix m = Int8Matrix::from_q8_0_blocks(2, 64, b.data(), b.size());
  std::vector<float> row(64);
  EXPECT_THROW(m.dequantize_row(2, row.data()), nibble::Error);
  EXPECT_THROW(m.dequantize_row(0, nullptr), nibble::Error);
  // quantize_q8_0: cols, empty, non-finite (with the position), fp16 overflow of d.
  EXPECT_THROW(nibble::quantize_q8_0(nibble::RowMatrixXf::Ones(2, 33)), nibble::Error);
  EXPECT_THROW(nibble::quantize_q8_0(nibble::RowMatrixXf(0, 32)), nibble::Error);
  nibble::RowMatrixXf w = nibble::RowMatrixXf::Ones(2, 64);
  w(1, 40) = std::nanf("");
  EXPECT_NE(error_of([&] { nibble::quantize_q8_0(w); }).find("row 1, column 40"), std::string::npos);
  w(1, 40) = 1e10f;
  EXPECT_NE(error_of([&] { nibble::quantize_q8_0(w); }).find("fp16"), std::string::npos);
}

TEST(Int8Kernels, RejectBadCalls) {
  const Int8Matrix W = random_matrix(4, 64, 1);
  Eigen::VectorXf x = Eigen::VectorXf::Ones(64), y(4);
  EXPECT_NO_THROW(nibble::gemv(W, x, y));
  Eigen::VectorXf wrong_x = Eigen::VectorXf::Ones(63), wrong_y(5);
  EXPECT_THROW(nibble::gemv(W, wrong_x, y), nibble::Error);
  EXPECT_THROW(nibble::gemv(W, x, wrong_y), nibble::Error);
  EXPECT_THROW(nibble::gemv(W, x, y, GemvOptions{ActivationMode::exact, 0}), nibble::Error);
  EXPECT_THROW(nibble::gemv(W, x, y, GemvOptions{ActivationMode::fast, 257}), nibble::Error);
  EXPECT_THROW(nibble::gemv(W, x, y, GemvOptions{static_cast<ActivationMode>(7), 1}), nibble::Error);
  EXPECT_THROW(nibble::gemm(W, x.data(), 0, y.data()), nibble::Error);
  EXPECT_THROW(nibble::gemm(W, nullptr, 1, y.data()), nibble::Error);
  EXPECT_THROW(nibble::gemm(Int8Matrix(), x.data(), 1, y.data()), nibble::Error);
  for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
    x[37] = std::nanf("");
    EXPECT_NE(error_of([&] { nibble::gemv(W, x, y, GemvOptions{mode, 1}); }).find("column 37"), std::string::npos);
    x[37] = -INFINITY;
    EXPECT_THROW(nibble::gemv(W, x, y, GemvOptions{mode, 1}), nibble::Error);
    x[37] = 1.0f;
  }
  // Zero activations give exact zeros in both modes.
  x.setZero();
  for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
    nibble::gemv(W, x, y, GemvOptions{mode, 1});
    EXPECT_TRUE((y.array() == 0.0f).all());
  }
}

}  // namespace
