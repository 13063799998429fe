// nibble-quant end to end: a small checkpoint is quantized to every format, the outputs
// are read back with nibble's readers and compared with the library called directly,
// and bad invocations fail with a message instead of writing garbage.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include <nibble/io/io.hpp>
#include <nibble/quant/awq.hpp>
#include <nibble/quant/gptq.hpp>
#include <nibble/quant/hessian.hpp>
#include <nibble/quant/rtn.hpp>

#include "cli_util.hpp"
#include "test_util.hpp"

namespace nibble_quant_cli_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

namespace {

const std::string kDir = test::cli_dir();
const std::string kInput = kDir + "in.safetensors";
const std::string kCalib = kDir + "calib.safetensors";

RowMatrixXf weight(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  return test::gaussian_matrix(rows, cols, seed, 0.02f);
}

int run(const std::string& args, std::string* log = nullptr) { return test::run_cli(args, log); }

// What the library's GPTQ makes of up_proj (32 x 128) with its calibration tensor
// "in_features.128", group 32, f16 scales: the reference for the CLI's gptq output.
GptqResult library_gptq_up_proj(Codebook codebook, bool act_order = false, bool permuted_groups = false) {
  HessianAccumulator acc(128);
  acc.add(test::gaussian_matrix(96, 128, 10 + 128));
  GptqConfig g;
  g.quant.group_size = 32;
  g.quant.codebook = codebook;
  g.quant.scale_format = ScaleFormat::f16;
  g.act_order = act_order;
  g.permuted_groups = permuted_groups;
  return gptq_quantize(weight(32, 128, 2), acc.hessian(), g);
}

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    io::SafetensorsWriter w(kInput);
    const RowMatrixXf a = weight(16, 64, 1), b = weight(32, 128, 2), e = weight(20, 64, 3), odd = weight(8, 40, 4);
    w.add_floats("model.embed_tokens.weight", {20, 64}, e.data(), 20 * 64);
    w.add_floats("model.layers.0.attn.q_proj.weight", {16, 64}, a.data(), 16 * 64);
    w.add_floats("model.layers.0.mlp.up_proj.weight", {32, 128}, b.data(), 32 * 128);
    w.add_floats("model.layers.0.odd.weight", {8, 40}, odd.data(), 8 * 40);
    const float norm[4] = {1, 1, 1, 1};
    w.add_floats("model.norm.weight", {4}, norm, 4);
    w.finish();
    io::SafetensorsWriter c(kCalib);
    for (int in : {40, 64, 128}) {
      const RowMatrixXf X = test::gaussian_matrix(96, in, 10 + in);
      c.add_floats("in_features." + std::to_string(in), {96, static_cast<std::uint64_t>(in)}, X.data(), X.size());
    }
    c.finish();
  }
  static void TearDownTestSuite() {
    std::remove(kInput.c_str());
    std::remove(kCalib.c_str());
  }
};

}  // namespace

TEST_F(CliTest, NibbleOutputEqualsTheLibrary) {
  const std::string out = kDir + "cli.nibble";
  std::string log;
  ASSERT_EQ(run(kInput + " " + out + " --group 32 --threads 2", &log), 0) << log;
  const auto r = io::NibbleFileReader::open(out);
  QuantConfig c;
  c.group_size = 32;
  c.scale_format = ScaleFormat::f16;
  const QuantizedMatrix expected = quantize(weight(32, 128, 2), c);
  const QuantizedMatrix got = r.load("model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(got.codes(), expected.codes());
  EXPECT_EQ(got.scales().raw16(), expected.scales().raw16());
  // Embedding and norm are copied unchanged; a 40-wide row still quantizes (group 32, ragged).
  EXPECT_EQ(r.info("model.embed_tokens.weight").kind, io::TensorKind::raw);
  EXPECT_EQ(r.load_raw("model.norm.weight"), (std::vector<float>{1, 1, 1, 1}));
  EXPECT_EQ(r.info("model.layers.0.odd.weight").kind, io::TensorKind::quantized);
  EXPECT_NE(log.find("SQNR"), std::string::npos);
  EXPECT_NE(log.find("3 tensors quantized, 2 kept"), std::string::npos) << log;
  std::remove(out.c_str());
}

TEST_F(CliTest, GgufQ4_0IsTheReferenceQuantizationAndOddShapesStayFloat) {
  const std::string out = kDir + "cli.gguf";
  std::string log;
  ASSERT_EQ(run(kInput + " " + out, &log), 0) << log;
  const auto r = io::GgufReader::open(out);
  const QuantizedMatrix got = r.load_q4_0("model.layers.0.attn.q_proj.weight");
  EXPECT_EQ(io::to_q4_0_blocks(got), io::to_q4_0_blocks(io::quantize_q4_0(weight(16, 64, 1))));
  EXPECT_EQ(r.info("model.layers.0.odd.weight").type, 0u);  // 40 columns: kept as F32, and said so
  EXPECT_NE(log.find("divisible by 32"), std::string::npos) << log;
  EXPECT_EQ(r.metadata().at("general.file_type"), "2");
  std::remove(out.c_str());
}

TEST_F(CliTest, GgufIq4NlWithLlamaCppFitOrGptq) {
  const std::string out = kDir + "cli_iq4.gguf";
  std::string log;
  ASSERT_EQ(run(kInput + " " + out + " --format gguf-iq4_nl", &log), 0) << log;
  {
    const auto r = io::GgufReader::open(out);
    EXPECT_EQ(r.metadata().at("general.file_type"), "25");
    const QuantizedMatrix got = r.load_quantized("model.layers.0.attn.q_proj.weight");
    EXPECT_EQ(got.codebook(), Codebook::iq4_nl);
    EXPECT_EQ(io::to_gguf_blocks(io::GgmlType::IQ4_NL, got),
              io::to_gguf_blocks(io::GgmlType::IQ4_NL, io::quantize_iq4_nl(weight(16, 64, 1))));
  }
  // GPTQ on the IQ4_NL grid: the file holds exactly what the library computes.
  ASSERT_EQ(run(kInput + " " + out + " --format gguf-iq4_nl --method gptq --calib " + kCalib, &log), 0) << log;
  const QuantizedMatrix expected = library_gptq_up_proj(Codebook::iq4_nl).matrix;
  const QuantizedMatrix got = io::GgufReader::open(out).load_quantized("model.layers.0.mlp.up_proj.weight");
  EXPECT_EQ(got.codes(), expected.codes());
  EXPECT_EQ(got.scales().raw16(), expected.scales().raw16());
  EXPECT_EQ(run(kInput + " " + out + " --format gguf-iq4_nl --asym", &log), 2);
  EXPECT_EQ(run(kInput + " " + out + " --format gguf-iq4_nl --method nf4", &log), 2);
  std::remove(out.c_str());
}

TEST_F(CliTest, CheckpointFormatsReadBack) {
  std::string log;
  const std::string gptq = kDir + "cli_gptq.safetensors", awq = kDir + "cli_awq.safetensors",
                    bnb = kDir + "cli_bnb.safetensors";
  ASSERT_EQ(run(kInput + " " + gptq + " --format gptq --group 32", &log), 0) << log;
  ASSERT_EQ(run(kInput + " " + awq + " --format awq --group 32", &log), 0) << log;
  ASSERT_EQ(run(kInput + " " + bnb + " --format bnb-nf4 --double-quant", &log), 0) << log;
  QuantConfig c;
  c.codebook = Codebook::uint4_asym;
  c.group_size = 32;
  c.scale_format = ScaleFormat::f16;
  const Eigen::MatrixXf expected = quantize(weight(32, 128, 2), c).dequantize();
  const auto rg = io::SafetensorsReader::open(gptq);
  EXPECT_TRUE(io::read_gptq(rg, "model.layers.0.mlp.up_proj", io::GptqFormat::v2).dequantize().isApprox(expected, 0.0f));
  EXPECT_NE(rg.metadata().at("quantization_config").find("gptq_v2"), std::string::npos);
  const auto ra = io::SafetensorsReader::open(awq);
  EXPECT_TRUE(io::read_awq(ra, "model.layers.0.mlp.up_proj").dequantize().isApprox(expected, 0.0f));
  const auto rb = io::SafetensorsReader::open(bnb);
  EXPECT_EQ(io::read_bnb(rb, "model.layers.0.mlp.up_proj.weight").scales().format(), ScaleFormat::dq8);
  EXPECT_TRUE(rb.contains("model.embed_tokens.weight"));  // copied unchanged
  for (const auto& p : {gptq, awq, bnb}) {
    std::remove(p.c_str());
    std::remove((p + ".quantization_config.json").c_str());
  }
}

TEST_F(CliTest, BitsandbytesFormatsWriteBitsandbytesBytesByDefault) {
  std::string log;
  const std::string exact = kDir + "cli_bnb_exact.safetensors", restored = kDir + "cli_bnb_restored.safetensors",
                    fp4 = kDir + "cli_bnb_fp4.safetensors";
  ASSERT_EQ(run(kInput + " " + exact + " --format bnb-nf4 --double-quant --group 32", &log), 0) << log;
  ASSERT_EQ(run(kInput + " " + restored + " --format bnb-nf4 --double-quant --group 32 --code-fit restored", &log), 0)
      << log;
  ASSERT_EQ(run(kInput + " " + fp4 + " --format bnb-fp4", &log), 0) << log;
  const std::string name = "model.layers.0.mlp.up_proj.weight";
  const Eigen::MatrixXf W = weight(32, 128, 2);
  const QuantizedMatrix want = quantize(W, io::bnb_quant_config(true, 32, true));
  QuantConfig rc = io::bnb_quant_config(true, 32, true);
  rc.code_fit = CodeFit::restored;
  const auto re = io::SafetensorsReader::open(exact), rr = io::SafetensorsReader::open(restored),
             rf = io::SafetensorsReader::open(fp4);
  EXPECT_EQ(io::read_bnb(re, name).codes(), want.codes());
  EXPECT_EQ(io::read_bnb(re, name).scales().dq_codes(), want.scales().dq_codes());
  EXPECT_EQ(io::read_bnb(rr, name).codes(), quantize(W, rc).codes());
  EXPECT_NE(io::read_bnb(rr, name).codes(), want.codes());
  EXPECT_EQ(io::read_bnb(rf, name).codebook(), Codebook::fp4);
  EXPECT_EQ(io::read_bnb(rf, name).codes(), quantize(W, io::bnb_quant_config(false, 64)).codes());
  EXPECT_EQ(run(kInput + " " + fp4 + " --format bnb-fp4 --method nf4", &log), 2);
  EXPECT_EQ(run(kInput + " " + fp4 + " --format bnb-nf4 --code-fit nearest", &log), 2);
  EXPECT_EQ(run(kInput + " " + fp4 + " --format bnb-nf4 --group 48", &log), 2) << log;  // bitsandbytes' blocksizes
  EXPECT_NE(log.find("blocksizes are 32"), std::string::npos) << log;
  EXPECT_EQ(run(kInput + " " + fp4 + " --method rtn --code-fit bitsandbytes --format nibble", &log), 2);
  for (const auto& p : {exact, restored, fp4}) {
    std::remove(p.c_str());
    std::remove((p + ".quantization_config.json").c_str());
  }
}

TEST_F(CliTest, BadInvocationsFailClearly) {
  std::string log;
  EXPECT_EQ(run("--help", &log), 0);
  EXPECT_NE(log.find("usage: nibble-quant"), std::string::npos);
  EXPECT_EQ(run(kInput + " " + kDir + "x.nibble --method gptq", &log), 2);
  EXPECT_NE(log.find("--calib"), std::string::npos) << log;
  EXPECT_EQ(run(kInput + " " + kDir + "x.safetensors", &log), 2);
  EXPECT_NE(log.find("--format"), std::string::npos) << log;
  EXPECT_EQ(run(kInput + " " + kDir + "x.gguf --method nf4", &log), 2);
  EXPECT_EQ(run(kInput + " " + kDir + "x.nibble --group 7", &log), 2);
  const std::string junk = kDir + "junk.safetensors";
  std::ofstream(junk) << "not a safetensors file";
  EXPECT_EQ(run(junk + " " + kDir + "x.nibble", &log), 1);
  EXPECT_NE(log.find("error"), std::string::npos) << log;
  EXPECT_EQ(run(kDir + "missing.safetensors " + kDir + "x.nibble", &log), 1);
  EXPECT_NE(log.find("cannot open"), std::string::npos) << log;
  std::remove(junk.c_str());
}

TEST_F(CliTest, CalibratedMethodsMatchTheLibrary) {
  std::string log;
  const std::string out = kDir + "cli_gptq.nibble";
  ASSERT_EQ(run(kInput + " " + out + " --method gptq --group 32 --threads 2 --calib " + kCalib, &log), 0) << log;
  const QuantizedMatrix expected = library_gptq_up_proj(Codebook::int4_sym).matrix;
  EXPECT_EQ(io::NibbleFileReader::open(out).load("model.layers.0.mlp.up_proj.weight").codes(), expected.codes());

  // --act-order into a GPTQ checkpoint: groups follow the processing order (desc_act).
  const std::string act = kDir + "cli_act.safetensors";
  ASSERT_EQ(run(kInput + " " + act + " --format gptq --method gptq --act-order --group 32 --calib " + kCalib, &log), 0)
      << log;
  const GptqResult act_expected = library_gptq_up_proj(Codebook::uint4_asym, true, true);
  const auto ra = io::SafetensorsReader::open(act);
  const io::GptqLayer layer = io::read_gptq_layer(ra, "model.layers.0.mlp.up_proj", io::GptqFormat::v2);
  EXPECT_FALSE(layer.input_order.empty());
  EXPECT_TRUE(gptq_dequantize(layer.matrix, layer.input_order).isApprox(gptq_dequantize(act_expected), 0.0f));
  EXPECT_NE(ra.metadata().at("quantization_config").find("\"desc_act\": true"), std::string::npos);
  std::remove(act.c_str());
  std::remove((act + ".quantization_config.json").c_str());
  EXPECT_EQ(run(kInput + " " + act + " --act-order", &log), 2);  // only with --method gptq

  ASSERT_EQ(run(kInput + " " + out + " --method awq --group 32 --calib " + kCalib, &log), 0) << log;
  const auto r = io::NibbleFileReader::open(out);
  const RowMatrixXf W = weight(32, 128, 2), X = test::gaussian_matrix(96, 128, 10 + 128);
  AwqConfig a;
  a.quant.group_size = 32;
  a.quant.codebook = Codebook::int4_sym;
  a.quant.scale_format = ScaleFormat::f16;
  const AwqResult res = awq_quantize({W}, X, a);
  const std::vector<float> s = r.load_raw("model.layers.0.mlp.up_proj.weight.awq_scale");
  ASSERT_EQ(s.size(), 128u);
  for (int i = 0; i < 128; ++i) EXPECT_EQ(s[i], res.scales[i]);
  EXPECT_EQ(r.load("model.layers.0.mlp.up_proj.weight").codes(), res.matrices[0].codes());
  // Outside llama-style layers a format without a place for s gets the clip search only.
  const std::string gguf = kDir + "awq.gguf";
  ASSERT_EQ(run(kInput + " " + gguf + " --method awq --calib " + kCalib, &log), 0) << log;
  EXPECT_NE(log.find("no foldable producer, clip search only"), std::string::npos) << log;
  AwqConfig clip_only = a;
  clip_only.quant.sym_scale = SymScale::full_range;  // Q4_0's scale rule
  clip_only.grid = 1;
  EXPECT_EQ(io::GgufReader::open(gguf).load_q4_0("model.layers.0.mlp.up_proj.weight").codes(),
            awq_quantize({W}, X, clip_only).matrices[0].codes());
  std::remove(gguf.c_str());
  std::remove(out.c_str());
}

}  // namespace nibble_quant_cli_test
