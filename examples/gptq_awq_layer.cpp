// gptq_awq_layer: one synthetic linear layer whose inputs have a few loud channels
// (as LLM activations do), quantized to 4 bits by every method nibble has. Prints the
// output SQNR on held-out tokens (higher is better) and the storage cost.
//
//   ./gptq_awq_layer            (in/out features default to 512; ./gptq_awq_layer 256 is quicker)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nibble/nibble.hpp>

using nibble::RowMatrixXf;

// Tokens × n activations: correlated channels, every 64th channel 25× louder.
static RowMatrixXf activations(int tokens, int n, const Eigen::MatrixXf& mix, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  RowMatrixXf Z(tokens, n);
  for (Eigen::Index i = 0; i < Z.size(); ++i) Z.data()[i] = normal(rng);
  RowMatrixXf X = Z * mix;
  for (int c = 0; c < n; c += 64) X.col(c) *= 25.0f;
  return X;
}

// 10·log10(‖X·Wᵀ‖² / ‖X·Wᵀ − X·Ŵᵀ‖²)
static double output_sqnr_db(const RowMatrixXf& W, const Eigen::MatrixXf& W_hat, const RowMatrixXf& X) {
  const Eigen::MatrixXf y = X * W.transpose();
  const Eigen::MatrixXf e = y - X * W_hat.transpose();
  return 10.0 * std::log10(y.squaredNorm() / e.squaredNorm());
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 512;
  if (n < 128 || n % 64 != 0) {
    std::fprintf(stderr, "usage: %s [features: a multiple of 64, >= 128]\n", argv[0]);
    return 2;
  }
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  RowMatrixXf W(n, n);  // out × in
  for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = 0.02f * normal(rng);
  Eigen::MatrixXf mix = Eigen::MatrixXf::Identity(n, n);
  for (Eigen::Index i = 0; i < mix.size(); ++i) mix.data()[i] += 0.05f * normal(rng);
  const RowMatrixXf X_calib = activations(2048, n, mix, rng);  // what the methods may look at
  const RowMatrixXf X_eval = activations(2048, n, mix, rng);   // held out: what we score on

  // GPTQ needs the input Hessian, accumulated from calibration batches.
  nibble::HessianAccumulator hessian(static_cast<std::size_t>(n));
  for (int t = 0; t < X_calib.rows(); t += 512) hessian.add(X_calib.middleRows(t, 512));
  const Eigen::MatrixXd H = hessian.hessian();

  auto cfg = [](nibble::Codebook cb, int group, nibble::ScaleFormat sf) {
    nibble::QuantConfig c;
    c.codebook = cb;
    c.group_size = group;
    c.scale_format = sf;
    return c;
  };
  using nibble::Codebook;
  using nibble::ScaleFormat;
  const nibble::QuantConfig asym128 = cfg(Codebook::uint4_asym, 128, ScaleFormat::f16);
  const nibble::QuantConfig nf4_64 = cfg(Codebook::nf4, 64, ScaleFormat::f32);

  struct Method {
    const char* name;
    std::function<std::pair<Eigen::MatrixXf, double>()> run;  // effective weight, bits/weight
  };
  auto plain = [](const nibble::QuantizedMatrix& q) { return std::make_pair(Eigen::MatrixXf(q.dequantize()), q.bits_per_weight()); };
  auto gptq = [&](nibble::QuantConfig q, bool act_order) {
    nibble::GptqConfig g;
    g.quant = q;
    g.act_order = act_order;
    g.threads = 2;
    return plain(nibble::gptq_quantize(W, H, g).matrix);
  };
  const std::vector<Method> methods = {
      {"RTN uint4 asym g128", [&] { return plain(nibble::quantize(W, asym128)); }},
      {"RTN + clip search", [&] {
         nibble::QuantConfig c = asym128;
         c.clip.enabled = true;
         return plain(nibble::quantize(W, c));
       }},
      {"NF4 g64 (bitsandbytes)", [&] { return plain(nibble::quantize(W, nf4_64)); }},
      {"HQQ uint4 g64", [&] {
         nibble::HqqConfig h;
         h.quant.scale_format = ScaleFormat::f16;
         h.zero_format = ScaleFormat::f16;
         return plain(nibble::hqq_quantize(W, h));
       }},
      {"GPTQ uint4 asym g128", [&] { return gptq(asym128, false); }},
      {"GPTQ + act-order", [&] { return gptq(asym128, true); }},
      {"GPTQ NF4 g64 + act-order", [&] { return gptq(nf4_64, true); }},
      {"AWQ uint4 asym g128", [&] {
         nibble::AwqConfig a;
         a.quant = asym128;
         const nibble::AwqResult r = nibble::awq_quantize({W}, X_calib, a);
         return std::make_pair(nibble::awq_dequantize(r.matrices[0], r.scales), r.matrices[0].bits_per_weight());
       }},
  };

  std::printf("%d x %d layer, 2048 calibration tokens, scored on 2048 held-out tokens\n\n", n, n);
  std::printf("%-26s %16s %12s %10s\n", "method", "output SQNR dB", "bits/weight", "time ms");
  for (const Method& m : methods) {
    const auto start = std::chrono::steady_clock::now();
    const auto [W_hat, bits] = m.run();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::printf("%-26s %16.2f %12.3f %10.1f\n", m.name, output_sqnr_db(W, W_hat, X_eval), bits, ms);
  }
  return 0;
}
