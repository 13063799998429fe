// Opens a model from whatever a user points at — a GGUF file, a Hugging Face directory
// or a llama2.c checkpoint (+ its tokenizer.bin) — and returns the weights together
// with the tokenizer that belongs to them, behind one small interface. Hugging Face
// directories need nlohmann/json (CMake target nibble::io).
#pragma once

#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../io/gguf.hpp"
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "bpe_tokenizer.hpp"
#include "bpe_tokenizer_json.hpp"
#include "gguf_model.hpp"
#include "hf_model.hpp"
#include "llama2c.hpp"
#include "llama_weights.hpp"

namespace nibble::model {

// The tokenizer of a model: byte-level BPE (GGUF / Hugging Face) or llama2.c's
// SentencePiece-style one.
class TextTokenizer {
 public:
  TextTokenizer() = default;
  explicit TextTokenizer(BpeTokenizer bpe) : bpe_(std::move(bpe)) {}
  explicit TextTokenizer(Tokenizer sentencepiece) : sp_(std::move(sentencepiece)) {}

  bool empty() const { return !bpe_ && !sp_; }

  // Token ids of `text`; add_special adds BOS (and EOS) as the model's rules say,
  // parse_special turns special-token texts (e.g. "<|im_start|>") into their ids.
  std::vector<int> encode(const std::string& text, bool add_special, bool parse_special) const {
    if (bpe_) return bpe_->encode(text, add_special, parse_special);
    require_loaded();
    return sp_->encode(text, add_special, false);
  }

  // The bytes token `id` stands for when it follows `previous` (llama2.c strips the
  // space after BOS); special tokens render as their text only when `special`.
  std::string piece(int previous, int id, bool special = false) const {
    if (bpe_) return bpe_->token_to_piece(id, special);
    require_loaded();
    return sp_->decode_token(previous, id);
  }

  int bos() const { return bpe_ ? bpe_->special_ids().bos : Tokenizer::kBos; }
  int eos() const { return bpe_ ? bpe_->special_ids().eos : Tokenizer::kEos; }
  // Whether the model's texts start with BOS (llama-perplexity replaces each chunk's
  // first token by BOS exactly when this is true).
  bool adds_bos() const { return bpe_ ? bpe_->flags().add_bos : true; }
  // Ids that end a generation: EOS, and for BPE models every end-of-generation token
  // the vocabulary marks (e.g. ChatML's <|im_end|>).
  bool is_end_of_generation(int id) const {
    if (id == eos()) return true;
    if (bpe_) return bpe_->token_to_piece(id, true) == "<|im_end|>" || bpe_->token_to_piece(id, true) == "<|eot_id|>";
    return id == Tokenizer::kBos;
  }
  const BpeTokenizer* bpe() const { return bpe_ ? &*bpe_ : nullptr; }

 private:
  void require_loaded() const { detail::require(sp_.has_value(), "the model has no tokenizer"); }
  std::optional<BpeTokenizer> bpe_;
  std::optional<Tokenizer> sp_;
};

struct LoadedModel {
  LlamaWeights weights;
  TextTokenizer tokenizer;
  std::string chat_template;  // the file's, when it has one
  std::string format;         // "gguf", "hf", "llama2c"
  std::size_t model_bytes = 0;  // the weights' bytes as loaded (kept when the weights are released)
};

struct LoadOptions {
  bool dequantize = false;     // every matrix decoded to fp32 (the reference model of a quantized file)
  std::string tokenizer_path;  // llama2.c only: tokenizer.bin
};

inline bool has_gguf_magic(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  char magic[4] = {};
  const bool ok = std::fread(magic, 1, 4, f) == 4 && std::string(magic, 4) == "GGUF";
  std::fclose(f);
  return ok;
}

inline LoadedModel load_gguf(const std::string& path, const LoadOptions& o) {
  LoadedModel m;
  m.format = "gguf";
  io::GgufReader reader = io::GgufReader::open(path);
  GgufLoadOptions g;
  g.dequantize = o.dequantize;
  try {
    // The tokenizer first, then its arrays are let go: its construction's temporaries
    // and the parsed token and merge lists (several MiB for a 49k vocabulary) are gone
    // before the weights arrive, so they do not add to the peak memory of loading.
    m.tokenizer = TextTokenizer(BpeTokenizer::from_gguf(reader));
    for (const char* key : {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                            "tokenizer.ggml.scores"})
      reader.forget_metadata(key);
    m.weights = load_gguf_model(reader, g);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " ('" + path + "')");
  }
  const auto& md = reader.metadata();
  if (const auto it = md.find("tokenizer.chat_template"); it != md.end()) m.chat_template = it->second;
  return m;
}

// A Hugging Face directory: config.json + safetensors weights (hf_model.hpp) and
// tokenizer.json (+ tokenizer_config.json for BOS/EOS rules and the chat template).
inline LoadedModel load_hf(const std::string& dir, const LoadOptions& o = {}) {
  LoadedModel m;
  m.format = "hf";
  m.weights = load_hf_model(dir);
  if (o.dequantize)  // a GPTQ / AWQ / bitsandbytes checkpoint's linears, decoded to fp32
    for (auto& L : m.weights.layers)
      for (const GgufLayerLinear& t : gguf_layer_linears())
        if (!(L.*t.matrix).is_float()) L.*t.matrix = StoredMatrix((L.*t.matrix).to_float());
  const std::string slash = dir.back() == '/' ? dir : dir + "/";
  const std::string tok = slash + "tokenizer.json", cfg = slash + "tokenizer_config.json";
  detail::require(std::ifstream(tok).good(), "HF model: '", dir, "' has no tokenizer.json");
  const bool has_cfg = std::ifstream(cfg).good();
  m.tokenizer = TextTokenizer(load_hf_bpe_tokenizer(tok, has_cfg ? cfg : std::string()));
  if (has_cfg) {
    std::ifstream in(cfg, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("chat_template") && j["chat_template"].is_string())
      m.chat_template = j["chat_template"].get<std::string>();
  }
  return m;
}

inline LoadedModel load_model(const std::string& path, const LoadOptions& o = {}) {
  if (hf_detail::is_directory(path)) return load_hf(path, o);
  if (has_gguf_magic(path)) return load_gguf(path, o);
  LoadedModel m;
  m.format = "llama2c";
  m.weights = load_llama2c_checkpoint(path);
  detail::require(!o.tokenizer_path.empty(), "'", path,
                  "' is a llama2.c checkpoint: give its tokenizer.bin (--tokenizer)");
  m.tokenizer = TextTokenizer(load_tokenizer(o.tokenizer_path, m.weights.config.vocab_size));
  return m;
}

}  // namespace nibble::model
