// libFuzzer harness: BpeTokenizer::encode on arbitrary bytes (any pre-tokenizer, special
// tokens parsed or not) either returns ids or throws nibble::Error (only for UTF-8 that
// encodes a code point above U+10FFFF, as llama.cpp throws there). With a vocabulary
// that has all 256 byte tokens, decoding the ids must give back the text as llama.cpp
// reads it (every invalid byte replaced by U+FFFD).
//   input byte 0: bits 0-2 pre-tokenizer, bit 3 parse_special; the rest is the text.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <nibble/model/bpe_tokenizer.hpp>

namespace {

using nibble::model::BpeTokenizer;
using nibble::model::PreTokenizer;
using nibble::model::TokenType;

BpeTokenizer make(PreTokenizer pre) {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(nibble::model::bpe_detail::byte_map().byte_to_text[b]);
  std::vector<TokenType> types(256, TokenType::normal);
  std::vector<std::pair<std::string, std::string>> merges;
  const auto merge = [&](const std::string& a, const std::string& b) {
    merges.emplace_back(a, b);
    tokens.push_back(a + b);
    types.push_back(TokenType::normal);
  };
  const std::string sp = tokens[' '];
  merge(sp, "t");
  merge("h", "e");
  merge(sp + "t", "he");
  merge("l", "l");
  merge("a", "a");
  merge("aa", "aa");
  merge(sp, sp);
  merge(tokens[0xC3], tokens[0xA9]);  // "é"
  merges.emplace_back("x", "q");      // result not a token: byte fallback
  for (const char* s : {"<|im_start|>", "<|im_end|>", "<|im_start|>x"}) {
    tokens.push_back(s);
    types.push_back(TokenType::control);
  }
  tokens.push_back("@@");
  types.push_back(TokenType::user_defined);
  nibble::model::BpeFlags flags = BpeTokenizer::default_flags(pre);
  flags.clean_spaces = false;
  flags.add_bos = false;  // llama3's default; this vocabulary has no BOS
  return BpeTokenizer(tokens, types, merges, pre, {}, flags);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const BpeTokenizer toks[] = {make(PreTokenizer::gpt2), make(PreTokenizer::smollm),
                                      make(PreTokenizer::llama3), make(PreTokenizer::qwen2),
                                      make(PreTokenizer::default_)};
  if (size == 0) return 0;
  const BpeTokenizer& tok = toks[(data[0] & 7) % 5];
  const bool parse_special = data[0] & 8;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<int> ids;
  try {
    ids = tok.encode(text, false, parse_special);
  } catch (const nibble::Error&) {
    return 0;
  }
  std::string expected;
  for (std::uint32_t cp : nibble::model::bpe_detail::decode_utf8(text)) nibble::model::bpe_detail::append_utf8(expected, cp);
  if (tok.decode(ids, false, true) != expected) std::abort();
  return 0;
}
