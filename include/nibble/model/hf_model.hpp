// Llama-family models from Hugging Face directories (what `save_pretrained` writes):
// config.json plus the weights in safetensors, one file (model.safetensors) or shards
// listed by model.safetensors.index.json ({"weight_map": {tensor: shard file}}). Each
// file is memory-mapped by io::SafetensorsReader, which validates its header first.
//
// config.json (model_type "llama" = LlamaForCausalLM, or "qwen2" = Qwen2ForCausalLM,
// which adds q/k/v biases). Keys and the defaults transformers' LlamaConfig /
// Qwen2Config use when a key is absent:
//   hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size
//                            required here (a config without them is not a real checkpoint)
//   num_key_value_heads      llama: num_attention_heads; qwen2: 32 (Qwen2Config's default);
//                            null: num_attention_heads
//   head_dim                 hidden_size / num_attention_heads (absent or null)
//   max_position_embeddings  llama 2048, qwen2 32768
//   rope_theta               10000
//   rope_scaling             null, {"type" or "rope_type": "default"} or
//                            {"type" or "rope_type": "linear", "factor": f}; any other type
//                            (dynamic, yarn, llama3, longrope, …) is an error. transformers 5
//                            writes "rope_parameters" ({"rope_type", "rope_theta", "factor"})
//                            instead; it is read the same way and takes precedence.
//   rms_norm_eps             1e-6
//   tie_word_embeddings      false — LlamaConfig's and Qwen2Config's default (checked in
//                            transformers' configuration_llama.py / configuration_qwen2.py),
//                            so an untied config needs lm_head.weight; when tied,
//                            lm_head.weight is ignored if a file holds it anyway.
//   hidden_act must be "silu"; attention_bias, mlp_bias and use_sliding_window are
//   rejected, since the runtime would silently compute something else.
//   quantization_config: 4-bit GPTQ (v1 / v2 zero points, contiguous groups), AutoAWQ GEMM
//                            and bitsandbytes NF4 / FP4 checkpoints load with their linears
//                            as QuantizedMatrix (hf_quantization; packings in io/; a layer's
//                            parts in one file, non-finite scales rejected); other methods
//                            are errors. hf_quantized_writer.hpp writes these.
//
// Tensor names → LlamaWeights: model.embed_tokens.weight, model.norm.weight,
// lm_head.weight, and per layer N model.layers.N.{input_layernorm, post_attention_layernorm}
// .weight, self_attn.{q,k,v,o}_proj.weight (+ q/k/v .bias for qwen2), mlp.gate_proj (w1),
// mlp.up_proj (w3), mlp.down_proj (w2). F32, F16 and BF16 are decoded to fp32 exactly;
// other dtypes, shape mismatches, non-finite values and tensors the model would not use
// (e.g. layer numbers past num_hidden_layers) are errors.
//
// RoPE: HF checkpoints keep q/k rows in the order of `rotate_half` (pair i of a head is
// dimensions (i, i + head/2)), so the config says RopeStyle::halves and the weights stay
// as the files hold them. (llama.cpp's converter instead permutes q/k rows to adjacent
// pairs for GGUF `llama` files; both orders give the same model.)
//
// Needs nlohmann/json.hpp (CMake target nibble::io).
#pragma once

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../io/awq_checkpoint.hpp"
#include "../io/bnb_checkpoint.hpp"
#include "../io/ggml_types.hpp"
#include "../io/gptq_checkpoint.hpp"
#include "../io/safetensors.hpp"
#include "llama_weights.hpp"

namespace nibble::model {

namespace hf_detail {

inline constexpr std::uint64_t kMaxJsonBytes = 64u << 20;  // config / index files (a real index is < 1 MiB)
inline constexpr int kMaxJsonDepth = 32;
inline constexpr std::size_t kMaxShards = 100000;

// Messages of errors raised below this layer start with "nibble: "; drop it when
// wrapping them into a message that names the file.
inline std::string bare(const Error& e) {
  const std::string m = e.what();
  return m.rfind("nibble: ", 0) == 0 ? m.substr(8) : m;
}

inline std::string join(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

inline bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

inline bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// A whole (small) text file; `what` names it in errors.
inline std::string read_text(const std::string& path, const std::string& what) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  detail::require(f != nullptr, what, ": cannot open '", path, "'");
  std::string text;
  char buf[1 << 16];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    text.append(buf, n);
    if (text.size() > kMaxJsonBytes) {
      std::fclose(f);
      detail::throw_error(what, ": larger than the ", kMaxJsonBytes, "-byte limit for a JSON file");
    }
  }
  const bool failed = std::ferror(f) != 0;
  std::fclose(f);
  detail::require(!failed, what, ": read error on '", path, "'");
  return text;
}

// Parses a JSON object, refusing deep nesting before the (recursive) parser sees it.
inline nlohmann::json parse_object(const std::string& text, const std::string& what) {
  detail::require(text.size() <= kMaxJsonBytes, what, ": larger than the ", kMaxJsonBytes,
                  "-byte limit for a JSON file");
  const std::string json_what = what + ": JSON";
  io::check_json_depth(text.data(), text.size(), kMaxJsonDepth, json_what.c_str());
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  detail::require(!j.is_discarded(), what, ": not valid JSON");
  detail::require(j.is_object(), what, ": the top level is not a JSON object");
  return j;
}

inline const char* json_kind(const nlohmann::json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

// Typed access to a config object's keys; `what` names the file (and sub-object).
class ConfigKeys {
 public:
  ConfigKeys(const nlohmann::json& j, std::string what) : j_(j), what_(std::move(what)) {}

  // nullptr when the key is absent or null (transformers treats both as "use the default").
  const nlohmann::json* find(const char* key) const {
    const auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  bool has(const char* key) const { return j_.find(key) != j_.end(); }

  // An integer in [lo, hi]; absent/null → fallback unless required.
  int integer(const char* key, long long lo, long long hi, long long fallback, bool required) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) {
      detail::require(!required, what_, ": missing key '", key, "'");
      return static_cast<int>(fallback);
    }
    detail::require(v->is_number_integer(), what_, ": '", key, "' is ", json_kind(*v), ", expected an integer");
    // An unsigned value above int64's range must not wrap into range.
    const bool in_range = v->is_number_unsigned()
                              ? v->get<std::uint64_t>() <= static_cast<std::uint64_t>(hi) &&
                                    static_cast<long long>(v->get<std::uint64_t>()) >= lo
                              : v->get<std::int64_t>() >= lo && v->get<std::int64_t>() <= hi;
    detail::require(in_range, what_, ": '", key, "' = ", v->dump(), " is out of range (expected ", lo, "..", hi,
                    ")");
    return static_cast<int>(v->get<std::int64_t>());
  }

  double number(const char* key, double fallback) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) return fallback;
    detail::require(v->is_number(), what_, ": '", key, "' is ", json_kind(*v), ", expected a number");
    const double x = v->get<double>();
    detail::require(std::isfinite(x), what_, ": '", key, "' is not finite");
    return x;
  }

  bool boolean(const char* key, bool fallback) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) return fallback;
    detail::require(v->is_boolean(), what_, ": '", key, "' is ", json_kind(*v), ", expected true or false");
    return v->get<bool>();
  }

  std::string string(const char* key, const char* fallback, bool required) const {
    const nlohmann::json* v = find(key);
    if (v == nullptr) {
      detail::require(!required, what_, ": missing key '", key, "'");
      return fallback;
    }
    detail::require(v->is_string(), what_, ": '", key, "' is ", json_kind(*v), ", expected a string");
    return v->get<std::string>();
  }

 private:
  const nlohmann::json& j_;
  std::string what_;
};

// RoPE scaling from rope_scaling / rope_parameters (see the file comment).
inline void read_rope(const nlohmann::json& config, LlamaConfig& c, const std::string& what) {
  const ConfigKeys top(config, what);
  c.rope_base = static_cast<float>(top.number("rope_theta", 10000.0));
  const char* field = top.find("rope_parameters") ? "rope_parameters" : "rope_scaling";
  const nlohmann::json* s = top.find(field);
  if (s == nullptr) return;
  const std::string sub = what + " " + field;
  detail::require(s->is_object(), sub, " is ", json_kind(*s), ", expected an object or null");
  const ConfigKeys keys(*s, sub);
  // "rope_type" is the current spelling, "type" the older one.
  const std::string type = keys.find("rope_type") ? keys.string("rope_type", "", true) : keys.string("type", "default", false);
  c.rope_base = static_cast<float>(keys.number("rope_theta", c.rope_base));
  const double partial = keys.number("partial_rotary_factor", 1.0);
  detail::require(partial == 1.0, sub, ": partial_rotary_factor ", partial,
                  " is not supported (RoPE on the whole head only)");
  if (type == "default") return;
  detail::require(type == "linear", sub, ": RoPE type '", type,
                  "' is not supported (expected default or linear)");
  detail::require(keys.find("factor") != nullptr, sub, ": linear RoPE scaling needs a 'factor'");
  const double factor = keys.number("factor", 1.0);
  detail::require(factor > 0.0 && factor <= 1e6, sub, ": factor ", factor, " is out of range (expected > 0)");
  c.rope_scale = static_cast<float>(factor);
}

}  // namespace hf_detail

// The hyper-parameters of a Hugging Face config.json (its text), validated.
// `what` names the file in errors.
inline LlamaConfig hf_llama_config(const std::string& json_text, const std::string& what = "config.json") {
  using namespace hf_detail;
  const nlohmann::json j = parse_object(json_text, what);
  const ConfigKeys k(j, what);
  const std::string type = k.string("model_type", "", true);
  detail::require(type == "llama" || type == "qwen2", what, ": model_type '", type,
                  "' is not supported (expected llama or qwen2)");
  const std::string act = k.string("hidden_act", "silu", false);
  detail::require(act == "silu", what, ": hidden_act '", act, "' is not supported (expected silu)");
  detail::require(!k.boolean("attention_bias", false), what,
                  ": attention_bias = true (biases on q/k/v/o) is not supported for llama");
  detail::require(!k.boolean("mlp_bias", false), what, ": mlp_bias = true is not supported");
  detail::require(!k.boolean("use_sliding_window", false), what,
                  ": use_sliding_window = true is not supported (the runtime attends to the whole context)");
  if (const nlohmann::json* lt = k.find("layer_types")) {
    detail::require(lt->is_array(), what, ": 'layer_types' is ", json_kind(*lt), ", expected an array");
    for (const auto& t : *lt)
      detail::require(t.is_string() && t.get<std::string>() == "full_attention", what, ": layer_types entry ",
                      t.dump(), " is not supported (expected \"full_attention\")");
  }

  LlamaConfig c;
  c.architecture = type;
  constexpr long long kBig = 1LL << 30;  // narrowing limit; validate_config checks the real ranges
  c.dim = k.integer("hidden_size", 1, kBig, 0, true);
  c.hidden_dim = k.integer("intermediate_size", 1, kBig, 0, true);
  c.n_layers = k.integer("num_hidden_layers", 1, kBig, 0, true);
  c.n_heads = k.integer("num_attention_heads", 1, kBig, 0, true);
  const bool kv_absent = !k.has("num_key_value_heads");
  c.n_kv_heads = k.integer("num_key_value_heads", 1, kBig, type == "qwen2" && kv_absent ? 32 : c.n_heads, false);
  c.vocab_size = k.integer("vocab_size", 1, kBig, 0, true);
  c.seq_len = k.integer("max_position_embeddings", 1, kBig, type == "qwen2" ? 32768 : 2048, false);
  c.head_dim = k.integer("head_dim", 1, kBig, 0, false);
  if (c.head_dim == c.dim / c.n_heads && c.dim % c.n_heads == 0) c.head_dim = 0;  // the default, said explicitly
  const double eps = k.number("rms_norm_eps", 1e-6);
  c.norm_eps = static_cast<float>(eps);
  read_rope(j, c, what);
  c.rope_style = RopeStyle::halves;
  c.shared_classifier = k.boolean("tie_word_embeddings", false);
  c.qkv_bias = type == "qwen2";
  validate_config(c, what);
  return c;
}

// How the linears of a checkpoint are stored: config.json's quantization_config.
enum class HfQuantization { none, gptq_v1, gptq_v2, awq, bnb };

// Reads config.json's quantization_config (absent or null: none). Supported: 4-bit GPTQ
// (checkpoint_format "gptq" = v1, the default, or "gptq_v2"), 4-bit AutoAWQ GEMM with zero
// points, bitsandbytes load_in_4bit (NF4 / FP4 from each tensor's quant_state). Anything
// else is an error: the runtime would compute another model.
inline HfQuantization hf_quantization(const std::string& json_text, const std::string& what = "config.json") {
  using namespace hf_detail;
  const nlohmann::json j = parse_object(json_text, what);
  const auto it = j.find("quantization_config");
  if (it == j.end() || it->is_null()) return HfQuantization::none;
  const std::string sub = what + " quantization_config";
  detail::require(it->is_object(), sub, " is ", json_kind(*it), ", expected an object");
  const ConfigKeys q(*it, sub);
  const std::string method = q.string("quant_method", "", true);
  if (method == "gptq") {
    detail::require(q.integer("bits", 1, 64, 0, true) == 4, sub, ": bits must be 4 (nibble reads 4-bit GPTQ)");
    const std::string f = q.string("checkpoint_format", "gptq", false);
    detail::require(f == "gptq" || f == "gptq_v2", sub, ": checkpoint_format '", f, "' is not supported (gptq, gptq_v2)");
    return f == "gptq" ? HfQuantization::gptq_v1 : HfQuantization::gptq_v2;
  }
  if (method == "awq") {
    const int bits = q.find("bits") ? q.integer("bits", 1, 64, 0, true) : q.integer("w_bit", 1, 64, 4, false);
    detail::require(bits == 4, sub, ": bits must be 4");
    std::string version = q.string("version", "gemm", false);
    for (auto& ch : version) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    detail::require(version == "gemm", sub, ": version '", version, "' is not supported (AutoAWQ GEMM only)");
    detail::require(q.boolean("zero_point", true), sub, ": zero_point = false is not supported");
    return HfQuantization::awq;
  }
  if (method == "bitsandbytes") {
    detail::require(q.boolean("load_in_4bit", false), sub, ": only load_in_4bit (NF4 / FP4) checkpoints are supported");
    return HfQuantization::bnb;
  }
  detail::throw_error(sub, ": quant_method '", method, "' is not supported (gptq, awq, bitsandbytes)");
}

// The weight_map of a model.safetensors.index.json (its text): tensor name → shard file
// name. Shard names must be plain file names (no directories), so an index cannot point
// outside its model directory.
inline std::map<std::string, std::string> hf_weight_map(const std::string& json_text,
                                                        const std::string& what = "model.safetensors.index.json") {
  using namespace hf_detail;
  const nlohmann::json j = parse_object(json_text, what);
  const auto wm = j.find("weight_map");
  detail::require(wm != j.end(), what, ": missing key 'weight_map'");
  detail::require(wm->is_object(), what, ": 'weight_map' is ", json_kind(*wm), ", expected an object");
  detail::require(!wm->empty(), what, ": 'weight_map' is empty");
  detail::require(wm->size() <= io::kMaxTensorCount, what, ": ", wm->size(), " tensors exceed the limit");
  std::map<std::string, std::string> out;
  std::set<std::string> shards;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    detail::require(!it.key().empty(), what, ": 'weight_map' has an empty tensor name");
    detail::require(it.value().is_string(), what, ": shard of '", it.key(), "' is ", json_kind(it.value()),
                    ", expected a file name");
    const std::string f = it.value().get<std::string>();
    detail::require(!f.empty() && f != "." && f != ".." && f.find('/') == std::string::npos &&
                        f.find('\\') == std::string::npos && f.find('\0') == std::string::npos,
                    what, ": shard '", f, "' of '", it.key(), "' is not a plain file name in the model directory");
    shards.insert(f);
    detail::require(shards.size() <= kMaxShards, what, ": more than ", kMaxShards, " shard files");
    out.emplace(it.key(), f);
  }
  return out;
}

namespace hf_detail {

// The checkpoint's tensors over its safetensors file(s).
class Tensors {
 public:
  explicit Tensors(const std::string& dir) : dir_(dir) {
    const std::string single = join(dir, "model.safetensors");
    const std::string index = join(dir, "model.safetensors.index.json");
    if (is_regular_file(single)) {
      source_ = "model.safetensors";
      const std::size_t s = open_shard("model.safetensors");
      for (const auto& t : shards_[s].reader->tensors()) where_[t.name] = s;
      return;
    }
    if (is_regular_file(index)) {
      source_ = "model.safetensors.index.json";
      const std::string what = "'" + index + "'";
      const std::map<std::string, std::string> map = hf_weight_map(read_text(index, what), what);
      std::map<std::string, std::size_t> opened;
      for (const auto& [name, file] : map) {
        auto it = opened.find(file);
        if (it == opened.end()) {
          detail::require(is_regular_file(join(dir, file)), what, ": names shard '", file, "' (for '", name,
                          "'), which is not a file in '", dir, "'");
          it = opened.emplace(file, open_shard(file)).first;
        }
        const Shard& s = shards_[it->second];
        detail::require(s.reader->contains(name), what, ": says '", name, "' is in '", file,
                        "', but that file has no such tensor");
        where_[name] = it->second;
      }
      return;
    }
    const bool pickle = is_regular_file(join(dir, "pytorch_model.bin")) ||
                        is_regular_file(join(dir, "pytorch_model.bin.index.json"));
    detail::throw_error("'", dir, "' has neither model.safetensors nor model.safetensors.index.json",
                        pickle ? " (it has PyTorch pickle weights, pytorch_model.bin: convert them to safetensors)"
                               : "");
  }

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  // The file that holds `name` (to copy its bytes as they are, or to read a packed
  // 4-bit layer's parts).
  const io::SafetensorsReader& reader_of(const std::string& name) const {
    const auto it = where_.find(name);
    detail::require(it != where_.end(), "'", join(dir_, source_), "': missing tensor '", name, "'");
    return *shards_[it->second].reader;
  }

  const std::map<std::string, std::size_t>& names() const { return where_; }
  const std::string& source() const { return source_; }

  // Row-major rows × cols in fp32, after checking dtype, shape and values. The shape is
  // checked before anything is allocated, so a config claiming absurd sizes fails on the
  // first tensor the file really holds instead of asking for the claimed memory.
  RowMatrixXf matrix(const std::string& name, Eigen::Index rows, Eigen::Index cols) const {
    const Found f = find(name, {static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols)});
    RowMatrixXf m(rows, cols);
    decode(f, m.data());
    return m;
  }
  Eigen::VectorXf vector(const std::string& name, Eigen::Index n) const {
    const Found f = find(name, {static_cast<std::uint64_t>(n)});
    Eigen::VectorXf v(n);
    decode(f, v.data());
    return v;
  }

 private:
  struct Shard {
    std::string file;
    std::unique_ptr<io::SafetensorsReader> reader;
  };

  std::size_t open_shard(const std::string& file) {
    const std::string path = join(dir_, file);
    try {
      shards_.push_back({file, std::make_unique<io::SafetensorsReader>(io::SafetensorsReader::open(path))});
    } catch (const Error& e) {
      detail::throw_error("'", path, "': ", bare(e));
    }
    return shards_.size() - 1;
  }

  static std::string shape_text(const std::vector<std::uint64_t>& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }

  struct Found {
    const Shard* shard;
    const io::TensorInfo* info;
    io::GgmlType type;  // the ggml decoder of its dtype
    std::string file;   // quoted path, for messages
  };

  Found find(const std::string& name, const std::vector<std::uint64_t>& shape) const {
    const auto it = where_.find(name);
    detail::require(it != where_.end(), "'", join(dir_, source_), "': missing tensor '", name, "'");
    const Shard& s = shards_[it->second];
    Found f{&s, &s.reader->info(name), io::GgmlType::F32, "'" + join(dir_, s.file) + "'"};
    switch (f.info->dtype) {
      case io::DType::F32: f.type = io::GgmlType::F32; break;
      case io::DType::F16: f.type = io::GgmlType::F16; break;
      case io::DType::BF16: f.type = io::GgmlType::BF16; break;
      default:
        detail::throw_error(f.file, ": tensor '", name, "' has dtype ", io::to_string(f.info->dtype),
                            ", expected F32, F16 or BF16");
    }
    detail::require(f.info->shape == shape, f.file, ": tensor '", name, "' has shape ", shape_text(f.info->shape),
                    ", expected ", shape_text(shape));
    return f;
  }

  void decode(const Found& f, float* out) const {
    const io::TensorInfo& t = *f.info;
    const std::size_t n = static_cast<std::size_t>(t.elements());
    io::dequantize_ggml(static_cast<std::uint32_t>(f.type), f.shard->reader->bytes(t), n, out, t.name);
    for (std::size_t i = 0; i < n; ++i)
      detail::require(std::isfinite(out[i]), f.file, ": tensor '", t.name, "' has a non-finite value (", out[i],
                      ") at element ", i);
    f.shard->reader->release(t);
  }

  std::string dir_, source_;
  std::vector<Shard> shards_;
  std::map<std::string, std::size_t> where_;
};

// The seven linears of a block under their HF names.
struct HfLinear {
  const char* name;  // after "model.layers.N."
  StoredMatrix LlamaLayer::*matrix;
};

inline const std::vector<HfLinear>& hf_layer_linears() {
  static const std::vector<HfLinear> linears = {
      {"self_attn.q_proj", &LlamaLayer::wq}, {"self_attn.k_proj", &LlamaLayer::wk},
      {"self_attn.v_proj", &LlamaLayer::wv}, {"self_attn.o_proj", &LlamaLayer::wo},
      {"mlp.gate_proj", &LlamaLayer::w1},    {"mlp.up_proj", &LlamaLayer::w3},
      {"mlp.down_proj", &LlamaLayer::w2}};
  return linears;
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Layer number of a "model.layers.N.…" name, or -1 for other names (and -2 when N is not
// a plain decimal number).
inline long long layer_of(const std::string& name) {
  static const std::string prefix = "model.layers.";
  if (name.rfind(prefix, 0) != 0) return -1;
  std::size_t i = prefix.size();
  long long n = 0;
  const std::size_t start = i;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i - start < 9) n = n * 10 + (name[i++] - '0');
  if (i == start || i >= name.size() || name[i] != '.') return -2;
  return n;
}

}  // namespace hf_detail

// Loads a Llama / Qwen2 model from a Hugging Face directory (see the file comment).
// Every problem is a nibble::Error naming the file and what is wrong.
inline LlamaWeights load_hf_model(const std::string& dir) {
  using namespace hf_detail;
  detail::require(is_directory(dir), "HF model: '", dir, "' is not a directory");
  try {
    const std::string config_path = join(dir, "config.json");
    detail::require(is_regular_file(config_path), "'", dir, "' has no config.json");
    const std::string config_what = "'" + config_path + "'";
    LlamaWeights w;
    const std::string config_text = read_text(config_path, config_what);
    w.config = hf_llama_config(config_text, config_what);
    const HfQuantization quantization = hf_quantization(config_text, config_what);
    const LlamaConfig& c = w.config;
    const Tensors T(dir);

    std::set<std::string> used;
    auto mat = [&](const std::string& name, Eigen::Index rows, Eigen::Index cols) -> StoredMatrix {
      used.insert(name);
      return T.matrix(name, rows, cols);
    };
    // A linear layer "<p>.weight", or its packed parts "<p>.qweight" … in a 4-bit checkpoint.
    auto linear = [&](const std::string& p, Eigen::Index rows, Eigen::Index cols) -> StoredMatrix {
      if (quantization == HfQuantization::none) return mat(p + ".weight", rows, cols);
      const bool bnb = quantization == HfQuantization::bnb;
      const std::string first = bnb ? p + ".weight" : p + ".qweight";
      detail::require(T.contains(first), "'", join(dir, T.source()), "': missing tensor '", first,
                      "' (config.json has a quantization_config)");
      const io::SafetensorsReader& r = T.reader_of(first);
      QuantizedMatrix q;
      try {
        if (bnb) q = io::read_bnb(r, first);
        else if (quantization == HfQuantization::awq) q = io::read_awq(r, p);
        else q = io::read_gptq(r, p, quantization == HfQuantization::gptq_v1 ? io::GptqFormat::v1 : io::GptqFormat::v2);
      } catch (const Error& e) {
        // (The parts are read from the file that holds the first one.)
        detail::throw_error("'", join(dir, T.source()), "': layer '", p, "': ", bare(e));
      }
      detail::require(q.rows() == static_cast<std::size_t>(rows) && q.cols() == static_cast<std::size_t>(cols), "'",
                      join(dir, T.source()), "': layer '", p, "' is ", q.rows(), " x ", q.cols(), ", expected ", rows,
                      " x ", cols);
      // The parts read (anything else under the layer's name stays unused: an error below).
      static const char* const bnb_parts[] = {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"};
      static const char* const packed_parts[] = {".qweight", ".qzeros", ".scales", ".g_idx"};
      if (bnb) {
        for (const char* part : bnb_parts) used.insert(first + part);
        used.insert(first + (q.codebook() == Codebook::nf4 ? ".quant_state.bitsandbytes__nf4"
                                                           : ".quant_state.bitsandbytes__fp4"));
      } else {
        for (const char* part : packed_parts) used.insert(p + part);
      }
      return StoredMatrix(std::move(q));
    };
    auto vec = [&](const std::string& name, Eigen::Index n) {
      used.insert(name);
      return T.vector(name, n);
    };
    w.token_embedding = mat("model.embed_tokens.weight", c.vocab_size, c.dim);
    if (!c.shared_classifier) {
      detail::require(T.contains("lm_head.weight"), "'", join(dir, T.source()),
                      "': missing tensor 'lm_head.weight' (config.json has tie_word_embeddings false, which is "
                      "also the default when the key is absent)");
      w.wcls = mat("lm_head.weight", c.vocab_size, c.dim);
    }
    w.rms_final = vec("model.norm.weight", c.dim);
    w.layers.resize(static_cast<std::size_t>(c.n_layers));
    for (int l = 0; l < c.n_layers; ++l) {
      LlamaLayer& L = w.layers[static_cast<std::size_t>(l)];
      const std::string p = "model.layers." + std::to_string(l) + ".";
      L.rms_att = vec(p + "input_layernorm.weight", c.dim);
      L.rms_ffn = vec(p + "post_attention_layernorm.weight", c.dim);
      L.wq = linear(p + "self_attn.q_proj", c.q_dim(), c.dim);
      L.wk = linear(p + "self_attn.k_proj", c.kv_dim(), c.dim);
      L.wv = linear(p + "self_attn.v_proj", c.kv_dim(), c.dim);
      L.wo = linear(p + "self_attn.o_proj", c.dim, c.q_dim());
      L.w1 = linear(p + "mlp.gate_proj", c.hidden_dim, c.dim);
      L.w3 = linear(p + "mlp.up_proj", c.hidden_dim, c.dim);
      L.w2 = linear(p + "mlp.down_proj", c.dim, c.hidden_dim);
      if (c.qkv_bias) {
        L.bq = vec(p + "self_attn.q_proj.bias", c.q_dim());
        L.bk = vec(p + "self_attn.k_proj.bias", c.kv_dim());
        L.bv = vec(p + "self_attn.v_proj.bias", c.kv_dim());
      }
    }
    // A tensor nothing reads means the config and the weights disagree (more layers than
    // num_hidden_layers, biases the architecture does not have): running without it would
    // silently compute another model. Old checkpoints' RoPE tables and a tied lm_head are
    // the only things left out on purpose.
    for (const auto& entry : T.names()) {
      const std::string& name = entry.first;
      if (used.count(name)) continue;
      if (name == "lm_head.weight" && c.shared_classifier) continue;
      if (ends_with(name, ".rotary_emb.inv_freq")) continue;
      const long long layer = layer_of(name);
      if (layer >= c.n_layers)
        detail::throw_error("'", join(dir, T.source()), "': has tensor '", name, "' but config.json says ",
                            "num_hidden_layers = ", c.n_layers);
      detail::throw_error("'", join(dir, T.source()), "': tensor '", name, "' is not part of a ", c.architecture,
                          " model (the loader would ignore it)");
    }
    validate_weights(w, "HF model '" + dir + "'");
    return w;
  } catch (const Error& e) {
    const std::string m = bare(e);
    if (m.rfind("HF model", 0) == 0) throw;
    throw Error("HF model: " + m);
  }
}

}  // namespace nibble::model
