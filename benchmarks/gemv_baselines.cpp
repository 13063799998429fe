// Baselines compiled with -O3 -march=native (see CMakeLists.txt). No nibble headers here.
#include "gemv_baselines.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include <Eigen/Core>

namespace baseline {

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void eigen_gemv_rows(const float* W, std::size_t, std::size_t cols, const float* x, float* y, std::size_t r0,
                     std::size_t r1) {
  const auto n = static_cast<Eigen::Index>(r1 - r0), k = static_cast<Eigen::Index>(cols);
  Eigen::Map<const RowMajor> w(W + r0 * cols, n, k);
  Eigen::Map<const Eigen::VectorXf> xv(x, k);
  Eigen::Map<Eigen::VectorXf> yv(y + r0, n);
  yv.noalias() = w * xv;
}

void eigen_gemm_rows(const float* W, std::size_t rows, std::size_t cols, const float* X, std::size_t batch, float* Y,
                     std::size_t r0, std::size_t r1) {
  // Yᵀ[r0:r1, :] = W[r0:r1, :] · Xᵀ, all column-major views of the row-major buffers.
  const auto n = static_cast<Eigen::Index>(r1 - r0), k = static_cast<Eigen::Index>(cols);
  const auto b = static_cast<Eigen::Index>(batch);
  Eigen::Map<const RowMajor> w(W + r0 * cols, n, k);
  Eigen::Map<const Eigen::MatrixXf> xt(X, k, b);
  Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>> yt(Y + r0, n, b, Eigen::OuterStride<>(static_cast<Eigen::Index>(rows)));
  yt.noalias() = w * xt;
}

void quantize_x_int8(const float* x, std::size_t n, std::int8_t* q, float* scale) {
  float amax = 0.0f;
  for (std::size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float inv = amax > 0 ? 127.0f / amax : 0.0f;
  for (std::size_t i = 0; i < n; ++i) q[i] = static_cast<std::int8_t>(std::nearbyint(x[i] * inv));
  *scale = amax / 127.0f;
}

static inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

void int8_gemv_rows(const std::int8_t* W, const float* row_scale, std::size_t cols, const std::int8_t* qx,
                    float x_scale, float* y, std::size_t r0, std::size_t r1) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (std::size_t r = r0; r < r1; ++r) {
    const std::int8_t* w = W + r * cols;
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    std::size_t c = 0;
    for (; c + 64 <= cols; c += 64) {
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + c + 32));
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + c));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + c + 32));
      const __m256i p0 = _mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
      const __m256i p1 = _mm256_maddubs_epi16(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1));
      acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(p0, ones));
      acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(p1, ones));
    }
    int sum = hsum_i32(_mm256_add_epi32(acc0, acc1));
    for (; c < cols; ++c) sum += w[c] * qx[c];
    y[r] = row_scale[r] * x_scale * static_cast<float>(sum);
  }
}

void dequant_then_gemv_rows(const std::uint8_t* codes, const float* scales, std::size_t cols, std::size_t group,
                            float* scratch, const float* x, float* y, std::size_t r0, std::size_t r1) {
  const std::size_t G = cols / group;
  for (std::size_t r = r0; r < r1; ++r) {
    const std::uint8_t* row = codes + r * (cols / 2);
    float* out = scratch + r * cols;
    for (std::size_t c = 0; c < cols; c += 2) {
      const float s = scales[r * G + c / group];
      out[c] = s * static_cast<float>((row[c / 2] >> 4) - 8);
      out[c + 1] = s * static_cast<float>((row[c / 2] & 0x0F) - 8);
    }
  }
  eigen_gemv_rows(scratch, 0, cols, x, y, r0, r1);
}

float stream_read(const std::uint8_t* buf, std::size_t begin, std::size_t end) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  std::size_t i = begin;
  for (; i + 128 <= end; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(buf + i + 96)));
  }
  const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  return static_cast<float>(_mm256_extract_epi64(s, 0) ^ _mm256_extract_epi64(s, 3)) + static_cast<float>(i);
}

}  // namespace baseline
