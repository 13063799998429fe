// Baselines for gemv_bench, compiled in their own translation unit with the best
// flags for them (-O3 -march=native). Only raw pointers cross this boundary, so the
// two TUs never exchange Eigen objects (whose alignment depends on -m flags).
#pragma once

#include <cstddef>
#include <cstdint>

namespace baseline {

// y[r0:r1] = W[r0:r1,:] · x with Eigen (W row-major rows × cols, fp32).
void eigen_gemv_rows(const float* W, std::size_t rows, std::size_t cols, const float* x, float* y, std::size_t r0,
                     std::size_t r1);
// Y (batch × rows) = X (batch × cols) · W[r0:r1,:]ᵀ with Eigen's GEMM.
void eigen_gemm_rows(const float* W, std::size_t rows, std::size_t cols, const float* X, std::size_t batch, float* Y,
                     std::size_t r0, std::size_t r1);

// int8 weights with one f32 scale per row; x quantized once per call to int8 with
// one scale (per tensor). AVX2 maddubs with the sign trick.
void quantize_x_int8(const float* x, std::size_t n, std::int8_t* q, float* scale);
void int8_gemv_rows(const std::int8_t* W, const float* row_scale, std::size_t cols, const std::int8_t* qx,
                    float x_scale, float* y, std::size_t r0, std::size_t r1);

// Dequantize int4_sym codes (canonical order, even cols) with f32 group scales
// into fp32 rows r0..r1 of out, then Eigen GEMV of those rows.
void dequant_then_gemv_rows(const std::uint8_t* codes, const float* scales, std::size_t cols, std::size_t group,
                            float* scratch, const float* x, float* y, std::size_t r0, std::size_t r1);

// Streaming read of bytes [begin, end) of buf; returns a value so it is not optimised away.
float stream_read(const std::uint8_t* buf, std::size_t begin, std::size_t end);

}  // namespace baseline
