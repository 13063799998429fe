// AutoAWQ "GEMM" checkpoint layout (WQLinear_GEMM; reference/algorithms.md §3.3),
// stored in safetensors under `<prefix>.qweight` etc.
//
//   qweight  int32 [in, out/8]   qweight[i, c] = Σ_{k<8} q[i, 8c + kOrder[k]] << 4k   (packs along out)
//   qzeros   int32 [in/G, out/8] same interleave, raw zero points (no −1)
//   scales   fp16  [in/G, out]
//   Wᵀ[i, o] = (q[i, o] − z[g, o]) · s[g, o],  g = i / group_size
// The interleave [0, 2, 4, 6, 1, 3, 5, 7] lets AWQ's CUDA kernel unpack two halves at once.
// Needs in % group_size == 0 and out % 8 == 0. int4_sym is written with zero 8.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gptq_checkpoint.hpp"
#include "safetensors.hpp"

namespace nibble::io {

inline constexpr int kAwqOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};

// Packs 8 nibbles of consecutive output columns 8c..8c+7 into one AWQ word.
inline std::uint32_t awq_pack(const std::uint8_t* v8) {
  std::uint32_t w = 0;
  for (int k = 0; k < 8; ++k) w |= std::uint32_t{v8[kAwqOrder[k]]} << (4 * k);
  return w;
}
inline void awq_unpack(std::uint32_t w, std::uint8_t* v8) {
  for (int k = 0; k < 8; ++k) v8[kAwqOrder[k]] = static_cast<std::uint8_t>((w >> (4 * k)) & 0xF);
}

inline void write_awq(SafetensorsWriter& out, const std::string& prefix, const QuantizedMatrix& m) {
  const std::size_t in = m.cols(), outf = m.rows(), gs = m.group_size();
  detail::require(outf % 8 == 0, "AWQ GEMM packs 8 output channels per int32: out_features ", outf,
                  " must be a multiple of 8");
  detail::require(in % gs == 0, "AWQ needs in_features (", in, ") divisible by the group size (", gs, ")");
  const std::size_t G = in / gs;
  const std::vector<std::uint8_t> z = detail_ckpt::integer_zeros(m, "AWQ");
  const std::vector<std::uint16_t> s = detail_ckpt::f16_scales(m);
  std::vector<std::uint32_t> qweight(in * outf / 8), qzeros(G * outf / 8);
  std::vector<std::uint16_t> scales(G * outf);
  std::uint8_t v8[8];
  for (std::size_t i = 0; i < in; ++i)
    for (std::size_t c = 0; c < outf / 8; ++c) {
      for (int k = 0; k < 8; ++k) v8[k] = m.code(8 * c + k, i);
      qweight[i * (outf / 8) + c] = awq_pack(v8);
    }
  for (std::size_t g = 0; g < G; ++g) {
    for (std::size_t c = 0; c < outf / 8; ++c) {
      for (int k = 0; k < 8; ++k) v8[k] = z[(8 * c + k) * G + g];
      qzeros[g * (outf / 8) + c] = awq_pack(v8);
    }
    for (std::size_t o = 0; o < outf; ++o) scales[g * outf + o] = s[o * G + g];
  }
  out.add(prefix + ".qweight", DType::I32, {in, outf / 8}, qweight.data(), qweight.size() * 4);
  out.add(prefix + ".qzeros", DType::I32, {G, outf / 8}, qzeros.data(), qzeros.size() * 4);
  out.add(prefix + ".scales", DType::F16, {G, outf}, scales.data(), scales.size() * 2);
}

// config.json → quantization_config for AutoAWQ / transformers.
inline std::string awq_quantization_config(int group_size) {
  nlohmann::ordered_json j = {{"quant_method", "awq"}, {"zero_point", true}, {"group_size", group_size},
                              {"bits", 4},             {"version", "gemm"},  {"modules_to_not_convert", nullptr}};
  return j.dump(2);
}

inline QuantizedMatrix read_awq(const SafetensorsReader& r, const std::string& prefix) {
  const TensorInfo& qw = r.info(prefix + ".qweight");
  detail::require(qw.dtype == DType::I32 && qw.shape.size() == 2 && qw.shape[0] > 0 && qw.shape[1] > 0, "AWQ: '",
                  qw.name, "' must be a non-empty 2-D I32 tensor");
  const std::size_t in = static_cast<std::size_t>(qw.shape[0]), outf = static_cast<std::size_t>(qw.shape[1]) * 8;
  const TensorInfo& sc = r.info(prefix + ".scales");
  detail::require(sc.shape.size() == 2 && sc.shape[0] >= 1 && sc.shape[0] <= in && in % sc.shape[0] == 0, "AWQ: '",
                  sc.name, "' must be [in / group_size, out]");
  const std::size_t G = static_cast<std::size_t>(sc.shape[0]), gs = in / G;
  r.expect(prefix + ".scales", DType::F16, {G, outf});
  r.expect(prefix + ".qzeros", DType::I32, {G, outf / 8});
  const auto qweight = r.values<std::uint32_t>(prefix + ".qweight", DType::I32);
  const auto qzeros = r.values<std::uint32_t>(prefix + ".qzeros", DType::I32);
  const auto scales = r.values<std::uint16_t>(prefix + ".scales", DType::F16);
  std::vector<std::uint8_t> codes(outf * packed_size(in), 0), zeros(outf * G);
  std::vector<std::uint16_t> s(outf * G);
  std::uint8_t v8[8];
  for (std::size_t i = 0; i < in; ++i)
    for (std::size_t c = 0; c < outf / 8; ++c) {
      awq_unpack(qweight[i * (outf / 8) + c], v8);
      for (int k = 0; k < 8; ++k) set_nibble(codes.data() + (8 * c + k) * packed_size(in), i, v8[k]);
    }
  for (std::size_t g = 0; g < G; ++g) {
    for (std::size_t c = 0; c < outf / 8; ++c) {
      awq_unpack(qzeros[g * (outf / 8) + c], v8);
      for (int k = 0; k < 8; ++k) zeros[(8 * c + k) * G + g] = v8[k];
    }
    for (std::size_t o = 0; o < outf; ++o) s[o * G + g] = scales[g * outf + o];
  }
  return QuantizedMatrix(outf, in, gs, Codebook::uint4_asym, std::move(codes),
                         ScaleArray::from_raw16(std::move(s), ScaleFormat::f16), ZeroPoints::uint4(zeros));
}

}  // namespace nibble::io
