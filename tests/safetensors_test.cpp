// safetensors reader/writer: round trips, a hand-built file checked byte by byte,
// and every kind of malformed header rejected with nibble::Error.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/io/safetensors.hpp>
#include <nibble/quant/rtn.hpp>

#include "test_util.hpp"

namespace safetensors_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using nibble::io::DType;
using nibble::io::SafetensorsReader;
using nibble::io::SafetensorsWriter;

namespace {

std::string temp_path(const std::string& name) { return ::testing::TempDir() + "nibble_st_" + name; }

std::vector<std::uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// A file built by hand from a header string and a data section.
std::vector<std::uint8_t> make_file(const std::string& header, std::size_t data_bytes, std::uint64_t claimed_len = 0) {
  std::vector<std::uint8_t> out(8 + header.size() + data_bytes, 0);
  const std::uint64_t n = claimed_len ? claimed_len : header.size();
  std::memcpy(out.data(), &n, 8);
  if (!header.empty()) std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

void expect_error(std::vector<std::uint8_t> bytes, const std::string& fragment) {
  try {
    SafetensorsReader::from_bytes(std::move(bytes));
    FAIL() << "expected nibble::Error containing '" << fragment << "'";
  } catch (const nibble::Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(Safetensors, WriteThenReadRoundTripsEveryFloatType) {
  const std::string path = temp_path("roundtrip.safetensors");
  const Eigen::MatrixXf W = nibble::test::gaussian_matrix(5, 7, 1);
  nibble::RowMatrixXf Wr = W;
  std::vector<std::uint16_t> h(35), b(35);
  for (int i = 0; i < 35; ++i) {
    h[i] = nibble::float_to_half(Wr.data()[i]);
    b[i] = nibble::float_to_bf16(Wr.data()[i]);
  }
  const std::vector<std::int32_t> ints = {1, -2, 3};
  {
    SafetensorsWriter w(path);
    w.set_metadata("format", "pt");
    w.add_floats("a.f32", {5, 7}, Wr.data(), 35);
    w.add("a.f16", DType::F16, {5, 7}, h.data(), 70);
    w.add("a.bf16", DType::BF16, {35}, b.data(), 70);
    w.add("ints", DType::I32, {3}, ints.data(), 12);
    w.finish();
  }
  const auto file = read_all(path);
  std::uint64_t n;
  std::memcpy(&n, file.data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u) << "data section should start 8-byte aligned";

  const SafetensorsReader r = SafetensorsReader::open(path);
  ASSERT_EQ(r.tensors().size(), 4u);
  EXPECT_EQ(r.tensors()[0].name, "a.f32");  // file order preserved
  EXPECT_EQ(r.metadata().at("format"), "pt");
  const auto m = r.matrix("a.f32");
  EXPECT_EQ(m.rows(), 5);
  EXPECT_TRUE(m.isApprox(Wr, 0.0f));
  const auto fh = r.floats("a.f16");
  const auto fb = r.floats("a.bf16");
  for (int i = 0; i < 35; ++i) {
    EXPECT_EQ(fh[i], nibble::half_to_float(h[i]));
    EXPECT_EQ(fb[i], nibble::bf16_to_float(b[i]));
  }
  EXPECT_EQ(r.values<std::int32_t>("ints", DType::I32), ints);
  EXPECT_THROW(r.floats("ints"), nibble::Error);
  EXPECT_THROW(r.info("missing"), nibble::Error);
  std::remove(path.c_str());
}

TEST(Safetensors, ReadsAHandWrittenFile) {
  // Independent of the writer: header text and data written here by hand.
  const std::string header = R"({"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]},)"
                             R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  auto bytes = make_file(header, 12);
  const float a[2] = {1.5f, -2.0f};
  const std::uint16_t b[2] = {0x3C00, 0xC000};  // 1.0, -2.0 in fp16
  std::memcpy(bytes.data() + 8 + header.size(), a, 8);
  std::memcpy(bytes.data() + 8 + header.size() + 8, b, 4);
  const auto r = SafetensorsReader::from_bytes(bytes);
  EXPECT_EQ(r.floats("a"), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(r.floats("b"), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(r.tensors()[0].name, "a");  // sorted by offset
}

TEST(Safetensors, RejectsMalformedFiles) {
  const std::string good = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  expect_error({1, 2, 3}, "truncated");
  expect_error(make_file(good, 8, 1ull << 40), "exceeds the limit");
  expect_error(make_file(good, 8, good.size() + 100), "past the end");
  expect_error(make_file("{\"a\": [1,", 0), "not valid JSON");
  expect_error(make_file("[1,2]", 0), "not a JSON object");
  expect_error(make_file(std::string(100, '[') + std::string(100, ']'), 0), "nests deeper");
  expect_error(make_file(good, 4), "past the data section");  // truncated data
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "offsets span");
  expect_error(make_file(R"({"a":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}})", 8), "unsupported dtype 'Q9'");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "non-negative");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "begin 8 > end 0");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
               "overflows");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
               "overlap");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "data_offsets");
  expect_error(make_file(R"({"__metadata__":{"k":1}})", 0), "not a string");
}

TEST(Safetensors, WriterRejectsInconsistentTensors) {
  const std::string path = temp_path("bad.safetensors");
  SafetensorsWriter w(path);
  const float x[4] = {};
  EXPECT_THROW(w.add_floats("x", {3}, x, 4), nibble::Error);
  w.add_floats("x", {4}, x, 4);
  EXPECT_THROW(w.add_floats("x", {4}, x, 4), nibble::Error);
}

}  // namespace safetensors_test
