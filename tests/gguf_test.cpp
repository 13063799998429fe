// GGUF: Q4_0 bytes equal a literal transcription of llama.cpp's reference quantizer,
// Q4_0 / IQ4_NL / F32 tensors round-trip through the writer and reader, and
// malformed files throw nibble::Error. (The independent check with gguf-py is in
// scripts/test-interop.sh.)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/io/gguf.hpp>
#include <nibble/quant/metrics.hpp>

#include "test_util.hpp"

namespace gguf_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;
using io::GgufReader;

namespace {

std::string temp_path(const std::string& name) { return ::testing::TempDir() + "nibble_gguf_" + name; }

std::vector<std::uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// ggml-quants.c quantize_row_q4_0_ref, transcribed statement by statement (block_q4_0 =
// {ggml_half d; uint8_t qs[16]}). `volatile` stops FMA contraction, as the plain C
// source compiled without -mfma behaves.
void llama_cpp_q4_0_ref(const float* x, std::uint8_t* y, int k) {
  const int qk = 32;
  const int nb = k / qk;
  for (int i = 0; i < nb; i++) {
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < qk; j++) {
      const float v = x[i * qk + j];
      if (amax < std::fabs(v)) {
        amax = std::fabs(v);
        max = v;
      }
    }
    const float d = max / -8;
    const float id = d ? 1.0f / d : 0.0f;
    const std::uint16_t dh = float_to_half(d);
    std::memcpy(y + i * 18, &dh, 2);
    for (int j = 0; j < qk / 2; ++j) {
      volatile float p0 = x[i * qk + 0 + j] * id;
      volatile float p1 = x[i * qk + qk / 2 + j] * id;
      const float x0 = p0;
      const float x1 = p1;
      const std::uint8_t xi0 = static_cast<std::uint8_t>(std::min<std::int8_t>(15, static_cast<std::int8_t>(x0 + 8.5f)));
      const std::uint8_t xi1 = static_cast<std::uint8_t>(std::min<std::int8_t>(15, static_cast<std::int8_t>(x1 + 8.5f)));
      y[i * 18 + 2 + j] = static_cast<std::uint8_t>(xi0 | (xi1 << 4));
    }
  }
}

void expect_error(std::vector<std::uint8_t> bytes, const std::string& fragment) {
  try {
    GgufReader::from_bytes(std::move(bytes));
    FAIL() << "expected nibble::Error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(GgufQ4_0, MatchesLlamaCppReferenceByteForByte) {
  const Eigen::MatrixXf W = test::gaussian_matrix(24, 256, 11, 0.05f);
  RowMatrixXf Wr = W;
  Wr(3, 5) = 0.0f;                          // some structure the rounding rule must handle:
  Wr.row(4).segment(0, 32).setZero();       // an all-zero block (d = 0)
  Wr.row(5).segment(32, 32).setConstant(0.25f);
  const QuantizedMatrix q = io::quantize_q4_0(Wr);
  const std::vector<std::uint8_t> ours = io::to_q4_0_blocks(q);
  std::vector<std::uint8_t> ref(ours.size());
  for (Eigen::Index r = 0; r < Wr.rows(); ++r) llama_cpp_q4_0_ref(Wr.row(r).data(), ref.data() + r * 8 * 18, 256);
  EXPECT_EQ(ours, ref);
  // The block's signed extreme maps to code 0, i.e. exactly −8·d (up to d's fp16 rounding).
  EXPECT_EQ(q.code(5, 32), 0);
}

TEST(GgufQ4_0, HandComputedBlock) {
  // Block: −4, then 2, 1, 0.5, 0, ... d = −4/−8 = 0.5, id = 2: −4 → (int8)(−8 + 8.5) = 0,
  // 2 → 12, 1 → 10, 0.5 → 9, 0 → 8; the last element 1.75 → (int8)(3.5 + 8.5) = 12.
  std::vector<float> x(32, 0.0f);
  x[0] = -4.0f;
  x[1] = 2.0f;
  x[2] = 1.0f;
  x[3] = 0.5f;
  x[31] = 1.75f;
  std::uint8_t blk[18];
  io::quantize_row_q4_0_ref(x.data(), 32, blk);
  std::uint16_t d;
  std::memcpy(&d, blk, 2);
  EXPECT_EQ(d, 0x3800);  // 0.5 in fp16
  EXPECT_EQ(blk[2] & 0x0F, 0);
  EXPECT_EQ(blk[3] & 0x0F, 12);
  EXPECT_EQ(blk[4] & 0x0F, 10);
  EXPECT_EQ(blk[5] & 0x0F, 9);
  EXPECT_EQ(blk[6] & 0x0F, 8);
  EXPECT_EQ(blk[2 + 15] >> 4, 12);  // element 31 sits in the high nibble of byte 15
}

TEST(GgufIQ4_NL, TableIsLlamaCppKvalues) {
  // kvalues_iq4nl as printed in reference/algorithms.md §5.3.
  const int want[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(codebook_values(Codebook::iq4_nl)[i], want[i]);
}

TEST(GgufIQ4_NL, BestIndexAndQualityProperties) {
  EXPECT_EQ(nearest_iq4_nl(-200.0f), 0);
  EXPECT_EQ(nearest_iq4_nl(200.0f), 15);
  EXPECT_EQ(nearest_iq4_nl(7.0f), 9);     // between 1 and 13: tie goes up
  EXPECT_EQ(nearest_iq4_nl(6.9f), 8);
  EXPECT_EQ(nearest_iq4_nl(-10.0f), 7);
  // Every code is the nearest table value (brute force).
  for (float v = -130.0f; v <= 130.0f; v += 0.37f) {
    const int got = nearest_iq4_nl(v);
    for (int k = 0; k < 16; ++k) EXPECT_LE(std::fabs(v - kIQ4NLValues[got]), std::fabs(v - kIQ4NLValues[k]));
  }
}

TEST(Gguf, WriteReadRoundTrip) {
  const Eigen::MatrixXf W = test::gaussian_matrix(16, 128, 3, 0.02f);
  const Eigen::MatrixXf norm = test::gaussian_matrix(1, 128, 4);
  const QuantizedMatrix q = io::quantize_q4_0(W);
  const std::string path = temp_path("rt.gguf");
  {
    io::GgufWriter w(path);
    w.set_general("llama", "round trip", 2);
    w.set_f32("test.value", 0.5f);
    w.set_bool("test.flag", true);
    w.add_q4_0("blk.0.q4", q);
    w.add_iq4_nl("blk.0.iq4", W);
    RowMatrixXf n = norm;
    w.add_f32("norm", 1, 128, n.data());
    w.finish();
  }
  const GgufReader r = GgufReader::open(path);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.metadata().at("general.architecture"), "llama");
  EXPECT_EQ(r.metadata().at("general.file_type"), "2");
  EXPECT_EQ(r.metadata().at("test.flag"), "true");
  ASSERT_EQ(r.tensors().size(), 3u);
  EXPECT_EQ(r.info("blk.0.q4").ne, (std::vector<std::uint64_t>{128, 16}));
  for (const auto& t : r.tensors()) EXPECT_EQ(t.offset % 32, 0u);
  const QuantizedMatrix back = r.load_q4_0("blk.0.q4");
  EXPECT_EQ(back.codes(), q.codes());
  EXPECT_EQ(back.scales().raw16(), q.scales().raw16());
  EXPECT_TRUE(r.dequantize("blk.0.q4").isApprox(q.dequantize(), 0.0f));
  EXPECT_TRUE(r.dequantize("norm").isApprox(norm, 0.0f));
  // IQ4_NL: non-uniform levels fitted by weighted least squares beat Q4_0 on Gaussian weights.
  const double e_iq4 = compare(W, r.dequantize("blk.0.iq4")).mse;
  const double e_q40 = compare(W, q.dequantize()).mse;
  EXPECT_LT(e_iq4, e_q40);
  EXPECT_GT(compare(W, r.dequantize("blk.0.iq4")).sqnr_db, 18.0);
  EXPECT_THROW(r.load_q4_0("blk.0.iq4"), Error);
  // IQ4_NL imports losslessly as an iq4_nl QuantizedMatrix and writes back to the same bytes.
  const QuantizedMatrix iq = r.load_quantized("blk.0.iq4");
  EXPECT_EQ(iq.codebook(), Codebook::iq4_nl);
  EXPECT_EQ(iq.group_size(), 32u);
  EXPECT_TRUE(r.dequantize("blk.0.iq4").isApprox(iq.dequantize(), 0.0f));
  const io::ByteView raw = r.bytes(r.info("blk.0.iq4"));
  EXPECT_EQ(io::to_gguf_blocks(io::GgmlType::IQ4_NL, iq), std::vector<std::uint8_t>(raw.data, raw.data + raw.size));
  EXPECT_EQ(r.load_quantized("blk.0.q4").codes(), q.codes());
  std::remove(path.c_str());
}

// llama.cpp's IQ4_NL fit through the QuantizedMatrix path equals the row quantizer's
// bytes, and negative block scales occur (the signed extreme maps to −127).
TEST(GgufIQ4_NL, MatrixQuantizerEqualsRowQuantizer) {
  const Eigen::MatrixXf W = test::gaussian_matrix(12, 192, 21, 0.03f);
  const RowMatrixXf Wr = W;
  const QuantizedMatrix q = io::quantize_iq4_nl(Wr);
  std::vector<std::uint8_t> ref(12 * 6 * 18);
  for (Eigen::Index r = 0; r < 12; ++r) io::quantize_row_iq4_nl(Wr.row(r).data(), 192, ref.data() + r * 6 * 18);
  EXPECT_EQ(io::to_gguf_blocks(io::GgmlType::IQ4_NL, q), ref);
  int negative = 0;
  for (float d : q.scales().decode()) negative += d < 0.0f;
  EXPECT_GT(negative, 0);
  EXPECT_LT(negative, 12 * 6);
  // The container's dequantization is the format's w = d · kvalues[q].
  RowMatrixXf deq(12, 192);
  io::dequantize_ggml(static_cast<std::uint32_t>(io::GgmlType::IQ4_NL), ref.data(), 12 * 192, deq.data());
  EXPECT_TRUE(deq.isApprox(RowMatrixXf(q.dequantize()), 0.0f));
  // Wrong codebook or group size for the block type are named.
  QuantConfig c;
  c.group_size = 32;
  EXPECT_THROW(io::to_gguf_blocks(io::GgmlType::IQ4_NL, quantize(W, c)), Error);
  c.codebook = Codebook::iq4_nl;
  EXPECT_NO_THROW(io::to_gguf_blocks(io::GgmlType::IQ4_NL, quantize(W, c)));
  c.group_size = 64;
  EXPECT_THROW(io::to_gguf_blocks(io::GgmlType::IQ4_NL, quantize(W, c)), Error);
}

TEST(Gguf, ShapeConstraintsAreNamed) {
  const Eigen::MatrixXf W = test::gaussian_matrix(4, 48, 5);
  try {
    io::quantize_q4_0(W);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("divisible by 32"), std::string::npos) << e.what();
  }
  QuantConfig c;
  c.group_size = 16;
  EXPECT_THROW(io::to_q4_0_blocks(quantize(test::gaussian_matrix(4, 64, 5), c)), Error);
  c.group_size = 32;
  c.codebook = Codebook::nf4;
  EXPECT_THROW(io::to_q4_0_blocks(quantize(test::gaussian_matrix(4, 64, 5), c)), Error);
}

TEST(Gguf, EmptyOrHugeQ4_0ShapesAreRejectedWithoutWork) {
  // Found by fuzzing: ne = {0, 2^40} has zero bytes, and once looped over 2^40 empty rows.
  EXPECT_THROW(io::from_q4_0_blocks(std::size_t{1} << 40, 0, io::ByteView{}), Error);
  EXPECT_THROW(io::from_q4_0_blocks(0, 32, io::ByteView{}), Error);
}

TEST(Gguf, RejectsMalformedFiles) {
  const std::string path = temp_path("small.gguf");
  {
    io::GgufWriter w(path);
    w.set_general("llama", "x", 2);
    w.add_q4_0("a", io::quantize_q4_0(test::gaussian_matrix(2, 32, 1)));
    w.add_q4_0("b", io::quantize_q4_0(test::gaussian_matrix(2, 32, 2)));
    w.finish();
  }
  const auto good = read_all(path);
  std::remove(path.c_str());
  ASSERT_NO_THROW(GgufReader::from_bytes(good));
  // Offsets of fields found by scanning for the second tensor name record ("b").
  std::size_t b_info = 0;
  for (std::size_t i = 0; i + 9 < good.size(); ++i)
    if (good[i] == 1 && good[i + 1] == 0 && good[i + 8] == 'b') b_info = i;
  ASSERT_GT(b_info, 0u);
  const std::size_t b_type = b_info + 8 + 1 + 4 + 16, b_offset = b_type + 4;

  expect_error({'G', 'G'}, "truncated");
  auto f = good;
  f[0] = 'X';
  expect_error(f, "wrong magic");
  f = good;
  f[4] = 7;
  expect_error(f, "unsupported version 7");
  f = good;
  f[15] = 0x7F;  // tensor count absurd
  expect_error(f, "exceed the limit");
  f = good;
  f.resize(f.size() - 10);
  expect_error(f, "runs past the data section");
  f = good;
  f.resize(b_info + 5);
  expect_error(f, "truncated");
  f = good;
  f[b_type] = 99;
  expect_error(f, "unknown ggml type 99");
  f = good;
  f[b_offset] = 0;  // b now starts where a starts
  expect_error(f, "overlap");
  f = good;
  f[b_offset] = 3;
  expect_error(f, "not a multiple of the alignment");
  f = good;
  f[b_info + 8 + 1] = 9;  // n_dims
  expect_error(f, "9 dimensions");
  f = good;
  f[b_info + 8 + 1 + 4] = 33;  // ne[0] = 33
  expect_error(f, "not a multiple of its block size");
  f = good;
  f[b_info + 8 + 1 + 4 + 8 + 7] = 0x40;  // ne[1] huge: bytes run past the end or overflow
  expect_error(f, "");
}

}  // namespace gguf_test
