// nibble-llm from the outside: its commands on stories260K (llama2.c) and on a generated
// GGUF model with a byte-level BPE vocabulary, the JSON it prints, and bad input (exit
// code 2 for usage errors, 1 with nibble's message for bad files; never a crash).
#include <cstdio>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_util.hpp"

namespace nibble_llm_cli_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

namespace {

using nibble::test::cli_dir;

const std::string kData = std::string(NIBBLE_SOURCE_DIR) + "/examples/data/";
const std::string kStories = kData + "stories260K.bin --tokenizer " + kData + "tok512.bin";
const std::string kTinyGguf = std::string(NIBBLE_SOURCE_DIR) + "/fuzz/corpus/model/tiny.gguf";

int llm(const std::string& args, std::string* log = nullptr) {
  return nibble::test::run_program(NIBBLE_LLM_PATH, args, log);
}

// The last line of a log that parses as JSON.
nlohmann::json json_of(const std::string& log) {
  const std::size_t at = log.rfind('\n', log.size() >= 2 ? log.size() - 2 : 0);
  return nlohmann::json::parse(at == std::string::npos ? log : log.substr(at + 1));
}

TEST(NibbleLlm, RunsAStoriesModel) {
  std::string log;
  ASSERT_EQ(llm("run -m " + kStories + " -p \"Once upon a time\" -n 16 --json", &log), 0) << log;
  const auto j = json_of(log);
  EXPECT_EQ(j["generated"], 16);
  EXPECT_GT(j["decode_tokens_per_second"].get<double>(), 0.0);
  EXPECT_GT(j["text"].get<std::string>().size(), 10u);
  // Greedy decoding is deterministic; the 4-bit model (re-rounded) writes text too.
  std::string again;
  ASSERT_EQ(llm("run -m " + kStories + " -p \"Once upon a time\" -n 16 --json -t 2", &again), 0) << again;
  EXPECT_EQ(json_of(again)["text"], j["text"]);
  ASSERT_EQ(llm("run -m " + kStories + " --requant int4_sym:g32 -p \"Once upon a time\" -n 8 --json", &log), 0) << log;
  EXPECT_EQ(json_of(log)["generated"], 8);
}

TEST(NibbleLlm, PerplexityKlAndSavedLogits) {
  std::string log;
  // The first 8 KB of the validation stories (llama2.c's tokenizer is slow on a whole
  // file, and the sanitizer preset runs this too).
  const std::string text = cli_dir() + "valid8k.txt";
  {
    std::ifstream in(kData + "tinystories_valid_first101.txt", std::ios::binary);
    std::string head(8192, '\0');
    in.read(&head[0], static_cast<std::streamsize>(head.size()));
    std::ofstream(text, std::ios::binary) << head;
  }
  ASSERT_EQ(llm("perplexity -m " + kStories + " -f " + text + " -c 128 --chunks 3 --kl-fp32 --requant uint4_asym:g32 --json", &log), 0) << log;
  const auto j = json_of(log);
  EXPECT_EQ(j["chunks"], 3);
  EXPECT_EQ(j["scored"], 3 * 63);
  EXPECT_GT(j["perplexity"].get<double>(), 1.0);
  EXPECT_GT(j["mean_kl"].get<double>(), 0.0);  // 4-bit against its own fp32 model
  EXPECT_LT(j["mean_kl"].get<double>(), 0.5);
  // Saved logits read back as the KL base: a model against itself gives ~0.
  const std::string kld = cli_dir() + "stories.kld";
  ASSERT_EQ(llm("perplexity -m " + kStories + " -f " + text + " -c 128 --chunks 2 --save-logits " + kld, &log), 0) << log;
  ASSERT_EQ(llm("perplexity -m " + kStories + " -f " + text + " --kl-llama " + kld + " --json", &log), 0) << log;
  EXPECT_LT(json_of(log)["llama_mean_kl"].get<double>(), 1e-3);
  EXPECT_EQ(json_of(log)["chunks"], 2);
  std::remove(kld.c_str());
  std::remove(text.c_str());
}

TEST(NibbleLlm, BenchAndTokenizeOnAGgufModel) {
  std::string log;
  ASSERT_EQ(llm("bench -m " + kTinyGguf + " -p 8 -n 4 -r 1 -t 1,2 --json", &log), 0) << log;
  const auto j = json_of(log);
  ASSERT_EQ(j.size(), 4u);  // pp and tg at 1 and 2 threads
  for (const auto& row : j) EXPECT_GT(row["tokens_per_second"].get<double>(), 0.0);
  ASSERT_EQ(llm("tokenize -m " + kTinyGguf + " -p Hello", &log), 0) << log;
  EXPECT_EQ(log, "5 6 4\n");  // "He" "ll" "o" by the seed vocabulary's two merges
}

TEST(NibbleLlm, BadInputIsAClearErrorNeverACrash) {
  std::string log;
  EXPECT_EQ(llm("", &log), 2);
  EXPECT_EQ(llm("fly -m x", &log), 2);
  EXPECT_NE(log.find("unknown command 'fly'"), std::string::npos) << log;
  EXPECT_EQ(llm("run -p hi", &log), 2);
  EXPECT_NE(log.find("-m MODEL is required"), std::string::npos) << log;
  EXPECT_EQ(llm("run -m " + kTinyGguf + " -n minus", &log), 2);
  EXPECT_EQ(llm("bench -m " + kTinyGguf + " -t 0", &log), 2);
  EXPECT_EQ(llm("run -m " + kTinyGguf + " --requant int9:g32 -p hi", &log), 2);
  EXPECT_EQ(llm("perplexity -m " + kTinyGguf, &log), 2);  // no -f
  EXPECT_EQ(llm("run -m " + cli_dir() + "missing.gguf -p hi", &log), 1);
  EXPECT_NE(log.find("nibble-llm:"), std::string::npos) << log;
  const std::string junk = cli_dir() + "junk.gguf";
  std::ofstream(junk) << "GGUF but not really";
  EXPECT_EQ(llm("run -m " + junk + " -p hi", &log), 1);
  EXPECT_NE(log.find("GGUF"), std::string::npos) << log;
  std::remove(junk.c_str());
  // A llama2.c checkpoint without its tokenizer, and a chat prompt for a model without
  // a chat template.
  EXPECT_EQ(llm("run -m " + kData + "stories260K.bin -p hi", &log), 1);
  EXPECT_NE(log.find("--tokenizer"), std::string::npos) << log;
  EXPECT_EQ(llm("run -m " + kTinyGguf + " --chat -p hi", &log), 1);
  EXPECT_NE(log.find("chat template"), std::string::npos) << log;
  // Too short a text for one chunk.
  const std::string tiny_text = cli_dir() + "short.txt";
  std::ofstream(tiny_text) << "Hello";
  EXPECT_EQ(llm("perplexity -m " + kTinyGguf + " -f " + tiny_text + " -c 8", &log), 1);
  EXPECT_NE(log.find("fewer than one chunk"), std::string::npos) << log;
  std::remove(tiny_text.c_str());
}

}  // namespace

}  // namespace nibble_llm_cli_test
