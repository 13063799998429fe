// Byte-level BPE tokenizer (model/bpe_tokenizer.hpp, bpe_tokenizer_json.hpp).
//
// The hand-made vocabulary gives every byte b the id b (its text is GPT-2's
// bytes_to_unicode image of b, e.g. ' ' is "Ġ", id 32), so the expected ids of ASCII
// text are its byte values until a merge applies; merges get ids from 256 on.
// Expected word splits are derived by hand from the regexes' semantics (comments say
// how); the ids of the real-model cases are llama.cpp 0c1e570's llama-tokenize output on
// SmolLM2-135M-Instruct.Q4_1.gguf (printed with -f FILE --ids --no-escape), the same
// comparison tests/llama_cpp/check_tokenizer.sh runs over thousands of strings.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <nibble/model/bpe_tokenizer.hpp>
#include <nibble/model/bpe_tokenizer_json.hpp>

namespace bpe_tokenizer_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

namespace {

using nibble::model::BpeFlags;
using nibble::model::BpeSpecialIds;
using nibble::model::BpeTokenizer;
using nibble::model::PreTokenizer;
using nibble::model::TokenType;
using Ids = std::vector<int>;
using Words = std::vector<std::string>;

std::string byte_text(unsigned char b) { return nibble::model::bpe_detail::byte_map().byte_to_text[b]; }

// 256 byte tokens, then merge results, then specials.
struct Toy {
  std::vector<std::string> tokens;
  std::vector<TokenType> types;
  std::vector<std::pair<std::string, std::string>> merges;
  Toy() {
    for (int b = 0; b < 256; ++b) tokens.push_back(byte_text(static_cast<unsigned char>(b)));
    types.assign(256, TokenType::normal);
  }
  int merge(const std::string& a, const std::string& b) {
    merges.emplace_back(a, b);
    tokens.push_back(a + b);
    types.push_back(TokenType::normal);
    return static_cast<int>(tokens.size()) - 1;
  }
  int add(const std::string& text, TokenType t) {
    tokens.push_back(text);
    types.push_back(t);
    return static_cast<int>(tokens.size()) - 1;
  }
  BpeTokenizer make(PreTokenizer pre = PreTokenizer::gpt2, BpeSpecialIds ids = {}, BpeFlags flags = {}) const {
    return BpeTokenizer(tokens, types, merges, pre, ids, flags);
  }
};

TEST(BpeTokenizer, ByteMapIsGpt2s) {
  EXPECT_EQ(byte_text('a'), "a");
  EXPECT_EQ(byte_text(' '), "\xC4\xA0");   // U+0120 'Ġ'
  EXPECT_EQ(byte_text('\n'), "\xC4\x8A");  // U+010A 'Ċ'
  EXPECT_EQ(byte_text(0), "\xC4\x80");     // U+0100
  EXPECT_EQ(byte_text(0xAD), "\xC5\x83");  // soft hyphen is not printable: U+0143
  EXPECT_EQ(byte_text(0xFF), "\xC3\xBF");  // 'ÿ' stands for itself
}

TEST(BpeTokenizer, MergesByRankLeftmostFirst) {
  Toy t;
  const int he = t.merge("h", "e");          // rank 0
  const int ll = t.merge("l", "l");          // rank 1
  const int hell = t.merge("he", "ll");      // rank 2
  const int hello = t.merge("hell", "o");    // rank 3
  const int sw = t.merge(byte_text(' '), "w");  // rank 4: "Ġw"
  const int orr = t.merge("o", "r");         // rank 5
  const int swor = t.merge("Ġw", "or");      // rank 6
  (void)he;
  const BpeTokenizer tok = t.make();
  EXPECT_EQ(tok.encode("hello"), (Ids{hello}));
  // " world": Ġw (4), or (5), Ġw+or (6); "l" and "d" stay bytes.
  EXPECT_EQ(tok.encode(" world"), (Ids{swor, 'l', 'd'}));
  EXPECT_EQ(tok.encode("hello world"), (Ids{hello, swor, 'l', 'd'}));
  // "lll": the two "l l" pairs tie on rank; the left one merges first.
  EXPECT_EQ(tok.encode("lll"), (Ids{ll, 'l'}));
  EXPECT_EQ(tok.encode("llll"), (Ids{ll, ll}));
  (void)hell;
  (void)sw;
  (void)orr;
  EXPECT_EQ(tok.decode(tok.encode("hello world")), "hello world");
  EXPECT_TRUE(tok.encode("").empty());
}

TEST(BpeTokenizer, RankOrderDecides) {
  Toy a;
  const int bc = a.merge("b", "c");
  a.merge("a", "b");
  EXPECT_EQ(a.make().encode("abc"), (Ids{'a', bc}));  // "b c" has the better rank
  Toy b;
  const int ab = b.merge("a", "b");
  b.merge("b", "c");
  EXPECT_EQ(b.make().encode("abc"), (Ids{ab, 'c'}));
}

TEST(BpeTokenizer, MergeResultThatIsNotATokenFallsBackToBytes) {
  // "x y" merges to "xy", which is not in the vocabulary: the symbol falls back to its
  // bytes (llama.cpp looks each byte of the symbol's text up as a one-byte token).
  Toy t;
  t.merges.emplace_back("x", "y");
  EXPECT_EQ(t.make().encode("xy"), (Ids{'x', 'y'}));
}

TEST(BpeTokenizer, InvalidUtf8BecomesReplacementCharacter) {
  const BpeTokenizer tok = Toy().make();
  // U+FFFD is EF BF BD; one per byte that starts no well-formed sequence.
  EXPECT_EQ(tok.encode("\xff"), (Ids{0xEF, 0xBF, 0xBD}));
  EXPECT_EQ(tok.encode("\xe6\x97"), (Ids{0xEF, 0xBF, 0xBD, 0xEF, 0xBF, 0xBD}));  // truncated 3-byte sequence
  // Overlong C0 80 decodes (loosely, as llama.cpp does) to U+0000, re-encoded as one 0 byte.
  EXPECT_EQ(tok.encode("\xc0\x80"), (Ids{0}));
  // Beyond U+10FFFF: llama.cpp throws std::invalid_argument; nibble throws Error.
  EXPECT_THROW(tok.encode("\xf4\x90\x80\x80"), nibble::Error);
  EXPECT_EQ(tok.pre_tokenize("a\xff" "b"), (Words{"a", "\xEF\xBF\xBD", "b"}));
}

TEST(BpeTokenizer, SpecialTokensArePartitionedFirst) {
  Toy t;
  const int im = t.add("<|im|>", TokenType::control);
  const int im_long = t.add("<|im|>x", TokenType::control);  // longer: tried first
  const int at = t.add("@@", TokenType::user_defined);
  const BpeTokenizer tok = t.make();
  EXPECT_EQ(tok.encode("a<|im|>b", false, true), (Ids{'a', im, 'b'}));
  EXPECT_EQ(tok.encode("<|im|>x<|im|>", false, true), (Ids{im_long, im}));
  // Without parse_special a control token is plain text: "<|" "im" "|>" words, no merges.
  EXPECT_EQ(tok.encode("<|im|>", false, false), (Ids{'<', '|', 'i', 'm', '|', '>'}));
  // User-defined tokens are always cut out.
  EXPECT_EQ(tok.encode("a@@b", false, false), (Ids{'a', at, 'b'}));
  // Decode: control tokens only with unparse_special, user-defined always.
  EXPECT_EQ(tok.decode({'a', im, at}), "a@@");
  EXPECT_EQ(tok.decode({'a', im, at}, false, true), "a<|im|>@@");
}

TEST(BpeTokenizer, LstripRstripOfSpecialTokens) {
  Toy t;
  const int m = t.add("<m>", TokenType::control);
  BpeTokenizer tok = t.make();
  tok.set_strip(m, true, true);
  EXPECT_EQ(tok.encode("a \t<m>\n b", false, true), (Ids{'a', m, 'b'}));
}

TEST(BpeTokenizer, AddSpecialAndDecodeOptions) {
  Toy t;
  const int bos = t.add("<s>", TokenType::control);
  const int eos = t.add("</s>", TokenType::control);
  BpeFlags f;
  f.add_bos = true;
  f.add_eos = true;
  const BpeTokenizer tok = t.make(PreTokenizer::gpt2, BpeSpecialIds{bos, eos, -1, -1}, f);
  EXPECT_EQ(tok.encode("a", true), (Ids{bos, 'a', eos}));
  EXPECT_EQ(tok.encode("", true), (Ids{bos, eos}));
  EXPECT_EQ(tok.decode({bos, 'a', eos}, true, true), "a");
  EXPECT_EQ(tok.decode({bos, 'a', eos}, false, true), "<s>a</s>");
  // clean_spaces (on for gpt2): " ." and " 's" lose the space, " 't" keeps it.
  EXPECT_EQ(tok.decode(tok.encode("a . b 's c 't")), "a. b's c 't");
  // " ' " loses both spaces; the blanked space keeps the next quote from matching too.
  EXPECT_EQ(tok.decode(tok.encode("a ' b")), "a'b");
  EXPECT_EQ(tok.decode(tok.encode("a ' ' b")), "a'' b");
  const BpeTokenizer smol = t.make(PreTokenizer::smollm, BpeSpecialIds{bos, eos, -1, -1},
                                   BpeTokenizer::default_flags(PreTokenizer::smollm));
  EXPECT_EQ(smol.decode(smol.encode("a . b 's")), "a . b 's");
}

TEST(BpeTokenizer, Gpt2PreTokenizerSplits) {
  const BpeTokenizer tok = Toy().make(PreTokenizer::gpt2);
  // ' ?\p{L}+' etc. take one optional leading space; a whitespace run before a word
  // leaves its last character to the word ('\s+(?!\S)'), a run at the end stays whole.
  EXPECT_EQ(tok.pre_tokenize("a  b\t\t\nc   "), (Words{"a", " ", " b", "\t\t", "\n", "c", "   "}));
  EXPECT_EQ(tok.pre_tokenize("Hello world!"), (Words{"Hello", " world", "!"}));
  EXPECT_EQ(tok.pre_tokenize(" 1234 3.14"), (Words{" 1234", " 3", ".", "14"}));
  // Contractions are lower-case only: "'M" is punctuation + letter.
  EXPECT_EQ(tok.pre_tokenize("don't I'M we'll"), (Words{"don", "'t", " I", "'", "M", " we", "'ll"}));
  EXPECT_EQ(tok.pre_tokenize("\r\n"), (Words{"\r\n"}));
  // "\r\n" before a word: the run gives up its last character, which is whitespace, not a
  // letter, so it becomes a word of its own.
  EXPECT_EQ(tok.pre_tokenize("a\r\nb"), (Words{"a", "\r", "\n", "b"}));
  // Letters include every L category; combining marks (M) are "other".
  EXPECT_EQ(tok.pre_tokenize("naïve café Ђ 日本語"), (Words{"naïve", " café", " Ђ", " 日本語"}));
  EXPECT_EQ(tok.pre_tokenize("e\xcc\x81x"), (Words{"e", "\xcc\x81", "x"}));
  EXPECT_EQ(tok.pre_tokenize("👍🏽🇩🇪 ok"), (Words{"👍🏽🇩🇪", " ok"}));
  // U+001C is not White_Space (Python's str.isspace says it is); U+00A0 and U+3000 are.
  EXPECT_EQ(tok.pre_tokenize("a\x1c" "b"), (Words{"a", "\x1c", "b"}));
  // The optional prefix of ' ?\p{L}+' is an ASCII space only: a no-break space stays alone.
  EXPECT_EQ(tok.pre_tokenize("a\xc2\xa0\xc2\xa0" "b"), (Words{"a", "\xc2\xa0", "\xc2\xa0", "b"}));
  EXPECT_TRUE(tok.pre_tokenize("").empty());
}

TEST(BpeTokenizer, SmollmIsolatesDigits) {
  const BpeTokenizer tok = Toy().make(PreTokenizer::smollm);
  // Every \p{N} is its own piece first; the GPT-2 regex then runs inside each piece, so the
  // space before a digit becomes a word of its own.
  EXPECT_EQ(tok.pre_tokenize("I have 1234 apples."), (Words{"I", " have", " ", "1", "2", "3", "4", " apples", "."}));
  EXPECT_EQ(tok.pre_tokenize("3.14"), (Words{"3", ".", "1", "4"}));
  EXPECT_EQ(tok.pre_tokenize("x²½"), (Words{"x", "²", "½"}));        // No category digits too
  EXPECT_EQ(tok.pre_tokenize("a  1"), (Words{"a", "  ", "1"}));      // the run ends its piece: kept whole
}

TEST(BpeTokenizer, Llama3AndQwen2Splits) {
  const BpeTokenizer l3 = Toy().make(PreTokenizer::llama3);
  EXPECT_EQ(l3.pre_tokenize("1234567"), (Words{"123", "456", "7"}));
  EXPECT_EQ(l3.pre_tokenize("I'M fine\n\n ok"), (Words{"I", "'M", " fine", "\n\n", " ok"}));
  EXPECT_EQ(l3.pre_tokenize("(hello)"), (Words{"(hello", ")"}));  // [^\r\n\p{L}\p{N}]?\p{L}+
  EXPECT_EQ(l3.pre_tokenize("!!\n\nx"), (Words{"!!\n\n", "x"}));
  const BpeTokenizer q2 = Toy().make(PreTokenizer::qwen2);
  EXPECT_EQ(q2.pre_tokenize("1234"), (Words{"1", "2", "3", "4"}));
  EXPECT_EQ(q2.pre_tokenize("a \n b"), (Words{"a", " \n", " b"}));
}

TEST(BpeTokenizer, DefaultPreTokenizer) {
  const BpeTokenizer tok = Toy().make(PreTokenizer::default_);
  // [\p{P}$+<=>^~|]+ first, then GPT-2 inside each piece, then \p{N}+, then digit triples.
  EXPECT_EQ(tok.pre_tokenize("a+=b 12345"), (Words{"a", "+=", "b", " ", "123", "45"}));
}

TEST(BpeTokenizer, PreTokenizerNames) {
  using nibble::model::pre_tokenizer_from_name;
  EXPECT_EQ(pre_tokenizer_from_name("smollm"), PreTokenizer::smollm);
  EXPECT_EQ(pre_tokenizer_from_name("gpt-2"), PreTokenizer::gpt2);
  EXPECT_EQ(pre_tokenizer_from_name("llama-bpe"), PreTokenizer::llama3);
  EXPECT_EQ(pre_tokenizer_from_name("qwen2"), PreTokenizer::qwen2);
  EXPECT_EQ(pre_tokenizer_from_name("default"), PreTokenizer::default_);
  EXPECT_THROW(pre_tokenizer_from_name("no-such-pre"), nibble::Error);
}

TEST(BpeTokenizer, BadConstructionIsAnError) {
  Toy t;
  EXPECT_THROW(BpeTokenizer({}, {}, {}, PreTokenizer::gpt2), nibble::Error);
  EXPECT_THROW(BpeTokenizer(t.tokens, {TokenType::normal}, {}, PreTokenizer::gpt2), nibble::Error);
  EXPECT_THROW(BpeTokenizer(t.tokens, {}, {{"a", "no-such-token"}}, PreTokenizer::gpt2), nibble::Error);
  EXPECT_THROW(BpeTokenizer(t.tokens, {}, {}, PreTokenizer::gpt2, BpeSpecialIds{999, -1, -1, -1}), nibble::Error);
  std::vector<TokenType> bad(t.tokens.size(), TokenType::normal);
  bad[3] = static_cast<TokenType>(42);
  EXPECT_THROW(BpeTokenizer(t.tokens, bad, {}, PreTokenizer::gpt2), nibble::Error);
  BpeFlags f;
  f.add_bos = true;
  EXPECT_THROW(BpeTokenizer(t.tokens, {}, {}, PreTokenizer::gpt2, {}, f), nibble::Error);  // no BOS id
  const BpeTokenizer tok = t.make();
  EXPECT_THROW(tok.decode({256}), nibble::Error);
  EXPECT_THROW(tok.decode({-1}), nibble::Error);
  EXPECT_THROW(tok.token_to_piece(1 << 20), nibble::Error);
}

// ---- GGUF ------------------------------------------------------------------------------

std::string temp_path(const char* name) { return ::testing::TempDir() + name; }

void write_toy_gguf(const std::string& path, const Toy& t, const std::string& pre,
                    const std::vector<std::string>* merges_override = nullptr) {
  nibble::io::GgufWriter w(path);
  w.set_string("general.architecture", "llama");
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", pre);
  w.set_string_array("tokenizer.ggml.tokens", t.tokens);
  std::vector<std::int32_t> types;
  for (auto ty : t.types) types.push_back(static_cast<std::int32_t>(ty));
  w.set_i32_array("tokenizer.ggml.token_type", types);
  std::vector<std::string> merges;
  for (const auto& [a, b] : t.merges) merges.push_back(a + " " + b);
  w.set_string_array("tokenizer.ggml.merges", merges_override ? *merges_override : merges);
  w.set_u32("tokenizer.ggml.bos_token_id", 1);
  w.set_bool("tokenizer.ggml.add_bos_token", false);
  w.finish();
}

TEST(BpeTokenizerGguf, LoadsTokenizerMetadata) {
  Toy t;
  const int ll = t.merge("l", "l");
  const int ctl = t.add("<|c|>", TokenType::control);
  const std::string path = temp_path("bpe_toy.gguf");
  write_toy_gguf(path, t, "smollm");
  const auto reader = nibble::io::GgufReader::open(path);
  EXPECT_EQ(reader.metadata().at("tokenizer.ggml.tokens"), "[array of 258]");  // the text view is unchanged
  EXPECT_EQ(reader.typed_metadata().string_array("tokenizer.ggml.tokens").size(), 258u);
  EXPECT_EQ(reader.typed_metadata().int_array("tokenizer.ggml.token_type")[257], 3);
  EXPECT_THROW(reader.typed_metadata().int_array("tokenizer.ggml.tokens"), nibble::Error);  // wrong type
  EXPECT_THROW(reader.typed_metadata().string_array("no.such.key"), nibble::Error);
  const BpeTokenizer tok = BpeTokenizer::from_gguf(reader);
  EXPECT_EQ(tok.pre_tokenizer(), PreTokenizer::smollm);
  EXPECT_EQ(tok.special_ids().bos, 1);
  EXPECT_FALSE(tok.flags().clean_spaces);
  EXPECT_EQ(tok.encode("all 12<|c|>", false, true), (Ids{'a', ll, ' ', '1', '2', ctl}));
  std::remove(path.c_str());
}

TEST(BpeTokenizerGguf, BadMetadataIsAnError) {
  Toy t;
  t.merge("l", "l");
  const std::string path = temp_path("bpe_bad.gguf");
  write_toy_gguf(path, t, "no-such-pre");
  EXPECT_THROW(BpeTokenizer::from_gguf(nibble::io::GgufReader::open(path)), nibble::Error);
  const std::vector<std::string> no_space{"ll"};
  write_toy_gguf(path, t, "gpt2", &no_space);
  EXPECT_THROW(BpeTokenizer::from_gguf(nibble::io::GgufReader::open(path)), nibble::Error);
  const std::vector<std::string> unknown{"l zzz"};
  write_toy_gguf(path, t, "gpt2", &unknown);
  EXPECT_THROW(BpeTokenizer::from_gguf(nibble::io::GgufReader::open(path)), nibble::Error);
  {
    nibble::io::GgufWriter w(path);
    w.set_string("tokenizer.ggml.model", "gpt2");  // no tokens
    w.finish();
  }
  EXPECT_THROW(BpeTokenizer::from_gguf(nibble::io::GgufReader::open(path)), nibble::Error);
  {
    nibble::io::GgufWriter w(path);
    w.set_string("tokenizer.ggml.model", "llama");  // SentencePiece: not this class
    w.set_string_array("tokenizer.ggml.tokens", t.tokens);
    w.finish();
  }
  EXPECT_THROW(BpeTokenizer::from_gguf(nibble::io::GgufReader::open(path)), nibble::Error);
  std::remove(path.c_str());
}

// ---- tokenizer.json ------------------------------------------------------------------------

nlohmann::json toy_json(const Toy& t, const nlohmann::json& pre) {
  nlohmann::json vocab = nlohmann::json::object();
  for (std::size_t i = 0; i < t.tokens.size(); ++i)
    if (t.types[i] == TokenType::normal) vocab[t.tokens[i]] = i;
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& [a, b] : t.merges) merges.push_back(a + " " + b);
  nlohmann::json added = nlohmann::json::array();
  for (std::size_t i = 0; i < t.tokens.size(); ++i)
    if (t.types[i] != TokenType::normal)
      added.push_back({{"id", i}, {"content", t.tokens[i]}, {"special", t.types[i] == TokenType::control}});
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
}

const nlohmann::json kSmollmPre = {
    {"type", "Sequence"},
    {"pretokenizers",
     {{{"type", "Digits"}, {"individual_digits", true}},
      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}}}};

TEST(BpeTokenizerJson, LoadsVocabMergesAndAddedTokens) {
  Toy t;
  const int ll = t.merge("l", "l");
  const int im = t.add("<|im_start|>", TokenType::control);
  const int ud = t.add("@@", TokenType::user_defined);
  const nlohmann::json j = toy_json(t, kSmollmPre);
  const std::string config = R"({"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_start|>"},
                                 "add_bos_token": true})";
  const BpeTokenizer tok = nibble::model::parse_hf_bpe_tokenizer(j.dump(), config);
  EXPECT_EQ(tok.pre_tokenizer(), PreTokenizer::smollm);
  EXPECT_EQ(tok.vocab_size(), 259);
  EXPECT_EQ(tok.special_ids().bos, im);
  EXPECT_TRUE(tok.flags().add_bos);
  EXPECT_EQ(tok.encode("all 1@@", true, true), (Ids{im, 'a', ll, ' ', '1', ud}));
  // The [a, b] merge form gives the same tokenizer.
  nlohmann::json j2 = j;
  j2["model"]["merges"] = nlohmann::json::array({nlohmann::json::array({"l", "l"})});
  EXPECT_EQ(nibble::model::parse_hf_bpe_tokenizer(j2.dump()).encode("all"), (Ids{'a', ll}));
  // Plain ByteLevel is gpt2.
  nlohmann::json j3 = j;
  j3["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}};
  EXPECT_EQ(nibble::model::parse_hf_bpe_tokenizer(j3.dump()).pre_tokenizer(), PreTokenizer::gpt2);
}

TEST(BpeTokenizerJson, MalformedFilesAreErrors) {
  Toy t;
  t.merge("l", "l");
  const nlohmann::json good = toy_json(t, kSmollmPre);
  const auto fails = [](const std::string& text, const std::string& config = "") {
    try {
      nibble::model::parse_hf_bpe_tokenizer(text, config);
    } catch (const nibble::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(fails("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(fails(std::string(100000, '[')).find("nests deeper"), std::string::npos);
  EXPECT_NE(fails("[]").find("no \"model\""), std::string::npos);
  auto edit = [&](auto f) {
    nlohmann::json j = good;
    f(j);
    return fails(j.dump());
  };
  EXPECT_NE(edit([](auto& j) { j["model"]["type"] = "WordPiece"; }).find("expected 'BPE'"), std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["model"]["vocab"] = nlohmann::json::array(); }).find("not an object"),
            std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["model"]["vocab"]["zz"] = 1000; }).find("no token has id"), std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["model"]["vocab"]["zz"] = -5; }).find("has id -5"), std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["model"]["vocab"]["zz"] = "x"; }).find("non-integer"), std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["model"]["vocab"]["zz"] = 3; }).find("ids repeat"), std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["model"]["merges"].push_back("l nope"); }).find("not in the vocabulary"),
            std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["model"]["merges"].push_back("ll"); }).find("separated by a space"),
            std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["model"]["merges"].push_back(42); }).find("neither"), std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["pre_tokenizer"] = {{"type", "Metaspace"}}; }).find("unsupported pre_tokenizer"),
            std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["pre_tokenizer"] = nullptr; }).find("no pre_tokenizer"), std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}}; })
                .find("add_prefix_space"),
            std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["decoder"] = {{"type", "WordPiece"}}; }).find("unsupported decoder"),
            std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["normalizer"] = {{"type", "Lowercase"}}; }).find("unsupported normalizer"),
            std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["added_tokens"].push_back({{"id", 5}}); }).find("lacks"), std::string::npos);
  EXPECT_NE(edit([](auto& j) { j["model"]["end_of_word_suffix"] = "</w>"; }).find("not supported"),
            std::string::npos);
  EXPECT_NE(fails(good.dump(), R"({"bos_token": "<nope>"})").find("not a token"), std::string::npos);
  EXPECT_NE(fails(good.dump(), R"({"bos_token": 5})").find("neither a string"), std::string::npos);
  EXPECT_NE(fails(good.dump(), "[1,").find("tokenizer_config.json is not valid JSON"), std::string::npos);
  EXPECT_THROW(nibble::model::load_hf_bpe_tokenizer("/no/such/tokenizer.json"), nibble::Error);
}

// ---- the real model ---------------------------------------------------------------------

const char* kSmolLM2 = NIBBLE_SOURCE_DIR "/build/models/SmolLM2-135M-Instruct.Q4_1.gguf";

struct Real {
  static const BpeTokenizer* get() {
    static const BpeTokenizer* tok = [] () -> const BpeTokenizer* {
      std::ifstream probe(kSmolLM2);
      if (!probe) return nullptr;
      return new BpeTokenizer(BpeTokenizer::from_gguf(nibble::io::GgufReader::open(kSmolLM2)));
    }();
    return tok;
  }
};

TEST(BpeTokenizerSmolLM2, MatchesLlamaCppIds) {
  const BpeTokenizer* tok = Real::get();
  if (!tok) GTEST_SKIP() << kSmolLM2 << " missing (scripts/fetch-models.sh)";
  EXPECT_EQ(tok->vocab_size(), 49152);
  EXPECT_EQ(tok->merge_count(), 48900u);
  // llama-tokenize -f FILE --ids --no-escape [--no-parse-special], llama.cpp 0c1e570.
  EXPECT_EQ(tok->encode("Hello world! I have 1234 apples.", false, true),
            (Ids{19556, 905, 17, 339, 457, 216, 33, 34, 35, 36, 13855, 30}));
  EXPECT_EQ(tok->encode("<|im_start|>user\nhi<|im_end|>", false, true), (Ids{1, 4093, 198, 6004, 2}));
  EXPECT_EQ(tok->encode("<|im_start|>user\nhi<|im_end|>", false, false),
            (Ids{44, 108, 306, 79, 3738, 108, 46, 4093, 198, 6004, 44, 108, 306, 79, 486, 108, 46}));
  EXPECT_EQ(tok->encode("a  b\t\t\nc   ", false, true), (Ids{81, 216, 278, 1656, 198, 83, 333}));
  EXPECT_EQ(tok->encode("don't I'M we'll", false, true), (Ids{12420, 982, 339, 23, 61, 392, 3060}));
  EXPECT_EQ(tok->encode("naïve café Ђ 日本語", false, true),
            (Ids{3546, 46494, 37366, 5470, 220, 17097, 241, 115, 40993, 179, 120, 248}));
  EXPECT_EQ(tok->encode("👍🏽🇩🇪", false, true),
            (Ids{10813, 235, 231, 10813, 233, 138, 10813, 225, 119, 10813, 225, 120}));
  EXPECT_EQ(tok->encode("\xff\xfe abc", false, true), (Ids{24211, 24211, 43239}));
}

TEST(BpeTokenizerSmolLM2, DecodeInvertsEncodeOnValidText) {
  const BpeTokenizer* tok = Real::get();
  if (!tok) GTEST_SKIP() << kSmolLM2 << " missing";
  for (const std::string s : {"Hello world! I have 1234 apples.", "a  b\t\t\nc   ", "naïve café Ђ 日本語 👍🏽🇩🇪",
                              "don't I'M we'll\r\n", "<|im_start|>user\nhi<|im_end|>"}) {
    EXPECT_EQ(tok->decode(tok->encode(s, false, true), false, true), s);
  }
  EXPECT_EQ(tok->decode(tok->encode("<|im_start|>hi", false, true)), "hi");  // control text hidden
  EXPECT_EQ(tok->decode(tok->encode("\xff", false, true)), "\xEF\xBF\xBD");
}

TEST(BpeTokenizerSmolLM2, TinyStoriesRoundTrip) {
  const BpeTokenizer* tok = Real::get();
  if (!tok) GTEST_SKIP() << kSmolLM2 << " missing";
  for (const char* name : {"tinystories_valid_first101.txt", "tinystories_train_sample_2MiB.txt"}) {
    std::ifstream in(std::string(NIBBLE_SOURCE_DIR) + "/examples/data/" + name, std::ios::binary);
    ASSERT_TRUE(in) << name;
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const Ids ids = tok->encode(text, false, true);
    EXPECT_GT(text.size(), 3 * ids.size()) << name;  // a byte-level BPE of English: ~4 bytes a token
    EXPECT_EQ(tok->decode(ids, false, true), text) << name;
  }
}

TEST(BpeTokenizerSmolLM2, TokenizerJsonOfTheSameVocabGivesTheSameIds) {
  const BpeTokenizer* tok = Real::get();
  if (!tok) GTEST_SKIP() << kSmolLM2 << " missing";
  const auto md = nibble::io::GgufReader::open(kSmolLM2);
  const auto& tokens = md.typed_metadata().string_array("tokenizer.ggml.tokens");
  const auto& types = md.typed_metadata().int_array("tokenizer.ggml.token_type");
  nlohmann::json vocab = nlohmann::json::object(), added = nlohmann::json::array();
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    vocab[tokens[i]] = i;
    if (types[i] == 3) added.push_back({{"id", i}, {"content", tokens[i]}, {"special", true}});
  }
  nlohmann::json j = {{"added_tokens", added},
                      {"normalizer", nullptr},
                      {"pre_tokenizer", kSmollmPre},
                      {"decoder", {{"type", "ByteLevel"}}},
                      {"model",
                       {{"type", "BPE"},
                        {"vocab", vocab},
                        {"merges", md.typed_metadata().string_array("tokenizer.ggml.merges")}}}};
  const BpeTokenizer from_json =
      nibble::model::parse_hf_bpe_tokenizer(j.dump(), R"({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})");
  const std::string text = "Once upon a time, 3 cats (ages 1, 22 and 333) said \"meow!\"\n\n<|im_end|> done.";
  EXPECT_EQ(from_json.encode(text, false, true), tok->encode(text, false, true));
  EXPECT_EQ(from_json.special_ids().eos, 2);
}

TEST(BpeTokenizerSmolLM2, LongInputsFinish) {
  // Not a timing assertion (tests never assert wall-clock time): inputs that are one very
  // long word, or many distinct words, must simply complete.
  const BpeTokenizer* tok = Real::get();
  if (!tok) GTEST_SKIP() << kSmolLM2 << " missing";
  const std::string long_word(200000, 'a');
  const Ids ids = tok->encode(long_word);
  EXPECT_EQ(tok->decode(ids), long_word);
  std::string punct(100000, '!');
  EXPECT_EQ(tok->decode(tok->encode(punct)), punct);
}

}  // namespace

}  // namespace bpe_tokenizer_test
