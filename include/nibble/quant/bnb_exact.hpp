// bitsandbytes-exact NF4 / FP4 quantization: what bitsandbytes 0.50.2's
// functional.quantize_4bit(A, blocksize, compress_statistics, quant_type) returns on
// the CPU, byte for byte (CodeFit::bitsandbytes in QuantConfig).
//
// Facts this file reproduces (measured against bitsandbytes 0.50.2 + torch 2.15 by
// scripts/test-bnb.sh; bnb's CPU quantize_4bit is its pure-torch "default" backend,
// its 8-bit quantize_blockwise is the C++ kernel in libbitsandbytes_cpu):
//   4-bit codes   absmax per block from the exact weights; x·(1/absmax) with absmax
//                 clamped to 1e-38 (so an all-zero block codes 0.0); the code is the
//                 number of float32 midpoints of the *sorted* table strictly below x
//                 (torch.bucketize): ties go to the lower value. For FP4 the sorted
//                 table has +0 (code 0) before −0 (code 8), so x ≤ 0 near zero is
//                 code 0 and small positive x is code 8 (yes, the negative zero), and
//                 a tie between two negative values goes to the larger magnitude.
//                 A final partial block (flat size not divisible) divides by its
//                 clamped absmax instead and *stores* the clamped value (1e-38 if 0).
//   offset        torch's float32 mean: float32 sum in torch's CPU reduction order
//                 (8 float lanes, 4-way interleaved cascade; see torch_float_sum),
//                 then divided by n in float32.
//   scale codes   blocks of 256 of (absmax − offset): absmax2 = max|·|; an all-zero
//                 block gets code 0; else v·(1/absmax2) clamped to [−1, 1] indexes a
//                 65536-entry table, index = trunc(((v + 1)·0.5)·65535 + 0.5), whose
//                 entry i holds the dynamic-map code nearest to −1 + 2i/65535. This is
//                 *not* the nearest code for every v (0 itself gets code 131, 2.1e-5).
// nibble's default (CodeFit::restored) instead codes each weight against the scale as
// it will be decoded (after double quantization), with a double-precision mean and the
// exact nearest dynamic code: slightly more accurate, but not bitsandbytes' bytes.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "../core/error.hpp"
#include "../format/codebook.hpp"
#include "../format/dynamic_map.hpp"
#include "../format/scales.hpp"

namespace nibble {

// How NF4 / FP4 codes and double-quantized scales are chosen.
enum class CodeFit : std::uint8_t {
  restored,      // nibble: codes against the decoded (stored) scales; exact nearest scale codes
  bitsandbytes,  // bitsandbytes 0.50.2 quantize_4bit, byte for byte (this file)
};

inline const char* to_string(CodeFit f) { return f == CodeFit::bitsandbytes ? "bitsandbytes" : "restored"; }

// Blocksizes bitsandbytes' quantize_4bit accepts (it raises ValueError otherwise).
inline bool is_bnb_blocksize(std::size_t b) { return b >= 32 && b <= 4096 && (b & (b - 1)) == 0; }

namespace detail {

// Keeps a product from being fused with a following add into an FMA (GCC contracts
// across statements in GNU mode when FMA is enabled); bitsandbytes rounds each step.
inline float rounded(float x) {
  volatile float v = x;
  return v;
}

// Cascade accumulation of `size` rows of `lanes` floats into acc[0]: torch's
// multi_row_sum (aten/src/ATen/native/cpu/SumKernel.cpp) — four levels, a level is
// flushed upwards every 2^level_power rows, level_power = max(4, ⌈log2 size⌉ / 4).
template <std::size_t kRows, std::size_t kLanes>
inline std::array<std::array<float, kLanes>, kRows> torch_multi_row_sum(const float* x, std::size_t size) {
  using Row = std::array<std::array<float, kLanes>, kRows>;
  std::array<Row, 4> acc{};
  int ceil_log2 = 0;
  while ((std::size_t{1} << ceil_log2) < size) ++ceil_log2;
  const int level_power = std::max(4, ceil_log2 / 4);
  const std::size_t step = std::size_t{1} << level_power, mask = step - 1;
  auto add_row = [&](std::size_t i) {
    for (std::size_t k = 0; k < kRows; ++k)
      for (std::size_t l = 0; l < kLanes; ++l) acc[0][k][l] += x[(i * kRows + k) * kLanes + l];
  };
  std::size_t i = 0;
  while (i + step <= size) {
    for (std::size_t j = 0; j < step; ++j, ++i) add_row(i);
    for (int j = 1; j < 4; ++j) {
      for (std::size_t k = 0; k < kRows; ++k)
        for (std::size_t l = 0; l < kLanes; ++l) {
          acc[j][k][l] += acc[j - 1][k][l];
          acc[j - 1][k][l] = 0.0f;
        }
      if ((i & (mask << (j * level_power))) != 0) break;
    }
  }
  for (; i < size; ++i) add_row(i);
  for (int j = 1; j < 4; ++j)
    for (std::size_t k = 0; k < kRows; ++k)
      for (std::size_t l = 0; l < kLanes; ++l) acc[0][k][l] += acc[j][k][l];
  return acc[0];
}

}  // namespace detail

// torch.sum of a contiguous float32 CPU tensor with one thread, in torch's order
// (checked against torch 2.15 for n = 1…70001 with its AVX2 and AVX-512 dispatch;
// both reduce in 8-float vectors). From 65536 elements on, torch splits the sum
// across its threads, so match it with torch.set_num_threads(1) there.
inline float torch_float_sum(const float* x, std::size_t n) {
  constexpr std::size_t kLanes = 8, kIlp = 4;
  if (n < kLanes) {  // torch's scalar inner sum: four interleaved scalar partial sums
    const std::size_t groups = n / kIlp;
    auto partial = detail::torch_multi_row_sum<kIlp, 1>(x, groups);
    for (std::size_t i = groups * kIlp; i < n; ++i) partial[0][0] += x[i];
    for (std::size_t k = 1; k < kIlp; ++k) partial[0][0] += partial[k][0];
    return partial[0][0];
  }
  const std::size_t vectors = n / kLanes, groups = vectors / kIlp;
  auto partial = detail::torch_multi_row_sum<kIlp, kLanes>(x, groups);
  for (std::size_t v = groups * kIlp; v < vectors; ++v)
    for (std::size_t l = 0; l < kLanes; ++l) partial[0][l] += x[v * kLanes + l];
  for (std::size_t k = 1; k < kIlp; ++k)
    for (std::size_t l = 0; l < kLanes; ++l) partial[0][l] += partial[k][l];
  float total = 0.0f;  // the scalar tail first, then the lanes in order
  for (std::size_t i = vectors * kLanes; i < n; ++i) total += x[i];
  for (std::size_t l = 0; l < kLanes; ++l) total += partial[0][l];
  return total;
}

inline float torch_float_mean(const std::vector<float>& x) {
  return x.empty() ? 0.0f : torch_float_sum(x.data(), x.size()) / static_cast<float>(x.size());
}

// bitsandbytes' CPU 4-bit encoder for one normalised value (already clamped or not:
// clamping to [−1, 1] does not change the bucket).
inline std::uint8_t bnb_code_4bit(float xn, Codebook codebook) {
  struct Table {
    std::array<float, 15> bounds;
    std::array<std::uint8_t, 16> code_of_rank;
  };
  static const std::array<Table, 2> tables = [] {
    std::array<Table, 2> t{};
    for (int which = 0; which < 2; ++which) {
      const auto& values = which == 0 ? kNF4Values : kFP4Values;
      // torch.argsort's order of the table; for FP4 it puts +0 (code 0) before −0 (code 8).
      static constexpr std::uint8_t kFP4Order[16] = {11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3};
      for (std::uint8_t r = 0; r < 16; ++r) t[which].code_of_rank[r] = which == 0 ? r : kFP4Order[r];
      for (int r = 0; r < 15; ++r)
        t[which].bounds[r] = (values[t[which].code_of_rank[r]] + values[t[which].code_of_rank[r + 1]]) / 2.0f;
    }
    return t;
  }();
  const Table& t = tables[codebook == Codebook::nf4 ? 0 : 1];
  std::uint8_t rank = 0;
  for (float b : t.bounds) rank = static_cast<std::uint8_t>(rank + (b < xn ? 1 : 0));
  return t.code_of_rank[rank];
}

// The 65536-entry table of bitsandbytes' CPU 8-bit blockwise quantizer for the
// dynamic map: entry i is the number of map midpoints strictly below −1 + 2i/65535.
inline const std::vector<std::uint8_t>& bnb_dynamic_lut() {
  static const std::vector<std::uint8_t> lut = [] {
    const auto& map = dynamic_map();
    std::array<float, 255> mid{};
    for (std::size_t k = 0; k < 255; ++k) mid[k] = 0.5f * (map[k] + map[k + 1]);
    std::vector<std::uint8_t> t(65536);
    std::size_t code = 0;
    for (int i = 0; i < 65536; ++i) {
      const float v = -1.0f + (2.0f * static_cast<float>(i)) / 65535.0f;
      while (code < 255 && mid[code] < v) ++code;
      t[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(code);
    }
    return t;
  }();
  return lut;
}

// One dynamic-map code as bitsandbytes' CPU quantize_blockwise picks it for v·inv.
inline std::uint8_t bnb_dynamic_code(float v, float inv) {
  const float x = std::clamp(detail::rounded(v * inv), -1.0f, 1.0f);
  const float t = detail::rounded(detail::rounded((x + 1.0f) * 0.5f) * 65535.0f) + 0.5f;
  return bnb_dynamic_lut()[static_cast<std::size_t>(static_cast<std::uint16_t>(t))];
}

// Double quantization of absmax values as quantize_4bit(compress_statistics=True).
inline ScaleArray bnb_double_quant(const std::vector<float>& absmax) {
  const float offset = torch_float_mean(absmax);
  std::vector<std::uint8_t> codes(absmax.size());
  std::vector<float> absmax2((absmax.size() + kDoubleQuantBlock - 1) / kDoubleQuantBlock, 0.0f);
  std::vector<float> dev(absmax.size());
  for (std::size_t i = 0; i < absmax.size(); ++i) dev[i] = absmax[i] - offset;
  for (std::size_t b = 0; b < absmax2.size(); ++b) {
    const std::size_t begin = b * kDoubleQuantBlock, end = std::min(absmax.size(), begin + kDoubleQuantBlock);
    float amax = 0.0f;
    for (std::size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(dev[i]));
    absmax2[b] = amax;
    const float inv = amax != 0.0f ? 1.0f / amax : 0.0f;
    for (std::size_t i = begin; i < end; ++i) codes[i] = amax != 0.0f ? bnb_dynamic_code(dev[i], inv) : 0;
  }
  return ScaleArray::from_double_quant(std::move(codes), std::move(absmax2), offset);
}

// Codes and absmax of one group as quantize_4bit: `tail` marks a final partial block
// (bitsandbytes divides there and stores the clamped absmax).
inline float bnb_encode_group(const float* w, std::size_t n, Codebook codebook, bool tail, std::uint8_t* codes) {
  static const float kMinAbsmax = static_cast<float>(1e-38);  // torch clamp(min=1e-38) on float32
  float amax = 0.0f;
  for (std::size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(w[i]));
  const float clamped = std::max(amax, kMinAbsmax);
  const float inv = 1.0f / clamped;
  for (std::size_t i = 0; i < n; ++i)
    codes[i] = bnb_code_4bit(std::clamp(tail ? w[i] / clamped : w[i] * inv, -1.0f, 1.0f), codebook);
  return tail ? clamped : amax;
}

// Checks the options CodeFit::bitsandbytes supports, naming what bitsandbytes rejects.
inline void validate_bnb_exact(Codebook codebook, int group_size, ScaleFormat scale_format, bool clip) {
  detail::require(codebook == Codebook::nf4 || codebook == Codebook::fp4,
          "CodeFit::bitsandbytes applies to nf4 and fp4 only, got ", to_string(codebook));
  detail::require(group_size > 0, "CodeFit::bitsandbytes needs a blocksize (bitsandbytes has no per-row blocks); got ",
          group_size);
  detail::require(is_bnb_blocksize(static_cast<std::size_t>(group_size)), "bitsandbytes rejects blocksize ", group_size,
          " (it accepts 32, 64, 128, 256, 512, 1024, 2048, 4096)");
  detail::require(scale_format == ScaleFormat::f32 || scale_format == ScaleFormat::dq8,
          "bitsandbytes stores absmax as f32 or double-quantized (dq8), not ", to_string(scale_format));
  detail::require(!clip, "bitsandbytes has no clip search: disable config.clip with CodeFit::bitsandbytes");
}

}  // namespace nibble
