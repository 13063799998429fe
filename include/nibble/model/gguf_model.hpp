// Llama-family models from GGUF files (as written by llama.cpp's converter and
// llama-quantize): hyper-parameters from the metadata, weights from the tensors.
//
// Architectures: `llama` (RoPE on adjacent pairs — the converter permutes q/k rows so)
// and `qwen2` (RoPE on halves, q/k/v biases). Tensor names are llama.cpp's:
//   token_embd, output_norm, output (absent when tied), and per block N:
//   blk.N.attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate (w1),
//   ffn_down (w2), ffn_up (w3), and for qwen2 attn_q.bias / attn_k.bias / attn_v.bias.
// Keys read: <arch>.block_count, .context_length, .embedding_length,
// .feed_forward_length, .attention.head_count, .attention.head_count_kv,
// .attention.key_length (head size, optional), .rope.dimension_count (must equal the
// head size: partial rotary is not supported), .rope.freq_base, .rope.scaling.type /
// .rope.scaling.factor (none or linear), .attention.layer_norm_rms_epsilon.
//
// Weights: Q4_0, IQ4_NL and Q4_1 matrices are imported into QuantizedMatrix without
// re-rounding (Q4_1 as uint4 with float zero points, see GgufReader::load_quantized),
// Q8_0 into Int8Matrix (the same bytes); every other type is decoded to fp32. With `dequantize` every matrix is decoded to fp32
// (the reference model of a quantized file).
#pragma once

#include <array>
#include <string>

#include "../core/error.hpp"
#include "../io/gguf.hpp"
#include "llama_weights.hpp"

namespace nibble::model {

struct GgufLoadOptions {
  bool dequantize = false;  // decode every matrix to fp32
};

// The seven linear weights of block N: "blk.N.<name>.weight" holds LlamaLayer::*matrix.
struct GgufLayerLinear {
  const char* name;
  StoredMatrix LlamaLayer::*matrix;
};
inline const std::array<GgufLayerLinear, 7>& gguf_layer_linears() {
  static const std::array<GgufLayerLinear, 7> table = {{{"attn_q", &LlamaLayer::wq},
                                                        {"attn_k", &LlamaLayer::wk},
                                                        {"attn_v", &LlamaLayer::wv},
                                                        {"attn_output", &LlamaLayer::wo},
                                                        {"ffn_gate", &LlamaLayer::w1},
                                                        {"ffn_down", &LlamaLayer::w2},
                                                        {"ffn_up", &LlamaLayer::w3}}};
  return table;
}
inline std::string gguf_block_prefix(int layer) { return "blk." + std::to_string(layer) + "."; }

namespace gguf_detail {

// An integer key narrowed to int after a range check (validate_config checks relations).
inline int dim_key(const io::GgufMetadata& md, const std::string& key, long long fallback, bool required) {
  detail::require(!required || md.contains(key), "GGUF model: missing metadata key '", key, "'");
  const long long v = md.get_int(key, fallback);
  detail::require(v >= 0 && v <= (1LL << 30), "GGUF model: metadata '", key, "' = ", v, " is out of range");
  return static_cast<int>(v);
}

inline double float_key(const io::GgufMetadata& md, const std::string& key, double fallback) {
  return md.contains(key) ? md.get_float(key) : fallback;
}

inline bool has_tensor(const io::GgufReader& r, const std::string& name) {
  for (const auto& t : r.tensors())
    if (t.name == name) return true;
  return false;
}

inline bool importable_4bit(std::uint32_t type) {
  return type == static_cast<std::uint32_t>(io::GgmlType::Q4_0) ||
         type == static_cast<std::uint32_t>(io::GgmlType::IQ4_NL) ||
         type == static_cast<std::uint32_t>(io::GgmlType::Q4_1);
}

inline StoredMatrix load_matrix(const io::GgufReader& r, const std::string& name, const GgufLoadOptions& o) {
  detail::require(has_tensor(r, name), "GGUF model: missing tensor '", name, "'");
  const io::GgufTensorInfo& t = r.info(name);
  detail::require(t.ne.size() == 2, "GGUF model: tensor '", name, "' has ", t.ne.size(), " dimensions, expected 2");
  StoredMatrix m;
  if (!o.dequantize && importable_4bit(t.type)) {
    m = r.load_quantized(name);
  } else if (!o.dequantize && t.type == static_cast<std::uint32_t>(io::GgmlType::Q8_0)) {
    const io::ByteView b = r.bytes(t);
    m = Int8Matrix::from_q8_0_blocks(static_cast<std::size_t>(t.ne[1]), static_cast<std::size_t>(t.ne[0]), b.data,
                                     b.size);
  } else {
    m = r.load_float(name);
  }
  r.release(t);
  return m;
}

inline Eigen::VectorXf load_vector(const io::GgufReader& r, const std::string& name) {
  detail::require(has_tensor(r, name), "GGUF model: missing tensor '", name, "'");
  return r.load_vector(name);
}

}  // namespace gguf_detail

inline LlamaConfig gguf_llama_config(const io::GgufReader& r) {
  using namespace gguf_detail;
  const io::GgufMetadata& md = r.typed_metadata();
  const std::string arch = md.get_string("general.architecture");
  detail::require(arch == "llama" || arch == "qwen2", "GGUF model: architecture '", arch,
                  "' is not supported (expected llama or qwen2)");
  LlamaConfig c;
  c.architecture = arch;
  const std::string p = arch + ".";
  c.n_layers = dim_key(md, p + "block_count", 0, true);
  c.seq_len = dim_key(md, p + "context_length", 0, true);
  c.dim = dim_key(md, p + "embedding_length", 0, true);
  c.hidden_dim = dim_key(md, p + "feed_forward_length", 0, true);
  c.n_heads = dim_key(md, p + "attention.head_count", 0, true);
  c.n_kv_heads = dim_key(md, p + "attention.head_count_kv", c.n_heads, false);
  c.head_dim = dim_key(md, p + "attention.key_length", 0, false);
  const int value_length = dim_key(md, p + "attention.value_length", c.head_dim, false);
  detail::require(value_length == c.head_dim, "GGUF model: attention.value_length ", value_length,
                  " differs from key_length ", c.head_dim, " (not supported)");
  detail::require(c.n_heads > 0, "GGUF model: ", p, "attention.head_count is 0");
  const int head = c.head_dim > 0 ? c.head_dim : c.dim / c.n_heads;
  const int rot = dim_key(md, p + "rope.dimension_count", head, false);
  detail::require(rot == head, "GGUF model: rope.dimension_count ", rot, " differs from the head size ", head,
                  " (partial rotary embeddings are not supported)");
  c.rope_base = static_cast<float>(float_key(md, p + "rope.freq_base", 10000.0));
  const std::string scaling = md.get_string(p + "rope.scaling.type", "none");
  if (scaling != "none") {
    detail::require(scaling == "linear", "GGUF model: RoPE scaling '", scaling,
                    "' is not supported (expected none or linear)");
    c.rope_scale = static_cast<float>(float_key(md, p + "rope.scaling.factor", 1.0));
  }
  detail::require(!has_tensor(r, "rope_freqs.weight"),
                  "GGUF model: per-frequency RoPE factors (rope_freqs, Llama 3.1 style) are not supported");
  c.rope_style = arch == "qwen2" ? RopeStyle::halves : RopeStyle::adjacent_pairs;
  c.norm_eps = static_cast<float>(float_key(md, p + "attention.layer_norm_rms_epsilon", 1e-5));
  c.qkv_bias = arch == "qwen2";
  c.shared_classifier = !has_tensor(r, "output.weight");
  detail::require(has_tensor(r, "token_embd.weight"), "GGUF model: missing tensor 'token_embd.weight'");
  const io::GgufTensorInfo& emb = r.info("token_embd.weight");
  detail::require(emb.ne.size() == 2 && emb.ne[1] <= (1u << 30), "GGUF model: token_embd.weight has the wrong shape");
  c.vocab_size = static_cast<int>(emb.ne[1]);
  validate_config(c, "GGUF model");
  return c;
}

inline LlamaWeights load_gguf_model(const io::GgufReader& r, const GgufLoadOptions& o = {}) {
  using namespace gguf_detail;
  LlamaWeights w;
  w.config = gguf_llama_config(r);
  const LlamaConfig& c = w.config;
  w.token_embedding = load_matrix(r, "token_embd.weight", o);
  if (!c.shared_classifier) w.wcls = load_matrix(r, "output.weight", o);
  w.rms_final = load_vector(r, "output_norm.weight");
  w.layers.resize(static_cast<std::size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayer& L = w.layers[static_cast<std::size_t>(l)];
    const std::string b = gguf_block_prefix(l);
    L.rms_att = load_vector(r, b + "attn_norm.weight");
    L.rms_ffn = load_vector(r, b + "ffn_norm.weight");
    for (const GgufLayerLinear& t : gguf_layer_linears()) L.*t.matrix = load_matrix(r, b + t.name + ".weight", o);
    if (c.qkv_bias) {
      L.bq = load_vector(r, b + "attn_q.bias");
      L.bk = load_vector(r, b + "attn_k.bias");
      L.bv = load_vector(r, b + "attn_v.bias");
    }
  }
  validate_weights(w, "GGUF model");
  return w;
}

inline LlamaWeights load_gguf_model(const std::string& path, const GgufLoadOptions& o = {}) {
  try {
    return load_gguf_model(io::GgufReader::open(path), o);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " ('" + path + "')");
  }
}

}  // namespace nibble::model
