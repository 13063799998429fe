// Hugging Face model directories for the tests, written here: a random Llama / Qwen2
// model (config.json + model.safetensors, rows in HF's rotate_half order) and a small
// byte-level BPE tokenizer.json with added tokens, plus a temporary directory that
// removes itself. Used by the GGUF-from-HF and quantized-HF writer tests.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <nibble/io/safetensors.hpp>
#include <nibble/model/bpe_tokenizer_json.hpp>

#include "llm_test_models.hpp"

namespace nibble::test {

using model::RopeStyle;
using json = nlohmann::json;
namespace bpe_json_detail = model::bpe_json_detail;

// A fresh directory per test (ctest runs tests as parallel processes), removed after.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "nibble_hfdir_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    const char* p = ::mkdtemp(buf.data());
    if (p == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

inline bool exists(const std::string& path) { return std::ifstream(path).good(); }

// GPT-2's bytes_to_unicode: the printable bytes stand for themselves, the others for
// U+0100 upwards in byte order (space → U+0120 'Ġ').
inline std::string byte_char(int b) {
  const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  int cp = b;
  if (!printable) {
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) s += static_cast<char>(cp);
  else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

inline std::string byte_text(const std::string& plain) {
  std::string s;
  for (unsigned char c : plain) s += byte_char(c);
  return s;
}

struct TokenizerSpec {
  bool qwen2_pre = false;  // Split(qwen2 regex) + ByteLevel; else smollm (Digits + ByteLevel)
  bool add_bos = true;
  bool template_in_config = true;  // else chat_template.jinja
};

inline constexpr const char* kTemplate = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}";

// A byte-level BPE: 256 byte tokens, merges for "hello", " world", " the" and digits,
// then added tokens: three special ChatML ones, a plain user-defined "nibble" and a
// non-special "<|tool|>" (which the converter makes a control token: it looks special).
// Returns the number of tokens.
inline int write_tokenizer(const std::string& dir, const TokenizerSpec& spec) {
  json vocab = json::object();
  int id = 0;
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = id++;
  const std::vector<std::pair<std::string, std::string>> plain_merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {" ", "w"}, {"o", "r"}, {" w", "or"},
      {"l", "d"}, {" wor", "ld"}, {" ", "t"}, {"h", "e"}, {" t", "he"}, {"1", "2"}};
  json merges = json::array();
  for (const auto& [a, b] : plain_merges) {
    merges.push_back(byte_text(a) + " " + byte_text(b));
    if (!vocab.contains(byte_text(a + b))) vocab[byte_text(a + b)] = id++;
  }
  json added = json::array();
  auto add = [&](const std::string& text, bool special) {
    added.push_back({{"id", id++}, {"content", text}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", special}});
  };
  add("<|endoftext|>", true);
  add("<|im_start|>", true);
  add("<|im_end|>", true);
  add("nibble", false);
  add("<|tool|>", false);
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                           {"use_regex", !spec.qwen2_pre}};
  json pre;
  if (spec.qwen2_pre)
    pre = {{"type", "Sequence"},
           {"pretokenizers",
            {{{"type", "Split"}, {"pattern", {{"Regex", bpe_json_detail::kQwen2Regex}}}, {"behavior", "Isolated"},
              {"invert", false}},
             byte_level}}};
  else
    pre = {{"type", "Sequence"},
           {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level}}};
  const json tok = {{"version", "1.0"},
                    {"truncation", nullptr},
                    {"padding", nullptr},
                    {"added_tokens", added},
                    {"normalizer", nullptr},
                    {"pre_tokenizer", pre},
                    {"post_processor", nullptr},
                    {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                                 {"use_regex", true}}},
                    {"model",
                     {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                      {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                      {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}}}};
  write_text(dir + "/tokenizer.json", tok.dump(1));
  json cfg = {{"bos_token", "<|im_start|>"},   {"eos_token", "<|im_end|>"},
              {"unk_token", "<|endoftext|>"},  {"pad_token", {{"content", "<|endoftext|>"}}},
              {"add_bos_token", spec.add_bos}, {"add_eos_token", false},
              {"add_prefix_space", false},     {"tokenizer_class", "GPT2Tokenizer"}};
  if (spec.template_in_config) cfg["chat_template"] = kTemplate;
  else write_text(dir + "/chat_template.jinja", kTemplate);
  write_text(dir + "/tokenizer_config.json", cfg.dump(1));
  return id;
}

inline void add_f32(io::SafetensorsWriter& w, const std::string& name, const RowMatrixXf& m) {
  w.add(name, io::DType::F32, {static_cast<std::uint64_t>(m.rows()), static_cast<std::uint64_t>(m.cols())}, m.data(),
        static_cast<std::size_t>(m.size()) * 4);
}
inline void add_f32(io::SafetensorsWriter& w, const std::string& name, const Eigen::VectorXf& v) {
  w.add(name, io::DType::F32, {static_cast<std::uint64_t>(v.size())}, v.data(), static_cast<std::size_t>(v.size()) * 4);
}

// config.json of a model with this configuration, as transformers writes it.
inline json hf_config_json(const LlamaConfig& c) {
  json j = {{"architectures", {c.architecture == "qwen2" ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
            {"model_type", c.architecture},
            {"hidden_size", c.dim},
            {"intermediate_size", c.hidden_dim},
            {"num_hidden_layers", c.n_layers},
            {"num_attention_heads", c.n_heads},
            {"num_key_value_heads", c.n_kv_heads},
            {"max_position_embeddings", c.seq_len},
            {"rope_theta", c.rope_base},
            {"rope_scaling", nullptr},
            {"rms_norm_eps", c.norm_eps},
            {"tie_word_embeddings", c.shared_classifier},
            {"vocab_size", c.vocab_size},
            {"hidden_act", "silu"},
            {"torch_dtype", "float32"}};
  if (c.head_dim > 0) j["head_dim"] = c.head_dim;
  return j;
}

struct ModelSpec {
  bool qwen2 = false;
  bool tied = false;
  int vocab = 300;  // > the tokenizer's 273 tokens: ids 273.. are [PADn]
  std::uint32_t seed = 3;
};

// config.json + model.safetensors of a random model (dim 64, 4 heads of 16 over 2 kv
// heads, ffn 96, 2 layers; linear RoPE scaling 2), rows in HF (rotate_half) order.
inline void write_model(const std::string& dir, const ModelSpec& spec) {
  test::RandomModelShape shape;
  shape.dim = 64, shape.hidden_dim = 96, shape.n_layers = 2, shape.n_heads = 4, shape.n_kv_heads = 2;
  shape.head_dim = 16, shape.vocab = spec.vocab;
  const LlamaWeights w = test::random_model(RopeStyle::halves, spec.qwen2, spec.seed, shape);
  const LlamaConfig& c = w.config;
  json config = hf_config_json(c);
  config["rope_scaling"] = {{"type", "linear"}, {"factor", c.rope_scale}};
  config["tie_word_embeddings"] = spec.tied;
  write_text(dir + "/config.json", config.dump(2));
  io::SafetensorsWriter st(dir + "/model.safetensors");
  st.set_metadata("format", "pt");
  add_f32(st, "model.embed_tokens.weight", w.token_embedding.dense());
  if (!spec.tied) add_f32(st, "lm_head.weight", w.wcls.dense());
  add_f32(st, "model.norm.weight", w.rms_final);
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayer& L = w.layers[static_cast<std::size_t>(l)];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add_f32(st, p + "input_layernorm.weight", L.rms_att);
    add_f32(st, p + "post_attention_layernorm.weight", L.rms_ffn);
    add_f32(st, p + "self_attn.q_proj.weight", L.wq.dense());
    add_f32(st, p + "self_attn.k_proj.weight", L.wk.dense());
    add_f32(st, p + "self_attn.v_proj.weight", L.wv.dense());
    add_f32(st, p + "self_attn.o_proj.weight", L.wo.dense());
    add_f32(st, p + "mlp.gate_proj.weight", L.w1.dense());
    add_f32(st, p + "mlp.up_proj.weight", L.w3.dense());
    add_f32(st, p + "mlp.down_proj.weight", L.w2.dense());
    if (spec.qwen2) {
      add_f32(st, p + "self_attn.q_proj.bias", L.bq);
      add_f32(st, p + "self_attn.k_proj.bias", L.bk);
      add_f32(st, p + "self_attn.v_proj.bias", L.bv);
    }
  }
  st.finish();
}

}  // namespace nibble::test
