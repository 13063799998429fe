// Kernels: every ISA path available at run time against the scalar reference,
// the scalar reference against q.dequantize() * x, threads, dispatch, bad input.
// The attention kernels' tests (softmax, decode attention) are attention_kernels_test.cpp,
// built into the same executable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nibble/nibble.hpp>

#include "packed_test_util.hpp"

namespace {

using nibble::ActivationMode;
using nibble::Codebook;
using nibble::CodeLayout;
using nibble::GemvOptions;
using nibble::Isa;
using nibble::PackedMatrix;
using nibble::QuantizedMatrix;
using nibble::ScaleFormat;

// Restores automatic ISA selection when a test ends.
struct IsaGuard {
  ~IsaGuard() { nibble::clear_forced_isa(); }
};

std::vector<Isa> simd_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::avx2, Isa::avx512, Isa::neon})
    if (nibble::isa_available(isa)) out.push_back(isa);
  return out;
}

const CodeLayout kLayouts[] = {CodeLayout::row_tiles, CodeLayout::row_panels};

const char* layout_name(CodeLayout l) { return l == CodeLayout::row_tiles ? "row_tiles" : "row_panels"; }

using packed_test::random_matrix;
using packed_test::ZeroKind;

std::vector<float> random_activations(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  return x;
}

// Σ|w||x| per output: the scale for a float-rounding tolerance.
std::vector<double> magnitudes(const QuantizedMatrix& q, const float* X, std::size_t batch) {
  const Eigen::MatrixXf w = q.dequantize();
  std::vector<double> out(batch * q.rows());
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t r = 0; r < q.rows(); ++r) {
      double m = 0;
      for (std::size_t c = 0; c < q.cols(); ++c)
        m += std::fabs(static_cast<double>(w(r, c)) * X[b * q.cols() + c]);
      out[b * q.rows() + r] = m;
    }
  return out;
}

std::vector<float> run(Isa isa, const PackedMatrix& W, const std::vector<float>& X, std::size_t batch,
                       ActivationMode mode, int threads = 1) {
  IsaGuard guard;
  nibble::force_isa(isa);
  std::vector<float> Y(batch * W.rows(), -1.0f);
  nibble::gemm(W, X.data(), batch, Y.data(), GemvOptions{mode, threads});
  return Y;
}

struct Shape {
  std::size_t rows, cols, gs;
};

// K not a multiple of 32/64/group size, N not a multiple of the 8-row tile, tiny and
// odd per-row groups, groups that are not a multiple of the 32-element block.
// {40, 208, 16}: 520 groups, so eight consecutive groups of a row straddle a 256-group
// block of double-quantized scales.
// {16, 512, 32}, {9, 224, 32}, {11, 257, 32}, {10, 172, 32}: one-block groups taken two
// at a time (GGUF's group size), and what is left after the pairs: nothing, one full
// group, a ragged group, and a full group followed by a ragged one.
const Shape kShapes[] = {{1, 1, 1},    {3, 7, 7},     {9, 30, 6},    {13, 67, 2},   {17, 130, 64},
                         {8, 256, 128}, {11, 257, 32}, {5, 300, 100}, {21, 96, 96}, {7, 200, 16},
                         {40, 208, 16}, {16, 512, 32}, {9, 224, 32},  {10, 172, 32}};
const Codebook kCodebooks[] = {Codebook::int4_sym, Codebook::uint4_asym, Codebook::nf4, Codebook::fp4,
                               Codebook::iq4_nl};
const ScaleFormat kScaleFormats[] = {ScaleFormat::f32, ScaleFormat::f16, ScaleFormat::bf16, ScaleFormat::dq8};

std::string label(const Shape& s, Codebook cb, ScaleFormat sf) {
  return std::to_string(s.rows) + "x" + std::to_string(s.cols) + " g" + std::to_string(s.gs) + " " +
         nibble::to_string(cb) + " " + nibble::to_string(sf);
}

TEST(PackedMatrix, RoundTripsLosslessly) {
  for (const Shape& s : kShapes)
    for (Codebook cb : kCodebooks)
      for (ScaleFormat sf : kScaleFormats) {
        const QuantizedMatrix q = random_matrix(s.rows, s.cols, s.gs, cb, sf, 7);
        for (CodeLayout layout : kLayouts) {
        const PackedMatrix W(q, layout);
        EXPECT_EQ(W.code_layout(), layout);
        const QuantizedMatrix u = W.unpack();
        EXPECT_EQ(u.rows(), q.rows());
        EXPECT_EQ(u.cols(), q.cols());
        EXPECT_EQ(u.group_size(), q.group_size());
        EXPECT_EQ(u.codebook(), q.codebook());
        EXPECT_EQ(u.codes(), q.codes());
        EXPECT_EQ(u.scales().format(), q.scales().format());
        EXPECT_EQ(u.scales().decode(), q.scales().decode());
        EXPECT_EQ(u.decoded_zeros(), q.decoded_zeros());
        EXPECT_EQ(W.weight_bytes(), q.storage_bytes());
        }
      }
}

TEST(PackedMatrix, BlockPlanCoversEveryColumnOnce) {
  for (const Shape& s : kShapes) {
    const PackedMatrix W(random_matrix(1, s.cols, s.gs, Codebook::int4_sym, ScaleFormat::f32, 1));
    std::size_t next = 0;
    for (std::size_t g = 0; g < W.groups_per_row(); ++g)
      for (std::size_t b = W.first_block(g); b < W.first_block(g + 1); ++b) {
        EXPECT_EQ(2 * W.blocks()[b].byte_begin, next);
        EXPECT_LE(W.blocks()[b].elements, nibble::kActivationBlock);
        EXPECT_LE(next + W.blocks()[b].elements, std::min(s.cols, (g + 1) * s.gs));
        next += W.blocks()[b].elements;
      }
    EXPECT_EQ(next, s.cols);
  }
}

// The specification itself against an independent computation in double.
TEST(ScalarReference, ExactEqualsDequantizeTimesX) {
  for (const Shape& s : kShapes)
    for (Codebook cb : kCodebooks)
      for (ScaleFormat sf : kScaleFormats) {
        const QuantizedMatrix q = random_matrix(s.rows, s.cols, s.gs, cb, sf, 11, ZeroKind::f16);
        const PackedMatrix W(q);
        const std::size_t batch = 3;
        const auto X = random_activations(batch * s.cols, 5);
        const auto Y = run(Isa::scalar, W, X, batch, ActivationMode::exact);
        const Eigen::MatrixXd w = q.dequantize().cast<double>();
        const auto mag = magnitudes(q, X.data(), batch);
        for (std::size_t b = 0; b < batch; ++b)
          for (std::size_t r = 0; r < s.rows; ++r) {
            double want = 0;
            for (std::size_t c = 0; c < s.cols; ++c) want += w(r, c) * X[b * s.cols + c];
            ASSERT_NEAR(Y[b * s.rows + r], want, 1e-5 * mag[b * s.rows + r] + 1e-30) << label(s, cb, sf);
          }
      }
}

// The fast reference against an independent int8 emulation written from the
// documented rules: per 32-element block inside a group, q = round(x·127/amax)
// (ties away from zero), y = Σ s·d·Σ(w8 − off)·q with w8 the int8 codebook values.
TEST(ScalarReference, FastMatchesDocumentedInt8Rules) {
  for (const Shape& s : kShapes)
    for (Codebook cb : kCodebooks) {
      const QuantizedMatrix q = random_matrix(s.rows, s.cols, s.gs, cb, ScaleFormat::f32, 3);
      const PackedMatrix W(q);
      const auto x = random_activations(s.cols, 8);
      const auto Y = run(Isa::scalar, W, x, 1, ActivationMode::fast);
      // int8 weights: NF4/FP4 values scaled by 127 (scale · 1/127), iq4_nl values as they
      // are (integers), int4/uint4 the code with the offset subtracted below.
      const bool table = cb == Codebook::nf4 || cb == Codebook::fp4;
      const auto& values = nibble::codebook_values(cb);
      for (std::size_t r = 0; r < s.rows; ++r) {
        double want = 0;
        for (std::size_t g = 0; g * s.gs < s.cols; ++g) {
          const std::size_t end = std::min(s.cols, (g + 1) * s.gs);
          const double scale = q.scale(r, g) * (table ? 1.0 / 127 : 1.0);
          for (std::size_t c0 = g * s.gs; c0 < end; c0 += 32) {
            const std::size_t c1 = std::min(end, c0 + 32);
            float amax = 0;
            for (std::size_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[c]));
            if (amax == 0) continue;
            double block = 0;
            for (std::size_t c = c0; c < c1; ++c) {
              const double qx = std::round(static_cast<double>(x[c] * (127.0f / amax)));
              const std::uint8_t u = q.code(r, c);
              const double w8 = table ? std::round(127.0 * values[u])
                                      : cb == Codebook::iq4_nl ? static_cast<double>(values[u]) : static_cast<double>(u);
              const double off = cb == Codebook::int4_sym ? 8 : (cb == Codebook::uint4_asym ? q.zero(r, g) : 0);
              block += (w8 - off) * qx;
            }
            want += scale * (amax / 127.0) * block;
          }
        }
        double mag = 0;
        for (std::size_t c = 0; c < s.cols; ++c) mag += std::fabs(q.value(r, c) * x[c]);
        ASSERT_NEAR(Y[r], want, 1e-5 * mag + 1e-30) << label(s, cb, ScaleFormat::f32) << " row " << r;
      }
    }
}

TEST(SimdPaths, ExactCloseToScalarAndFastBitExact) {
  const auto isas = simd_isas();
  if (isas.empty()) GTEST_SKIP() << "no SIMD path on this CPU/build; the scalar path is covered elsewhere";
  for (Isa isa : isas)
    for (const Shape& s : kShapes)
      for (Codebook cb : kCodebooks)
        for (ScaleFormat sf : kScaleFormats)
          for (ZeroKind zk : {ZeroKind::uint4, ZeroKind::f32}) {
            if (zk != ZeroKind::uint4 && cb != Codebook::uint4_asym) continue;
            const QuantizedMatrix q = random_matrix(s.rows, s.cols, s.gs, cb, sf, 21, zk);
            const PackedMatrix W(q, nibble::preferred_code_layout(isa));  // the layout its kernels read
            for (std::size_t batch : {std::size_t{1}, std::size_t{3}, std::size_t{6}}) {
              const auto X = random_activations(batch * s.cols, 9);
              const auto mag = magnitudes(q, X.data(), batch);
              const auto ref = run(Isa::scalar, W, X, batch, ActivationMode::exact);
              const auto got = run(isa, W, X, batch, ActivationMode::exact);
              for (std::size_t i = 0; i < ref.size(); ++i)
                ASSERT_NEAR(got[i], ref[i], 2e-6 * mag[i] + 1e-30)
                    << nibble::to_string(isa) << " exact " << label(s, cb, sf) << " batch " << batch << " i " << i;
              const auto fref = run(Isa::scalar, W, X, batch, ActivationMode::fast);
              const auto fgot = run(isa, W, X, batch, ActivationMode::fast);
              for (std::size_t i = 0; i < fref.size(); ++i)
                ASSERT_EQ(std::memcmp(&fgot[i], &fref[i], sizeof(float)), 0)
                    << nibble::to_string(isa) << " fast " << label(s, cb, sf) << " batch " << batch << " i " << i
                    << ": " << fgot[i] << " vs " << fref[i];
            }
          }
}

// The AVX-512 VNNI row-panel kernels at the batch steps the test above does not reach
// (4 rows at a time, and 4 plus a remainder at prompt sizes), with panels cut short by
// the matrix and by the threads' row ranges (2 threads): every shape, codebook, scale
// and zero format, bit for bit equal to the scalar reference.
TEST(SimdPaths, PanelBatchesBitExact) {
  // Only AVX-512 VNNI has panel kernels; other paths run a row_panels matrix on the
  // scalar kernels (Layouts.EveryPathGivesTheSameBitsOnEitherLayout). Under bochs each
  // extra path here would cost half a minute.
  if (!nibble::isa_available(Isa::avx512) || !nibble::cpu_features().avx512vnni)
    GTEST_SKIP() << "no AVX-512 VNNI on this CPU/build: no panel kernels to test";
  // 40 × 1100 at batch 4 is worth two threads (thread_count), split after panel 1: the
  // second thread's range starts at row 16 and ends with a panel of 8 rows.
  std::vector<Shape> shapes(std::begin(kShapes), std::end(kShapes));
  shapes.push_back({40, 1100, 32});
  shapes.push_back({40, 1100, 128});
  for (const Shape& s : shapes)
    for (Codebook cb : kCodebooks)
      for (ScaleFormat sf : kScaleFormats)
        for (ZeroKind zk : {ZeroKind::uint4, ZeroKind::f32, ZeroKind::f16}) {
          if (zk != ZeroKind::uint4 && cb != Codebook::uint4_asym) continue;
          const QuantizedMatrix q = random_matrix(s.rows, s.cols, s.gs, cb, sf, 23, zk);
          const PackedMatrix W(q, CodeLayout::row_panels);
          for (std::size_t batch : {std::size_t{4}, std::size_t{21}}) {
            const auto X = random_activations(batch * s.cols, 10);
            const auto ref = run(Isa::scalar, W, X, batch, ActivationMode::fast);
            for (int threads : {1, 2}) {
              const auto got = run(Isa::avx512, W, X, batch, ActivationMode::fast, threads);
              for (std::size_t i = 0; i < ref.size(); ++i)
                ASSERT_EQ(std::memcmp(&got[i], &ref[i], sizeof(float)), 0)
                    << label(s, cb, sf) << " batch " << batch << " threads " << threads << " i " << i << ": "
                    << got[i] << " vs " << ref[i];
            }
          }
        }
}

// The table codebooks' two lookups in the panel kernels: vpermb where the CPU has
// AVX512_VBMI (which the dispatcher picks, so the tests above run it on such a CPU),
// vpshufb where it has not (VNNI without VBMI, as on Cascade Lake). Both are called
// directly here, so each is compared with the scalar reference on any VNNI machine.
TEST(SimdPaths, PanelTableLookupsWithAndWithoutVbmiBitExact) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
  if (!nibble::isa_available(Isa::avx512) || !nibble::cpu_features().avx512vnni)
    GTEST_SKIP() << "no AVX-512 VNNI on this CPU/build: no panel kernels to test";
  std::vector<bool> vbmi_modes = {false};
  if (nibble::cpu_features().avx512vbmi) vbmi_modes.push_back(true);
  std::vector<Shape> shapes(std::begin(kShapes), std::end(kShapes));
  shapes.push_back({40, 1100, 32});
  for (const Shape& s : shapes)
    for (Codebook cb : {Codebook::nf4, Codebook::fp4, Codebook::iq4_nl})
      for (ScaleFormat sf : {ScaleFormat::f16, ScaleFormat::dq8}) {
        const QuantizedMatrix q = random_matrix(s.rows, s.cols, s.gs, cb, sf, 31, ZeroKind::uint4);
        const PackedMatrix W(q, CodeLayout::row_panels);
        ASSERT_TRUE(W.table_codebook());
        for (std::size_t batch : {std::size_t{1}, std::size_t{5}, std::size_t{21}}) {
          const auto X = random_activations(batch * s.cols, 13);
          const auto ref = run(Isa::scalar, W, X, batch, ActivationMode::fast);
          nibble::detail::PreparedActivations p;
          nibble::detail::prepare_fast(W, X.data(), batch, p, nibble::detail::full_block_quantizer(Isa::avx512));
          for (bool vbmi : vbmi_modes) {
            std::vector<float> Y(ref.size(), -1.0f);
            nibble::detail::avx512::panel_gemm(W, p, Y.data(), 0, W.rows(), vbmi);
            for (std::size_t i = 0; i < ref.size(); ++i)
              ASSERT_EQ(std::memcmp(&Y[i], &ref[i], sizeof(float)), 0)
                  << label(s, cb, sf) << " batch " << batch << " vbmi " << vbmi << " i " << i << ": " << Y[i]
                  << " vs " << ref[i];
          }
        }
      }
#else
  GTEST_SKIP() << "x86-64 only";
#endif
}

// A matrix packed for one path stays correct on every other: each path on each layout
// (its own kernels, or the scalar ones where it has none for that layout) gives the
// scalar reference's bits on row_tiles in fast mode, and its exact result within rounding.
TEST(Layouts, EveryPathGivesTheSameBitsOnEitherLayout) {
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  const Shape shapes[] = {{21, 96, 96}, {9, 224, 32}, {11, 257, 32}, {13, 67, 2}, {40, 208, 16}};
  for (const Shape& s : shapes)
    for (Codebook cb : {Codebook::int4_sym, Codebook::uint4_asym, Codebook::nf4}) {
      const QuantizedMatrix q = random_matrix(s.rows, s.cols, s.gs, cb, ScaleFormat::f16, 29, ZeroKind::f32);
      const PackedMatrix tiles(q, CodeLayout::row_tiles), panels(q, CodeLayout::row_panels);
      const std::size_t batch = 5;
      const auto X = random_activations(batch * s.cols, 12);
      const auto ref = run(Isa::scalar, tiles, X, batch, ActivationMode::fast);
      const auto ref_exact = run(Isa::scalar, tiles, X, batch, ActivationMode::exact);
      const auto mag = magnitudes(q, X.data(), batch);
      for (Isa isa : isas)
        for (const PackedMatrix* W : {&tiles, &panels}) {
          const auto got = run(isa, *W, X, batch, ActivationMode::fast, 2);
          const auto got_exact = run(isa, *W, X, batch, ActivationMode::exact, 2);
          for (std::size_t i = 0; i < ref.size(); ++i) {
            ASSERT_EQ(std::memcmp(&got[i], &ref[i], sizeof(float)), 0)
                << nibble::to_string(isa) << " " << layout_name(W->code_layout()) << " " << label(s, cb, ScaleFormat::f16)
                << " i " << i;
            ASSERT_NEAR(got_exact[i], ref_exact[i], 2e-6 * mag[i] + 1e-30)
                << nibble::to_string(isa) << " exact " << layout_name(W->code_layout()) << " i " << i;
          }
        }
    }
}

TEST(SimdPaths, BatchesUpTo64AndUnalignedPointers) {
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  const QuantizedMatrix q = random_matrix(19, 100, 20, Codebook::nf4, ScaleFormat::f16, 4);
  for (CodeLayout layout : kLayouts)
  for (std::size_t batch : {1, 2, 5, 8, 31, 64}) {
    const PackedMatrix W(q, layout);
    // Offset both buffers by one float so neither is 32-byte aligned.
    std::vector<float> xbuf(batch * q.cols() + 1), ybuf(batch * q.rows() + 1, 0.0f);
    const auto X = random_activations(batch * q.cols(), static_cast<std::uint32_t>(batch));
    std::copy(X.begin(), X.end(), xbuf.begin() + 1);
    const auto ref_exact = run(Isa::scalar, W, X, batch, ActivationMode::exact);
    const auto ref_fast = run(Isa::scalar, W, X, batch, ActivationMode::fast);
    const auto mag = magnitudes(q, X.data(), batch);
    for (Isa isa : isas)
      for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
        IsaGuard guard;
        nibble::force_isa(isa);
        nibble::gemm(W, xbuf.data() + 1, batch, ybuf.data() + 1, GemvOptions{mode, 2});
        for (std::size_t i = 0; i < ref_exact.size(); ++i) {
          if (mode == ActivationMode::fast) ASSERT_EQ(ybuf[i + 1], ref_fast[i]) << nibble::to_string(isa);
          else ASSERT_NEAR(ybuf[i + 1], ref_exact[i], 2e-6 * mag[i]) << nibble::to_string(isa);
        }
        // Each batch row of a gemm equals a gemv of that row.
        std::vector<float> y1(q.rows());
        const std::size_t b = batch - 1;
        nibble::gemv(W, xbuf.data() + 1 + b * q.cols(), y1.data(), GemvOptions{mode, 1});
        for (std::size_t r = 0; r < q.rows(); ++r) ASSERT_EQ(y1[r], ybuf[1 + b * q.rows() + r]);
      }
  }
}

// Largest integer sums the SIMD paths can meet: every code at the extreme and every
// activation at ±127 after quantization. 16-bit intermediate sums must not overflow.
TEST(SimdPaths, ExtremeCodesAndActivationsDoNotOverflow) {
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  for (Codebook cb : kCodebooks)
    for (std::uint8_t code : {std::uint8_t{0}, std::uint8_t{15}})
      for (float sign : {1.0f, -1.0f}) {
        const std::size_t rows = 16, cols = 256;
        std::vector<std::uint8_t> codes(rows * cols / 2, static_cast<std::uint8_t>(code * 17));
        const std::size_t groups = rows * 2;
        auto scales = nibble::ScaleArray::encode(std::vector<float>(groups, 1.0f), ScaleFormat::f32);
        nibble::ZeroPoints zeros;
        if (cb == Codebook::uint4_asym) zeros = nibble::ZeroPoints::uint4(std::vector<std::uint8_t>(groups, 0));
        const QuantizedMatrix q(rows, cols, 128, cb, codes, scales, zeros);
        for (CodeLayout layout : kLayouts) {
        const PackedMatrix W(q, layout);
        const std::vector<float> x(cols, sign);
        const auto ref = run(Isa::scalar, W, x, 1, ActivationMode::fast);
        // Independent value: every block has q = ±127 and d = 1/127, so y = Σ_c w8(code)·sign·k.
        const bool table = cb == Codebook::nf4 || cb == Codebook::fp4;
        const double w8 = table || cb == Codebook::iq4_nl ? std::round((table ? 127.0 : 1.0) * nibble::codebook_values(cb)[code])
                                                           : code;
        const double off = cb == Codebook::int4_sym ? 8 : 0;
        const double want = cols * (w8 - off) * sign * (table ? 1.0 / 127 : 1.0);
        for (Isa isa : isas) {
          const auto got = run(isa, W, x, 1, ActivationMode::fast);
          for (std::size_t r = 0; r < rows; ++r) {
            ASSERT_EQ(got[r], ref[r]) << nibble::to_string(isa) << " " << nibble::to_string(cb);
            ASSERT_NEAR(got[r], want, 1e-4 * std::fabs(want) + 1e-6) << nibble::to_string(isa) << " " << nibble::to_string(cb);
          }
        }
        }
      }
}

TEST(Threads, AnyThreadCountGivesIdenticalResults) {
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  // Large enough that every thread count below really splits the rows (small products
  // stay on one thread: detail::kMinWorkPerThread).
  const QuantizedMatrix q = random_matrix(45, 1600, 32, Codebook::uint4_asym, ScaleFormat::bf16, 2);
  const auto X = random_activations(4 * q.cols(), 3);
  EXPECT_EQ(nibble::detail::thread_count(45, 1600, 4, 7), 4u);
  EXPECT_EQ(nibble::detail::thread_count(45, 1600, 4, 7, nibble::kPanelRows), 3u);  // 16-row panels
  EXPECT_EQ(nibble::detail::thread_count(64, 64, 1, 2), 1u);
  for (CodeLayout layout : kLayouts)
  for (Isa isa : isas)
    for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
      const PackedMatrix W(q, layout);
      const auto y1 = run(isa, W, X, 4, mode, 1);
      for (int t : {2, 3, 7, 64}) EXPECT_EQ(run(isa, W, X, 4, mode, t), y1) << nibble::to_string(isa) << " t=" << t;
    }
}

TEST(Threads, ConcurrentCallsOnOneMatrix) {
  const QuantizedMatrix q = random_matrix(64, 256, 64, Codebook::int4_sym, ScaleFormat::dq8, 5);
  const PackedMatrix W(q);
  const auto x = random_activations(q.cols(), 1);
  std::vector<float> want(q.rows());
  nibble::gemv(W, x.data(), want.data(), GemvOptions{ActivationMode::fast, 1});
  std::vector<std::vector<float>> got(4, std::vector<float>(q.rows()));
  std::vector<std::thread> callers;
  for (int i = 0; i < 4; ++i)
    callers.emplace_back([&, i] {
      for (int rep = 0; rep < 20; ++rep) nibble::gemv(W, x.data(), got[i].data(), GemvOptions{ActivationMode::fast, 2});
    });
  for (auto& t : callers) t.join();
  for (const auto& y : got) EXPECT_EQ(y, want);
}

TEST(FastMode, ErrorVersusExactIsSmall) {
  // Relative L2 error of fast vs exact on gaussian data: int8 activations per
  // 32-block give ~0.5% on int4; nf4/fp4 also round their table to int8.
  for (Codebook cb : kCodebooks) {
    const QuantizedMatrix q = random_matrix(64, 512, 128, cb, ScaleFormat::f32, 6);
    const PackedMatrix W(q);
    const auto x = random_activations(q.cols(), 2);
    const auto e = run(nibble::detected_isa(), W, x, 1, ActivationMode::exact);
    const auto f = run(nibble::detected_isa(), W, x, 1, ActivationMode::fast);
    double num = 0, den = 0;
    for (std::size_t i = 0; i < e.size(); ++i) {
      num += (f[i] - e[i]) * double(f[i] - e[i]);
      den += double(e[i]) * e[i];
    }
    EXPECT_LT(std::sqrt(num / den), 0.02) << nibble::to_string(cb);
  }
}

TEST(Dispatch, ForceAndEnvironment) {
  IsaGuard guard;
  EXPECT_TRUE(nibble::isa_available(Isa::scalar));
  EXPECT_TRUE(nibble::isa_available(nibble::detected_isa()));
#if defined(__aarch64__)
  EXPECT_THROW(nibble::force_isa(Isa::avx512), nibble::Error);
  EXPECT_EQ(nibble::detected_isa(), Isa::neon);
  EXPECT_THROW(nibble::force_isa(Isa::avx2), nibble::Error);
#else
  EXPECT_THROW(nibble::force_isa(Isa::neon), nibble::Error);
#endif
  nibble::force_isa(Isa::scalar);
  EXPECT_EQ(nibble::selected_isa(), Isa::scalar);
  nibble::clear_forced_isa();
  ASSERT_EQ(setenv("NIBBLE_ISA", "scalar", 1), 0);
  EXPECT_EQ(nibble::selected_isa(), Isa::scalar);
  ASSERT_EQ(setenv("NIBBLE_ISA", "avx512", 1), 0);
  if (nibble::isa_available(Isa::avx512)) EXPECT_EQ(nibble::selected_isa(), Isa::avx512);
  else EXPECT_THROW(nibble::selected_isa(), nibble::Error);
  ASSERT_EQ(setenv("NIBBLE_ISA", "sse9", 1), 0);
  EXPECT_THROW(nibble::selected_isa(), nibble::Error);
  // force_isa wins over the environment.
  nibble::force_isa(Isa::scalar);
  EXPECT_EQ(nibble::selected_isa(), Isa::scalar);
  nibble::clear_forced_isa();
  ASSERT_EQ(unsetenv("NIBBLE_ISA"), 0);
  EXPECT_EQ(nibble::selected_isa(), nibble::detected_isa());
  EXPECT_EQ(nibble::isa_from_string("neon"), Isa::neon);
  EXPECT_THROW(nibble::isa_from_string("AVX2"), nibble::Error);
}

// The CPUID reading against the kernel's own view of the CPU (/proc/cpuinfo on Linux).
TEST(Dispatch, DetectionAgreesWithProcCpuinfo) {
  // Set by the presets that run tests under qemu (compile time), and by scripts/test.sh
  // when it runs the dev build's binaries under qemu-x86_64 -cpu Nehalem (environment).
  const char* emulated = std::getenv("NIBBLE_TEST_USER_MODE_EMULATOR");
#if defined(NIBBLE_TEST_USER_MODE_EMULATOR)
  emulated = "1";
#endif
  if (emulated != nullptr && *emulated != '\0')
    GTEST_SKIP() << "under a user-mode emulator /proc/cpuinfo describes the host, not the emulated CPU";
#if defined(__x86_64__) && defined(__linux__)
  std::ifstream in("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0) {
      flags = line.substr(line.find(':') + 1) + " ";
      break;
    }
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags";
  const auto has = [&](const char* f) { return flags.find(" " + std::string(f) + " ") != std::string::npos; };
  const nibble::CpuFeatures& f = nibble::cpu_features();
  EXPECT_EQ(f.avx2, has("avx2"));
  EXPECT_EQ(f.avx512f, has("avx512f"));
  EXPECT_EQ(f.avx512bw, has("avx512bw"));
  EXPECT_EQ(f.avx512vl, has("avx512vl"));
  EXPECT_EQ(f.avx512vnni, has("avx512_vnni"));
  EXPECT_EQ(f.avx512vbmi, has("avx512vbmi"));
  EXPECT_EQ(nibble::isa_available(Isa::avx512), has("avx2") && has("fma") && has("f16c") && has("avx512f") &&
                                                    has("avx512bw") && has("avx512vl"));
#else
  GTEST_SKIP() << "x86-64 Linux only";
#endif
}

// Runs where a CI job must not silently skip a path (the AVX-512 runs under bochs):
// NIBBLE_TEST_REQUIRE="avx512" or "avx512,vnni" or "avx512,novnni"; "scalar" for the
// run under qemu-x86_64 -cpu Nehalem, which must take the scalar fallback.
TEST(Dispatch, RequiredPathsArePresent) {
  const char* req = std::getenv("NIBBLE_TEST_REQUIRE");
  if (req == nullptr || *req == '\0') GTEST_SKIP() << "NIBBLE_TEST_REQUIRE not set";
  const std::string r = std::string(",") + req + ",";
  if (r.find(",scalar,") != std::string::npos) {
    EXPECT_EQ(nibble::detected_isa(), Isa::scalar);
    EXPECT_FALSE(nibble::isa_available(Isa::avx2));
  }
  if (r.find(",avx512,") != std::string::npos) {
    EXPECT_TRUE(nibble::isa_available(Isa::avx512)) << nibble::isa_unavailable_reason(Isa::avx512);
    EXPECT_EQ(nibble::detected_isa(), Isa::avx512);
  }
  if (r.find(",vnni,") != std::string::npos) {
    EXPECT_TRUE(nibble::cpu_features().avx512vnni);
  }
  if (r.find(",novnni,") != std::string::npos) {
    EXPECT_FALSE(nibble::cpu_features().avx512vnni);
  }
}

TEST(BadInput, ShapesThreadsAndNonFinite) {
  const PackedMatrix W(random_matrix(4, 10, 10, Codebook::int4_sym, ScaleFormat::f32, 1));
  Eigen::VectorXf x = Eigen::VectorXf::Ones(10), y(4);
  EXPECT_NO_THROW(nibble::gemv(W, x, y));
  Eigen::VectorXf wrong_x = Eigen::VectorXf::Ones(9), wrong_y(5);
  EXPECT_THROW(nibble::gemv(W, wrong_x, y), nibble::Error);
  EXPECT_THROW(nibble::gemv(W, x, wrong_y), nibble::Error);
  EXPECT_THROW(nibble::gemv(W, x, y, GemvOptions{ActivationMode::exact, 0}), nibble::Error);
  EXPECT_THROW(nibble::gemv(W, x, y, GemvOptions{ActivationMode::exact, -3}), nibble::Error);
  EXPECT_THROW(nibble::gemv(W, x, y, GemvOptions{static_cast<ActivationMode>(7), 1}), nibble::Error);
  EXPECT_THROW(nibble::gemm(W, x.data(), 0, y.data()), nibble::Error);
  EXPECT_THROW(nibble::gemm(W, nullptr, 1, y.data()), nibble::Error);
  for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
    x[3] = std::nanf("");
    EXPECT_THROW(nibble::gemv(W, x, y, GemvOptions{mode, 1}), nibble::Error);
    x[3] = INFINITY;
    try {
      nibble::gemv(W, x, y, GemvOptions{mode, 1});
      ADD_FAILURE() << "expected an error";
    } catch (const nibble::Error& e) {
      EXPECT_NE(std::string(e.what()).find("column 3"), std::string::npos) << e.what();
    }
    x[3] = 1.0f;
  }
  // Zero activations: fast mode's all-zero blocks give exact zeros, no NaN.
  x.setZero();
  nibble::gemv(W, x, y, GemvOptions{ActivationMode::fast, 1});
  EXPECT_TRUE((y.array() == 0.0f).all());
}

// Fast mode's activation preparation: the AVX2 whole-block quantizer gives the scalar
// rule's codes, scales and sums exactly (ties at .5, all-zero and tiny blocks, ragged
// groups that leave short blocks), and a non-finite value is still named by column.
TEST(FastActivations, SimdBlockQuantizerEqualsTheScalarRule) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
  if (!nibble::isa_available(Isa::avx2)) GTEST_SKIP() << "no AVX2";
  const PackedMatrix W(random_matrix(1, 200, 48, Codebook::int4_sym, ScaleFormat::f32, 3));  // blocks 32+16 per group
  const std::size_t batch = 6;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> X(batch * W.cols());
  for (float& v : X) v = normal(rng);
  for (std::size_t c = 0; c < 48; ++c) X[c] = 0.0f;                        // row 0: an all-zero group
  for (std::size_t c = 48; c < 96; ++c) X[c] = 1e-38f * (c % 2 ? 1 : -1);  // tiny amax: the rule divides
  for (std::size_t c = 0; c < 32; ++c) X[W.cols() + c] = static_cast<float>(c) - 15.5f;  // row 1: many ties
  X[W.cols() + 7] = 127.0f;
  nibble::detail::PreparedActivations scalar, simd;
  nibble::detail::prepare_fast(W, X.data(), batch, scalar);
  nibble::detail::prepare_fast(W, X.data(), batch, simd, &nibble::detail::avx2::quantize_activation_block32);
  EXPECT_EQ(simd.q, scalar.q);
  EXPECT_EQ(simd.d, scalar.d);
  EXPECT_EQ(simd.qsum, scalar.qsum);
  EXPECT_EQ(simd.qsum_f, scalar.qsum_f);
  for (float bad : {std::nanf(""), INFINITY, -INFINITY})
    for (std::size_t c : {std::size_t{5}, std::size_t{40}, std::size_t{150}}) {
      std::vector<float> Xb = X;
      Xb[2 * W.cols() + c] = bad;
      try {
        nibble::detail::prepare_fast(W, Xb.data(), batch, simd, &nibble::detail::avx2::quantize_activation_block32);
        ADD_FAILURE() << "accepted " << bad;
      } catch (const nibble::Error& e) {
        EXPECT_NE(std::string(e.what()).find("batch row 2, column " + std::to_string(c)), std::string::npos) << e.what();
      }
    }
#else
  GTEST_SKIP() << "x86-64 only";
#endif
}

}  // namespace
