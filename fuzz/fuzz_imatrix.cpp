// libFuzzer harness: the importance-matrix reader (GGUF and legacy imatrix.dat) either
// parses or throws nibble::Error; a parsed file's values are finite and non-negative,
// and each entry's first 32-column block goes through the weighted Q4_0 and IQ4_NL
// fits, which again may only throw nibble::Error.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include <nibble/io/imatrix.hpp>
#include <nibble/quant/weighted_fit.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto m = nibble::io::imatrix_from_bytes(std::vector<std::uint8_t>(data, data + size));
    for (const auto& [name, e] : m.per_tensor) {
      if (e.values.size() != e.cols * e.matrices || e.counts.empty()) std::abort();
      for (float v : e.values)
        if (!std::isfinite(v) || v < 0.0f) std::abort();
      if (e.cols < 32) continue;
      // Weights derived from the importance itself, so the fit sees odd inputs too.
      nibble::RowMatrixXf W(1, 32);
      for (int j = 0; j < 32; ++j) W(0, j) = (j % 2 ? -1.0f : 1.0f) * std::sqrt(e.values[static_cast<std::size_t>(j)]);
      const std::vector<float> imp(e.values.begin(), e.values.begin() + 32);
      for (auto cb : {nibble::Codebook::int4_sym, nibble::Codebook::iq4_nl}) {
        try {
          nibble::quantize_weighted(W, cb, imp);
        } catch (const nibble::Error&) {
        }
      }
    }
  } catch (const nibble::Error&) {
  }
  return 0;
}
