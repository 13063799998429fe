// llama2.c loader, tokenizer and forward pass on the bundled stories260K, plus
// end-to-end quantization checks (kernels vs dequantized weights, GPTQ vs RTN).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/model/generate.hpp>
#include <nibble/model/quantize_model.hpp>

namespace {

using namespace nibble;
using namespace nibble::model;

const std::string kData = std::string(NIBBLE_SOURCE_DIR) + "/examples/data/";

std::vector<std::uint8_t> file_bytes(const std::string& name) { return file_detail::read_whole_file(kData + name); }

void put_i32(std::vector<std::uint8_t>& b, std::size_t at, std::int32_t v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  for (int k = 0; k < 4; ++k) b[at + static_cast<std::size_t>(k)] = static_cast<std::uint8_t>(u >> (8 * k));
}

std::string error_of(const std::vector<std::uint8_t>& bytes) {
  try {
    parse_llama2c_checkpoint(bytes.data(), bytes.size());
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A tiny valid checkpoint built in the test: dim 4, hidden 6, 1 layer, 2 heads, 1 kv head,
// vocab 3, seq_len 2.
std::vector<std::uint8_t> tiny_checkpoint(std::int32_t vocab = 3) {
  LlamaConfig c;
  c.dim = 4, c.hidden_dim = 6, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 1, c.seq_len = 2;
  c.vocab_size = vocab > 0 ? vocab : -vocab;
  c.shared_classifier = vocab > 0;
  std::vector<std::uint8_t> b(static_cast<std::size_t>(expected_checkpoint_bytes(c)), 0);
  const std::int32_t header[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, vocab, c.seq_len};
  for (int i = 0; i < 7; ++i) put_i32(b, static_cast<std::size_t>(4 * i), header[i]);
  return b;
}

TEST(Llama2Checkpoint, BundledModelHasTheDocumentedShape) {
  const LlamaWeights w = load_llama2c_checkpoint(kData + "stories260K.bin");
  EXPECT_EQ(w.config.dim, 64);
  EXPECT_EQ(w.config.hidden_dim, 172);
  EXPECT_EQ(w.config.n_layers, 5);
  EXPECT_EQ(w.config.n_heads, 8);
  EXPECT_EQ(w.config.n_kv_heads, 4);
  EXPECT_EQ(w.config.vocab_size, 512);
  EXPECT_EQ(w.config.seq_len, 512);
  EXPECT_TRUE(w.config.shared_classifier);
  EXPECT_EQ(expected_checkpoint_bytes(w.config), 1056540u);
  // Spot values straight from the file at the README's byte offsets.
  const auto bytes = file_bytes("stories260K.bin");
  auto float_at = [&](std::size_t off) {
    float f;
    std::memcpy(&f, bytes.data() + off, 4);
    return f;
  };
  EXPECT_EQ(w.token_embedding.dense()(0, 0), float_at(28));
  EXPECT_EQ(w.layers[0].wq.dense()(0, 1), float_at(132380 + 4));
  EXPECT_EQ(w.layers[1].wk.dense()(0, 0), float_at(214300 + 4 * 32 * 64));
  EXPECT_EQ(w.layers[4].w3.dense()(171, 63), float_at(1039900 - 4));
  EXPECT_EQ(w.rms_final(0), float_at(1039900));
}

TEST(Llama2Checkpoint, TinyHandMadeFilesParse) {
  EXPECT_NO_THROW({
    const auto b = tiny_checkpoint();
    const LlamaWeights w = parse_llama2c_checkpoint(b.data(), b.size());
    EXPECT_EQ(w.layers.size(), 1u);
    EXPECT_TRUE(w.wcls.empty());
  });
  const auto b = tiny_checkpoint(-3);  // separate classifier at the end
  const LlamaWeights w = parse_llama2c_checkpoint(b.data(), b.size());
  EXPECT_FALSE(w.config.shared_classifier);
  EXPECT_EQ(w.classifier().rows(), 3);
}

TEST(Llama2Checkpoint, TruncatedOrPaddedFilesAreRejected) {
  const auto good = file_bytes("stories260K.bin");
  for (std::size_t size : {std::size_t{0}, std::size_t{3}, std::size_t{27}, std::size_t{28}, std::size_t{1000},
                           good.size() - 1}) {
    const std::vector<std::uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(size));
    const std::string e = error_of(cut);
    EXPECT_NE(e, "") << "size " << size;
  }
  auto longer = good;
  longer.push_back(0);
  EXPECT_NE(error_of(longer).find("needs 1056540 bytes, the file has 1056541"), std::string::npos)
      << error_of(longer);
}

TEST(Llama2Checkpoint, AbsurdOrInconsistentHeadersAreRejected) {
  struct Case {
    int field;
    std::int32_t value;
    const char* expect;
  };
  const Case cases[] = {
      {0, 0, "dim = 0"},          {0, -64, "dim = -64"},           {0, 1 << 30, "dim = 1073741824"},
      {1, 0, "hidden_dim = 0"},   {1, 0x7fffffff, "hidden_dim"},   {2, 0, "n_layers = 0"},
      {2, 100000, "n_layers"},    {3, 0, "n_heads = 0"},           {3, 6, "not a multiple of n_heads"},
      {4, 0, "n_kv_heads = 0"},   {4, 16, "n_kv_heads = 16"},      {4, 3, "not a multiple of n_kv_heads"},
      {5, 0, "vocab_size = 0"},   {5, INT32_MIN, "vocab_size"},    {6, 0, "seq_len = 0"},
      {6, -1, "seq_len = -1"},    {3, 64, "head_size 1 is odd"},   {5, 513, "needs"},
      {5, -512, "needs"},         {6, 511, "needs"},               {1, 173, "needs"},
  };
  const auto good = file_bytes("stories260K.bin");
  for (const Case& c : cases) {
    auto b = good;
    put_i32(b, static_cast<std::size_t>(4 * c.field), c.value);
    const std::string e = error_of(b);
    EXPECT_NE(e.find(c.expect), std::string::npos) << "field " << c.field << " = " << c.value << ": '" << e << "'";
  }
}

TEST(Llama2Checkpoint, NonFiniteWeightsAreRejected) {
  auto b = tiny_checkpoint();
  const float nan = std::nanf("");
  std::memcpy(b.data() + 28 + 4 * 5, &nan, 4);
  EXPECT_NE(error_of(b).find("token_embedding has a non-finite value"), std::string::npos) << error_of(b);
}

TEST(Llama2Checkpoint, MissingFileIsAnError) {
  EXPECT_THROW(load_llama2c_checkpoint(kData + "no-such-file.bin"), Error);
}

Tokenizer bundled_tokenizer() { return load_tokenizer(kData + "tok512.bin", 512); }

TEST(Tokenizer, BundledFileFollowsTheDocumentedLayout) {
  const Tokenizer t = bundled_tokenizer();
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.max_token_length(), 7);
  EXPECT_EQ(t.piece(0), "<unk>");
  EXPECT_EQ(t.piece(1), "\n<s>\n");
  EXPECT_EQ(t.piece(2), "\n</s>\n");
  EXPECT_EQ(t.piece(3), "<0x00>");
  EXPECT_EQ(t.piece(13), "<0x0A>");
  EXPECT_EQ(t.piece(258), "<0xFF>");
}

// llama2.c's encoder written the slow, obvious way: rebuild every pair string each round.
std::vector<int> reference_encode(const Tokenizer& t, const std::string& text) {
  std::vector<int> out{1};
  if (!text.empty()) out.push_back(t.find(" "));
  for (std::size_t i = 0; i < text.size();) {
    std::size_t n = 1;
    while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
    const int id = t.find(text.substr(i, n));
    if (id >= 0) out.push_back(id);
    else
      for (std::size_t k = 0; k < n; ++k) out.push_back(static_cast<unsigned char>(text[i + k]) + 3);
    i += n;
  }
  for (;;) {
    float best = -1e10f;
    int best_id = -1;
    std::size_t at = 0;
    for (std::size_t i = 1; i + 1 < out.size(); ++i) {
      const int id = t.find(t.piece(out[i]) + t.piece(out[i + 1]));
      if (id >= 0 && t.score(id) > best) best = t.score(id), best_id = id, at = i;
    }
    if (best_id < 0) break;
    out[at] = best_id;
    out.erase(out.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  return out;
}

TEST(Tokenizer, EncodesLikeLlama2c) {
  const Tokenizer t = bundled_tokenizer();
  EXPECT_EQ(t.encode(""), std::vector<int>{1});
  EXPECT_EQ(t.encode("", false), std::vector<int>{});
  // Known encoding (matches llama2.c run.c on tok512.bin).
  EXPECT_EQ(t.encode("Hello world\nLily"), (std::vector<int>{1, 346, 306, 414, 263, 304, 341, 13, 438, 310}));
  // A newline is the byte piece <0x0A>; unknown code points fall back to their UTF-8 bytes.
  const std::vector<int> nl = t.encode("\n", false);
  EXPECT_EQ(nl.back(), 13);
  const std::vector<int> kanji = t.encode("\xE8\xAA\x9E", false);  // U+8A9E, not a piece
  ASSERT_GE(kanji.size(), 3u);
  EXPECT_EQ(std::vector<int>(kanji.end() - 3, kanji.end()), (std::vector<int>{0xE8 + 3, 0xAA + 3, 0x9E + 3}));
  EXPECT_EQ(t.encode("\xE2\x82\xAC", false), (std::vector<int>{t.find(" "), t.find("\xE2\x82\xAC")}));  // € is a piece
  EXPECT_EQ(t.encode("x", true, true).back(), 2);
  const std::string texts[] = {"Once upon a time, there was a little girl named Lily.",
                               "Tom said, \"Look! A big, red ball!\"\nThey played all day.",
                               "caf\xC3\xA9 na\xC3\xAFve \xF0\x9F\x98\x80 zzz qqq 12345", "  double  spaces  "};
  for (const auto& s : texts) EXPECT_EQ(t.encode(s), reference_encode(t, s)) << s;
}

TEST(Tokenizer, DecodeRoundTripsText) {
  const Tokenizer t = bundled_tokenizer();
  const std::string texts[] = {"Once upon a time, there was a little girl named Lily.",
                               "Line one.\nLine two!\n\nEnd", "caf\xC3\xA9 \xF0\x9F\x98\x80 <0x41> ok"};
  for (const auto& s : texts) EXPECT_EQ(t.decode(t.encode(s)), s);
  EXPECT_EQ(t.decode_token(1, t.find(" Once")), "Once");  // leading space dropped after BOS
  EXPECT_EQ(t.decode_token(5, 13), "\n");
  EXPECT_THROW(t.decode_token(1, 512), Error);
}

TEST(Tokenizer, BadFilesAreRejected) {
  const auto good = file_bytes("tok512.bin");
  EXPECT_THROW(parse_tokenizer(good.data(), good.size(), 511), Error);  // bytes left over
  EXPECT_THROW(parse_tokenizer(good.data(), good.size(), 513), Error);  // runs out
  EXPECT_THROW(parse_tokenizer(good.data(), good.size(), 0), Error);
  EXPECT_THROW(parse_tokenizer(good.data(), good.size() - 1, 512), Error);
  auto b = good;
  put_i32(b, 4 + 4, 1 << 30);  // first piece claims a gigantic length
  EXPECT_THROW(parse_tokenizer(b.data(), b.size(), 512), Error);
  b = good;
  put_i32(b, 0, -7);  // max_token_length
  EXPECT_THROW(parse_tokenizer(b.data(), b.size(), 512), Error);
}

TEST(Stories, SplitTrimsAndDropsEmptyPieces) {
  EXPECT_EQ(split_stories(" a b\n<|endoftext|>\nc\n<|endoftext|>\n"), (std::vector<std::string>{"a b", "c"}));
  EXPECT_EQ(split_stories("<|endoftext|><|endoftext|>"), std::vector<std::string>{});
}

// Shared fixture data: the model, the first stories of the validation text, a few
// training stories for calibration.
struct Bundle {
  LlamaWeights weights = load_llama2c_checkpoint(kData + "stories260K.bin");
  Tokenizer tok = bundled_tokenizer();
  std::vector<std::vector<int>> eval, calib;

  // max_len cuts sequences shorter than the model's seq_len to keep sanitizer and
  // emulator runs quick.
  Bundle(std::size_t eval_n, std::size_t calib_n, int max_len = 512) {
    auto e = split_stories(read_text_file(kData + "tinystories_valid_first101.txt"));
    e.resize(eval_n);
    eval = tokenize_stories(tok, e, max_len);
    if (calib_n > 0) {
      auto c = split_stories(read_text_file(kData + "tinystories_train_sample_2MiB.txt"));
      c.resize(calib_n);
      calib = tokenize_stories(tok, c, max_len);
    }
  }
};

TEST(Forward, Fp32PerplexityMatchesTheReference) {
  const Bundle b(10, 0);
  const Transformer m = Transformer::from_weights(b.weights);
  const EvalResult r = evaluate(m, b.eval, 2);
  EXPECT_EQ(r.tokens, 3192u);                 // README: 3,192 tokens scored
  EXPECT_NEAR(r.perplexity(), 3.171, 0.0015);  // README: 3.171
  // The same result on one thread, bit for bit.
  const std::vector<std::vector<int>> two(b.eval.begin(), b.eval.begin() + 2);
  EXPECT_EQ(evaluate(m, two, 1).nll_sum, evaluate(m, two, 2).nll_sum);
}

TEST(Forward, ChunkedDecodingMatchesOneShot) {
  const Bundle b(1, 0);
  const Transformer m = Transformer::from_weights(b.weights);
  const std::vector<int> seq(b.eval[0].begin(), b.eval[0].begin() + 20);
  KvCache one = m.new_cache();
  const RowMatrixXf all = m.forward(seq, one);
  KvCache step = m.new_cache();
  for (std::size_t i = 0; i < seq.size(); ++i) {
    const RowMatrixXf l = m.forward({seq[i]}, step);
    EXPECT_LT((l.row(0) - all.row(static_cast<Eigen::Index>(i))).cwiseAbs().maxCoeff(), 1e-4f) << i;
  }
}

TEST(Forward, GreedyStoryIsTheDocumentedSample) {
  const Bundle b(0, 0);
  const Transformer m = Transformer::from_weights(b.weights);
  const Generation g = generate(m, b.tok, "", 30);
  // llama2.c doc/stories260K.md sample.
  EXPECT_EQ(g.text.rfind("Once upon a time, there was a little girl named Lily. She loved to play outside", 0), 0u)
      << g.text;
}

TEST(Forward, SamplingIsSeededAndBadSettingsThrow) {
  const Bundle b(0, 0);
  const Transformer m = Transformer::from_weights(b.weights);
  const Generation a = generate(m, b.tok, "Once", 20, {0.8f, 0.9f, 7});
  const Generation c = generate(m, b.tok, "Once", 20, {0.8f, 0.9f, 7});
  EXPECT_EQ(a.tokens, c.tokens);
  EXPECT_THROW(generate(m, b.tok, "", 5, {-1.0f, 0.9f, 1}), Error);
  EXPECT_THROW(generate(m, b.tok, "", 5, {1.0f, 0.0f, 1}), Error);
}

TEST(Quantized, KernelsAgreeWithDequantizedWeights) {
  const Bundle b(2, 0, 96);
  const Transformer fp = Transformer::from_weights(b.weights);
  std::vector<RowMatrixXf> ref;
  const EvalResult base = evaluate(fp, b.eval, 1, nullptr, &ref);
  for (Method method : {Method::rtn_uint4, Method::nf4_dq, Method::hqq}) {
    double ppl[3];
    int i = 0;
    for (LinearBackend backend : {LinearBackend::dequantized, LinearBackend::kernel_exact, LinearBackend::kernel_fast}) {
      ModelQuantOptions o;
      o.method = method;
      o.group_size = 32;
      o.backend = backend;
      const QuantizedModel q = quantize_model(b.weights, o);
      EXPECT_EQ(q.linear_weights, 226560u);
      const EvalResult r = evaluate(q.model, b.eval, 2, &ref);
      EXPECT_GT(r.perplexity(), base.perplexity());
      EXPECT_GT(r.mean_kl(), 0.0);
      ppl[i++] = r.perplexity();
    }
    EXPECT_NEAR(ppl[1], ppl[0], 1e-4 * ppl[0]) << method_info(method).name;  // exact: same math, other order
    EXPECT_NEAR(ppl[2], ppl[0], 5e-3 * ppl[0]) << method_info(method).name;  // int8 activations: close
  }
}

TEST(Quantized, BitsPerWeightCountEverything) {
  const Bundle b(0, 0);
  ModelQuantOptions o;
  o.method = Method::rtn_uint4;
  o.group_size = 32;
  o.int_scale_format = ScaleFormat::f32;
  const QuantizedModel q = quantize_model(b.weights, o);
  // 30 matrices with 64 inputs (2 groups/row) and 5 w2 with 172 inputs (6 groups/row):
  // codes 4 bits, a 32-bit scale and a 4-bit zero per group.
  double groups = 0;
  for (int l = 0; l < 5; ++l) groups += 2.0 * (64 + 32 + 32 + 64 + 172 + 172) + 6.0 * 64;
  const double expected = (4.0 * 226560 + 36.0 * groups) / 226560;
  EXPECT_NEAR(q.bits_per_weight(), expected, 1e-9);
}

TEST(Quantized, GptqAndAwqBeatRoundToNearest) {
  const Bundle b(2, 4, 96);
  const Transformer fp = Transformer::from_weights(b.weights);
  std::vector<RowMatrixXf> ref;
  evaluate(fp, b.eval, 2, nullptr, &ref);
  auto kl_of = [&](Method m) {
    ModelQuantOptions o;
    o.method = m;
    o.group_size = 32;
    o.threads = 2;
    return evaluate(quantize_model(b.weights, o, b.calib).model, b.eval, 2, &ref).mean_kl();
  };
  const double rtn = kl_of(Method::rtn_uint4);
  EXPECT_LT(kl_of(Method::gptq), 0.85 * rtn);
  EXPECT_LT(kl_of(Method::awq), rtn);
  // Calibration runs the quantized layers decoded to fp32; the model returned runs every
  // linear on the backend asked for, from the quantized matrices it reports.
  for (LinearBackend backend : {LinearBackend::kernel_exact, LinearBackend::kernel_fast}) {
    ModelQuantOptions ob;
    ob.method = Method::gptq;
    ob.group_size = 32;
    ob.backend = backend;
    const QuantizedModel q = quantize_model(b.weights, ob, b.calib);
    for (std::size_t l = 0; l < q.model.layers.size(); ++l)
      for (std::size_t k = 0; k < linear_slots().size(); ++k) {
        const Linear& lin = q.model.layers[l].*(linear_slots()[k].linear);
        EXPECT_EQ(lin.backend(), backend) << "layer " << l << " " << linear_slots()[k].name;
        EXPECT_TRUE(lin.runs_on_kernels());
        EXPECT_TRUE(lin.weights() == q.matrices[l * linear_slots().size() + k]->dequantize());
      }
  }
  ModelQuantOptions o;
  o.method = Method::gptq;
  EXPECT_THROW(quantize_model(b.weights, o, {}), Error);  // calibration is required
}

}  // namespace
