// Prints what nibble reads from a llama-imatrix file, for tests/llama_cpp/check_imatrix.sh
// (which compares it with the file read independently in Python):
//
//   imatrix_dump IMATRIX                 header line, then one line per entry:
//       format <gguf|dat> chunks <n> chunk_size <n> datasets <d1|d2|...>
//       <name> <cols> <matrices> <count,count,...> <v0> <v1> ...   (values %.9g)
//
//   imatrix_dump IMATRIX --fit MODEL.gguf [MAX_TENSORS]
//       for the model's 2-D weights that have an entry (the first MAX_TENSORS, default
//       all, in name order): the importance-weighted squared error Σ imp·(w − ŵ)² of
//       Q4_0 and IQ4_NL fits, summed over those tensors, as a ratio to llama.cpp's plain
//       rounding (io::quantize_q4_0 / quantize_iq4_nl): llama.cpp's imatrix fit
//       (tests/llama_imatrix_fit_ref.hpp) and nibble's (quant/weighted_fit.hpp).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <nibble/io/gguf.hpp>
#include <nibble/io/imatrix.hpp>
#include <nibble/quant/weighted_fit.hpp>

#include "../llama_imatrix_fit_ref.hpp"

using namespace nibble;

namespace {

double matrix_error(const RowMatrixXf& W, const std::vector<float>& imp, const QuantizedMatrix& q) {
  double e = 0.0;
  std::uint8_t codes[32];
  for (std::size_t r = 0; r < q.rows(); ++r)
    for (std::size_t b = 0; b < q.cols() / 32; ++b) {
      for (std::size_t j = 0; j < 32; ++j) codes[j] = q.code(r, b * 32 + j);
      e += weighted_block_error(W.row(static_cast<Eigen::Index>(r)).data() + b * 32, imp.data() + b * 32, 32,
                                q.codebook(), q.scale(r, b), codes);
    }
  return e;
}

int fit(const io::ImportanceMatrix& m, const std::string& model, std::size_t max_tensors) {
  const auto reader = io::GgufReader::open(model);
  // [codebook][plain, llama.cpp imatrix, nibble]
  double tot[2][3] = {};
  std::size_t done = 0;
  for (const auto& t : reader.tensors()) {
    if (done >= max_tensors) break;
    if (t.ne.size() != 2 || t.ne[0] % 32 != 0 || !m.contains(t.name)) continue;
    const RowMatrixXf W = reader.load_float(t.name);
    const std::vector<float>& imp = m.for_weight(t.name, static_cast<std::size_t>(W.cols()));
    const std::size_t rows = static_cast<std::size_t>(W.rows()), cols = static_cast<std::size_t>(W.cols());
    for (int k = 0; k < 2; ++k) {
      const Codebook cb = k == 0 ? Codebook::int4_sym : Codebook::iq4_nl;
      const double plain = matrix_error(W, imp, k == 0 ? io::quantize_q4_0(W) : io::quantize_iq4_nl(W));
      const double ours = matrix_error(W, imp, quantize_weighted(W, cb, imp));
      double llama = 0.0;
      std::vector<std::uint16_t> d(cols / 32);
      std::vector<std::uint8_t> codes(cols);
      for (std::size_t r = 0; r < rows; ++r) {
        const float* x = W.row(static_cast<Eigen::Index>(r)).data();
        if (k == 0)
          test::llama_imatrix_q4_0_row(x, imp.data(), cols, d.data(), codes.data());
        else
          for (std::size_t b = 0; b < cols / 32; ++b)
            test::llama_imatrix_iq4_nl_block(x + 32 * b, imp.data() + 32 * b, &d[b], codes.data() + 32 * b);
        for (std::size_t b = 0; b < cols / 32; ++b)
          llama += weighted_block_error(x + 32 * b, imp.data() + 32 * b, 32, cb, half_to_float(d[b]),
                                        codes.data() + 32 * b);
      }
      tot[k][0] += plain;
      tot[k][1] += llama;
      tot[k][2] += ours;
      std::printf("%-28s %-6s llama.cpp-imatrix/plain %.4f  nibble/plain %.4f\n", t.name.c_str(),
                  k == 0 ? "Q4_0" : "IQ4_NL", llama / plain, ours / plain);
    }
    ++done;
  }
  for (int k = 0; k < 2; ++k)
    std::printf("TOTAL %s over %zu tensors: weighted error vs plain rounding: llama.cpp imatrix fit %.4f, nibble %.4f\n",
                k == 0 ? "Q4_0" : "IQ4_NL", done, tot[k][1] / tot[k][0], tot[k][2] / tot[k][0]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 && !(argc >= 4 && argc <= 5 && std::strcmp(argv[2], "--fit") == 0)) {
    std::fprintf(stderr, "usage: %s IMATRIX [--fit MODEL.gguf [MAX_TENSORS]]\n", argv[0]);
    return 2;
  }
  try {
    const io::ImportanceMatrix m = io::load_imatrix(argv[1]);
    if (argc >= 4) return fit(m, argv[3], argc == 5 ? std::strtoul(argv[4], nullptr, 10) : SIZE_MAX);
    std::printf("format %s chunks %u chunk_size %u datasets ", m.format == io::ImatrixFormat::gguf ? "gguf" : "dat",
                m.chunks, m.chunk_size);
    for (std::size_t i = 0; i < m.datasets.size(); ++i) std::printf("%s%s", i ? "|" : "", m.datasets[i].c_str());
    std::printf("\n");
    for (const auto& [name, e] : m.per_tensor) {
      std::printf("%s %zu %zu ", name.c_str(), e.cols, e.matrices);
      for (std::size_t i = 0; i < e.counts.size(); ++i)
        std::printf("%s%lld", i ? "," : "", static_cast<long long>(e.counts[i]));
      for (float v : e.values) std::printf(" %.9g", v);
      std::printf("\n");
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
