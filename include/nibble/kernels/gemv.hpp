// Public entry points: y = W·x (gemv) and Y = X·Wᵀ for a small batch (gemm),
// straight from packed 4-bit weights. The kernel path is chosen per call from
// selected_isa() (cpu.hpp).
#pragma once

#include <algorithm>
#include <limits>
#include <cstddef>
#include <functional>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "activation.hpp"
#include "cpu.hpp"
#include "packed_matrix.hpp"
#include "scalar.hpp"
#include "threading.hpp"
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
#include "avx2.hpp"
#include "avx512.hpp"
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
#include "neon.hpp"
#endif

namespace nibble {

struct GemvOptions {
  ActivationMode mode = ActivationMode::exact;
  int threads = 1;  // 1..256; rows are split across this many threads
};

inline constexpr int kMaxThreads = 256;

namespace detail {

// Threads split the rows in whole tiles of this many rows (the AVX2 tile height) unless
// the matrix asks for more (PackedMatrix::rows_per_split: 16-row panels).
inline constexpr std::size_t kRowTile = 8;

// A thread is only given work worth waking it for: at least this many multiply-adds
// (rows·cols·batch / threads), for the 4-bit and the 8-bit kernels alike. A 1536 × 576
// GEMV (885 K) splits; stories260K's 64 × 64 ones (4 K) run on the caller's thread
// (split, they decoded at 0.4× the speed of one thread).
inline constexpr std::size_t kMinWorkPerThread = std::size_t{1} << 16;

// Threads a call of rows × cols × batch multiply-adds uses (threads requested: t).
inline std::size_t thread_count(std::size_t rows, std::size_t cols, std::size_t batch, int t,
                                std::size_t unit = kRowTile) {
  const std::size_t tiles = (rows + unit - 1) / unit;
  // rows·cols fits (the matrices check it); times the batch it may not, so that saturates.
  const std::size_t macs = std::max<std::size_t>(1, rows * cols);
  const std::size_t work =
      batch > std::numeric_limits<std::size_t>::max() / macs ? tiles : macs * batch / kMinWorkPerThread;
  return std::max<std::size_t>(1, std::min({static_cast<std::size_t>(t), tiles, work}));
}

// Runs rows(r0, r1) over [0, rows) split in whole units of `unit` rows among
// thread_count(...) threads of the pool (shared by the 4-bit and the 8-bit gemm).
template <class RunRows>
void split_rows(std::size_t rows, std::size_t cols, std::size_t batch, int threads, RunRows&& run_rows_fn,
                std::size_t unit = kRowTile) {
  const std::size_t tiles = (rows + unit - 1) / unit;
  const std::size_t n = thread_count(rows, cols, batch, threads, unit);
  const std::function<void(std::size_t)> task = [&](std::size_t t) {
    const std::size_t r0 = std::min(rows, tiles * t / n * unit);
    const std::size_t r1 = std::min(rows, tiles * (t + 1) / n * unit);
    if (r0 < r1) run_rows_fn(r0, r1);
  };
  ThreadPool::instance().run(n, task);
}

// gemv on Eigen vectors for any matrix type with a pointer gemm (size checks first).
template <class Matrix>
void gemv_vectors(const Matrix& W, const Eigen::Ref<const Eigen::VectorXf>& x, Eigen::Ref<Eigen::VectorXf> y,
                  const GemvOptions& opt) {
  require(static_cast<std::size_t>(x.size()) == W.cols(), "gemv: x has ", x.size(), " elements, expected ", W.cols(),
          " (the matrix's cols)");
  require(static_cast<std::size_t>(y.size()) == W.rows(), "gemv: y has ", y.size(), " elements, expected ", W.rows(),
          " (the matrix's rows)");
  gemm(W, x.data(), 1, y.data(), opt);
}

// prepare_fast's SIMD helper for whole 32-element blocks on this path (none: scalar).
inline FullBlockQuantizer full_block_quantizer(Isa isa) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
  if (isa == Isa::avx2 || isa == Isa::avx512) return &avx2::quantize_activation_block32;
#endif
  (void)isa;
  return nullptr;
}

// Each path runs its own kernels on the layout they are written for (row_tiles, or
// row_panels for AVX-512 VNNI fast mode); AVX2 and AVX-512 exact mode also read
// row_panels (through PackedMatrix::bytes16). Other combinations take the scalar
// kernels, which read any layout and give the same bits.
inline void run_rows(Isa isa, const PackedMatrix& W, ActivationMode mode, const float* X, std::size_t batch,
                     const PreparedActivations& p, float* Y, std::size_t r0, std::size_t r1) {
  const bool tiles = W.code_layout() == CodeLayout::row_tiles;
  switch (isa) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
    case Isa::avx2:
      if (mode == ActivationMode::exact) return avx2::gemm_exact(W, p, Y, r0, r1);
      if (tiles) return avx2::gemm_fast(W, p, Y, r0, r1);
      break;
    case Isa::avx512:
      if (mode == ActivationMode::exact) return avx512::gemm_exact(W, p, Y, r0, r1);
      if (!tiles && cpu_features().avx512vnni) return avx512::panel_gemm(W, p, Y, r0, r1, cpu_features().avx512vbmi);
      if (tiles) return avx512::gemm_fast(W, p, Y, r0, r1, cpu_features().avx512vnni);
      break;
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
    case Isa::neon:
      if (!tiles) break;
      if (mode == ActivationMode::exact) neon::gemm_exact(W, p, Y, r0, r1);
      else neon::gemm_fast(W, p, Y, r0, r1);
      return;
#endif
    default:
      break;
  }
  if (mode == ActivationMode::exact) scalar::gemm_exact(W, X, batch, Y, r0, r1);
  else scalar::gemm_fast(W, p, Y, r0, r1);
}

}  // namespace detail

// X: batch × cols, row-major; Y: batch × rows, row-major. Any batch >= 1.
inline void gemm(const PackedMatrix& W, const float* X, std::size_t batch, float* Y, const GemvOptions& opt = {}) {
  detail::require(X != nullptr && Y != nullptr, "gemm: null activation or output pointer");
  detail::require(batch >= 1, "gemm: batch is 0 (expected at least 1 activation row)");
  detail::require(opt.threads >= 1 && opt.threads <= kMaxThreads, "gemm: threads = ", opt.threads,
                  " (expected 1..", kMaxThreads, ")");
  detail::require(opt.mode == ActivationMode::exact || opt.mode == ActivationMode::fast,
                  "gemm: invalid activation mode ", static_cast<int>(opt.mode));
  const Isa isa = selected_isa();
  // Per-thread scratch, reused across calls; concurrent callers each have their own.
  thread_local detail::PreparedActivations prepared;
  if (opt.mode == ActivationMode::fast) detail::prepare_fast(W, X, batch, prepared, detail::full_block_quantizer(isa));
  else if (isa != Isa::scalar) detail::prepare_exact(W, X, batch, prepared);
  else
    for (std::size_t i = 0; i < batch * W.cols(); ++i)
      detail::check_finite_activation(X[i], i / W.cols(), i % W.cols());

  const detail::PreparedActivations& p = prepared;
  detail::split_rows(
      W.rows(), W.cols(), batch, opt.threads,
      [&](std::size_t r0, std::size_t r1) { detail::run_rows(isa, W, opt.mode, X, batch, p, Y, r0, r1); },
      W.rows_per_split());
}

inline void gemv(const PackedMatrix& W, const float* x, float* y, const GemvOptions& opt = {}) {
  gemm(W, x, 1, y, opt);
}

inline void gemv(const PackedMatrix& W, const Eigen::Ref<const Eigen::VectorXf>& x, Eigen::Ref<Eigen::VectorXf> y,
                 const GemvOptions& opt = {}) {
  detail::gemv_vectors(W, x, y, opt);
}

}  // namespace nibble
