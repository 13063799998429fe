// gemv_modes: which kernel path runs here, and what the two activation modes cost
// in accuracy. Quantizes a random Gaussian layer with each codebook (RTN, g128),
// then compares y = W·x from the packed weights with the fp32 product:
//
//   exact  fp32 activations, weights decoded in registers: only the weight
//          quantization error remains;
//   fast   activations rounded to int8 per 32-element block: an extra error.
//
//   ./gemv_modes [size]        (default 2048)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>

#include <nibble/nibble.hpp>

namespace {

double relative_error(const Eigen::VectorXf& got, const Eigen::VectorXf& want) {
  return static_cast<double>((got - want).norm() / want.norm());
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 2048;
  if (n < 16) {
    std::fprintf(stderr, "usage: %s [size >= 16]\n", argv[0]);
    return 2;
  }
  const nibble::CpuFeatures& f = nibble::cpu_features();
  std::printf("CPU: avx2=%d fma=%d f16c=%d avx512f=%d avx512vnni=%d neon=%d dotprod=%d\n", f.avx2, f.fma, f.f16c,
              f.avx512f, f.avx512vnni, f.neon, f.neon_dotprod);
  std::printf("kernel path: detected %s, selected %s (override with NIBBLE_ISA=scalar|avx2|avx512|neon)\n\n",
              nibble::to_string(nibble::detected_isa()), nibble::to_string(nibble::selected_isa()));

  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Eigen::MatrixXf W(n, n);
  for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = 0.02f * normal(rng);
  // Activations with a few large channels, as real hidden states have.
  Eigen::VectorXf x(n);
  for (Eigen::Index i = 0; i < n; ++i) x[i] = normal(rng) * (i % 97 == 0 ? 20.0f : 1.0f);
  const Eigen::VectorXf y_fp32 = W * x;

  std::printf("%-11s %12s %12s %12s\n", "codebook", "exact vs fp32", "fast vs fp32", "fast vs exact");
  for (nibble::Codebook cb : {nibble::Codebook::int4_sym, nibble::Codebook::uint4_asym, nibble::Codebook::nf4,
                              nibble::Codebook::fp4}) {
    nibble::QuantConfig config;
    config.codebook = cb;
    config.group_size = 128;
    config.scale_format = nibble::ScaleFormat::f16;
    const nibble::PackedMatrix packed(nibble::quantize(W, config));
    Eigen::VectorXf y_exact(n), y_fast(n);
    nibble::gemv(packed, x, y_exact, {nibble::ActivationMode::exact, 2});
    nibble::gemv(packed, x, y_fast, {nibble::ActivationMode::fast, 2});
    std::printf("%-11s %12.4f%% %11.4f%% %12.4f%%\n", nibble::to_string(cb), 100 * relative_error(y_exact, y_fp32),
                100 * relative_error(y_fast, y_fp32), 100 * relative_error(y_fast, y_exact));
  }
  std::printf("\n(relative L2 error of y; fast mode rounds x to int8 per 32-element block, and nf4/fp4\n"
              " table values to round(127·v), on top of the 4-bit weights)\n");
  return 0;
}
