// AWQ with folded scales for nibble-quant, on Hugging Face llama-style checkpoints
// (llama, mistral, qwen2, ...: model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj,
// post_attention_layernorm, mlp.{gate,up,down}_proj}).
//
// AWQ quantizes W·diag(s) and needs the input divided by s. A checkpoint that other
// tools load has no place for s, so it is folded into the op that produces the input
// (reference/algorithms.md §3.1, as llm-awq and AutoAWQ do):
//
//   input_layernorm          → q, k, v      norm gain /= s
//   v_proj rows              → o_proj       only when v has as many rows as o has inputs
//                                           (no grouped-query attention)
//   post_attention_layernorm → gate, up     norm gain /= s
//   up_proj rows             → down_proj    (up is the factor that multiplies act(gate))
//
// As in llm-awq, every group's s is searched on the original weights, then all are
// folded, then each linear gets the clip search on its final weights (q and k without
// it) and is quantized. The folded norms (and v/up biases, if any) replace the originals
// in the output; a linear kept in float (--skip) still gets its s, in float.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nibble/io/safetensors.hpp>
#include <nibble/quant/awq.hpp>
#include <nibble/quant/metrics.hpp>

namespace nibble_quant {

using nibble::RowMatrixXf;

// One group of linears sharing an input, and where its scales fold.
struct AwqFoldGroup {
  std::vector<std::string> linears;  // e.g. q, k, v (".weight" names)
  std::string fold_into;             // a norm gain (1-D) or a linear whose rows produce the input
  bool fold_into_rows = false;       // true: fold_into is a linear (divide its rows)
};

// What a folded layer produced: quantized linears, float replacements (folded norms
// and biases, and every linear's scaled float weight for when it is kept in float),
// and the SQNR of each quantized linear's effective weight
// diag(row_s)·Q·diag(s)⁻¹ against the original weight.
struct AwqFoldedLayer {
  std::map<std::string, nibble::QuantizedMatrix> quantized;
  std::map<std::string, std::vector<float>> replaced;
  std::map<std::string, double> sqnr_db;
};

inline bool is_float_dtype(nibble::io::DType t) {
  return t == nibble::io::DType::F32 || t == nibble::io::DType::F16 || t == nibble::io::DType::BF16;
}

// The foldable groups of layer `prefix` ("model.layers.N."): only groups whose linears
// and fold target all exist as float tensors of matching shapes.
inline std::vector<AwqFoldGroup> awq_fold_groups(const nibble::io::SafetensorsReader& in, const std::string& prefix) {
  auto matrix_cols = [&](const std::string& name) -> std::int64_t {
    if (!in.contains(name)) return -1;
    const auto& t = in.info(name);
    return is_float_dtype(t.dtype) && t.shape.size() == 2 ? static_cast<std::int64_t>(t.shape[1]) : -1;
  };
  auto matrix_rows = [&](const std::string& name) -> std::int64_t {
    return matrix_cols(name) < 0 ? -1 : static_cast<std::int64_t>(in.info(name).shape[0]);
  };
  auto vector_size = [&](const std::string& name) -> std::int64_t {
    if (!in.contains(name)) return -1;
    const auto& t = in.info(name);
    return is_float_dtype(t.dtype) && t.shape.size() == 1 ? static_cast<std::int64_t>(t.shape[0]) : -1;
  };
  const std::string a = prefix + "self_attn.", m = prefix + "mlp.";
  const std::vector<AwqFoldGroup> candidates = {
      {{a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"}, prefix + "input_layernorm.weight", false},
      {{a + "o_proj.weight"}, a + "v_proj.weight", true},
      {{m + "gate_proj.weight", m + "up_proj.weight"}, prefix + "post_attention_layernorm.weight", false},
      {{m + "down_proj.weight"}, m + "up_proj.weight", true},
  };
  // Gemma-style blocks (a norm after attention, another before the MLP; gains used as
  // 1 + w) would need other folding rules: leave them alone.
  if (in.contains(prefix + "pre_feedforward_layernorm.weight")) return {};
  std::vector<AwqFoldGroup> groups;
  auto accepted_linear = [&](const std::string& name) {
    for (const auto& g : groups)
      for (const auto& l : g.linears)
        if (l == name) return true;
    return false;
  };
  for (const AwqFoldGroup& g : candidates) {  // in order: a producer's own group comes first
    const std::int64_t cols = matrix_cols(g.linears[0]);
    bool ok = cols > 0;
    for (const auto& l : g.linears) ok = ok && matrix_cols(l) == cols;
    ok = ok && (g.fold_into_rows ? matrix_rows(g.fold_into) == cols && accepted_linear(g.fold_into)
                                 : vector_size(g.fold_into) == cols);
    if (ok) groups.push_back(g);
  }
  return groups;
}

// Runs AWQ on one layer. `quantize_it(name)` tells which linears are quantized (the rest
// are kept in float but still scaled); `calibration(name, in)` gives a linear's inputs.
template <class Quantize, class Calibration>
AwqFoldedLayer awq_fold_layer(const nibble::io::SafetensorsReader& in, const std::vector<AwqFoldGroup>& groups,
                              const nibble::AwqConfig& base, Quantize quantize_it, Calibration calibration) {
  using nibble::AwqConfig;
  // A group longer than a row becomes one group per row (as for every other tensor).
  auto config_for = [&](Eigen::Index cols, bool scale_search) {
    AwqConfig c = base;
    if (c.quant.group_size != nibble::kPerRow && c.quant.group_size > cols) c.quant.group_size = nibble::kPerRow;
    if (scale_search) c.clip_search = false;  // the clip search runs on the final weights
    return c;
  };

  struct Linear {
    RowMatrixXf original, final;
    Eigen::VectorXf col_s, row_s;  // final = diag(1/row_s)·original·diag(col_s)
    RowMatrixXf x;                 // calibration inputs, divided by col_s
    bool clip = true;
  };
  std::map<std::string, Linear> linears;
  std::map<std::string, std::vector<float>> vectors;  // norm gains and biases being folded
  for (const AwqFoldGroup& g : groups)
    for (const auto& name : g.linears) {
      Linear& l = linears[name];
      l.original = in.matrix(name);
      l.col_s = Eigen::VectorXf::Ones(l.original.cols());
      l.row_s = Eigen::VectorXf::Ones(l.original.rows());
      l.clip = name.find("q_proj") == std::string::npos && name.find("k_proj") == std::string::npos;
    }
  // 1. Scales of every group, searched on the original weights.
  for (const AwqFoldGroup& g : groups) {
    std::vector<RowMatrixXf> ws;
    for (const auto& name : g.linears) ws.push_back(linears[name].original);
    const RowMatrixXf X = calibration(g.linears[0], static_cast<std::size_t>(ws[0].cols()));
    const Eigen::VectorXf s = nibble::awq_quantize(ws, X, config_for(X.cols(), true)).scales;
    for (const auto& name : g.linears) {
      linears[name].col_s = s;
      linears[name].x = X * s.cwiseInverse().asDiagonal();
    }
    // 2. Fold 1/s into the producer of the input.
    if (g.fold_into_rows) {
      linears.at(g.fold_into).row_s = s;  // the producer is itself a linear of this layer
      const std::string bias = g.fold_into.substr(0, g.fold_into.size() - 7) + ".bias";  // "<linear>.weight"
      if (in.contains(bias)) {
        std::vector<float> b = in.floats(bias);
        nibble::detail::require(b.size() == static_cast<std::size_t>(s.size()), "AWQ fold: '", bias, "' has ", b.size(),
                                " entries, expected ", s.size());
        for (std::size_t i = 0; i < b.size(); ++i) b[i] /= s[static_cast<Eigen::Index>(i)];
        vectors[bias] = std::move(b);
      }
    } else {
      std::vector<float> gain = in.floats(g.fold_into);
      Eigen::Map<Eigen::VectorXf> gv(gain.data(), static_cast<Eigen::Index>(gain.size()));
      nibble::fold_scales_into_norm(gv, s);
      vectors[g.fold_into] = std::move(gain);
    }
  }
  // 3. Final weights, clip search, quantization.
  AwqFoldedLayer out;
  for (auto& [name, l] : linears) {
    l.final = l.row_s.cwiseInverse().asDiagonal() * l.original * l.col_s.asDiagonal();
    // Float copy of the scaled weight: what is written if the linear is kept in float
    // (--skip, or a shape the output format cannot quantize).
    out.replaced[name] = std::vector<float>(l.final.data(), l.final.data() + l.final.size());
    if (!quantize_it(name)) continue;
    const AwqConfig clip = config_for(l.final.cols(), false);
    nibble::QuantizedMatrix q = l.clip ? nibble::awq_clip_quantize(l.final, l.x, clip) : nibble::quantize(l.final, clip.quant);
    const Eigen::MatrixXf effective = l.row_s.asDiagonal() * nibble::awq_dequantize(q, l.col_s);
    out.sqnr_db[name] = nibble::compare(l.original, effective).sqnr_db;
    out.quantized.emplace(name, std::move(q));
  }
  for (auto& [name, v] : vectors) out.replaced[name] = std::move(v);
  return out;
}

}  // namespace nibble_quant
