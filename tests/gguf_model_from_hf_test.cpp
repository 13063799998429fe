// write_gguf_from_hf (model/gguf_model_from_hf.hpp): tiny Hugging Face directories
// written here (random weights, a small byte-level BPE tokenizer.json with added tokens,
// tokenizer_config.json), loaded by load_model, quantized, written as GGUF models and read
// back by nibble's GGUF loader:
//   * the GGUF model gives the logits of the in-memory quantized HF model (llama: q/k
//     rows permuted to adjacent RoPE pairs, run with RopeStyle::adjacent_pairs; qwen2: no
//     permutation), and its matrices are the in-memory ones row for row;
//   * the tokenizer read back from the GGUF encodes like the tokenizer.json one;
//   * metadata and token types are what llama.cpp's converter writes;
//   * bad input is a clear nibble::Error and leaves no file.
// llama.cpp itself running such a file on SmolLM2 is tests/llama_cpp/check_hf_to_gguf.sh.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include <nibble/io/safetensors.hpp>
#include <nibble/model/gguf_model_from_hf.hpp>
#include <nibble/model/load_model.hpp>
#include <nibble/model/quantize_model.hpp>
#include <nibble/model/transformer.hpp>

#include "hf_test_dirs.hpp"
#include "llm_test_models.hpp"

namespace gguf_model_from_hf_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;
using namespace nibble::model;
using json = nlohmann::json;
using namespace nibble::test;

namespace {

// Every linear by llama.cpp's own rounding (what nibble-quant --method rtn writes).
LlamaWeights rtn(LlamaWeights w, io::GgmlType type) {
  for (auto& L : w.layers)
    for (const GgufLayerLinear& t : gguf_layer_linears()) {
      const RowMatrixXf& W = (L.*t.matrix).dense();
      L.*t.matrix = StoredMatrix(type == io::GgmlType::Q4_0 ? io::quantize_q4_0(W) : io::quantize_iq4_nl(W));
    }
  return w;
}

RowMatrixXf logits(const LlamaWeights& w, const std::vector<int>& tokens) {
  const Transformer t = Transformer::from_weights(w);
  KvCache cache = t.new_cache(static_cast<int>(tokens.size()));
  return t.forward(tokens, cache);
}

double relative_max_diff(const RowMatrixXf& a, const RowMatrixXf& b) {
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / static_cast<double>(a.cwiseAbs().maxCoeff());
}

// HF rotate_half rows → llama.cpp's adjacent pairs (the converter's permute).
RowMatrixXf halves_to_adjacent(const RowMatrixXf& w, int n_heads) {
  const Eigen::Index hs = w.rows() / n_heads, half = hs / 2;
  RowMatrixXf out(w.rows(), w.cols());
  for (Eigen::Index h = 0; h < n_heads; ++h)
    for (Eigen::Index i = 0; i < half; ++i)
      for (Eigen::Index j = 0; j < 2; ++j) out.row(h * hs + 2 * i + j) = w.row(h * hs + j * half + i);
  return out;
}

// The in-memory model with the embedding (and classifier) stored as the file stores them.
LlamaWeights with_embedding_as(LlamaWeights w, io::GgmlType type) {
  auto as = [&](const StoredMatrix& m) -> StoredMatrix {
    if (type == io::GgmlType::Q8_0) return StoredMatrix(quantize_q8_0(m.dense()));
    if (type == io::GgmlType::F16) {
      RowMatrixXf f = m.dense();
      for (Eigen::Index i = 0; i < f.size(); ++i) f.data()[i] = half_to_float(float_to_half(f.data()[i]));
      return StoredMatrix(std::move(f));
    }
    return m;
  };
  w.token_embedding = as(w.token_embedding);
  if (!w.config.shared_classifier) w.wcls = as(w.wcls);
  return w;
}

const std::vector<std::string>& sample_texts() {
  static const std::vector<std::string> t = {
      "hello world",
      " hello  the world 1234 12 x",
      "<|im_start|>hello<|im_end|>\n the nibble world",
      "\xC3\xBC\xC3\xB1\xC3\xAF c\xC3\xB6" "d\xC3\xA9 \xF0\x9F\xA6\x99 99\n\n\tworld"};
  return t;
}

// The whole round trip for one configuration (see the top of this file).
void expect_round_trip(const ModelSpec& ms, const TokenizerSpec& ts, io::GgmlType type, io::GgmlType embedding,
                       const std::string& method) {
  TempDir dir;
  write_model(dir.path(), ms);
  const int n_tokens = write_tokenizer(dir.path(), ts);
  const LoadedModel m = load_model(dir.path());
  ASSERT_EQ(m.weights.config.rope_style, RopeStyle::halves);
  const LlamaConfig& c = m.weights.config;

  LlamaWeights q;
  if (method == "rtn") {
    q = rtn(m.weights, type);
  } else {
    ModelQuantOptions o;
    o.method = method == "awq" ? Method::awq : Method::iq4_nl_clip;
    QuantConfig storage;
    storage.group_size = 32;
    storage.scale_format = ScaleFormat::f16;
    storage.codebook = type == io::GgmlType::Q4_0 ? Codebook::int4_sym : Codebook::iq4_nl;
    if (type == io::GgmlType::Q4_0) storage.sym_scale = SymScale::full_range;
    o.storage = storage;
    o.group_size = 32;
    o.backend = LinearBackend::dequantized;
    q = with_quantized_linears(m.weights, quantize_model(m.weights, o, test::calibration_tokens(2, 24, c.vocab_size)));
  }

  const std::string out_path = dir / "out.gguf";
  HfGgufOptions opt;
  opt.embedding_type = embedding;
  write_gguf_from_hf(dir.path(), q, type, out_path, opt);
  const io::GgufReader r = io::GgufReader::open(out_path);
  const io::GgufMetadata& md = r.typed_metadata();
  const std::string arch = ms.qwen2 ? "qwen2" : "llama";

  // Metadata.
  EXPECT_EQ(md.get_string("general.architecture"), arch);
  EXPECT_EQ(md.get_string("general.name"), std::filesystem::path(dir.path()).filename().string());
  EXPECT_EQ(md.get_int("general.file_type"), type == io::GgmlType::Q4_0 ? 2 : 25);
  EXPECT_EQ(md.get_int("general.quantization_version"), 2);
  EXPECT_EQ(md.get_int(arch + ".block_count"), c.n_layers);
  EXPECT_EQ(md.get_int(arch + ".context_length"), c.seq_len);
  EXPECT_EQ(md.get_int(arch + ".embedding_length"), c.dim);
  EXPECT_EQ(md.get_int(arch + ".feed_forward_length"), c.hidden_dim);
  EXPECT_EQ(md.get_int(arch + ".attention.head_count"), c.n_heads);
  EXPECT_EQ(md.get_int(arch + ".attention.head_count_kv"), c.n_kv_heads);
  EXPECT_EQ(static_cast<float>(md.get_float(arch + ".rope.freq_base")), c.rope_base);
  EXPECT_EQ(static_cast<float>(md.get_float(arch + ".attention.layer_norm_rms_epsilon")), c.norm_eps);
  EXPECT_EQ(md.get_string(arch + ".rope.scaling.type"), "linear");
  EXPECT_EQ(static_cast<float>(md.get_float(arch + ".rope.scaling.factor")), c.rope_scale);
  EXPECT_FALSE(md.contains(arch + ".attention.key_length"));  // head_dim is hidden / heads here
  EXPECT_EQ(md.contains(arch + ".vocab_size"), !ms.qwen2);     // as the converter: llama only
  if (!ms.qwen2) {
    EXPECT_EQ(md.get_int("llama.vocab_size"), c.vocab_size);
    EXPECT_EQ(md.get_int("llama.rope.dimension_count"), c.head_size());
  }
  EXPECT_EQ(md.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(md.get_string("tokenizer.ggml.pre"), ts.qwen2_pre ? "qwen2" : "smollm");
  EXPECT_EQ(md.get_string("tokenizer.chat_template"), kTemplate);
  EXPECT_EQ(md.get_bool("tokenizer.ggml.add_bos_token"), ts.add_bos);
  EXPECT_FALSE(md.get_bool("tokenizer.ggml.add_eos_token"));
  EXPECT_FALSE(md.get_bool("tokenizer.ggml.add_space_prefix"));
  const std::vector<std::string>& tokens = md.string_array("tokenizer.ggml.tokens");
  const std::vector<std::int64_t>& types = md.int_array("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), static_cast<std::size_t>(c.vocab_size));
  ASSERT_EQ(types.size(), tokens.size());
  const BpeTokenizer& hf_tok = *m.tokenizer.bpe();
  for (int i = 0; i < c.vocab_size; ++i) {
    const auto u = static_cast<std::size_t>(i);
    if (i >= n_tokens) {
      EXPECT_EQ(tokens[u], "[PAD" + std::to_string(i) + "]");
      EXPECT_EQ(types[u], 5) << i;
      continue;
    }
    EXPECT_EQ(tokens[u], hf_tok.token_text(i)) << i;
    const std::string& t = tokens[u];
    const int want = t == "nibble" ? 4 : (t.rfind("<|", 0) == 0 ? 3 : 1);  // <|tool|> looks special: control
    EXPECT_EQ(types[u], want) << t;
  }
  EXPECT_EQ(md.string_array("tokenizer.ggml.merges").size(), 13u);
  EXPECT_EQ(md.string_array("tokenizer.ggml.merges")[2], "he ll");
  EXPECT_EQ(md.get_int("tokenizer.ggml.bos_token_id"), hf_tok.find("<|im_start|>"));
  EXPECT_EQ(md.get_int("tokenizer.ggml.eos_token_id"), hf_tok.find("<|im_end|>"));
  EXPECT_EQ(md.get_int("tokenizer.ggml.unknown_token_id"), hf_tok.find("<|endoftext|>"));
  EXPECT_EQ(md.get_int("tokenizer.ggml.padding_token_id"), hf_tok.find("<|endoftext|>"));

  // Tensors: the 4-bit type for the linears, the embedding type, F32 for the rest.
  EXPECT_EQ(r.info("token_embd.weight").type, static_cast<std::uint32_t>(embedding));
  EXPECT_EQ(r.info("output_norm.weight").type, 0u);
  EXPECT_EQ(gguf_detail::has_tensor(r, "output.weight"), !ms.tied);
  if (!ms.tied) {
    EXPECT_EQ(r.info("output.weight").type, static_cast<std::uint32_t>(embedding));
  }
  EXPECT_EQ(r.info("blk.1.ffn_down.weight").type, static_cast<std::uint32_t>(type));
  EXPECT_EQ(gguf_detail::has_tensor(r, "blk.0.attn_q.bias"), ms.qwen2);

  // The model read back: the in-memory one, q/k rows in llama.cpp's order for llama.
  const LlamaWeights g = load_gguf_model(r);
  EXPECT_EQ(g.config.rope_style, ms.qwen2 ? RopeStyle::halves : RopeStyle::adjacent_pairs);
  EXPECT_EQ(g.config.rope_scale, c.rope_scale);
  EXPECT_EQ(g.config.shared_classifier, ms.tied);
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayer &a = g.layers[static_cast<std::size_t>(l)], &b = q.layers[static_cast<std::size_t>(l)];
    const std::string p = "layer " + std::to_string(l) + " ";
    ASSERT_TRUE(a.wq.is_quantized() && a.w2.is_quantized()) << p;
    const RowMatrixXf wq = b.wq.to_float(), wk = b.wk.to_float();
    EXPECT_EQ(a.wq.to_float(), ms.qwen2 ? wq : halves_to_adjacent(wq, c.n_heads)) << p << "wq";
    EXPECT_EQ(a.wk.to_float(), ms.qwen2 ? wk : halves_to_adjacent(wk, c.n_kv_heads)) << p << "wk";
    for (StoredMatrix LlamaLayer::*s : {&LlamaLayer::wv, &LlamaLayer::wo, &LlamaLayer::w1, &LlamaLayer::w2,
                                        &LlamaLayer::w3})
      EXPECT_EQ((a.*s).to_float(), (b.*s).to_float()) << p;
    EXPECT_EQ(a.rms_att, b.rms_att) << p;  // AWQ's folded gains, as the model holds them
    EXPECT_EQ(a.rms_ffn, b.rms_ffn) << p;
    if (ms.qwen2) {
      EXPECT_EQ(a.bq, b.bq);
      EXPECT_EQ(a.bk, b.bk);
      EXPECT_EQ(a.bv, b.bv);
    }
  }
  const LlamaWeights ref = with_embedding_as(q, embedding);
  EXPECT_EQ(g.token_embedding.to_float(), ref.token_embedding.to_float());

  // Logits: the GGUF model (adjacent pairs for llama) against the HF one (halves).
  std::vector<int> ids = test::calibration_tokens(1, 40, n_tokens)[0];
  ids[0] = hf_tok.find("<|im_start|>");
  const RowMatrixXf want = logits(ref, ids), got = logits(g, ids);
  EXPECT_LT(relative_max_diff(want, got), 1e-4);
  if (method == "awq") {  // AWQ changed the gains: the unscaled model must differ
    EXPECT_FALSE(q.layers[0].rms_att.isApprox(m.weights.layers[0].rms_att, 1e-3f));
  }

  // The tokenizer read back encodes like tokenizer.json.
  const BpeTokenizer gguf_tok = BpeTokenizer::from_gguf(r);
  EXPECT_EQ(gguf_tok.flags().add_bos, ts.add_bos);
  EXPECT_EQ(gguf_tok.pre_tokenizer(), hf_tok.pre_tokenizer());
  for (const std::string& text : sample_texts())
    for (bool add_special : {false, true})
      for (bool parse_special : {false, true})
        EXPECT_EQ(gguf_tok.encode(text, add_special, parse_special), hf_tok.encode(text, add_special, parse_special))
            << "'" << text << "' add_special " << add_special << " parse_special " << parse_special;
  EXPECT_EQ(gguf_tok.encode("hello world", false, false).size(), 2u);  // the merges did their work
}

std::string write_error(const std::string& dir, const LlamaWeights& w, io::GgmlType type, const std::string& path,
                        const HfGgufOptions& o = {}) {
  try {
    write_gguf_from_hf(dir, w, type, path, o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_HAS(message, part) EXPECT_NE((message).find(part), std::string::npos) << (message)

}  // namespace

TEST(GgufFromHf, LlamaRtnQ4_0UntiedF32Embedding) {
  expect_round_trip({false, false, 300, 3}, {false, true, true}, io::GgmlType::Q4_0, io::GgmlType::F32, "rtn");
}

TEST(GgufFromHf, Qwen2Iq4NlClipTiedQ8_0EmbeddingTemplateFromJinja) {
  expect_round_trip({true, true, 290, 4}, {true, false, false}, io::GgmlType::IQ4_NL, io::GgmlType::Q8_0, "clip");
}

TEST(GgufFromHf, LlamaAwqQ4_0F16EmbeddingKeepsTheFoldedGains) {
  expect_round_trip({false, false, 274, 5}, {false, true, true}, io::GgmlType::Q4_0, io::GgmlType::F16, "awq");
}

TEST(GgufFromHf, BadInputIsAClearErrorAndLeavesNoFile) {
  TempDir dir;
  write_model(dir.path(), {});
  write_tokenizer(dir.path(), {});
  const LoadedModel m = load_model(dir.path());
  const LlamaWeights q = rtn(m.weights, io::GgmlType::Q4_0);
  const std::string out = dir / "out.gguf";
  std::string e;

  e = write_error(dir.path(), m.weights, io::GgmlType::Q4_0, out);  // fp32 linears
  EXPECT_HAS(e, "expected a 4-bit matrix");
  e = write_error(dir.path(), q, io::GgmlType::IQ4_NL, out);  // Q4_0 matrices as IQ4_NL
  EXPECT_HAS(e, "codebook");
  e = write_error(dir.path(), q, io::GgmlType::Q4_1, out);
  EXPECT_HAS(e, "Q4_1");
  HfGgufOptions bad_embedding;
  bad_embedding.embedding_type = io::GgmlType::Q4_0;
  e = write_error(dir.path(), q, io::GgmlType::Q4_0, out, bad_embedding);
  EXPECT_HAS(e, "embedding type");
  e = write_error(dir / "nowhere", q, io::GgmlType::Q4_0, out);
  EXPECT_HAS(e, "not a directory");
  LlamaWeights other = q;
  other.config.rope_base = 777.0f;
  e = write_error(dir.path(), other, io::GgmlType::Q4_0, out);
  EXPECT_HAS(e, "RoPE base");
  other = q;
  other.config.rope_style = RopeStyle::adjacent_pairs;
  e = write_error(dir.path(), other, io::GgmlType::Q4_0, out);
  EXPECT_HAS(e, "adjacent");
  other = q;
  other.layers.pop_back();
  e = write_error(dir.path(), other, io::GgmlType::Q4_0, out);
  EXPECT_HAS(e, "layers");
  EXPECT_FALSE(exists(out));

  // A vocabulary larger than config.json's vocab_size.
  {
    TempDir small;
    write_model(small.path(), {false, false, 260, 3});
    write_tokenizer(small.path(), {});
    const LoadedModel sm = load_model(small.path());
    e = write_error(small.path(), rtn(sm.weights, io::GgmlType::Q4_0), io::GgmlType::Q4_0, small / "out.gguf");
    EXPECT_HAS(e, "more than config.json's vocab_size 260");
    EXPECT_FALSE(exists(small / "out.gguf"));
  }
  // No tokenizer.json; a tokenizer whose ignore_merges llama.cpp's pre-tokenizer cannot express.
  std::filesystem::rename(dir / "tokenizer.json", dir / "tokenizer.json.away");
  e = write_error(dir.path(), q, io::GgmlType::Q4_0, out);
  EXPECT_HAS(e, "no tokenizer.json");
  {
    std::ifstream in(dir / "tokenizer.json.away");
    json t = json::parse(in);
    t["model"]["ignore_merges"] = true;
    write_text(dir / "tokenizer.json", t.dump());
  }
  e = write_error(dir.path(), q, io::GgmlType::Q4_0, out);
  EXPECT_HAS(e, "ignore_merges");
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".tmp"));
}

#undef EXPECT_HAS

}  // namespace gguf_model_from_hf_test
