// nibble-quant's model mode from the outside, on a tiny generated GGUF model with a BPE
// vocabulary (fuzz/corpus/model/tiny.gguf): RTN output equal to the library's llama.cpp
// rounding, GPTQ from calibration text, and bad input (a clear message, the input never
// modified, no output left behind); and on a tiny generated Hugging Face directory
// written as GPTQ / AWQ / bitsandbytes directories. llama.cpp loading real outputs is
// checked by scripts/test-real-model.sh, numpy decoding real HF outputs by scripts/test-hf.sh.
#include <cstdio>
#include <fstream>
#include <map>
#include <vector>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include <nibble/io/gguf.hpp>
#include <nibble/model/gguf_model.hpp>
#include <nibble/model/hf_model.hpp>
#include <nibble/quant/weighted_fit.hpp>

#include "cli_util.hpp"
#include "hf_test_dirs.hpp"

namespace nibble_quant_model_cli_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

namespace {

using namespace nibble;
using nibble::test::cli_dir;

const std::string kTiny = std::string(NIBBLE_SOURCE_DIR) + "/fuzz/corpus/model/tiny.gguf";

int quant(const std::string& args, std::string* log = nullptr) {
  return nibble::test::run_program(NIBBLE_QUANT_PATH, args, log);
}

std::string file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool exists(const std::string& path) { return std::ifstream(path).good(); }

// "Hello " again and again: words the tiny vocabulary tokenizes.
std::string calibration_text(int words) {
  const std::string path = cli_dir() + "model_calib_" + std::to_string(words) + ".txt";
  std::ofstream out(path, std::ios::binary);
  for (int i = 0; i < words; ++i) out << "Hello ";
  return path;
}

TEST(NibbleQuantModel, RtnWritesLlamaCppsQ4_0AndKeepsEverythingElse) {
  const std::string before = file_text(kTiny);
  const std::string out = cli_dir() + "tiny_rtn.gguf";
  std::remove(out.c_str());
  std::string log;
  ASSERT_EQ(quant(kTiny + " " + out, &log), 0) << log;
  EXPECT_EQ(file_text(kTiny), before) << "the input was modified";
  const io::GgufReader src = io::GgufReader::open(kTiny), got = io::GgufReader::open(out);
  EXPECT_EQ(got.typed_metadata().keys(), src.typed_metadata().keys());
  EXPECT_EQ(got.typed_metadata().get_int("general.file_type"), 2);
  EXPECT_EQ(got.typed_metadata().string_array("tokenizer.ggml.merges"),
            src.typed_metadata().string_array("tokenizer.ggml.merges"));
  ASSERT_EQ(got.tensors().size(), src.tensors().size());
  for (const auto& t : src.tensors()) {
    const io::ByteView a = src.bytes(t), b = got.bytes(got.info(t.name));
    const bool linear = t.name.find("attn_") != std::string::npos || t.name.find("ffn_") != std::string::npos;
    const bool norm = t.name.find("_norm") != std::string::npos;
    if (linear && !norm) {
      // The source's matrix decoded to fp32, rounded as llama-quantize does.
      EXPECT_EQ(got.info(t.name).type, static_cast<std::uint32_t>(io::GgmlType::Q4_0)) << t.name;
      const auto want = io::to_q4_0_blocks(io::quantize_q4_0(src.load_float(t.name)));
      EXPECT_EQ(std::vector<std::uint8_t>(b.data, b.data + b.size), want) << t.name;
    } else {
      EXPECT_EQ(std::string(a.data, a.data + a.size), std::string(b.data, b.data + b.size)) << t.name;
    }
  }
  // It loads as a model, and nibble-quant refuses to overwrite it without --force.
  EXPECT_NO_THROW(model::load_gguf_model(out));
  const std::string written = file_text(out);
  EXPECT_EQ(quant(kTiny + " " + out + " --format gguf-iq4_nl", &log), 1);
  EXPECT_NE(log.find("--force"), std::string::npos) << log;
  EXPECT_EQ(file_text(out), written);
  ASSERT_EQ(quant(kTiny + " " + out + " --format gguf-iq4_nl --force", &log), 0) << log;
  EXPECT_EQ(io::GgufReader::open(out).typed_metadata().get_int("general.file_type"), 25);
  std::remove(out.c_str());
}

// An importance matrix in llama-imatrix's GGUF form for some of the linears: the output
// is the weighted fit with those importances, the plain fit elsewhere.
TEST(NibbleQuantModel, ImatrixWeightsTheFit) {
  const io::GgufReader src = io::GgufReader::open(kTiny);
  const std::string imatrix = cli_dir() + "tiny.imatrix.gguf";
  const std::vector<std::string> weighted = {"blk.0.attn_q.weight", "blk.0.ffn_down.weight"};
  std::map<std::string, std::vector<float>> importance;
  {
    io::GgufWriter w(imatrix);
    w.set_string("general.type", "imatrix");
    w.set_u32("imatrix.chunk_count", 4);
    for (std::size_t i = 0; i < weighted.size(); ++i) {
      const std::size_t cols = src.info(weighted[i]).ne[0];
      std::vector<float> sums(cols), mean(cols);
      for (std::size_t j = 0; j < cols; ++j) {
        mean[j] = static_cast<float>(1 + (j * 7 + i * 3) % 11) * (j % 5 == 0 ? 40.0f : 1.0f);  // a few loud columns
        sums[j] = mean[j] * 4.0f;  // 4 calls: the reader divides the sums by the count
      }
      const float count = 4.0f;
      w.add_tensor(weighted[i] + ".in_sum2", static_cast<std::uint32_t>(io::GgmlType::F32), {cols, 1}, sums.data(),
                   cols * 4);
      w.add_tensor(weighted[i] + ".counts", static_cast<std::uint32_t>(io::GgmlType::F32), {1, 1}, &count, 4);
      importance[weighted[i]] = mean;
    }
    w.finish();
  }
  for (const char* format : {"gguf-q4_0", "gguf-iq4_nl"}) {
    const bool q4_0 = std::string(format) == "gguf-q4_0";
    const std::string out = cli_dir() + "tiny_imatrix.gguf";
    std::string log;
    ASSERT_EQ(quant(kTiny + " " + out + " --force --format " + format + " --imatrix " + imatrix, &log), 0) << log;
    EXPECT_NE(log.find("2 matrices weighted, 5 without an entry"), std::string::npos) << log;
    const io::GgufReader got = io::GgufReader::open(out);
    std::size_t differs_from_plain = 0;
    for (const auto& t : src.tensors()) {
      if (t.name.find("_norm") != std::string::npos || t.name.find("blk.") != 0) continue;
      const auto it = importance.find(t.name);
      const std::vector<float> none;
      const QuantizedMatrix want = quantize_weighted(src.load_float(t.name), q4_0 ? Codebook::int4_sym : Codebook::iq4_nl,
                                                     it == importance.end() ? none : it->second);
      const io::GgmlType type = q4_0 ? io::GgmlType::Q4_0 : io::GgmlType::IQ4_NL;
      const io::ByteView b = got.bytes(got.info(t.name));
      EXPECT_EQ(std::vector<std::uint8_t>(b.data, b.data + b.size), io::to_gguf_blocks(type, want)) << t.name;
      if (it != importance.end())
        differs_from_plain += io::to_gguf_blocks(type, quantize_weighted(src.load_float(t.name),
                                                                          q4_0 ? Codebook::int4_sym : Codebook::iq4_nl,
                                                                          none)) != io::to_gguf_blocks(type, want);
    }
    EXPECT_GT(differs_from_plain, 0u) << "the importances changed nothing";
    std::remove(out.c_str());
  }
  std::string log;
  // --method clip: the same fit with equal weights.
  const std::string clip = cli_dir() + "tiny_clip.gguf";
  ASSERT_EQ(quant(kTiny + " " + clip + " --force --method clip", &log), 0) << log;
  const io::GgufReader clipped = io::GgufReader::open(clip);
  for (const auto& t : src.tensors()) {
    if (t.name.find("_norm") != std::string::npos || t.name.find("blk.") != 0) continue;
    const io::ByteView b = clipped.bytes(clipped.info(t.name));
    EXPECT_EQ(std::vector<std::uint8_t>(b.data, b.data + b.size),
              io::to_q4_0_blocks(quantize_weighted(src.load_float(t.name), Codebook::int4_sym, {})))
        << t.name;
  }
  std::remove(clip.c_str());
  EXPECT_EQ(quant(kTiny + " " + cli_dir() + "never.gguf --method gptq --calib x.txt --imatrix " + imatrix, &log), 2);
  EXPECT_EQ(quant(kTiny + " " + cli_dir() + "never.gguf --imatrix " + kTiny, &log), 1);  // a model, not an imatrix
  EXPECT_NE(log.find("imatrix"), std::string::npos) << log;
  std::remove(imatrix.c_str());
}

TEST(NibbleQuantModel, GptqAndAwqFromCalibrationText) {
  const std::string calib = calibration_text(200);
  for (const char* method : {"gptq", "awq", "awq+gptq"}) {
    const std::string out = cli_dir() + "tiny_" + std::string(method) + ".gguf";
    std::remove(out.c_str());
    std::string log;
    ASSERT_EQ(quant(kTiny + " " + out + " --method " + method + " --calib " + calib +
                        " --calib-seq 16 --calib-tokens 64 --threads 2",
                    &log),
              0)
        << log;
    EXPECT_NE(log.find("4 sequences of 16 tokens"), std::string::npos) << log;
    EXPECT_NE(log.find("block 1/1"), std::string::npos) << log;
    const model::LlamaWeights w = model::load_gguf_model(out);
    EXPECT_TRUE(w.layers[0].wq.is_quantized());
    EXPECT_TRUE(w.layers[0].w2.is_quantized());
    std::remove(out.c_str());
  }
  std::remove(calib.c_str());
}

TEST(NibbleQuantModel, BadInputIsAClearErrorAndWritesNothing) {
  const std::string out = cli_dir() + "tiny_bad.gguf";
  std::remove(out.c_str());
  const std::string before = file_text(kTiny);
  std::string log;
  // Usage errors: exit code 2.
  EXPECT_EQ(quant(kTiny + " " + out + " --method gptq", &log), 2);
  EXPECT_NE(log.find("--calib"), std::string::npos) << log;
  EXPECT_EQ(quant(kTiny + " " + out + " --format gptq-v1", &log), 2);
  EXPECT_EQ(quant(kTiny + " " + out + " --format gptq", &log), 1);  // HF output needs HF input
  EXPECT_NE(log.find("needs one as MODEL"), std::string::npos) << log;
  EXPECT_EQ(quant(kTiny + " " + out + " --method magic", &log), 2);
  EXPECT_EQ(quant(kTiny + " " + out + " --calib-seq 4", &log), 2);
  // Calibration text shorter than one sequence.
  const std::string short_text = calibration_text(3);
  EXPECT_EQ(quant(kTiny + " " + out + " --method gptq --calib " + short_text, &log), 1);
  EXPECT_NE(log.find("fewer than one sequence"), std::string::npos) << log;
  // Missing calibration file, output over the input.
  EXPECT_EQ(quant(kTiny + " " + out + " --method gptq --calib " + cli_dir() + "no_such.txt", &log), 1);
  EXPECT_NE(log.find("no_such.txt"), std::string::npos) << log;
  EXPECT_EQ(quant(kTiny + " " + kTiny + " --force", &log), 1);
  EXPECT_NE(log.find("is the input file"), std::string::npos) << log;
  // An architecture nibble does not run: the tiny model relabelled.
  const std::string falcon = cli_dir() + "tiny_falcon.gguf";
  {
    const io::GgufReader src = io::GgufReader::open(kTiny);
    io::GgufWriter w(falcon, src.alignment());
    for (const std::string& key : src.typed_metadata().keys())
      if (key == "general.architecture") w.set_string(key, "falcon");
      else w.set_value(key, src.typed_metadata().at(key));
    for (const auto& t : src.tensors()) {
      const io::ByteView b = src.bytes(t);
      w.add_tensor(t.name, t.type, t.ne, b.data, b.size);
    }
    w.finish();
  }
  EXPECT_EQ(quant(falcon + " " + out, &log), 1);
  EXPECT_NE(log.find("falcon"), std::string::npos) << log;
  EXPECT_EQ(file_text(kTiny), before) << "the input was modified";
  EXPECT_FALSE(exists(out));
  EXPECT_FALSE(exists(out + ".part"));
  EXPECT_FALSE(exists(out + ".tmp"));
  std::remove(falcon.c_str());
  std::remove(short_text.c_str());
}

// A Hugging Face directory in, quantized Hugging Face directories out (the round trip
// itself is tests/hf_quantized_test.cpp; here the command line around it).
TEST(NibbleQuantModel, HfDirectoryToGptqAwqAndBitsandbytesDirectories) {
  test::TempDir dir;
  const std::string src = dir / "src";
  std::filesystem::create_directory(src);
  test::write_model(src, test::ModelSpec{});
  test::write_tokenizer(src, test::TokenizerSpec{});
  const std::string calib = calibration_text(200);
  const std::string common = " --calib " + calib + " --calib-seq 16 --calib-tokens 64 --threads 2";
  struct Run {
    const char* args;
    const char* quant_method;
  };
  for (const Run& r : {Run{"--format gptq", "gptq"}, Run{"--format gptq-v2 --method gptq", "gptq"},
                       Run{"--format awq --method awq --group 32", "awq"},
                       Run{"--format bnb-nf4 --group 32", "bitsandbytes"},
                       Run{"--format bnb-fp4 --method awq+gptq --double-quant --group 32", "bitsandbytes"}}) {
    SCOPED_TRACE(r.args);
    const std::string out = dir / "out";
    const bool calibrated = std::string(r.args).find("--method") != std::string::npos;
    std::string log;
    ASSERT_EQ(quant(src + " " + out + " " + r.args + " --force" + (calibrated ? common : ""), &log), 0) << log;
    const nlohmann::json config = nlohmann::json::parse(file_text(out + "/config.json"));
    EXPECT_EQ(config["quantization_config"]["quant_method"], r.quant_method);
    const model::LlamaWeights w = model::load_hf_model(out);
    EXPECT_TRUE(w.layers[0].wq.is_quantized());
    EXPECT_EQ(w.layers[1].w2.quantized_ptr()->group_size(), 32u);  // gptq's default: 128 and 64 do not divide 96
    EXPECT_EQ(file_text(out + "/tokenizer.json"), file_text(src + "/tokenizer.json"));
  }
  std::string log;
  const std::string out = dir / "out2";
  EXPECT_EQ(quant(src + " " + out + " --format gguf-q4_0 --group 64", &log), 2);
  EXPECT_EQ(quant(src + " " + out + " --format gptq --double-quant", &log), 2);
  EXPECT_EQ(quant(src + " " + out + " --format gptq --method clip", &log), 2);
  EXPECT_EQ(quant(src + " " + out + " --format awq --group 64", &log), 1);
  EXPECT_NE(log.find("must divide every linear's in_features"), std::string::npos) << log;
  EXPECT_EQ(quant(src + " " + out + " --format bnb-nf4", &log), 1);  // blocksize 64 does not divide 96
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_EQ(quant(src + " " + (dir / "out") + " --format gptq", &log), 1);  // exists, no --force
  EXPECT_NE(log.find("--force"), std::string::npos) << log;
  std::remove(calib.c_str());
}

}  // namespace

}  // namespace nibble_quant_model_cli_test
