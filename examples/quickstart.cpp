// quickstart: quantize one random 4096 × 4096 weight matrix with every 4-bit format
// nibble offers and print what each costs in bits and what it keeps of the signal.
//
//   ./quickstart            (add a size, e.g. ./quickstart 1024, for a quicker run)
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <nibble/nibble.hpp>

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 4096;
  if (n < 16) {
    std::fprintf(stderr, "usage: %s [size >= 16]\n", argv[0]);
    return 2;
  }

  // Gaussian weights, like a trained linear layer's (rows = out_features, cols = in_features).
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  Eigen::MatrixXf W(n, n);
  for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = normal(rng);

  struct Row {
    std::string name;
    nibble::QuantConfig config;
  };
  auto make = [](nibble::Codebook cb, int group, nibble::ScaleFormat sf) {
    nibble::QuantConfig c;
    c.codebook = cb;
    c.group_size = group;
    c.scale_format = sf;
    return c;
  };
  using nibble::Codebook;
  using nibble::ScaleFormat;
  std::vector<Row> rows = {
      {"int4 sym absmax/7, g128, f16", make(Codebook::int4_sym, 128, ScaleFormat::f16)},
      {"int4 sym full range, g32, f16", make(Codebook::int4_sym, 32, ScaleFormat::f16)},
      {"uint4 asym, g128, f16", make(Codebook::uint4_asym, 128, ScaleFormat::f16)},
      {"uint4 asym + clip search, g128", make(Codebook::uint4_asym, 128, ScaleFormat::f16)},
      {"nf4, g64, f32 (bitsandbytes)", make(Codebook::nf4, 64, ScaleFormat::f32)},
      {"nf4, g64, double-quantized", make(Codebook::nf4, 64, ScaleFormat::dq8)},
      {"fp4, g64, f32 (bitsandbytes)", make(Codebook::fp4, 64, ScaleFormat::f32)},
      {"nf4, per row, bf16", make(Codebook::nf4, nibble::kPerRow, ScaleFormat::bf16)},
  };
  rows[1].config.sym_scale = nibble::SymScale::full_range;
  rows[3].config.clip.enabled = true;

  std::printf("quantizing a %d x %d Gaussian matrix (fp32: %.1f MiB)\n\n", n, n, W.size() * 4.0 / (1 << 20));
  std::printf("| %-32s | %9s | %9s | %9s | %9s |\n", "format", "bits/w", "MiB", "SQNR dB", "max err");
  std::printf("|%s|%s|%s|%s|%s|\n", std::string(34, '-').c_str(), std::string(11, '-').c_str(),
              std::string(11, '-').c_str(), std::string(11, '-').c_str(), std::string(11, '-').c_str());
  for (const Row& row : rows) {
    const nibble::QuantizedMatrix q = nibble::quantize(W, row.config);
    const nibble::ErrorStats err = nibble::weight_error(W, q);
    std::printf("| %-32s | %9.3f | %9.2f | %9.2f | %9.5f |\n", row.name.c_str(), q.bits_per_weight(),
                q.storage_bytes() / double(1 << 20), err.sqnr_db, err.max_abs);
  }
  return 0;
}
