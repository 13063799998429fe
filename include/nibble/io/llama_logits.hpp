// llama.cpp's saved-logits file, the "base" of `llama-perplexity --kl-divergence`:
// written by `llama-perplexity --kl-divergence-base FILE` and read back by
// `llama-perplexity --kl-divergence --kl-divergence-base FILE` (llama.cpp 0c1e570).
// nibble reads such a file (to measure KL against llama.cpp's own run) and writes one
// (so llama.cpp measures KL against nibble's run).
//
// Layout, little-endian:
//   "_logits_" | i32 n_ctx | i32 n_vocab | i32 n_chunk | i32 tokens[n_chunk · n_ctx]
//   then, for each chunk, for each scored position (n_ctx − 1 − n_ctx/2 of them, as in
//   the perplexity protocol) one record of nv = 2·ceil(n_vocab / 2) + 4 u16 words:
//     f32 scale, f32 min_log_prob (the first 4 words), then n_vocab u16 codes q_i
//     (padding to nv words is zero). log p_i = scale · q_i + min_log_prob.
//   The writer sets min_logit = max(min logit, max logit − 16), so the codes cover the
//   16 nats below the most likely token; q_i = round((logit_i − min_logit) / scale)
//   with scale = (max − min_logit) / 65535, and 0 for logits at or below min_logit.
// KL(base ‖ model) per position is Σ_i p_base,i · (log p_base,i − log p_model,i) over
// the entries with log p_base,i > −16, as llama.cpp sums it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "binary.hpp"

namespace nibble::io {

struct LlamaLogitsHeader {
  int n_ctx = 0, n_vocab = 0, n_chunk = 0;
  std::size_t scored_per_chunk() const { return static_cast<std::size_t>(n_ctx - 1 - n_ctx / 2); }
  std::size_t record_words() const { return 2 * ((static_cast<std::size_t>(n_vocab) + 1) / 2) + 4; }
};

// Reads a whole base file (memory-mapped) and hands out one position's log-probs at a time.
class LlamaLogitsReader {
 public:
  static LlamaLogitsReader open(const std::string& path) {
    try {
      return LlamaLogitsReader(FileBytes::open(path));
    } catch (const Error& e) {
      throw Error(std::string(e.what()) + " ('" + path + "')");
    }
  }
  static LlamaLogitsReader from_bytes(std::vector<std::uint8_t> bytes) {
    return LlamaLogitsReader(FileBytes::from_vector(std::move(bytes)));
  }

  const LlamaLogitsHeader& header() const { return h_; }
  const std::vector<int>& tokens() const { return tokens_; }

  // Log-probabilities (n_vocab values) of scored position t of chunk c.
  void log_probs(std::size_t c, std::size_t t, float* out) const {
    detail::require(c < static_cast<std::size_t>(h_.n_chunk) && t < h_.scored_per_chunk(), "llama logits: position ",
                    c, "/", t, " is out of range");
    const std::uint8_t* rec = records_ + (c * h_.scored_per_chunk() + t) * h_.record_words() * 2;
    float scale, min_log_prob;
    std::memcpy(&scale, rec, 4);
    std::memcpy(&min_log_prob, rec + 4, 4);
    detail::require(std::isfinite(scale) && std::isfinite(min_log_prob) && scale >= 0.0f, "llama logits: record ", c,
                    "/", t, " has a bad scale");
    const std::uint8_t* q = rec + 8;
    for (int i = 0; i < h_.n_vocab; ++i) {
      const std::uint16_t v = static_cast<std::uint16_t>(q[2 * i] | (q[2 * i + 1] << 8));
      out[i] = scale * static_cast<float>(v) + min_log_prob;
    }
  }

 private:
  explicit LlamaLogitsReader(FileBytes file) : file_(std::move(file)) {
    Cursor c(file_.view(), "llama logits");
    const std::uint8_t* magic = c.take(8, "magic");
    detail::require(std::memcmp(magic, "_logits_", 8) == 0, "llama logits: wrong magic (expected \"_logits_\")");
    h_.n_ctx = c.read<std::int32_t>("n_ctx");
    h_.n_vocab = c.read<std::int32_t>("n_vocab");
    h_.n_chunk = c.read<std::int32_t>("n_chunk");
    detail::require(h_.n_ctx >= 4 && h_.n_ctx <= (1 << 20), "llama logits: n_ctx ", h_.n_ctx, " is out of range");
    detail::require(h_.n_vocab >= 1 && h_.n_vocab <= (1 << 22), "llama logits: n_vocab ", h_.n_vocab,
                    " is out of range");
    detail::require(h_.n_chunk >= 1 && h_.n_chunk <= (1 << 20), "llama logits: n_chunk ", h_.n_chunk,
                    " is out of range");
    const std::uint64_t n_tokens = static_cast<std::uint64_t>(h_.n_chunk) * static_cast<std::uint64_t>(h_.n_ctx);
    const std::uint8_t* t = c.take(n_tokens * 4, "tokens");
    tokens_.resize(n_tokens);
    for (std::size_t i = 0; i < n_tokens; ++i) {
      std::int32_t v;
      std::memcpy(&v, t + 4 * i, 4);
      detail::require(v >= 0 && v < h_.n_vocab, "llama logits: token ", i, " = ", v, " is out of range");
      tokens_[i] = v;
    }
    const std::uint64_t bytes = static_cast<std::uint64_t>(h_.n_chunk) * h_.scored_per_chunk() * h_.record_words() * 2;
    detail::require(c.remaining() == bytes, "llama logits: ", c.remaining(), " bytes of records, expected ", bytes,
                    " for ", h_.n_chunk, " chunks of ", h_.scored_per_chunk(), " positions");
    records_ = c.take(bytes, "records");
  }

  FileBytes file_;
  LlamaLogitsHeader h_;
  std::vector<int> tokens_;
  const std::uint8_t* records_ = nullptr;
};

// Writes a base file: header and tokens first, then add() once per scored position in
// order. Written to PATH.part and renamed by finish(), so a partial file never sits
// under the final name.
class LlamaLogitsWriter {
 public:
  LlamaLogitsWriter(const std::string& path, const LlamaLogitsHeader& h, const std::vector<int>& tokens)
      : path_(path), h_(h), out_(path + ".part", std::ios::binary) {
    detail::require(static_cast<bool>(out_), "cannot write '", path, ".part'");
    detail::require(tokens.size() == static_cast<std::size_t>(h.n_chunk) * static_cast<std::size_t>(h.n_ctx),
                    "llama logits: ", tokens.size(), " tokens for ", h.n_chunk, " chunks of ", h.n_ctx);
    out_.write("_logits_", 8);
    put(h.n_ctx);
    put(h.n_vocab);
    put(h.n_chunk);
    for (int t : tokens) put(t);
    record_.assign(h.record_words(), 0);
  }

  // One scored position: its logits (or log-probabilities: the encoding is shift-invariant).
  void add(const float* logits) {
    float mx = logits[0], mn = logits[0];
    for (int i = 1; i < h_.n_vocab; ++i) {
      mx = std::max(mx, logits[i]);
      mn = std::min(mn, logits[i]);
    }
    mn = std::max(mn, mx - 16.0f);
    double sum = 0.0;
    for (int i = 0; i < h_.n_vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
    const float lse = static_cast<float>(std::log(sum));
    const float min_log_prob = mn - mx - lse;
    const float scale = (mx - mn) / 65535.0f;
    std::fill(record_.begin(), record_.end(), std::uint16_t{0});
    std::memcpy(record_.data(), &scale, 4);
    std::memcpy(record_.data() + 2, &min_log_prob, 4);
    if (scale > 0.0f) {
      const float inv = 1.0f / scale;
      for (int i = 0; i < h_.n_vocab; ++i)
        record_[4 + static_cast<std::size_t>(i)] =
            logits[i] > mn ? static_cast<std::uint16_t>(std::nearbyint(inv * (logits[i] - mn))) : std::uint16_t{0};
    }
    out_.write(reinterpret_cast<const char*>(record_.data()), static_cast<std::streamsize>(record_.size() * 2));
    ++written_;
  }

  void finish() {
    const std::size_t expected = static_cast<std::size_t>(h_.n_chunk) * h_.scored_per_chunk();
    detail::require(written_ == expected, "llama logits: ", written_, " positions written, expected ", expected);
    out_.close();
    detail::require(!out_.fail(), "error while writing '", path_, ".part'");
    detail::require(std::rename((path_ + ".part").c_str(), path_.c_str()) == 0, "cannot rename '", path_,
                    ".part' to '", path_, "'");
  }

 private:
  void put(std::int32_t v) { out_.write(reinterpret_cast<const char*>(&v), 4); }

  std::string path_;
  LlamaLogitsHeader h_;
  std::ofstream out_;
  std::vector<std::uint16_t> record_;
  std::size_t written_ = 0;
};

// KL(base ‖ model) of one position, as llama-perplexity sums it: entries with
// log p_base > −16 only. model_log_probs must be normalized log-probabilities.
inline double kl_from_base(const float* base_log_probs, const float* model_log_probs, int n_vocab) {
  double kl = 0.0;
  for (int i = 0; i < n_vocab; ++i) {
    const double b = base_log_probs[i];
    if (b > -16.0) kl += std::exp(b) * (b - static_cast<double>(model_log_probs[i]));
  }
  return kl;
}

}  // namespace nibble::io
