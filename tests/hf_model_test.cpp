// Hugging Face directory loader (model/hf_model.hpp): tiny directories written here with
// nibble's safetensors writer (odd sizes, GQA, F32 / BF16 / F16, one file or shards,
// llama and qwen2), every malformed case, and the key equivalence: stories260K turned
// into an HF directory (q/k rows put back into rotate_half order by this file's own
// permutation) gives the llama2.c model's logits through the Transformer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <nibble/io/safetensors.hpp>
#include <nibble/model/hf_model.hpp>
#include <nibble/model/llama2c.hpp>
#include <nibble/model/transformer.hpp>

#include "hf_test_dirs.hpp"

namespace hf_model_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;
using namespace nibble::model;
using json = nlohmann::json;

using nibble::test::TempDir;
using nibble::test::write_text;
using nibble::test::hf_config_json;

namespace {

const std::string kData = std::string(NIBBLE_SOURCE_DIR) + "/examples/data/";

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// One tensor to write: fp32 values, stored as `dtype`.
struct Tensor {
  std::vector<std::uint64_t> shape;
  std::vector<float> values;
};
using Tensors = std::map<std::string, Tensor>;

Tensor from_matrix(const RowMatrixXf& m) {
  return {{static_cast<std::uint64_t>(m.rows()), static_cast<std::uint64_t>(m.cols())},
          std::vector<float>(m.data(), m.data() + m.size())};
}
Tensor from_vector(const Eigen::VectorXf& v) {
  return {{static_cast<std::uint64_t>(v.size())}, std::vector<float>(v.data(), v.data() + v.size())};
}

// The value a float becomes when stored as `dtype` and decoded again.
float stored_value(float x, io::DType dtype) {
  if (dtype == io::DType::BF16) return bf16_to_float(float_to_bf16(x));
  if (dtype == io::DType::F16) return half_to_float(float_to_half(x));
  return x;
}

void add_tensor(io::SafetensorsWriter& w, const std::string& name, const Tensor& t, io::DType dtype) {
  if (dtype == io::DType::F32) {
    w.add(name, dtype, t.shape, t.values.data(), t.values.size() * 4);
    return;
  }
  std::vector<std::uint16_t> h(t.values.size());
  for (std::size_t i = 0; i < h.size(); ++i)
    h[i] = dtype == io::DType::BF16 ? float_to_bf16(t.values[i]) : float_to_half(t.values[i]);
  w.add(name, dtype, t.shape, h.data(), h.size() * 2);
}

// Writes config.json and the tensors: model.safetensors when shards == 1, else
// model-0000k-of-0000n.safetensors (tensors dealt round-robin) and the index json.
void write_hf_dir(const std::string& dir, const json& config, const Tensors& tensors, io::DType dtype,
                  int shards = 1) {
  write_text(dir + "/config.json", config.dump(2));
  if (shards == 1) {
    io::SafetensorsWriter w(dir + "/model.safetensors");
    w.set_metadata("format", "pt");
    for (const auto& [name, t] : tensors) add_tensor(w, name, t, dtype);
    w.finish();
    return;
  }
  std::vector<std::unique_ptr<io::SafetensorsWriter>> writers;
  std::vector<std::string> files;
  for (int s = 0; s < shards; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
    files.emplace_back(name);
    writers.push_back(std::make_unique<io::SafetensorsWriter>(dir + "/" + name));
  }
  json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", json::object()}};
  int k = 0;
  for (const auto& [name, t] : tensors) {
    add_tensor(*writers[static_cast<std::size_t>(k % shards)], name, t, dtype);
    index["weight_map"][name] = files[static_cast<std::size_t>(k % shards)];
    ++k;
  }
  for (auto& w : writers) w->finish();
  write_text(dir + "/model.safetensors.index.json", index.dump(2));
}

// The q/k rows of one projection, from llama.cpp / llama2.c order (RoPE pair i of a head
// at rows 2i, 2i+1) to Hugging Face's rotate_half order (pair i at rows i, i + head/2).
RowMatrixXf adjacent_to_halves(const RowMatrixXf& w, int n_heads) {
  const Eigen::Index hs = w.rows() / n_heads, half = hs / 2;
  RowMatrixXf out(w.rows(), w.cols());
  for (Eigen::Index h = 0; h < n_heads; ++h)
    for (Eigen::Index i = 0; i < half; ++i)
      for (Eigen::Index j = 0; j < 2; ++j) out.row(h * hs + j * half + i) = w.row(h * hs + 2 * i + j);
  return out;
}
// Its inverse: halves order to adjacent pairs (what llama.cpp's converter does).
RowMatrixXf halves_to_adjacent(const RowMatrixXf& w, int n_heads) {
  const Eigen::Index hs = w.rows() / n_heads, half = hs / 2;
  RowMatrixXf out(w.rows(), w.cols());
  for (Eigen::Index h = 0; h < n_heads; ++h)
    for (Eigen::Index i = 0; i < half; ++i)
      for (Eigen::Index j = 0; j < 2; ++j) out.row(h * hs + 2 * i + j) = w.row(h * hs + j * half + i);
  return out;
}

// HF tensors of weights whose q/k rows are already in rotate_half order.
Tensors hf_tensors(const LlamaWeights& w) {
  Tensors t;
  t["model.embed_tokens.weight"] = from_matrix(w.token_embedding.to_float());
  if (!w.config.shared_classifier) t["lm_head.weight"] = from_matrix(w.wcls.to_float());
  t["model.norm.weight"] = from_vector(w.rms_final);
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    const LlamaLayer& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t[p + "input_layernorm.weight"] = from_vector(L.rms_att);
    t[p + "post_attention_layernorm.weight"] = from_vector(L.rms_ffn);
    t[p + "self_attn.q_proj.weight"] = from_matrix(L.wq.to_float());
    t[p + "self_attn.k_proj.weight"] = from_matrix(L.wk.to_float());
    t[p + "self_attn.v_proj.weight"] = from_matrix(L.wv.to_float());
    t[p + "self_attn.o_proj.weight"] = from_matrix(L.wo.to_float());
    t[p + "mlp.gate_proj.weight"] = from_matrix(L.w1.to_float());
    t[p + "mlp.up_proj.weight"] = from_matrix(L.w3.to_float());
    t[p + "mlp.down_proj.weight"] = from_matrix(L.w2.to_float());
    if (w.config.qkv_bias) {
      t[p + "self_attn.q_proj.bias"] = from_vector(L.bq);
      t[p + "self_attn.k_proj.bias"] = from_vector(L.bk);
      t[p + "self_attn.v_proj.bias"] = from_vector(L.bv);
    }
  }
  return t;
}

// Random weights for a config (halves order, as an HF checkpoint would hold them).
LlamaWeights random_weights(const LlamaConfig& c, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  auto mat = [&](int r, int k) {
    RowMatrixXf m(r, k);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(rng);
    return m;
  };
  auto vec = [&](int n, float base) {
    Eigen::VectorXf v(n);
    for (int i = 0; i < n; ++i) v(i) = base + 0.1f * nd(rng);
    return v;
  };
  LlamaWeights w;
  w.config = c;
  w.token_embedding = mat(c.vocab_size, c.dim);
  if (!c.shared_classifier) w.wcls = mat(c.vocab_size, c.dim);
  w.rms_final = vec(c.dim, 1.0f);
  for (int l = 0; l < c.n_layers; ++l) {
    LlamaLayer L;
    L.rms_att = vec(c.dim, 1.0f);
    L.rms_ffn = vec(c.dim, 1.0f);
    L.wq = mat(c.q_dim(), c.dim);
    L.wk = mat(c.kv_dim(), c.dim);
    L.wv = mat(c.kv_dim(), c.dim);
    L.wo = mat(c.dim, c.q_dim());
    L.w1 = mat(c.hidden_dim, c.dim);
    L.w2 = mat(c.dim, c.hidden_dim);
    L.w3 = mat(c.hidden_dim, c.dim);
    if (c.qkv_bias) {
      L.bq = vec(c.q_dim(), 0.0f);
      L.bk = vec(c.kv_dim(), 0.0f);
      L.bv = vec(c.kv_dim(), 0.0f);
    }
    w.layers.push_back(L);
  }
  validate_weights(w, "random weights");
  return w;
}

// Odd sizes, 2 layers, GQA (6 query heads over 2 kv heads), separate classifier.
LlamaConfig tiny_llama() {
  LlamaConfig c;
  c.architecture = "llama";
  c.dim = 36, c.hidden_dim = 53, c.n_layers = 2, c.n_heads = 6, c.n_kv_heads = 2, c.vocab_size = 67, c.seq_len = 40;
  c.rope_base = 5000.0f;
  c.norm_eps = 1e-5f;
  c.shared_classifier = false;
  c.rope_style = RopeStyle::halves;
  return c;
}

void expect_matrix_eq(const StoredMatrix& got, const RowMatrixXf& want, io::DType dtype, const std::string& what) {
  ASSERT_TRUE(got.is_float()) << what;
  ASSERT_EQ(got.rows(), want.rows()) << what;
  ASSERT_EQ(got.cols(), want.cols()) << what;
  for (Eigen::Index i = 0; i < want.size(); ++i)
    ASSERT_EQ(got.dense().data()[i], stored_value(want.data()[i], dtype)) << what << " element " << i;
}
void expect_vector_eq(const Eigen::VectorXf& got, const Eigen::VectorXf& want, io::DType dtype, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (Eigen::Index i = 0; i < want.size(); ++i) ASSERT_EQ(got(i), stored_value(want(i), dtype)) << what << " " << i;
}

// Every weight of `got` equals `want` as stored in `dtype` (bit-exact decoding).
void expect_weights_eq(const LlamaWeights& got, const LlamaWeights& want, io::DType dtype) {
  expect_matrix_eq(got.token_embedding, want.token_embedding.dense(), dtype, "embedding");
  if (!want.config.shared_classifier) expect_matrix_eq(got.wcls, want.wcls.dense(), dtype, "lm_head");
  expect_vector_eq(got.rms_final, want.rms_final, dtype, "norm");
  ASSERT_EQ(got.layers.size(), want.layers.size());
  for (std::size_t l = 0; l < want.layers.size(); ++l) {
    const LlamaLayer &a = got.layers[l], &b = want.layers[l];
    const std::string p = "layer " + std::to_string(l) + " ";
    expect_vector_eq(a.rms_att, b.rms_att, dtype, p + "rms_att");
    expect_vector_eq(a.rms_ffn, b.rms_ffn, dtype, p + "rms_ffn");
    expect_matrix_eq(a.wq, b.wq.dense(), dtype, p + "wq");
    expect_matrix_eq(a.wk, b.wk.dense(), dtype, p + "wk");
    expect_matrix_eq(a.wv, b.wv.dense(), dtype, p + "wv");
    expect_matrix_eq(a.wo, b.wo.dense(), dtype, p + "wo");
    expect_matrix_eq(a.w1, b.w1.dense(), dtype, p + "w1");
    expect_matrix_eq(a.w2, b.w2.dense(), dtype, p + "w2");
    expect_matrix_eq(a.w3, b.w3.dense(), dtype, p + "w3");
    if (want.config.qkv_bias) {
      expect_vector_eq(a.bq, b.bq, dtype, p + "bq");
      expect_vector_eq(a.bk, b.bk, dtype, p + "bk");
      expect_vector_eq(a.bv, b.bv, dtype, p + "bv");
    }
  }
}

void expect_config_eq(const LlamaConfig& a, const LlamaConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.dim, b.dim);
  EXPECT_EQ(a.hidden_dim, b.hidden_dim);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.seq_len, b.seq_len);
  EXPECT_EQ(a.head_size(), b.head_size());
  EXPECT_EQ(a.rope_base, b.rope_base);
  EXPECT_EQ(a.rope_scale, b.rope_scale);
  EXPECT_EQ(a.rope_style, RopeStyle::halves);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.shared_classifier, b.shared_classifier);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
}

// Largest |a − b| over all logits relative to the largest |a|.
double relative_max_diff(const RowMatrixXf& a, const RowMatrixXf& b) {
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / static_cast<double>(a.cwiseAbs().maxCoeff());
}

RowMatrixXf run(const LlamaWeights& w, const std::vector<int>& tokens) {
  const Transformer t = Transformer::from_weights(w);
  KvCache cache = t.new_cache(static_cast<int>(tokens.size()));
  return t.forward(tokens, cache);
}

// Runs load_hf_model and returns its error message ("" when it loaded).
std::string load_error(const std::string& dir) {
  try {
    load_hf_model(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_LOAD_ERROR(dir, ...)                                                   \
  do {                                                                              \
    const std::string message_ = load_error(dir);                                   \
    ASSERT_FALSE(message_.empty()) << "loaded without an error";                    \
    for (const char* part_ : {__VA_ARGS__})                                         \
      EXPECT_NE(message_.find(part_), std::string::npos) << "'" << part_ << "' not in: " << message_; \
  } while (0)

}  // namespace

// ---- well-formed directories -------------------------------------------------------

TEST(HfModel, TinyLlamaF32LoadsBitExact) {
  const LlamaConfig c = tiny_llama();
  const LlamaWeights w = random_weights(c, 1);
  TempDir d;
  write_hf_dir(d.path(), hf_config_json(c), hf_tensors(w), io::DType::F32);
  const LlamaWeights got = load_hf_model(d.path());
  expect_config_eq(got.config, c);
  expect_weights_eq(got, w, io::DType::F32);
}

TEST(HfModel, Bf16AndF16DecodeExactly) {
  const LlamaConfig c = tiny_llama();
  const LlamaWeights w = random_weights(c, 2);
  for (io::DType dtype : {io::DType::BF16, io::DType::F16}) {
    TempDir d;
    write_hf_dir(d.path(), hf_config_json(c), hf_tensors(w), dtype);
    const LlamaWeights got = load_hf_model(d.path());
    expect_weights_eq(got, w, dtype);
  }
}

TEST(HfModel, ShardedEqualsSingleFile) {
  const LlamaConfig c = tiny_llama();
  const LlamaWeights w = random_weights(c, 3);
  TempDir one, three;
  write_hf_dir(one.path(), hf_config_json(c), hf_tensors(w), io::DType::BF16, 1);
  write_hf_dir(three.path(), hf_config_json(c), hf_tensors(w), io::DType::BF16, 3);
  EXPECT_FALSE(std::filesystem::exists(three / "model.safetensors"));
  const LlamaWeights a = load_hf_model(one.path()), b = load_hf_model(three.path());
  expect_weights_eq(b, w, io::DType::BF16);
  const std::vector<int> tokens = {3, 66, 0, 17, 17, 42, 5};
  EXPECT_EQ(run(a, tokens), run(b, tokens));
}

TEST(HfModel, Qwen2WithBiasesTiedAndExplicitHeadDim) {
  LlamaConfig c = tiny_llama();
  c.architecture = "qwen2";
  c.qkv_bias = true;
  c.shared_classifier = true;
  c.dim = 20, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 6;  // q_dim 24 != dim 20
  const LlamaWeights w = random_weights(c, 4);
  TempDir d;
  Tensors t = hf_tensors(w);
  t["lm_head.weight"] = from_matrix(w.token_embedding.dense());  // a tied lm_head some files hold: ignored
  write_hf_dir(d.path(), hf_config_json(c), t, io::DType::F32, 2);
  const LlamaWeights got = load_hf_model(d.path());
  expect_config_eq(got.config, c);
  EXPECT_EQ(got.config.q_dim(), 24);
  EXPECT_TRUE(got.wcls.empty());
  expect_weights_eq(got, w, io::DType::F32);
  const std::vector<int> tokens = {1, 2, 3, 60};
  EXPECT_TRUE(run(got, tokens).allFinite());
}

TEST(HfModel, HalvesOnHfLayoutEqualsAdjacentPairsOnPermutedLayout) {
  // The same model two ways: HF order with RopeStyle::halves (what the loader makes) and
  // llama.cpp's permuted order with adjacent pairs. Logits agree to float rounding.
  const LlamaConfig c = tiny_llama();
  const LlamaWeights w = random_weights(c, 5);
  TempDir d;
  write_hf_dir(d.path(), hf_config_json(c), hf_tensors(w), io::DType::F32);
  const LlamaWeights hf = load_hf_model(d.path());
  LlamaWeights gg = hf;
  gg.config.rope_style = RopeStyle::adjacent_pairs;
  for (auto& L : gg.layers) {
    const RowMatrixXf q = L.wq.dense();
    L.wq = halves_to_adjacent(q, c.n_heads);
    L.wk = halves_to_adjacent(L.wk.dense(), c.n_kv_heads);
    EXPECT_NE(L.wq.dense(), q);                                    // a real permutation
    EXPECT_EQ(adjacent_to_halves(L.wq.dense(), c.n_heads), q);    // and its inverse
  }
  const std::vector<int> tokens = {5, 9, 13, 0, 66, 12, 12, 30, 31, 2, 7};
  const RowMatrixXf a = run(hf, tokens), b = run(gg, tokens);
  EXPECT_LT(relative_max_diff(a, b), 1e-5);
  // Without the style switch the model differs: the test can see a wrong RoPE.
  LlamaWeights wrong = hf;
  wrong.config.rope_style = RopeStyle::adjacent_pairs;
  EXPECT_GT(relative_max_diff(a, run(wrong, tokens)), 1e-3);
}

// The key equivalence: stories260K (llama2.c, adjacent-pair RoPE) as an HF directory.
TEST(HfModel, Stories260KAsHfDirectoryGivesTheLlama2cLogits) {
  const LlamaWeights ref = load_llama2c_checkpoint(kData + "stories260K.bin");
  const LlamaConfig& c = ref.config;
  LlamaWeights hf_layout = ref;
  for (auto& L : hf_layout.layers) {
    L.wq = adjacent_to_halves(L.wq.dense(), c.n_heads);
    L.wk = adjacent_to_halves(L.wk.dense(), c.n_kv_heads);
  }
  json config = hf_config_json(c);
  config["bos_token_id"] = 1;
  config["eos_token_id"] = 2;
  TempDir d;
  write_hf_dir(d.path(), config, hf_tensors(hf_layout), io::DType::F32);
  const LlamaWeights hf = load_hf_model(d.path());
  EXPECT_EQ(hf.config.rope_style, RopeStyle::halves);
  EXPECT_TRUE(hf.config.shared_classifier);
  EXPECT_EQ(hf.config.norm_eps, c.norm_eps);

  const Tokenizer tok = load_tokenizer(kData + "tok512.bin", 512);
  std::vector<int> tokens = tok.encode("Once upon a time, there was a little girl named Lily. She loved to play outside "
                                       "in the park with her dog, Max. One day, they found a big red ball.",
                                       true, false);
  ASSERT_GT(tokens.size(), 30u);
  const RowMatrixXf a = run(ref, tokens), b = run(hf, tokens);
  const double rel = relative_max_diff(a, b);
  EXPECT_LT(rel, 1e-5) << "max relative logit difference";
  // The un-permuted weights with the llama2.c RoPE would be a different model.
  LlamaWeights wrong = hf;
  wrong.config.rope_style = RopeStyle::adjacent_pairs;
  EXPECT_GT(relative_max_diff(a, run(wrong, tokens)), 1e-3);
}

TEST(HfModel, ConfigDefaultsFollowTransformers) {
  const json base = {{"model_type", "llama"},          {"hidden_size", 64},      {"intermediate_size", 100},
                     {"num_hidden_layers", 2},         {"num_attention_heads", 8}, {"vocab_size", 300}};
  const LlamaConfig c = hf_llama_config(base.dump());
  EXPECT_EQ(c.n_kv_heads, 8);
  EXPECT_EQ(c.head_size(), 8);
  EXPECT_EQ(c.seq_len, 2048);
  EXPECT_EQ(c.rope_base, 10000.0f);
  EXPECT_EQ(c.rope_scale, 1.0f);
  EXPECT_EQ(c.norm_eps, 1e-6f);
  EXPECT_FALSE(c.shared_classifier);  // LlamaConfig.tie_word_embeddings defaults to False
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.rope_style, RopeStyle::halves);

  json q = base;
  q["model_type"] = "qwen2";
  q["num_attention_heads"] = 64;
  q["hidden_size"] = 2048;
  const LlamaConfig qc = hf_llama_config(q.dump());
  EXPECT_EQ(qc.n_kv_heads, 32);  // Qwen2Config's default is 32, not the head count
  EXPECT_EQ(qc.seq_len, 32768);
  EXPECT_TRUE(qc.qkv_bias);
  q["num_key_value_heads"] = nullptr;  // null: the head count
  EXPECT_EQ(hf_llama_config(q.dump()).n_kv_heads, 64);

  json r = base;
  r["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  r["rope_theta"] = 500000.0;
  EXPECT_EQ(hf_llama_config(r.dump()).rope_scale, 4.0f);
  EXPECT_EQ(hf_llama_config(r.dump()).rope_base, 500000.0f);
  r["rope_scaling"] = {{"rope_type", "default"}};
  EXPECT_EQ(hf_llama_config(r.dump()).rope_scale, 1.0f);
  // transformers 5 spelling.
  json v5 = base;
  v5["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}, {"rope_theta", 100000.0}};
  EXPECT_EQ(hf_llama_config(v5.dump()).rope_scale, 2.0f);
  EXPECT_EQ(hf_llama_config(v5.dump()).rope_base, 100000.0f);
  // head_dim equal to the default is the default.
  json h = base;
  h["head_dim"] = 8;
  EXPECT_EQ(hf_llama_config(h.dump()).head_dim, 0);
}

TEST(HfModel, IndexWeightMapParsing) {
  const auto m = hf_weight_map(R"({"metadata": {"total_size": 10}, "weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m.at("b"), "s2.safetensors");
  for (const char* bad : {R"({"weight_map": {"a": "../x.safetensors"}})", R"({"weight_map": {"a": "/etc/passwd"}})",
                          R"({"weight_map": {"a": ".."}})", R"({"weight_map": {"a": 3}})", R"({"weight_map": []})",
                          R"({"weight_map": {}})", R"({"metadata": {}})", R"([1, 2])", "{", ""})
    EXPECT_THROW(hf_weight_map(bad), Error) << bad;
}

// ---- malformed directories -----------------------------------------------------------

class HfModelBad : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = tiny_llama();
    w_ = random_weights(c_, 6);
    config_ = hf_config_json(c_);
    tensors_ = hf_tensors(w_);
  }
  // Writes the (edited) directory into a fresh temp dir and returns the load error.
  std::string write(int shards = 1, io::DType dtype = io::DType::F32) {
    dirs_.push_back(std::make_unique<TempDir>());
    write_hf_dir(dirs_.back()->path(), config_, tensors_, dtype, shards);
    return dirs_.back()->path();
  }
  LlamaConfig c_;
  LlamaWeights w_;
  json config_;
  Tensors tensors_;
  std::vector<std::unique_ptr<TempDir>> dirs_;
};

TEST_F(HfModelBad, TheUneditedDirectoryLoads) { EXPECT_EQ(load_error(write()), ""); }

TEST_F(HfModelBad, DirectoryAndFilesMissing) {
  EXPECT_LOAD_ERROR("/nonexistent/nibble-hf", "/nonexistent/nibble-hf", "not a directory");
  TempDir empty;
  EXPECT_LOAD_ERROR(empty.path(), "has no config.json");
  write_text(empty / "config.json", config_.dump());
  EXPECT_LOAD_ERROR(empty.path(), "neither model.safetensors nor model.safetensors.index.json");
  write_text(empty / "pytorch_model.bin", "x");
  EXPECT_LOAD_ERROR(empty.path(), "pytorch_model.bin");
}

TEST_F(HfModelBad, ConfigNotJson) {
  const std::string d = write();
  for (const char* text : {"{", "", "not json", "[1, 2]", "{\"hidden_size\": NaN}"}) {
    write_text(d + "/config.json", text);
    EXPECT_LOAD_ERROR(d, "config.json");
  }
  write_text(d + "/config.json", std::string(100, '[') + std::string(100, ']'));
  EXPECT_LOAD_ERROR(d, "config.json", "nests deeper");
}

TEST_F(HfModelBad, ConfigMissingAndMistypedKeys) {
  const json good = config_;
  for (const char* key : {"model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "vocab_size"}) {
    config_ = good;
    config_.erase(key);
    EXPECT_LOAD_ERROR(write(), "config.json", "missing key", key);
  }
  const std::pair<const char*, json> mistyped[] = {
      {"hidden_size", "36"},          {"hidden_size", 36.5},           {"num_hidden_layers", true},
      {"vocab_size", json::array()}, {"rms_norm_eps", "1e-5"},        {"rope_theta", json::object()},
      {"tie_word_embeddings", "yes"}, {"tie_word_embeddings", 1},      {"model_type", 3},
      {"num_key_value_heads", 2.0}, {"rope_scaling", "linear"},      {"hidden_act", false}};
  for (const auto& [key, value] : mistyped) {
    config_ = good;
    config_[key] = value;
    EXPECT_LOAD_ERROR(write(), "config.json", key);
  }
}

TEST_F(HfModelBad, ConfigAbsurdOrInconsistentValues) {
  const json good = config_;
  const std::pair<const char*, json> bad[] = {
      {"hidden_size", -36},
      {"hidden_size", 0},
      {"vocab_size", 1LL << 40},
      {"vocab_size", std::numeric_limits<std::uint64_t>::max()},
      {"num_hidden_layers", 1 << 20},       // validate_config's range
      {"vocab_size", 1 << 29},              // in int range, beyond validate_config's
      {"num_key_value_heads", 4},           // 6 heads are not a multiple of 4
      {"num_key_value_heads", 0},
      {"num_attention_heads", 5},           // 36 / 5 is no head size
      {"head_dim", 5},                      // odd head size
      {"rms_norm_eps", 0.0},
      {"rope_theta", 0.5},
      {"max_position_embeddings", 0}};
  for (const auto& [key, value] : bad) {
    config_ = good;
    config_[key] = value;
    const std::string e = load_error(write());
    EXPECT_NE(e.find("config.json"), std::string::npos) << key << ": " << e;
  }
}

TEST_F(HfModelBad, HugeClaimedSizesFailBeforeAllocating) {
  // Within validate_config's ranges, but the embedding alone would be 2^37 floats: the
  // file's real shape must be checked before any buffer of the claimed size exists.
  config_["hidden_size"] = 1 << 16;
  config_["num_attention_heads"] = 1 << 9;
  config_["num_key_value_heads"] = 1 << 9;
  config_["vocab_size"] = 1 << 21;
  config_["intermediate_size"] = 1 << 18;
  EXPECT_LOAD_ERROR(write(), "model.embed_tokens.weight", "expected [2097152, 65536]");
}

TEST_F(HfModelBad, UnsupportedArchitectureFeatures) {
  const json good = config_;
  const std::pair<const char*, json> bad[] = {{"model_type", "mistral"},
                                              {"hidden_act", "gelu"},
                                              {"attention_bias", true},
                                              {"mlp_bias", true},
                                              {"use_sliding_window", true},
                                              {"quantization_config", {{"quant_method", "gptq"}}},
                                              {"layer_types", {"full_attention", "sliding_attention"}}};
  for (const auto& [key, value] : bad) {
    config_ = good;
    config_[key] = value;
    EXPECT_LOAD_ERROR(write(), "config.json", key);
  }
}

TEST_F(HfModelBad, RopeScaling) {
  const json good = config_;
  config_["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  EXPECT_LOAD_ERROR(write(), "config.json", "rope_scaling", "'dynamic' is not supported");
  config_["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  EXPECT_LOAD_ERROR(write(), "'llama3' is not supported");
  config_["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_LOAD_ERROR(write(), "'yarn' is not supported");
  config_["rope_scaling"] = {{"type", "linear"}};
  EXPECT_LOAD_ERROR(write(), "needs a 'factor'");
  config_["rope_scaling"] = {{"type", "linear"}, {"factor", -1.0}};
  EXPECT_LOAD_ERROR(write(), "factor");
  config_["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(load_hf_model(write()).config.rope_scale, 2.0f);
  config_ = good;
  config_["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000.0}, {"partial_rotary_factor", 0.5}};
  EXPECT_LOAD_ERROR(write(), "rope_parameters", "partial_rotary_factor");
}

TEST_F(HfModelBad, MissingTensors) {
  const Tensors good = tensors_;
  for (const char* name : {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                           "model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                           "model.layers.1.post_attention_layernorm.weight"}) {
    tensors_ = good;
    tensors_.erase(name);
    EXPECT_LOAD_ERROR(write(), "model.safetensors", "missing tensor", name);
  }
  tensors_ = good;
  tensors_.erase("lm_head.weight");
  EXPECT_LOAD_ERROR(write(), "tie_word_embeddings");
  config_.erase("tie_word_embeddings");  // absent means false
  EXPECT_LOAD_ERROR(write(), "lm_head.weight");
  config_["tie_word_embeddings"] = true;
  EXPECT_EQ(load_error(write()), "");
}

TEST_F(HfModelBad, ShapeMismatches) {
  const Tensors good = tensors_;
  tensors_["model.layers.0.self_attn.k_proj.weight"] = from_matrix(RowMatrixXf::Ones(c_.q_dim(), c_.dim));
  EXPECT_LOAD_ERROR(write(), "model.layers.0.self_attn.k_proj.weight", "shape [36, 36], expected [12, 36]");
  tensors_ = good;
  tensors_["model.layers.1.mlp.down_proj.weight"] = from_matrix(RowMatrixXf::Ones(c_.hidden_dim, c_.dim));
  EXPECT_LOAD_ERROR(write(), "down_proj", "expected [36, 53]");
  tensors_ = good;
  tensors_["model.norm.weight"] = from_matrix(RowMatrixXf::Ones(1, c_.dim));  // 2-D where 1-D belongs
  EXPECT_LOAD_ERROR(write(), "model.norm.weight", "expected [36]");
  tensors_ = good;
  config_["vocab_size"] = c_.vocab_size + 1;  // config and embedding disagree
  EXPECT_LOAD_ERROR(write(), "model.embed_tokens.weight", "expected [68, 36]");
}

TEST_F(HfModelBad, BadDtypeAndNonFiniteValues) {
  const std::string d = write();
  // Rewrite model.safetensors with one tensor as I32.
  {
    io::SafetensorsWriter w(d + "/model.safetensors");
    for (const auto& [name, t] : tensors_) {
      if (name == "model.layers.0.input_layernorm.weight") {
        std::vector<std::int32_t> ints(t.values.size(), 1);
        w.add(name, io::DType::I32, t.shape, ints.data(), ints.size() * 4);
      } else {
        add_tensor(w, name, t, io::DType::F32);
      }
    }
    w.finish();
  }
  EXPECT_LOAD_ERROR(d, "model.safetensors", "input_layernorm", "dtype I32, expected F32, F16 or BF16");
  tensors_["model.layers.1.self_attn.v_proj.weight"].values[7] = std::numeric_limits<float>::infinity();
  EXPECT_LOAD_ERROR(write(), "v_proj", "non-finite", "element 7");
  tensors_["model.layers.1.self_attn.v_proj.weight"].values[7] = std::nanf("");
  EXPECT_LOAD_ERROR(write(1, io::DType::BF16), "v_proj", "non-finite");
}

TEST_F(HfModelBad, TensorsTheModelWouldNotUse) {
  const Tensors good = tensors_;
  tensors_["model.layers.2.input_layernorm.weight"] = from_vector(Eigen::VectorXf::Ones(c_.dim));
  EXPECT_LOAD_ERROR(write(), "model.layers.2.input_layernorm.weight", "num_hidden_layers = 2");
  tensors_ = good;
  tensors_["model.layers.0.self_attn.o_proj.bias"] = from_vector(Eigen::VectorXf::Ones(c_.dim));
  EXPECT_LOAD_ERROR(write(), "o_proj.bias", "not part of a llama model");
  tensors_ = good;
  // Old checkpoints carry RoPE tables: ignored.
  tensors_["model.layers.0.self_attn.rotary_emb.inv_freq"] = from_vector(Eigen::VectorXf::Ones(2));
  EXPECT_EQ(load_error(write()), "");
}

TEST_F(HfModelBad, TruncatedOrCorruptSafetensors) {
  const std::string d = write();
  const std::string bytes = read_bytes(d + "/model.safetensors");
  write_text(d + "/model.safetensors", bytes.substr(0, bytes.size() - 100));
  EXPECT_LOAD_ERROR(d, "model.safetensors", "truncated");
  write_text(d + "/model.safetensors", "");
  EXPECT_LOAD_ERROR(d, "model.safetensors");
  std::string lying = bytes;
  lying[5] = static_cast<char>(0x7f);  // header length past the end
  write_text(d + "/model.safetensors", lying);
  EXPECT_LOAD_ERROR(d, "model.safetensors", "header length");
}

TEST_F(HfModelBad, ShardIndexProblems) {
  const std::string d = write(3);
  const std::string index_path = d + "/model.safetensors.index.json";
  const json index = json::parse(read_bytes(index_path));
  // A shard the index names is gone.
  std::filesystem::rename(d + "/model-00002-of-00003.safetensors", d + "/moved.safetensors");
  EXPECT_LOAD_ERROR(d, "model.safetensors.index.json", "model-00002-of-00003.safetensors", "not a file");
  std::filesystem::rename(d + "/moved.safetensors", d + "/model-00002-of-00003.safetensors");
  EXPECT_EQ(load_error(d), "");
  // The index puts a tensor in the wrong shard.
  json wrong = index;
  const std::string name = "model.norm.weight";
  const std::string shard = wrong["weight_map"][name];
  wrong["weight_map"][name] = shard == "model-00001-of-00003.safetensors" ? "model-00002-of-00003.safetensors"
                                                                           : "model-00001-of-00003.safetensors";
  write_text(index_path, wrong.dump());
  EXPECT_LOAD_ERROR(d, "model.safetensors.index.json", "model.norm.weight", "has no such tensor");
  // The index forgets a tensor.
  wrong = index;
  wrong["weight_map"].erase("model.layers.1.mlp.gate_proj.weight");
  write_text(index_path, wrong.dump());
  EXPECT_LOAD_ERROR(d, "missing tensor", "model.layers.1.mlp.gate_proj.weight");
  // Malformed index files.
  for (const std::string& text : {std::string("{"), std::string("{\"weight_map\": 5}"), std::string("{}"),
                                 std::string(R"({"weight_map": {"model.norm.weight": "../config.json"}})")}) {
    write_text(index_path, text);
    EXPECT_LOAD_ERROR(d, "model.safetensors.index.json");
  }
  // A shard that is not a safetensors file.
  write_text(index_path, index.dump());
  write_text(d + "/model-00003-of-00003.safetensors", "garbage");
  EXPECT_LOAD_ERROR(d, "model-00003-of-00003.safetensors");
}

#undef EXPECT_LOAD_ERROR

}  // namespace hf_model_test
