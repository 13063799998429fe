// nibble container: every codebook / scale / zero format round-trips bit-exactly,
// blobs are 64-byte aligned, and corrupted or lying files throw nibble::Error.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/io/nibble_file.hpp>
#include <nibble/quant/rtn.hpp>

#include "test_util.hpp"

namespace nibble_file_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;
using io::NibbleFileReader;

namespace {

std::string temp_path(const std::string& name) { return ::testing::TempDir() + "nibble_nf_" + name; }

std::vector<std::uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

QuantizedMatrix make(Codebook cb, int group, ScaleFormat sf, Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  QuantConfig c;
  c.codebook = cb;
  c.group_size = group;
  c.scale_format = sf;
  return quantize(test::gaussian_matrix(rows, cols, seed), c);
}

void expect_same(const QuantizedMatrix& a, const QuantizedMatrix& b) {
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_EQ(a.cols(), b.cols());
  EXPECT_EQ(a.group_size(), b.group_size());
  EXPECT_EQ(a.codebook(), b.codebook());
  EXPECT_EQ(a.codes(), b.codes());
  EXPECT_EQ(a.scales().format(), b.scales().format());
  EXPECT_EQ(a.scales().decode(), b.scales().decode());
  EXPECT_EQ(a.decoded_zeros(), b.decoded_zeros());
  EXPECT_TRUE(a.dequantize().isApprox(b.dequantize(), 0.0f));
}

std::uint64_t u64_at(const std::vector<std::uint8_t>& f, std::size_t pos) {
  std::uint64_t v;
  std::memcpy(&v, f.data() + pos, 8);
  return v;
}

void expect_error(std::vector<std::uint8_t> bytes, const std::string& fragment) {
  try {
    NibbleFileReader r = NibbleFileReader::from_bytes(std::move(bytes));
    for (const auto& t : r.tensors())
      if (t.kind == io::TensorKind::quantized) r.load(t.name);
    FAIL() << "expected nibble::Error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

// Index fields are found by the writer's layout: the index sits at the offset in the header.
std::size_t index_offset(const std::vector<std::uint8_t>& f) { return static_cast<std::size_t>(u64_at(f, 16)); }

// Rewrites the index checksum after a deliberate edit, so the edit itself is what the reader sees.
void reseal(std::vector<std::uint8_t>& f) {
  const std::size_t off = index_offset(f), n = static_cast<std::size_t>(u64_at(f, 24));
  const std::uint64_t sum = io::fnv1a64(f.data() + off, n);
  std::memcpy(f.data() + 32, &sum, 8);
}

}  // namespace

TEST(NibbleFile, EveryFormatRoundTripsExactly) {
  std::map<std::string, QuantizedMatrix> tensors;
  tensors["sym.f32"] = make(Codebook::int4_sym, 32, ScaleFormat::f32, 6, 64, 1);
  tensors["asym.f16.ragged"] = make(Codebook::uint4_asym, 16, ScaleFormat::f16, 3, 41, 2);
  tensors["nf4.dq8"] = make(Codebook::nf4, 64, ScaleFormat::dq8, 40, 512, 3);  // 320 groups: two absmax2 blocks
  tensors["fp4.bf16.row"] = make(Codebook::fp4, kPerRow, ScaleFormat::bf16, 4, 33, 4);
  tensors["iq4_nl.f16"] = make(Codebook::iq4_nl, 32, ScaleFormat::f16, 5, 96, 5);
  std::vector<float> zf = {0.5f, 1.25f, -3.0f, 7.5f};
  tensors["asym.floatzero"] = QuantizedMatrix(2, 8, 4, Codebook::uint4_asym, std::vector<std::uint8_t>(8, 0x1F),
                                              ScaleArray::encode({1, 2, 3, 4}, ScaleFormat::f32),
                                              ZeroPoints::floats(zf, ScaleFormat::f16));
  const std::string path = temp_path("all.nibble");
  io::NibbleFileWriter w(path);
  w.set_metadata("source", "unit test");
  for (const auto& [name, m] : tensors) w.add(name, m);
  const std::vector<std::uint16_t> norm = {float_to_half(1.0f), float_to_half(-0.5f), float_to_half(2.0f)};
  w.add_raw("norm", io::DType::F16, {3}, norm.data(), 6);
  w.finish();

  const NibbleFileReader r = NibbleFileReader::open(path);
  EXPECT_EQ(r.metadata().at("source"), "unit test");
  ASSERT_EQ(r.tensors().size(), tensors.size() + 1);
  for (const auto& t : r.tensors()) {
    EXPECT_EQ(t.offset % 64, 0u) << t.name;
    if (t.kind == io::TensorKind::quantized) expect_same(tensors.at(t.name), r.load(t.name));
  }
  EXPECT_EQ(r.load_raw("norm"), (std::vector<float>{1.0f, -0.5f, 2.0f}));
  EXPECT_THROW(r.load("norm"), Error);
  EXPECT_THROW(r.load_raw("sym.f32"), Error);
  EXPECT_THROW(r.load("missing"), Error);
  const auto all = io::load_nibble(path);
  EXPECT_EQ(all.size(), tensors.size());
  std::remove(path.c_str());
}

TEST(NibbleFile, RejectsCorruptAndLyingFiles) {
  const std::string path = temp_path("one.nibble");
  io::save_nibble(path, {{"w", make(Codebook::int4_sym, 32, ScaleFormat::f16, 4, 64, 7)}});
  const std::vector<std::uint8_t> good = read_all(path);
  std::remove(path.c_str());
  ASSERT_NO_THROW(NibbleFileReader::from_bytes(good));

  expect_error({}, "truncated");
  auto f = good;
  f[0] = 'X';
  expect_error(f, "wrong magic");
  f = good;
  f[8] = 9;
  expect_error(f, "unsupported version 9");
  f = good;
  f.pop_back();
  expect_error(f, "truncated or appended");
  f = good;
  f.resize(100);
  expect_error(f, "truncated or appended");
  f = good;
  const std::uint64_t huge = 1ull << 62;
  std::memcpy(f.data() + 16, &huge, 8);
  expect_error(f, "outside the file");
  f = good;
  f[64] ^= 0xFF;  // first byte of the tensor's codes
  expect_error(f, "checksum mismatch in tensor 'w'");
  f = good;
  f[index_offset(f) + 4] ^= 1;  // inside the index
  expect_error(f, "index checksum");

  // Index layout for the single tensor: u32 0 (metadata) | u32 1 | u32 1, "w" | u8 kind | rows at +14.
  const std::size_t rows_at = index_offset(good) + 4 + 4 + 4 + 1 + 1;
  f = good;
  const std::uint64_t rows = 5;  // shape lie: the blob holds 4 rows
  std::memcpy(f.data() + rows_at, &rows, 8);
  reseal(f);
  expect_error(f, "shape and formats need");
  f = good;
  f[rows_at + 24] = 9;  // codebook byte
  reseal(f);
  expect_error(f, "invalid codebook 9");
  f = good;
  f[rows_at + 25] = 7;  // scale format byte
  reseal(f);
  expect_error(f, "invalid scale format 7");
  f = good;
  const std::uint64_t gs = 3;
  std::memcpy(f.data() + rows_at + 16, &gs, 8);
  reseal(f);
  expect_error(f, "odd");
  f = good;
  const std::uint64_t bad_offset = 65;  // blob offset field
  std::memcpy(f.data() + rows_at + 32, &bad_offset, 8);
  reseal(f);
  expect_error(f, "misaligned or outside");
  f = good;
  f[index_offset(f) + 9] = 0xFF;  // tensor name length becomes huge
  reseal(f);
  expect_error(f, "");
}

TEST(NibbleFile, WriterRejectsDuplicatesAndBadRawTensors) {
  const std::string path = temp_path("dup.nibble");
  io::NibbleFileWriter w(path);
  const auto m = make(Codebook::nf4, 32, ScaleFormat::f32, 2, 32, 9);
  w.add("w", m);
  EXPECT_THROW(w.add("w", m), Error);
  const float x[2] = {};
  EXPECT_THROW(w.add_raw("x", io::DType::F32, {3}, x, 8), Error);
  EXPECT_THROW(w.add_raw("y", io::DType::I32, {2}, x, 8), Error);
  std::remove(path.c_str());
}

}  // namespace nibble_file_test
