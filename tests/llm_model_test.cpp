// Real-model pieces: the Transformer against a naive double-precision reference (GQA,
// both RoPE styles, RoPE scaling, biases, explicit head size, norm eps), the GGUF model
// loader on generated files (tensor names, hyper-parameters, 4-bit import, errors),
// llama.cpp's perplexity protocol, its saved-logits format and ChatML prompts.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/io/llama_logits.hpp>
#include <nibble/model/chat.hpp>
#include <nibble/model/gguf_model.hpp>
#include <nibble/model/llama2c.hpp>
#include <nibble/model/perplexity.hpp>
#include <nibble/model/transformer.hpp>

#include "llm_test_models.hpp"
#include "test_util.hpp"

namespace llm_model_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

namespace {

using namespace nibble;
using namespace nibble::model;
using test::random_matrix;
using test::random_vector;
using test::random_model;
using test::WrittenModel;

const std::string kData = std::string(NIBBLE_SOURCE_DIR) + "/examples/data/";

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "llm_model_" + std::to_string(::getpid()) + "_" + name;
}

// The forward pass written out element by element in double precision, one position
// at a time, from the textbook definitions (an independent check of transformer.hpp).
std::vector<std::vector<double>> reference_logits(const LlamaWeights& w, const std::vector<int>& tokens) {
  const LlamaConfig& c = w.config;
  const int hs = c.head_size(), half = hs / 2, T = static_cast<int>(tokens.size());
  using Vec = std::vector<double>;
  auto matvec = [](const RowMatrixXf& W, const Vec& x) {
    Vec y(static_cast<std::size_t>(W.rows()), 0.0);
    for (Eigen::Index r = 0; r < W.rows(); ++r)
      for (Eigen::Index k = 0; k < W.cols(); ++k) y[static_cast<std::size_t>(r)] += double(W(r, k)) * x[static_cast<std::size_t>(k)];
    return y;
  };
  auto rms = [&](const Vec& x, const Eigen::VectorXf& g) {
    double ss = 0.0;
    for (double v : x) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / double(x.size()) + double(c.norm_eps));
    Vec y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = double(g(static_cast<Eigen::Index>(i))) * x[i] * inv;
    return y;
  };
  auto rope = [&](Vec& v, int pos) {
    for (std::size_t h = 0; h < v.size(); h += static_cast<std::size_t>(hs))
      for (int i = 0; i < half; ++i) {
        const double angle = pos / double(c.rope_scale) * std::pow(double(c.rope_base), -2.0 * i / hs);
        const std::size_t a = h + static_cast<std::size_t>(c.rope_style == RopeStyle::adjacent_pairs ? 2 * i : i);
        const std::size_t b = h + static_cast<std::size_t>(c.rope_style == RopeStyle::adjacent_pairs ? 2 * i + 1 : i + half);
        const double x0 = v[a], x1 = v[b];
        v[a] = x0 * std::cos(angle) - x1 * std::sin(angle);
        v[b] = x0 * std::sin(angle) + x1 * std::cos(angle);
      }
  };
  std::vector<std::vector<Vec>> K(static_cast<std::size_t>(c.n_layers)), V(static_cast<std::size_t>(c.n_layers));
  std::vector<Vec> out;
  for (int t = 0; t < T; ++t) {
    Vec x(static_cast<std::size_t>(c.dim));
    for (int i = 0; i < c.dim; ++i) x[static_cast<std::size_t>(i)] = w.token_embedding.dense()(tokens[static_cast<std::size_t>(t)], i);
    for (int l = 0; l < c.n_layers; ++l) {
      const LlamaLayer& L = w.layers[static_cast<std::size_t>(l)];
      const Vec xn = rms(x, L.rms_att);
      Vec q = matvec(L.wq.dense(), xn), k = matvec(L.wk.dense(), xn), v = matvec(L.wv.dense(), xn);
      if (c.qkv_bias) {
        for (std::size_t i = 0; i < q.size(); ++i) q[i] += L.bq(static_cast<Eigen::Index>(i));
        for (std::size_t i = 0; i < k.size(); ++i) k[i] += L.bk(static_cast<Eigen::Index>(i)), v[i] += L.bv(static_cast<Eigen::Index>(i));
      }
      rope(q, t);
      rope(k, t);
      K[static_cast<std::size_t>(l)].push_back(k);
      V[static_cast<std::size_t>(l)].push_back(v);
      Vec att(static_cast<std::size_t>(c.q_dim()), 0.0);
      for (int h = 0; h < c.n_heads; ++h) {
        const int kvh = h / (c.n_heads / c.n_kv_heads);
        std::vector<double> s(static_cast<std::size_t>(t + 1));
        double mx = -1e300;
        for (int p = 0; p <= t; ++p) {
          double d = 0.0;
          for (int i = 0; i < hs; ++i) d += q[static_cast<std::size_t>(h * hs + i)] * K[static_cast<std::size_t>(l)][static_cast<std::size_t>(p)][static_cast<std::size_t>(kvh * hs + i)];
          s[static_cast<std::size_t>(p)] = d / std::sqrt(double(hs));
          mx = std::max(mx, s[static_cast<std::size_t>(p)]);
        }
        double sum = 0.0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int p = 0; p <= t; ++p)
          for (int i = 0; i < hs; ++i)
            att[static_cast<std::size_t>(h * hs + i)] += s[static_cast<std::size_t>(p)] / sum * V[static_cast<std::size_t>(l)][static_cast<std::size_t>(p)][static_cast<std::size_t>(kvh * hs + i)];
      }
      const Vec o = matvec(L.wo.dense(), att);
      for (std::size_t i = 0; i < x.size(); ++i) x[i] += o[i];
      const Vec xf = rms(x, L.rms_ffn);
      Vec g = matvec(L.w1.dense(), xf);
      const Vec u = matvec(L.w3.dense(), xf);
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const Vec d = matvec(L.w2.dense(), g);
      for (std::size_t i = 0; i < x.size(); ++i) x[i] += d[i];
    }
    out.push_back(matvec(w.classifier().dense(), rms(x, w.rms_final)));
  }
  return out;
}

void expect_matches_reference(const LlamaWeights& w) {
  const std::vector<int> tokens = {3, 50, 96, 0, 7, 7, 41, 12, 88, 5, 60};
  const auto ref = reference_logits(w, tokens);
  const Transformer m = Transformer::from_weights(w);
  // The whole sequence as one chunk, and token by token through the KV cache.
  KvCache cache = m.new_cache(static_cast<int>(tokens.size()));
  const RowMatrixXf chunk = m.forward(tokens, cache);
  KvCache step_cache = m.new_cache(static_cast<int>(tokens.size()));
  for (std::size_t t = 0; t < tokens.size(); ++t) {
    const RowMatrixXf step = m.forward({tokens[t]}, step_cache);
    for (int v = 0; v < w.config.vocab_size; ++v) {
      const double r = ref[t][static_cast<std::size_t>(v)];
      ASSERT_NEAR(chunk(static_cast<Eigen::Index>(t), v), r, 2e-4 * (1.0 + std::fabs(r))) << "t " << t << " v " << v;
      ASSERT_NEAR(step(0, v), r, 2e-4 * (1.0 + std::fabs(r))) << "t " << t << " v " << v;
    }
  }
}

TEST(Transformer, MatchesANaiveReferenceWithAdjacentPairRope) {
  expect_matches_reference(random_model(RopeStyle::adjacent_pairs, false));
}

TEST(Transformer, MatchesANaiveReferenceWithHalvesRopeAndBiases) {
  expect_matches_reference(random_model(RopeStyle::halves, true));
}

TEST(Transformer, TiedOutputSharesTheEmbedding) {
  LlamaWeights w = random_model(RopeStyle::adjacent_pairs, false);
  w.config.shared_classifier = true;
  w.wcls = StoredMatrix();
  expect_matches_reference(w);
}

TEST(Transformer, ThreadCountDoesNotChangeLogits) {
  LlamaWeights w = random_model(RopeStyle::adjacent_pairs, false);
  // Wide enough that the fp32 products split into row blocks.
  w.config.vocab_size = 300;
  w.token_embedding = random_matrix(300, w.config.dim, 77, 1.0f);
  w.wcls = random_matrix(300, w.config.dim, 78, 0.2f);
  const std::vector<int> tokens = {1, 2, 3, 250, 299, 4};
  // And a 420-token chunk after them: long enough that attention deals its heads and
  // the FFN its gating rows to the threads (and attention runs several row blocks).
  w.config.seq_len = 432;
  std::vector<int> chunk(420);
  for (std::size_t i = 0; i < chunk.size(); ++i) chunk[i] = static_cast<int>((i * 37 + 5) % 300);
  RowMatrixXf first, first_chunk;
  for (int threads : {1, 2, 3}) {
    RuntimeOptions o;
    o.threads = threads;
    const Transformer m = Transformer::from_weights(w, o);
    KvCache cache = m.new_cache(8);
    const RowMatrixXf logits = m.forward(tokens, cache);
    KvCache long_cache = m.new_cache(426);
    m.forward(tokens, long_cache);
    const RowMatrixXf chunk_logits = m.forward(chunk, long_cache);
    if (threads == 1) {
      first = logits;
      first_chunk = chunk_logits;
    } else {
      EXPECT_TRUE(logits.isApprox(first, 0.0f)) << threads << " threads";
      EXPECT_TRUE(chunk_logits == first_chunk) << threads << " threads";
    }
  }
}

// ---- GGUF model files ---------------------------------------------------------------

RowMatrixXf logits_of(const LlamaWeights& w, const std::vector<int>& tokens) {
  const Transformer m = Transformer::from_weights(w);
  KvCache cache = m.new_cache(static_cast<int>(tokens.size()));
  return m.forward(tokens, cache);
}

TEST(GgufModel, Fp32FileLoadsToTheSameModel) {
  for (bool qwen : {false, true}) {
    LlamaWeights w = random_model(qwen ? RopeStyle::halves : RopeStyle::adjacent_pairs, qwen, 3);
    const WrittenModel f = test::write_gguf(w, false, temp_path(qwen ? "qwen2.gguf" : "llama.gguf"));
    const LlamaWeights got = load_gguf_model(f.path);
    EXPECT_EQ(got.config.architecture, w.config.architecture);
    EXPECT_EQ(got.config.head_size(), 10);
    EXPECT_EQ(got.config.rope_style, w.config.rope_style);
    EXPECT_EQ(got.config.rope_scale, 2.0f);
    EXPECT_EQ(got.config.rope_base, 5000.0f);
    EXPECT_EQ(got.config.norm_eps, 1e-4f);
    EXPECT_FALSE(got.config.shared_classifier);
    EXPECT_EQ(got.config.qkv_bias, qwen);
    const std::vector<int> tokens = {5, 9, 96, 33};
    EXPECT_TRUE(logits_of(got, tokens).isApprox(logits_of(w, tokens), 0.0f)) << (qwen ? "qwen2" : "llama");
    std::remove(f.path.c_str());
  }
}

TEST(GgufModel, Stories260KAsGgufRunsItsQ4_0TensorsWithoutRerounding) {
  LlamaWeights w = load_llama2c_checkpoint(kData + "stories260K.bin");
  const WrittenModel f = test::write_gguf(w, true, temp_path("stories.gguf"));
  const LlamaWeights got = load_gguf_model(f.path);
  EXPECT_TRUE(got.config.shared_classifier);
  EXPECT_EQ(got.config.seq_len, 512);
  EXPECT_TRUE(got.layers[0].wq.is_quantized());
  EXPECT_TRUE(got.layers[0].w2.is_float());  // 172 columns: no whole blocks of 32, kept F32
  // Every imported Q4_0 tensor holds exactly the codes and scales written.
  for (int l = 0; l < w.config.n_layers; ++l) {
    const auto& q = f.quantized.at("blk." + std::to_string(l) + ".attn_q.weight");
    const QuantizedMatrix& g = *got.layers[static_cast<std::size_t>(l)].wq.quantized_ptr();
    EXPECT_EQ(g.codes(), q.codes());
    EXPECT_TRUE(g.dequantize().isApprox(q.dequantize(), 0.0f));
  }
  // The same model built by hand from the quantized matrices gives the same logits.
  LlamaWeights by_hand = w;
  by_hand.token_embedding = f.quantized.at("token_embd.weight");
  for (int l = 0; l < w.config.n_layers; ++l) {
    LlamaLayer& L = by_hand.layers[static_cast<std::size_t>(l)];
    const std::string b = "blk." + std::to_string(l) + ".";
    L.wq = f.quantized.at(b + "attn_q.weight");
    L.wk = f.quantized.at(b + "attn_k.weight");
    L.wv = f.quantized.at(b + "attn_v.weight");
    L.wo = f.quantized.at(b + "attn_output.weight");
    L.w1 = f.quantized.at(b + "ffn_gate.weight");
    L.w3 = f.quantized.at(b + "ffn_up.weight");
  }
  const std::vector<int> tokens = {1, 403, 261, 378, 400, 301};
  EXPECT_TRUE(logits_of(got, tokens).isApprox(logits_of(by_hand, tokens), 0.0f));
  // q|k|v and gate|up stacked into one matrix each: the same logits bit for bit, in
  // both activation modes.
  for (LinearBackend backend : {LinearBackend::kernel_fast, LinearBackend::kernel_exact}) {
    RuntimeOptions stacked, separate;
    stacked.backend = separate.backend = backend;
    separate.stack_projections = false;
    const Transformer a = Transformer::from_weights(got, stacked), b = Transformer::from_weights(got, separate);
    EXPECT_FALSE(a.layers[0].wqkv.empty());
    EXPECT_FALSE(a.layers[0].w13.empty());
    EXPECT_TRUE(b.layers[0].wqkv.empty());
    KvCache ca = a.new_cache(6), cb = b.new_cache(6);
    EXPECT_TRUE(a.forward(tokens, ca).isApprox(b.forward(tokens, cb), 0.0f)) << to_string(backend);
  }
  // Decoded to fp32 (the reference model of the file), the logits stay close to the
  // quantized run's and differ from the original fp32 checkpoint's.
  GgufLoadOptions all_float;
  all_float.dequantize = true;
  const LlamaWeights dq = load_gguf_model(f.path, all_float);
  EXPECT_TRUE(dq.layers[0].wq.is_float());
  EXPECT_TRUE(dq.layers[0].wq.dense().isApprox(RowMatrixXf(f.quantized.at("blk.0.attn_q.weight").dequantize()), 0.0f));
  std::remove(f.path.c_str());
}

std::string load_error(const std::string& path) {
  try {
    load_gguf_model(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(GgufModel, BrokenFilesAreClearErrors) {
  const LlamaWeights w = random_model(RopeStyle::adjacent_pairs, false, 5);
  auto with_extra = [&](const std::function<void(io::GgufWriter&)>& extra, const LlamaWeights& x,
                        const std::string& skip = "") {
    const std::string path = test::write_gguf(x, false, temp_path("broken.gguf"), extra, skip).path;
    const std::string e = load_error(path);
    std::remove(path.c_str());
    return e;
  };
  EXPECT_NE(with_extra({}, w, "blk.1.ffn_down.weight").find("missing tensor 'blk.1.ffn_down.weight'"),
            std::string::npos);
  LlamaWeights shape = w;
  shape.layers[0].wk = RowMatrixXf(RowMatrixXf::Zero(3, 48));
  EXPECT_NE(with_extra({}, shape).find("layer 0 wk is 3 x 48, expected 20 x 48"), std::string::npos)
      << with_extra({}, shape);
  LlamaWeights qwen = random_model(RopeStyle::halves, true, 5);
  EXPECT_NE(with_extra({}, qwen, "blk.0.attn_k.bias").find("attn_k.bias"), std::string::npos);
  LlamaWeights yarn = w;
  yarn.config.rope_scale = 1.0f;
  EXPECT_NE(with_extra([](io::GgufWriter& g) { g.set_string("llama.rope.scaling.type", "yarn"); }, yarn)
                .find("RoPE scaling 'yarn' is not supported"),
            std::string::npos);
  LlamaWeights arch = w;
  arch.config.architecture = "gpt2";
  EXPECT_NE(with_extra({}, arch).find("architecture 'gpt2' is not supported"), std::string::npos);
  // A file that is not GGUF at all, and a missing file.
  const std::string junk = temp_path("junk.gguf");
  std::ofstream(junk) << "not a model";
  EXPECT_NE(load_error(junk).find("GGUF"), std::string::npos);
  std::remove(junk.c_str());
  EXPECT_NE(load_error(temp_path("missing.gguf")), "");
}

TEST(GgufModel, MissingKeysAndBadValuesAreNamed) {
  // Written by hand so single keys can be left out or given the wrong type.
  const LlamaWeights w = random_model(RopeStyle::adjacent_pairs, false, 6);
  auto write = [&](const std::function<void(io::GgufWriter&)>& keys) {
    const std::string path = temp_path("keys.gguf");
    io::GgufWriter g(path);
    keys(g);
    const RowMatrixXf& e = w.token_embedding.dense();
    g.add_f32("token_embd.weight", static_cast<std::size_t>(e.rows()), static_cast<std::size_t>(e.cols()), e.data());
    g.finish();
    const std::string err = load_error(path);
    std::remove(path.c_str());
    return err;
  };
  EXPECT_NE(write([](io::GgufWriter&) {}).find("general.architecture"), std::string::npos);
  EXPECT_NE(write([](io::GgufWriter& g) { g.set_string("general.architecture", "llama"); }).find("llama.block_count"),
            std::string::npos);
  EXPECT_NE(write([](io::GgufWriter& g) {
              g.set_string("general.architecture", "llama");
              g.set_string("llama.block_count", "two");
            }).find("llama.block_count"),
            std::string::npos);
  const std::string absurd = write([](io::GgufWriter& g) {
    g.set_string("general.architecture", "llama");
    g.set_u32("llama.block_count", 2);
    g.set_u32("llama.context_length", 64);
    g.set_u32("llama.embedding_length", 48);
    g.set_u32("llama.feed_forward_length", 80);
    g.set_u32("llama.attention.head_count", 4000000000u);
  });
  EXPECT_NE(absurd.find("head_count"), std::string::npos) << absurd;
  const std::string partial_rotary = write([](io::GgufWriter& g) {
    g.set_string("general.architecture", "llama");
    g.set_u32("llama.block_count", 2);
    g.set_u32("llama.context_length", 64);
    g.set_u32("llama.embedding_length", 48);
    g.set_u32("llama.feed_forward_length", 80);
    g.set_u32("llama.attention.head_count", 6);
    g.set_u32("llama.rope.dimension_count", 4);
  });
  EXPECT_NE(partial_rotary.find("partial rotary"), std::string::npos) << partial_rotary;
}

// ---- perplexity protocol --------------------------------------------------------------

TEST(Perplexity, ScoresTheSecondHalfOfEachChunk) {
  const LlamaWeights w = random_model(RopeStyle::adjacent_pairs, false, 8);
  const Transformer m = Transformer::from_weights(w);
  std::vector<int> tokens(16 * 3 + 5);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 37 + 11) % 97);
  PerplexityOptions o;
  o.n_ctx = 16;
  const PerplexityResult r = llama_perplexity(m, tokens, o, &m);
  ASSERT_EQ(r.chunk_nll.size(), 3u);  // the 5 tokens left over are dropped
  EXPECT_EQ(r.tokens_per_chunk, 7u);  // positions 8..14 predict tokens 9..15
  EXPECT_EQ(r.scored(), 21u);
  EXPECT_NEAR(r.mean_kl(), 0.0, 1e-9);  // against itself
  EXPECT_DOUBLE_EQ(r.reference_perplexity(), r.perplexity());
  // Independently: each chunk from an empty cache, -log softmax at the scored positions.
  double nll = 0.0;
  for (int c = 0; c < 3; ++c) {
    std::vector<int> chunk(tokens.begin() + 16 * c, tokens.begin() + 16 * (c + 1));
    const auto ref = reference_logits(w, chunk);
    for (int t = 8; t < 15; ++t) {
      double mx = -1e300, sum = 0.0;
      for (double v : ref[static_cast<std::size_t>(t)]) mx = std::max(mx, v);
      for (double v : ref[static_cast<std::size_t>(t)]) sum += std::exp(v - mx);
      nll -= ref[static_cast<std::size_t>(t)][static_cast<std::size_t>(chunk[static_cast<std::size_t>(t + 1)])] - mx - std::log(sum);
    }
  }
  EXPECT_NEAR(std::log(r.perplexity()), nll / 21.0, 1e-4);
  // With BOS: each chunk's first token is replaced, which changes the result.
  o.add_bos = true;
  o.bos_id = 1;
  EXPECT_NE(llama_perplexity(m, tokens, o).perplexity(), r.perplexity());
  o.max_chunks = 2;
  EXPECT_EQ(llama_perplexity(m, tokens, o).chunk_nll.size(), 2u);
  // Too short a text is an error, not NaN.
  const std::vector<int> short_text(tokens.begin(), tokens.begin() + 10);
  EXPECT_THROW(llama_perplexity(m, short_text, o), Error);
}

// ---- llama.cpp saved logits ---------------------------------------------------------

TEST(LlamaLogits, WrittenFilesReadBackWithinTheCodeResolution) {
  const std::string path = temp_path("base.kld");
  io::LlamaLogitsHeader h;
  h.n_ctx = 8, h.n_vocab = 11, h.n_chunk = 2;
  std::vector<int> tokens(16);
  for (int i = 0; i < 16; ++i) tokens[static_cast<std::size_t>(i)] = i % 11;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<std::vector<float>> rows;
  {
    io::LlamaLogitsWriter wr(path, h, tokens);
    for (int i = 0; i < 2 * 3; ++i) {
      std::vector<float> logits(11);
      for (float& v : logits) v = dist(rng);
      logits[3] = -40.0f;  // more than 16 nats below the top: stored as the floor
      rows.push_back(logits);
      wr.add(logits.data());
    }
    EXPECT_FALSE(std::ifstream(path).good());  // nothing under the final name yet
    wr.finish();
  }
  const io::LlamaLogitsReader r = io::LlamaLogitsReader::open(path);
  EXPECT_EQ(r.header().n_ctx, 8);
  EXPECT_EQ(r.header().scored_per_chunk(), 3u);
  EXPECT_EQ(r.tokens(), tokens);
  std::vector<float> lp(11);
  for (int i = 0; i < 6; ++i) {
    r.log_probs(static_cast<std::size_t>(i / 3), static_cast<std::size_t>(i % 3), lp.data());
    const auto& x = rows[static_cast<std::size_t>(i)];
    const float mx = *std::max_element(x.begin(), x.end());
    double sum = 0.0;
    for (float v : x) sum += std::exp(double(v) - mx);
    std::vector<float> exact(11);
    for (int k = 0; k < 11; ++k) exact[static_cast<std::size_t>(k)] = static_cast<float>(x[static_cast<std::size_t>(k)] - mx - std::log(sum));
    for (int k = 0; k < 11; ++k) {
      if (k == 3) EXPECT_LT(lp[static_cast<std::size_t>(k)], -15.9f);
      else EXPECT_NEAR(lp[static_cast<std::size_t>(k)], exact[static_cast<std::size_t>(k)], 16.0 / 65535 + 1e-5) << i << "/" << k;
    }
    // KL of a file against its own source is ~0; against a shifted distribution it is
    // the KL computed directly.
    EXPECT_NEAR(io::kl_from_base(lp.data(), exact.data(), 11), 0.0, 1e-3);
  }
  // Broken files.
  auto bytes = [&] {
    std::ifstream in(path, std::ios::binary);
    return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  auto error_of = [](std::vector<std::uint8_t> b) -> std::string {
    try {
      io::LlamaLogitsReader::from_bytes(std::move(b));
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  auto cut = bytes;
  cut.pop_back();
  EXPECT_NE(error_of(cut).find("bytes of records"), std::string::npos);
  auto magic = bytes;
  magic[0] = 'x';
  EXPECT_NE(error_of(magic).find("magic"), std::string::npos);
  auto token = bytes;
  token[20] = 200;  // first token id 200 >= n_vocab
  EXPECT_NE(error_of(token).find("out of range"), std::string::npos);
  auto chunks = bytes;
  chunks[16] = 0xff, chunks[17] = 0xff, chunks[18] = 0xff, chunks[19] = 0x7f;
  EXPECT_NE(error_of(chunks).find("n_chunk"), std::string::npos);
  EXPECT_NE(error_of({}).find("llama logits"), std::string::npos);
  std::remove(path.c_str());
}

TEST(Chat, ChatMlPromptWithTheTemplatesDefaultSystemMessage) {
  // SmolLM2-135M-Instruct's template (GGUF tokenizer.chat_template), abridged.
  const std::string tmpl =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
      "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
      "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  EXPECT_EQ(apply_chat_template(tmpl, {{"user", "Hi"}}),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template(tmpl, {{"system", "Be brief."}, {"user", "Hi"}}),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_THROW(apply_chat_template("{{ bos_token }}[INST]", {{"user", "Hi"}}), Error);
  EXPECT_THROW(apply_chat_template("", {{"user", "Hi"}}), Error);
}

}  // namespace

}  // namespace llm_model_test
