// Text generation with a Transformer: greedy, or temperature + top-p (nucleus) sampling
// with a seeded generator (the same seed gives the same story on every machine).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "llama2c.hpp"
#include "transformer.hpp"

namespace nibble::model {

struct SamplerConfig {
  float temperature = 0.0f;  // 0: greedy (argmax)
  float top_p = 0.9f;        // nucleus: sample among the most likely tokens covering top_p (1: all)
  std::uint64_t seed = 42;
};

struct Generation {
  std::vector<int> tokens;  // prompt tokens (with BOS) followed by the generated ones
  std::string text;         // the generated continuation, decoded
  std::size_t generated = 0;
  double seconds = 0.0;  // generation time, prompt processing included

  double tokens_per_second() const { return seconds > 0.0 ? static_cast<double>(generated) / seconds : 0.0; }
};

// Picks the next token from one row of logits.
class Sampler {
 public:
  explicit Sampler(const SamplerConfig& c) : config_(c), rng_(c.seed) {
    detail::require(std::isfinite(c.temperature) && c.temperature >= 0.0f, "temperature ", c.temperature,
                    " (expected >= 0; 0 = greedy)");
    detail::require(c.top_p > 0.0f && c.top_p <= 1.0f, "top_p ", c.top_p, " (expected 0 < top_p <= 1)");
  }

  int sample(const float* logits, int n) {
    if (config_.temperature == 0.0f) return static_cast<int>(std::max_element(logits, logits + n) - logits);
    std::vector<double> p(static_cast<std::size_t>(n));
    const double mx = *std::max_element(logits, logits + n);
    double sum = 0.0;
    for (int i = 0; i < n; ++i) sum += p[static_cast<std::size_t>(i)] = std::exp((logits[i] - mx) / config_.temperature);
    for (double& v : p) v /= sum;
    // Most likely first; ties by id so the order is fully determined.
    std::vector<int> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) {
      return p[static_cast<std::size_t>(a)] != p[static_cast<std::size_t>(b)]
                 ? p[static_cast<std::size_t>(a)] > p[static_cast<std::size_t>(b)] : a < b;
    });
    std::size_t keep = 0;
    double mass = 0.0;
    while (keep < order.size() && (keep == 0 || mass < config_.top_p)) mass += p[static_cast<std::size_t>(order[keep++])];
    // 53 random bits → [0, 1): the same on every standard library (unlike the distributions).
    const double coin = static_cast<double>(rng_() >> 11) * (1.0 / 9007199254740992.0) * mass;
    double acc = 0.0;
    for (std::size_t i = 0; i < keep; ++i) {
      acc += p[static_cast<std::size_t>(order[i])];
      if (coin < acc) return order[i];
    }
    return order[keep - 1];
  }

 private:
  SamplerConfig config_;
  std::mt19937_64 rng_;
};

// Continues `prompt` (encoded with BOS) by up to max_new_tokens tokens, one token per
// forward step through the KV cache. Stops at BOS or EOS (llama2.c's story delimiters)
// or at the model's seq_len.
inline Generation generate(const Transformer& model, const Tokenizer& tok, const std::string& prompt,
                           int max_new_tokens, const SamplerConfig& sampler_config = {}) {
  detail::require(max_new_tokens >= 0, "max_new_tokens ", max_new_tokens, " is negative");
  Sampler sampler(sampler_config);
  Generation g;
  g.tokens = tok.encode(prompt, true, false);
  detail::require(static_cast<int>(g.tokens.size()) < model.config.seq_len, "prompt of ", g.tokens.size(),
                  " tokens does not fit seq_len ", model.config.seq_len);
  const auto t0 = std::chrono::steady_clock::now();
  KvCache cache = model.new_cache(
      static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(model.config.seq_len),
                                             g.tokens.size() + static_cast<std::size_t>(max_new_tokens))));
  RowMatrixXf logits = model.forward(g.tokens, cache);
  for (int i = 0; i < max_new_tokens && cache.length < cache.capacity(); ++i) {
    const int next = sampler.sample(logits.row(logits.rows() - 1).data(), static_cast<int>(logits.cols()));
    if (next == Tokenizer::kBos || next == Tokenizer::kEos) break;
    g.text += tok.decode_token(g.tokens.back(), next);
    g.tokens.push_back(next);
    ++g.generated;
    if (cache.length >= cache.capacity()) break;
    logits = model.forward({next}, cache);
  }
  g.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return g;
}

// Token-level generation for any tokenizer: runs the prompt as one batch (prefill),
// then samples up to max_new_tokens one at a time through the KV cache, stopping after
// a token for which stop(id) is true (that token is kept). on_token(id) is called for
// every generated token as it appears (e.g. to print it).
struct TokenGeneration {
  std::vector<int> tokens;  // prompt, then generated tokens
  std::size_t prompt_tokens = 0, generated = 0;
  double prefill_seconds = 0.0, decode_seconds = 0.0;  // decode: every token after the first

  double prefill_tokens_per_second() const {
    return prefill_seconds > 0.0 ? static_cast<double>(prompt_tokens) / prefill_seconds : 0.0;
  }
  double decode_tokens_per_second() const {
    return decode_seconds > 0.0 && generated > 1 ? static_cast<double>(generated - 1) / decode_seconds : 0.0;
  }
};

template <class Stop, class OnToken>
TokenGeneration generate_tokens(const Transformer& model, const std::vector<int>& prompt, int max_new_tokens,
                                const SamplerConfig& sampler_config, Stop&& stop, OnToken&& on_token) {
  detail::require(!prompt.empty(), "generation needs a prompt of at least one token");
  detail::require(max_new_tokens >= 0, "max_new_tokens ", max_new_tokens, " is negative");
  const std::size_t capacity = prompt.size() + static_cast<std::size_t>(max_new_tokens);
  detail::require(capacity <= static_cast<std::size_t>(model.config.seq_len), "prompt (", prompt.size(),
                  " tokens) + ", max_new_tokens, " new tokens exceed the model's context of ", model.config.seq_len);
  Sampler sampler(sampler_config);
  TokenGeneration g;
  g.tokens = prompt;
  g.prompt_tokens = prompt.size();
  KvCache cache = model.new_cache(static_cast<int>(capacity));
  auto t0 = std::chrono::steady_clock::now();
  RowMatrixXf logits = model.forward_last(prompt, cache);
  g.prefill_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < max_new_tokens; ++i) {
    const int next = sampler.sample(logits.row(logits.rows() - 1).data(), static_cast<int>(logits.cols()));
    g.tokens.push_back(next);
    ++g.generated;
    on_token(next);
    if (i == 0) t0 = std::chrono::steady_clock::now();  // decode time counts from the first sampled token
    if (stop(next) || i + 1 == max_new_tokens) break;
    logits = model.forward({next}, cache);
  }
  if (g.generated > 1)
    g.decode_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return g;
}

}  // namespace nibble::model
