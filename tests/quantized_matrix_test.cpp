#include <gtest/gtest.h>

#include <vector>

#include "nibble/format/quantized_matrix.hpp"

namespace quantized_matrix_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

// A 2 × 5 uint4_asym matrix with group size 4 (ragged last group of 1), built by hand.
TEST(QuantizedMatrix, DequantizeFollowsTheLayoutByHand) {
  // codes row 0: 1 2 3 4 | 5 ; row 1: 15 14 13 12 | 0
  const std::vector<std::uint8_t> codes = {0x12, 0x34, 0x50, 0xFE, 0xDC, 0x00};
  const auto scales = ScaleArray::encode({0.5f, 2.0f, 0.25f, 1.0f}, ScaleFormat::f32);
  const auto zeros = ZeroPoints::uint4({1, 0, 8, 3});
  const QuantizedMatrix q(2, 5, 4, Codebook::uint4_asym, codes, scales, zeros);
  EXPECT_EQ(q.groups_per_row(), 2u);
  const Eigen::MatrixXf w = q.dequantize();
  const float expected[2][5] = {{0.0f, 0.5f, 1.0f, 1.5f, 10.0f}, {1.75f, 1.5f, 1.25f, 1.0f, -3.0f}};
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 5; ++c) {
      EXPECT_EQ(w(r, c), expected[r][c]) << r << "," << c;
      EXPECT_EQ(q.value(r, c), expected[r][c]);
    }
  // 10 code bytes... 6 bytes of codes, 4 f32 scales, 2 bytes of packed zeros.
  EXPECT_EQ(q.storage_bytes(), 6u + 16u + 2u);
}

TEST(QuantizedMatrix, BitsPerWeightCountsEverything) {
  const std::size_t rows = 64, cols = 256;
  auto make = [&](Codebook cb, std::size_t gs, ScaleFormat sf) {
    const std::size_t groups = rows * ((cols + gs - 1) / gs);
    ZeroPoints z = cb == Codebook::uint4_asym ? ZeroPoints::uint4(std::vector<std::uint8_t>(groups, 8))
                                              : ZeroPoints::none();
    return QuantizedMatrix(rows, cols, gs, cb, std::vector<std::uint8_t>(rows * cols / 2),
                           ScaleArray::encode(std::vector<float>(groups, 1.0f), sf), z);
  };
  EXPECT_DOUBLE_EQ(make(Codebook::nf4, 64, ScaleFormat::f32).bits_per_weight(), 4.5);
  EXPECT_DOUBLE_EQ(make(Codebook::int4_sym, 128, ScaleFormat::f16).bits_per_weight(), 4.125);
  EXPECT_DOUBLE_EQ(make(Codebook::int4_sym, 32, ScaleFormat::bf16).bits_per_weight(), 4.5);
  EXPECT_DOUBLE_EQ(make(Codebook::uint4_asym, 128, ScaleFormat::f16).bits_per_weight(), 4.0 + 16.0 / 128 + 4.0 / 128);
  // NF4 g64 with double quantization: 256 groups → 8 bits each, one absmax2 block, one offset.
  const double dq = make(Codebook::nf4, 64, ScaleFormat::dq8).bits_per_weight();
  EXPECT_DOUBLE_EQ(dq, (rows * cols * 4.0 + 256 * 8 + 32 + 32) / (rows * cols));
  EXPECT_NEAR(dq, 4.127, 0.005);
}

TEST(QuantizedMatrix, ValidatesOnConstruction) {
  const auto s = [](std::size_t n) { return ScaleArray::encode(std::vector<float>(n, 1.0f), ScaleFormat::f32); };
  const std::vector<std::uint8_t> codes(8 * 16 / 2);
  EXPECT_NO_THROW(QuantizedMatrix(8, 16, 16, Codebook::nf4, codes, s(8)));
  EXPECT_THROW(QuantizedMatrix(0, 16, 16, Codebook::nf4, {}, s(0)), Error);                        // empty
  EXPECT_THROW(QuantizedMatrix(8, 16, 0, Codebook::nf4, codes, s(8)), Error);                      // group 0
  EXPECT_THROW(QuantizedMatrix(8, 16, 7, Codebook::nf4, codes, s(24)), Error);                     // odd group
  EXPECT_THROW(QuantizedMatrix(8, 16, 32, Codebook::nf4, codes, s(8)), Error);                     // group > row
  EXPECT_THROW(QuantizedMatrix(8, 16, 16, Codebook::nf4, std::vector<std::uint8_t>(10), s(8)), Error);  // codes size
  EXPECT_THROW(QuantizedMatrix(8, 16, 16, Codebook::nf4, codes, s(9)), Error);                     // scale count
  EXPECT_THROW(QuantizedMatrix(8, 16, 16, Codebook::uint4_asym, codes, s(8)), Error);              // missing zeros
  EXPECT_THROW(QuantizedMatrix(8, 16, 16, Codebook::nf4, codes, s(8), ZeroPoints::uint4(std::vector<std::uint8_t>(8))),
               Error);                                                                             // zeros not allowed
  EXPECT_THROW(QuantizedMatrix(8, 16, 16, static_cast<Codebook>(9), codes, s(8)), Error);          // bad codebook
  EXPECT_THROW(QuantizedMatrix(1, 3, 3, Codebook::nf4, {0x12, 0x34}, s(1)), Error);                // dirty padding
  try {
    QuantizedMatrix(8, 16, 16, Codebook::nf4, codes, s(9));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected 8"), std::string::npos) << e.what();
  }
}

TEST(QuantizedMatrix, FloatZeroPoints) {
  const auto zeros = ZeroPoints::floats({7.5f}, ScaleFormat::f16);
  const QuantizedMatrix q(1, 2, 2, Codebook::uint4_asym, {0x8F}, ScaleArray::encode({2.0f}, ScaleFormat::f32), zeros);
  EXPECT_EQ(q.value(0, 0), 1.0f);
  EXPECT_EQ(q.value(0, 1), 15.0f);
  EXPECT_THROW(ZeroPoints::floats({1.0f}, ScaleFormat::dq8), Error);
}

}  // namespace quantized_matrix_test
