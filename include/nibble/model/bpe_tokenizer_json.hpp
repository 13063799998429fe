// BpeTokenizer from a Hugging Face tokenizer.json (+ optionally tokenizer_config.json).
//
// Needs nlohmann/json.hpp (CMake target nibble::io), which is why it is not part of
// bpe_tokenizer.hpp.
//
// What is read (anything else that changes tokenization is refused with nibble::Error):
//   model         {"type": "BPE", "vocab": {text: id}, "merges": ["a b", ...] or [["a", "b"], ...],
//                  "ignore_merges", "unk_token"}; no continuing_subword_prefix / end_of_word_suffix
//   added_tokens  [{"id", "content", "special", "lstrip", "rstrip"}]: special -> control,
//                 otherwise user-defined (both are cut out of the text before BPE)
//   normalizer    null, or NFC (ignored, as llama.cpp ignores it)
//   pre_tokenizer ByteLevel (gpt2); Sequence[Digits(individual), ByteLevel] (smollm);
//                 Sequence[Split(llama3 or qwen2 regex, Isolated), ByteLevel(use_regex=false)]
//                 (llama3, qwen2); ByteLevel must not add a prefix space
//   decoder       null or ByteLevel
// tokenizer_config.json: bos_token / eos_token / unk_token / pad_token (a string or
// {"content": ...}, which must be a token), add_bos_token, add_eos_token.
#pragma once

#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../io/safetensors.hpp"
#include "bpe_tokenizer.hpp"

namespace nibble::model {

namespace bpe_json_detail {

using nlohmann::json;

// Split patterns of Llama 3 and Qwen2 tokenizer.json files (what llama.cpp's comments quote).
inline constexpr const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
inline constexpr const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";

inline json parse(const std::string& text, const char* what) {
  io::check_json_depth(text.data(), text.size(), 64, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    detail::throw_error(what, " is not valid JSON: ", e.what());
  }
}

inline bool flag(const json& o, const char* key, bool fallback) {
  if (!o.contains(key) || o[key].is_null()) return fallback;
  detail::require(o[key].is_boolean(), "tokenizer.json: '", key, "' is not a boolean");
  return o[key].get<bool>();
}

inline std::string type_of(const json& o) {
  if (!o.is_object() || !o.contains("type") || !o["type"].is_string()) return std::string();
  return o["type"].get<std::string>();
}

// A ByteLevel pre-tokenizer with the given use_regex and no prefix space.
inline bool byte_level(const json& o, bool use_regex) {
  if (type_of(o) != "ByteLevel") return false;
  detail::require(!flag(o, "add_prefix_space", false),
                  "tokenizer.json: ByteLevel with add_prefix_space is not supported (llama.cpp has no such mode)");
  return flag(o, "use_regex", true) == use_regex;
}

inline PreTokenizer classify_pre_tokenizer(const json& pre) {
  if (byte_level(pre, true)) return PreTokenizer::gpt2;
  if (type_of(pre) == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].is_array()) {
    const json& seq = pre["pretokenizers"];
    if (seq.size() == 2 && type_of(seq[0]) == "Digits" && flag(seq[0], "individual_digits", false) &&
        byte_level(seq[1], true))
      return PreTokenizer::smollm;
    if (seq.size() == 2 && type_of(seq[0]) == "Split" && byte_level(seq[1], false)) {
      const json& s = seq[0];
      const bool isolated = s.contains("behavior") && s["behavior"] == "Isolated" && !flag(s, "invert", false);
      const bool has_regex = s.contains("pattern") && s["pattern"].is_object() && s["pattern"].contains("Regex") &&
                             s["pattern"]["Regex"].is_string();
      if (isolated && has_regex) {
        const std::string r = s["pattern"]["Regex"].get<std::string>();
        if (r == kLlama3Regex) return PreTokenizer::llama3;
        if (r == kQwen2Regex) return PreTokenizer::qwen2;
      }
    }
  }
  detail::throw_error("tokenizer.json: unsupported pre_tokenizer ", pre.dump().substr(0, 300),
                      " (supported: ByteLevel; Sequence[Digits(individual_digits), ByteLevel]; "
                      "Sequence[Split(llama3 / qwen2 regex), ByteLevel(use_regex=false)])");
}

// "a b" (split at the first space after the first byte) or ["a", "b"].
inline std::pair<std::string, std::string> merge_of(const json& m, std::size_t i) {
  if (m.is_string()) {
    const std::string s = m.get<std::string>();
    const std::size_t at = s.size() > 1 ? s.find(' ', 1) : std::string::npos;
    detail::require(at != std::string::npos && at + 1 < s.size(), "tokenizer.json: merge ", i, " ('", s,
                    "') is not two pieces separated by a space");
    return {s.substr(0, at), s.substr(at + 1)};
  }
  detail::require(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), "tokenizer.json: merge ", i,
                  " is neither \"a b\" nor [\"a\", \"b\"]: ", m.dump().substr(0, 100));
  return {m[0].get<std::string>(), m[1].get<std::string>()};
}

// A token named in tokenizer_config.json: "text" or {"content": "text"}; null means none.
inline int config_token(const json& cfg, const char* key, const std::vector<std::string>& tokens, int fallback) {
  if (!cfg.contains(key) || cfg[key].is_null()) return fallback;
  const json& v = cfg[key];
  std::string text;
  if (v.is_string()) text = v.get<std::string>();
  else if (v.is_object() && v.contains("content") && v["content"].is_string()) text = v["content"].get<std::string>();
  else detail::throw_error("tokenizer_config.json: '", key, "' is neither a string nor {\"content\": ...}");
  for (std::size_t i = tokens.size(); i-- > 0;)
    if (tokens[i] == text) return static_cast<int>(i);
  detail::throw_error("tokenizer_config.json: ", key, " '", text, "' is not a token of the vocabulary");
}

}  // namespace bpe_json_detail

// Everything parse_hf_bpe_tokenizer reads from the two files, before it becomes a
// BpeTokenizer: the vocabulary in id order, the merges in rank order, and the rules.
// (A GGUF writer needs these lists as they are; BpeTokenizer keeps them indexed.)
struct HfBpeVocabulary {
  std::vector<std::string> tokens;  // id → text (byte-level encoded; added tokens as written)
  std::vector<TokenType> types;     // normal; added: control (special) or user_defined
  std::vector<std::pair<std::string, std::string>> merges;
  PreTokenizer pre = PreTokenizer::gpt2;
  BpeSpecialIds ids;
  BpeFlags flags;
  struct Strip {
    int id;
    bool lstrip, rstrip;
  };
  std::vector<Strip> strips;  // lstrip / rstrip of added tokens
};

// tokenizer_config_json may be empty (no config).
inline HfBpeVocabulary parse_hf_bpe_vocabulary(const std::string& tokenizer_json,
                                               const std::string& tokenizer_config_json = "") {
  using bpe_json_detail::json;
  const json root = bpe_json_detail::parse(tokenizer_json, "tokenizer.json");
  detail::require(root.is_object() && root.contains("model") && root["model"].is_object(),
                  "tokenizer.json: no \"model\" object");
  const json& model = root["model"];
  const std::string type = bpe_json_detail::type_of(model);
  detail::require(type == "BPE", "tokenizer.json: model type is '", type, "', expected 'BPE'");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    detail::require(!model.contains(key) || model[key].is_null() || model[key] == "", "tokenizer.json: model.", key,
                    " is not supported");

  // Vocabulary: model.vocab, then added_tokens (which may repeat or extend it).
  detail::require(model.contains("vocab") && model["vocab"].is_object(), "tokenizer.json: model.vocab is not an object");
  constexpr std::int64_t kMaxId = 1 << 24;
  std::vector<std::string> tokens;
  std::vector<bool> seen;
  std::vector<TokenType> types;
  const auto place = [&](std::int64_t id, const std::string& text, const char* where) {
    detail::require(id >= 0 && id < kMaxId, "tokenizer.json: ", where, " '", text, "' has id ", id,
                    " (expected 0..", kMaxId - 1, ")");
    const auto i = static_cast<std::size_t>(id);
    if (i >= tokens.size()) {
      tokens.resize(i + 1);
      seen.resize(i + 1, false);
      types.resize(i + 1, TokenType::normal);
    }
    return i;
  };
  for (const auto& [text, id] : model["vocab"].items()) {
    detail::require(id.is_number_integer(), "tokenizer.json: vocab entry '", text, "' has a non-integer id");
    const std::size_t i = place(id.get<std::int64_t>(), text, "vocab entry");
    detail::require(!seen[i], "tokenizer.json: vocab ids repeat: id ", i, " is both '", tokens[i], "' and '", text, "'");
    tokens[i] = text;
    seen[i] = true;
  }
  std::vector<std::pair<int, std::pair<bool, bool>>> strips;
  if (root.contains("added_tokens") && !root["added_tokens"].is_null()) {
    detail::require(root["added_tokens"].is_array(), "tokenizer.json: added_tokens is not an array");
    for (const json& a : root["added_tokens"]) {
      detail::require(a.is_object() && a.contains("id") && a["id"].is_number_integer() && a.contains("content") &&
                          a["content"].is_string(),
                      "tokenizer.json: an added token lacks an integer id or a string content: ", a.dump().substr(0, 100));
      const std::string text = a["content"].get<std::string>();
      detail::require(!text.empty(), "tokenizer.json: added token ", a["id"].get<std::int64_t>(), " is empty");
      const std::size_t i = place(a["id"].get<std::int64_t>(), text, "added token");
      tokens[i] = text;
      seen[i] = true;
      types[i] = bpe_json_detail::flag(a, "special", false) ? TokenType::control : TokenType::user_defined;
      strips.push_back({static_cast<int>(i),
                        {bpe_json_detail::flag(a, "lstrip", false), bpe_json_detail::flag(a, "rstrip", false)}});
    }
  }
  detail::require(!tokens.empty(), "tokenizer.json: the vocabulary is empty");
  for (std::size_t i = 0; i < seen.size(); ++i)
    detail::require(seen[i], "tokenizer.json: no token has id ", i, " (ids run to ", tokens.size() - 1, ")");

  std::vector<std::pair<std::string, std::string>> merges;
  if (model.contains("merges") && !model["merges"].is_null()) {
    detail::require(model["merges"].is_array(), "tokenizer.json: model.merges is not an array");
    merges.reserve(model["merges"].size());
    for (std::size_t i = 0; i < model["merges"].size(); ++i)
      merges.push_back(bpe_json_detail::merge_of(model["merges"][i], i));
  }

  const json null_json;
  const json& norm = root.contains("normalizer") ? root["normalizer"] : null_json;
  detail::require(norm.is_null() || bpe_json_detail::type_of(norm) == "NFC", "tokenizer.json: unsupported normalizer ",
                  norm.dump().substr(0, 200), " (null or NFC expected)");
  detail::require(root.contains("pre_tokenizer") && !root["pre_tokenizer"].is_null(),
                  "tokenizer.json: no pre_tokenizer (a byte-level BPE needs ByteLevel)");
  const PreTokenizer pre = bpe_json_detail::classify_pre_tokenizer(root["pre_tokenizer"]);
  const json& dec = root.contains("decoder") ? root["decoder"] : null_json;
  detail::require(dec.is_null() || bpe_json_detail::type_of(dec) == "ByteLevel", "tokenizer.json: unsupported decoder ",
                  dec.dump().substr(0, 200), " (ByteLevel expected)");

  BpeFlags flags = BpeTokenizer::default_flags(pre);
  flags.ignore_merges = bpe_json_detail::flag(model, "ignore_merges", flags.ignore_merges);
  BpeSpecialIds ids;
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const std::string unk = model["unk_token"].get<std::string>();
    for (std::size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] == unk) ids.unk = static_cast<int>(i);
  }
  if (!tokenizer_config_json.empty()) {
    const json cfg = bpe_json_detail::parse(tokenizer_config_json, "tokenizer_config.json");
    detail::require(cfg.is_object(), "tokenizer_config.json: not a JSON object");
    ids.bos = bpe_json_detail::config_token(cfg, "bos_token", tokens, ids.bos);
    ids.eos = bpe_json_detail::config_token(cfg, "eos_token", tokens, ids.eos);
    ids.unk = bpe_json_detail::config_token(cfg, "unk_token", tokens, ids.unk);
    ids.pad = bpe_json_detail::config_token(cfg, "pad_token", tokens, ids.pad);
    flags.add_bos = bpe_json_detail::flag(cfg, "add_bos_token", flags.add_bos && ids.bos >= 0);
    flags.add_eos = bpe_json_detail::flag(cfg, "add_eos_token", false);
  } else {
    flags.add_bos = false;  // without a config there is no BOS id to add
  }
  HfBpeVocabulary v;
  v.tokens = std::move(tokens);
  v.types = std::move(types);
  v.merges = std::move(merges);
  v.pre = pre;
  v.ids = ids;
  v.flags = flags;
  for (const auto& [id, s] : strips) v.strips.push_back({id, s.first, s.second});
  return v;
}

inline BpeTokenizer to_bpe_tokenizer(HfBpeVocabulary v) {
  BpeTokenizer tok(std::move(v.tokens), std::move(v.types), std::move(v.merges), v.pre, v.ids, v.flags);
  for (const auto& s : v.strips) tok.set_strip(s.id, s.lstrip, s.rstrip);
  return tok;
}

// tokenizer_config_json may be empty (no config).
inline BpeTokenizer parse_hf_bpe_tokenizer(const std::string& tokenizer_json, const std::string& tokenizer_config_json = "") {
  return to_bpe_tokenizer(parse_hf_bpe_vocabulary(tokenizer_json, tokenizer_config_json));
}

inline BpeTokenizer load_hf_bpe_tokenizer(const std::string& tokenizer_json_path,
                                          const std::string& tokenizer_config_path = "") {
  const auto read = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    detail::require(static_cast<bool>(in), "cannot open '", path, "'");
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  const std::string config = tokenizer_config_path.empty() ? std::string() : read(tokenizer_config_path);
  try {
    return parse_hf_bpe_tokenizer(read(tokenizer_json_path), config);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " ('" + tokenizer_json_path + "')");
  }
}

}  // namespace nibble::model
