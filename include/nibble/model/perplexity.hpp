// Perplexity and KL divergence with llama.cpp's protocol (`llama-perplexity -c N`), so
// nibble's figures line up with llama.cpp's on the same text and weights:
//   * the whole text is tokenized once (BOS first when the tokenizer adds one);
//   * it is cut into floor(tokens / n_ctx) chunks of n_ctx tokens; a partial tail is
//     dropped; each chunk runs on its own from an empty KV cache;
//   * when the model adds BOS, the first token of every chunk is replaced by BOS;
//   * only the second half is scored: logits of positions first .. n_ctx − 2, with
//     first = n_ctx / 2, predict tokens first + 1 .. n_ctx − 1 (n_ctx − 1 − first
//     tokens per chunk);
//   * perplexity = exp(mean negative log-likelihood over every scored token).
// KL(reference ‖ model) is averaged over the same tokens, the reference being another
// model (e.g. the fp32 one) run on each chunk alongside, so no logits are stored.
#pragma once

#include <chrono>
#include <cmath>
#include <functional>
#include <vector>

#include "../core/error.hpp"
#include "transformer.hpp"

namespace nibble::model {

struct PerplexityOptions {
  int n_ctx = 512;
  bool add_bos = false;  // replace each chunk's first token by bos_id
  int bos_id = 1;
  int max_chunks = 0;    // 0: every full chunk
  // Called after each chunk with its index and the total.
  std::function<void(std::size_t, std::size_t)> progress;
  // Called with each chunk's scored log-probabilities ((n_ctx − 1 − n_ctx/2) × vocab).
  std::function<void(std::size_t, const RowMatrixXf&)> on_chunk;
};

struct PerplexityResult {
  std::vector<double> chunk_nll;  // per chunk, summed over its scored tokens (nats)
  std::vector<double> chunk_kl;   // per chunk, summed (when a reference was given)
  std::vector<double> reference_chunk_nll;  // the reference model's, per chunk
  std::size_t tokens_per_chunk = 0;
  double seconds = 0.0;

  std::size_t scored() const { return chunk_nll.size() * tokens_per_chunk; }
  double perplexity() const { return exp_mean(chunk_nll); }
  double reference_perplexity() const { return exp_mean(reference_chunk_nll); }
  double exp_mean(const std::vector<double>& nll) const {
    double s = 0.0;
    for (double v : nll) s += v;
    return std::exp(s / static_cast<double>(scored()));
  }
  double mean_kl() const {
    double s = 0.0;
    for (double v : chunk_kl) s += v;
    return chunk_kl.empty() ? 0.0 : s / static_cast<double>(scored());
  }
  // Tokens run through the model per second (every position of every chunk).
  double tokens_per_second(int n_ctx) const {
    return seconds > 0.0 ? static_cast<double>(chunk_nll.size()) * n_ctx / seconds : 0.0;
  }
};

// Runs the protocol on `model`, and on `reference` too when given (adding KL and the
// reference's own perplexity).
inline PerplexityResult llama_perplexity(const Transformer& model, const std::vector<int>& tokens,
                                         const PerplexityOptions& o, const Transformer* reference = nullptr) {
  detail::require(o.n_ctx >= 4 && o.n_ctx % 2 == 0, "perplexity: context ", o.n_ctx, " (expected an even n >= 4)");
  std::size_t n_chunks = tokens.size() / static_cast<std::size_t>(o.n_ctx);
  if (o.max_chunks > 0) n_chunks = std::min(n_chunks, static_cast<std::size_t>(o.max_chunks));
  detail::require(n_chunks >= 1, "perplexity: the text has ", tokens.size(), " tokens, fewer than one chunk of ",
                  o.n_ctx, " (llama-perplexity needs at least 2·n_ctx)");
  const int first = o.n_ctx / 2;
  PerplexityResult res;
  res.tokens_per_chunk = static_cast<std::size_t>(o.n_ctx - 1 - first);
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < n_chunks; ++i) {
    std::vector<int> chunk(tokens.begin() + static_cast<std::ptrdiff_t>(i * o.n_ctx),
                           tokens.begin() + static_cast<std::ptrdiff_t>((i + 1) * o.n_ctx));
    if (o.add_bos) chunk[0] = o.bos_id;
    auto scored_log_probs = [&](const Transformer& m) {
      KvCache cache = m.new_cache(o.n_ctx);
      const RowMatrixXf logits = m.forward(chunk, cache);
      return log_softmax_rows(logits.middleRows(first, o.n_ctx - 1 - first));
    };
    auto nll_of = [&](const RowMatrixXf& lp) {
      double nll = 0.0;
      for (Eigen::Index t = 0; t < lp.rows(); ++t) nll -= lp(t, chunk[static_cast<std::size_t>(first + 1 + t)]);
      return nll;
    };
    const RowMatrixXf lp = scored_log_probs(model);
    res.chunk_nll.push_back(nll_of(lp));
    if (reference) {
      const RowMatrixXf ref = scored_log_probs(*reference);
      double kl = 0.0;
      for (Eigen::Index t = 0; t < lp.rows(); ++t)
        for (Eigen::Index v = 0; v < lp.cols(); ++v)
          kl += std::exp(static_cast<double>(ref(t, v))) * (static_cast<double>(ref(t, v)) - lp(t, v));
      res.chunk_kl.push_back(kl);
      res.reference_chunk_nll.push_back(nll_of(ref));
    }
    if (o.on_chunk) o.on_chunk(i, lp);
    if (o.progress) o.progress(i + 1, n_chunks);
  }
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

}  // namespace nibble::model
