// One description of a Llama-family model — hyper-parameters and weights — that every
// loader produces: llama2.c checkpoints (llama2c.hpp), GGUF files (gguf_model.hpp) and
// Hugging Face directories (hf_model.hpp). The runtime (transformer.hpp) and the
// quantization pipeline (quantize_model.hpp) consume it.
//
// A weight matrix is kept the way its file holds it (StoredMatrix): fp32, a 4-bit
// QuantizedMatrix or an 8-bit Int8Matrix imported from the file's blocks without
// re-rounding. So a model read from a quantized GGUF runs on exactly the file's bytes.
#pragma once

#include <cmath>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../format/int8_matrix.hpp"
#include "../format/quantized_matrix.hpp"
#include "../quant/rtn.hpp"

namespace nibble::model {

// How RoPE pairs the dimensions of a head.
//   adjacent_pairs: (2i, 2i+1) — llama2.c, and GGUF `llama` files (whose converter
//                   permutes the q/k rows to this order);
//   halves:         (i, i + head/2) — Hugging Face checkpoints ("rotate_half") and GGUF
//                   `qwen2` files (llama.cpp's NEOX rope type).
// Pair i of a head rotates by pos·base^(−2i/head_size) either way.
enum class RopeStyle { adjacent_pairs, halves };

struct LlamaConfig {
  std::string architecture = "llama";  // "llama" or "qwen2" (q/k/v biases)
  int dim = 0;
  int hidden_dim = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int vocab_size = 0;
  int seq_len = 0;   // context length the model was trained for (the largest KV cache)
  int head_dim = 0;  // 0: dim / n_heads
  float rope_base = 10000.0f;
  float rope_scale = 1.0f;  // linear RoPE scaling: positions are divided by this
  RopeStyle rope_style = RopeStyle::adjacent_pairs;
  float norm_eps = 1e-5f;
  bool shared_classifier = true;  // the output projection is the token embedding
  bool qkv_bias = false;          // q, k and v projections carry biases (Qwen2)

  int head_size() const { return head_dim > 0 ? head_dim : dim / n_heads; }
  int q_dim() const { return n_heads * head_size(); }
  int kv_dim() const { return n_kv_heads * head_size(); }
};

// A weight matrix (rows = out_features) as its file stores it.
class StoredMatrix {
 public:
  StoredMatrix() = default;
  StoredMatrix(RowMatrixXf m) : dense_(std::make_shared<const RowMatrixXf>(std::move(m))) {}  // NOLINT: implicit on purpose
  StoredMatrix(std::shared_ptr<const RowMatrixXf> m) : dense_(std::move(m)) {}
  StoredMatrix(QuantizedMatrix q) : quantized_(std::make_shared<const QuantizedMatrix>(std::move(q))) {}
  StoredMatrix(std::shared_ptr<const QuantizedMatrix> q) : quantized_(std::move(q)) {}
  StoredMatrix(Int8Matrix q) : int8_(std::make_shared<Int8Matrix>(std::move(q))), int8_owned_(true) {}
  StoredMatrix(std::shared_ptr<const Int8Matrix> q) : int8_(std::move(q)) {}

  bool empty() const { return !dense_ && !quantized_ && !int8_; }
  bool is_float() const { return dense_ != nullptr; }
  bool is_quantized() const { return quantized_ != nullptr; }  // 4-bit
  bool is_int8() const { return int8_ != nullptr; }

  Eigen::Index rows() const {
    if (dense_) return dense_->rows();
    if (quantized_) return static_cast<Eigen::Index>(quantized_->rows());
    return int8_ ? static_cast<Eigen::Index>(int8_->rows()) : 0;
  }
  Eigen::Index cols() const {
    if (dense_) return dense_->cols();
    if (quantized_) return static_cast<Eigen::Index>(quantized_->cols());
    return int8_ ? static_cast<Eigen::Index>(int8_->cols()) : 0;
  }

  // The fp32 weights; only for a float matrix (the quantization pipeline's input).
  const RowMatrixXf& dense() const {
    detail::require(dense_ != nullptr, "weight matrix is ", describe(), ", expected fp32 (decode it first)");
    return *dense_;
  }
  const std::shared_ptr<const RowMatrixXf>& dense_ptr() const { return dense_; }
  const std::shared_ptr<const QuantizedMatrix>& quantized_ptr() const { return quantized_; }
  const std::shared_ptr<const Int8Matrix>& int8_ptr() const { return int8_; }

  // An 8-bit matrix put in layout l (no-op otherwise). When this is the only holder of
  // a matrix it created, the storage is reordered in place (no second copy, which
  // would raise a run's peak memory by the whole tensor); else a reordered copy
  // replaces this one's pointer and other holders keep theirs.
  void set_int8_layout(Int8Layout l) {
    if (!int8_ || int8_->layout() == l) return;
    if (int8_owned_ && int8_.use_count() == 1) {
      // Created non-const by this class (make_shared<Int8Matrix>), so writing is allowed.
      auto& m = const_cast<Int8Matrix&>(*int8_);
      m = std::move(m).with_layout(l);
    } else {
      int8_ = std::make_shared<Int8Matrix>(int8_->with_layout(l));
      int8_owned_ = true;
    }
  }

  // The weights in fp32, decoded when quantized.
  RowMatrixXf to_float() const {
    if (dense_) return *dense_;
    if (int8_) return int8_->dequantize();
    detail::require(quantized_ != nullptr, "weight matrix is empty");
    return quantized_->dequantize();
  }

  // Row r in fp32 (the embedding lookup), into out[0, cols).
  void row_to_float(Eigen::Index r, float* out) const {
    detail::require(r >= 0 && r < rows(), "row ", r, " of a ", rows(), "-row matrix");
    if (dense_) {
      for (Eigen::Index c = 0; c < dense_->cols(); ++c) out[c] = (*dense_)(r, c);
      return;
    }
    if (int8_) {
      int8_->dequantize_row(static_cast<std::size_t>(r), out);
      return;
    }
    for (std::size_t c = 0; c < quantized_->cols(); ++c) out[c] = quantized_->value(static_cast<std::size_t>(r), c);
  }

  // Bytes of the weights as held (fp32: 4 per value; quantized: codes, scales, zeros).
  std::size_t bytes() const {
    if (dense_) return static_cast<std::size_t>(dense_->size()) * sizeof(float);
    if (int8_) return int8_->storage_bytes();
    return quantized_ ? quantized_->storage_bytes() : 0;
  }

  std::string describe() const {
    if (dense_) return "fp32";
    if (quantized_) return std::string("4-bit ") + to_string(quantized_->codebook());
    if (int8_) return "8-bit (Q8_0)";
    return "empty";
  }

 private:
  std::shared_ptr<const RowMatrixXf> dense_;
  std::shared_ptr<const QuantizedMatrix> quantized_;
  std::shared_ptr<const Int8Matrix> int8_;
  bool int8_owned_ = false;  // int8_ points to a non-const Int8Matrix this class made
};

struct LlamaLayer {
  Eigen::VectorXf rms_att, rms_ffn;
  StoredMatrix wq, wk, wv, wo, w1, w2, w3;  // w1 = gate, w3 = up, w2 = down
  Eigen::VectorXf bq, bk, bv;               // biases when config.qkv_bias, else empty
};

struct LlamaWeights {
  LlamaConfig config;
  StoredMatrix token_embedding;  // vocab × dim
  std::vector<LlamaLayer> layers;
  Eigen::VectorXf rms_final;
  StoredMatrix wcls;  // vocab × dim; empty when the classifier is the embedding

  const StoredMatrix& classifier() const { return config.shared_classifier ? token_embedding : wcls; }

  // Everything the weights take as held: matrices, norm gains, biases.
  std::size_t bytes() const {
    std::size_t n = token_embedding.bytes() + wcls.bytes() + static_cast<std::size_t>(rms_final.size()) * 4;
    for (const auto& l : layers) {
      for (const StoredMatrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3}) n += m->bytes();
      n += static_cast<std::size_t>(l.rms_att.size() + l.rms_ffn.size() + l.bq.size() + l.bk.size() + l.bv.size()) * 4;
    }
    return n;
  }
};

// Checks the hyper-parameters against each other and against the weights' shapes, so
// a loader's mistakes (or a lying file) surface as one clear error, not a crash later.
// `what` names the source in messages.
inline void validate_config(const LlamaConfig& c, const std::string& what) {
  auto range = [&](const char* name, long long v, long long lo, long long hi) {
    detail::require(v >= lo && v <= hi, what, ": ", name, " = ", v, " is out of range (expected ", lo, "..", hi, ")");
  };
  range("dim", c.dim, 2, 1 << 16);
  range("hidden_dim", c.hidden_dim, 1, 1 << 18);
  range("n_layers", c.n_layers, 1, 1 << 10);
  range("n_heads", c.n_heads, 1, c.dim);
  range("n_kv_heads", c.n_kv_heads, 1, c.n_heads);
  range("vocab_size", c.vocab_size, 1, 1 << 21);
  range("seq_len", c.seq_len, 1, 1 << 20);
  range("head_dim", c.head_dim, 0, 1 << 12);
  detail::require(c.head_dim > 0 || c.dim % c.n_heads == 0, what, ": dim ", c.dim, " is not a multiple of n_heads ",
                  c.n_heads);
  detail::require(c.n_heads % c.n_kv_heads == 0, what, ": n_heads ", c.n_heads, " is not a multiple of n_kv_heads ",
                  c.n_kv_heads);
  detail::require(c.head_size() % 2 == 0, what, ": head_size ", c.head_size(), " is odd (RoPE rotates pairs)");
  detail::require(std::isfinite(c.rope_base) && c.rope_base > 1.0f, what, ": RoPE base ", c.rope_base,
                  " (expected > 1)");
  detail::require(std::isfinite(c.rope_scale) && c.rope_scale > 0.0f, what, ": RoPE scale ", c.rope_scale,
                  " (expected > 0)");
  detail::require(std::isfinite(c.norm_eps) && c.norm_eps > 0.0f && c.norm_eps < 1.0f, what, ": RMSNorm epsilon ",
                  c.norm_eps, " (expected 0 < eps < 1)");
}

inline void validate_weights(const LlamaWeights& w, const std::string& what) {
  const LlamaConfig& c = w.config;
  validate_config(c, what);
  auto shape = [&](const StoredMatrix& m, Eigen::Index rows, Eigen::Index cols, const std::string& name) {
    detail::require(!m.empty(), what, ": missing tensor ", name);
    detail::require(m.rows() == rows && m.cols() == cols, what, ": tensor ", name, " is ", m.rows(), " x ", m.cols(),
                    ", expected ", rows, " x ", cols);
  };
  auto vec = [&](const Eigen::VectorXf& v, Eigen::Index n, const std::string& name) {
    detail::require(v.size() == n, what, ": vector ", name, " has ", v.size(), " values, expected ", n);
  };
  shape(w.token_embedding, c.vocab_size, c.dim, "token embedding");
  if (!c.shared_classifier) shape(w.wcls, c.vocab_size, c.dim, "output projection");
  vec(w.rms_final, c.dim, "final norm");
  detail::require(w.layers.size() == static_cast<std::size_t>(c.n_layers), what, ": ", w.layers.size(),
                  " layers, expected ", c.n_layers);
  for (std::size_t i = 0; i < w.layers.size(); ++i) {
    const LlamaLayer& l = w.layers[i];
    const std::string p = "layer " + std::to_string(i) + " ";
    vec(l.rms_att, c.dim, p + "attention norm");
    vec(l.rms_ffn, c.dim, p + "ffn norm");
    shape(l.wq, c.q_dim(), c.dim, p + "wq");
    shape(l.wk, c.kv_dim(), c.dim, p + "wk");
    shape(l.wv, c.kv_dim(), c.dim, p + "wv");
    shape(l.wo, c.dim, c.q_dim(), p + "wo");
    shape(l.w1, c.hidden_dim, c.dim, p + "w1 (gate)");
    shape(l.w2, c.dim, c.hidden_dim, p + "w2 (down)");
    shape(l.w3, c.hidden_dim, c.dim, p + "w3 (up)");
    if (c.qkv_bias) {
      vec(l.bq, c.q_dim(), p + "q bias");
      vec(l.bk, c.kv_dim(), p + "k bias");
      vec(l.bv, c.kv_dim(), p + "v bias");
    }
  }
}

}  // namespace nibble::model
