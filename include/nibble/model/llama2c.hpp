// Loader for llama2.c checkpoints (legacy "version 0" fp32 export) and tokenizers.
//
// The model side of nibble: enough of a Llama-2 style model to quantize a real
// checkpoint and measure what each method costs. Every value read from a file is
// validated; a truncated, oversized or lying file is a nibble::Error, never a crash.
//
// Checkpoint layout (all little-endian):
//   header   7 × int32: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
//            (vocab_size < 0 means a separate classifier follows at the end)
//   tensors  fp32, row-major (out_features, in_features), per-layer tensors stacked layer-major:
//            token_embedding[vocab][dim], rms_att[L][dim], wq[L][dim][dim], wk[L][kv_dim][dim],
//            wv[L][kv_dim][dim], wo[L][dim][dim], rms_ffn[L][dim], w1[L][hidden][dim],
//            w2[L][dim][hidden], w3[L][hidden][dim], rms_final[dim],
//            freq_cis_real[seq_len][head_size/2], freq_cis_imag[same] (legacy RoPE tables, unused),
//            wcls[vocab][dim] only when vocab_size < 0.
//
// Tokenizer layout: int32 max_token_length, then per piece (vocab_size pieces, a count the
// file does not store): float32 score, int32 byte length n, n raw bytes.
#pragma once

#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../quant/rtn.hpp"
#include "llama_weights.hpp"

namespace nibble::model {

namespace file_detail {

inline std::vector<std::uint8_t> read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  nibble::detail::require(static_cast<bool>(in), "cannot open '", path, "'");
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nibble::detail::require(!in.bad(), "error while reading '", path, "'");
  return bytes;
}

// Reads little-endian values from a byte buffer, refusing to run past its end.
class ByteReader {
 public:
  ByteReader(const std::uint8_t* data, std::size_t size, const char* what) : data_(data), size_(size), what_(what) {}

  std::size_t offset() const { return offset_; }
  std::size_t remaining() const { return size_ - offset_; }

  void need(std::size_t n, const char* field) const {
    nibble::detail::require(n <= remaining(), what_, " is truncated: ", field, " needs ", n, " bytes at offset ",
                            offset_, ", only ", remaining(), " left");
  }
  std::uint32_t u32(const char* field) {
    need(4, field);
    const std::uint8_t* p = data_ + offset_;
    offset_ += 4;
    return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
           (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
  }
  std::int32_t i32(const char* field) {
    const std::uint32_t u = u32(field);
    std::int32_t v;
    std::memcpy(&v, &u, 4);
    return v;
  }
  float f32(const char* field) {
    const std::uint32_t u = u32(field);
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  }
  // n floats into dst, each required finite.
  void floats(float* dst, std::size_t n, const char* field) {
    need(n * 4, field);
    for (std::size_t i = 0; i < n; ++i) {
      dst[i] = f32(field);
      nibble::detail::require(std::isfinite(dst[i]), what_, ": ", field, " has a non-finite value (", dst[i],
                              ") at element ", i);
    }
  }
  std::string bytes(std::size_t n, const char* field) {
    need(n, field);
    std::string s(reinterpret_cast<const char*>(data_ + offset_), n);
    offset_ += n;
    return s;
  }
  void skip(std::size_t n, const char* field) {
    need(n, field);
    offset_ += n;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t offset_ = 0;
  const char* what_;
};

inline void check_range(const char* name, long long value, long long lo, long long hi) {
  nibble::detail::require(value >= lo && value <= hi, "llama2.c header: ", name, " = ", value, " is out of range (expected ",
                          lo, "..", hi, ")");
}

}  // namespace file_detail

// Bytes a checkpoint with this config has (header, weights, legacy RoPE tables, classifier).
inline std::uint64_t expected_checkpoint_bytes(const LlamaConfig& c) {
  const std::uint64_t dim = c.dim, hidden = c.hidden_dim, L = c.n_layers, kv = c.kv_dim(), vocab = c.vocab_size;
  std::uint64_t floats = vocab * dim;                            // token_embedding
  floats += L * dim * 2;                                         // rms_att, rms_ffn
  floats += L * (dim * dim * 2 + kv * dim * 2);                  // wq, wo, wk, wv
  floats += L * hidden * dim * 3;                                // w1, w2, w3
  floats += dim;                                                 // rms_final
  floats += static_cast<std::uint64_t>(c.seq_len) * (c.head_size() / 2) * 2;  // freq_cis real + imag
  if (!c.shared_classifier) floats += vocab * dim;
  return 28 + 4 * floats;
}

inline LlamaWeights parse_llama2c_checkpoint(const std::uint8_t* data, std::size_t size) {
  file_detail::ByteReader in(data, size, "llama2.c checkpoint");
  LlamaConfig c;
  c.dim = in.i32("header");
  c.hidden_dim = in.i32("header");
  c.n_layers = in.i32("header");
  c.n_heads = in.i32("header");
  c.n_kv_heads = in.i32("header");
  const std::int32_t vocab = in.i32("header");
  c.seq_len = in.i32("header");
  nibble::detail::require(vocab != std::numeric_limits<std::int32_t>::min(), "llama2.c header: vocab_size ", vocab,
                          " is out of range");
  c.shared_classifier = vocab > 0;
  c.vocab_size = vocab > 0 ? vocab : -vocab;
  validate_config(c, "llama2.c header");
  const std::uint64_t expected = expected_checkpoint_bytes(c);
  nibble::detail::require(expected == size, "llama2.c checkpoint: the header (dim ", c.dim, ", hidden_dim ",
                          c.hidden_dim, ", n_layers ", c.n_layers, ", n_heads ", c.n_heads, ", n_kv_heads ",
                          c.n_kv_heads, ", vocab_size ", vocab, ", seq_len ", c.seq_len, ") needs ", expected,
                          " bytes, the file has ", size);

  LlamaWeights w;
  w.config = c;
  const Eigen::Index dim = c.dim, hidden = c.hidden_dim, kv = c.kv_dim(), V = c.vocab_size;
  auto read_matrix = [&](Eigen::Index rows, Eigen::Index cols, const char* name) {
    RowMatrixXf m(rows, cols);
    in.floats(m.data(), static_cast<std::size_t>(rows * cols), name);
    return m;
  };
  w.token_embedding = read_matrix(V, dim, "token_embedding");
  w.layers.resize(static_cast<std::size_t>(c.n_layers));
  // Per-layer tensors are stacked by tensor, then by layer.
  auto read_vectors = [&](Eigen::VectorXf LlamaLayer::*member, const char* name) {
    for (auto& layer : w.layers) {
      (layer.*member).resize(dim);
      in.floats((layer.*member).data(), static_cast<std::size_t>(dim), name);
    }
  };
  auto read_matrices = [&](StoredMatrix LlamaLayer::*member, Eigen::Index rows, Eigen::Index cols, const char* name) {
    for (auto& layer : w.layers) layer.*member = read_matrix(rows, cols, name);
  };
  read_vectors(&LlamaLayer::rms_att, "rms_att");
  read_matrices(&LlamaLayer::wq, dim, dim, "wq");
  read_matrices(&LlamaLayer::wk, kv, dim, "wk");
  read_matrices(&LlamaLayer::wv, kv, dim, "wv");
  read_matrices(&LlamaLayer::wo, dim, dim, "wo");
  read_vectors(&LlamaLayer::rms_ffn, "rms_ffn");
  read_matrices(&LlamaLayer::w1, hidden, dim, "w1");
  read_matrices(&LlamaLayer::w2, dim, hidden, "w2");
  read_matrices(&LlamaLayer::w3, hidden, dim, "w3");
  w.rms_final.resize(dim);
  in.floats(w.rms_final.data(), static_cast<std::size_t>(dim), "rms_final");
  in.skip(static_cast<std::size_t>(c.seq_len) * static_cast<std::size_t>(c.head_size() / 2) * 2 * 4, "freq_cis");
  if (!c.shared_classifier) w.wcls = read_matrix(V, dim, "wcls");
  return w;
}

inline LlamaWeights load_llama2c_checkpoint(const std::string& path) {
  const std::vector<std::uint8_t> bytes = file_detail::read_whole_file(path);
  try {
    return parse_llama2c_checkpoint(bytes.data(), bytes.size());
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " ('" + path + "')");
  }
}

// SentencePiece-style BPE tokenizer with llama2.c's encode/decode rules.
class Tokenizer {
 public:
  static constexpr int kUnk = 0, kBos = 1, kEos = 2;

  Tokenizer() = default;
  Tokenizer(std::vector<std::string> pieces, std::vector<float> scores, int max_token_length)
      : pieces_(std::move(pieces)), scores_(std::move(scores)), max_token_length_(max_token_length) {
    nibble::detail::require(pieces_.size() == scores_.size(), "tokenizer: ", pieces_.size(), " pieces but ",
                            scores_.size(), " scores");
    nibble::detail::require(pieces_.size() >= 3 + 256, "tokenizer: ", pieces_.size(),
                            " pieces; expected at least 259 (<unk>, BOS, EOS and 256 byte pieces)");
    // The first id wins for a repeated piece, deterministically.
    for (std::size_t i = 0; i < pieces_.size(); ++i) lookup_.emplace(pieces_[i], static_cast<int>(i));
  }

  int vocab_size() const { return static_cast<int>(pieces_.size()); }
  int max_token_length() const { return max_token_length_; }
  const std::string& piece(int id) const { return pieces_.at(static_cast<std::size_t>(id)); }
  float score(int id) const { return scores_.at(static_cast<std::size_t>(id)); }

  // Id of an exact piece, or -1.
  int find(const std::string& piece) const {
    const auto it = lookup_.find(piece);
    return it == lookup_.end() ? -1 : it->second;
  }

  // llama2.c encode: optional BOS, a dummy-prefix space piece for non-empty text, one
  // piece per UTF-8 code point (unknown ones as byte pieces <0xHH> = id byte+3), then
  // repeated merging of the adjacent pair whose concatenation is the highest-scoring
  // piece (leftmost pair on ties).
  std::vector<int> encode(const std::string& text, bool bos = true, bool eos = false) const {
    std::vector<int> tokens;
    if (bos) tokens.push_back(kBos);
    if (!text.empty()) {
      const int space = find(" ");
      nibble::detail::require(space >= 0, "tokenizer has no \" \" piece for the dummy prefix");
      tokens.push_back(space);
    }
    for (std::size_t i = 0; i < text.size();) {
      // A code point is a lead byte plus up to three continuation bytes (10xxxxxx).
      std::size_t n = 1;
      while (i + n < text.size() && n < 4 && (static_cast<unsigned char>(text[i + n]) & 0xC0) == 0x80) ++n;
      const int id = find(text.substr(i, n));
      if (id >= 0) {
        tokens.push_back(id);
      } else {
        for (std::size_t k = 0; k < n; ++k) tokens.push_back(static_cast<unsigned char>(text[i + k]) + 3);
      }
      i += n;
    }
    // merged[i] = id of the piece tokens[i] + tokens[i+1] (or -1); only the two pairs
    // next to a merge change, so each round is a scan over integers.
    auto pair_id = [&](std::size_t i) {
      if (tokens[i] == kBos || tokens[i + 1] == kBos) return -1;
      return find(pieces_[static_cast<std::size_t>(tokens[i])] + pieces_[static_cast<std::size_t>(tokens[i + 1])]);
    };
    std::vector<int> merged;
    for (std::size_t i = 0; i + 1 < tokens.size(); ++i) merged.push_back(pair_id(i));
    for (;;) {
      float best_score = -1e10f;
      int best_id = -1;
      std::size_t best_at = 0;
      for (std::size_t i = 0; i < merged.size(); ++i) {
        const int id = merged[i];
        if (id >= 0 && scores_[static_cast<std::size_t>(id)] > best_score) {  // strict: leftmost wins ties
          best_score = scores_[static_cast<std::size_t>(id)];
          best_id = id;
          best_at = i;
        }
      }
      if (best_id < 0) break;
      tokens[best_at] = best_id;
      tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
      merged.erase(merged.begin() + static_cast<std::ptrdiff_t>(best_at));
      if (best_at < merged.size()) merged[best_at] = pair_id(best_at);
      if (best_at > 0) merged[best_at - 1] = pair_id(best_at - 1);
    }
    if (eos) tokens.push_back(kEos);
    return tokens;
  }

  // Text of one token as llama2.c prints it: a piece after BOS loses its leading
  // space, and <0xHH> pieces are the raw byte.
  std::string decode_token(int previous, int token) const {
    nibble::detail::require(token >= 0 && token < vocab_size(), "token id ", token, " is out of range (vocab ",
                            vocab_size(), ")");
    std::string p = pieces_[static_cast<std::size_t>(token)];
    if (previous == kBos && !p.empty() && p[0] == ' ') p.erase(0, 1);
    unsigned byte = 0;
    if (p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>' && parse_hex_byte(p[3], p[4], byte))
      return std::string(1, static_cast<char>(byte));
    return p;
  }

  // Text of a token sequence; BOS and EOS produce nothing.
  std::string decode(const std::vector<int>& tokens) const {
    std::string out;
    int previous = -1;
    for (int t : tokens) {
      if (t != kBos && t != kEos) out += decode_token(previous, t);
      previous = t;
    }
    return out;
  }

 private:
  static bool parse_hex_byte(char hi, char lo, unsigned& byte) {
    auto digit = [](char ch) -> int {
      if (ch >= '0' && ch <= '9') return ch - '0';
      if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
      if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
      return -1;
    };
    const int h = digit(hi), l = digit(lo);
    if (h < 0 || l < 0) return false;
    byte = static_cast<unsigned>(h * 16 + l);
    return true;
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  int max_token_length_ = 0;
  std::unordered_map<std::string, int> lookup_;
};

// vocab_size comes from the model header: the tokenizer file does not store it. The
// file must end exactly after the last piece.
inline Tokenizer parse_tokenizer(const std::uint8_t* data, std::size_t size, int vocab_size) {
  nibble::detail::require(vocab_size >= 259 && vocab_size <= (1 << 21), "tokenizer: vocab_size ", vocab_size,
                          " is out of range (expected 259..", 1 << 21, ")");
  file_detail::ByteReader in(data, size, "tokenizer");
  const std::int32_t max_len = in.i32("max_token_length");
  nibble::detail::require(max_len >= 1 && max_len <= 1024, "tokenizer: max_token_length ", max_len,
                          " is out of range (expected 1..1024)");
  std::vector<std::string> pieces(static_cast<std::size_t>(vocab_size));
  std::vector<float> scores(static_cast<std::size_t>(vocab_size));
  for (int i = 0; i < vocab_size; ++i) {
    scores[static_cast<std::size_t>(i)] = in.f32("piece score");
    nibble::detail::require(std::isfinite(scores[static_cast<std::size_t>(i)]), "tokenizer: piece ", i,
                            " has a non-finite score");
    const std::int32_t n = in.i32("piece length");
    nibble::detail::require(n >= 0 && n <= 4 * max_len + 16, "tokenizer: piece ", i, " has length ", n,
                            " (expected 0..", 4 * max_len + 16, ")");
    pieces[static_cast<std::size_t>(i)] = in.bytes(static_cast<std::size_t>(n), "piece bytes");
  }
  nibble::detail::require(in.remaining() == 0, "tokenizer: ", in.remaining(), " unexpected bytes after ", vocab_size,
                          " pieces (is vocab_size right?)");
  return Tokenizer(std::move(pieces), std::move(scores), max_len);
}

inline Tokenizer load_tokenizer(const std::string& path, int vocab_size) {
  const std::vector<std::uint8_t> bytes = file_detail::read_whole_file(path);
  try {
    return parse_tokenizer(bytes.data(), bytes.size(), vocab_size);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " ('" + path + "')");
  }
}

// Splits text at a separator (TinyStories uses "<|endoftext|>") and trims surrounding
// whitespace; empty pieces are dropped.
inline std::vector<std::string> split_stories(const std::string& text, const std::string& separator = "<|endoftext|>") {
  std::vector<std::string> out;
  auto trim_push = [&](std::size_t b, std::size_t e) {
    while (b < e && std::isspace(static_cast<unsigned char>(text[b]))) ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(text[e - 1]))) --e;
    if (e > b) out.push_back(text.substr(b, e - b));
  };
  std::size_t start = 0;
  for (;;) {
    const std::size_t at = text.find(separator, start);
    if (at == std::string::npos) {
      trim_push(start, text.size());
      break;
    }
    trim_push(start, at);
    start = at + separator.size();
  }
  return out;
}

inline std::string read_text_file(const std::string& path) {
  const std::vector<std::uint8_t> bytes = file_detail::read_whole_file(path);
  return std::string(bytes.begin(), bytes.end());
}

}  // namespace nibble::model
