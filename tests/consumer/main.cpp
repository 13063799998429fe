#include <cstdio>

#include <nibble/nibble.hpp>

int main() {
  const Eigen::MatrixXf W = Eigen::MatrixXf::Random(64, 128);
  nibble::QuantConfig config;
  config.codebook = nibble::Codebook::nf4;
  config.group_size = 64;
  const nibble::QuantizedMatrix q = nibble::quantize(W, config);
  const double sqnr = nibble::weight_error(W, q).sqnr_db;
  std::printf("consumer: nibble %s, nf4 g64 SQNR %.1f dB, %.3f bits/weight\n", nibble::version_string(), sqnr,
              q.bits_per_weight());
  return sqnr > 15.0 ? 0 : 1;
}
