// Int8Matrix: 8-bit weights with one scale per 32 consecutive weights of a row —
// the data of a GGUF Q8_0 tensor, kept at 8 bits so kernels can run from it
// (kernels/int8_gemv.hpp) and an embedding row can be read out of it.
//
// Layout of a rows × cols matrix W (row-major, y = W·x; cols a multiple of 32):
//
//   codes   int8, row r at [r·cols, (r+1)·cols), element order (no reordering, so
//           a row is a plain int8 vector and a GGUF block's 32 bytes copy in as is).
//   scales  fp16 bits (IEEE binary16), row r block k at r·(cols/32) + k; block k
//           covers columns [32k, 32k + 32).
//   value   w[r][c] = float(d) · q, d = scale of (r, c/32), the product rounded
//           once to float32 (what llama.cpp's dequantize_row_q8_0 and gguf-py's
//           Q8_0.dequantize_blocks compute).
//
// GGUF Q8_0 block (34 bytes per 32 weights, 8.5 bits per weight; blocks of a row
// follow each other, rows follow each other):
//
//   bytes 0-1   d, fp16 little-endian
//   bytes 2-33  q[0..31], int8, element order
//
// Scales are kept as the fp16 bits, not decoded to float: the matrix then holds
// exactly the 8.5 bits per weight of the file (a float scale would add 1 bit per
// weight, 1.7 MiB on SmolLM2's 49152 × 576 token_embd), to_q8_0_blocks() is a copy
// by construction (-0 and subnormal scales included), and decoding is exact and
// cheap where the kernels need it (F16C vcvtph2ps, NEON vcvt, half_to_float).
//
// A second layout, row_panels, holds the same bytes in the order AVX-512 VNNI kernels
// read with one row per 32-bit lane (kernels/int8_avx512.hpp): rows in panels of 16
// (kInt8PanelRows; a last short panel is padded with zero rows), and in panel p
//
//   codes   block k, dword d (codes 4d..4d+3 of the block), row i, byte b at
//           (((p·nb + k)·8 + d)·16 + i)·4 + b          (nb = cols/32)
//   scales  block k, row i at (p·nb + k)·16 + i
//
// so one 64-byte load is dword d of block k for 16 rows, and 16 rows' scales of a block
// are one 32-byte load. Every accessor (code, scale, dequantize_row, to_q8_0_blocks)
// gives the same values in either layout; row_codes() and the row-major codes() /
// scale_bits() views are the row_major layout's only.
//
// Scales must be finite (a NaN or Inf scale is rejected with its row and block); any
// int8 code is accepted, −128 included (llama.cpp's quantizer never writes it, but a
// file may hold it).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "../core/weight_arena.hpp"

namespace nibble {

// The same alias as quant/rtn.hpp's (a repeated alias declaration of the same type is
// allowed); format/ does not include quant/.
using RowMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

inline constexpr std::size_t kQ8Block = 32;        // weights per scale
inline constexpr std::size_t kQ8_0BlockBytes = 34;  // GGUF Q8_0: fp16 d + 32 int8
inline constexpr std::size_t kInt8PanelRows = 16;   // rows of a row_panels panel

enum class Int8Layout { row_major, row_panels };

inline const char* to_string(Int8Layout l) { return l == Int8Layout::row_major ? "row_major" : "row_panels"; }

class Int8Matrix {
 public:
  Int8Matrix() = default;

  // codes: rows·cols int8, row-major; scales: rows·(cols/32) fp16 bit patterns.
  Int8Matrix(std::size_t rows, std::size_t cols, std::vector<std::int8_t> codes, std::vector<std::uint16_t> scales)
      : rows_(rows), cols_(cols), codes_(std::move(codes)), scales_(std::move(scales)) {
    check_shape(rows_, cols_, "Int8Matrix");
    detail::require(codes_.size() == rows_ * cols_, "Int8Matrix: codes: expected ", rows_ * cols_, " (", rows_,
                    " x ", cols_, "), got ", codes_.size());
    detail::require(scales_.size() == rows_ * blocks_per_row(), "Int8Matrix: scales: expected ",
                    rows_ * blocks_per_row(), " (", rows_, " rows x ", blocks_per_row(), " blocks), got ",
                    scales_.size());
    for (std::size_t i = 0; i < scales_.size(); ++i) check_scale(scales_[i], i, blocks_per_row(), "Int8Matrix");
  }

  // GGUF Q8_0 tensor data of a rows × cols matrix (ne[0] = cols), `size` bytes at `bytes`.
  // Lossless: to_q8_0_blocks() gives the same bytes back.
  static Int8Matrix from_q8_0_blocks(std::size_t rows, std::size_t cols, const void* bytes, std::size_t size) {
    check_shape(rows, cols, "from_q8_0_blocks");
    const std::size_t nb = cols / kQ8Block;
    detail::require(rows <= std::numeric_limits<std::size_t>::max() / nb / kQ8_0BlockBytes, "from_q8_0_blocks: ",
                    rows, " x ", cols, " is too large");
    const std::size_t want = rows * nb * kQ8_0BlockBytes;
    detail::require(bytes != nullptr, "from_q8_0_blocks: null data pointer");
    detail::require(size == want, "from_q8_0_blocks: ", size, " bytes for ", rows, " x ", cols, " (expected ", want,
                    " = ", rows * nb, " blocks of ", kQ8_0BlockBytes, ")");
    const auto* p = static_cast<const std::uint8_t*>(bytes);
    Int8Matrix m;
    m.rows_ = rows;
    m.cols_ = cols;
    m.codes_ = detail::huge_page_vector<std::int8_t>(rows * cols);  // core/weight_arena.hpp
    m.scales_.resize(rows * nb);
    for (std::size_t i = 0; i < rows * nb; ++i, p += kQ8_0BlockBytes) {
      const std::uint16_t d = static_cast<std::uint16_t>(p[0] | (p[1] << 8));
      check_scale(d, i, nb, "from_q8_0_blocks");
      m.scales_[i] = d;
      std::memcpy(m.codes_.data() + i * kQ8Block, p + 2, kQ8Block);
    }
    return m;
  }

  std::vector<std::uint8_t> to_q8_0_blocks() const {
    const std::size_t nb = blocks_per_row();
    std::vector<std::uint8_t> out(rows_ * nb * kQ8_0BlockBytes);
    std::vector<std::int8_t> row(cols_);
    std::uint8_t* p = out.data();
    for (std::size_t r = 0; r < rows_; ++r) {
      copy_row_codes(r, row.data());
      for (std::size_t k = 0; k < nb; ++k, p += kQ8_0BlockBytes) {
        const std::uint16_t d = scale_bit(r, k);
        p[0] = static_cast<std::uint8_t>(d & 0xFF);
        p[1] = static_cast<std::uint8_t>(d >> 8);
        std::memcpy(p + 2, row.data() + k * kQ8Block, kQ8Block);
      }
    }
    return out;
  }

  std::size_t rows() const { return rows_; }
  std::size_t cols() const { return cols_; }
  std::size_t blocks_per_row() const { return cols_ / kQ8Block; }
  Int8Layout layout() const { return layout_; }

  // The same matrix in layout `l` (a copy; on an rvalue, row_major → row_panels
  // reorders the storage in place, one panel at a time, so no second copy of the codes
  // is held — beyond one reallocation when rows are not a multiple of 16).
  Int8Matrix with_layout(Int8Layout l) const& { return Int8Matrix(*this).with_layout(l); }
  Int8Matrix with_layout(Int8Layout l) && {
    if (l != layout_) {
      if (l == Int8Layout::row_panels) to_panels();
      else to_row_major();
    }
    return std::move(*this);
  }

  // Storage in layout() order (row_panels: padded to whole panels).
  const std::vector<std::int8_t>& codes() const { return codes_; }
  const std::vector<std::uint16_t>& scale_bits() const { return scales_; }

  // Row r's codes in element order; the row_major layout only.
  const std::int8_t* row_codes(std::size_t r) const {
    detail::require(layout_ == Int8Layout::row_major, "Int8Matrix::row_codes: the matrix is in the row_panels layout");
    return codes_.data() + r * cols_;
  }
  // Row r's codes into out[0, cols), either layout.
  void copy_row_codes(std::size_t r, std::int8_t* out) const {
    if (layout_ == Int8Layout::row_major) {
      std::memcpy(out, codes_.data() + r * cols_, cols_);
      return;
    }
    for (std::size_t c = 0; c < cols_; c += 4) std::memcpy(out + c, codes_.data() + code_index(r, c), 4);
  }
  std::int8_t code(std::size_t r, std::size_t c) const { return codes_[code_index(r, c)]; }

  // Where code (r, c) and scale (r, k) are stored in codes() / scale_bits().
  std::size_t code_index(std::size_t r, std::size_t c) const {
    if (layout_ == Int8Layout::row_major) return r * cols_ + c;
    const std::size_t p = r / kInt8PanelRows, i = r % kInt8PanelRows, k = c / kQ8Block, e = c % kQ8Block;
    return (((p * blocks_per_row() + k) * 8 + e / 4) * kInt8PanelRows + i) * 4 + e % 4;
  }
  std::size_t scale_index(std::size_t r, std::size_t k) const {
    if (layout_ == Int8Layout::row_major) return r * blocks_per_row() + k;
    return ((r / kInt8PanelRows) * blocks_per_row() + k) * kInt8PanelRows + r % kInt8PanelRows;
  }

  // fp16 bits of the scale of row r, block k, and its value.
  std::uint16_t scale_bit(std::size_t r, std::size_t k) const { return scales_[scale_index(r, k)]; }
  float scale(std::size_t r, std::size_t k) const { return half_to_float(scale_bit(r, k)); }

  float value(std::size_t r, std::size_t c) const {
    return scale(r, c / kQ8Block) * static_cast<float>(code(r, c));
  }

  // Row r as float32 (an embedding lookup): out[c] = value(r, c) for c < cols.
  void dequantize_row(std::size_t r, float* out) const {
    detail::require(r < rows_, "dequantize_row: row ", r, " is out of range (", rows_, " rows)");
    detail::require(out != nullptr, "dequantize_row: null output pointer");
    for (std::size_t k = 0; k < blocks_per_row(); ++k) {
      const float d = scale(r, k);
      for (std::size_t j = 0; j < kQ8Block; ++j)
        out[k * kQ8Block + j] = d * static_cast<float>(code(r, k * kQ8Block + j));
    }
  }

  RowMatrixXf dequantize() const {
    RowMatrixXf out(static_cast<Eigen::Index>(rows_), static_cast<Eigen::Index>(cols_));
    for (std::size_t r = 0; r < rows_; ++r) dequantize_row(r, out.data() + r * cols_);
    return out;
  }

  // Bytes held (codes + fp16 scales): the size of the GGUF Q8_0 data, plus a row_panels
  // matrix's padding rows.
  std::size_t storage_bytes() const { return codes_.size() + 2 * scales_.size(); }
  double bits_per_weight() const { return rows_ == 0 ? 0.0 : 8.0 + 16.0 / kQ8Block; }

 private:
  static void check_shape(std::size_t rows, std::size_t cols, const char* what) {
    detail::require(rows > 0 && cols > 0, what, ": empty matrix (", rows, " x ", cols, ")");
    detail::require(cols % kQ8Block == 0, what, ": cols ", cols, " is not a multiple of ", kQ8Block,
                    " (Q8_0 blocks of 32 weights run along a row)");
    detail::require(rows <= std::numeric_limits<std::size_t>::max() / cols / 2, what, ": ", rows, " x ", cols,
                    " is too large");
  }

  // Scale i of a matrix with nb blocks per row.
  static void check_scale(std::uint16_t bits, std::size_t i, std::size_t nb, const char* what) {
    if ((bits & 0x7C00u) == 0x7C00u) {  // exponent all ones: Inf or NaN
      detail::throw_error(what, ": scale of row ", i / nb, ", block ", i % nb, " (columns ", (i % nb) * kQ8Block,
                          "..", (i % nb) * kQ8Block + kQ8Block - 1, ") is ", half_to_float(bits),
                          " (expected a finite fp16 value)");
    }
  }

  // Row-major → row_panels in place: each panel covers the same byte range in both
  // layouts (16 rows' codes, 16 rows' scales), so a panel-sized buffer is enough; the
  // codes grow by the padding rows first.
  void to_panels() {
    const std::size_t nb = blocks_per_row(), panels = (rows_ + kInt8PanelRows - 1) / kInt8PanelRows;
    codes_.resize(panels * kInt8PanelRows * cols_, 0);
    scales_.resize(panels * kInt8PanelRows * nb, 0);
    std::vector<std::int8_t> rows_codes(kInt8PanelRows * cols_);
    std::vector<std::uint16_t> rows_scales(kInt8PanelRows * nb);
    for (std::size_t p = 0; p < panels; ++p) {
      std::int8_t* codes = codes_.data() + p * rows_codes.size();
      std::uint16_t* scales = scales_.data() + p * rows_scales.size();
      std::memcpy(rows_codes.data(), codes, rows_codes.size());
      std::memcpy(rows_scales.data(), scales, rows_scales.size() * sizeof(std::uint16_t));
      for (std::size_t k = 0; k < nb; ++k)
        for (std::size_t i = 0; i < kInt8PanelRows; ++i) {
          scales[k * kInt8PanelRows + i] = rows_scales[i * nb + k];
          for (std::size_t d = 0; d < 8; ++d)
            std::memcpy(codes + ((k * 8 + d) * kInt8PanelRows + i) * 4, rows_codes.data() + i * cols_ + k * kQ8Block + 4 * d, 4);
        }
    }
    layout_ = Int8Layout::row_panels;
  }

  void to_row_major() {
    std::vector<std::int8_t> codes(rows_ * cols_);
    std::vector<std::uint16_t> scales(rows_ * blocks_per_row());
    for (std::size_t r = 0; r < rows_; ++r) {
      copy_row_codes(r, codes.data() + r * cols_);
      for (std::size_t k = 0; k < blocks_per_row(); ++k) scales[r * blocks_per_row() + k] = scale_bit(r, k);
    }
    codes_ = std::move(codes);
    scales_ = std::move(scales);
    layout_ = Int8Layout::row_major;
  }

  std::size_t rows_ = 0, cols_ = 0;
  Int8Layout layout_ = Int8Layout::row_major;
  std::vector<std::int8_t> codes_;
  std::vector<std::uint16_t> scales_;
};

// Q8_0 quantization as llama.cpp's quantize_row_q8_0_ref (ggml-quants.c), per block of
// 32 weights of a row:
//   amax = max |x|;  d = amax / 127;  id = d ? 1/d : 0   (all float32)
//   q    = roundf(x · id)   — to nearest, ties away from zero, from the float32 d
//                             (not the fp16-rounded one)
//   stored d = fp16(d), round to nearest even (GGML_FP32_TO_FP16 / F16C).
// gguf-py's Q8_0.quantize_blocks gives the same bytes. Two cases llama.cpp leaves
// undefined are defined here: when 1/d overflows (amax below ~3.7e-37, so the fp16 d
// is 0 anyway) q is roundf(x·id) clamped to ±127 with 0·Inf taken as 0; the clamp never
// acts otherwise (|x·id| <= 127 up to one rounding). Non-finite weights are rejected
// with their position, and so is a block whose d overflows fp16 (amax > 65504·127).
template <class Derived>
Int8Matrix quantize_q8_0(const Eigen::MatrixBase<Derived>& W) {
  const auto rows = static_cast<std::size_t>(W.rows()), cols = static_cast<std::size_t>(W.cols());
  detail::require(rows > 0 && cols > 0, "quantize_q8_0: empty matrix (", rows, " x ", cols, ")");
  detail::require(cols % kQ8Block == 0, "quantize_q8_0: cols ", cols, " is not a multiple of ", kQ8Block,
                  " (Q8_0 blocks of 32 weights run along a row)");
  const std::size_t nb = cols / kQ8Block;
  std::vector<std::int8_t> codes(rows * cols);
  std::vector<std::uint16_t> scales(rows * nb);
  float x[kQ8Block];
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t k = 0; k < nb; ++k) {
      float amax = 0.0f;
      for (std::size_t j = 0; j < kQ8Block; ++j) {
        const std::size_t c = k * kQ8Block + j;
        x[j] = static_cast<float>(W(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c)));
        if (!std::isfinite(x[j])) detail::throw_error("quantize_q8_0: weight at row ", r, ", column ", c,
                                                      " is not finite (", x[j], ")");
        amax = std::max(amax, std::fabs(x[j]));
      }
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      const std::uint16_t dh = float_to_half(d);
      detail::require((dh & 0x7C00u) != 0x7C00u, "quantize_q8_0: block of row ", r, ", columns ", k * kQ8Block,
                      "..", k * kQ8Block + kQ8Block - 1, " has max |w| = ", amax,
                      ", too large for an fp16 scale (max 65504 * 127)");
      scales[r * nb + k] = dh;
      for (std::size_t j = 0; j < kQ8Block; ++j) {
        const float v = std::round(x[j] * id);
        codes[r * cols + k * kQ8Block + j] =
            static_cast<std::int8_t>(v != v ? 0.0f : (v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v)));
      }
    }
  return Int8Matrix(rows, cols, std::move(codes), std::move(scales));
}

}  // namespace nibble
