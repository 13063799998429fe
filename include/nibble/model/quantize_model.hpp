// Quantizes every linear layer of a llama2.c model (wq wk wv wo w1 w2 w3) with one of
// nibble's methods, including the calibration plumbing GPTQ and AWQ need: the inputs of
// each linear layer, captured on calibration text, layer by layer.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../format/quantized_matrix.hpp"
#include "../quant/awq.hpp"
#include "../quant/gptq.hpp"
#include "../quant/hessian.hpp"
#include "../quant/hqq.hpp"
#include "../quant/rtn.hpp"
#include "llama2c.hpp"
#include "transformer.hpp"

namespace nibble::model {

enum class Method {
  rtn_int4_absmax,  // int4 symmetric, scale = absmax/7
  rtn_int4_full,    // int4 symmetric, scale = extreme/−8 (llama.cpp Q4_0 style)
  rtn_uint4,        // uint4 asymmetric min/max (GPTQ/AWQ's format)
  rtn_uint4_clip,   // uint4 asymmetric with a per-group MSE clip search
  nf4,              // bitsandbytes NF4, fp32 absmax
  nf4_dq,           // NF4 with double-quantized absmax
  fp4,              // bitsandbytes FP4, fp32 absmax
  gptq,             // GPTQ onto uint4 asym
  gptq_act,         // GPTQ onto uint4 asym, act-order (static groups)
  gptq_nf4_act,     // GPTQ onto NF4, act-order
  hqq,              // HQQ: uint4 asym with optimized float zero points, no calibration
  awq,              // AWQ: activation-aware scales (folded upstream) + clip search, uint4 asym
  // Combinations beyond the published recipes (see the demo's --methods):
  gptq_act_clip,       // GPTQ uint4 act-order, static groups fitted with the MSE clip search
  gptq_act_dq,         // GPTQ uint4 act-order, double-quantized scales
  gptq_act_clip_dq,    // both
  gptq_int4_act_clip,  // GPTQ onto int4 sym (full range), act-order + clip
  gptq_nf4_act_clip,   // GPTQ onto NF4 (scales in the integer-format storage), act-order + clip
  gptq_nf4_act_dq,     // GPTQ onto NF4, act-order, double-quantized scales (small groups for ~4.5 bits)
  gptq_int4_act_clip_dq,  // GPTQ onto int4 sym (full range), act-order + clip, double-quantized scales
  gptq_mixed,          // gptq_act_clip_dq with half-size groups for w1 and w3 (~4.58 bits at g32)
  awq_gptq,            // AWQ scales folded upstream, then GPTQ uint4 act-order on the scaled layers
  awq_gptq_clip_dq,    // AWQ scales + GPTQ act-order + clip search, double-quantized scales
  iq4_nl_clip,         // llama.cpp's IQ4_NL table, extreme/−127 scale + MSE clip search
  nf4_dq_bnb,          // nf4_dq with CodeFit::bitsandbytes: the bytes bitsandbytes writes
  gptq_iq4_nl_act_clip,  // GPTQ onto the IQ4_NL table, act-order + clip
};

struct MethodInfo {
  Method method;
  const char* name;         // command-line / JSON name
  const char* description;  // table label
  bool calibrated;          // needs calibration text
  bool standard;            // a published method (the demo's table); false: an experiment
};

inline const std::vector<MethodInfo>& all_methods() {
  static const std::vector<MethodInfo> methods = {
      {Method::rtn_int4_absmax, "int4-absmax", "RTN int4 sym absmax/7", false, true},
      {Method::rtn_int4_full, "int4-full", "RTN int4 sym full range", false, true},
      {Method::rtn_uint4, "uint4", "RTN uint4 asym", false, true},
      {Method::rtn_uint4_clip, "uint4-clip", "RTN uint4 asym + MSE clip", false, true},
      {Method::nf4, "nf4", "NF4", false, true},
      {Method::nf4_dq, "nf4-dq", "NF4 + double quant", false, true},
      {Method::fp4, "fp4", "FP4", false, true},
      {Method::gptq, "gptq", "GPTQ uint4 asym", true, true},
      {Method::gptq_act, "gptq-act", "GPTQ uint4 asym + act-order", true, true},
      {Method::gptq_nf4_act, "gptq-nf4-act", "GPTQ NF4 + act-order", true, true},
      {Method::hqq, "hqq", "HQQ uint4 (float zeros)", false, true},
      {Method::awq, "awq", "AWQ uint4 asym (scales + clip)", true, true},
      {Method::gptq_act_clip, "gptq-act-clip", "GPTQ uint4 + act-order + clip", true, false},
      {Method::gptq_act_dq, "gptq-act-dq", "GPTQ uint4 + act-order, DQ scales", true, false},
      {Method::gptq_act_clip_dq, "gptq-act-clip-dq", "GPTQ uint4 + act + clip, DQ scales", true, false},
      {Method::gptq_int4_act_clip, "gptq-int4-act-clip", "GPTQ int4 sym + act-order + clip", true, false},
      {Method::gptq_nf4_act_clip, "gptq-nf4-act-clip", "GPTQ NF4 + act-order + clip", true, false},
      {Method::gptq_nf4_act_dq, "gptq-nf4-act-dq", "GPTQ NF4 + act-order, DQ scales", true, false},
      {Method::gptq_int4_act_clip_dq, "gptq-int4-act-clip-dq", "GPTQ int4 sym + act + clip, DQ", true, false},
      {Method::gptq_mixed, "gptq-mixed", "GPTQ uint4 act+clip+DQ, w1/w3 g/2", true, false},
      {Method::awq_gptq, "awq-gptq", "AWQ scales + GPTQ uint4 act-order", true, false},
      {Method::awq_gptq_clip_dq, "awq-gptq-clip-dq", "AWQ + GPTQ act + clip, DQ scales", true, false},
      {Method::iq4_nl_clip, "iq4nl-clip", "RTN IQ4_NL + MSE clip", false, false},
      {Method::nf4_dq_bnb, "nf4-dq-bnb", "NF4 + DQ, bitsandbytes-exact codes", false, false},
      {Method::gptq_iq4_nl_act_clip, "gptq-iq4nl-act-clip", "GPTQ IQ4_NL + act-order + clip", true, false},
  };
  return methods;
}

inline const MethodInfo& method_info(Method m) {
  for (const auto& info : all_methods())
    if (info.method == m) return info;
  detail::throw_error("unknown method ", static_cast<int>(m));
}

inline const MethodInfo& method_by_name(const std::string& name) {
  std::string known;
  for (const auto& info : all_methods()) {
    if (name == info.name) return info;
    known += std::string(known.empty() ? "" : ", ") + info.name;
  }
  detail::throw_error("unknown method '", name, "' (expected one of: ", known, ")");
}

// The seven linear layers of a block, by name, in both weight holders.
struct LinearSlot {
  const char* name;
  StoredMatrix LlamaLayer::*weights;
  Linear TransformerLayer::*linear;
  LinearSite input;
};

inline const std::vector<LinearSlot>& linear_slots() {
  static const std::vector<LinearSlot> slots = {
      {"wq", &LlamaLayer::wq, &TransformerLayer::wq, LinearSite::attention_input},
      {"wk", &LlamaLayer::wk, &TransformerLayer::wk, LinearSite::attention_input},
      {"wv", &LlamaLayer::wv, &TransformerLayer::wv, LinearSite::attention_input},
      {"wo", &LlamaLayer::wo, &TransformerLayer::wo, LinearSite::attention_output},
      {"w1", &LlamaLayer::w1, &TransformerLayer::w1, LinearSite::ffn_input},
      {"w2", &LlamaLayer::w2, &TransformerLayer::w2, LinearSite::ffn_hidden},
      {"w3", &LlamaLayer::w3, &TransformerLayer::w3, LinearSite::ffn_input},
  };
  return slots;
}

struct ModelQuantOptions {
  Method method = Method::rtn_uint4;
  int group_size = 32;  // or kPerRow
  // Scale storage of the integer formats (uint4/int4 RTN, GPTQ, AWQ): f16 as GPTQ/AWQ
  // checkpoints store them. NF4/FP4 keep bitsandbytes' fp32 absmax (dq8 for nf4-dq).
  ScaleFormat int_scale_format = ScaleFormat::f16;
  LinearBackend backend = LinearBackend::kernel_exact;
  int kernel_threads = 1;  // threads per kernel call (1 when sequences run in parallel)
  int threads = 1;         // threads for calibration-side work (Hessians, GPTQ rows)
  double gptq_damp = 0.01;
  // Per-matrix group sizes that replace group_size, by slot name: {"w2", 16} (mixed
  // precision: smaller groups where errors cost the most).
  std::vector<std::pair<std::string, int>> group_overrides;
  // When set, every method fits this storage — codebook, symmetric scale rule, scale
  // format and group size — instead of its own (e.g. GGUF Q4_0: int4_sym, full_range,
  // f16, group 32); the method keeps its algorithm (GPTQ, AWQ, act-order, clip search).
  std::optional<QuantConfig> storage;
  // Called after each calibrated block with (blocks done, blocks in all): progress.
  std::function<void(int, int)> on_block;

  int group_size_for(const char* slot) const {
    for (const auto& [name, g] : group_overrides)
      if (name == slot) return g;
    return group_size;
  }
};

struct QuantizedModel {
  Transformer model;
  std::vector<std::shared_ptr<const QuantizedMatrix>> matrices;  // layer-major, slot order
  double linear_bits = 0.0;                                      // all stored bits of the linears
  std::size_t linear_weights = 0;
  std::size_t other_bytes = 0;  // fp32 embedding (= classifier) and norm gains
  double seconds = 0.0;         // time to quantize

  double bits_per_weight() const { return linear_bits / static_cast<double>(linear_weights); }
  std::size_t model_bytes() const { return static_cast<std::size_t>(linear_bits / 8.0 + 0.999) + other_bytes; }
};

// Bytes of the parts that stay fp32.
inline std::size_t fp32_other_bytes(const LlamaWeights& w) {
  std::size_t floats = static_cast<std::size_t>(w.token_embedding.rows() * w.token_embedding.cols() + w.rms_final.size() +
                                                w.wcls.rows() * w.wcls.cols());
  for (const auto& l : w.layers) floats += static_cast<std::size_t>(l.rms_att.size() + l.rms_ffn.size());
  return 4 * floats;
}

inline std::size_t fp32_model_bytes(const LlamaWeights& w) {
  std::size_t floats = 0;
  for (const auto& l : w.layers)
    for (const auto& s : linear_slots()) floats += static_cast<std::size_t>((l.*s.weights).rows() * (l.*s.weights).cols());
  return 4 * floats + fp32_other_bytes(w);
}

// Round-to-nearest configuration of the plain methods.
inline QuantConfig rtn_config(Method m, int group_size, ScaleFormat int_scales) {
  QuantConfig c;
  c.group_size = group_size;
  c.scale_format = int_scales;
  switch (m) {
    case Method::rtn_int4_absmax: c.codebook = Codebook::int4_sym; c.sym_scale = SymScale::absmax_over_7; break;
    case Method::rtn_int4_full: c.codebook = Codebook::int4_sym; c.sym_scale = SymScale::full_range; break;
    case Method::rtn_uint4: c.codebook = Codebook::uint4_asym; break;
    case Method::rtn_uint4_clip: c.codebook = Codebook::uint4_asym; c.clip.enabled = true; break;
    case Method::nf4: c.codebook = Codebook::nf4; c.scale_format = ScaleFormat::f32; break;
    case Method::nf4_dq: c.codebook = Codebook::nf4; c.scale_format = ScaleFormat::dq8; break;
    case Method::nf4_dq_bnb:
      c.codebook = Codebook::nf4;
      c.scale_format = ScaleFormat::dq8;
      c.code_fit = CodeFit::bitsandbytes;
      break;
    case Method::fp4: c.codebook = Codebook::fp4; c.scale_format = ScaleFormat::f32; break;
    case Method::gptq:
    case Method::gptq_act:
    case Method::hqq:
    case Method::awq: c.codebook = Codebook::uint4_asym; break;
    case Method::gptq_nf4_act: c.codebook = Codebook::nf4; c.scale_format = ScaleFormat::f32; break;
    case Method::gptq_act_clip: c.codebook = Codebook::uint4_asym; c.clip.enabled = true; break;
    case Method::gptq_act_dq: c.codebook = Codebook::uint4_asym; c.scale_format = ScaleFormat::dq8; break;
    case Method::gptq_act_clip_dq:
    case Method::gptq_mixed:
    case Method::awq_gptq_clip_dq:
      c.codebook = Codebook::uint4_asym;
      c.clip.enabled = true;
      c.scale_format = ScaleFormat::dq8;
      break;
    case Method::gptq_int4_act_clip:
      c.codebook = Codebook::int4_sym;
      c.sym_scale = SymScale::full_range;
      c.clip.enabled = true;
      break;
    case Method::gptq_nf4_act_clip: c.codebook = Codebook::nf4; c.clip.enabled = true; break;
    case Method::gptq_nf4_act_dq: c.codebook = Codebook::nf4; c.scale_format = ScaleFormat::dq8; break;
    case Method::gptq_int4_act_clip_dq:
      c.codebook = Codebook::int4_sym;
      c.sym_scale = SymScale::full_range;
      c.clip.enabled = true;
      c.scale_format = ScaleFormat::dq8;
      break;
    case Method::awq_gptq: c.codebook = Codebook::uint4_asym; break;
    case Method::iq4_nl_clip:
    case Method::gptq_iq4_nl_act_clip:
      c.codebook = Codebook::iq4_nl;
      c.clip.enabled = true;
      break;
  }
  return c;
}

// rtn_config with options.storage, when set, in place of the method's own storage.
inline QuantConfig method_config(const ModelQuantOptions& o, Method m, int group_size) {
  QuantConfig c = rtn_config(m, group_size, o.int_scale_format);
  if (o.storage) {
    c.codebook = o.storage->codebook;
    c.sym_scale = o.storage->sym_scale;
    c.scale_format = o.storage->scale_format;
    c.group_size = o.storage->group_size;
  }
  return c;
}

// Inputs of one block's linear layers, stacked over all calibration tokens.
struct BlockActivations {
  RowMatrixXf attention_input, attention_output, ffn_input, ffn_hidden;

  const RowMatrixXf& at(LinearSite site) const {
    switch (site) {
      case LinearSite::attention_input: return attention_input;
      case LinearSite::attention_output: return attention_output;
      case LinearSite::ffn_input: return ffn_input;
      case LinearSite::ffn_hidden: return ffn_hidden;
    }
    return attention_input;
  }
};

// Runs calibration sequences through the model one block at a time. For block l it
// captures the inputs of the block's linears, calls quantize_block(l, activations) (which
// replaces model.layers[l]'s linears, norms, …), then advances the hidden states either
// through the block as it is now (quantized: GPTQ's sequential scheme, later layers see
// the error of earlier ones) or through the block as it was captured (fp32: AWQ).
template <class QuantizeBlock>
void calibrate_blockwise(Transformer& model, const std::vector<std::vector<int>>& sequences, bool propagate_quantized,
                         int threads, const std::function<void(int, int)>& on_block, QuantizeBlock&& quantize_block) {
  detail::require(!sequences.empty(), "calibration needs at least one sequence");
  const std::size_t n = sequences.size();
  std::vector<RowMatrixXf> hidden(n);
  for (std::size_t s = 0; s < n; ++s) hidden[s] = model.embed(sequences[s]);
  for (int l = 0; l < model.config.n_layers; ++l) {
    std::vector<std::array<RowMatrixXf, 4>> parts(n);  // per sequence, per site
    std::vector<RowMatrixXf> fp_out(n);
    parallel_for(n, threads, [&](std::size_t s) {
      const ActivationHook hook = [&](int, LinearSite site, const RowMatrixXf& X) {
        parts[s][static_cast<std::size_t>(site)] = X;
      };
      KvCache cache = model.new_cache(static_cast<int>(hidden[s].rows()));
      RowMatrixXf X = hidden[s];
      model.run_layer(l, X, cache, &hook);
      if (!propagate_quantized) fp_out[s] = std::move(X);
    });
    BlockActivations acts;
    RowMatrixXf* targets[4] = {&acts.attention_input, &acts.attention_output, &acts.ffn_input, &acts.ffn_hidden};
    for (std::size_t k = 0; k < 4; ++k) {
      Eigen::Index rows = 0;
      for (const auto& p : parts) rows += p[k].rows();
      targets[k]->resize(rows, parts.front()[k].cols());
      Eigen::Index at = 0;
      for (auto& p : parts) {
        targets[k]->middleRows(at, p[k].rows()) = p[k];
        at += p[k].rows();
        p[k].resize(0, 0);
      }
    }
    quantize_block(l, static_cast<const BlockActivations&>(acts));
    if (propagate_quantized) {
      parallel_for(n, threads, [&](std::size_t s) {
        KvCache cache = model.new_cache(static_cast<int>(hidden[s].rows()));
        model.run_layer(l, hidden[s], cache);
      });
    } else {
      hidden = std::move(fp_out);
    }
    if (on_block) on_block(l + 1, model.config.n_layers);
  }
}

// Stacks the rows of parts (all with the same columns) into one matrix.
inline RowMatrixXf stack_rows(const std::vector<RowMatrixXf>& parts) {
  Eigen::Index rows = 0;
  for (const auto& p : parts) rows += p.rows();
  RowMatrixXf out(rows, parts.empty() ? 0 : parts.front().cols());
  Eigen::Index at = 0;
  for (const auto& p : parts) {
    out.middleRows(at, p.rows()) = p;
    at += p.rows();
  }
  return out;
}

// GPTQ's sequential scheme at its finest ("true sequential", GPTQModel's default): the
// calibration sequences go through the model one linear stage at a time. Block l's
// q/k/v inputs are captured and quantize_stage(l, LinearSite::attention_input, X)
// replaces wq, wk and wv; wo's inputs are then computed with the quantized q/k/v, and
// so on through gate/up and down. Every linear is calibrated on exactly the inputs the
// finished quantized model gives it, and every product is computed once (capturing a
// whole block and then re-running it quantized computes each twice). Memory: the hidden
// states plus one stage's inputs, twice (per sequence and stacked).
template <class QuantizeStage>
void calibrate_sequential(Transformer& model, const std::vector<std::vector<int>>& sequences, int threads,
                          const std::function<void(int, int)>& on_block, QuantizeStage&& quantize_stage) {
  detail::require(!sequences.empty(), "calibration needs at least one sequence");
  const std::size_t n = sequences.size();
  std::vector<RowMatrixXf> hidden(n), part(n);
  parallel_for(n, threads, [&](std::size_t s) { hidden[s] = model.embed(sequences[s]); });
  const LlamaConfig& c = model.config;
  for (int l = 0; l < c.n_layers; ++l) {
    const TransformerLayer& L = model.layers[static_cast<std::size_t>(l)];  // quantize_stage updates it
    parallel_for(n, threads, [&](std::size_t s) { model.rms_norm(hidden[s], L.rms_att, part[s]); });
    quantize_stage(l, LinearSite::attention_input, static_cast<const RowMatrixXf&>(stack_rows(part)));
    parallel_for(n, threads, [&](std::size_t s) {
      const RowMatrixXf xb = std::move(part[s]);
      const int positions = static_cast<int>(xb.rows());
      RowMatrixXf K(Eigen::Index{c.n_kv_heads} * positions, c.head_size()), V(K.rows(), K.cols());  // KvCache's layout
      model.attention(l, xb, K, V, positions, 0, part[s]);
    });
    quantize_stage(l, LinearSite::attention_output, static_cast<const RowMatrixXf&>(stack_rows(part)));
    parallel_for(n, threads, [&](std::size_t s) {
      RowMatrixXf out;
      L.wo.apply(part[s], out);
      hidden[s] += out;
      model.rms_norm(hidden[s], L.rms_ffn, part[s]);
    });
    quantize_stage(l, LinearSite::ffn_input, static_cast<const RowMatrixXf&>(stack_rows(part)));
    parallel_for(n, threads, [&](std::size_t s) {
      const RowMatrixXf xb = std::move(part[s]);
      model.ffn_hidden(l, xb, part[s]);
    });
    quantize_stage(l, LinearSite::ffn_hidden, static_cast<const RowMatrixXf&>(stack_rows(part)));
    parallel_for(n, threads, [&](std::size_t s) {
      RowMatrixXf out;
      L.w2.apply(part[s], out);
      hidden[s] += out;
      part[s].resize(0, 0);
    });
    if (on_block) on_block(l + 1, c.n_layers);
  }
}

// Quantizes all linear layers of w. calibration (token sequences of training text,
// never the evaluation text) is used by the calibrated methods only.
// AWQ's scale search for one llama block and the folding into the RMSNorm gains:
// rms_att → [wq wk wv], rms_ffn → [w1 w3], and w3's rows → [w2] (folded by the caller,
// which scales w3 anyway). Returns the three per-channel scale vectors.
struct AwqLayerScales {
  Eigen::VectorXf att, ffn, down;
};

inline AwqLayerScales search_and_fold_awq_scales(const LlamaLayer& fp, TransformerLayer& layer,
                                                 const BlockActivations& acts, const AwqConfig& search) {
  AwqLayerScales s;
  s.att = awq_quantize({fp.wq.dense(), fp.wk.dense(), fp.wv.dense()}, acts.attention_input, search).scales;
  s.ffn = awq_quantize({fp.w1.dense(), fp.w3.dense()}, acts.ffn_input, search).scales;
  s.down = awq_quantize({fp.w2.dense()}, acts.ffn_hidden, search).scales;
  fold_scales_into_norm(layer.rms_att, s.att);
  fold_scales_into_norm(layer.rms_ffn, s.ffn);
  return s;
}

inline QuantizedModel quantize_model(const LlamaWeights& w, const ModelQuantOptions& options,
                                     const std::vector<std::vector<int>>& calibration = {}) {
  const auto t0 = std::chrono::steady_clock::now();
  QuantizedModel out;
  // Unstacked q|k|v and gate|up: blocks are replaced one linear at a time below, and a
  // stacked copy of the source weights would keep running in their place.
  RuntimeOptions runtime;
  runtime.backend = options.backend;
  runtime.threads = options.kernel_threads;
  runtime.stack_projections = false;
  out.model = Transformer::from_weights(w, runtime);
  out.other_bytes = fp32_other_bytes(w);
  const int L = w.config.n_layers;
  std::vector<std::shared_ptr<const QuantizedMatrix>> qs(static_cast<std::size_t>(L) * linear_slots().size());
  // Calibration passes run the layers quantized so far decoded to fp32 (one Eigen / BLAS
  // product each, as GPTQ's reference implementations run fake-quantized layers): the
  // kernels' small-batch tiles decode the weights again for every few tokens, which made
  // them most of a calibration pass. The returned model runs on options.backend.
  const LinearBackend calibration_backend =
      method_info(options.method).calibrated ? LinearBackend::dequantized : options.backend;
  auto put = [&](int l, std::size_t slot, QuantizedMatrix q) {
    auto p = std::make_shared<const QuantizedMatrix>(std::move(q));
    out.model.layers[static_cast<std::size_t>(l)].*(linear_slots()[slot].linear) =
        Linear(p, calibration_backend, options.kernel_threads);
    qs[static_cast<std::size_t>(l) * linear_slots().size() + slot] = std::move(p);
  };

  switch (options.method) {
    case Method::rtn_int4_absmax:
    case Method::rtn_int4_full:
    case Method::rtn_uint4:
    case Method::rtn_uint4_clip:
    case Method::nf4:
    case Method::nf4_dq:
    case Method::nf4_dq_bnb:
    case Method::fp4:
    case Method::iq4_nl_clip: {
      for (int l = 0; l < L; ++l)
        for (std::size_t k = 0; k < linear_slots().size(); ++k) {
          const QuantConfig c = method_config(options, options.method, options.group_size_for(linear_slots()[k].name));
          put(l, k, quantize((w.layers[static_cast<std::size_t>(l)].*(linear_slots()[k].weights)).dense(), c));
        }
      break;
    }
    case Method::gptq:
    case Method::gptq_act:
    case Method::gptq_nf4_act:
    case Method::gptq_act_clip:
    case Method::gptq_act_dq:
    case Method::gptq_act_clip_dq:
    case Method::gptq_int4_act_clip:
    case Method::gptq_nf4_act_clip:
    case Method::gptq_nf4_act_dq:
    case Method::gptq_int4_act_clip_dq:
    case Method::gptq_mixed:
    case Method::gptq_iq4_nl_act_clip: {
      detail::require(!calibration.empty(), method_info(options.method).name, " needs calibration sequences");
      GptqConfig g;
      g.quant = method_config(options, options.method, options.group_size);
      g.damp = options.gptq_damp;
      g.act_order = options.method != Method::gptq;
      g.threads = options.threads;
      // GPTQ's sequential scheme, stage by stage (calibrate_sequential): each linear's
      // Hessian comes from the inputs the already-quantized layers before it produce.
      calibrate_sequential(out.model, calibration, options.threads, options.on_block,
                           [&](int l, LinearSite site, const RowMatrixXf& X) {
        HessianAccumulator acc(static_cast<std::size_t>(X.cols()), options.threads);
        acc.add(X);
        const Eigen::MatrixXd H = acc.hessian();
        for (std::size_t k = 0; k < linear_slots().size(); ++k) {
          const LinearSlot& slot = linear_slots()[k];
          if (slot.input != site) continue;
          GptqConfig gk = g;
          if (!options.storage) gk.quant.group_size = options.group_size_for(slot.name);
          // Mixed precision: the FFN up/gate projections (w1, w3) get half-size groups
          // (per-row → 32), which measured better per extra bit than any other matrix.
          if (options.method == Method::gptq_mixed && !options.storage && (k == 4 || k == 6))
            gk.quant.group_size = gk.quant.group_size == kPerRow ? 32 : std::max(16, gk.quant.group_size / 2);
          put(l, k, gptq_quantize((w.layers[static_cast<std::size_t>(l)].*(slot.weights)).dense(), H, gk).matrix);
        }
      });
      break;
    }
    case Method::hqq: {
      HqqConfig h;
      h.quant = method_config(options, options.method, options.group_size);
      h.zero_format = options.int_scale_format == ScaleFormat::dq8 ? ScaleFormat::f32 : options.int_scale_format;
      for (int l = 0; l < L; ++l)
        for (std::size_t k = 0; k < linear_slots().size(); ++k)
          put(l, k, hqq_quantize((w.layers[static_cast<std::size_t>(l)].*(linear_slots()[k].weights)).dense(), h));
      break;
    }
    case Method::awq: {
      detail::require(!calibration.empty(), "awq needs calibration sequences");
      AwqConfig search;
      search.quant = method_config(options, options.method, options.group_size);
      search.clip_search = false;
      search.threads = options.threads;
      AwqConfig clip = search;  // for awq_clip_quantize: the clip search on the scaled weights
      clip.clip_search = true;
      // llm-awq's block pipeline on inputs from the fp32 model: search the scales of
      // every group first, fold them all, then clip-search and quantize each linear on
      // its final (scaled) weights. Groups: rms_att → [wq wk wv]; rms_ffn → [w1 w3];
      // w3 → [w2]. wv → wo is skipped: with grouped-query attention wv has fewer output
      // rows than wo has inputs (algorithms.md §3.1). wq and wk get no clip search.
      calibrate_blockwise(out.model, calibration, false, options.threads, options.on_block, [&](int l, const BlockActivations& acts) {
        const LlamaLayer& fp = w.layers[static_cast<std::size_t>(l)];
        const AwqLayerScales scales =
            search_and_fold_awq_scales(fp, out.model.layers[static_cast<std::size_t>(l)], acts, search);
        const Eigen::VectorXf &s_att = scales.att, &s_ffn = scales.ffn, &s_down = scales.down;
        const RowMatrixXf wq = fp.wq.dense() * s_att.asDiagonal(), wk = fp.wk.dense() * s_att.asDiagonal(),
                          wv = fp.wv.dense() * s_att.asDiagonal(), w1 = fp.w1.dense() * s_ffn.asDiagonal(),
                          w2 = fp.w2.dense() * s_down.asDiagonal();
        RowMatrixXf w3 = fp.w3.dense() * s_ffn.asDiagonal();
        fold_scales_into_linear_rows(w3, s_down);
        // The clip search sees the inputs divided by the folded scales (wo's take none).
        put(l, 0, quantize(wq, search.quant));
        put(l, 1, quantize(wk, search.quant));
        put(l, 2, awq_clip_quantize(wv, acts.attention_input, clip, s_att));
        put(l, 3, awq_clip_quantize(fp.wo.dense(), acts.attention_output, clip));
        put(l, 4, awq_clip_quantize(w1, acts.ffn_input, clip, s_ffn));
        put(l, 5, awq_clip_quantize(w2, acts.ffn_hidden, clip, s_down));
        put(l, 6, awq_clip_quantize(w3, acts.ffn_input, clip, s_ffn));
      });
      break;
    }
    case Method::awq_gptq:
    case Method::awq_gptq_clip_dq: {
      detail::require(!calibration.empty(), method_info(options.method).name, " needs calibration sequences");
      GptqConfig g;
      g.quant = method_config(options, options.method, options.group_size);
      g.damp = options.gptq_damp;
      g.act_order = true;
      g.threads = options.threads;
      AwqConfig search;
      search.threads = options.threads;
      search.quant = g.quant;
      search.quant.clip.enabled = false;
      if (search.quant.scale_format == ScaleFormat::dq8) search.quant.scale_format = ScaleFormat::f32;
      search.clip_search = false;
      // AWQ's scales make the loud input channels' weights relatively finer; GPTQ then
      // rounds the scaled weights with the Hessian of the scaled inputs (x / s), in
      // GPTQ's sequential scheme.
      calibrate_blockwise(out.model, calibration, true, options.threads, options.on_block, [&](int l, const BlockActivations& acts) {
        const LlamaLayer& fp = w.layers[static_cast<std::size_t>(l)];
        const AwqLayerScales scales =
            search_and_fold_awq_scales(fp, out.model.layers[static_cast<std::size_t>(l)], acts, search);
        const Eigen::VectorXf &s_att = scales.att, &s_ffn = scales.ffn, &s_down = scales.down;
        RowMatrixXf w3 = fp.w3.dense() * s_ffn.asDiagonal();
        fold_scales_into_linear_rows(w3, s_down);
        const RowMatrixXf scaled[7] = {fp.wq.dense() * s_att.asDiagonal(), fp.wk.dense() * s_att.asDiagonal(),
                                       fp.wv.dense() * s_att.asDiagonal(), fp.wo.dense(),
                                       fp.w1.dense() * s_ffn.asDiagonal(), fp.w2.dense() * s_down.asDiagonal(), w3};
        auto hessian_of = [&](const RowMatrixXf& X, const Eigen::VectorXf* s) {
          HessianAccumulator acc(static_cast<std::size_t>(X.cols()), options.threads);
          if (s) acc.add(X * s->cwiseInverse().asDiagonal());
          else acc.add(X);
          return acc.hessian();
        };
        const Eigen::MatrixXd H_att = hessian_of(acts.attention_input, &s_att);
        const Eigen::MatrixXd H_out = hessian_of(acts.attention_output, nullptr);
        const Eigen::MatrixXd H_ffn = hessian_of(acts.ffn_input, &s_ffn);
        const Eigen::MatrixXd H_hid = hessian_of(acts.ffn_hidden, &s_down);
        const Eigen::MatrixXd* H[7] = {&H_att, &H_att, &H_att, &H_out, &H_ffn, &H_hid, &H_ffn};
        for (std::size_t k = 0; k < 7; ++k) put(l, k, gptq_quantize(scaled[k], *H[k], g).matrix);
      });
      break;
    }
  }

  for (std::size_t i = 0; i < qs.size(); ++i) {
    const auto& q = qs[i];
    detail::require(q != nullptr, "internal: a linear layer was not quantized");
    if (calibration_backend != options.backend)  // the model returned runs on options.backend
      out.model.layers[i / linear_slots().size()].*(linear_slots()[i % linear_slots().size()].linear) =
          Linear(q, options.backend, options.kernel_threads);
    out.linear_bits += q->bits_per_weight() * static_cast<double>(q->rows() * q->cols());
    out.linear_weights += q->rows() * q->cols();
  }
  out.matrices = std::move(qs);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

// The source weights with q's linears and norm gains (AWQ folds scales into the gains)
// in place of the source's: a LlamaWeights to run, evaluate or write (gguf_model_writer).
inline LlamaWeights with_quantized_linears(LlamaWeights w, const QuantizedModel& q) {
  detail::require(q.matrices.size() == w.layers.size() * linear_slots().size() &&
                      q.model.layers.size() == w.layers.size(),
                  "quantized model has ", q.matrices.size(), " matrices for ", w.layers.size(), " blocks");
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    for (std::size_t k = 0; k < linear_slots().size(); ++k)
      w.layers[l].*(linear_slots()[k].weights) = StoredMatrix(q.matrices[l * linear_slots().size() + k]);
    w.layers[l].rms_att = q.model.layers[l].rms_att;
    w.layers[l].rms_ffn = q.model.layers[l].rms_ffn;
  }
  return w;
}

}  // namespace nibble::model
