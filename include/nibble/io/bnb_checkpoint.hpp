// bitsandbytes 4-bit (Linear4bit / Params4bit) state-dict layout, stored in safetensors
// under the weight's own name (reference/algorithms.md §1.4–1.6):
//
//   <w>                                   uint8 [(n+1)/2, 1]  codes of the flattened [out, in]
//                                         weight, first element in the HIGH nibble
//   <w>.absmax                            f32 [blocks]  or, double-quantized, uint8 [blocks]
//   <w>.quant_map                         f32 [16]      the NF4 / FP4 table
//   <w>.nested_absmax                     f32 [⌈blocks/256⌉]   (double quantization only)
//   <w>.nested_quant_map                  f32 [256]     the 8-bit dynamic map (ditto)
//   <w>.quant_state.bitsandbytes__nf4     uint8 bytes of a JSON object: quant_type, blocksize,
//                                         dtype, shape, and nested_blocksize / nested_dtype /
//                                         nested_offset when double-quantized
//   w = quant_map[q] · absmax[block];  double-quantized absmax[b] = nested_quant_map[a[b]] ·
//   nested_absmax[b / 256] + nested_offset — the same rule as nibble's ScaleFormat::dq8.
// Blocks run over the flat index, so a matrix maps to nibble's row groups only when
// in % blocksize == 0; blocksize must be a power of two in [32, 4096].
// write_bnb stores the QuantizedMatrix it is given. For the bytes bitsandbytes'
// quantize_4bit would write, quantize with bnb_quant_config() (CodeFit::bitsandbytes,
// what nibble-quant --format bnb-nf4 / bnb-fp4 does by default); a matrix fitted with
// CodeFit::restored loads in bitsandbytes just as well, with slightly different codes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../format/dynamic_map.hpp"
#include "../format/quantized_matrix.hpp"
#include "../quant/rtn.hpp"
#include "safetensors.hpp"

namespace nibble::io {

// The QuantConfig whose result is byte for byte bitsandbytes' quantize_4bit(W, blocksize,
// compress_statistics = double_quant, quant_type = nf4 ? "nf4" : "fp4").
inline QuantConfig bnb_quant_config(bool nf4, int blocksize = 64, bool double_quant = false) {
  QuantConfig c;
  c.codebook = nf4 ? Codebook::nf4 : Codebook::fp4;
  c.group_size = blocksize;
  c.scale_format = double_quant ? ScaleFormat::dq8 : ScaleFormat::f32;
  c.code_fit = CodeFit::bitsandbytes;
  return c;
}

inline void write_bnb(SafetensorsWriter& out, const std::string& name, const QuantizedMatrix& m,
                      const std::string& original_dtype = "float32") {
  const bool nf4 = m.codebook() == Codebook::nf4;
  detail::require(nf4 || m.codebook() == Codebook::fp4, "bitsandbytes 4-bit stores nf4 or fp4, got ",
                  to_string(m.codebook()));
  const std::size_t bs = m.group_size();
  detail::require(bs >= 32 && bs <= 4096 && (bs & (bs - 1)) == 0, "bitsandbytes blocksize must be a power of two in ",
                  "[32, 4096], got ", bs);
  detail::require(m.cols() % bs == 0, "bitsandbytes blocks run over the flattened weight: in_features (", m.cols(),
                  ") must be divisible by the blocksize (", bs, ")");
  const std::string type = nf4 ? "nf4" : "fp4";
  const std::uint64_t n = static_cast<std::uint64_t>(m.rows()) * m.cols();
  // cols is even here, so rows never share a byte and nibble's code bytes are bnb's.
  out.add(name, DType::U8, {(n + 1) / 2, 1}, m.codes().data(), m.codes().size());
  nlohmann::ordered_json state = {{"quant_type", type},
                                  {"blocksize", bs},
                                  {"dtype", original_dtype},
                                  {"shape", {m.rows(), m.cols()}}};
  const ScaleArray& s = m.scales();
  if (s.format() == ScaleFormat::dq8) {
    out.add(name + ".absmax", DType::U8, {s.size()}, s.dq_codes().data(), s.size());
    state["nested_blocksize"] = kDoubleQuantBlock;
    state["nested_dtype"] = "float32";
    state["nested_offset"] = s.dq_offset();
  } else {
    const std::vector<float> a = s.decode();  // f16/bf16 widen to f32 exactly
    out.add(name + ".absmax", DType::F32, {a.size()}, a.data(), a.size() * 4);
  }
  const auto& table = codebook_values(m.codebook());
  out.add(name + ".quant_map", DType::F32, {16}, table.data(), 64);
  if (s.format() == ScaleFormat::dq8) {
    out.add(name + ".nested_absmax", DType::F32, {s.dq_absmax2().size()}, s.dq_absmax2().data(),
            s.dq_absmax2().size() * 4);
    out.add(name + ".nested_quant_map", DType::F32, {256}, dynamic_map().data(), 256 * 4);
  }
  const std::string json = state.dump();
  out.add(name + ".quant_state.bitsandbytes__" + type, DType::U8, {json.size()}, json.data(), json.size());
}

// config.json → quantization_config for transformers.
inline std::string bnb_quantization_config(bool nf4, bool double_quant) {
  nlohmann::ordered_json j = {{"quant_method", "bitsandbytes"},          {"load_in_4bit", true},
                              {"bnb_4bit_quant_type", nf4 ? "nf4" : "fp4"}, {"bnb_4bit_use_double_quant", double_quant},
                              {"bnb_4bit_compute_dtype", "float32"},      {"bnb_4bit_quant_storage", "uint8"}};
  return j.dump(2);
}

inline QuantizedMatrix read_bnb(const SafetensorsReader& r, const std::string& name) {
  const bool nf4 = r.contains(name + ".quant_state.bitsandbytes__nf4");
  const std::string state_name = name + (nf4 ? ".quant_state.bitsandbytes__nf4" : ".quant_state.bitsandbytes__fp4");
  const ByteView sb = r.bytes(state_name);
  detail::require(r.info(state_name).dtype == DType::U8, "bitsandbytes: '", state_name, "' must be U8");
  check_json_depth(reinterpret_cast<const char*>(sb.data), sb.size, 8);
  const nlohmann::json state = nlohmann::json::parse(sb.data, sb.data + sb.size, nullptr, false);
  detail::require(state.is_object(), "bitsandbytes: quant_state of '", name, "' is not a JSON object");
  auto field = [&](const char* key) -> const nlohmann::json& {
    const auto it = state.find(key);
    detail::require(it != state.end(), "bitsandbytes: quant_state of '", name, "' lacks '", key, "'");
    return *it;
  };
  detail::require(field("quant_type") == (nf4 ? "nf4" : "fp4"), "bitsandbytes: quant_type does not match the key");
  const nlohmann::json& bsj = field("blocksize");
  const nlohmann::json& shape = field("shape");
  detail::require(bsj.is_number_unsigned() && shape.is_array() && shape.size() == 2 && shape[0].is_number_unsigned() &&
                      shape[1].is_number_unsigned(),
                  "bitsandbytes: blocksize / shape of '", name, "' are malformed (expected 2-D shape)");
  const std::uint64_t bs = bsj.get<std::uint64_t>(), rows = shape[0].get<std::uint64_t>(),
                      cols = shape[1].get<std::uint64_t>();
  detail::require(bs >= 32 && bs <= 4096 && (bs & (bs - 1)) == 0, "bitsandbytes: blocksize ", bs, " is not allowed");
  detail::require(rows > 0 && cols > 0 && cols % bs == 0 && rows <= (1ull << 40) / cols, "bitsandbytes: shape ", rows,
                  " x ", cols, " is empty, too large, or not divisible into blocks of ", bs);
  const std::uint64_t n = rows * cols, blocks = n / bs;
  r.expect(name, DType::U8, {(n + 1) / 2, 1});
  const Codebook cb = nf4 ? Codebook::nf4 : Codebook::fp4;
  if (r.contains(name + ".quant_map")) {
    const auto map = r.floats(name + ".quant_map");
    detail::require(map.size() == 16, "bitsandbytes: quant_map must have 16 entries");
    for (int k = 0; k < 16; ++k)
      detail::require(map[k] == codebook_values(cb)[k], "bitsandbytes: quant_map entry ", k, " = ", map[k],
                      " differs from the standard ", to_string(cb), " table (custom codes are not supported)");
  }
  const ByteView codes = r.bytes(name);
  std::vector<std::uint8_t> code_bytes(codes.data, codes.data + codes.size);
  ScaleArray scales;
  if (state.contains("nested_offset")) {
    const nlohmann::json& off = state["nested_offset"];
    detail::require(off.is_number(), "bitsandbytes: nested_offset is not a number");
    r.expect(name + ".absmax", DType::U8, {blocks});
    const std::uint64_t nb2 = (blocks + kDoubleQuantBlock - 1) / kDoubleQuantBlock;
    r.expect(name + ".nested_absmax", DType::F32, {nb2});
    r.expect(name + ".nested_quant_map", DType::F32, {256});
    const auto q = r.values<std::uint8_t>(name + ".absmax", DType::U8);
    const auto a2 = r.floats(name + ".nested_absmax");
    const auto map = r.floats(name + ".nested_quant_map");
    const double offset_d = off.get<double>();
    detail::require(std::isfinite(offset_d) && std::fabs(offset_d) <= 3.4e38, "bitsandbytes: nested_offset ",
                    offset_d, " is not a finite float");
    const float offset = static_cast<float>(offset_d);
    bool standard = true;
    for (int k = 0; k < 256; ++k) standard = standard && map[k] == dynamic_map()[k];
    if (standard) {
      scales = ScaleArray::from_double_quant(q, a2, offset);
    } else {  // another published copy of the map: decode with the stored one
      std::vector<float> a(q.size());
      for (std::size_t b = 0; b < a.size(); ++b) a[b] = map[q[b]] * a2[b / kDoubleQuantBlock] + offset;
      scales = ScaleArray::encode(a, ScaleFormat::f32);
    }
  } else {
    r.expect(name + ".absmax", DType::F32, {blocks});
    scales = ScaleArray::encode(r.floats(name + ".absmax"), ScaleFormat::f32);
  }
  return QuantizedMatrix(static_cast<std::size_t>(rows), static_cast<std::size_t>(cols), static_cast<std::size_t>(bs),
                         cb, std::move(code_bytes), std::move(scales));
}

}  // namespace nibble::io
