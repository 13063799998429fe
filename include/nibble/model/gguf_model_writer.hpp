// A quantized model written back as a GGUF model file that llama.cpp loads and runs:
// the source file with its linear weights replaced.
//
// What the output holds, in the source's order:
//   * every metadata key of the source with its type and value (tokenizer, chat
//     template, hyper-parameters, ...), except general.file_type, which names the new
//     type (llama_ftype: 2 = mostly Q4_0, 25 = mostly IQ4_NL), and
//     general.quantization_version (2, added when missing); general.alignment is kept;
//   * blk.N.{attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_down,ffn_up}.weight as the
//     quantized matrices, in the GGUF block type asked for;
//   * blk.N.attn_norm / ffn_norm as the quantized model holds them (F32) — AWQ folds its
//     scales into them; unchanged gains come out byte for byte as F32 round-trips;
//   * every other tensor (embedding, output norm, classifier, biases) copied byte for byte.
// The file is assembled under a temporary name and renamed at the end (GgufWriter).
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <string>

#include "../core/error.hpp"
#include "../io/gguf.hpp"
#include "gguf_model.hpp"
#include "quantize_model.hpp"

namespace nibble::model {

// general.file_type of a file whose linears are all `type` (llama.cpp's llama_ftype).
inline std::uint32_t gguf_file_type(io::GgmlType type) {
  switch (type) {
    case io::GgmlType::Q4_0: return 2;
    case io::GgmlType::IQ4_NL: return 25;
    default: break;
  }
  detail::throw_error("GGUF model writer: ", io::ggml_type_name(static_cast<std::uint32_t>(type)),
                      " is not a type nibble writes models in (Q4_0, IQ4_NL)");
}

namespace gguf_writer_detail {

inline void require_shape(const io::GgufTensorInfo& t, std::uint64_t cols, std::uint64_t rows) {
  const bool ok = rows == 1 ? (t.ne.size() == 1 && t.ne[0] == cols)
                            : (t.ne.size() == 2 && t.ne[0] == cols && t.ne[1] == rows);
  detail::require(ok, "GGUF model writer: tensor '", t.name, "' of the source has another shape than the model's (",
                  rows, " x ", cols, ")");
}

}  // namespace gguf_writer_detail

// Writes `w` — the model read from `source`, its linears now 4-bit matrices of `type`'s
// codebook in groups of 32 — as a GGUF model at `path` (see the top of this file).
inline void write_quantized_gguf(const io::GgufReader& source, const LlamaWeights& w, io::GgmlType type,
                                 const std::string& path) {
  using namespace gguf_writer_detail;
  const std::uint32_t file_type = gguf_file_type(type);
  const LlamaConfig& c = w.config;
  detail::require(w.layers.size() == static_cast<std::size_t>(c.n_layers), "GGUF model writer: the model has ",
                  w.layers.size(), " blocks, its config says ", c.n_layers);

  // Which source tensors are replaced, and by what.
  std::map<std::string, const QuantizedMatrix*> linears;
  std::map<std::string, const Eigen::VectorXf*> norms;
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayer& L = w.layers[static_cast<std::size_t>(l)];
    const std::string b = gguf_block_prefix(l);
    for (const GgufLayerLinear& t : gguf_layer_linears()) {
      const StoredMatrix& m = L.*t.matrix;
      detail::require(m.is_quantized(), "GGUF model writer: ", b, t.name, " is ", m.describe(),
                      ", expected a 4-bit matrix");
      linears[b + t.name + ".weight"] = m.quantized_ptr().get();
    }
    norms[b + "attn_norm.weight"] = &L.rms_att;
    norms[b + "ffn_norm.weight"] = &L.rms_ffn;
  }
  std::size_t found = 0;
  for (const auto& t : source.tensors()) found += linears.count(t.name) + norms.count(t.name);
  detail::require(found == linears.size() + norms.size(), "GGUF model writer: the source file lacks ",
                  linears.size() + norms.size() - found, " of the model's block tensors (is it the model's source?)");
  io::GgufWriter out(path, source.alignment());
  const io::GgufMetadata& md = source.typed_metadata();
  for (const std::string& key : md.keys()) {
    if (key == "general.alignment") continue;
    if (key == "general.file_type") out.set_u32(key, file_type);
    else out.set_value(key, md.at(key));
  }
  if (!md.contains("general.file_type")) out.set_u32("general.file_type", file_type);
  if (!md.contains("general.quantization_version")) out.set_u32("general.quantization_version", 2);

  for (const io::GgufTensorInfo& t : source.tensors()) {
    if (const auto it = linears.find(t.name); it != linears.end()) {
      const QuantizedMatrix& m = *it->second;
      require_shape(t, m.cols(), m.rows());
      const std::vector<std::uint8_t> blocks = io::to_gguf_blocks(type, m);
      out.add_tensor(t.name, static_cast<std::uint32_t>(type), t.ne, blocks.data(), blocks.size());
    } else if (const auto nt = norms.find(t.name); nt != norms.end()) {
      const Eigen::VectorXf& v = *nt->second;
      require_shape(t, static_cast<std::uint64_t>(v.size()), 1);
      out.add_f32(t.name, 1, static_cast<std::size_t>(v.size()), v.data());
    } else {
      const io::ByteView bytes = source.bytes(t);
      out.add_tensor(t.name, t.type, t.ne, bytes.data, bytes.size);
    }
  }
  out.finish();
}

}  // namespace nibble::model
