// A Llama-family transformer whose linear layers are either fp32 matrices or nibble
// QuantizedMatrix objects, plus perplexity / KL evaluation.
//
// The forward pass works on a chunk of tokens at once (rows of X are positions) with a
// KV cache, so the same code scores a whole text (one chunk) and generates text (chunks
// of one token). Per layer:
//   x += wo · attention(rope(wq·rms(x) + bq), rope(wk·rms(x) + bk), wv·rms(x) + bv)
//   x += w2 · (silu(w1·rms(x)) ⊙ (w3·rms(x)))
// RMSNorm g·x/sqrt(mean(x²)+eps); RoPE rotates pairs of a head (config.rope_style) by
// (pos/rope_scale)·base^(−2i/head_size); causal attention scaled by 1/sqrt(head_size),
// query head h reads kv head h / (n_heads / n_kv_heads); logits = output · rms(x,
// rms_final), the output projection being the token embedding when they are tied.
// Biases exist only for architectures that have them (Qwen2's q, k, v).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/workers.hpp"
#include "../format/quantized_matrix.hpp"
#include "../kernels/attention.hpp"
#include "../kernels/gemv.hpp"
#include "../kernels/int8_gemv.hpp"
#include "../kernels/packed_matrix.hpp"
#include "../kernels/softmax.hpp"
#include "../quant/linalg.hpp"
#include "../quant/rtn.hpp"
#include "llama2c.hpp"
#include "llama_weights.hpp"

namespace nibble::model {

// How a quantized linear layer computes y = W·x.
enum class LinearBackend {
  dequantized,   // weights decoded once to fp32, Eigen product (a cross-check of the kernels)
  kernel_exact,  // nibble::gemm from the packed weights, fp32 activations
  kernel_fast,   // nibble::gemm from the packed weights, activations quantized to int8 per block
};

inline const char* to_string(LinearBackend b) {
  switch (b) {
    case LinearBackend::dequantized: return "dequantized";
    case LinearBackend::kernel_exact: return "exact";
    case LinearBackend::kernel_fast: return "fast";
  }
  return "?";
}

// One linear layer y = W·x, W rows = out_features. Holds fp32 weights, or what the
// chosen backend needs of quantized ones: the kernels' PackedMatrix / Int8Matrix (the
// QuantizedMatrix itself is not kept: unpack() gives it back), or decoded fp32.
class Linear {
 public:
  Linear() = default;
  explicit Linear(RowMatrixXf weights, int threads = 1)
      : Linear(std::make_shared<const RowMatrixXf>(std::move(weights)), threads) {}
  // threads: how many threads each product splits its output rows over.
  explicit Linear(std::shared_ptr<const RowMatrixXf> weights, int threads = 1) : dense_(std::move(weights)) {
    detail::require(dense_ != nullptr, "Linear: null weights");
    detail::require(threads >= 1 && threads <= kMaxThreads, "Linear: threads = ", threads);
    rows_ = dense_->rows();
    cols_ = dense_->cols();
    options_.threads = threads;
  }
  // threads: how many threads each kernel call splits its rows over. arena: where the
  // packed arrays go (PackedMatrix; a model puts all its matrices in one).
  Linear(const std::shared_ptr<const QuantizedMatrix>& q, LinearBackend backend, int threads = 1,
         WeightArena* arena = nullptr)
      : backend_(backend) {
    detail::require(q != nullptr, "Linear: null QuantizedMatrix");
    detail::require(threads >= 1 && threads <= kMaxThreads, "Linear: threads = ", threads);
    rows_ = static_cast<Eigen::Index>(q->rows());
    cols_ = static_cast<Eigen::Index>(q->cols());
    options_.threads = threads;
    if (backend == LinearBackend::dequantized) {
      dense_ = std::make_shared<const RowMatrixXf>(q->dequantize());
    } else {
      packed_ = std::make_shared<const PackedMatrix>(*q, preferred_code_layout(selected_isa()), arena);
      options_.mode = backend == LinearBackend::kernel_fast ? ActivationMode::fast : ActivationMode::exact;
    }
  }

  // 8-bit weights (a GGUF Q8_0 tensor) on the 8-bit kernels; the backend picks the
  // activation mode as for 4-bit weights (dequantized: decoded once to fp32).
  Linear(std::shared_ptr<const Int8Matrix> q, LinearBackend backend, int threads = 1) : backend_(backend) {
    detail::require(q != nullptr, "Linear: null Int8Matrix");
    rows_ = static_cast<Eigen::Index>(q->rows());
    cols_ = static_cast<Eigen::Index>(q->cols());
    if (backend == LinearBackend::dequantized) {
      dense_ = std::make_shared<const RowMatrixXf>(q->dequantize());
    } else {
      int8_ = std::move(q);
      options_.mode = backend == LinearBackend::kernel_fast ? ActivationMode::fast : ActivationMode::exact;
      options_.threads = threads;
    }
  }

  bool empty() const { return rows_ == 0; }
  void set_threads(int threads) {
    detail::require(threads >= 1 && threads <= kMaxThreads, "Linear: threads = ", threads);
    options_.threads = threads;
  }
  bool runs_on_kernels() const { return packed_ != nullptr || int8_ != nullptr; }
  LinearBackend backend() const { return backend_; }
  Eigen::Index rows() const { return rows_; }
  Eigen::Index cols() const { return cols_; }

  // The fp32 weights this layer computes with (decoded ones when quantized).
  RowMatrixXf weights() const {
    if (packed_) return packed_->unpack().dequantize();
    if (int8_) return int8_->dequantize();
    return *dense_;
  }

  // Y = X·Wᵀ for a batch of inputs X (one per row).
  void apply(const RowMatrixXf& X, RowMatrixXf& Y) const {
    detail::require(X.cols() == cols_, "Linear: input has ", X.cols(), " features, expected ", cols_);
    Y.resize(X.rows(), rows_);
    if (packed_) {
      if (X.rows() > 0) gemm(*packed_, X.data(), static_cast<std::size_t>(X.rows()), Y.data(), options_);
    } else if (int8_) {
      if (X.rows() > 0) gemm(*int8_, X.data(), static_cast<std::size_t>(X.rows()), Y.data(), options_);
    } else {
      apply_dense(X, Y);
    }
  }

 private:
  // fp32 product. The output rows go in fixed blocks of kDenseBlockRows, each its own
  // Eigen product, dealt to options_.threads threads: the blocks do not depend on the
  // thread count, so neither does the result. A product too small to pay for waking a
  // thread runs all blocks on the caller's.
  static constexpr Eigen::Index kDenseBlockRows = 64;
  // Each block Y[:, r0:r0+r] = X·W[r0:r0+r]ᵀ is computed as its transpose, a column-major
  // view of Y's storage, by detail::gemm: Eigen's product, or a BLAS's where the program
  // enables one (quant/linalg.hpp) — Eigen is compiled for SSE2 only, OpenBLAS picks
  // AVX2 / AVX-512 kernels at run time, which is what fp32 calibration passes need.
  void dense_block(const RowMatrixXf& X, RowMatrixXf& Y, Eigen::Index r0, Eigen::Index r) const {
    Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>> Yt(Y.data() + r0, r, X.rows(), Eigen::OuterStride<>(rows_));
    detail::gemm(Yt, dense_->middleRows(r0, r), X.transpose(), 1.0f, false);
  }
  void apply_dense(const RowMatrixXf& X, RowMatrixXf& Y) const {
    const Eigen::Index blocks = (rows_ + kDenseBlockRows - 1) / kDenseBlockRows;
    if (blocks <= 1) {
      dense_block(X, Y, 0, rows_);
      return;
    }
    constexpr Eigen::Index kMinWeightsPerThread = Eigen::Index{1} << 17;
    const Eigen::Index work = rows_ * cols_ * std::max<Eigen::Index>(1, X.rows());
    const Eigen::Index n = std::min<Eigen::Index>({options_.threads, blocks, std::max<Eigen::Index>(1, work / kMinWeightsPerThread)});
    const std::function<void(std::size_t)> task = [&](std::size_t t) {
      for (Eigen::Index b = blocks * static_cast<Eigen::Index>(t) / n; b < blocks * static_cast<Eigen::Index>(t + 1) / n; ++b) {
        const Eigen::Index r0 = b * kDenseBlockRows, r = std::min(kDenseBlockRows, rows_ - r0);
        dense_block(X, Y, r0, r);
      }
    };
    detail::ThreadPool::instance().run(static_cast<std::size_t>(n), task);
  }

  std::shared_ptr<const RowMatrixXf> dense_;
  Eigen::Index rows_ = 0, cols_ = 0;
  std::shared_ptr<const PackedMatrix> packed_;
  std::shared_ptr<const Int8Matrix> int8_;
  GemvOptions options_;
  LinearBackend backend_ = LinearBackend::dequantized;
};

// Which linear layers a captured activation feeds.
enum class LinearSite {
  attention_input,   // rms(x): input of wq, wk, wv
  attention_output,  // attention result: input of wo
  ffn_input,         // rms(x): input of w1, w3
  ffn_hidden,        // silu(w1·x) ⊙ w3·x: input of w2
};
// X is a per-thread buffer of the forward pass: copy what you keep, and do not run the
// model from inside the hook on the same thread.
using ActivationHook = std::function<void(int layer, LinearSite site, const RowMatrixXf& X)>;

struct TransformerLayer {
  Eigen::VectorXf rms_att, rms_ffn;
  Linear wq, wk, wv, wo, w1, w2, w3;
  Eigen::VectorXf bq, bk, bv;  // empty unless the architecture has q/k/v biases
  // q|k|v and gate|up stacked into one matrix each (built by from_weights when the
  // weights are 4-bit in one format): one kernel call and one activation preparation
  // instead of three / two; wq, wk, wv (w1, w3) are then empty. Each output row is
  // computed as in its own matrix, so results are the same bit for bit.
  Linear wqkv, w13;
};

// Keys and values of every past position, per layer. Rows are allocated for the
// capacity asked for (new_cache), not for the model's whole context. Each KV head's
// positions are contiguous (head g at rows [g·capacity, (g+1)·capacity), one head_size
// row per position): decode reads a head's keys and values as two plain streams, where
// position-major rows (every head side by side) made it stride through them.
struct KvCache {
  std::vector<RowMatrixXf> keys, values;  // per layer: n_kv_heads·capacity × head_size
  int length = 0;
  int positions = 0;  // capacity
  int capacity() const { return positions; }
};

// How quantized weights run when a Transformer is built from LlamaWeights.
struct RuntimeOptions {
  LinearBackend backend = LinearBackend::kernel_fast;
  int threads = 1;                   // threads per kernel call
  bool stack_projections = true;     // q|k|v and gate|up as one matrix each (TransformerLayer)
};

struct Transformer {
  LlamaConfig config;
  // Attention's query rows go in blocks of this many (see attention()).
  static constexpr Eigen::Index kAttentionBlock = 64;
  // Chunks of at most this many rows (decode) take attention one row at a time.
  static constexpr Eigen::Index kRowByRowRows = 4;
  StoredMatrix token_embedding;
  Linear output;  // vocab × dim: the classifier (shares the embedding's storage when tied)
  std::vector<TransformerLayer> layers;
  Eigen::VectorXf rms_final;

  static Linear make_linear(const StoredMatrix& m, const RuntimeOptions& o, WeightArena* arena) {
    if (m.is_quantized()) return Linear(m.quantized_ptr(), o.backend, o.threads, arena);
    if (m.is_int8()) return Linear(m.int8_ptr(), o.backend, o.threads);
    return Linear(m.dense_ptr(), o.threads);
  }

  // The matrices stacked, when all are 4-bit in one format the kernels can stack.
  static std::shared_ptr<const QuantizedMatrix> stacked(std::initializer_list<const StoredMatrix*> parts,
                                                        const RuntimeOptions& o) {
    if (o.backend == LinearBackend::dequantized || !o.stack_projections) return nullptr;
    std::vector<const QuantizedMatrix*> q;
    for (const StoredMatrix* m : parts) {
      if (!m->is_quantized()) return nullptr;
      const QuantizedMatrix& a = *m->quantized_ptr();
      if (!rows_stackable(*parts.begin()[0]->quantized_ptr(), a)) return nullptr;
      q.push_back(&a);
    }
    return std::make_shared<const QuantizedMatrix>(concat_rows(q));
  }

  static Transformer from_weights(const LlamaWeights& w, const RuntimeOptions& o = {}) {
    LlamaWeights copy = w;  // shares the matrices (StoredMatrix holds shared pointers)
    return from_weights(std::move(copy), o);
  }

  // Consumes w: each layer's stored matrices are let go once the layer is built, so
  // memory never holds two copies of the whole model (the caller's other references to
  // the same matrices, if any, keep them alive).
  static Transformer from_weights(LlamaWeights&& w, const RuntimeOptions& o = {}) {
    validate_weights(w, "model");
    // 8-bit matrices (GGUF Q8_0) in the layout this CPU's fast kernels read best; the
    // tied embedding is reordered once, in place, and serves both its uses.
    if (o.backend == LinearBackend::kernel_fast) {
      const Int8Layout l = preferred_int8_layout();
      w.token_embedding.set_int8_layout(l);
      w.wcls.set_int8_layout(l);
      for (LlamaLayer& layer : w.layers)
        for (StoredMatrix* m : {&layer.wq, &layer.wk, &layer.wv, &layer.wo, &layer.w1, &layer.w2, &layer.w3})
          m->set_int8_layout(l);
    }
    // Every packed 4-bit matrix in a few huge-page mappings (core/weight_arena.hpp):
    // decode streams them all once per token, and most are smaller than one huge page.
    WeightArena arena;
    Transformer t;
    t.config = w.config;
    t.attention_threads = o.threads;
    t.token_embedding = w.token_embedding;
    t.output = make_linear(w.classifier(), o, &arena);
    t.rms_final = w.rms_final;
    for (auto& l : w.layers) {
      TransformerLayer L;
      L.rms_att = l.rms_att;
      L.rms_ffn = l.rms_ffn;
      L.bq = l.bq, L.bk = l.bk, L.bv = l.bv;
      if (auto qkv = stacked({&l.wq, &l.wk, &l.wv}, o)) {
        L.wqkv = Linear(qkv, o.backend, o.threads, &arena);
      } else {
        L.wq = make_linear(l.wq, o, &arena), L.wk = make_linear(l.wk, o, &arena), L.wv = make_linear(l.wv, o, &arena);
      }
      if (auto up = stacked({&l.w1, &l.w3}, o)) {
        L.w13 = Linear(up, o.backend, o.threads, &arena);
      } else {
        L.w1 = make_linear(l.w1, o, &arena), L.w3 = make_linear(l.w3, o, &arena);
      }
      L.wo = make_linear(l.wo, o, &arena);
      L.w2 = make_linear(l.w2, o, &arena);
      t.layers.push_back(std::move(L));
      l = LlamaLayer();
      detail::release_free_heap();  // the layer's source matrices, now packed in the arena
    }
    return t;
  }

  // Threads per product of every linear layer from now on.
  void set_threads(int threads) {
    detail::require(threads >= 1 && threads <= kMaxThreads, "Transformer: threads = ", threads);
    attention_threads = threads;
    output.set_threads(threads);
    for (TransformerLayer& L : layers)
      for (Linear* l : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w1, &L.w2, &L.w3, &L.wqkv, &L.w13}) l->set_threads(threads);
  }

  // Bytes of a KV cache of `capacity` positions.
  std::size_t cache_bytes(int capacity) const {
    return 2 * static_cast<std::size_t>(config.n_layers) * static_cast<std::size_t>(capacity) *
           static_cast<std::size_t>(config.kv_dim()) * sizeof(float);
  }

  // A cache for up to `capacity` positions (0: the model's whole context).
  KvCache new_cache(int capacity = 0) const {
    if (capacity == 0) capacity = config.seq_len;
    detail::require(capacity > 0 && capacity <= config.seq_len, "KV cache of ", capacity,
                    " positions (the model's context is ", config.seq_len, ")");
    KvCache c;
    c.positions = capacity;
    const Eigen::Index rows = Eigen::Index{config.n_kv_heads} * capacity;
    for (int l = 0; l < config.n_layers; ++l) {
      c.keys.emplace_back(RowMatrixXf::Zero(rows, config.head_size()));
      c.values.emplace_back(RowMatrixXf::Zero(rows, config.head_size()));
    }
    return c;
  }

  RowMatrixXf embed(const std::vector<int>& tokens) const {
    RowMatrixXf X(static_cast<Eigen::Index>(tokens.size()), config.dim);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      detail::require(tokens[i] >= 0 && tokens[i] < config.vocab_size, "token ", tokens[i], " at position ", i,
                      " is out of range (vocab ", config.vocab_size, ")");
      token_embedding.row_to_float(tokens[i], X.row(static_cast<Eigen::Index>(i)).data());
    }
    return X;
  }

  // The sum of squares is taken in double, as ggml does: SmolLM2's residual stream has
  // outlier features thousands of times larger than the rest, and a float sum (serial or
  // vectorized) moved its perplexity by 0.3–0.4% (6.6103 serial, 6.6364 vectorized,
  // 6.6319 this way against llama-perplexity's 6.6302 on the same 8 chunks). Four
  // partial sums keep the loop off one long dependency chain.
  void rms_norm(const RowMatrixXf& X, const Eigen::VectorXf& gain, RowMatrixXf& out) const {
    out.resize(X.rows(), X.cols());
    const Eigen::Index n = X.cols();
    for (Eigen::Index t = 0; t < X.rows(); ++t) {
      const float* x = X.row(t).data();
      double part[4] = {0.0, 0.0, 0.0, 0.0};
      Eigen::Index i = 0;
      for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; ++j) part[j] += static_cast<double>(x[i + j]) * x[i + j];
      for (; i < n; ++i) part[0] += static_cast<double>(x[i]) * x[i];
      const double sum = (part[0] + part[1]) + (part[2] + part[3]);
      const float ss = 1.0f / std::sqrt(static_cast<float>(sum / static_cast<double>(n)) + config.norm_eps);
      out.row(t).array() = gain.transpose().array() * (ss * X.row(t).array());
    }
  }

  // cos and sin of the rotation angles of positions start … start+rows−1: pair i of row
  // t at t·half + i. One table per chunk serves the q and k rows of every layer (decode
  // spent more time in these pow/cos/sin than in some of its matrix products); it is
  // kept per thread and rebuilt when the chunk or the model's RoPE differs.
  struct RopeAngles {
    float base = 0, scale = 0;
    int head_size = 0, start = -1;
    Eigen::Index rows = 0;
    std::vector<float> cos, sin;
  };
  const RopeAngles& rope_angles(int start, Eigen::Index rows) const {
    thread_local RopeAngles a;
    const int hs = config.head_size(), half = hs / 2;
    if (a.base == config.rope_base && a.scale == config.rope_scale && a.head_size == hs && a.start == start &&
        a.rows == rows)
      return a;
    a.base = config.rope_base, a.scale = config.rope_scale, a.head_size = hs, a.start = start, a.rows = rows;
    a.cos.resize(static_cast<std::size_t>(rows * half));
    a.sin.resize(a.cos.size());
    for (int i = 0; i < half; ++i) {  // a pair's frequency once, not once per position
      const float freq = 1.0f / std::pow(config.rope_base, static_cast<float>(2 * i) / static_cast<float>(hs));
      for (Eigen::Index t = 0; t < rows; ++t) {
        const int pos = start + static_cast<int>(t);
        const float p = config.rope_scale == 1.0f ? static_cast<float>(pos) : static_cast<float>(pos) / config.rope_scale;
        const float angle = p * freq;
        a.cos[static_cast<std::size_t>(t * half + i)] = std::cos(angle);
        a.sin[static_cast<std::size_t>(t * half + i)] = std::sin(angle);
      }
    }
    return a;
  }

  // Rotates the pairs of every head of row t by row t's angles.
  void rope(RowMatrixXf& M, Eigen::Index t, const RopeAngles& angles) const {
    const int hs = config.head_size(), half = hs / 2;
    const float* cos = angles.cos.data() + t * half;
    const float* sin = angles.sin.data() + t * half;
    for (int i = 0; i < half; ++i) {
      const float c = cos[i], s = sin[i];
      // Offsets of the pair's two members inside a head.
      const int a = config.rope_style == RopeStyle::adjacent_pairs ? 2 * i : i;
      const int b = config.rope_style == RopeStyle::adjacent_pairs ? 2 * i + 1 : i + half;
      for (Eigen::Index h = 0; h < M.cols(); h += hs) {
        const float v0 = M(t, h + a), v1 = M(t, h + b);
        M(t, h + a) = v0 * c - v1 * s;
        M(t, h + b) = v0 * s + v1 * c;
      }
    }
  }

  // Runs layer l on X (rows = positions cache.length, cache.length+1, …), in place.
  // Writes the layer's keys/values into the cache but leaves cache.length alone.
  void run_layer(int l, RowMatrixXf& X, KvCache& cache, const ActivationHook* hook = nullptr) const {
    const TransformerLayer& L = layers[static_cast<std::size_t>(l)];
    const int start = cache.length;
    detail::require(start + X.rows() <= cache.capacity(), "sequence of ", start + X.rows(),
                    " positions exceeds the KV cache (", cache.capacity(), " positions)");
    // Per-thread buffers, reused by every layer and call: fresh chunk-sized matrices per
    // layer were allocated and faulted in anew each time (glibc hands big blocks back).
    thread_local RowMatrixXf xb, att, h, out;
    rms_norm(X, L.rms_att, xb);
    if (hook) (*hook)(l, LinearSite::attention_input, xb);
    attention(l, xb, cache.keys[static_cast<std::size_t>(l)], cache.values[static_cast<std::size_t>(l)],
              cache.capacity(), start, att);
    if (hook) (*hook)(l, LinearSite::attention_output, att);
    L.wo.apply(att, out);
    X += out;
    rms_norm(X, L.rms_ffn, xb);
    if (hook) (*hook)(l, LinearSite::ffn_input, xb);
    ffn_hidden(l, xb, h);
    if (hook) (*hook)(l, LinearSite::ffn_hidden, h);
    L.w2.apply(h, out);
    X += out;
  }

  // Block l's attention for the normed rows xb at positions start, start+1, …: the q/k/v
  // projections (+ biases), RoPE, this block's keys/values written into rows start… of
  // K and V (KvCache's layout, `capacity` positions per KV head; they hold the earlier
  // positions), causal softmax per head. att gets the heads' outputs side by side: the
  // input of wo.
  void attention(int l, const RowMatrixXf& xb, RowMatrixXf& K, RowMatrixXf& V, int capacity, int start,
                 RowMatrixXf& att) const {
    const TransformerLayer& L = layers[static_cast<std::size_t>(l)];
    const Eigen::Index T = xb.rows();
    detail::require(start + T <= capacity && K.rows() == Eigen::Index{capacity} * config.n_kv_heads &&
                        V.rows() == K.rows() && K.cols() == config.head_size() && V.cols() == K.cols(),
                    "attention: ", start + T, " positions in a KV cache of ", K.rows(), " x ", K.cols(), " for ",
                    capacity, " positions of ", config.n_kv_heads, " heads of ", config.head_size());
    const int hs = config.head_size();
    thread_local RowMatrixXf q, k, v, qkv;  // reused across calls, as run_layer's
    att.resize(T, config.q_dim());
    if (!L.wqkv.empty()) {
      L.wqkv.apply(xb, qkv);
      q = qkv.leftCols(config.q_dim());
      k = qkv.middleCols(config.q_dim(), config.kv_dim());
      v = qkv.rightCols(config.kv_dim());
    } else {
      L.wq.apply(xb, q);
      L.wk.apply(xb, k);
      L.wv.apply(xb, v);
    }
    if (L.bq.size() > 0) {
      q.rowwise() += L.bq.transpose();
      k.rowwise() += L.bk.transpose();
      v.rowwise() += L.bv.transpose();
    }
    const RopeAngles& angles = rope_angles(start, T);
    for (Eigen::Index t = 0; t < T; ++t) {
      rope(q, t, angles);
      rope(k, t, angles);
      for (int g = 0; g < config.n_kv_heads; ++g) {
        K.row(Eigen::Index{g} * capacity + start + t) = k.row(t).segment(g * hs, hs);
        V.row(Eigen::Index{g} * capacity + start + t) = v.row(t).segment(g * hs, hs);
      }
    }
    // Per head: scores S = Q_h·K_hᵀ / sqrt(hs), causal mask, row softmax, O_h = P·V_h.
    // Rows go in blocks of kAttentionBlock so each block only multiplies the keys it can
    // see (about half the work of the full square); matrix products and the
    // per-ISA softmax (kernels/softmax.hpp) keep this O(T²) part from dominating.
    const Isa isa = selected_isa();
    const float inv_sqrt = 1.0f / std::sqrt(static_cast<float>(hs));
    // Heads are independent: a long enough chunk deals them to the threads (head h to
    // task h mod tasks; each head's arithmetic is the same whoever runs it).
    constexpr Eigen::Index kMinScoresPerTask = Eigen::Index{1} << 13;
    const Eigen::Index scores_per_head = T * (start + T) * hs;
    const int tasks = static_cast<int>(std::min<Eigen::Index>(
        {attention_threads, config.n_heads, std::max<Eigen::Index>(1, scores_per_head * config.n_heads / kMinScoresPerTask)}));
    // The lambda runs on pool threads, where the name q would mean their own
    // thread_local; this reference is the caller's.
    const RowMatrixXf& queries = q;
    const std::function<void(std::size_t)> heads = [&](std::size_t task) {
      // One score buffer for every block (a block of rows × n scores is row-major in
      // it), per thread and kept across calls: resizing per block would allocate, and
      // fault in pages, each time.
      thread_local RowMatrixXf qh;
      thread_local std::vector<float> scores;
      scores.resize(static_cast<std::size_t>(std::min(kAttentionBlock, T) * (start + T)));
      for (int h = static_cast<int>(task); h < config.n_heads; h += tasks)
        attention_head(h, queries, K, V, capacity, start, inv_sqrt, isa, qh, scores, att);
    };
    if (tasks <= 1) heads(0);
    else detail::ThreadPool::instance().run(static_cast<std::size_t>(tasks), heads);
  }

  // One head of attention() for the chunk: att's columns of head h.
  void attention_head(int h, const RowMatrixXf& q, const RowMatrixXf& K, const RowMatrixXf& V, int capacity,
                      int start, float inv_sqrt, Isa isa, RowMatrixXf& qh, std::vector<float>& scores,
                      RowMatrixXf& att) const {
    const Eigen::Index T = q.rows();
    const int hs = config.head_size();
    const Eigen::Index kv_row = Eigen::Index{h / (config.n_heads / config.n_kv_heads)} * capacity;  // its KV head's
    qh = q.middleCols(h * hs, hs) * inv_sqrt;
    if (T <= kRowByRowRows) {  // decode: a row at a time (kernels/attention.hpp), no BLAS call
      const auto hsz = static_cast<std::size_t>(hs);
      for (Eigen::Index t = 0; t < T; ++t) {
        const auto valid = static_cast<std::size_t>(start + t + 1);  // causal: positions 0..start+t
        detail::attention_scores(qh.row(t).data(), K.row(kv_row).data(), hsz, valid, hsz, scores.data(), isa);
        detail::softmax(scores.data(), valid, isa);
        detail::attention_mix(scores.data(), V.row(kv_row).data(), hsz, valid, hsz,
                              att.data() + t * att.cols() + h * hs, isa);
      }
      return;
    }
    for (Eigen::Index t0 = 0; t0 < T; t0 += kAttentionBlock) {
      const Eigen::Index rows = std::min(kAttentionBlock, T - t0);
      const Eigen::Index n = start + t0 + rows;  // keys visible to the block's last row
      Eigen::Map<RowMatrixXf> S(scores.data(), rows, n);
      // S = Q·Kᵀ, computed as its column-major transpose K·Qᵀ (detail::gemm: BLAS or Eigen).
      Eigen::Map<Eigen::MatrixXf> St(scores.data(), n, rows);
      detail::gemm(St, K.middleRows(kv_row, n), qh.middleRows(t0, rows).transpose(), 1.0f, false);
      for (Eigen::Index r = 0; r < rows; ++r) {
        const Eigen::Index valid = start + t0 + r + 1;  // causal: positions 0..start+t0+r
        detail::softmax(S.row(r).data(), static_cast<std::size_t>(valid), isa);
        S.row(r).tail(n - valid).setZero();
      }
      // O_h = P·V_h for the block's rows, likewise as O_hᵀ = V_hᵀ·Pᵀ in att's storage.
      Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>> Ot(att.data() + t0 * att.cols() + h * hs, hs, rows,
                                                              Eigen::OuterStride<>(att.cols()));
      detail::gemm(Ot, V.middleRows(kv_row, n).transpose(), St, 1.0f, false);
    }
  }

  // Block l's feed-forward hidden state for the normed rows xb: silu(w1·xb) ⊙ w3·xb,
  // the input of w2.
  void ffn_hidden(int l, const RowMatrixXf& xb, RowMatrixXf& h) const {
    const TransformerLayer& L = layers[static_cast<std::size_t>(l)];
    thread_local RowMatrixXf h3, h13;  // reused across calls, as run_layer's
    const Eigen::Index rows = xb.rows(), cols = config.hidden_dim;
    // Row t's gate and up halves: gate | up side by side in h13, or h and h3.
    const float* gate = nullptr;
    const float* up = nullptr;
    Eigen::Index stride = 0;
    if (!L.w13.empty()) {
      L.w13.apply(xb, h13);
      h.resize(rows, cols);
      gate = h13.data(), up = h13.data() + cols, stride = h13.cols();
    } else {
      L.w1.apply(xb, h);
      L.w3.apply(xb, h3);
      gate = h.data(), up = h3.data(), stride = cols;
    }
    // silu(gate) ⊙ up (kernels/softmax.hpp), row by row; a long chunk deals its rows to
    // the threads.
    const Isa isa = selected_isa();
    float* out = h.data();
    constexpr Eigen::Index kMinElementsPerTask = Eigen::Index{1} << 14;
    const int tasks = static_cast<int>(
        std::min<Eigen::Index>({attention_threads, rows, std::max<Eigen::Index>(1, rows * cols / kMinElementsPerTask)}));
    const std::function<void(std::size_t)> silu_rows = [&](std::size_t task) {
      for (Eigen::Index t = rows * static_cast<Eigen::Index>(task) / tasks;
           t < rows * static_cast<Eigen::Index>(task + 1) / tasks; ++t)
        detail::silu_mul(gate + t * stride, up + t * stride, out + t * cols, static_cast<std::size_t>(cols), isa);
    };
    if (tasks <= 1) silu_rows(0);
    else detail::ThreadPool::instance().run(static_cast<std::size_t>(tasks), silu_rows);
  }

  RowMatrixXf logits(const RowMatrixXf& X) const {
    RowMatrixXf xn, out;
    rms_norm(X, rms_final, xn);
    output.apply(xn, out);
    return out;
  }

  // Logits for each token of the chunk (row i predicts the token after tokens[i]).
  RowMatrixXf forward(const std::vector<int>& tokens, KvCache& cache, const ActivationHook* hook = nullptr) const {
    RowMatrixXf X = embed(tokens);
    for (int l = 0; l < config.n_layers; ++l) run_layer(l, X, cache, hook);
    cache.length += static_cast<int>(tokens.size());
    return logits(X);
  }

  // The logits of the chunk's last token only (what generation needs after a prompt):
  // the output projection runs on one row, not on every position (for a 512-token
  // prompt of a 49,152-token vocabulary that is 100 MB of logits not made).
  RowMatrixXf forward_last(const std::vector<int>& tokens, KvCache& cache) const {
    RowMatrixXf X = embed(tokens);
    for (int l = 0; l < config.n_layers; ++l) run_layer(l, X, cache);
    cache.length += static_cast<int>(tokens.size());
    return logits(X.bottomRows(1));
  }

  int attention_threads = 1;  // threads of attention's heads and the FFN's gating (set_threads)
};

// Runs body(i) for i in [0, n) on `threads` threads (i dealt round-robin), rethrowing
// the first exception on the calling thread. Callers keep per-index results, so the
// outcome does not depend on the thread count.
template <class Body>
void parallel_for(std::size_t n, int threads, Body&& body) {
  detail::require(threads >= 1, "threads = ", threads, " (expected >= 1)");
  if (threads == 1 || n <= 1) {
    for (std::size_t i = 0; i < n; ++i) body(i);
    return;
  }
  auto worker = [&](int k) {
    for (std::size_t i = static_cast<std::size_t>(k); i < n; i += static_cast<std::size_t>(threads)) body(i);
  };
  nibble::detail::run_workers(threads, worker);
}

// Tokenizes stories as BOS + text, cut to at most max_len tokens.
inline std::vector<std::vector<int>> tokenize_stories(const Tokenizer& tok, const std::vector<std::string>& stories,
                                                      int max_len) {
  std::vector<std::vector<int>> out;
  for (const auto& s : stories) {
    std::vector<int> t = tok.encode(s, true, false);
    if (static_cast<int>(t.size()) > max_len) t.resize(static_cast<std::size_t>(max_len));
    out.push_back(std::move(t));
  }
  return out;
}

struct EvalResult {
  double nll_sum = 0.0;  // nats
  double kl_sum = 0.0;   // nats, KL(reference ‖ model) summed over tokens
  std::size_t tokens = 0;
  double seconds = 0.0;

  double perplexity() const { return std::exp(nll_sum / static_cast<double>(tokens)); }
  double mean_kl() const { return kl_sum / static_cast<double>(tokens); }
  double tokens_per_second() const { return seconds > 0.0 ? static_cast<double>(tokens) / seconds : 0.0; }
};

// Log-softmax of each row, computed in double.
inline RowMatrixXf log_softmax_rows(const RowMatrixXf& logits) {
  RowMatrixXf out(logits.rows(), logits.cols());
  for (Eigen::Index t = 0; t < logits.rows(); ++t) {
    const float mx = logits.row(t).maxCoeff();
    double sum = 0.0;
    for (Eigen::Index i = 0; i < logits.cols(); ++i) sum += std::exp(static_cast<double>(logits(t, i) - mx));
    const double lse = static_cast<double>(mx) + std::log(sum);
    for (Eigen::Index i = 0; i < logits.cols(); ++i)
      out(t, i) = static_cast<float>(static_cast<double>(logits(t, i)) - lse);
  }
  return out;
}

// Scores every token after the first of each sequence: perplexity, and mean
// KL(reference ‖ model) when reference log-probabilities are given. keep, if given,
// receives this model's log-probabilities (to serve as a later reference). Sequences
// are split across threads; per-sequence sums are added in sequence order, so the
// result does not depend on the thread count.
inline EvalResult evaluate(const Transformer& model, const std::vector<std::vector<int>>& sequences, int threads = 1,
                           const std::vector<RowMatrixXf>* reference = nullptr,
                           std::vector<RowMatrixXf>* keep = nullptr) {
  detail::require(threads >= 1, "threads = ", threads, " (expected >= 1)");
  if (reference)
    detail::require(reference->size() == sequences.size(), "reference has ", reference->size(),
                    " sequences, expected ", sequences.size());
  const std::size_t n = sequences.size();
  std::vector<double> nll(n, 0.0), kl(n, 0.0);
  if (keep) keep->assign(n, RowMatrixXf());
  const auto t0 = std::chrono::steady_clock::now();
  parallel_for(n, threads, [&](std::size_t s) {
    const std::vector<int>& seq = sequences[s];
    if (seq.size() < 2) return;
    const std::vector<int> inputs(seq.begin(), seq.end() - 1);
    KvCache cache = model.new_cache(static_cast<int>(inputs.size()));
    const RowMatrixXf lp = log_softmax_rows(model.forward(inputs, cache));
    for (Eigen::Index t = 0; t < lp.rows(); ++t) nll[s] -= lp(t, seq[static_cast<std::size_t>(t) + 1]);
    if (reference) {
      const RowMatrixXf& ref = (*reference)[s];
      detail::require(ref.rows() == lp.rows() && ref.cols() == lp.cols(), "reference log-probs of sequence ", s,
                      " have the wrong shape");
      for (Eigen::Index t = 0; t < lp.rows(); ++t) {
        double d = 0.0;
        for (Eigen::Index i = 0; i < lp.cols(); ++i)
          d += std::exp(static_cast<double>(ref(t, i))) * (static_cast<double>(ref(t, i)) - lp(t, i));
        kl[s] += d;
      }
    }
    if (keep) (*keep)[s] = lp;
  });
  EvalResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (std::size_t s = 0; s < n; ++s) {
    r.nll_sum += nll[s];
    r.kl_sum += kl[s];
    if (sequences[s].size() >= 2) r.tokens += sequences[s].size() - 1;
  }
  detail::require(r.tokens > 0, "nothing to score: every sequence has fewer than 2 tokens");
  return r;
}

}  // namespace nibble::model
