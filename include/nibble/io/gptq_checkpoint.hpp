// GPTQ checkpoint layout (AutoGPTQ / GPTQModel "gptq" = v1 and "gptq_v2"), stored in
// safetensors under `<prefix>.qweight` etc. (reference/algorithms.md §2.3).
//
//   qweight  int32 [in/8, out]  qweight[r, o] = Σ_{j<8} q[8r + j, o] << 4j   (packs along in)
//   qzeros   int32 [G, out/8]   qzeros[g, c] = Σ_{j<8} zs[g, 8c + j] << 4j  (packs along out)
//   scales   fp16  [G, out]
//   g_idx    int32 [in]         group of each input column: i / group_size, or for act-order
//                               checkpoints (desc_act without static groups) a permuted layout
//   W[o, i] = scales[g, o] · (q[i, o] − z[g, o]),  g = g_idx[i],
//   v1 stores zs = z − 1 (so z = 0 cannot be stored), v2 stores zs = z.
// int4_sym matrices are written as zero 8 (value[u] = u − 8), which GPTQ readers call sym.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../format/quantized_matrix.hpp"
#include "safetensors.hpp"

namespace nibble::io {

enum class GptqFormat : std::uint8_t { v1, v2 };

namespace detail_ckpt {

// Integer zero point of every group (int4_sym → 8), or an error for formats that have none.
inline std::vector<std::uint8_t> integer_zeros(const QuantizedMatrix& m, const char* format) {
  std::vector<std::uint8_t> z(m.group_count(), 8);
  if (m.codebook() == Codebook::uint4_asym) {
    detail::require(m.zeros().format == ZeroFormat::uint4, format,
                    " needs integer (uint4) zero points; float zero points (HQQ) cannot be stored");
    for (std::size_t i = 0; i < z.size(); ++i) z[i] = get_nibble(m.zeros().packed.data(), i);
  } else {
    detail::require(m.codebook() == Codebook::int4_sym, format, " stores int4_sym or uint4_asym matrices, got ",
                    to_string(m.codebook()));
  }
  return z;
}

inline std::vector<std::uint16_t> f16_scales(const QuantizedMatrix& m) {
  std::vector<std::uint16_t> s(m.group_count());
  if (m.scales().format() == ScaleFormat::f16) return m.scales().raw16();
  for (std::size_t i = 0; i < s.size(); ++i) {
    const float v = m.scales().get(i);
    detail::require(std::fabs(v) < 65504.0f, "scale ", v, " does not fit fp16, which this format stores");
    s[i] = float_to_half(v);
  }
  return s;
}

// Group size and column order implied by g_idx: every group but the last must have the
// same number of columns. order is empty when g_idx is the contiguous i / group_size;
// otherwise the columns sorted (stably) by group, so that matrix column j reads input
// order[j] and groups are contiguous in that order.
struct GroupLayout {
  std::size_t group_size = 0;
  std::vector<std::uint32_t> order;
};
inline GroupLayout group_layout_from_g_idx(const std::vector<std::int32_t>& g_idx, std::size_t groups) {
  const std::size_t in = g_idx.size();
  std::vector<std::size_t> count(groups, 0);
  for (std::size_t i = 0; i < in; ++i) {
    detail::require(g_idx[i] >= 0 && static_cast<std::size_t>(g_idx[i]) < groups, "GPTQ: g_idx[", i, "] = ", g_idx[i],
                    " is outside the ", groups, " groups");
    ++count[static_cast<std::size_t>(g_idx[i])];
  }
  GroupLayout layout;
  layout.group_size = count[0];
  for (std::size_t g = 0; g < groups; ++g)
    detail::require(g + 1 < groups ? count[g] == layout.group_size : count[g] >= 1 && count[g] <= layout.group_size,
                    "GPTQ: group ", g, " has ", count[g], " columns in g_idx, but group 0 has ", layout.group_size,
                    " (groups must have equal sizes, the last may be shorter)");
  bool contiguous = true;
  for (std::size_t i = 0; i < in; ++i) contiguous = contiguous && static_cast<std::size_t>(g_idx[i]) == i / layout.group_size;
  if (!contiguous) {
    layout.order.resize(in);
    std::iota(layout.order.begin(), layout.order.end(), 0u);
    std::stable_sort(layout.order.begin(), layout.order.end(),
                     [&](std::uint32_t a, std::uint32_t b) { return g_idx[a] < g_idx[b]; });
  }
  return layout;
}

}  // namespace detail_ckpt

// Writes `<prefix>.qweight/.qzeros/.scales/.g_idx` for one linear layer. input_order
// (GptqResult::input_order of act-order with permuted groups) says which input column
// each column of m belongs to; it is written as an act-order g_idx (desc_act = true).
inline void write_gptq(SafetensorsWriter& out, const std::string& prefix, const QuantizedMatrix& m, GptqFormat format,
                       const std::vector<std::uint32_t>& input_order = {}) {
  const std::size_t in = m.cols(), outf = m.rows(), G = m.groups_per_row();
  detail::require(in % 8 == 0 && outf % 8 == 0, "GPTQ packs 8 values per int32: in_features (", in,
                  ") and out_features (", outf, ") must both be multiples of 8");
  std::vector<std::uint32_t> column(in);  // input column of matrix column j
  std::iota(column.begin(), column.end(), 0u);
  if (!input_order.empty()) {
    detail::require(input_order.size() == in, "GPTQ: input_order has ", input_order.size(), " entries, expected ", in);
    std::vector<bool> seen(in, false);
    for (std::uint32_t c : input_order) {
      detail::require(c < in && !seen[c], "GPTQ: input_order is not a permutation of 0..", in - 1);
      seen[c] = true;
    }
    column = input_order;
  }
  const std::vector<std::uint8_t> z = detail_ckpt::integer_zeros(m, "GPTQ");
  std::vector<std::uint32_t> qweight(in / 8 * outf, 0), qzeros(G * outf / 8, 0);
  for (std::size_t o = 0; o < outf; ++o)
    for (std::size_t j = 0; j < in; ++j) {
      const std::size_t i = column[j];
      qweight[(i / 8) * outf + o] |= std::uint32_t{m.code(o, j)} << (4 * (i % 8));
    }
  for (std::size_t o = 0; o < outf; ++o)
    for (std::size_t g = 0; g < G; ++g) {
      const int zero = z[o * G + g];
      detail::require(format == GptqFormat::v2 || zero >= 1, "GPTQ v1 stores zero − 1 and cannot store zero point 0 (row ",
                      o, ", group ", g, "); write gptq_v2 instead");
      const std::uint32_t zs = static_cast<std::uint32_t>(format == GptqFormat::v1 ? zero - 1 : zero);
      qzeros[g * (outf / 8) + o / 8] |= zs << (4 * (o % 8));
    }
  const std::vector<std::uint16_t> s = detail_ckpt::f16_scales(m);
  std::vector<std::uint16_t> scales(G * outf);  // [G, out]: transpose of nibble's [out, G]
  for (std::size_t o = 0; o < outf; ++o)
    for (std::size_t g = 0; g < G; ++g) scales[g * outf + o] = s[o * G + g];
  std::vector<std::int32_t> g_idx(in);
  for (std::size_t j = 0; j < in; ++j) g_idx[column[j]] = static_cast<std::int32_t>(j / m.group_size());
  out.add(prefix + ".qweight", DType::I32, {in / 8, outf}, qweight.data(), qweight.size() * 4);
  out.add(prefix + ".qzeros", DType::I32, {G, outf / 8}, qzeros.data(), qzeros.size() * 4);
  out.add(prefix + ".scales", DType::F16, {G, outf}, scales.data(), scales.size() * 2);
  out.add(prefix + ".g_idx", DType::I32, {in}, g_idx.data(), g_idx.size() * 4);
}

// quantize_config.json contents for a checkpoint written with write_gptq (desc_act:
// written with input orders, i.e. act-order with permuted groups).
inline std::string gptq_quantize_config(int group_size, bool sym, GptqFormat format, bool desc_act = false) {
  nlohmann::ordered_json j = {{"bits", 4},           {"group_size", group_size}, {"desc_act", desc_act},
                              {"sym", sym},          {"damp_percent", 0.01},     {"static_groups", false},
                              {"true_sequential", true}, {"quant_method", "gptq"},
                              {"checkpoint_format", format == GptqFormat::v1 ? "gptq" : "gptq_v2"},
                              {"pack_dtype", "int32"}, {"model_name_or_path", nullptr},
                              {"model_file_base_name", nullptr}};
  return j.dump(2);
}

// One GPTQ linear layer: the matrix, and for act-order checkpoints the input column of
// each matrix column (y = matrix · x[input_order]; empty when the groups are contiguous).
struct GptqLayer {
  QuantizedMatrix matrix;
  std::vector<std::uint32_t> input_order;
};

// Reads one GPTQ linear layer back: uint4_asym, f16 scales, uint4 zeros, any g_idx.
inline GptqLayer read_gptq_layer(const SafetensorsReader& r, const std::string& prefix, GptqFormat format) {
  const TensorInfo& qw = r.info(prefix + ".qweight");
  detail::require(qw.dtype == DType::I32 && qw.shape.size() == 2, "GPTQ: '", qw.name, "' must be a 2-D I32 tensor");
  const std::size_t in = static_cast<std::size_t>(qw.shape[0]) * 8, outf = static_cast<std::size_t>(qw.shape[1]);
  detail::require(in > 0 && outf > 0 && outf % 8 == 0, "GPTQ: '", qw.name, "' shape gives in ", in, ", out ", outf,
                  " (out must be a positive multiple of 8)");
  const TensorInfo& sc = r.info(prefix + ".scales");
  detail::require(sc.shape.size() == 2 && sc.shape[0] >= 1 && sc.shape[0] <= in, "GPTQ: '", sc.name,
                  "' must be [groups, out]");
  const std::size_t G = static_cast<std::size_t>(sc.shape[0]);
  r.expect(prefix + ".scales", DType::F16, {G, outf});
  r.expect(prefix + ".qzeros", DType::I32, {G, outf / 8});
  std::size_t gs = in;
  detail_ckpt::GroupLayout layout;
  if (r.contains(prefix + ".g_idx")) {
    r.expect(prefix + ".g_idx", DType::I32, {in});
    layout = detail_ckpt::group_layout_from_g_idx(r.values<std::int32_t>(prefix + ".g_idx", DType::I32), G);
    gs = layout.group_size;
  } else {
    detail::require(in % G == 0, "GPTQ: no g_idx and in_features ", in, " is not divisible by ", G, " groups");
    gs = in / G;
  }
  detail::require((in + gs - 1) / gs == G, "GPTQ: ", G, " scale rows do not match in_features ", in, " / group ", gs);
  const auto qweight = r.values<std::uint32_t>(prefix + ".qweight", DType::I32);
  const auto qzeros = r.values<std::uint32_t>(prefix + ".qzeros", DType::I32);
  const auto scales = r.values<std::uint16_t>(prefix + ".scales", DType::F16);
  std::vector<std::uint8_t> codes(outf * packed_size(in), 0), zeros(outf * G);
  std::vector<std::uint16_t> s(outf * G);
  for (std::size_t o = 0; o < outf; ++o) {
    for (std::size_t j = 0; j < in; ++j) {
      const std::size_t i = layout.order.empty() ? j : layout.order[j];
      set_nibble(codes.data() + o * packed_size(in), j,
                 static_cast<std::uint8_t>((qweight[(i / 8) * outf + o] >> (4 * (i % 8))) & 0xF));
    }
    for (std::size_t g = 0; g < G; ++g) {
      int z = static_cast<int>((qzeros[g * (outf / 8) + o / 8] >> (4 * (o % 8))) & 0xF);
      if (format == GptqFormat::v1) ++z;
      detail::require(z <= 15, "GPTQ v1: stored zero 15 means zero point 16 (row ", o, ", group ", g,
                      "), which 4-bit codes cannot use; is this really a v1 checkpoint?");
      zeros[o * G + g] = static_cast<std::uint8_t>(z);
      s[o * G + g] = scales[g * outf + o];
    }
  }
  return {QuantizedMatrix(outf, in, gs, Codebook::uint4_asym, std::move(codes),
                          ScaleArray::from_raw16(std::move(s), ScaleFormat::f16), ZeroPoints::uint4(zeros)),
          std::move(layout.order)};
}

// The same for checkpoints with contiguous groups, as a plain QuantizedMatrix.
inline QuantizedMatrix read_gptq(const SafetensorsReader& r, const std::string& prefix, GptqFormat format) {
  GptqLayer layer = read_gptq_layer(r, prefix, format);
  detail::require(layer.input_order.empty(), "GPTQ: '", prefix,
                  ".g_idx' is an act-order (desc_act) layout; read it with read_gptq_layer, which also returns "
                  "the input order the matrix's columns follow");
  return std::move(layer.matrix);
}

}  // namespace nibble::io
