// GPT-2 style byte-level BPE tokenizer (SmolLM2, GPT-2, Llama 3, Qwen2 vocabularies) that
// produces the token ids llama.cpp does (checked against llama.cpp 0c1e570's llama-tokenize
// by tests/llama_cpp/check_tokenizer.sh).
//
// encode(text) runs the same stages as llama.cpp's llama_tokenize for a "gpt2"-model vocab:
//  1. Special tokens are cut out of the raw bytes first: for every control, unknown or
//     user-defined token, longest text first, each raw fragment is split at each
//     occurrence (leftmost first, non-overlapping). Control and unknown tokens take part
//     only with parse_special; user-defined ones always do.
//  2. Each remaining fragment is decoded from UTF-8 to code points. Invalid UTF-8 is not an
//     error: every byte that does not start a well-formed sequence becomes U+FFFD and the
//     decoder moves on by one byte (so "\xff" is tokenized as the three bytes EF BF BD of
//     "\uFFFD"). The decoder is llama.cpp's, which is looser than the standard: it checks
//     only the lead byte's length bits and that continuation bytes are 10xxxxxx, so
//     overlong forms (C0 80 is U+0000) and surrogates (ED A0 80 is U+D800) pass and are
//     re-encoded from the code point. A 4-byte form above U+10FFFF (F4 90.., F5..F7) cannot
//     be re-encoded; llama.cpp then throws std::invalid_argument out of llama_tokenize,
//     and encode() throws nibble::Error.
//  3. The code points are split into words by the pre-tokenizer's regexes, applied in turn
//     (each one splits the pieces the previous one left; lookaheads do not see across
//     pieces). The regexes are hand-written scanners with llama.cpp's semantics: \p{L},
//     \p{N}, ... are the major general category from unicode_tables.hpp (Unicode 15.1, as
//     llama.cpp's tables), \s is the White_Space property (not U+001C..U+001F), and the
//     GPT-2 "\s+(?!\S)|\s+" keeps a whitespace run whole at the end of a piece and leaves
//     its last character to the next word otherwise.
//  4. Each word's UTF-8 bytes are mapped to GPT-2's printable characters (bytes_to_unicode)
//     and merged: repeatedly the adjacent pair with the lowest merge rank (leftmost on a
//     tie) is joined. A final symbol that is not a token falls back to its single bytes,
//     each emitted only if that one byte is itself a token (as llama.cpp does; with a
//     full byte-level vocab every symbol is a token).
// The empty string gives no tokens (only BOS/EOS when add_special asks for them).
//
// decode(ids) is llama_detokenize: normal tokens are mapped back to bytes, control and
// unknown tokens render as their text only with unparse_special, user-defined ones always;
// clean_spaces (per pre-tokenizer, as llama.cpp sets it) removes the space before
// ? ! . , and before 's 'm 're 've.
//
// Not reproduced: llama.cpp also forces CONTROL on a few tokens by their text when a GGUF
// marks them normal (e.g. "<|im_end|>", "</s>") and sets lstrip/rstrip by model name (phi-3,
// jina); SmolLM2's GGUF needs neither.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../io/gguf.hpp"
#include "unicode_tables.hpp"

namespace nibble::model {

// llama.cpp's token types (tokenizer.ggml.token_type).
enum class TokenType : std::int32_t { undefined = 0, normal = 1, unknown = 2, control = 3, user_defined = 4,
                                      unused = 5, byte = 6 };

// The pre-tokenizers of llama.cpp's BPE vocabularies that nibble implements.
//   gpt2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   smollm: \p{N} (every digit its own word), then gpt2 (also starcoder, refact, command-r)
//   llama3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   qwen2:  as llama3 with \p{N} for \p{N}{1,3}
//   default: llama.cpp's fallback: [\p{P}\$\+<=>\^~\|]+ , gpt2 , \p{N}+ , [0-9][0-9][0-9]
enum class PreTokenizer { gpt2, smollm, llama3, qwen2, default_ };

inline const char* to_string(PreTokenizer p) {
  switch (p) {
    case PreTokenizer::gpt2: return "gpt2";
    case PreTokenizer::smollm: return "smollm";
    case PreTokenizer::llama3: return "llama3";
    case PreTokenizer::qwen2: return "qwen2";
    case PreTokenizer::default_: return "default";
  }
  return "?";
}

// tokenizer.ggml.pre names, as llama.cpp maps them (only the ones whose regexes are above).
inline PreTokenizer pre_tokenizer_from_name(const std::string& name) {
  auto any = [&](std::initializer_list<const char*> names) {
    for (const char* n : names)
      if (name == n) return true;
    return false;
  };
  if (name == "smollm" || any({"starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}))
    return PreTokenizer::smollm;
  if (any({"gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "mpt", "olmo",
           "jais", "roberta-bpe", "jina-v1-en", "jina-v2-code", "exaone4", "mellum", "modern-bert", "a.x-4.0"}))
    return PreTokenizer::gpt2;
  if (any({"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "dbrx",
           "smaug-bpe"}))
    return PreTokenizer::llama3;
  if (any({"qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"})) return PreTokenizer::qwen2;
  if (name.empty() || name == "default") return PreTokenizer::default_;
  detail::throw_error("BPE tokenizer: unknown pre-tokenizer '", name,
                      "' (supported: smollm, gpt2 / gpt-2, llama3 / llama-bpe, qwen2, default and their aliases)");
}

// Behaviour flags; from_gguf fills them as llama.cpp does for the pre-tokenizer.
struct BpeFlags {
  bool add_bos = false;           // encode(add_special=true) starts with BOS
  bool add_eos = false;           // ... and ends with EOS
  bool add_space_prefix = false;  // decode drops one leading space of the first piece
  bool clean_spaces = true;       // decode's clean-up of " ." " 's" ... (false for smollm, qwen2)
  bool ignore_merges = false;     // a word that is a whole token is taken as is (llama3)
};

// Special token ids; -1 when the vocabulary has none.
struct BpeSpecialIds {
  int bos = -1, eos = -1, unk = -1, pad = -1;
};

namespace bpe_detail {

// ---- UTF-8 as llama.cpp reads and writes it ------------------------------------------

inline constexpr std::uint32_t kReplacement = 0xFFFD;

// One code point at s[i], advancing i; U+FFFD and one byte for anything malformed.
inline std::uint32_t next_codepoint(std::string_view s, std::size_t& i) {
  const auto b = [&](std::size_t k) { return static_cast<std::uint32_t>(static_cast<unsigned char>(s[k])); };
  const auto cont = [&](std::size_t k) { return k < s.size() && (b(k) & 0xC0) == 0x80; };
  const std::uint32_t b0 = b(i);
  if (b0 < 0x80) {
    i += 1;
    return b0;
  }
  if ((b0 & 0x40) && !(b0 & 0x20) && cont(i + 1)) {
    const std::uint32_t cp = ((b0 & 0x1F) << 6) | (b(i + 1) & 0x3F);
    i += 2;
    return cp;
  }
  if ((b0 & 0x60) == 0x60 && !(b0 & 0x10) && cont(i + 1) && cont(i + 2)) {
    const std::uint32_t cp = ((b0 & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
    i += 3;
    return cp;
  }
  if ((b0 & 0x70) == 0x70 && !(b0 & 0x08) && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
    const std::uint32_t cp =
        ((b0 & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
    i += 4;
    return cp;
  }
  i += 1;
  return kReplacement;
}

inline std::vector<std::uint32_t> decode_utf8(std::string_view s) {
  std::vector<std::uint32_t> cps;
  cps.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) cps.push_back(next_codepoint(s, i));
  return cps;
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x110000) {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    char hex[16];
    std::snprintf(hex, sizeof hex, "%X", static_cast<unsigned>(cp));
    detail::throw_error("BPE tokenizer: the text encodes code point 0x", hex,
                        ", beyond U+10FFFF, which cannot be re-encoded as UTF-8 (llama.cpp's tokenizer throws too)");
  }
}

// ---- code point classes ---------------------------------------------------------------

using unicode::CpClass;

// Class in bits 0-2, White_Space in bit 3; kNone marks a position outside the piece
// being scanned (llama.cpp's empty flags there: no class matches, not even "other").
inline constexpr std::uint8_t kWhiteBit = 8;
inline constexpr std::uint8_t kNone = 0x80;

inline std::uint8_t lookup_class(std::uint32_t cp) {
  if (cp >= 0x110000) return static_cast<std::uint8_t>(CpClass::undefined);
  const std::uint32_t* begin = unicode::kCodepointRanges;
  const std::uint32_t* end = begin + sizeof(unicode::kCodepointRanges) / sizeof(unicode::kCodepointRanges[0]);
  // Last entry whose first code point is <= cp.
  const std::uint32_t* it =
      std::upper_bound(begin, end, cp, [](std::uint32_t v, std::uint32_t e) { return v < (e >> 3); });
  return static_cast<std::uint8_t>(it[-1] & 7);
}

inline bool is_white_space(std::uint32_t cp) {
  for (std::uint32_t w : unicode::kWhiteSpace)
    if (w == cp) return true;
  return false;
}

inline std::uint8_t codepoint_flags(std::uint32_t cp) {
  static const auto ascii = [] {
    std::array<std::uint8_t, 128> t{};
    for (std::uint32_t c = 0; c < 128; ++c)
      t[c] = static_cast<std::uint8_t>(lookup_class(c) | (is_white_space(c) ? kWhiteBit : 0));
    return t;
  }();
  if (cp < 128) return ascii[cp];
  return static_cast<std::uint8_t>(lookup_class(cp) | (is_white_space(cp) ? kWhiteBit : 0));
}

inline bool has_class(std::uint8_t f, CpClass c) { return f != kNone && (f & 7) == static_cast<std::uint8_t>(c); }
inline bool is_letter(std::uint8_t f) { return has_class(f, CpClass::letter); }
inline bool is_number(std::uint8_t f) { return has_class(f, CpClass::number); }
inline bool is_space(std::uint8_t f) { return f != kNone && (f & kWhiteBit); }
// [^\s\p{L}\p{N}] inside the piece.
inline bool is_other(std::uint8_t f) { return f != kNone && !is_space(f) && !is_letter(f) && !is_number(f); }

// ---- pre-tokenizer scanners -------------------------------------------------------------
//
// Each stage takes the pieces (lengths in code points, covering the text) and returns the
// finer pieces. `cp(p)` / `fl(p)` see only the current piece, as llama.cpp's regexes do.

struct Piece {
  const std::vector<std::uint32_t>& cps;
  const std::vector<std::uint8_t>& flags;
  std::size_t begin, end;
  static constexpr std::uint32_t kOut = 0xFFFFFFFF;
  std::uint32_t cp(std::size_t p) const { return p >= begin && p < end ? cps[p] : kOut; }
  std::uint8_t fl(std::size_t p) const { return p >= begin && p < end ? flags[p] : kNone; }
};

template <class Scan>
std::vector<std::size_t> split_pieces(const std::vector<std::uint32_t>& cps, const std::vector<std::uint8_t>& flags,
                                      const std::vector<std::size_t>& pieces, Scan scan) {
  std::vector<std::size_t> out;
  out.reserve(pieces.size() * 2);
  std::size_t start = 0;
  for (std::size_t len : pieces) {
    Piece pc{cps, flags, start, start + len};
    std::size_t prev = start;
    auto emit = [&](std::size_t end) {
      if (end > prev) out.push_back(end - prev);
      prev = end;
    };
    scan(pc, emit);
    emit(pc.end);
    start += len;
  }
  return out;
}

// Isolates every maximal run (or, with single, every code point) matching pred.
template <class Pred>
std::vector<std::size_t> isolate(const std::vector<std::uint32_t>& cps, const std::vector<std::uint8_t>& flags,
                                 const std::vector<std::size_t>& pieces, bool single, Pred pred) {
  return split_pieces(cps, flags, pieces, [&](const Piece& pc, auto& emit) {
    for (std::size_t p = pc.begin; p < pc.end;) {
      if (!pred(pc.cps[p], pc.flags[p])) {
        ++p;
        continue;
      }
      emit(p);
      std::size_t q = p + 1;
      if (!single)
        while (q < pc.end && pred(pc.cps[q], pc.flags[q])) ++q;
      emit(q);
      p = q;
    }
  });
}

inline std::uint32_t ascii_lower(std::uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

// 's|'t|'re|'ve|'m|'ll|'d (case-insensitive for llama3/qwen2): length of the match at p, or 0.
inline std::size_t contraction(const Piece& pc, std::size_t p, bool any_case) {
  if (pc.cp(p) != '\'' || p + 1 >= pc.end) return 0;
  const auto low = [&](std::size_t q) { return any_case ? ascii_lower(pc.cp(q)) : pc.cp(q); };
  const std::uint32_t c1 = low(p + 1);
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (p + 2 < pc.end) {
    const std::uint32_t c2 = low(p + 2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  }
  return 0;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
template <class Emit>
void scan_gpt2(const Piece& pc, Emit& emit) {
  for (std::size_t p = pc.begin; p < pc.end;) {
    if (const std::size_t n = contraction(pc, p, false)) {
      emit(p += n);
      continue;
    }
    const bool sp = pc.cp(p) == ' ';
    const std::uint8_t f = pc.fl(sp ? p + 1 : p);
    bool (*cls)(std::uint8_t) = is_letter(f) ? is_letter : is_number(f) ? is_number : is_other(f) ? is_other : nullptr;
    if (cls) {
      p += sp ? 2 : 1;
      while (cls(pc.fl(p))) ++p;
      emit(p);
      continue;
    }
    std::size_t n = 0;
    while (is_space(pc.fl(p + n))) ++n;
    if (n > 1 && pc.cp(p + n) != Piece::kOut) {  // \s+(?!\S): leave the last one to the next word
      emit(p += n - 1);
    } else if (n > 0) {
      emit(p += n);
    } else {
      emit(++p);
    }
  }
}

// llama3 (three_digits) and qwen2 (!three_digits):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
template <class Emit>
void scan_llama3(const Piece& pc, Emit& emit, bool three_digits) {
  for (std::size_t p = pc.begin; p < pc.end;) {
    const std::uint32_t c = pc.cp(p);
    const std::uint8_t f = pc.fl(p);
    if (const std::size_t n = contraction(pc, p, true)) {
      emit(p += n);
      continue;
    }
    if (!(c == '\r' || c == '\n' || is_number(f)) && (is_letter(f) || is_letter(pc.fl(p + 1)))) {
      ++p;
      while (is_letter(pc.fl(p))) ++p;
      emit(p);
      continue;
    }
    if (is_number(f)) {
      if (three_digits) {
        std::size_t run = 0;
        while (is_number(pc.fl(p))) {
          ++p;
          if (++run == 3) {
            emit(p);
            run = 0;
          }
        }
        emit(p);
      } else {
        emit(++p);
      }
      continue;
    }
    // " ?[^\s\p{L}\p{N}]+[\r\n]*". As in llama.cpp, a space that ends the piece also
    // takes this branch (it then yields " " alone, as the whitespace branch would).
    const std::uint8_t f2 = c == ' ' ? pc.fl(p + 1) : f;
    if (!is_space(f2) && !is_letter(f2) && !is_number(f2)) {
      p += c == ' ' ? 1 : 0;
      while (is_other(pc.fl(p))) ++p;
      while (pc.cp(p) == '\r' || pc.cp(p) == '\n') ++p;
      emit(p);
      continue;
    }
    std::size_t n = 0, last_newline = 0;
    while (is_space(pc.fl(p + n))) {
      const std::uint32_t w = pc.cp(p + n);
      if (w == '\r' || w == '\n') last_newline = p + n + 1;
      ++n;
    }
    if (last_newline > 0) {  // \s*[\r\n]+
      emit(p = last_newline);
    } else if (n > 1 && pc.cp(p + n) != Piece::kOut) {
      emit(p += n - 1);
    } else if (n > 0) {
      emit(p += n);
    } else {
      emit(++p);
    }
  }
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68
// bytes for U+0100.. in byte order.
struct ByteMap {
  std::string byte_to_text[256];
  std::int16_t cp_to_byte[324];  // -1 where a code point is no byte's image
  ByteMap() {
    std::fill(std::begin(cp_to_byte), std::end(cp_to_byte), static_cast<std::int16_t>(-1));
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const int cp = printable ? b : 256 + n++;
      append_utf8(byte_to_text[b], static_cast<std::uint32_t>(cp));
      cp_to_byte[cp] = static_cast<std::int16_t>(b);
    }
  }
};

inline const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace bpe_detail

class BpeTokenizer {
 public:
  BpeTokenizer() = default;

  // tokens[i] is the (byte-level encoded) text of id i; types may be empty (all normal);
  // merges in rank order. Ids in `special` must be in range (or -1).
  BpeTokenizer(std::vector<std::string> tokens, std::vector<TokenType> types,
               std::vector<std::pair<std::string, std::string>> merges, PreTokenizer pre, BpeSpecialIds special = {},
               BpeFlags flags = {})
      : tokens_(std::move(tokens)), types_(std::move(types)), pre_(pre), special_(special), flags_(flags) {
    detail::require(!tokens_.empty(), "BPE tokenizer: the vocabulary is empty");
    detail::require(tokens_.size() < (1u << 30), "BPE tokenizer: ", tokens_.size(), " tokens is too many");
    if (types_.empty()) types_.assign(tokens_.size(), TokenType::normal);
    detail::require(types_.size() == tokens_.size(), "BPE tokenizer: ", tokens_.size(), " tokens but ", types_.size(),
                    " token types");
    for (std::size_t i = 0; i < types_.size(); ++i)
      detail::require(static_cast<std::int32_t>(types_[i]) >= 0 && static_cast<std::int32_t>(types_[i]) <= 6,
                      "BPE tokenizer: token ", i, " has type ", static_cast<std::int32_t>(types_[i]),
                      " (expected 0..6)");
    const auto check_id = [&](int id, const char* name) {
      detail::require(id >= -1 && id < vocab_size(), "BPE tokenizer: ", name, " id ", id,
                      " is out of range (vocab size ", vocab_size(), ")");
    };
    check_id(special_.bos, "BOS");
    check_id(special_.eos, "EOS");
    check_id(special_.unk, "UNK");
    check_id(special_.pad, "PAD");
    detail::require(!flags_.add_bos || special_.bos >= 0, "BPE tokenizer: add_bos is set but there is no BOS id");
    detail::require(!flags_.add_eos || special_.eos >= 0, "BPE tokenizer: add_eos is set but there is no EOS id");
    lstrip_.assign(tokens_.size(), false);
    rstrip_.assign(tokens_.size(), false);

    // llama.cpp renames empty tokens (an empty special token would match everywhere).
    for (std::size_t i = 0; i < tokens_.size(); ++i)
      if (tokens_[i].empty()) tokens_[i] = "[EMPTY_" + std::to_string(i) + "]";
    // Text -> id: the last id wins for a repeated text, as in llama.cpp's token_to_id.
    for (std::size_t i = 0; i < tokens_.size(); ++i) intern(tokens_[i], static_cast<int>(i));
    // Merges: the first rank wins for a repeated pair. Both halves must be tokens (every
    // real vocabulary has them; a merge of unknown pieces points at a broken file).
    merges_.reserve(merges.size() * 2);
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const auto& [a, b] = merges[r];
      const auto ia = piece_ids_.find(a), ib = piece_ids_.find(b);
      detail::require(ia != piece_ids_.end() && ib != piece_ids_.end(), "BPE tokenizer: merge ", r, " ('", a, "' '",
                      b, "') names a piece that is not in the vocabulary");
      const int result = intern(a + b, -1);
      merges_.emplace(pair_key(ia->second, ib->second), Merge{static_cast<int>(r), result});
    }
    // Special-token matching order: longest text first (ties by id, so it is deterministic).
    for (int i = 0; i < vocab_size(); ++i)
      if (is_special_candidate(types_[static_cast<std::size_t>(i)])) special_order_.push_back(i);
    std::stable_sort(special_order_.begin(), special_order_.end(), [&](int a, int b) {
      return tokens_[static_cast<std::size_t>(a)].size() > tokens_[static_cast<std::size_t>(b)].size();
    });
  }

  // From the tokenizer.ggml.* metadata of a GGUF file (model "gpt2"), as llama.cpp loads it.
  static BpeTokenizer from_gguf(const io::GgufMetadata& md) {
    const std::string model = md.get_string("tokenizer.ggml.model", "");
    detail::require(model == "gpt2", "GGUF: tokenizer.ggml.model is '", model,
                    "'; BpeTokenizer reads byte-level BPE vocabularies ('gpt2')");
    const std::string pre_name = md.get_string("tokenizer.ggml.pre", "");
    const PreTokenizer pre = pre_tokenizer_from_name(pre_name);
    std::vector<std::string> tokens = md.string_array("tokenizer.ggml.tokens");
    std::vector<TokenType> types;
    if (md.contains("tokenizer.ggml.token_type")) {
      const auto& t = md.int_array("tokenizer.ggml.token_type");
      detail::require(t.size() >= tokens.size(), "GGUF: tokenizer.ggml.token_type has ", t.size(),
                      " entries for ", tokens.size(), " tokens");
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        // llama.cpp treats an unknown type as undefined; nibble does the same.
        const std::int64_t v = t[i];
        types.push_back(v >= 0 && v <= 6 ? static_cast<TokenType>(v) : TokenType::undefined);
      }
    }
    std::vector<std::pair<std::string, std::string>> merges;
    const auto& m = md.string_array("tokenizer.ggml.merges");
    merges.reserve(m.size());
    for (std::size_t i = 0; i < m.size(); ++i) {
      // "a b", split at the first space after the first byte (a merge half is never empty).
      const std::size_t at = m[i].size() > 1 ? m[i].find(' ', 1) : std::string::npos;
      detail::require(at != std::string::npos, "GGUF: tokenizer.ggml.merges[", i, "] = '", m[i],
                      "' is not two pieces separated by a space");
      merges.emplace_back(m[i].substr(0, at), m[i].substr(at + 1));
    }
    BpeSpecialIds ids;
    const auto id_of = [&](const char* key) -> int {
      if (!md.contains(key)) return -1;
      const std::int64_t v = md.get_int(key);
      detail::require(v >= 0 && v < static_cast<std::int64_t>(tokens.size()), "GGUF: ", key, " = ", v,
                      " is out of range (vocab size ", tokens.size(), ")");
      return static_cast<int>(v);
    };
    ids.bos = id_of("tokenizer.ggml.bos_token_id");
    ids.eos = id_of("tokenizer.ggml.eos_token_id");
    ids.unk = id_of("tokenizer.ggml.unknown_token_id");
    ids.pad = id_of("tokenizer.ggml.padding_token_id");
    BpeFlags flags = default_flags(pre);
    // The pre-tokenizer's default (llama3 adds BOS) applies only when there is a BOS id;
    // a file that asks for BOS explicitly without naming one is refused.
    flags.add_bos = md.get_bool("tokenizer.ggml.add_bos_token", flags.add_bos && ids.bos >= 0);
    flags.add_eos = md.get_bool("tokenizer.ggml.add_eos_token", flags.add_eos);
    flags.add_space_prefix = md.get_bool("tokenizer.ggml.add_space_prefix", false);
    return BpeTokenizer(std::move(tokens), std::move(types), std::move(merges), pre, ids, flags);
  }
  static BpeTokenizer from_gguf(const io::GgufReader& reader) { return from_gguf(reader.typed_metadata()); }

  // What llama.cpp sets for each pre-tokenizer before the file's own add_bos/add_eos keys.
  static BpeFlags default_flags(PreTokenizer pre) {
    BpeFlags f;
    f.clean_spaces = !(pre == PreTokenizer::smollm || pre == PreTokenizer::qwen2);
    f.ignore_merges = pre == PreTokenizer::llama3;
    f.add_bos = pre == PreTokenizer::llama3;
    return f;
  }

  // lstrip / rstrip of a special token (from tokenizer.json's added_tokens): the text next
  // to a match loses its ASCII whitespace on that side.
  void set_strip(int id, bool lstrip, bool rstrip) {
    check_token(id);
    lstrip_[static_cast<std::size_t>(id)] = lstrip;
    rstrip_[static_cast<std::size_t>(id)] = rstrip;
  }

  int vocab_size() const { return static_cast<int>(tokens_.size()); }
  PreTokenizer pre_tokenizer() const { return pre_; }
  const BpeSpecialIds& special_ids() const { return special_; }
  const BpeFlags& flags() const { return flags_; }
  std::size_t merge_count() const { return merges_.size(); }
  const std::string& token_text(int id) const {
    check_token(id);
    return tokens_[static_cast<std::size_t>(id)];
  }
  TokenType token_type(int id) const {
    check_token(id);
    return types_[static_cast<std::size_t>(id)];
  }
  // Id of an exact token text, or -1.
  int find(const std::string& text) const {
    const auto it = piece_ids_.find(text);
    return it == piece_ids_.end() ? -1 : pieces_[static_cast<std::size_t>(it->second)].token;
  }

  // llama_tokenize(text, add_special, parse_special).
  std::vector<int> encode(std::string_view text, bool add_special = false, bool parse_special = false) const {
    std::vector<int> out;
    if (add_special && flags_.add_bos) out.push_back(special_.bos);
    if (!text.empty()) {
      std::unordered_map<std::string, std::vector<int>> cache;
      for (const Fragment& f : partition(text, parse_special)) {
        if (f.token >= 0)
          out.push_back(f.token);
        else
          encode_fragment(text.substr(f.offset, f.length), cache, out);
      }
    }
    if (add_special && flags_.add_eos) out.push_back(special_.eos);
    return out;
  }

  // The words the pre-tokenizer cuts a text into (no special-token handling), as UTF-8
  // (after llama.cpp's U+FFFD replacement of invalid bytes).
  std::vector<std::string> pre_tokenize(std::string_view text) const {
    const std::vector<std::uint32_t> cps = bpe_detail::decode_utf8(text);
    std::vector<std::string> words;
    std::size_t at = 0;
    for (std::size_t len : split_words(cps)) {
      std::string w;
      for (std::size_t k = at; k < at + len; ++k) bpe_detail::append_utf8(w, cps[k]);
      words.push_back(std::move(w));
      at += len;
    }
    return words;
  }

  // llama_token_to_piece(id, lstrip 0, special): the bytes of one token.
  std::string token_to_piece(int id, bool special = true) const {
    check_token(id);
    const TokenType t = types_[static_cast<std::size_t>(id)];
    const std::string& text = tokens_[static_cast<std::size_t>(id)];
    switch (t) {
      case TokenType::control:
      case TokenType::unknown:
        return special ? text : std::string();
      case TokenType::user_defined:
        return text;
      case TokenType::normal:
        return decode_byte_level(text);
      case TokenType::byte:
        return std::string(1, static_cast<char>(byte_of_token(text)));
      default:
        return std::string();  // unused / undefined render as nothing
    }
  }

  // llama_detokenize(ids, remove_special, unparse_special).
  std::string decode(const std::vector<int>& ids, bool remove_special = false, bool unparse_special = false) const {
    std::size_t begin = 0, end = ids.size();
    bool remove_space = flags_.add_space_prefix;
    if (remove_special && flags_.add_bos && end > begin && ids[begin] == special_.bos) {
      remove_space = false;
      ++begin;
    }
    if (remove_special && flags_.add_eos && end > begin && ids[end - 1] == special_.eos) --end;
    std::string text;
    for (std::size_t i = begin; i < end; ++i) {
      std::string piece = token_to_piece(ids[i], unparse_special);
      if (remove_space && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
      remove_space = false;
      text += piece;
    }
    return flags_.clean_spaces ? clean_spaces(text) : text;
  }

 private:
  struct PieceInfo {
    int token;         // vocabulary id of this text, or -1
    std::string text;
  };
  struct Merge {
    int rank;
    int result;  // piece id of the joined text
  };
  struct Fragment {
    std::size_t offset = 0, length = 0;
    int token = -1;  // >= 0: a special token
  };

  static std::uint64_t pair_key(int a, int b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  int intern(const std::string& text, int token) {
    const auto [it, inserted] = piece_ids_.emplace(text, static_cast<int>(pieces_.size()));
    if (inserted) pieces_.push_back({token, text});
    else if (token >= 0) pieces_[static_cast<std::size_t>(it->second)].token = token;
    return it->second;
  }

  void check_token(int id) const {
    detail::require(id >= 0 && id < vocab_size(), "BPE tokenizer: token id ", id, " is out of range (vocab size ",
                    vocab_size(), ")");
  }

  static bool is_special_candidate(TokenType t) {
    return t == TokenType::control || t == TokenType::user_defined || t == TokenType::unknown;
  }

  // Step 1: special tokens out of the raw text.
  std::vector<Fragment> partition(std::string_view text, bool parse_special) const {
    std::vector<Fragment> frags{{0, text.size(), -1}};
    const auto is_ascii_space = [](char c) {
      return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
    };
    for (int id : special_order_) {
      const TokenType t = types_[static_cast<std::size_t>(id)];
      if (!parse_special && (t == TokenType::control || t == TokenType::unknown)) continue;
      const std::string& s = tokens_[static_cast<std::size_t>(id)];
      const bool lstrip = lstrip_[static_cast<std::size_t>(id)], rstrip = rstrip_[static_cast<std::size_t>(id)];
      std::vector<Fragment> next;
      next.reserve(frags.size());
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          next.push_back(f);
          continue;
        }
        std::size_t base = f.offset, len = f.length;
        for (;;) {
          const std::size_t match = text.substr(0, base + len).find(s, base);
          if (match == std::string_view::npos) {
            if (len > 0) next.push_back({base, len, -1});
            break;
          }
          std::size_t left = match - base;
          if (lstrip)
            while (left > 0 && is_ascii_space(text[base + left - 1])) --left;
          if (left > 0) next.push_back({base, left, -1});
          next.push_back({match, s.size(), id});
          std::size_t right_at = match + s.size();
          std::size_t right = base + len - right_at;
          if (rstrip)
            while (right > 0 && is_ascii_space(text[right_at])) {
              ++right_at;
              --right;
            }
          base = right_at;
          len = right;
          if (len == 0) break;
        }
      }
      frags = std::move(next);
    }
    return frags;
  }

  // Step 3: word lengths (in code points) for the whole fragment.
  std::vector<std::size_t> split_words(const std::vector<std::uint32_t>& cps) const {
    using namespace bpe_detail;
    std::vector<std::uint8_t> flags(cps.size());
    for (std::size_t i = 0; i < cps.size(); ++i) flags[i] = codepoint_flags(cps[i]);
    std::vector<std::size_t> pieces{cps.size()};
    if (cps.empty()) return {};
    auto gpt2 = [&](const std::vector<std::size_t>& in) {
      return split_pieces(cps, flags, in, [](const Piece& pc, auto& emit) { scan_gpt2(pc, emit); });
    };
    switch (pre_) {
      case PreTokenizer::gpt2:
        return gpt2(pieces);
      case PreTokenizer::smollm:
        return gpt2(isolate(cps, flags, pieces, true, [](std::uint32_t, std::uint8_t f) { return is_number(f); }));
      case PreTokenizer::llama3:
      case PreTokenizer::qwen2: {
        const bool three = pre_ == PreTokenizer::llama3;
        return split_pieces(cps, flags, pieces, [three](const Piece& pc, auto& emit) { scan_llama3(pc, emit, three); });
      }
      case PreTokenizer::default_: {
        pieces = isolate(cps, flags, pieces, false, [](std::uint32_t c, std::uint8_t f) {
          return has_class(f, CpClass::punctuation) || c == '$' || c == '+' || c == '<' || c == '=' || c == '>' ||
                 c == '^' || c == '~' || c == '|';
        });
        pieces = gpt2(pieces);
        pieces = isolate(cps, flags, pieces, false, [](std::uint32_t, std::uint8_t f) { return is_number(f); });
        // [0-9][0-9][0-9]: leftmost non-overlapping triples of ASCII digits.
        return split_pieces(cps, flags, pieces, [](const Piece& pc, auto& emit) {
          const auto digit = [&](std::size_t p) { return pc.cp(p) >= '0' && pc.cp(p) <= '9'; };
          for (std::size_t p = pc.begin; p + 3 <= pc.end;) {
            if (digit(p) && digit(p + 1) && digit(p + 2)) {
              emit(p);
              emit(p += 3);
            } else {
              ++p;
            }
          }
        });
      }
    }
    return pieces;
  }

  // Steps 2-4 for one raw fragment.
  void encode_fragment(std::string_view raw, std::unordered_map<std::string, std::vector<int>>& cache,
                       std::vector<int>& out) const {
    const std::vector<std::uint32_t> cps = bpe_detail::decode_utf8(raw);
    std::size_t at = 0;
    std::string word;
    for (std::size_t len : split_words(cps)) {
      word.clear();
      for (std::size_t k = at; k < at + len; ++k) bpe_detail::append_utf8(word, cps[k]);
      at += len;
      auto it = cache.find(word);
      if (it == cache.end()) it = cache.emplace(word, bpe_word(word)).first;
      out.insert(out.end(), it->second.begin(), it->second.end());
    }
  }

  // Step 4: byte-level mapping and merges for one word (UTF-8 bytes).
  std::vector<int> bpe_word(const std::string& word) const {
    const auto& bm = bpe_detail::byte_map();
    std::vector<int> result;
    if (flags_.ignore_merges) {
      std::string encoded;
      for (unsigned char b : word) encoded += bm.byte_to_text[b];
      const int id = find(encoded);
      if (id >= 0) return {id};
    }
    struct Symbol {
      int piece;  // piece id, or -1 for a text that no token or merge knows
      int prev, next;
      bool alive;
      const std::string* text;  // the byte's mapped text, for pieces that are unknown
    };
    std::vector<Symbol> sym;
    sym.reserve(word.size());
    for (unsigned char b : word) {
      const auto it = piece_ids_.find(bm.byte_to_text[b]);
      const int n = static_cast<int>(sym.size());
      sym.push_back({it == piece_ids_.end() ? -1 : it->second, n - 1, n + 1, true, &bm.byte_to_text[b]});
    }
    if (!sym.empty()) sym.back().next = -1;
    struct Candidate {
      int rank, left, right, left_piece, right_piece;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    const auto consider = [&](int l, int r) {
      if (l < 0 || r < 0 || sym[static_cast<std::size_t>(l)].piece < 0 || sym[static_cast<std::size_t>(r)].piece < 0)
        return;
      const auto m = merges_.find(pair_key(sym[static_cast<std::size_t>(l)].piece, sym[static_cast<std::size_t>(r)].piece));
      if (m == merges_.end()) return;
      queue.push({m->second.rank, l, r, sym[static_cast<std::size_t>(l)].piece, sym[static_cast<std::size_t>(r)].piece});
    };
    for (int i = 0; i + 1 < static_cast<int>(sym.size()); ++i) consider(i, i + 1);
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      Symbol& L = sym[static_cast<std::size_t>(c.left)];
      Symbol& R = sym[static_cast<std::size_t>(c.right)];
      // Outdated when either side has changed since the pair was queued.
      if (!L.alive || !R.alive || L.next != c.right || L.piece != c.left_piece || R.piece != c.right_piece) continue;
      L.piece = merges_.at(pair_key(c.left_piece, c.right_piece)).result;
      R.alive = false;
      L.next = R.next;
      if (R.next >= 0) sym[static_cast<std::size_t>(R.next)].prev = c.left;
      consider(L.prev, c.left);
      consider(c.left, L.next);
    }
    for (int i = sym.empty() ? -1 : 0; i >= 0; i = sym[static_cast<std::size_t>(i)].next) {
      const Symbol& s = sym[static_cast<std::size_t>(i)];
      const int token = s.piece >= 0 ? pieces_[static_cast<std::size_t>(s.piece)].token : -1;
      if (token >= 0) {
        result.push_back(token);
        continue;
      }
      // Not a token: each byte of the symbol's text on its own, where that byte is a token.
      const std::string& text = s.piece >= 0 ? pieces_[static_cast<std::size_t>(s.piece)].text : *s.text;
      for (char ch : text) {
        const int id = find(std::string(1, ch));
        if (id >= 0) result.push_back(id);
      }
    }
    return result;
  }

  // Inverse byte mapping of a normal token's text (llama_decode_text).
  static std::string decode_byte_level(const std::string& text) {
    const auto& bm = bpe_detail::byte_map();
    std::string out;
    for (std::size_t i = 0; i < text.size();) {
      const std::uint32_t cp = bpe_detail::next_codepoint(text, i);
      if (cp < 324 && bm.cp_to_byte[cp] >= 0) {
        out += static_cast<char>(bm.cp_to_byte[cp]);
        continue;
      }
      std::string utf8;
      bpe_detail::append_utf8(utf8, cp);
      out += "[UNK_BYTE_0x";
      char hex[3];
      for (unsigned char b : utf8) {
        std::snprintf(hex, sizeof hex, "%02x", b);
        out += hex;
      }
      out += text + "]";
    }
    return out;
  }

  // <0xAB> byte tokens (not used by byte-level vocabularies, but a type llama.cpp knows):
  // the hex digits at 3..4, read as strtol reads them (a malformed text gives 0).
  static unsigned byte_of_token(const std::string& text) {
    const auto hexval = [](char c) {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    };
    unsigned v = 0;
    for (std::size_t k = 3; k < 5 && k < text.size() && hexval(text[k]) >= 0; ++k) v = v * 16 + static_cast<unsigned>(hexval(text[k]));
    return v & 0xFF;
  }

  // llama_detokenize's clean_spaces passes.
  static std::string clean_spaces(const std::string& in) {
    std::string t = in;
    // " ?" " !" " ." " ," lose the space.
    std::string a;
    for (std::size_t i = 0; i < t.size(); ++i) {
      const char x = t[i];
      if (i > 0 && t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) a.pop_back();
      a += x;
    }
    // " ' " becomes "'". llama.cpp blanks the dropped space in place ('\0'), so the
    // character after it never sees a space before it (" ' ' " loses only two spaces).
    std::string b;
    for (std::size_t i = 0; i < a.size(); ++i) {
      const char x = a[i];
      if (i > 0 && x == '\'' && i + 1 < a.size() && a[i - 1] == ' ' && a[i + 1] == ' ') {
        b.pop_back();
        b += x;
        a[++i] = '\0';  // the space after it goes too
        continue;
      }
      b += x;
    }
    // " 's" " 'm" " 're" " 've" lose the space (" 't" " 'd" " 'll" keep it).
    std::string c;
    for (std::size_t i = 0; i < b.size(); ++i) {
      const char x = b[i];
      if (i > 0 && b[i - 1] == ' ' && x == '\'' && i + 1 < b.size()) {
        const char x1 = b[i + 1];
        const bool two = i + 2 < b.size();
        if (x1 == 's' || x1 == 'm' || (two && ((x1 == 'r' && b[i + 2] == 'e') || (x1 == 'v' && b[i + 2] == 'e'))))
          c.pop_back();
      }
      c += x;
    }
    return c;
  }

  std::vector<std::string> tokens_;
  std::vector<TokenType> types_;
  std::vector<bool> lstrip_, rstrip_;
  PreTokenizer pre_ = PreTokenizer::gpt2;
  BpeSpecialIds special_;
  BpeFlags flags_;
  std::unordered_map<std::string, int> piece_ids_;  // token texts and merge results -> piece id
  std::vector<PieceInfo> pieces_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::vector<int> special_order_;
};

}  // namespace nibble::model
