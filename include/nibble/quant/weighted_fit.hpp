// Importance-weighted fits of GGUF-style 4-bit blocks: 32 weights, one fp16 scale d,
// w ≈ d · v[code] with v the codebook's 16 values (int4_sym: −8…7, llama.cpp Q4_0's
// d·(q − 8); iq4_nl: llama.cpp's non-linear table). Each block minimises
//
//     E(d, q) = Σ_j imp_j · (x_j − d · v[q_j])²
//
// where imp_j is the importance of input column j, normally the mean squared
// activation llama-imatrix measured (io/imatrix.hpp). With uncorrelated activations,
// E is exactly the expected squared change of the layer's output caused by this
// block, which is the quantity worth minimising; imp = 1 gives the plain MSE fit.
//
// How the minimum is found. For a fixed inverse scale u = 1/d the best codes are the
// nearest ones, and code j only changes where u·x_j crosses a midpoint between two
// neighbouring table values. Sweeping u from 0 to +∞ (and, for negative d, to −∞)
// through those ≤ 15·32 crossing points visits every code assignment that nearest
// rounding can produce; for each, the least-squares d = Σ imp·x·v / Σ imp·v² and its
// error Σ imp·x² − (Σ imp·x·v)²/Σ imp·v² follow from running sums. The smallest of
// these is the exact minimum of E over real d (both signs, so the asymmetric int4 range
// is used either way round, and clipping the extreme is allowed whenever it pays).
// d is stored as fp16, so the best few continuous solutions are then rounded to fp16,
// their fp16 neighbours tried, codes re-chosen as the nearest for the d actually
// stored, and least-squares refits repeated until the error stops falling. Every
// candidate is scored by its exact error with the stored d; the first candidate is
// llama.cpp's plain Q4_0 scale, so the result is never worse than reference rounding.
//
// llama.cpp's own imatrix fit (ggml-quants.c, quantize_row_q4_0_impl /
// quantize_row_iq4_nl_impl) weights element j by imp_j·sqrt(σ² + x_j²), a blend of the
// importance and the weight's own magnitude (σ² is the row's or block's mean x²), and
// tries 19 (Q4_0) or 15 (IQ4_NL) scales around the absmax one, refitting d once for
// each; Q4_0 never considers the +7 end of the range for the extreme and codes are
// chosen with the fp32 d, not the fp16 one stored. Here the blend is not used: the
// imatrix already is the estimate of how much each column matters, and mixing in
// |x| would trade expected output error for a heuristic. The search is exhaustive
// instead of sampled. On the importance-weighted error this is never worse (measured
// in tests/imatrix_test.cpp); whether the blend helps perplexity more on a real model
// is a separate, empirical question.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "../core/workers.hpp"
#include "../format/codebook.hpp"
#include "../format/packing.hpp"
#include "../format/quantized_matrix.hpp"
#include "../format/scales.hpp"
#include "rtn.hpp"

namespace nibble {

inline constexpr std::size_t kWeightedFitMaxBlock = 32;

namespace weighted_detail {

inline void require_codebook(Codebook cb) {
  detail::require(cb == Codebook::int4_sym || cb == Codebook::iq4_nl, "weighted fit: codebook ", to_string(cb),
                  " is not supported (expected int4_sym for Q4_0 or iq4_nl for IQ4_NL)");
}

// Both supported tables are sorted ascending by code, and code 8 is the value nearest 0.
inline constexpr std::uint8_t kZeroCode = 8;

// The nearest table entry to x when the scale is d, judged on the decoded values
// themselves (so rounding in x / d can never pick the wrong neighbour). d = 0 decodes
// everything to 0; the zero code is used.
inline std::uint8_t nearest_code(float x, float d, Codebook cb, const std::array<float, 16>& v) {
  if (d == 0.0f) return kZeroCode;
  const float y = x / d;
  int k;
  if (cb == Codebook::int4_sym) {
    k = static_cast<int>(std::clamp(std::nearbyint(y), -8.0f, 7.0f)) + 8;
  } else {
    k = nearest_iq4_nl(y);
  }
  // x / d is rounded, so near a midpoint the neighbour on the residual's side may be
  // closer in exact arithmetic; d·v is exact in float for both tables.
  const double r = static_cast<double>(x) - static_cast<double>(d * v[k]);
  const int c = (r > 0) == (d > 0) ? k + 1 : k - 1;
  if (c >= 0 && c <= 15 && std::fabs(static_cast<double>(x) - static_cast<double>(d * v[c])) < std::fabs(r))
    return static_cast<std::uint8_t>(c);
  return static_cast<std::uint8_t>(k);
}

// Error with the stored scale and the nearest codes for it (written to `codes`).
inline double nearest_error(const float* x, const double* w, std::size_t n, float d, Codebook cb,
                            const std::array<float, 16>& v, std::uint8_t* codes) {
  double e = 0.0;
  for (std::size_t j = 0; j < n; ++j) {
    codes[j] = nearest_code(x[j], d, cb, v);
    const double r = static_cast<double>(x[j]) - static_cast<double>(d * v[codes[j]]);
    e += w[j] * r * r;
  }
  return e;
}

// The fp16 value `steps` units in the last place away from h in magnitude (same sign);
// false when that leaves the finite range or crosses zero.
inline bool half_step(std::uint16_t h, int steps, std::uint16_t& out) {
  const int mag = (h & 0x7FFF) + steps;
  if (mag < 0 || mag >= 0x7C00) return false;
  out = static_cast<std::uint16_t>((h & 0x8000) | mag);
  return true;
}

struct Candidate {
  double error;  // continuous (real d) least-squares error of the interval
  double d;
};

struct Event {
  double t;  // |u| at which element j moves to `code`
  std::uint8_t j, code;
};

}  // namespace weighted_detail

// Σ_j imp_j · (x_j − d·v[code_j])² in double, d and v as the kernels decode them (the
// product d·v of an fp16 d and a table value is exact in float). imp = nullptr means 1.
inline double weighted_block_error(const float* x, const float* imp, std::size_t n, Codebook cb, float d,
                                   const std::uint8_t* codes) {
  const auto& v = codebook_values(cb);
  double e = 0.0;
  for (std::size_t j = 0; j < n; ++j) {
    const double r = static_cast<double>(x[j]) - static_cast<double>(d * v[codes[j]]);
    e += (imp ? static_cast<double>(imp[j]) : 1.0) * r * r;
  }
  return e;
}

// Fits one block of n ≤ 32 finite values x with importance imp (n values ≥ 0, or
// nullptr for all ones): returns the fp16 bits of d and writes n codes (indices into
// codebook_values(cb)). A block whose importance is all zero is fitted unweighted
// (every fit is equally good for the weighted error; plain MSE is the sensible tie
// break). Throws if the block's plain absmax scale overflows fp16.
inline std::uint16_t fit_block_weighted(const float* x, const float* imp, std::size_t n, Codebook cb,
                                        std::uint8_t* codes) {
  using namespace weighted_detail;
  require_codebook(cb);
  detail::require(n >= 1 && n <= kWeightedFitMaxBlock, "weighted fit: block size ", n, " is not between 1 and ",
                  kWeightedFitMaxBlock);
  const auto& v = codebook_values(cb);
  double w[kWeightedFitMaxBlock];
  double wsum = 0.0;
  float amax = 0.0f, extreme = 0.0f;
  for (std::size_t j = 0; j < n; ++j) {
    detail::require(std::isfinite(x[j]), "weighted fit: value ", j, " is not finite (", x[j], ")");
    w[j] = imp ? static_cast<double>(imp[j]) : 1.0;
    detail::require(std::isfinite(w[j]) && w[j] >= 0.0, "weighted fit: importance ", j, " is ", w[j],
                    " (expected finite and >= 0)");
    wsum += w[j];
    if (std::fabs(x[j]) > amax) {
      amax = std::fabs(x[j]);
      extreme = x[j];
    }
  }
  if (wsum == 0.0) std::fill(w, w + n, 1.0);
  if (amax == 0.0f) {
    std::fill(codes, codes + n, kZeroCode);
    return 0;
  }

  // 1. Exact continuous minimum: sweep |u| for each sign of d, keeping the best few
  //    interval solutions (their fp16 roundings are tried below).
  constexpr std::size_t kKeep = 4;
  Candidate best[kKeep];
  std::size_t kept = 0;
  auto offer = [&](double err, double d) {
    if (!std::isfinite(d) || d == 0.0 || (kept == kKeep && !(err < best[kKeep - 1].error))) return;
    std::size_t i = kept < kKeep ? kept++ : kKeep - 1;
    for (; i > 0 && best[i - 1].error > err; --i) best[i] = best[i - 1];
    best[i] = {err, d};
  };
  double mids[15];
  for (int k = 0; k < 15; ++k) mids[k] = 0.5 * (static_cast<double>(v[k]) + v[k + 1]);
  Event events[15 * kWeightedFitMaxBlock];
  for (int sign : {1, -1}) {
    std::size_t n_events = 0;
    double A = 0.0, B = 0.0, C = 0.0;  // Σ w·z·v, Σ w·v², Σ w·z² with z = sign·x
    for (std::size_t j = 0; j < n; ++j) {
      const double z = sign * static_cast<double>(x[j]);
      A += w[j] * z * v[kZeroCode];
      B += w[j] * v[kZeroCode] * v[kZeroCode];
      C += w[j] * z * z;
      if (w[j] == 0.0 || z == 0.0) continue;  // never changes the weighted error
      // u·z grows from 0 towards ±∞ and crosses the midpoints on z's side of zero (in
      // both tables the zero code's two neighbouring midpoints straddle 0).
      const auto jj = static_cast<std::uint8_t>(j);
      if (z > 0)
        for (int k = kZeroCode; k < 15; ++k) events[n_events++] = {mids[k] / z, jj, static_cast<std::uint8_t>(k + 1)};
      else
        for (int k = kZeroCode; k > 0; --k) events[n_events++] = {mids[k - 1] / z, jj, static_cast<std::uint8_t>(k - 1)};
    }
    std::sort(events, events + n_events, [](const Event& a, const Event& b) { return a.t < b.t; });
    std::uint8_t cur[kWeightedFitMaxBlock];
    std::fill(cur, cur + n, kZeroCode);
    auto visit = [&] {
      if (B > 0.0 && A > 0.0) offer(std::max(0.0, C - A * A / B), sign * A / B);
    };
    visit();
    for (std::size_t i = 0; i < n_events;) {
      const double t = events[i].t;
      for (; i < n_events && events[i].t == t; ++i) {  // all codes that change at this u
        const Event& e = events[i];
        const double z = sign * static_cast<double>(x[e.j]);
        const double vo = v[cur[e.j]], vn = v[e.code];
        A += w[e.j] * z * (vn - vo);
        B += w[e.j] * (vn * vn - vo * vo);
        cur[e.j] = e.code;
      }
      visit();
    }
  }

  // 2. Stored scales: each candidate d rounded to fp16 and its neighbours, codes nearest
  //    for that fp16 d, then least-squares refits from the best until no gain.
  std::uint8_t trial[kWeightedFitMaxBlock];
  double best_err = INFINITY;
  std::uint16_t best_h = 0;
  auto try_half = [&](std::uint16_t h) {
    const float d = half_to_float(h);
    if (!std::isfinite(d)) return;
    const double e = nearest_error(x, w, n, d, cb, v, trial);
    if (e < best_err) {
      best_err = e;
      best_h = h;
      std::copy(trial, trial + n, codes);
    }
  };
  auto try_around = [&](double d, int radius) {
    if (!(std::fabs(d) < 65504.0)) return;
    const std::uint16_t h = float_to_half(static_cast<float>(d));
    for (int s = -radius; s <= radius; ++s) {
      std::uint16_t hs;
      if (half_step(h, s, hs)) try_half(hs);
    }
  };
  // llama.cpp's plain rounding scale first (extreme → −8 for Q4_0, −127 for IQ4_NL):
  // keeping it as a candidate bounds the result by reference rounding on every block.
  // A block it cannot store is rejected rather than silently clipped to the fp16 range.
  const double plain_d = static_cast<double>(extreme) / static_cast<double>(v[0]);
  detail::require(std::isfinite(half_to_float(float_to_half(static_cast<float>(plain_d)))),
                  "weighted fit: a block with |x| up to ", amax, " needs a scale of ", std::fabs(plain_d),
                  ", above the fp16 maximum 65504");
  try_around(plain_d, 0);
  for (std::size_t i = 0; i < kept; ++i) try_around(best[i].d, 2);
  for (int iter = 0; iter < 4; ++iter) {
    double sxv = 0.0, sv2 = 0.0;
    for (std::size_t j = 0; j < n; ++j) {
      sxv += w[j] * x[j] * v[codes[j]];
      sv2 += w[j] * v[codes[j]] * v[codes[j]];
    }
    if (sv2 <= 0.0) break;
    const double before = best_err;
    try_around(sxv / sv2, 1);
    if (!(best_err < before)) break;
  }
  return best_h;
}

struct WeightedFitOptions {
  int threads = 1;  // rows are dealt to threads; the result is identical for any count
  NonFinitePolicy non_finite = NonFinitePolicy::reject;
};

// Fits every 32-column block of W (rows = out_features, cols = in_features, cols a
// multiple of 32) with per-column importance `importance` (size cols, finite, >= 0;
// empty = all ones, a plain MSE fit). Codebook int4_sym gives what
// io::to_gguf_blocks(GgmlType::Q4_0, ·) writes, iq4_nl what IQ4_NL writes: group 32,
// f16 scales. About 20-30 µs per block and thread.
template <class Derived>
QuantizedMatrix quantize_weighted(const Eigen::MatrixBase<Derived>& W, Codebook codebook,
                                  const std::vector<float>& importance, const WeightedFitOptions& options = {}) {
  weighted_detail::require_codebook(codebook);
  detail::require(options.threads >= 1, "weighted fit: threads is ", options.threads, " (expected >= 1)");
  const RowMatrixXf Wf = to_checked_float(W, options.non_finite, "weight matrix");
  const std::size_t rows = static_cast<std::size_t>(Wf.rows()), cols = static_cast<std::size_t>(Wf.cols());
  constexpr std::size_t B = kWeightedFitMaxBlock;
  detail::require(cols % B == 0, "weighted fit: in_features (cols) ", cols, " is not a multiple of 32");
  detail::require(importance.empty() || importance.size() == cols, "weighted fit: importance has ",
                  importance.size(), " values, expected one per input column (", cols, ")");
  for (std::size_t j = 0; j < importance.size(); ++j)
    detail::require(std::isfinite(importance[j]) && importance[j] >= 0.0f, "weighted fit: importance of column ", j,
                    " is ", importance[j], " (expected finite and >= 0)");
  const std::size_t nb = cols / B;
  std::vector<std::uint8_t> packed(rows * packed_size(cols), 0);
  std::vector<std::uint16_t> scales(rows * nb);
  // Each worker takes a contiguous range of rows and stops at its first failing block;
  // the error reported is the one of the lowest row, whatever the thread count.
  const int workers = static_cast<int>(std::min<std::size_t>(rows, static_cast<std::size_t>(options.threads)));
  std::vector<std::size_t> failed_row(static_cast<std::size_t>(workers), rows);
  std::vector<std::string> failure(static_cast<std::size_t>(workers));
  auto work = [&](int wi) {
    const std::size_t begin = rows * static_cast<std::size_t>(wi) / static_cast<std::size_t>(workers);
    const std::size_t end = rows * static_cast<std::size_t>(wi + 1) / static_cast<std::size_t>(workers);
    std::uint8_t block[B];
    for (std::size_t r = begin; r < end; ++r)
      for (std::size_t b = 0; b < nb; ++b) {
        const float* x = Wf.row(static_cast<Eigen::Index>(r)).data() + b * B;
        try {
          scales[r * nb + b] = fit_block_weighted(x, importance.empty() ? nullptr : importance.data() + b * B, B,
                                                  codebook, block);
        } catch (const Error& e) {
          failed_row[static_cast<std::size_t>(wi)] = r;
          failure[static_cast<std::size_t>(wi)] = "weighted fit of row " + std::to_string(r) + ", block " +
                                                  std::to_string(b) + " (columns " + std::to_string(b * B) + ".." +
                                                  std::to_string(b * B + B - 1) + "): " + std::string(e.what()).substr(8);
          return;
        }
        for (std::size_t j = 0; j < B; ++j) set_nibble(packed.data() + r * packed_size(cols), b * B + j, block[j]);
      }
  };
  detail::run_workers(workers, work);
  for (std::size_t i = 0; i < failure.size(); ++i)
    if (failed_row[i] < rows) throw Error(failure[i]);
  return QuantizedMatrix(rows, cols, B, codebook, std::move(packed),
                         ScaleArray::from_raw16(std::move(scales), ScaleFormat::f16));
}

}  // namespace nibble
