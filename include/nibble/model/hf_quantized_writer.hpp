// A quantized Llama / Qwen2 model written as a Hugging Face directory in one of the
// 4-bit checkpoint layouts the Python tools load: GPTQ (AutoGPTQ / GPTQModel, v1 or v2
// zero points), AutoAWQ GEMM, or bitsandbytes NF4 / FP4 — the HF counterpart of
// gguf_model_from_hf.hpp. load_hf_model reads such a directory back.
//
// Input: the source HF directory and the model loaded from it (load_hf_model) with the
// seven linears of every block replaced by QuantizedMatrix:
//   gptq_v1 / v2:   int4_sym (written as zero point 8, "sym") or uint4_asym, f16 scales;
//   awq:            uint4_asym, f16 scales, in_features divisible by the group size;
//   bnb:            nf4 or fp4, f32 absmax or double-quantized (dq8) absmax,
//                   in_features divisible by the blocksize (a power of two, 32..4096).
// Every linear must share one codebook, scale format and group size (one
// quantization_config describes them all).
//
// Output directory:
//   model.safetensors  every tensor of the source under its own name: the linears in the
//                      format's packing (io/gptq_checkpoint.hpp, awq_checkpoint.hpp,
//                      bnb_checkpoint.hpp); the norm gains as the model holds them, in the
//                      source's dtype (AWQ folds its scales into them); everything else
//                      (embedding, lm_head, biases) byte for byte;
//   config.json        the source's, keys in their order, plus "quantization_config";
//   quantize_config.json  GPTQ only: the same object (what AutoGPTQ reads);
//   every other file of the source directory that is not a weight file (tokenizer.json,
//   tokenizer_config.json, generation_config.json, chat_template.jinja, …), copied.
// The directory is assembled under a new sibling "<out>.nibble-tmp-XXXXXX" and renamed at
// the end, so an error leaves nothing under the final name. An existing output is an error
// unless HfWriteOptions::replace_existing, and even then only a model directory (one with
// a config.json) or an empty one is replaced — after the new one is complete; the source
// may not be the output or inside it. A source that is already quantized is an error.
//
// Needs nlohmann/json.hpp (CMake target nibble::io).
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../io/awq_checkpoint.hpp"
#include "../io/bnb_checkpoint.hpp"
#include "../io/gptq_checkpoint.hpp"
#include "../io/safetensors.hpp"
#include "hf_model.hpp"
#include "llama_weights.hpp"

namespace nibble::model {

// gptq_v1: zero points stored minus one (checkpoint_format "gptq": AutoGPTQ, transformers,
// vLLM); gptq_v2: stored as they are (GPTQModel's "gptq_v2"). int4_sym's zero point 8 fits both.
enum class HfCheckpointFormat { gptq_v1, gptq_v2, awq, bnb };

struct HfWriteOptions {
  bool replace_existing = false;
};

namespace hf_detail {

// Files of a model directory that hold weights (never copied into the output).
inline bool is_weight_file(const std::string& name) {
  static const char* suffixes[] = {".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json",
                                   ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx"};
  for (const char* s : suffixes)
    if (ends_with(name, s)) return true;
  return false;
}

// quantization_config for the linears of `w` in `format` (checking they agree).
inline nlohmann::ordered_json quantization_config(const LlamaWeights& w, HfCheckpointFormat format) {
  const QuantizedMatrix* first = nullptr;
  for (std::size_t l = 0; l < w.layers.size(); ++l)
    for (const HfLinear& t : hf_layer_linears()) {
      const StoredMatrix& s = w.layers[l].*t.matrix;
      const std::string name = "model.layers." + std::to_string(l) + "." + t.name;
      detail::require(s.is_quantized(), name, " is ", s.describe(), ", expected a 4-bit matrix");
      const QuantizedMatrix& q = *s.quantized_ptr();
      if (first == nullptr) {
        first = &q;
        continue;
      }
      detail::require(q.codebook() == first->codebook() && q.group_size() == first->group_size() &&
                          q.scales().format() == first->scales().format(),
                      name, " is ", to_string(q.codebook()), " in groups of ", q.group_size(),
                      "; the first linear is ", to_string(first->codebook()), " in groups of ", first->group_size(),
                      ": one quantization_config must describe every linear");
    }
  detail::require(first != nullptr, "the model has no layers");
  const Codebook cb = first->codebook();
  const int group = static_cast<int>(first->group_size());
  detail::require(format == HfCheckpointFormat::bnb || first->scales().format() == ScaleFormat::f16,
                  "GPTQ and AWQ checkpoints store fp16 scales; the linears have ", to_string(first->scales().format()),
                  " scales");
  std::string text;
  switch (format) {
    case HfCheckpointFormat::gptq_v1:
    case HfCheckpointFormat::gptq_v2:
      detail::require(cb == Codebook::int4_sym || cb == Codebook::uint4_asym, "GPTQ stores int4_sym or uint4_asym, got ",
                      to_string(cb));
      text = io::gptq_quantize_config(group, cb == Codebook::int4_sym,
                                      format == HfCheckpointFormat::gptq_v2 ? io::GptqFormat::v2 : io::GptqFormat::v1);
      break;
    case HfCheckpointFormat::awq:
      detail::require(cb == Codebook::uint4_asym, "AutoAWQ GEMM stores uint4_asym (zero points), got ", to_string(cb));
      text = io::awq_quantization_config(group);
      break;
    case HfCheckpointFormat::bnb:
      detail::require(cb == Codebook::nf4 || cb == Codebook::fp4, "bitsandbytes 4-bit stores nf4 or fp4, got ",
                      to_string(cb));
      text = io::bnb_quantization_config(cb == Codebook::nf4, first->scales().format() == ScaleFormat::dq8);
      break;
  }
  return nlohmann::ordered_json::parse(text);
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  detail::require(out.good(), "cannot write '", path, "'");
}

// The gain a norm tensor of the source holds in the model (nullptr: not a norm).
inline const Eigen::VectorXf* norm_gain(const LlamaWeights& w, const std::string& name) {
  if (name == "model.norm.weight") return &w.rms_final;
  const long long l = layer_of(name);
  if (l < 0 || l >= static_cast<long long>(w.layers.size())) return nullptr;
  const std::string p = "model.layers." + std::to_string(l) + ".";
  if (name == p + "input_layernorm.weight") return &w.layers[static_cast<std::size_t>(l)].rms_att;
  if (name == p + "post_attention_layernorm.weight") return &w.layers[static_cast<std::size_t>(l)].rms_ffn;
  return nullptr;
}

}  // namespace hf_detail

namespace hf_detail {

// A new empty directory beside `path`, named path + tag + a random suffix (mkdtemp), so it
// never collides with anything the user has.
inline std::string new_sibling_directory(const std::string& path, const char* tag) {
  std::string name = path + tag + "XXXXXX";
  detail::require(::mkdtemp(name.data()) != nullptr, "HF output: cannot create a directory beside '", path, "'");
  return name;
}

// Whether `inner` is `outer` or inside it (both made absolute, symlinks resolved).
inline bool is_within(const std::string& inner, const std::string& outer) {
  namespace fs = std::filesystem;
  const fs::path a = fs::weakly_canonical(fs::absolute(inner)), b = fs::weakly_canonical(fs::absolute(outer));
  auto ia = a.begin(), ib = b.begin();
  for (; ib != b.end() && !ib->empty(); ++ia, ++ib)
    if (ia == a.end() || *ia != *ib) return false;
  return true;
}

// The body of write_quantized_hf; filesystem errors surface as std::filesystem exceptions.
inline void write_quantized_hf_files(const std::string& source_dir, const LlamaWeights& model, HfCheckpointFormat format,
                                     const std::string& out_dir, const HfWriteOptions& options) {
  namespace fs = std::filesystem;
  detail::require(!is_within(source_dir, out_dir), "HF output: the source '", source_dir, "' is '", out_dir,
                  "' or inside it");
  const std::string config_path = join(source_dir, "config.json");
  const std::string config_text = read_text(config_path, "'" + config_path + "'");
  io::check_json_depth(config_text.data(), config_text.size(), kMaxJsonDepth, "config.json");
  nlohmann::ordered_json config = nlohmann::ordered_json::parse(config_text, nullptr, false);
  detail::require(config.is_object(), "'", config_path, "' is not a JSON object");
  detail::require(!config.contains("quantization_config") || config["quantization_config"].is_null(), "HF output: '",
                  source_dir, "' is already a quantized checkpoint (config.json has a quantization_config); ",
                  "its packed tensors cannot be carried over");
  config["quantization_config"] = quantization_config(model, format);

  // Replacing: only a model directory (config.json) or an empty one, never other data.
  const bool replacing = fs::exists(out_dir);
  if (replacing) {
    detail::require(options.replace_existing, "HF output: '", out_dir, "' exists (replace_existing / --force to ",
                    "overwrite it)");
    detail::require(fs::is_directory(out_dir), "HF output: '", out_dir, "' exists and is not a directory");
    detail::require(fs::is_empty(out_dir) || is_regular_file(join(out_dir, "config.json")), "HF output: '", out_dir,
                    "' is not a model directory (no config.json): refusing to replace it");
  }

  // Which source tensor each quantized linear replaces.
  std::map<std::string, const QuantizedMatrix*> linears;
  for (std::size_t l = 0; l < model.layers.size(); ++l)
    for (const HfLinear& t : hf_layer_linears())
      linears["model.layers." + std::to_string(l) + "." + t.name + ".weight"] =
          (model.layers[l].*t.matrix).quantized_ptr().get();
  const Tensors source(source_dir);
  for (const auto& [name, q] : linears)
    detail::require(source.contains(name), "HF output: the source has no '", name, "': the model is not from '",
                    source_dir, "'");

  const std::string tmp = new_sibling_directory(out_dir, ".nibble-tmp-");
  std::string old;  // where the replaced directory waits until the new one is in place
  try {
    io::SafetensorsWriter st(join(tmp, "model.safetensors"));
    st.set_metadata("format", "pt");
    for (const auto& entry : source.names()) {
      const std::string& name = entry.first;
      const io::SafetensorsReader& r = source.reader_of(name);
      const io::TensorInfo& info = r.info(name);
      const auto linear = linears.find(name);
      if (linear != linears.end()) {
        const QuantizedMatrix& q = *linear->second;
        detail::require(info.shape.size() == 2 && info.shape[0] == q.rows() && info.shape[1] == q.cols(), "HF output: '",
                        name, "' is ", q.rows(), " x ", q.cols(), " in the model but not in the source");
        const std::string prefix = name.substr(0, name.size() - 7);  // without ".weight"
        switch (format) {
          case HfCheckpointFormat::gptq_v1: io::write_gptq(st, prefix, q, io::GptqFormat::v1); break;
          case HfCheckpointFormat::gptq_v2: io::write_gptq(st, prefix, q, io::GptqFormat::v2); break;
          case HfCheckpointFormat::awq: io::write_awq(st, prefix, q); break;
          case HfCheckpointFormat::bnb:
            io::write_bnb(st, name, q,
                          info.dtype == io::DType::F16    ? "float16"
                          : info.dtype == io::DType::BF16 ? "bfloat16"
                                                          : "float32");
            break;
        }
      } else if (const Eigen::VectorXf* gain = norm_gain(model, name)) {
        detail::require(info.shape.size() == 1 && info.shape[0] == static_cast<std::uint64_t>(gain->size()),
                        "HF output: '", name, "' has another shape in the source");
        const std::vector<std::uint8_t> bytes =
            io::encode_floats(gain->data(), static_cast<std::size_t>(gain->size()), info.dtype, name);
        st.add(name, info.dtype, info.shape, bytes.data(), bytes.size());
      } else {
        const io::ByteView b = r.bytes(info);
        st.add(name, info.dtype, info.shape, b.data, b.size);
      }
      r.release(info);
    }
    st.finish();

    for (const auto& f : fs::directory_iterator(source_dir)) {
      const std::string name = f.path().filename().string();
      if (!f.is_regular_file() || name == "config.json" || name == "quantize_config.json" || is_weight_file(name))
        continue;
      fs::copy_file(f.path(), fs::path(tmp) / name, fs::copy_options::overwrite_existing);
    }
    write_file(join(tmp, "config.json"), config.dump(2) + "\n");
    if (format == HfCheckpointFormat::gptq_v1 || format == HfCheckpointFormat::gptq_v2)
      write_file(join(tmp, "quantize_config.json"), config["quantization_config"].dump(2) + "\n");

    // The new directory takes the final name only once it is complete.
    if (replacing) {
      old = new_sibling_directory(out_dir, ".nibble-old-");
      fs::rename(out_dir, old);  // onto the empty directory just made
    }
    fs::rename(tmp, out_dir);
  } catch (...) {
    std::error_code ec;
    if (!old.empty() && !fs::exists(out_dir, ec)) fs::rename(old, out_dir, ec);  // put the old one back
    fs::remove_all(tmp, ec);
    throw;
  }
  std::error_code ec;
  if (!old.empty()) fs::remove_all(old, ec);
}

}  // namespace hf_detail

// Writes `model` (quantized from the directory source_dir, which holds F32/F16/BF16
// weights) as a quantized HF directory out_path (see the top of this file).
inline void write_quantized_hf(const std::string& source_dir, const LlamaWeights& model, HfCheckpointFormat format,
                               const std::string& out_path, const HfWriteOptions& options = {}) {
  detail::require(hf_detail::is_directory(source_dir), "HF output: the source '", source_dir, "' is not a directory");
  std::string out_dir = out_path;  // "out/" names the directory "out"
  while (out_dir.size() > 1 && out_dir.back() == '/') out_dir.pop_back();
  detail::require(!out_dir.empty() && out_dir != "/", "HF output: '", out_path, "' is not a usable output directory");
  try {
    hf_detail::write_quantized_hf_files(source_dir, model, format, out_dir, options);
  } catch (const std::filesystem::filesystem_error& e) {
    detail::throw_error("HF output: '", out_dir, "': ", e.what());
  }
}

}  // namespace nibble::model
