// Dense linear algebra of the calibration algorithms (Hessian XᵀX, GPTQ's inverse
// factor and lazy-batch updates, AWQ's objective), gathered here so that a program can
// route it to a BLAS.
//
// Why a BLAS: Eigen chooses its SIMD code from compile-time macros, and nibble's headers
// ask for no -m flags (mixing them across translation units breaks Eigen's ABI), so
// these products run Eigen's SSE2 code; a target attribute around Eigen code does not
// change that. OpenBLAS built with DYNAMIC_ARCH (Debian's) picks its kernels for the CPU
// when it is loaded, so one binary runs AVX2 or AVX-512 kernels wherever it lands.
//
// NIBBLE_USE_BLAS routes the products below to CBLAS and the factorizations to LAPACK.
// Define it for the whole program or not at all: the inline functions here differ with
// and without it, and two definitions of one inline function in one program are an
// ODR violation (the linker keeps either). CMake's nibble::blas target does this for
// every translation unit of the executable that links it.
//
// Threads: nibble calls the BLAS from its own worker threads on fixed blocks of work,
// and asks OpenBLAS for one thread per call (openblas_set_num_threads(1) before the
// first call): no oversubscription, and since a block's arithmetic does not depend on
// which thread or how many threads run it, results are bit-identical for every thread
// count. They can differ between CPUs (OpenBLAS's kernels differ) and from the Eigen
// build in the last bits. Use a thread-safe OpenBLAS (Debian: libopenblas0-pthread):
// Debian's serial variant is built without USE_LOCKING, so concurrent calls share its
// work buffers and return wrong results (seen on GPTQ at 4096 columns); with a serial
// library nibble therefore makes one BLAS call at a time (correct, but no speed-up
// from threads in those calls).
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/workers.hpp"

#if defined(NIBBLE_USE_BLAS) && NIBBLE_USE_BLAS
#define NIBBLE_BLAS_ENABLED 1
#include <cblas.h>
extern "C" {
// LAPACK, Fortran calling convention with gfortran's hidden string lengths at the end.
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info, std::size_t uplo_len);
void dtrtri_(const char* uplo, const char* diag, const int* n, double* a, const int* lda, int* info,
             std::size_t uplo_len, std::size_t diag_len);
// OpenBLAS's own queries and its thread setting.
char* openblas_get_config(void);
char* openblas_get_corename(void);
int openblas_get_parallel(void);
void openblas_set_num_threads(int threads);
}
#else
#define NIBBLE_BLAS_ENABLED 0
#include <Eigen/Cholesky>
#endif

namespace nibble {

// What runs the calibration math, e.g. "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ... (kernels: Haswell)"
// or "Eigen 3.4.0 (SSE, SSE2: fixed at compile time)".
inline std::string calibration_backend() {
#if NIBBLE_BLAS_ENABLED
  const int parallel = openblas_get_parallel();
  return std::string(openblas_get_config()) + " (kernels: " + openblas_get_corename() + ", " +
         (parallel == 0 ? "serial library: one call at a time" : "1 thread per call, nibble's threads") + ")";
#else
  return "Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
         std::to_string(EIGEN_MINOR_VERSION) + " (" + Eigen::SimdInstructionSetsInUse() + ": fixed at compile time)";
#endif
}

inline constexpr bool calibration_uses_blas() { return NIBBLE_BLAS_ENABLED != 0; }

namespace detail {

#if NIBBLE_BLAS_ENABLED
// nibble threads the work itself: OpenBLAS runs each call on the calling thread. A
// serial OpenBLAS is not safe to call concurrently (see the top of this file), so its
// calls are serialized: the returned lock is held for the duration of one call.
inline std::unique_lock<std::mutex> blas_single_threaded() {
  static const bool serial = [] {
    const bool s = openblas_get_parallel() == 0;
    if (!s) openblas_set_num_threads(1);
    return s;
  }();
  static std::mutex serial_calls;
  return serial ? std::unique_lock<std::mutex>(serial_calls) : std::unique_lock<std::mutex>();
}

inline void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float* a, int lda,
                      const float* b, int ldb, float beta, float* c, int ldc) {
  const auto one_call = blas_single_threaded();
  cblas_sgemm(CblasColMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha, const double* a,
                      int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  const auto one_call = blas_single_threaded();
  cblas_dgemm(CblasColMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_syrk(CBLAS_TRANSPOSE t, int n, int k, float alpha, const float* a, int lda, float beta, float* c,
                      int ldc) {
  const auto one_call = blas_single_threaded();
  cblas_ssyrk(CblasColMajor, CblasLower, t, n, k, alpha, a, lda, beta, c, ldc);
}
inline void blas_syrk(CBLAS_TRANSPOSE t, int n, int k, double alpha, const double* a, int lda, double beta, double* c,
                      int ldc) {
  const auto one_call = blas_single_threaded();
  cblas_dsyrk(CblasColMajor, CblasLower, t, n, k, alpha, a, lda, beta, c, ldc);
}

// Column-major view of a directly accessible Eigen operand: a row-major one is, in
// column-major terms, its own transpose.
template <class D>
CBLAS_TRANSPOSE blas_op(const Eigen::MatrixBase<D>&) {
  return D::IsRowMajor ? CblasTrans : CblasNoTrans;
}
template <class D>
int blas_ld(const Eigen::MatrixBase<D>& m) {
  const Eigen::Index stored_rows = D::IsRowMajor ? m.cols() : m.rows();
  return static_cast<int>(std::max<Eigen::Index>({m.derived().outerStride(), stored_rows, 1}));
}
#endif

// C = A·B·alpha (+ C if accumulate). C column-major; A and B row- or column-major
// blocks, maps, or transposes of them, with inner stride 1.
template <class DC, class DA, class DB>
void gemm(const Eigen::MatrixBase<DC>& C_, const Eigen::MatrixBase<DA>& A, const Eigen::MatrixBase<DB>& B,
          typename DC::Scalar alpha, bool accumulate) {
  using S = typename DC::Scalar;
  auto& C = const_cast<Eigen::MatrixBase<DC>&>(C_);
  static_assert(!DC::IsRowMajor || DC::ColsAtCompileTime == 1, "gemm: C must be column-major");
  if (C.rows() == 0 || C.cols() == 0) return;
  if (A.cols() == 0) {
    if (!accumulate) C.setZero();
    return;
  }
#if NIBBLE_BLAS_ENABLED
  blas_gemm(blas_op(A), blas_op(B), static_cast<int>(C.rows()), static_cast<int>(C.cols()), static_cast<int>(A.cols()),
            alpha, A.derived().data(), blas_ld(A), B.derived().data(), blas_ld(B), accumulate ? S(1) : S(0),
            C.derived().data(), blas_ld(C));
#else
  if (!accumulate) {
    if (alpha == S(1)) C.noalias() = A * B;
    else C.noalias() = alpha * A * B;
  } else if (alpha == S(-1)) {
    C.noalias() -= A * B;
  } else {
    C.noalias() += alpha * A * B;
  }
#endif
}

// Lower triangle of C (square, column-major) = A·Aᵀ (+ C if accumulate); the strictly
// upper part is left as it is. Half the multiplications of a general product.
template <class DC, class DA>
void syrk_lower(const Eigen::MatrixBase<DC>& C_, const Eigen::MatrixBase<DA>& A, bool accumulate) {
  auto& C = const_cast<Eigen::MatrixBase<DC>&>(C_);
  static_assert(!DC::IsRowMajor, "syrk_lower: C must be column-major");
  if (C.rows() == 0) return;
  if (A.cols() == 0) {
    if (!accumulate) C.template triangularView<Eigen::Lower>().setZero();
    return;
  }
#if NIBBLE_BLAS_ENABLED
  // syrk's TRANS = T computes Mᵀ·M: how a row-major A (stored as Aᵀ) gives A·Aᵀ.
  using S = typename DC::Scalar;
  blas_syrk(blas_op(A), static_cast<int>(C.rows()), static_cast<int>(A.cols()), S(1), A.derived().data(), blas_ld(A),
            accumulate ? S(1) : S(0), C.derived().data(), blas_ld(C));
#else
  if (accumulate) C.template triangularView<Eigen::Lower>() += A * A.transpose();
  else C.template triangularView<Eigen::Lower>() = A * A.transpose();
#endif
}

// Cholesky factor of a symmetric positive definite matrix, in place: on success the lower
// triangle of A holds L (A = L·Lᵀ) and the strictly upper part is zero. False on failure.
inline bool cholesky_lower_in_place(Eigen::MatrixXd& A) {
#if NIBBLE_BLAS_ENABLED
  const Eigen::Index n = A.rows();
  const int nn = static_cast<int>(n), lda = static_cast<int>(std::max<Eigen::Index>(n, 1));
  int info = 0;
  const char uplo = 'L';
  const auto one_call = blas_single_threaded();
  if (n > 0) dpotrf_(&uplo, &nn, A.data(), &lda, &info, 1);
  if (info != 0) return false;
  A.triangularView<Eigen::StrictlyUpper>().setZero();
  return true;
#else
  Eigen::LLT<Eigen::MatrixXd> llt(A);
  if (llt.info() != Eigen::Success) return false;
  A = llt.matrixL();
  return true;
#endif
}

// Inverse of an upper triangular matrix with a nonzero diagonal, in place (the strictly
// lower part must be zero and stays zero).
inline void upper_triangular_inverse_in_place(Eigen::MatrixXd& V) {
  const Eigen::Index n = V.rows();
#if NIBBLE_BLAS_ENABLED
  const int nn = static_cast<int>(n), lda = static_cast<int>(std::max<Eigen::Index>(n, 1));
  int info = 0;
  const char uplo = 'U', diag = 'N';
  const auto one_call = blas_single_threaded();
  if (n > 0) dtrtri_(&uplo, &diag, &nn, V.data(), &lda, &info, 1, 1);
  if (info != 0) V.setConstant(std::numeric_limits<double>::quiet_NaN());  // singular: caller sees non-finite
#else
  V = Eigen::MatrixXd(V.triangularView<Eigen::Upper>().solve(Eigen::MatrixXd::Identity(n, n)));
#endif
}

}  // namespace detail
}  // namespace nibble
