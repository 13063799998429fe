// A quantized Hugging Face model written as a GGUF model file that llama.cpp loads and
// runs — what llama.cpp's convert_hf_to_gguf.py followed by llama-quantize would give,
// with nibble's 4-bit linears. The HF counterpart of gguf_model_writer.hpp (which copies
// a GGUF source's metadata instead).
//
// Input: the HF directory (config.json, tokenizer.json, tokenizer_config.json and, when
// tokenizer_config.json has no chat_template, chat_template.jinja) and the model loaded
// from it (load_hf_model: RopeStyle::halves, rows in HF order) with the seven linears of
// every block replaced by 4-bit matrices of the output type's codebook in groups of 32
// (Q4_0: int4_sym; IQ4_NL: iq4_nl) — what quantize_model / io::quantize_q4_0 make.
//
// Metadata, as the converter writes it for LlamaForCausalLM (arch "llama") and
// Qwen2ForCausalLM (arch "qwen2"):
//   general.architecture, general.name (option, else the directory's name),
//   general.file_type (2 = mostly Q4_0, 25 = mostly IQ4_NL), general.quantization_version 2;
//   <arch>.block_count, context_length (max_position_embeddings), embedding_length,
//   feed_forward_length, attention.head_count, attention.head_count_kv, rope.freq_base,
//   attention.layer_norm_rms_epsilon; attention.key_length / value_length when head_dim
//   is not hidden/heads; rope.scaling.type "linear" + rope.scaling.factor for linear RoPE
//   scaling; llama only (as the converter): vocab_size, rope.dimension_count (the head size).
//   tokenizer.ggml.model "gpt2"; tokenizer.ggml.pre as llama.cpp names nibble's
//   pre-tokenizer: smollm → "smollm", llama3 → "llama-bpe", qwen2 → "qwen2", gpt2 → "gpt-2"
//   (the converter recognises a tokenizer by the hash of its ids on a test text; these
//   are the names it writes for SmolLM, Llama 3, Qwen2 and GPT-2, and llama.cpp gives each
//   the same regex and flags as nibble's PreTokenizer); tokenizer.ggml.tokens /
//   token_type / merges; bos / eos / unknown / padding token ids when the tokenizer has
//   them; add_bos_token / add_eos_token (always written, so llama.cpp's per-pre-tokenizer
//   default cannot differ from the HF tokenizer's); add_space_prefix when
//   tokenizer_config.json has add_prefix_space; tokenizer.chat_template.
// Token types as the converter's get_vocab_base sets them: 1 normal; added tokens 3
// (control) when special or when they look special (<|…|>, <｜…｜>, <pad>, <mask>,
// <2mass>, [@BOS@], <unused…>), else 4 (user-defined, U+2581 replaced by a space); ids
// from the tokenizer's size up to config.json's vocab_size are "[PADn]" with type 5
// (unused). lstrip / rstrip of added tokens have no GGUF key and are not carried (llama.cpp
// sets them by its own rules).
//
// Tensors (ne[0] = in_features):
//   token_embd.weight (and output.weight when the classifier is not tied) as
//     HfGgufOptions::embedding_type: Q8_0 (default; llama.cpp's quantize_row_q8_0_ref, so
//     an embedding decoded from Q8_0 is written back as the same bytes), F16 or F32;
//   output_norm.weight, blk.N.attn_norm / ffn_norm F32 — the gains the model holds (AWQ
//     folds its scales into them);
//   blk.N.attn_q / attn_k / attn_v / attn_output / ffn_gate / ffn_up / ffn_down .weight in
//     the 4-bit type (io::to_gguf_blocks);
//   qwen2: blk.N.attn_q / attn_k / attn_v .bias F32.
// RoPE: llama.cpp rotates llama files' q/k as adjacent pairs (2i, 2i+1), and the converter
// permutes each head's q and k rows from HF's rotate_half order (i, i + head/2) to that:
// GGUF row 2i + j of a head = HF row j·head/2 + i. Here the permutation moves whole rows
// of GGUF blocks after quantization — exact, because blocks run along a row — so the
// quantizers and their calibration see the HF model as the runtime computes it (halves).
// qwen2 files are rotated by llama.cpp as halves (NEOX): no permutation, like the converter.
//
// Bad input (weights that are not this directory's model, fp32 or wrong-codebook linears,
// a tokenizer larger than vocab_size or one whose flags llama.cpp cannot express) is a
// nibble::Error; the file is assembled under a temporary name and renamed at the end, so
// an error leaves no output behind.
//
// Needs nlohmann/json.hpp (CMake target nibble::io).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "../format/int8_matrix.hpp"
#include "../io/gguf.hpp"
#include "bpe_tokenizer_json.hpp"
#include "gguf_model.hpp"
#include "gguf_model_writer.hpp"
#include "hf_model.hpp"
#include "llama_weights.hpp"

namespace nibble::model {

struct HfGgufOptions {
  // token_embd.weight (and output.weight): Q8_0, F16 or F32.
  io::GgmlType embedding_type = io::GgmlType::Q8_0;
  std::string name;  // general.name; empty: the directory's last path component
};

namespace hf_gguf_detail {

// llama.cpp's tokenizer.ggml.pre for each pre-tokenizer nibble reads from tokenizer.json.
inline const char* llama_cpp_pre_name(PreTokenizer p) {
  switch (p) {
    case PreTokenizer::smollm: return "smollm";
    case PreTokenizer::llama3: return "llama-bpe";
    case PreTokenizer::qwen2: return "qwen2";
    case PreTokenizer::gpt2: return "gpt-2";
    case PreTokenizer::default_: break;
  }
  detail::throw_error("GGUF from HF: the tokenizer's pre-tokenizer '", to_string(p), "' has no llama.cpp name");
}

// convert_hf_to_gguf.py's does_token_look_special.
inline bool looks_special(const std::string& t) {
  auto wrapped = [&](const std::string& open, const std::string& close) {
    return t.size() >= open.size() + close.size() && t.compare(0, open.size(), open) == 0 &&
           t.compare(t.size() - close.size(), close.size(), close) == 0;
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || wrapped("<|", "|>") ||
         wrapped("<\xEF\xBD\x9C", "\xEF\xBD\x9C>") || wrapped("<unused", ">");
}

inline std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size()))
    s.replace(at, from.size(), to);
  return s;
}

// The last path component of a directory ("a/b/" → "b").
inline std::string base_name(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const std::size_t slash = dir.find_last_of('/');
  return slash == std::string::npos ? dir : dir.substr(slash + 1);
}

// Rows of GGUF blocks (row_bytes each) of a q or k projection with n_heads heads, from
// HF's rotate_half order to llama.cpp's adjacent pairs: row 2i + j of a head takes HF
// row j·head/2 + i.
inline std::vector<std::uint8_t> adjacent_pair_rows(const std::vector<std::uint8_t>& blocks, std::size_t rows,
                                                    std::size_t n_heads) {
  detail::require(n_heads > 0 && rows % n_heads == 0 && (rows / n_heads) % 2 == 0, "GGUF from HF: ", rows,
                  " rows do not split into ", n_heads, " heads of even size");
  const std::size_t row_bytes = blocks.size() / rows, head = rows / n_heads, half = head / 2;
  std::vector<std::uint8_t> out(blocks.size());
  for (std::size_t h = 0; h < n_heads; ++h)
    for (std::size_t i = 0; i < half; ++i)
      for (std::size_t j = 0; j < 2; ++j)
        std::memcpy(out.data() + (h * head + 2 * i + j) * row_bytes,
                    blocks.data() + (h * head + j * half + i) * row_bytes, row_bytes);
  return out;
}

// An fp32-valued matrix (embedding, classifier) as Q8_0, F16 or F32.
inline void add_dense(io::GgufWriter& out, const std::string& name, const StoredMatrix& m, io::GgmlType type) {
  const std::size_t rows = static_cast<std::size_t>(m.rows()), cols = static_cast<std::size_t>(m.cols());
  const std::vector<std::uint64_t> ne = {cols, rows};
  if (type == io::GgmlType::Q8_0) {
    const std::vector<std::uint8_t> b = m.is_int8() ? m.int8_ptr()->to_q8_0_blocks()
                                                    : quantize_q8_0(m.to_float()).to_q8_0_blocks();
    out.add_tensor(name, static_cast<std::uint32_t>(type), ne, b.data(), b.size());
    return;
  }
  const RowMatrixXf f = m.to_float();
  if (type == io::GgmlType::F32) {
    out.add_f32(name, rows, cols, f.data());
    return;
  }
  std::vector<std::uint16_t> h(static_cast<std::size_t>(f.size()));
  for (std::size_t i = 0; i < h.size(); ++i) {
    h[i] = float_to_half(f.data()[i]);
    detail::require((h[i] & 0x7C00u) != 0x7C00u, "GGUF from HF: ", name, " value ", f.data()[i], " at row ",
                    i / cols, ", column ", i % cols, " does not fit in F16 (use Q8_0 or F32)");
  }
  out.add_tensor(name, static_cast<std::uint32_t>(type), ne, h.data(), h.size() * 2);
}

inline void add_vector(io::GgufWriter& out, const std::string& name, const Eigen::VectorXf& v) {
  out.add_f32(name, 1, static_cast<std::size_t>(v.size()), v.data());
}

// The weights must be the directory's model: the same hyper-parameters as its config.json.
inline void require_same_config(const LlamaConfig& w, const LlamaConfig& d, const std::string& dir) {
  auto same = [&](const char* what, double a, double b) {
    detail::require(a == b, "GGUF from HF: the model's ", what, " (", a, ") differs from '", dir,
                    "/config.json' (", b, "): the weights are not this directory's model");
  };
  detail::require(w.architecture == d.architecture, "GGUF from HF: the model's architecture '", w.architecture,
                  "' differs from '", dir, "/config.json' ('", d.architecture, "')");
  same("hidden size", w.dim, d.dim);
  same("intermediate size", w.hidden_dim, d.hidden_dim);
  same("layer count", w.n_layers, d.n_layers);
  same("head count", w.n_heads, d.n_heads);
  same("kv head count", w.n_kv_heads, d.n_kv_heads);
  same("head size", w.head_size(), d.head_size());
  same("vocab size", w.vocab_size, d.vocab_size);
  same("context length", w.seq_len, d.seq_len);
  same("RoPE base", w.rope_base, d.rope_base);
  same("RoPE scale", w.rope_scale, d.rope_scale);
  same("RMSNorm epsilon", w.norm_eps, d.norm_eps);
  same("tied classifier", w.shared_classifier, d.shared_classifier);
  same("q/k/v biases", w.qkv_bias, d.qkv_bias);
  detail::require(w.rope_style == RopeStyle::halves, "GGUF from HF: the model's RoPE pairs adjacent dimensions; ",
                  "a model loaded from an HF directory pairs halves (its q/k rows in HF order)");
}

// The chat template: tokenizer_config.json's "chat_template" string, else chat_template.jinja.
inline std::string chat_template(const std::string& dir, const nlohmann::json* tokenizer_config) {
  if (tokenizer_config != nullptr && tokenizer_config->contains("chat_template") &&
      (*tokenizer_config)["chat_template"].is_string())
    return (*tokenizer_config)["chat_template"].get<std::string>();
  const std::string jinja = hf_detail::join(dir, "chat_template.jinja");
  if (hf_detail::is_regular_file(jinja)) return hf_detail::read_text(jinja, "'" + jinja + "'");
  return std::string();
}

}  // namespace hf_gguf_detail

// Writes `w` — the model of the HF directory `hf_dir`, its block linears now 4-bit
// matrices of `type`'s codebook (Q4_0 or IQ4_NL) in groups of 32 — as a GGUF model at
// `path` (see the top of this file).
inline void write_gguf_from_hf(const std::string& hf_dir, const LlamaWeights& w, io::GgmlType type,
                               const std::string& path, const HfGgufOptions& options = {}) {
  using namespace hf_gguf_detail;
  const std::uint32_t file_type = gguf_file_type(type);
  const io::GgmlType et = options.embedding_type;
  detail::require(et == io::GgmlType::Q8_0 || et == io::GgmlType::F16 || et == io::GgmlType::F32,
                  "GGUF from HF: embedding type ", io::ggml_type_name(static_cast<std::uint32_t>(et)),
                  " is not one nibble writes (Q8_0, F16, F32)");
  detail::require(hf_detail::is_directory(hf_dir), "GGUF from HF: '", hf_dir, "' is not a directory");
  const LlamaConfig& c = w.config;
  validate_weights(w, "GGUF from HF");
  {
    const std::string cfg = hf_detail::join(hf_dir, "config.json");
    require_same_config(c, hf_llama_config(hf_detail::read_text(cfg, "'" + cfg + "'"), "'" + cfg + "'"), hf_dir);
  }

  // Tokenizer, as load_hf reads it (so the GGUF's tokenizer is the one nibble ran).
  const std::string tok_path = hf_detail::join(hf_dir, "tokenizer.json");
  const std::string cfg_path = hf_detail::join(hf_dir, "tokenizer_config.json");
  detail::require(hf_detail::is_regular_file(tok_path), "GGUF from HF: '", hf_dir,
                  "' has no tokenizer.json (a GGUF model needs its tokenizer)");
  const bool has_cfg = hf_detail::is_regular_file(cfg_path);
  const std::string cfg_text = has_cfg ? hf_detail::read_text(cfg_path, "'" + cfg_path + "'") : std::string();
  HfBpeVocabulary v;
  try {
    v = parse_hf_bpe_vocabulary(hf_detail::read_text(tok_path, "'" + tok_path + "'"), cfg_text);
    to_bpe_tokenizer(v);  // the same checks load_hf makes (ids in range, add_bos with a BOS, merges)
  } catch (const Error& e) {
    throw Error("GGUF from HF: " + hf_detail::bare(e) + " ('" + tok_path + "')");
  }
  nlohmann::json tok_cfg;
  if (has_cfg) tok_cfg = nlohmann::json::parse(cfg_text, nullptr, /*allow_exceptions=*/false);
  const nlohmann::json* tok_cfg_ptr = tok_cfg.is_object() ? &tok_cfg : nullptr;
  const std::size_t n_tokens = v.tokens.size();
  detail::require(n_tokens <= static_cast<std::size_t>(c.vocab_size), "GGUF from HF: tokenizer.json has ", n_tokens,
                  " tokens, more than config.json's vocab_size ", c.vocab_size);
  const BpeFlags llama_cpp_flags = BpeTokenizer::default_flags(v.pre);
  detail::require(v.flags.ignore_merges == llama_cpp_flags.ignore_merges, "GGUF from HF: tokenizer.json has ",
                  "ignore_merges = ", v.flags.ignore_merges ? "true" : "false", ", but llama.cpp's '",
                  llama_cpp_pre_name(v.pre), "' pre-tokenizer uses ", llama_cpp_flags.ignore_merges ? "true" : "false",
                  " and a GGUF file cannot say otherwise");
  std::vector<std::string> tokens(static_cast<std::size_t>(c.vocab_size));
  std::vector<std::int32_t> types(tokens.size(), static_cast<std::int32_t>(TokenType::unused));
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (i >= n_tokens) {
      tokens[i] = "[PAD" + std::to_string(i) + "]";
      continue;
    }
    tokens[i] = v.tokens[i];
    TokenType t = v.types[i];
    if (t == TokenType::user_defined) {
      if (looks_special(tokens[i])) t = TokenType::control;
      else tokens[i] = replace_all(tokens[i], "\xE2\x96\x81", " ");
    }
    types[i] = static_cast<std::int32_t>(t);
  }
  std::vector<std::string> merges;
  merges.reserve(v.merges.size());
  for (const auto& [a, b] : v.merges) merges.push_back(a + " " + b);

  const std::string arch = c.architecture;
  const std::string p = arch + ".";
  io::GgufWriter out(path);
  out.set_general(arch, options.name.empty() ? base_name(hf_dir) : options.name, file_type);
  out.set_u32(p + "block_count", static_cast<std::uint32_t>(c.n_layers));
  out.set_u32(p + "context_length", static_cast<std::uint32_t>(c.seq_len));
  out.set_u32(p + "embedding_length", static_cast<std::uint32_t>(c.dim));
  out.set_u32(p + "feed_forward_length", static_cast<std::uint32_t>(c.hidden_dim));
  out.set_u32(p + "attention.head_count", static_cast<std::uint32_t>(c.n_heads));
  out.set_u32(p + "attention.head_count_kv", static_cast<std::uint32_t>(c.n_kv_heads));
  out.set_f32(p + "rope.freq_base", c.rope_base);
  out.set_f32(p + "attention.layer_norm_rms_epsilon", c.norm_eps);
  if (c.head_dim > 0 && c.head_dim * c.n_heads != c.dim) {
    out.set_u32(p + "attention.key_length", static_cast<std::uint32_t>(c.head_dim));
    out.set_u32(p + "attention.value_length", static_cast<std::uint32_t>(c.head_dim));
  }
  if (c.rope_scale != 1.0f) {
    out.set_string(p + "rope.scaling.type", "linear");
    out.set_f32(p + "rope.scaling.factor", c.rope_scale);
  }
  if (arch == "llama") {
    out.set_u32(p + "vocab_size", static_cast<std::uint32_t>(c.vocab_size));
    out.set_u32(p + "rope.dimension_count", static_cast<std::uint32_t>(c.head_size()));
  }
  out.set_string("tokenizer.ggml.model", "gpt2");
  out.set_string("tokenizer.ggml.pre", llama_cpp_pre_name(v.pre));
  out.set_string_array("tokenizer.ggml.tokens", tokens);
  out.set_i32_array("tokenizer.ggml.token_type", types);
  out.set_string_array("tokenizer.ggml.merges", merges);
  if (v.ids.bos >= 0) out.set_u32("tokenizer.ggml.bos_token_id", static_cast<std::uint32_t>(v.ids.bos));
  if (v.ids.eos >= 0) out.set_u32("tokenizer.ggml.eos_token_id", static_cast<std::uint32_t>(v.ids.eos));
  if (v.ids.unk >= 0) out.set_u32("tokenizer.ggml.unknown_token_id", static_cast<std::uint32_t>(v.ids.unk));
  if (v.ids.pad >= 0) out.set_u32("tokenizer.ggml.padding_token_id", static_cast<std::uint32_t>(v.ids.pad));
  out.set_bool("tokenizer.ggml.add_bos_token", v.flags.add_bos);
  out.set_bool("tokenizer.ggml.add_eos_token", v.flags.add_eos);
  if (tok_cfg_ptr != nullptr && tok_cfg.contains("add_prefix_space") && tok_cfg["add_prefix_space"].is_boolean())
    out.set_bool("tokenizer.ggml.add_space_prefix", tok_cfg["add_prefix_space"].get<bool>());
  const std::string tmpl = chat_template(hf_dir, tok_cfg_ptr);
  if (!tmpl.empty()) out.set_string("tokenizer.chat_template", tmpl);

  add_dense(out, "token_embd.weight", w.token_embedding, et);
  add_vector(out, "output_norm.weight", w.rms_final);
  if (!c.shared_classifier) add_dense(out, "output.weight", w.wcls, et);
  const bool permute = arch == "llama";
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayer& L = w.layers[static_cast<std::size_t>(l)];
    const std::string b = gguf_block_prefix(l);
    add_vector(out, b + "attn_norm.weight", L.rms_att);
    for (const GgufLayerLinear& t : gguf_layer_linears()) {
      const StoredMatrix& m = L.*t.matrix;
      detail::require(m.is_quantized(), "GGUF from HF: ", b, t.name, " is ", m.describe(),
                      ", expected a 4-bit matrix");
      const QuantizedMatrix& q = *m.quantized_ptr();
      std::vector<std::uint8_t> blocks = io::to_gguf_blocks(type, q);
      const std::string name = t.name;
      if (permute && name == "attn_q") blocks = adjacent_pair_rows(blocks, q.rows(), static_cast<std::size_t>(c.n_heads));
      if (permute && name == "attn_k")
        blocks = adjacent_pair_rows(blocks, q.rows(), static_cast<std::size_t>(c.n_kv_heads));
      out.add_tensor(b + name + ".weight", static_cast<std::uint32_t>(type), {q.cols(), q.rows()}, blocks.data(),
                     blocks.size());
      if (c.qkv_bias && name == "attn_q") add_vector(out, b + "attn_q.bias", L.bq);
      if (c.qkv_bias && name == "attn_k") add_vector(out, b + "attn_k.bias", L.bk);
      if (c.qkv_bias && name == "attn_v") add_vector(out, b + "attn_v.bias", L.bv);
    }
    add_vector(out, b + "ffn_norm.weight", L.rms_ffn);
  }
  out.finish();
}

}  // namespace nibble::model
