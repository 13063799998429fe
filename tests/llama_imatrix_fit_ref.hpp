// llama.cpp's importance-weighted Q4_0 and IQ4_NL fits, re-implemented from the
// description of ggml-quants.c (quantize_row_q4_0_impl → make_qx_quants with nmax 8,
// rmse_type 1; quantize_row_iq4_nl_impl with one 32-block per super-block, ntry 7), as
// the competitor quant/weighted_fit.hpp is measured against (imatrix_test,
// tests/llama_cpp/imatrix_dump --fit).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include <nibble/core/half.hpp>
#include <nibble/format/codebook.hpp>

namespace nibble::test {

// llama.cpp's imatrix fits, re-implemented from ggml-quants.c's description for
// comparison: Q4_0 (quantize_row_q4_0_impl → make_qx_quants(nmax 8, rmse_type 1)) and
// IQ4_NL (quantize_row_iq4_nl_impl, one block per super-block, ntry 7). Both weight
// element j by imp_j·sqrt(σ² + x_j²): σ² = mean x² of the row (Q4_0) or 2·mean x² of
// the block (IQ4_NL). Codes come from the fp32 scale; the stored d is its fp16 rounding.
inline int nearest_int(float f) { return static_cast<int>(std::nearbyint(f)); }

inline void llama_imatrix_q4_0_row(const float* x, const float* imp, std::size_t n, std::uint16_t* d_out,
                            std::uint8_t* codes) {
  float sum_x2 = 0;
  for (std::size_t j = 0; j < n; ++j) sum_x2 += x[j] * x[j];
  const float sigma2 = sum_x2 / static_cast<float>(n);
  for (std::size_t b = 0; b < n / 32; ++b) {
    const float* xb = x + 32 * b;
    float w[32];
    for (int j = 0; j < 32; ++j) w[j] = imp[32 * b + j] * std::sqrt(sigma2 + xb[j] * xb[j]);
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j)
      if (std::fabs(xb[j]) > amax) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    std::uint8_t* L = codes + 32 * b;
    if (amax < 1e-15f) {
      std::fill(L, L + 32, 0);
      d_out[b] = float_to_half(0.0f);
      continue;
    }
    auto pass = [&](float iscale, float& sumlx, float& suml2, bool store) {
      sumlx = suml2 = 0;
      for (int j = 0; j < 32; ++j) {
        const int l = std::max(-8, std::min(7, nearest_int(iscale * xb[j])));
        if (store) L[j] = static_cast<std::uint8_t>(l + 8);
        sumlx += w[j] * xb[j] * static_cast<float>(l);
        suml2 += w[j] * static_cast<float>(l * l);
      }
    };
    float sumlx, suml2;
    pass(-8.0f / max, sumlx, suml2, true);
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
      if (is == 0) continue;
      const float iscale = -(8.0f + 0.1f * static_cast<float>(is)) / max;
      pass(iscale, sumlx, suml2, false);
      if (suml2 > 0 && sumlx * sumlx > best * suml2) {
        pass(iscale, sumlx, suml2, true);
        scale = sumlx / suml2;
        best = scale * sumlx;
      }
    }
    d_out[b] = float_to_half(scale);
  }
}

inline void llama_imatrix_iq4_nl_block(const float* xb, const float* imp, std::uint16_t* d_out, std::uint8_t* L) {
  const auto& v = kIQ4NLValues;
  float sigma2 = 0;
  for (int j = 0; j < 32; ++j) sigma2 += xb[j] * xb[j];
  sigma2 *= 2.0f / 32.0f;
  float w[32];
  for (int j = 0; j < 32; ++j) w[j] = imp[j] * std::sqrt(sigma2 + xb[j] * xb[j]);
  float amax = 0, max = 0;
  for (int j = 0; j < 32; ++j)
    if (std::fabs(xb[j]) > amax) {
      amax = std::fabs(xb[j]);
      max = xb[j];
    }
  if (amax < 1e-15f) {
    std::fill(L, L + 32, 0);
    *d_out = float_to_half(0.0f);
    return;
  }
  auto pass = [&](float id, float& sumqx, float& sumq2) {
    sumqx = sumq2 = 0;
    for (int j = 0; j < 32; ++j) {
      const float q = v[nearest_iq4_nl(id * xb[j])];
      sumqx += w[j] * q * xb[j];
      sumq2 += w[j] * q * q;
    }
  };
  float sumqx, sumq2;
  pass(1.0f / (-max / v[0]), sumqx, sumq2);
  float d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
  float best = d * sumqx;
  for (int itry = -7; itry <= 7; ++itry) {
    pass((static_cast<float>(itry) + v[0]) / max, sumqx, sumq2);
    if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
      d = sumqx / sumq2;
      best = d * sumqx;
    }
  }
  *d_out = float_to_half(d);
  const float id = d ? 1.0f / d : 0.0f;
  for (int j = 0; j < 32; ++j) L[j] = nearest_iq4_nl(id * xb[j]);
}

}  // namespace nibble::test
