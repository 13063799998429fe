// The attention kernels: the softmax (kernels/softmax*.hpp) and one query row of decode
// attention (kernels/attention*.hpp). Each scalar specification is checked against
// double precision and every SIMD path against it bit for bit. Built into kernels_test
// (tests/CMakeLists.txt), so the emulator runs (qemu for NEON and the scalar fallback,
// bochs for AVX-512) reach these paths too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <nibble/kernels/attention.hpp>
#include <nibble/kernels/softmax.hpp>

namespace attention_kernels_test {

using nibble::Isa;

std::vector<Isa> simd_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::avx2, Isa::avx512, Isa::neon})
    if (nibble::isa_available(isa)) out.push_back(isa);
  return out;
}

// The attention softmax: its exp against double precision, the rows against a double
// softmax, and every SIMD path against the scalar specification bit for bit (lengths
// around the 16-lane steps, scores large enough that some exps underflow to 0).
TEST(Softmax, ExpIsAccurateAndFlushesOnlyBelowMinus87) {
  float worst = 0.0f;
  for (int i = 0; i <= 200000; ++i) {
    const float x = -87.0f + 88.0f * static_cast<float>(i) / 200000.0f;  // [-87, 1]
    const double ref = std::exp(static_cast<double>(x));
    const float got = nibble::detail::exp_for_softmax(x);
    worst = std::max(worst, static_cast<float>(std::fabs(got - ref) / ref));
  }
  EXPECT_LT(worst, 3.0e-7f);  // 2.5 ulp of float
  EXPECT_EQ(nibble::detail::exp_for_softmax(0.0f), 1.0f);
  EXPECT_EQ(nibble::detail::exp_for_softmax(-87.5f), 0.0f);
  EXPECT_EQ(nibble::detail::exp_for_softmax(-INFINITY), 0.0f);
  EXPECT_TRUE(std::isnan(nibble::detail::exp_for_softmax(std::nanf(""))));
}

TEST(Softmax, EveryPathEqualsTheScalarSpecification) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::size_t> lengths;
  for (std::size_t n = 1; n <= 70; ++n) lengths.push_back(n);
  lengths.push_back(1000);
  for (float spread : {0.01f, 1.0f, 30.0f, 300.0f})
    for (std::size_t n : lengths) {
      std::vector<float> v(n);
      for (float& e : v) e = spread * normal(rng);
      std::vector<float> spec = v;
      nibble::detail::softmax(spec.data(), n, Isa::scalar);
      // The specification against a softmax in double.
      const double mx = *std::max_element(v.begin(), v.end());
      double sum = 0;
      for (float e : v) sum += std::exp(static_cast<double>(e) - mx);
      for (std::size_t i = 0; i < n; ++i)
        ASSERT_NEAR(spec[i], std::exp(static_cast<double>(v[i]) - mx) / sum, 1e-6) << "n=" << n << " i=" << i;
      for (Isa isa : simd_isas()) {
        std::vector<float> got = v;
        nibble::detail::softmax(got.data(), n, isa);
        ASSERT_EQ(0, std::memcmp(got.data(), spec.data(), n * sizeof(float)))
            << nibble::to_string(isa) << " n=" << n << " spread=" << spread;
      }
    }
}

TEST(Softmax, NonFiniteScores) {
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  for (Isa isa : isas) {
    for (std::size_t n : {std::size_t{5}, std::size_t{16}, std::size_t{37}}) {
      std::vector<float> v(n, 1.0f);
      v[n / 2] = -INFINITY;  // a masked-out score: weight 0, the others share 1
      nibble::detail::softmax(v.data(), n, isa);
      EXPECT_EQ(v[n / 2], 0.0f) << nibble::to_string(isa);
      EXPECT_FLOAT_EQ(v[0], 1.0f / static_cast<float>(n - 1)) << nibble::to_string(isa);
      std::fill(v.begin(), v.end(), 1.0f);
      v[n - 1] = std::nanf("");  // NaN anywhere poisons the whole row, never a plausible number
      nibble::detail::softmax(v.data(), n, isa);
      for (float e : v) EXPECT_TRUE(std::isnan(e)) << nibble::to_string(isa) << " n=" << n;
    }
  }
}


// The feed-forward gate silu(g)·u: the scalar rule against double precision (|g| up to
// 100, past both ends of the exp's range), every SIMD path bit for bit against it at
// lengths around the 4/8/16-lane steps, written in place (out = gate) as the model does.
TEST(SiluMul, EveryPathEqualsTheScalarSpecification) {
  std::mt19937 rng(12);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::size_t> lengths;
  for (std::size_t n = 1; n <= 40; ++n) lengths.push_back(n);
  lengths.push_back(1536);  // SmolLM2's hidden width
  for (float spread : {0.1f, 3.0f, 100.0f})
    for (std::size_t n : lengths) {
      std::vector<float> gate(n), up(n);
      for (float& e : gate) e = spread * normal(rng);
      for (float& e : up) e = normal(rng);
      std::vector<float> spec(n);
      nibble::detail::silu_mul(gate.data(), up.data(), spec.data(), n, Isa::scalar);
      for (std::size_t i = 0; i < n; ++i) {
        const double g = gate[i], ref = g / (1.0 + std::exp(-g)) * up[i];
        // Below g = −88 the rule gives g·u / (1 + e⁸⁸), under 1e−34 for these g and u.
        ASSERT_NEAR(spec[i], ref, 1e-6 * std::fabs(ref) + 1e-34) << "g=" << g;
      }
      for (Isa isa : simd_isas()) {
        std::vector<float> got = gate;
        nibble::detail::silu_mul(got.data(), up.data(), got.data(), n, isa);
        ASSERT_EQ(0, std::memcmp(got.data(), spec.data(), n * sizeof(float)))
            << nibble::to_string(isa) << " n=" << n << " spread=" << spread;
      }
    }
  // Exact points: silu(0) = 0, silu(g) = g once exp(−g) is 0; NaN stays NaN.
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  for (Isa isa : isas) {
    std::vector<float> gate(19, 0.0f), up(19, 2.0f), out(19);
    gate[3] = 90.0f;
    gate[18] = std::nanf("");
    nibble::detail::silu_mul(gate.data(), up.data(), out.data(), 19, isa);
    EXPECT_EQ(out[0], 0.0f) << nibble::to_string(isa);
    EXPECT_EQ(out[3], 180.0f) << nibble::to_string(isa);
    EXPECT_TRUE(std::isnan(out[18])) << nibble::to_string(isa);
  }
}

// Decode attention for one row: scores against a double dot product, the mix against a
// double weighted sum, every path bit for bit equal to the scalar rule. Head sizes
// around the 4/8/16-lane steps (64 is SmolLM2's, 8 stories260K's), rows further apart
// than a head (a KV cache row holds every KV head), key counts from 1.
TEST(DecodeAttention, EveryPathEqualsTheScalarSpecification) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::size_t hs : {1, 3, 4, 7, 8, 12, 16, 17, 24, 31, 32, 48, 63, 64, 65, 80, 128}) {
    for (std::size_t n : {1, 2, 3, 5, 16, 33, 130}) {
      const std::size_t stride = 3 * hs + 5;  // this head at offset hs of each row
      std::vector<float> q(hs), KV(n * stride), p(n);
      for (float& e : q) e = normal(rng);
      for (float& e : KV) e = normal(rng);
      float psum = 0.0f;
      for (float& e : p) psum += (e = std::fabs(normal(rng)));
      for (float& e : p) e /= psum;
      const float* K = KV.data() + hs;
      std::vector<float> spec_s(n), spec_o(hs);
      nibble::detail::attention_scores(q.data(), K, stride, n, hs, spec_s.data(), Isa::scalar);
      nibble::detail::attention_mix(p.data(), K, stride, n, hs, spec_o.data(), Isa::scalar);
      for (std::size_t j = 0; j < n; ++j) {
        double ref = 0, mag = 0;
        for (std::size_t i = 0; i < hs; ++i) {
          ref += static_cast<double>(q[i]) * K[j * stride + i];
          mag += std::fabs(static_cast<double>(q[i]) * K[j * stride + i]);
        }
        ASSERT_NEAR(spec_s[j], ref, 1e-6 * (1 + mag)) << "hs=" << hs << " n=" << n << " j=" << j;
      }
      for (std::size_t d = 0; d < hs; ++d) {
        double ref = 0, mag = 0;
        for (std::size_t j = 0; j < n; ++j) {
          ref += static_cast<double>(p[j]) * K[j * stride + d];
          mag += std::fabs(static_cast<double>(p[j]) * K[j * stride + d]);
        }
        ASSERT_NEAR(spec_o[d], ref, 1e-6 * (1 + mag)) << "hs=" << hs << " n=" << n << " d=" << d;
      }
      for (Isa isa : simd_isas()) {
        std::vector<float> s(n, -1.0f), o(hs + 1, -1.0f);
        nibble::detail::attention_scores(q.data(), K, stride, n, hs, s.data(), isa);
        nibble::detail::attention_mix(p.data(), K, stride, n, hs, o.data(), isa);
        ASSERT_EQ(0, std::memcmp(s.data(), spec_s.data(), n * sizeof(float)))
            << nibble::to_string(isa) << " scores, hs=" << hs << " n=" << n;
        ASSERT_EQ(0, std::memcmp(o.data(), spec_o.data(), hs * sizeof(float)))
            << nibble::to_string(isa) << " mix, hs=" << hs << " n=" << n;
        EXPECT_EQ(o[hs], -1.0f) << nibble::to_string(isa) << " wrote past the head, hs=" << hs;
      }
    }
  }
}

}  // namespace attention_kernels_test
