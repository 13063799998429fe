// Public entry points of the 8-bit weight form: y = W·x (gemv) and Y = X·Wᵀ for a
// small batch (gemm), straight from an Int8Matrix (GGUF Q8_0 data). The same options,
// ISA selection (selected_isa(), NIBBLE_ISA) and thread pool as the 4-bit gemv.hpp:
//
//   exact  fp32 activations: y = Σ_k d_k·Σ_j w_j·x_j  (int8_scalar.hpp fixes the order)
//   fast   activations quantized per 32-block to int8 (d' = amax/127, as the 4-bit fast
//          mode), integer dot products: y = Σ_k d_k·d'_k·Σ_j w_j·q'_j, as llama.cpp's
//          Q8_0 × Q8_0 dot.
//
// Every ISA path gives the scalar reference's result bit for bit in both modes, for any
// thread count: rows are independent and each is computed whole by one thread.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <limits>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../format/int8_matrix.hpp"
#include "cpu.hpp"
#include "gemv.hpp"
#include "int8_activation.hpp"
#include "int8_scalar.hpp"
#include "threading.hpp"
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
#include "int8_avx2.hpp"
#include "int8_avx512.hpp"
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
#include "int8_neon.hpp"
#endif

namespace nibble {

namespace detail {

// The row_panels layout is read by the AVX-512 VNNI fast kernels; every other path on
// it is the scalar reference (same bits, any layout). row_major runs everywhere.
inline void run_int8_rows(Isa isa, const Int8Matrix& W, ActivationMode mode, const float* X, std::size_t batch,
                          const Int8Activations& p, float* Y, std::size_t r0, std::size_t r1) {
  if (W.layout() == Int8Layout::row_panels) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
    if (isa == Isa::avx512 && mode == ActivationMode::fast && cpu_features().avx512vnni) {
      int8_avx512::panel_gemm_fast(W, p, Y, r0, r1);
      return;
    }
#endif
    isa = Isa::scalar;
  }
  switch (isa) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
    case Isa::avx2:
      if (mode == ActivationMode::exact) int8_avx2::gemm_exact(W, X, batch, Y, r0, r1);
      else int8_avx2::gemm_fast(W, p, Y, r0, r1);
      return;
    case Isa::avx512:
      if (mode == ActivationMode::exact) int8_avx512::gemm_exact(W, X, batch, Y, r0, r1);
      else int8_avx512::gemm_fast(W, p, Y, r0, r1, cpu_features().avx512vnni);
      return;
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
    case Isa::neon:
      if (mode == ActivationMode::exact) int8_neon::gemm_exact(W, X, batch, Y, r0, r1);
      else int8_neon::gemm_fast(W, p, Y, r0, r1);
      return;
#endif
    default:
      if (mode == ActivationMode::exact) int8_scalar::gemm_exact(W, X, batch, Y, r0, r1);
      else int8_scalar::gemm_fast(W, p, Y, r0, r1);
      return;
  }
}

}  // namespace detail

// The layout the kernels of this ISA read fastest in fast mode: row_panels where the
// CPU has AVX-512 VNNI (measured on SmolLM2's 49152 × 576 output projection in the
// README), row_major elsewhere.
inline Int8Layout preferred_int8_layout(Isa isa = selected_isa()) {
  return isa == Isa::avx512 && cpu_features().avx512vnni ? Int8Layout::row_panels : Int8Layout::row_major;
}

// X: batch × cols, row-major; Y: batch × rows, row-major. Any batch >= 1.
inline void gemm(const Int8Matrix& W, const float* X, std::size_t batch, float* Y, const GemvOptions& opt = {}) {
  detail::require(W.rows() > 0, "gemm: empty Int8Matrix");
  detail::require(X != nullptr && Y != nullptr, "gemm: null activation or output pointer");
  detail::require(batch >= 1, "gemm: batch is 0 (expected at least 1 activation row)");
  detail::require(opt.threads >= 1 && opt.threads <= kMaxThreads, "gemm: threads = ", opt.threads,
                  " (expected 1..", kMaxThreads, ")");
  detail::require(opt.mode == ActivationMode::exact || opt.mode == ActivationMode::fast,
                  "gemm: invalid activation mode ", static_cast<int>(opt.mode));
  const Isa isa = selected_isa();
  // Per-thread scratch, reused across calls; concurrent callers each have their own.
  thread_local detail::Int8Activations prepared;
  if (opt.mode == ActivationMode::fast) detail::prepare_int8_fast(W, X, batch, prepared);
  else detail::check_finite_activations(X, batch, W.cols());

  const detail::Int8Activations& p = prepared;
  // Threads take whole tiles (8 rows, the row_major kernels' unit) or whole panels.
  const std::size_t unit = W.layout() == Int8Layout::row_panels ? kInt8PanelRows : detail::kRowTile;
  detail::split_rows(W.rows(), W.cols(), batch, opt.threads, [&](std::size_t r0, std::size_t r1) {
    detail::run_int8_rows(isa, W, opt.mode, X, batch, p, Y, r0, r1);
  }, unit);
}

inline void gemv(const Int8Matrix& W, const float* x, float* y, const GemvOptions& opt = {}) {
  gemm(W, x, 1, y, opt);
}

inline void gemv(const Int8Matrix& W, const Eigen::Ref<const Eigen::VectorXf>& x, Eigen::Ref<Eigen::VectorXf> y,
                 const GemvOptions& opt = {}) {
  detail::gemv_vectors(W, x, y, opt);
}

}  // namespace nibble
