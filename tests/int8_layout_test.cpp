// The row_panels layout of the 8-bit form (format/int8_matrix.hpp) and the AVX-512 VNNI
// kernels that read it (kernels/int8_avx512.hpp): the stored order against the
// documented formula built here independently, every accessor and the Q8_0 bytes equal
// to the row_major matrix's, conversion both ways, and every path, mode, batch and
// thread count on panels bit for bit equal to the scalar reference on row_major.
// Built into int8_matrix_test (tests/CMakeLists.txt), so bochs runs the VNNI kernels.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include <nibble/model/llama_weights.hpp>
#include <nibble/nibble.hpp>

#include "int8_test_util.hpp"

namespace int8_layout_test {

using namespace int8_test;
using nibble::Int8Layout;

TEST(Int8Layout, PanelsHoldTheDocumentedOrderAndTheSameValues) {
  for (const Shape& s : kShapes) {
    const Int8Matrix W = random_matrix(s.rows, s.cols, 41);
    const Int8Matrix P = W.with_layout(Int8Layout::row_panels);
    ASSERT_EQ(P.layout(), Int8Layout::row_panels);
    const std::size_t nb = s.cols / 32, panels = (s.rows + 15) / 16;
    // The order from the header's formula; rows past the matrix are zero.
    std::vector<std::int8_t> codes(panels * 16 * s.cols, 0);
    std::vector<std::uint16_t> scales(panels * 16 * nb, 0);
    for (std::size_t r = 0; r < s.rows; ++r)
      for (std::size_t c = 0; c < s.cols; ++c) {
        const std::size_t p = r / 16, i = r % 16, k = c / 32, d = (c % 32) / 4, b = c % 4;
        codes[(((p * nb + k) * 8 + d) * 16 + i) * 4 + b] = W.codes()[r * s.cols + c];
        if (c % 32 == 0) scales[(p * nb + k) * 16 + i] = W.scale_bits()[r * nb + k];
      }
    ASSERT_EQ(P.codes(), codes) << label(s);
    ASSERT_EQ(P.scale_bits(), scales) << label(s);
    EXPECT_EQ(P.to_q8_0_blocks(), W.to_q8_0_blocks()) << label(s);
    EXPECT_EQ(P.dequantize(), W.dequantize()) << label(s);
    std::vector<std::int8_t> row(s.cols);
    P.copy_row_codes(s.rows - 1, row.data());
    EXPECT_EQ(0, std::memcmp(row.data(), W.row_codes(s.rows - 1), s.cols)) << label(s);
    EXPECT_THROW(P.row_codes(0), nibble::Error);
    // Back, and the in-place (rvalue) conversion gives the same as the copy.
    const Int8Matrix back = P.with_layout(Int8Layout::row_major);
    EXPECT_EQ(back.codes(), W.codes());
    EXPECT_EQ(back.scale_bits(), W.scale_bits());
    const Int8Matrix moved = Int8Matrix(W).with_layout(Int8Layout::row_panels);
    EXPECT_EQ(moved.codes(), P.codes());
    EXPECT_EQ(moved.scale_bits(), P.scale_bits());
  }
}

TEST(Int8Layout, EveryPathOnPanelsEqualsTheScalarReference) {
  std::vector<Isa> isas = simd_isas();
  isas.push_back(Isa::scalar);
  for (const Shape& s : kShapes) {
    const Int8Matrix W = random_matrix(s.rows, s.cols, 42);
    const Int8Matrix P = W.with_layout(Int8Layout::row_panels);
    for (std::size_t batch : {1, 2, 4, 5, 9}) {
      if (s.rows > 1000 && batch != 1 && batch != 5) continue;  // emulator time
      const auto X = random_activations(batch * s.cols, static_cast<std::uint32_t>(batch));
      for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
        const auto ref = run(Isa::scalar, W, X, batch, mode);
        for (Isa isa : isas)
          for (int t : {1, 3}) {
            const auto got = run(isa, P, X, batch, mode, t);
            ASSERT_EQ(0, std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)))
                << nibble::to_string(isa) << (mode == ActivationMode::fast ? " fast " : " exact ") << label(s)
                << " batch " << batch << " threads " << t;
          }
      }
    }
  }
}

// The largest sums on panels: codes −128 / 127 against activations ±1.
TEST(Int8Layout, ExtremeCodesOnPanels) {
  for (int code : {-128, 127})
    for (float sign : {1.0f, -1.0f}) {
      const std::size_t rows = 21, cols = 1536;
      const Int8Matrix W(rows, cols, std::vector<std::int8_t>(rows * cols, static_cast<std::int8_t>(code)),
                         std::vector<std::uint16_t>(rows * cols / 32, nibble::float_to_half(0.5f)));
      const std::vector<float> x(cols, sign);
      const auto ref = run(Isa::scalar, W, x, 1, ActivationMode::fast);
      EXPECT_NEAR(ref[0], 0.5 * code * sign * cols, 1e-5 * 0.5 * 128 * cols);
      const Int8Matrix P = W.with_layout(Int8Layout::row_panels);
      for (Isa isa : simd_isas())
        ASSERT_EQ(0, std::memcmp(run(isa, P, x, 1, ActivationMode::fast).data(), ref.data(), rows * sizeof(float)))
            << nibble::to_string(isa) << " code " << code;
    }
}

// The model's conversion: in place when the StoredMatrix is the only holder, a copy
// (leaving the other holder's matrix as it was) when it is shared.
TEST(Int8Layout, StoredMatrixConvertsInPlaceOnlyWhenUnshared) {
  const Int8Matrix W = random_matrix(40, 96, 43);
  nibble::model::StoredMatrix only{Int8Matrix(W)};
  const Int8Matrix* before = only.int8_ptr().get();
  only.set_int8_layout(Int8Layout::row_panels);
  EXPECT_EQ(only.int8_ptr().get(), before);
  EXPECT_EQ(only.int8_ptr()->layout(), Int8Layout::row_panels);
  EXPECT_EQ(only.int8_ptr()->to_q8_0_blocks(), W.to_q8_0_blocks());

  nibble::model::StoredMatrix a{Int8Matrix(W)};
  const nibble::model::StoredMatrix b = a;
  a.set_int8_layout(Int8Layout::row_panels);
  EXPECT_NE(a.int8_ptr().get(), b.int8_ptr().get());
  EXPECT_EQ(a.int8_ptr()->layout(), Int8Layout::row_panels);
  EXPECT_EQ(b.int8_ptr()->layout(), Int8Layout::row_major);
  EXPECT_EQ(a.int8_ptr()->to_q8_0_blocks(), b.int8_ptr()->to_q8_0_blocks());
  std::vector<float> ra(96), rb(96);
  a.row_to_float(39, ra.data());
  b.row_to_float(39, rb.data());
  EXPECT_EQ(ra, rb);
}

}  // namespace int8_layout_test
