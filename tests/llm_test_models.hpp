// Small Llama-family models for the model tests: random weights of any size, and a
// writer of llama.cpp-style GGUF model files from LlamaWeights.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nibble/io/gguf.hpp>
#include <nibble/model/llama_weights.hpp>
#include <nibble/quant/rtn.hpp>

#include "test_util.hpp"

namespace nibble::test {

using model::LlamaLayer;
using model::LlamaWeights;
using model::LlamaConfig;
using model::RopeStyle;
using model::StoredMatrix;

inline RowMatrixXf random_matrix(Eigen::Index r, Eigen::Index c, std::uint32_t seed, float sd) {
  return RowMatrixXf(test::gaussian_matrix(r, c, seed, sd));
}

inline Eigen::VectorXf random_vector(Eigen::Index n, std::uint32_t seed, float mean, float sd) {
  Eigen::VectorXf v = test::gaussian_matrix(n, 1, seed, sd).col(0);
  return v.array() + mean;
}

// Sizes of random_model. The default: GQA (6 heads, 2 kv), head size 10 (so q_dim 60 != dim 48).
struct RandomModelShape {
  int dim = 48, hidden_dim = 80, n_layers = 2, n_heads = 6, n_kv_heads = 2, head_dim = 10, vocab = 97;
};

// A small random model.
inline LlamaWeights random_model(RopeStyle style, bool biases, std::uint32_t seed = 1, const RandomModelShape& shape = {}) {
  LlamaWeights w;
  LlamaConfig& c = w.config;
  c.architecture = biases ? "qwen2" : "llama";
  c.dim = shape.dim, c.hidden_dim = shape.hidden_dim, c.n_layers = shape.n_layers, c.n_heads = shape.n_heads;
  c.n_kv_heads = shape.n_kv_heads, c.head_dim = shape.head_dim;
  c.vocab_size = shape.vocab, c.seq_len = 64, c.rope_base = 5000.0f, c.rope_scale = 2.0f, c.norm_eps = 1e-4f;
  c.rope_style = style;
  c.qkv_bias = biases;
  c.shared_classifier = false;
  std::uint32_t s = seed * 1000;
  w.token_embedding = random_matrix(c.vocab_size, c.dim, ++s, 1.0f);
  w.wcls = random_matrix(c.vocab_size, c.dim, ++s, 0.2f);
  w.rms_final = random_vector(c.dim, ++s, 1.0f, 0.1f);
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayer L;
    L.rms_att = random_vector(c.dim, ++s, 1.0f, 0.1f);
    L.rms_ffn = random_vector(c.dim, ++s, 1.0f, 0.1f);
    L.wq = random_matrix(c.q_dim(), c.dim, ++s, 0.2f);
    L.wk = random_matrix(c.kv_dim(), c.dim, ++s, 0.2f);
    L.wv = random_matrix(c.kv_dim(), c.dim, ++s, 0.2f);
    L.wo = random_matrix(c.dim, c.q_dim(), ++s, 0.2f);
    L.w1 = random_matrix(c.hidden_dim, c.dim, ++s, 0.2f);
    L.w2 = random_matrix(c.dim, c.hidden_dim, ++s, 0.2f);
    L.w3 = random_matrix(c.hidden_dim, c.dim, ++s, 0.2f);
    if (biases) {
      L.bq = random_vector(c.q_dim(), ++s, 0.0f, 0.3f);
      L.bk = random_vector(c.kv_dim(), ++s, 0.0f, 0.3f);
      L.bv = random_vector(c.kv_dim(), ++s, 0.0f, 0.3f);
    }
    w.layers.push_back(L);
  }
  return w;
}

// Writes w as a llama.cpp-style GGUF file: matrices whose rows split into blocks of 32 as
// Q4_0 when `q4_0` (returning the quantized forms), the rest F32.
struct WrittenModel {
  std::string path;
  std::map<std::string, QuantizedMatrix> quantized;
};

inline WrittenModel write_gguf(const LlamaWeights& w, bool q4_0, const std::string& path,
                               const std::function<void(io::GgufWriter&)>& extra = {}, const std::string& skip = "") {
  WrittenModel out;
  out.path = path;
  const LlamaConfig& c = w.config;
  io::GgufWriter g(out.path);
  g.set_general(c.architecture, "test", q4_0 ? 2 : 0);
  const std::string p = c.architecture + ".";
  // The hyper-parameter keys are spelled out here rather than taken from
  // model/gguf_model_from_hf.hpp, so the loader tests do not trust the writer under test.
  g.set_u32(p + "block_count", static_cast<std::uint32_t>(c.n_layers));
  g.set_u32(p + "context_length", static_cast<std::uint32_t>(c.seq_len));
  g.set_u32(p + "embedding_length", static_cast<std::uint32_t>(c.dim));
  g.set_u32(p + "feed_forward_length", static_cast<std::uint32_t>(c.hidden_dim));
  g.set_u32(p + "attention.head_count", static_cast<std::uint32_t>(c.n_heads));
  g.set_u32(p + "attention.head_count_kv", static_cast<std::uint32_t>(c.n_kv_heads));
  if (c.head_dim > 0) g.set_u32(p + "attention.key_length", static_cast<std::uint32_t>(c.head_dim));
  g.set_u32(p + "rope.dimension_count", static_cast<std::uint32_t>(c.head_size()));
  g.set_f32(p + "rope.freq_base", c.rope_base);
  if (c.rope_scale != 1.0f) {
    g.set_string(p + "rope.scaling.type", "linear");
    g.set_f32(p + "rope.scaling.factor", c.rope_scale);
  }
  g.set_f32(p + "attention.layer_norm_rms_epsilon", c.norm_eps);
  if (extra) extra(g);
  auto matrix = [&](const std::string& n, const StoredMatrix& m) {
    if (n == skip) return;
    const RowMatrixXf& d = m.dense();
    if (q4_0 && d.cols() % 32 == 0) {
      QuantConfig qc;
      qc.codebook = Codebook::int4_sym;
      qc.group_size = 32;
      qc.scale_format = ScaleFormat::f16;
      QuantizedMatrix q = quantize(d, qc);
      g.add_q4_0(n, q);
      out.quantized.emplace(n, std::move(q));
    } else {
      g.add_f32(n, static_cast<std::size_t>(d.rows()), static_cast<std::size_t>(d.cols()), d.data());
    }
  };
  auto vec = [&](const std::string& n, const Eigen::VectorXf& v) {
    if (n != skip) g.add_f32(n, 1, static_cast<std::size_t>(v.size()), v.data());
  };
  matrix("token_embd.weight", w.token_embedding);
  vec("output_norm.weight", w.rms_final);
  if (!c.shared_classifier) matrix("output.weight", w.wcls);
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayer& L = w.layers[static_cast<std::size_t>(l)];
    const std::string b = "blk." + std::to_string(l) + ".";
    vec(b + "attn_norm.weight", L.rms_att);
    vec(b + "ffn_norm.weight", L.rms_ffn);
    matrix(b + "attn_q.weight", L.wq);
    matrix(b + "attn_k.weight", L.wk);
    matrix(b + "attn_v.weight", L.wv);
    matrix(b + "attn_output.weight", L.wo);
    matrix(b + "ffn_gate.weight", L.w1);
    matrix(b + "ffn_down.weight", L.w2);
    matrix(b + "ffn_up.weight", L.w3);
    if (c.qkv_bias) {
      vec(b + "attn_q.bias", L.bq);
      vec(b + "attn_k.bias", L.bk);
      vec(b + "attn_v.bias", L.bv);
    }
  }
  g.finish();
  return out;
}

// Pseudo-random token sequences (a fixed LCG), for calibration in the model tests.
inline std::vector<std::vector<int>> calibration_tokens(int sequences, int length, int vocab) {
  std::vector<std::vector<int>> out(static_cast<std::size_t>(sequences));
  std::uint32_t x = 12345;
  for (auto& s : out)
    for (int t = 0; t < length; ++t) {
      x = x * 1664525u + 1013904223u;
      s.push_back(static_cast<int>((x >> 8) % static_cast<std::uint32_t>(vocab)));
    }
  return out;
}

}  // namespace nibble::test
