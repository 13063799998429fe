// Quantized Hugging Face directories (model/hf_quantized_writer.hpp) and reading them back
// (load_hf_model with a quantization_config): tiny HF directories written here
// (hf_test_dirs.hpp) are quantized, written as GPTQ (v1, v2), AutoAWQ and bitsandbytes
// (NF4, FP4, double-quantized) directories and loaded again:
//   * every linear decodes to the in-memory quantized model's values bit for bit, the
//     norms are the model's (AWQ folds into them), everything else is the source's bytes;
//   * the loaded model gives the in-memory model's logits, and its tokenizer the source's;
//   * config.json is the source's plus quantization_config, the tokenizer files are copies;
//   * bad input is a clear nibble::Error and leaves nothing under the output name.
// The same directories decoded by numpy on a real model: scripts/test-hf.sh
// (tests/interop/check_hf_quantized.py).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <tuple>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <nibble/model/hf_quantized_writer.hpp>
#include <nibble/model/load_model.hpp>
#include <nibble/model/quantize_model.hpp>
#include <nibble/model/transformer.hpp>

#include "hf_test_dirs.hpp"
#include "llm_test_models.hpp"

namespace hf_quantized_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;
using namespace nibble::model;
using namespace nibble::test;
using ordered_json = nlohmann::ordered_json;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Entries beside `path` that the writer makes while it works ("<path>.nibble-…").
std::vector<std::string> work_directories(const std::string& path) {
  const std::filesystem::path p(path);
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator(p.parent_path()))
    if (e.path().filename().string().rfind(p.filename().string() + ".nibble-", 0) == 0) found.push_back(e.path());
  return found;
}

// Rewrites a safetensors file, letting `edit` change each tensor's bytes; `extra` is added.
void rewrite_safetensors(const std::string& path,
                         const std::function<void(const io::TensorInfo&, std::vector<std::uint8_t>&)>& edit,
                         const std::string& extra_name = "") {
  std::vector<std::tuple<io::TensorInfo, std::vector<std::uint8_t>>> all;
  {
    const io::SafetensorsReader r = io::SafetensorsReader::open(path);
    for (const io::TensorInfo& t : r.tensors()) {
      const io::ByteView b = r.bytes(t);
      std::vector<std::uint8_t> bytes(b.data, b.data + b.size);
      edit(t, bytes);
      all.emplace_back(t, std::move(bytes));
    }
  }
  io::SafetensorsWriter w(path);
  for (const auto& [t, bytes] : all) w.add(t.name, t.dtype, t.shape, bytes.data(), bytes.size());
  if (!extra_name.empty()) w.add(extra_name, io::DType::U8, {1}, "x", 1);
  w.finish();
}

struct FormatCase {
  const char* label;
  HfCheckpointFormat format;
  QuantConfig storage;
};

QuantConfig int_storage(Codebook cb) {
  QuantConfig c;
  c.codebook = cb;
  c.sym_scale = SymScale::full_range;
  c.scale_format = ScaleFormat::f16;
  c.group_size = 32;
  return c;
}

std::vector<FormatCase> format_cases() {
  return {{"gptq v1", HfCheckpointFormat::gptq_v1, int_storage(Codebook::int4_sym)},
          {"gptq v2 asym", HfCheckpointFormat::gptq_v2, int_storage(Codebook::uint4_asym)},
          {"awq", HfCheckpointFormat::awq, int_storage(Codebook::uint4_asym)},
          {"bnb nf4", HfCheckpointFormat::bnb, io::bnb_quant_config(true, 32, false)},
          {"bnb fp4 dq", HfCheckpointFormat::bnb, io::bnb_quant_config(false, 32, true)}};
}

constexpr Method kPlain = Method::rtn_uint4;  // below: plain rounding to the given storage

// Every linear of w quantized to `storage`: plainly (kPlain), or by a calibrated method.
LlamaWeights quantized(const LlamaWeights& w, const QuantConfig& storage, Method method) {
  if (method == kPlain) {
    LlamaWeights q = w;
    for (auto& L : q.layers)
      for (const auto& t : hf_detail::hf_layer_linears()) L.*t.matrix = StoredMatrix(quantize((L.*t.matrix).dense(), storage));
    return q;
  }
  ModelQuantOptions o;
  o.method = method;
  o.storage = storage;
  o.group_size = storage.group_size;
  o.int_scale_format = storage.scale_format;
  o.backend = LinearBackend::dequantized;
  return with_quantized_linears(w, quantize_model(w, o, calibration_tokens(2, 24, w.config.vocab_size)));
}

RowMatrixXf logits(const LlamaWeights& w, const std::vector<int>& tokens) {
  RuntimeOptions o;
  o.backend = LinearBackend::dequantized;
  const Transformer t = Transformer::from_weights(w, o);
  KvCache cache = t.new_cache(static_cast<int>(tokens.size()));
  return t.forward(tokens, cache);
}

void expect_same_values(const RowMatrixXf& a, const RowMatrixXf& b, const std::string& what) {
  ASSERT_EQ(a.rows(), b.rows()) << what;
  ASSERT_EQ(a.cols(), b.cols()) << what;
  Eigen::Index differ = 0;
  for (Eigen::Index i = 0; i < a.size(); ++i) differ += a.data()[i] != b.data()[i];
  EXPECT_EQ(differ, 0) << what << ": " << differ << " of " << a.size() << " values differ";
}

void expect_same_vector(const Eigen::VectorXf& a, const Eigen::VectorXf& b, const std::string& what) {
  expect_same_values(RowMatrixXf(a.transpose()), RowMatrixXf(b.transpose()), what);
}

// The whole round trip for one format, model and method (see the top of this file).
void expect_round_trip(const FormatCase& fc, const ModelSpec& ms, Method method) {
  SCOPED_TRACE(fc.label);
  TempDir dir;
  const std::string src = dir / "src", out = dir / "out";
  std::filesystem::create_directory(src);
  write_model(src, ms);
  write_tokenizer(src, TokenizerSpec{});
  write_text(src + "/generation_config.json", "{\"bos_token_id\": 270}\n");
  const LoadedModel m = load_model(src);
  const LlamaWeights q = quantized(m.weights, fc.storage, method);

  write_quantized_hf(src, q, fc.format, out);
  EXPECT_TRUE(work_directories(out).empty());
  const LoadedModel back = load_model(out);
  const LlamaWeights& b = back.weights;

  // Weights: linears decode bit for bit; norms are the model's; the rest is the source's.
  ASSERT_EQ(b.layers.size(), q.layers.size());
  for (std::size_t l = 0; l < q.layers.size(); ++l) {
    for (const auto& t : hf_detail::hf_layer_linears()) {
      const StoredMatrix& loaded = b.layers[l].*t.matrix;
      ASSERT_TRUE(loaded.is_quantized()) << t.name;
      expect_same_values((q.layers[l].*t.matrix).to_float(), loaded.to_float(), std::to_string(l) + "." + t.name);
    }
    expect_same_vector(q.layers[l].rms_att, b.layers[l].rms_att, "input_layernorm");
    expect_same_vector(q.layers[l].rms_ffn, b.layers[l].rms_ffn, "post_attention_layernorm");
    if (ms.qwen2) expect_same_vector(m.weights.layers[l].bv, b.layers[l].bv, "v bias");
  }
  expect_same_vector(q.rms_final, b.rms_final, "model.norm");
  expect_same_values(m.weights.token_embedding.to_float(), b.token_embedding.to_float(), "embedding");
  if (!ms.tied) expect_same_values(m.weights.wcls.to_float(), b.wcls.to_float(), "lm_head");

  // The loaded model computes what the in-memory one does.
  const std::vector<int> tokens = {1, 17, 200, 45, 3, 99, 120, 7};
  const RowMatrixXf a = logits(q, tokens), c = logits(b, tokens);
  EXPECT_LE((a - c).cwiseAbs().maxCoeff(), 1e-5f * a.cwiseAbs().maxCoeff());
  for (const std::string text : {"hello world 1234", "<|im_start|>the nibble world<|im_end|>"})
    EXPECT_EQ(back.tokenizer.encode(text, true, true), m.tokenizer.encode(text, true, true)) << text;

  // Files: config.json is the source's, keys in order, plus quantization_config; the
  // tokenizer and generation config are copies; model.safetensors is the only weight file.
  ordered_json config = ordered_json::parse(read_file(out + "/config.json"));
  ASSERT_TRUE(config.contains("quantization_config"));
  const ordered_json qc = config["quantization_config"];
  config.erase("quantization_config");
  EXPECT_EQ(config, ordered_json::parse(read_file(src + "/config.json")));
  const bool gptq = fc.format == HfCheckpointFormat::gptq_v1 || fc.format == HfCheckpointFormat::gptq_v2;
  if (gptq) {
    EXPECT_EQ(qc["quant_method"], "gptq");
    EXPECT_EQ(qc["checkpoint_format"], fc.format == HfCheckpointFormat::gptq_v1 ? "gptq" : "gptq_v2");
    EXPECT_EQ(qc["sym"], fc.storage.codebook == Codebook::int4_sym);
    EXPECT_EQ(qc["group_size"], 32);
    EXPECT_EQ(ordered_json::parse(read_file(out + "/quantize_config.json")), qc);
  } else {
    EXPECT_FALSE(std::filesystem::exists(out + "/quantize_config.json"));
    EXPECT_EQ(qc["quant_method"], fc.format == HfCheckpointFormat::awq ? "awq" : "bitsandbytes");
  }
  if (fc.format == HfCheckpointFormat::bnb) {
    EXPECT_EQ(qc["bnb_4bit_use_double_quant"], fc.storage.scale_format == ScaleFormat::dq8);
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"})
    EXPECT_EQ(read_file(out + "/" + f), read_file(src + "/" + f)) << f;
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(out)) files.push_back(e.path().filename().string());
  EXPECT_EQ(files.size(), gptq ? 6u : 5u);
}

TEST(HfQuantized, EveryFormatRoundTripsPlainRounding) {
  for (const FormatCase& fc : format_cases()) expect_round_trip(fc, ModelSpec{}, kPlain);
}

TEST(HfQuantized, Qwen2WithBiasesAndAnUntiedHead) {
  ModelSpec ms;
  ms.qwen2 = true;
  ms.seed = 9;
  for (const FormatCase& fc : format_cases()) expect_round_trip(fc, ms, kPlain);
}

TEST(HfQuantized, CalibratedMethodsKeepTheFoldedNorms) {
  ModelSpec tied;
  tied.tied = true;
  const std::vector<FormatCase> cases = format_cases();
  expect_round_trip(cases[0], tied, Method::gptq_int4_act_clip);  // GPTQ into a GPTQ checkpoint
  expect_round_trip(cases[2], tied, Method::awq);                 // AWQ into an AWQ checkpoint
  expect_round_trip(cases[4], ModelSpec{}, Method::awq_gptq_clip_dq);
}

// An AWQ run changes the norms: the directory must hold the folded gains, not the source's.
TEST(HfQuantized, AwqNormsDifferFromTheSource) {
  TempDir dir;
  const std::string src = dir / "src";
  std::filesystem::create_directory(src);
  write_model(src, ModelSpec{});
  write_tokenizer(src, TokenizerSpec{});
  const LoadedModel m = load_model(src);
  const LlamaWeights q = quantized(m.weights, int_storage(Codebook::uint4_asym), Method::awq);
  ASSERT_NE(q.layers[0].rms_att, m.weights.layers[0].rms_att);  // else this test proves nothing
  write_quantized_hf(src, q, HfCheckpointFormat::awq, dir / "out");
  EXPECT_EQ(load_hf_model(dir / "out").layers[0].rms_att, q.layers[0].rms_att);
}

class HfQuantizedBad : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = dir_ / "src";
    out_ = dir_ / "out";
    std::filesystem::create_directory(src_);
    write_model(src_, ModelSpec{});
    write_tokenizer(src_, TokenizerSpec{});
    model_ = quantized(load_model(src_).weights, int_storage(Codebook::int4_sym), kPlain);
  }
  // The error names what is wrong, and nothing is left under the output names.
  void expect_write_error(const LlamaWeights& w, HfCheckpointFormat f, const std::string& needle,
                          const HfWriteOptions& o = {}) {
    try {
      write_quantized_hf(src_, w, f, out_, o);
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_TRUE(work_directories(out_).empty());
  }
  TempDir dir_;
  std::string src_, out_;
  LlamaWeights model_;
};

TEST_F(HfQuantizedBad, ExistingOutputIsReplacedOnlyWhenAskedAndOnlyIfAModel) {
  HfWriteOptions replace;
  replace.replace_existing = true;
  // Siblings named like work directories of an earlier run are not the writer's to delete.
  for (const char* sibling : {".tmp", ".old"}) {
    std::filesystem::create_directory(out_ + sibling);
    write_text(out_ + sibling + "/mine.txt", "mine");
  }
  std::filesystem::create_directory(out_);
  write_text(out_ + "/keep.txt", "mine");
  expect_write_error(model_, HfCheckpointFormat::gptq_v1, "exists");
  expect_write_error(model_, HfCheckpointFormat::gptq_v1, "not a model directory", replace);
  EXPECT_EQ(read_file(out_ + "/keep.txt"), "mine");
  write_text(out_ + "/config.json", "{}");  // now it is a model directory: replaced whole
  write_quantized_hf(src_, model_, HfCheckpointFormat::gptq_v1, out_, replace);
  EXPECT_FALSE(std::filesystem::exists(out_ + "/keep.txt"));
  EXPECT_NO_THROW(load_hf_model(out_));
  write_quantized_hf(src_, model_, HfCheckpointFormat::gptq_v2, out_ + "/", replace);  // the same directory
  EXPECT_EQ(ordered_json::parse(read_file(out_ + "/config.json"))["quantization_config"]["checkpoint_format"], "gptq_v2");
  EXPECT_TRUE(work_directories(out_).empty());
  for (const char* sibling : {".tmp", ".old"}) EXPECT_EQ(read_file(out_ + sibling + "/mine.txt"), "mine");

  // A write that fails half-way (the temporary directory exists by then) leaves the old
  // directory where it was and removes its own.
  LlamaWeights other = model_;
  other.layers[1].w2 = StoredMatrix(quantize(RowMatrixXf::Constant(64, 64, 0.5f), int_storage(Codebook::int4_sym)));
  expect_write_error(other, HfCheckpointFormat::gptq_v1, "in the model but not in the source", replace);
  EXPECT_EQ(ordered_json::parse(read_file(out_ + "/config.json"))["quantization_config"]["checkpoint_format"], "gptq_v2");

  // The output may not be the source or hold it.
  const std::string out = out_;
  out_ = src_;
  expect_write_error(model_, HfCheckpointFormat::gptq_v1, "or inside it", replace);
  out_ = dir_.path();
  expect_write_error(model_, HfCheckpointFormat::gptq_v1, "or inside it", replace);
  EXPECT_NO_THROW(load_hf_model(src_));

  // An already-quantized source: its packed tensors cannot be carried over.
  out_ = dir_ / "again";
  const std::string quantized_src = out;
  try {
    write_quantized_hf(quantized_src, model_, HfCheckpointFormat::gptq_v1, out_);
    ADD_FAILURE() << "no error for a quantized source";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already a quantized checkpoint"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(out_));
}

TEST_F(HfQuantizedBad, StorageTheFormatCannotHold) {
  expect_write_error(model_, HfCheckpointFormat::awq, "uint4_asym");  // AWQ has zero points
  expect_write_error(model_, HfCheckpointFormat::bnb, "nf4 or fp4");
  LlamaWeights mixed = model_;
  QuantConfig g64 = int_storage(Codebook::int4_sym);
  g64.group_size = 64;
  mixed.layers[1].w2 = StoredMatrix(quantize(load_model(src_).weights.layers[1].w2.dense(), g64));
  expect_write_error(mixed, HfCheckpointFormat::gptq_v1, "one quantization_config");
  LlamaWeights dense = model_;
  dense.layers[0].wq = load_model(src_).weights.layers[0].wq;
  expect_write_error(dense, HfCheckpointFormat::gptq_v1, "expected a 4-bit matrix");
}

TEST_F(HfQuantizedBad, ModelOfAnotherShape) {
  LlamaWeights other = model_;
  other.layers.push_back(other.layers.back());  // a layer the source does not have
  expect_write_error(other, HfCheckpointFormat::gptq_v1, "model.layers.2");
  EXPECT_FALSE(std::filesystem::exists(out_));
}

// Reading: configs and tensors that do not describe a 4-bit checkpoint nibble can run.
TEST_F(HfQuantizedBad, LoaderRejectsWhatItCannotRun) {
  write_quantized_hf(src_, model_, HfCheckpointFormat::gptq_v1, out_);
  const ordered_json good = ordered_json::parse(read_file(out_ + "/config.json"));
  auto expect_load_error = [&](const ordered_json& config, const std::string& needle) {
    write_text(out_ + "/config.json", config.dump(2));
    try {
      load_hf_model(out_);
      ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  ordered_json c = good;
  c["quantization_config"]["quant_method"] = "fp8";
  expect_load_error(c, "quant_method 'fp8' is not supported");
  c = good;
  c["quantization_config"]["bits"] = 8;
  expect_load_error(c, "bits must be 4");
  c = good;
  c["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_8bit", true}};
  expect_load_error(c, "load_in_4bit");
  c = good;
  c["quantization_config"] = {{"quant_method", "awq"}, {"version", "gemv"}};
  expect_load_error(c, "'gemv' is not supported");
  c = good;
  c.erase("quantization_config");  // packed tensors without a quantization_config
  expect_load_error(c, "self_attn.q_proj.weight");
  c = good;
  c["quantization_config"]["checkpoint_format"] = "gptq_v2";  // v1 zero points read as v2: still loads,
  write_text(out_ + "/config.json", c.dump(2));                // but decodes to other weights
  EXPECT_NE(load_hf_model(out_).layers[0].wq.to_float(), model_.layers[0].wq.to_float());
  c = good;
  c["quantization_config"] = {{"quant_method", "awq"}};  // GPTQ tensors read as AWQ
  expect_load_error(c, "layer 'model.layers.0.self_attn.q_proj'");
}

TEST_F(HfQuantizedBad, LoaderRejectsNonFiniteScalesAndStrayParts) {
  write_quantized_hf(src_, model_, HfCheckpointFormat::gptq_v1, out_);
  rewrite_safetensors(out_ + "/model.safetensors", [](const io::TensorInfo& t, std::vector<std::uint8_t>& b) {
    if (t.name == "model.layers.1.mlp.up_proj.scales") b[2] = 0x00, b[3] = 0x7C;  // fp16 +inf
  });
  EXPECT_THROW(
      {
        try {
          load_hf_model(out_);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("layer 'model.layers.1.mlp.up_proj': scale 2 is not finite"), std::string::npos)
              << e.what();
          throw;
        }
      },
      Error);
  const std::string nf4 = dir_ / "nf4";
  write_quantized_hf(src_, quantized(load_model(src_).weights, io::bnb_quant_config(true, 32), kPlain),
                     HfCheckpointFormat::bnb, nf4);
  EXPECT_NO_THROW(load_hf_model(nf4));
  rewrite_safetensors(nf4 + "/model.safetensors", [](const io::TensorInfo&, std::vector<std::uint8_t>&) {},
                      "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__fp4");
  EXPECT_THROW(load_hf_model(nf4), Error);  // a second quant state nothing reads
}

}  // namespace

}  // namespace hf_quantized_test
