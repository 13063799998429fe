// Compares the logits of a model read two ways: an HF directory written by
// scripts/make-hf-model.py (load_hf_model, rotate_half RoPE) against its source read by
// nibble's own loader (a GGUF file decoded to fp32, or a llama2.c checkpoint; both with
// adjacent-pair RoPE on permuted q/k rows). Used by scripts/test-hf.sh.
//
//   interop_hf_check gguf    MODEL.gguf HF_DIR TOKENS_FILE MAX_REL MAX_KL
//   interop_hf_check llama2c MODEL.bin  HF_DIR TOKENS_FILE MAX_REL MAX_KL
//   interop_hf_check dump    HF_DIR OUT.safetensors
//
// First every weight must equal the source's, with q/k rows put into rotate_half order
// and rounded to the dtype config.json names (torch_dtype). TOKENS_FILE holds whitespace-separated token ids. Prints the largest logit difference
// relative to the largest |logit|, the mean KL(source ‖ HF) per token in nats and the
// top-1 agreement; exits 1 when the difference exceeds MAX_REL or the KL exceeds MAX_KL.
//
// dump writes every weight load_hf_model holds for HF_DIR as F32 under its HF name (a
// quantized linear "<p>.weight" as nibble decodes it), for tests/interop/check_hf_quantized.py
// to compare with its own numpy decoding of the directory's packed tensors.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nibble/io/safetensors.hpp>
#include <nibble/model/gguf_model.hpp>
#include <nibble/model/hf_model.hpp>
#include <nibble/model/llama2c.hpp>
#include <nibble/model/transformer.hpp>

using namespace nibble;
using namespace nibble::model;

namespace {

// q/k rows from adjacent RoPE pairs to rotate_half order (this program's own copy).
RowMatrixXf to_halves(const RowMatrixXf& w, int n_heads) {
  const Eigen::Index hs = w.rows() / n_heads, half = hs / 2;
  RowMatrixXf out(w.rows(), w.cols());
  for (Eigen::Index h = 0; h < n_heads; ++h)
    for (Eigen::Index i = 0; i < half; ++i)
      for (Eigen::Index j = 0; j < 2; ++j) out.row(h * hs + j * half + i) = w.row(h * hs + 2 * i + j);
  return out;
}

// Values of `hf` that differ from `ref` stored as `dtype` ("float32", "bfloat16", "float16").
std::size_t mismatches(const RowMatrixXf& ref, const RowMatrixXf& hf, const std::string& dtype) {
  detail::require(ref.rows() == hf.rows() && ref.cols() == hf.cols(), "shape mismatch");
  std::size_t n = 0;
  for (Eigen::Index i = 0; i < ref.size(); ++i) {
    float want = ref.data()[i];
    if (dtype == "bfloat16") want = bf16_to_float(float_to_bf16(want));
    if (dtype == "float16") want = half_to_float(float_to_half(want));
    n += hf.data()[i] != want;
  }
  return n;
}

std::size_t weight_mismatches(const LlamaWeights& ref, const LlamaWeights& hf, const std::string& dtype) {
  const LlamaConfig& c = ref.config;
  auto vec = [](const Eigen::VectorXf& v) { return RowMatrixXf(v.transpose()); };
  std::size_t n = mismatches(ref.token_embedding.to_float(), hf.token_embedding.to_float(), dtype) +
                  mismatches(vec(ref.rms_final), vec(hf.rms_final), dtype);
  if (!c.shared_classifier) n += mismatches(ref.wcls.to_float(), hf.wcls.to_float(), dtype);
  for (std::size_t l = 0; l < ref.layers.size(); ++l) {
    const LlamaLayer &a = ref.layers[l], &b = hf.layers[l];
    n += mismatches(to_halves(a.wq.to_float(), c.n_heads), b.wq.to_float(), dtype);
    n += mismatches(to_halves(a.wk.to_float(), c.n_kv_heads), b.wk.to_float(), dtype);
    for (auto [x, y] : {std::pair{&a.wv, &b.wv}, {&a.wo, &b.wo}, {&a.w1, &b.w1}, {&a.w2, &b.w2}, {&a.w3, &b.w3}})
      n += mismatches(x->to_float(), y->to_float(), dtype);
    n += mismatches(vec(a.rms_att), vec(b.rms_att), dtype) + mismatches(vec(a.rms_ffn), vec(b.rms_ffn), dtype);
  }
  return n;
}

RowMatrixXf logits(const LlamaWeights& w, const std::vector<int>& tokens) {
  RuntimeOptions o;
  o.threads = 2;
  const Transformer t = Transformer::from_weights(w, o);
  KvCache cache = t.new_cache(static_cast<int>(tokens.size()));
  return t.forward(tokens, cache);
}

// The weights of an HF directory as nibble holds them, F32, under their HF names.
int dump(const std::string& dir, const std::string& out_path) {
  const LlamaWeights w = load_hf_model(dir);
  io::SafetensorsWriter out(out_path);
  auto add = [&](const std::string& name, const RowMatrixXf& m) {
    out.add(name, io::DType::F32, {static_cast<std::uint64_t>(m.rows()), static_cast<std::uint64_t>(m.cols())}, m.data(),
            static_cast<std::size_t>(m.size()) * 4);
  };
  auto add_vec = [&](const std::string& name, const Eigen::VectorXf& v) {
    out.add(name, io::DType::F32, {static_cast<std::uint64_t>(v.size())}, v.data(), static_cast<std::size_t>(v.size()) * 4);
  };
  add("model.embed_tokens.weight", w.token_embedding.to_float());
  if (!w.config.shared_classifier) add("lm_head.weight", w.wcls.to_float());
  add_vec("model.norm.weight", w.rms_final);
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    const LlamaLayer& L = w.layers[l];
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add_vec(p + "input_layernorm.weight", L.rms_att);
    add_vec(p + "post_attention_layernorm.weight", L.rms_ffn);
    for (const hf_detail::HfLinear& t : hf_detail::hf_layer_linears()) add(p + t.name + ".weight", (L.*t.matrix).to_float());
    if (w.config.qkv_bias) {
      add_vec(p + "self_attn.q_proj.bias", L.bq);
      add_vec(p + "self_attn.k_proj.bias", L.bk);
      add_vec(p + "self_attn.v_proj.bias", L.bv);
    }
  }
  out.set_metadata("format", "pt");
  out.finish();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "dump") {
    try {
      return dump(argv[2], argv[3]);
    } catch (const Error& e) {
      std::cerr << "hf_check: " << e.what() << "\n";
      return 1;
    }
  }
  if (argc != 7) {
    std::cerr << "usage: interop_hf_check gguf|llama2c SOURCE HF_DIR TOKENS_FILE MAX_REL MAX_KL\n"
                 "       interop_hf_check dump HF_DIR OUT.safetensors\n";
    return 2;
  }
  const std::string kind = argv[1], source = argv[2], dir = argv[3];
  const double max_rel = std::atof(argv[5]), max_kl = std::atof(argv[6]);
  try {
    std::vector<int> tokens;
    std::ifstream in(argv[4]);
    for (int t; in >> t;) tokens.push_back(t);
    detail::require(tokens.size() >= 2, "no tokens in ", argv[4]);
    LlamaWeights ref;
    if (kind == "gguf") {
      GgufLoadOptions o;
      o.dequantize = true;
      ref = load_gguf_model(source, o);
    } else if (kind == "llama2c") {
      ref = load_llama2c_checkpoint(source);
    } else {
      std::cerr << "unknown kind " << kind << "\n";
      return 2;
    }
    const LlamaWeights hf = load_hf_model(dir);
    detail::require(ref.config.rope_style == RopeStyle::adjacent_pairs && hf.config.rope_style == RopeStyle::halves,
                    "unexpected RoPE styles");
    // Weights first: the HF directory must hold the source's values (q/k rows un-permuted),
    // rounded to the dtype its config.json names, decoded bit for bit.
    const nlohmann::json config = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
    const std::string dtype = config.value("torch_dtype", "float32");
    const std::size_t bad = weight_mismatches(ref, hf, dtype);
    std::printf("weights: %zu values differ from the source stored as %s\n", bad, dtype.c_str());
    if (bad != 0) return 1;
    const RowMatrixXf a = logits(ref, tokens);
    const RowMatrixXf b = logits(hf, tokens);
    const double rel = static_cast<double>((a - b).cwiseAbs().maxCoeff()) / static_cast<double>(a.cwiseAbs().maxCoeff());
    const RowMatrixXf la = log_softmax_rows(a), lb = log_softmax_rows(b);
    double kl = 0.0;
    int top1 = 0;
    for (Eigen::Index t = 0; t < a.rows(); ++t) {
      for (Eigen::Index i = 0; i < a.cols(); ++i)
        kl += std::exp(static_cast<double>(la(t, i))) * (static_cast<double>(la(t, i)) - lb(t, i));
      Eigen::Index ia, ib;
      a.row(t).maxCoeff(&ia);
      b.row(t).maxCoeff(&ib);
      top1 += ia == ib;
    }
    kl /= static_cast<double>(a.rows());
    std::printf("%s vs %s: %zu tokens, max |logit diff| / max |logit| = %.3g, mean KL = %.3g nats, top-1 agree %d/%zu\n",
                source.c_str(), dir.c_str(), tokens.size(), rel, kl, top1, tokens.size());
    if (rel > max_rel || kl > max_kl) {
      std::fprintf(stderr, "hf_check: FAILED (limits: relative difference %g, KL %g)\n", max_rel, max_kl);
      return 1;
    }
    return 0;
  } catch (const Error& e) {
    std::cerr << "hf_check: " << e.what() << "\n";
    return 1;
  }
}
