// Quantizing a whole model into a GGUF model file: GPTQ's stage-by-stage sequential
// calibration against a reference computed on the finished model, and the GGUF model
// writer (metadata and untouched tensors byte for byte, the quantized linears exactly,
// the file loading back into the same model and logits). The CLI and llama.cpp reading
// the files are checked by nibble_quant_cli_test and scripts/test-real-model.sh.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/model/gguf_model.hpp>
#include <nibble/model/gguf_model_writer.hpp>
#include <nibble/model/quantize_model.hpp>

#include "llm_test_models.hpp"

namespace quantize_gguf_model_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

namespace {

using namespace nibble;
using namespace nibble::model;

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "quantize_gguf_" + std::to_string(::getpid()) + "_" + name;
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// Every in_features a multiple of 32 (GGUF blocks): dim 64, 4 heads of 16 (2 kv), ffn 96.
LlamaWeights block_model(bool biases = false, std::uint32_t seed = 11) {
  test::RandomModelShape shape;
  shape.dim = 64, shape.hidden_dim = 96, shape.n_layers = 2, shape.n_heads = 4, shape.n_kv_heads = 2;
  shape.head_dim = 16, shape.vocab = 97;
  return test::random_model(biases ? RopeStyle::halves : RopeStyle::adjacent_pairs, biases, seed, shape);
}

QuantConfig q4_0_storage() {
  QuantConfig c;
  c.codebook = Codebook::int4_sym;
  c.sym_scale = SymScale::full_range;
  c.group_size = 32;
  c.scale_format = ScaleFormat::f16;
  return c;
}

ModelQuantOptions gptq_q4_0_options() {
  ModelQuantOptions o;
  o.method = Method::gptq_int4_act_clip;
  o.storage = q4_0_storage();
  o.group_size = 32;
  o.backend = LinearBackend::dequantized;
  o.threads = 2;
  return o;
}

void expect_same_matrix(const QuantizedMatrix& a, const QuantizedMatrix& b, const std::string& what) {
  ASSERT_EQ(a.rows(), b.rows()) << what;
  ASSERT_EQ(a.cols(), b.cols()) << what;
  for (std::size_t r = 0; r < a.rows(); ++r) {
    for (std::size_t c = 0; c < a.cols(); ++c) ASSERT_EQ(a.code(r, c), b.code(r, c)) << what << " (" << r << ", " << c << ")";
    for (std::size_t g = 0; g < a.cols() / a.group_size(); ++g) ASSERT_EQ(a.scale(r, g), b.scale(r, g)) << what;
  }
}

// The inputs of every (block, site), captured by plain forward passes of the finished
// quantized model, stacked over the sequences in order.
std::map<std::pair<int, int>, RowMatrixXf> captured_inputs(const Transformer& m, const std::vector<std::vector<int>>& seqs) {
  std::map<std::pair<int, int>, std::vector<RowMatrixXf>> parts;
  const ActivationHook hook = [&](int l, LinearSite site, const RowMatrixXf& X) {
    parts[{l, static_cast<int>(site)}].push_back(X);
  };
  for (const auto& s : seqs) {
    KvCache cache = m.new_cache(static_cast<int>(s.size()));
    m.forward(s, cache, &hook);
  }
  std::map<std::pair<int, int>, RowMatrixXf> out;
  for (const auto& [key, p] : parts) out[key] = stack_rows(p);
  return out;
}

// Stage-by-stage GPTQ gives every linear the Hessian of the inputs the finished model
// feeds it. So: run the finished model forward (nothing blocked, nothing staged),
// capture each linear's inputs, run GPTQ on each fp32 matrix with that Hessian, and
// every code and scale must be the ones quantize_model produced.
TEST(SequentialCalibration, GptqEqualsGptqOnTheFinishedModelsOwnInputs) {
  for (bool biases : {false, true}) {
    const LlamaWeights w = block_model(biases);
    const auto seqs = test::calibration_tokens(3, 40, w.config.vocab_size);
    const ModelQuantOptions o = gptq_q4_0_options();
    int progress = 0;
    ModelQuantOptions counted = o;
    counted.on_block = [&](int done, int total) {
      EXPECT_EQ(done, progress + 1);
      EXPECT_EQ(total, w.config.n_layers);
      progress = done;
    };
    const QuantizedModel q = quantize_model(w, counted, seqs);
    EXPECT_EQ(progress, w.config.n_layers);
    const auto inputs = captured_inputs(q.model, seqs);
    GptqConfig g;
    g.quant = method_config(o, o.method, 32);
    g.damp = o.gptq_damp;
    g.act_order = true;
    g.threads = 1;
    std::size_t differs_from_rtn = 0;
    for (int l = 0; l < w.config.n_layers; ++l)
      for (std::size_t k = 0; k < linear_slots().size(); ++k) {
        const LinearSlot& slot = linear_slots()[k];
        const RowMatrixXf& X = inputs.at({l, static_cast<int>(slot.input)});
        ASSERT_EQ(X.rows(), 3 * 40);
        HessianAccumulator acc(static_cast<std::size_t>(X.cols()), 1);
        acc.add(X);
        const RowMatrixXf& W = (w.layers[static_cast<std::size_t>(l)].*(slot.weights)).dense();
        const QuantizedMatrix ref = gptq_quantize(W, acc.hessian(), g).matrix;
        const QuantizedMatrix& got = *q.matrices[static_cast<std::size_t>(l) * linear_slots().size() + k];
        expect_same_matrix(got, ref, "block " + std::to_string(l) + " " + slot.name);
        const QuantizedMatrix rtn = io::quantize_q4_0(W);
        for (std::size_t r = 0; r < rtn.rows(); ++r)
          for (std::size_t c = 0; c < rtn.cols(); ++c) differs_from_rtn += rtn.code(r, c) != got.code(r, c);
      }
    EXPECT_GT(differs_from_rtn, 100u) << "GPTQ should move codes away from plain rounding";
  }
}

// Source file with extra metadata of every kind a real model carries (arrays of
// strings, ints and floats, bools, a chat template), written fp32.
std::string write_source(const LlamaWeights& w, const std::string& name) {
  const std::string path = temp_path(name);
  test::write_gguf(w, false, path, [](io::GgufWriter& g) {
    g.set_string_array("tokenizer.ggml.tokens", {"a", "b", "<s>"});
    g.set_i32_array("tokenizer.ggml.token_type", {1, 1, 3});
    g.set_bool("tokenizer.ggml.add_bos_token", true);
    g.set_string("tokenizer.chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}");
    g.set_f32("test.some_float", 0.1f);
  });
  return path;
}

std::vector<std::uint8_t> tensor_bytes(const io::GgufReader& r, const std::string& name) {
  const io::ByteView b = r.bytes(r.info(name));
  return {b.data, b.data + b.size};
}

// Metadata encodings, key by key, through a writer of their own (the order is checked separately).
std::vector<std::uint8_t> encoded(const io::GgufValue& v) {
  std::vector<std::uint8_t> out;
  io::append_gguf_value(out, v);
  return out;
}

void expect_written_model(const LlamaWeights& w, const ModelQuantOptions& options, io::GgmlType type,
                          const std::vector<std::vector<int>>& calib) {
  const std::string source_path = write_source(w, "source.gguf");
  const io::GgufReader source = io::GgufReader::open(source_path);
  const LlamaWeights loaded = load_gguf_model(source);
  const LlamaWeights quantized = with_quantized_linears(loaded, quantize_model(loaded, options, calib));
  const std::string out_path = temp_path("out.gguf");
  write_quantized_gguf(source, quantized, type, out_path);
  EXPECT_FALSE(file_exists(out_path + ".tmp"));
  EXPECT_FALSE(file_exists(out_path + ".part"));
  const io::GgufReader out = io::GgufReader::open(out_path);

  // Metadata: same keys in the same order, same encodings, but the file type.
  ASSERT_EQ(out.typed_metadata().keys(), source.typed_metadata().keys());
  for (const std::string& key : source.typed_metadata().keys()) {
    if (key == "general.file_type") EXPECT_EQ(out.typed_metadata().get_int(key), gguf_file_type(type));
    else EXPECT_EQ(encoded(out.typed_metadata().at(key)), encoded(source.typed_metadata().at(key))) << key;
  }
  // Tensors: same names, order and shapes; linears as the quantized blocks; the rest
  // (norm gains included, as nothing changed them here) byte for byte.
  ASSERT_EQ(out.tensors().size(), source.tensors().size());
  for (std::size_t i = 0; i < source.tensors().size(); ++i) {
    const io::GgufTensorInfo &s = source.tensors()[i], &o = out.tensors()[i];
    ASSERT_EQ(o.name, s.name);
    EXPECT_EQ(o.ne, s.ne) << s.name;
    EXPECT_EQ(o.offset % out.alignment(), 0u) << s.name;
  }
  std::set<std::string> linears;
  for (int l = 0; l < w.config.n_layers; ++l)
    for (const GgufLayerLinear& t : gguf_layer_linears()) {
      const std::string name = gguf_block_prefix(l) + t.name + ".weight";
      linears.insert(name);
      EXPECT_EQ(out.info(name).type, static_cast<std::uint32_t>(type)) << name;
      EXPECT_EQ(tensor_bytes(out, name),
                io::to_gguf_blocks(type, *(quantized.layers[static_cast<std::size_t>(l)].*t.matrix).quantized_ptr()))
          << name;
    }
  for (const auto& t : source.tensors()) {
    if (linears.count(t.name) == 0) {
      EXPECT_EQ(tensor_bytes(out, t.name), tensor_bytes(source, t.name)) << t.name;
    }
  }

  // The file is the model: its logits equal the in-memory quantized model's.
  const LlamaWeights back = load_gguf_model(out);
  const std::vector<int> tokens = {5, 17, 3, 90, 42, 42, 8};
  RuntimeOptions ro;
  ro.backend = LinearBackend::kernel_exact;
  const Transformer a = Transformer::from_weights(quantized, ro), b = Transformer::from_weights(back, ro);
  KvCache ca = a.new_cache(8), cb = b.new_cache(8);
  EXPECT_TRUE(a.forward(tokens, ca).isApprox(b.forward(tokens, cb), 0.0f));
  std::remove(source_path.c_str());
  std::remove(out_path.c_str());
}

TEST(GgufModelWriter, GptqQ4_0FileHoldsTheSourceMetadataAndTheQuantizedModel) {
  const LlamaWeights w = block_model();
  expect_written_model(w, gptq_q4_0_options(), io::GgmlType::Q4_0, test::calibration_tokens(2, 32, w.config.vocab_size));
}

TEST(GgufModelWriter, Iq4NlFileWithBiasesToo) {
  const LlamaWeights w = block_model(true, 12);
  ModelQuantOptions o;
  o.method = Method::iq4_nl_clip;
  o.group_size = 32;
  o.int_scale_format = ScaleFormat::f16;
  expect_written_model(w, o, io::GgmlType::IQ4_NL, {});
}

// AWQ folds its scales into the norm gains: those are written from the model, the rest
// stays the source's.
TEST(GgufModelWriter, AwqNormGainsAreWrittenAsTheModelHoldsThem) {
  const LlamaWeights w = block_model(false, 13);
  const std::string source_path = write_source(w, "awq_source.gguf");
  const io::GgufReader source = io::GgufReader::open(source_path);
  ModelQuantOptions o = gptq_q4_0_options();
  o.method = Method::awq;
  const LlamaWeights q = with_quantized_linears(w, quantize_model(w, o, test::calibration_tokens(2, 32, w.config.vocab_size)));
  const std::string out_path = temp_path("awq.gguf");
  write_quantized_gguf(source, q, io::GgmlType::Q4_0, out_path);
  const io::GgufReader out = io::GgufReader::open(out_path);
  for (int l = 0; l < w.config.n_layers; ++l) {
    const Eigen::VectorXf att = out.load_vector(gguf_block_prefix(l) + "attn_norm.weight");
    EXPECT_TRUE(att.isApprox(q.layers[static_cast<std::size_t>(l)].rms_att, 0.0f));
    EXPECT_FALSE(att.isApprox(w.layers[static_cast<std::size_t>(l)].rms_att, 1e-3f)) << "AWQ scaled nothing?";
  }
  std::remove(source_path.c_str());
  std::remove(out_path.c_str());
}

TEST(GgufModelWriter, MismatchesAreClearErrorsAndLeaveNoFile) {
  const LlamaWeights w = block_model();
  const std::string source_path = write_source(w, "mismatch_source.gguf");
  const io::GgufReader source = io::GgufReader::open(source_path);
  const std::string out_path = temp_path("never.gguf");
  // Linears still fp32.
  try {
    write_quantized_gguf(source, w, io::GgmlType::Q4_0, out_path);
    ADD_FAILURE() << "fp32 linears were written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected a 4-bit matrix"), std::string::npos) << e.what();
  }
  // Quantized in the wrong table for the type.
  ModelQuantOptions o;
  o.method = Method::iq4_nl_clip;
  o.group_size = 32;
  o.int_scale_format = ScaleFormat::f16;
  const LlamaWeights iq = with_quantized_linears(w, quantize_model(w, o));
  EXPECT_THROW(write_quantized_gguf(source, iq, io::GgmlType::Q4_0, out_path), Error);
  // A model with more blocks than the source file has.
  LlamaWeights deeper = iq;
  deeper.config.n_layers = 3;
  deeper.layers.push_back(deeper.layers.back());
  try {
    write_quantized_gguf(source, deeper, io::GgmlType::IQ4_NL, out_path);
    ADD_FAILURE() << "a 3-block model was written over a 2-block source";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lacks"), std::string::npos) << e.what();
  }
  EXPECT_THROW(gguf_file_type(io::GgmlType::Q4_1), Error);
  EXPECT_FALSE(file_exists(out_path));
  EXPECT_FALSE(file_exists(out_path + ".part"));
  EXPECT_FALSE(file_exists(out_path + ".tmp"));
  std::remove(source_path.c_str());
}

}  // namespace

}  // namespace quantize_gguf_model_test
