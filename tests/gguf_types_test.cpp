// GGUF tensor types decoded to float (ggml_types.hpp) and Q4_1 imported into a
// QuantizedMatrix. Each block here is built by a packer written from the layout in the
// opposite direction to the decoder (element → byte/bit position), with scales that are
// powers of two and small integers so every expected value is exact whatever the order
// of operations; bit-exactness on arbitrary values is checked against gguf-py in
// scripts/test-interop.sh. Bad sizes, unknown types and truncated files throw.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/io/gguf.hpp>
#include <nibble/nibble.hpp>

#include "test_util.hpp"

namespace gguf_types_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;
using io::GgmlType;
using io::GgufReader;

namespace {

std::string temp_path(const std::string& name) { return ::testing::TempDir() + "nibble_gguf_types_" + name; }

std::uint32_t id(GgmlType t) { return static_cast<std::uint32_t>(t); }

void put_f16(std::uint8_t* p, float v) {
  const std::uint16_t h = float_to_half(v);
  ASSERT_EQ(half_to_float(h), v) << "test values must be exact in f16";
  std::memcpy(p, &h, 2);
}

// Sets bits [bit, bit + width) of a little-endian byte string to v.
void put_bits(std::uint8_t* p, std::size_t bit, int width, int v) {
  for (int k = 0; k < width; ++k, ++bit)
    if ((v >> k) & 1) p[bit / 8] |= static_cast<std::uint8_t>(1u << (bit % 8));
}

// Element e (0..31) of a 32-block: its 4 low bits sit in byte e % 16, in the low nibble
// for the first half of the block and the high nibble for the second.
void put_nibble32(std::uint8_t* qs, int e, int q) { put_bits(qs, 8 * (e % 16) + 4 * (e / 16), 4, q & 15); }

// One block of a 32-element type with codes q (already offset-free, i.e. the stored
// unsigned code) and the given d (and m where the type has one).
std::vector<std::uint8_t> block32(GgmlType t, const int* q, float d, float m = 0.0f) {
  std::vector<std::uint8_t> b(io::ggml_type_size(id(t)).bytes, 0);
  put_f16(b.data(), d);
  switch (t) {
    case GgmlType::Q8_0:
      for (int e = 0; e < 32; ++e) b[2 + e] = static_cast<std::uint8_t>(static_cast<std::int8_t>(q[e]));
      break;
    case GgmlType::Q4_0:
    case GgmlType::IQ4_NL:
      for (int e = 0; e < 32; ++e) put_nibble32(b.data() + 2, e, q[e]);
      break;
    case GgmlType::Q4_1:
      put_f16(b.data() + 2, m);
      for (int e = 0; e < 32; ++e) put_nibble32(b.data() + 4, e, q[e]);
      break;
    case GgmlType::Q5_0:
      for (int e = 0; e < 32; ++e) {
        put_bits(b.data() + 2, static_cast<std::size_t>(e), 1, q[e] >> 4);
        put_nibble32(b.data() + 6, e, q[e]);
      }
      break;
    case GgmlType::Q5_1:
      put_f16(b.data() + 2, m);
      for (int e = 0; e < 32; ++e) {
        put_bits(b.data() + 4, static_cast<std::size_t>(e), 1, q[e] >> 4);
        put_nibble32(b.data() + 8, e, q[e]);
      }
      break;
    default: ADD_FAILURE() << "not a 32-element type";
  }
  return b;
}

// Q4_K / Q5_K 12-byte scale+min field, written from the layout: sub-blocks 0-3 in the
// low 6 bits of bytes 0-3 (scale) / 4-7 (min); sub-blocks 4-7 split into a low nibble in
// bytes 8-11 (scale low, min high) and 2 top bits in bits 6-7 of bytes 0-3 / 4-7.
void put_k_scales(std::uint8_t* s, const int* sc, const int* mn) {
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      put_bits(s, 8 * j, 6, sc[j]);
      put_bits(s, 8 * (j + 4), 6, mn[j]);
    } else {
      put_bits(s, 8 * (j + 4), 4, sc[j] & 15);
      put_bits(s, 8 * (j + 4) + 4, 4, mn[j] & 15);
      put_bits(s, 8 * (j - 4) + 6, 2, sc[j] >> 4);
      put_bits(s, 8 * j + 6, 2, mn[j] >> 4);
    }
  }
}

// K-quant element e (sub-block s = e/32, l = e%32): low 4 bits in byte 32·(s/2) + l of
// the 128 nibble bytes, low nibble for even s; for Q5_K the fifth bit is bit s of qh[l].
std::vector<std::uint8_t> block_k(GgmlType t, const int* q, float d, float dmin, const int* sc, const int* mn) {
  std::vector<std::uint8_t> b(io::ggml_type_size(id(t)).bytes, 0);
  put_f16(b.data(), d);
  put_f16(b.data() + 2, dmin);
  put_k_scales(b.data() + 4, sc, mn);
  const std::size_t qs = t == GgmlType::Q4_K ? 16 : 48;
  for (int e = 0; e < 256; ++e) {
    const int s = e / 32, l = e % 32;
    put_bits(b.data() + qs, 8 * static_cast<std::size_t>(32 * (s / 2) + l) + 4 * (s % 2), 4, q[e] & 15);
    if (t == GgmlType::Q5_K) put_bits(b.data() + 16, 8 * static_cast<std::size_t>(l) + s, 1, q[e] >> 4);
  }
  return b;
}

// Q6_K element e: half h = e/128, i = e%128, quarter k = i/32, l = i%32. Low 4 bits in
// ql[64h + 32·(k odd) + l], high nibble for k ≥ 2; top 2 bits in qh[32h + l] at bit 2k;
// int8 scale e/16 at byte 192 + e/16; f16 d at byte 208.
std::vector<std::uint8_t> block_q6_k(const int* q, float d, const int* sc) {
  std::vector<std::uint8_t> b(210, 0);
  for (int e = 0; e < 256; ++e) {
    const int h = e / 128, i = e % 128, k = i / 32, l = i % 32;
    put_bits(b.data(), 8 * static_cast<std::size_t>(64 * h + 32 * (k % 2) + l) + 4 * (k / 2), 4, q[e] & 15);
    put_bits(b.data() + 128, 8 * static_cast<std::size_t>(32 * h + l) + 2 * k, 2, q[e] >> 4);
  }
  for (int s = 0; s < 16; ++s) b[192 + s] = static_cast<std::uint8_t>(static_cast<std::int8_t>(sc[s]));
  put_f16(b.data() + 208, d);
  return b;
}

std::vector<float> decode(GgmlType t, const std::vector<std::uint8_t>& bytes, std::size_t count) {
  std::vector<float> out(count, -999.0f);
  io::dequantize_ggml(id(t), io::ByteView{bytes.data(), bytes.size()}, count, out.data());
  return out;
}

void append(std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) { a.insert(a.end(), b.begin(), b.end()); }

template <class F>
void expect_error(F f, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "expected nibble::Error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(GgmlDecode, ThirtyTwoElementTypesFollowTheirFormulas) {
  std::mt19937 rng(7);
  struct Case {
    GgmlType type;
    int lo, hi;       // stored code range
    float d, m;       // exact in f16; products with codes exact in f32
  };
  const Case cases[] = {{GgmlType::Q8_0, -128, 127, 0.0078125f, 0.0f}, {GgmlType::Q4_0, 0, 15, -0.25f, 0.0f},
                        {GgmlType::IQ4_NL, 0, 15, 0.125f, 0.0f},        {GgmlType::Q4_1, 0, 15, 0.5f, -3.75f},
                        {GgmlType::Q5_0, 0, 31, 2.0f, 0.0f},            {GgmlType::Q5_1, 0, 31, -0.0625f, 1.5f}};
  for (const Case& c : cases) {
    std::vector<std::uint8_t> bytes;
    std::vector<float> want;
    for (int blk = 0; blk < 3; ++blk) {
      int q[32];
      std::uniform_int_distribution<int> code(c.lo, c.hi);
      for (int& v : q) v = code(rng);
      q[0] = c.lo;  // the extremes of the code range, in both halves of the block
      q[31] = c.hi;
      const float d = c.d * static_cast<float>(blk + 1), m = c.m * static_cast<float>(blk + 1);
      append(bytes, block32(c.type, q, d, m));
      for (int e = 0; e < 32; ++e) {
        float w = 0;
        switch (c.type) {
          case GgmlType::Q8_0: w = d * static_cast<float>(q[e]); break;
          case GgmlType::Q4_0: w = d * static_cast<float>(q[e] - 8); break;
          case GgmlType::IQ4_NL: w = d * kIQ4NLValues[static_cast<std::size_t>(q[e])]; break;
          case GgmlType::Q5_0: w = d * static_cast<float>(q[e] - 16); break;
          default: w = d * static_cast<float>(q[e]) + m; break;  // Q4_1, Q5_1
        }
        want.push_back(w);
      }
    }
    const std::vector<float> got = decode(c.type, bytes, 96);
    for (std::size_t i = 0; i < 96; ++i)
      ASSERT_EQ(got[i], want[i]) << io::ggml_type_name(id(c.type)) << " element " << i;
  }
}

TEST(GgmlDecode, KQuantsFollowTheirFormulas) {
  std::mt19937 rng(8);
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q5_K}) {
    const int qmax = t == GgmlType::Q4_K ? 15 : 31;
    std::vector<std::uint8_t> bytes;
    std::vector<float> want;
    for (int blk = 0; blk < 2; ++blk) {
      int q[256], sc[8], mn[8];
      std::uniform_int_distribution<int> code(0, qmax), six(0, 63);
      for (int& v : q) v = code(rng);
      for (int j = 0; j < 8; ++j) {
        sc[j] = six(rng);
        mn[j] = six(rng);
      }
      sc[7] = 63;  // all six bits of a high sub-block's scale and min in use
      mn[6] = 63;
      const float d = blk ? 0.25f : 0.015625f, dmin = blk ? -0.5f : 0.03125f;
      append(bytes, block_k(t, q, d, dmin, sc, mn));
      for (int e = 0; e < 256; ++e)
        want.push_back(d * static_cast<float>(sc[e / 32]) * static_cast<float>(q[e]) -
                       dmin * static_cast<float>(mn[e / 32]));
    }
    const std::vector<float> got = decode(t, bytes, 512);
    for (std::size_t i = 0; i < 512; ++i) ASSERT_EQ(got[i], want[i]) << io::ggml_type_name(id(t)) << " element " << i;
  }
  {
    int q[256], sc[16];
    std::uniform_int_distribution<int> code(0, 63), scale(-128, 127);
    for (int& v : q) v = code(rng);
    for (int& v : sc) v = scale(rng);
    const float d = 0.0078125f;
    const std::vector<float> got = decode(GgmlType::Q6_K, block_q6_k(q, d, sc), 256);
    for (int e = 0; e < 256; ++e)
      ASSERT_EQ(got[static_cast<std::size_t>(e)], d * static_cast<float>(sc[e / 16]) * static_cast<float>(q[e] - 32))
          << "Q6_K element " << e;
  }
}

// A few bytes set by hand, values worked out on paper from the layout (guards against
// the packer above and the decoder sharing a misreading).
TEST(GgmlDecode, HandWorkedKQuantBytes) {
  std::vector<std::uint8_t> b(144, 0);
  put_f16(b.data(), 1.0f);      // d
  put_f16(b.data() + 2, 1.0f);  // dmin
  b[4 + 0] = 0xC1;  // sc[0] = 1, top bits of sc[4] = 3
  b[4 + 4] = 0x83;  // mn[0] = 3, top bits of mn[4] = 2
  b[4 + 8] = 0x52;  // sc[4] low = 2, mn[4] low = 5  → sc[4] = 50, mn[4] = 37
  b[16 + 0] = 0x09;    // element 0 = 9 (sub-block 0), element 32 = 0 (sub-block 1)
  b[16 + 64] = 0x7A;   // element 128 = 10 (sub-block 4), element 160 = 7 (sub-block 5)
  const std::vector<float> y = decode(GgmlType::Q4_K, b, 256);
  EXPECT_EQ(y[0], 1 * 9 - 3);
  EXPECT_EQ(y[32], 0.0f);  // sc[1] = mn[1] = 0
  EXPECT_EQ(y[128], 50 * 10 - 37);
  EXPECT_EQ(y[160], 0.0f);

  std::vector<std::uint8_t> c(210, 0);
  c[0] = 0x21;     // element 0 low 4 bits = 1, element 64 low 4 bits = 2
  c[128] = 0xE4;   // qh[0] = 0b11'10'01'00: top bits of elements 0, 32, 64, 96 = 0, 1, 2, 3
  c[192 + 0] = 3;  // scale of elements 0..15
  c[192 + 2] = 0xFF;  // scale of elements 32..47 = -1
  c[192 + 4] = 2;  // elements 64..79
  c[192 + 6] = 1;  // elements 96..111
  put_f16(c.data() + 208, 0.5f);
  const std::vector<float> z = decode(GgmlType::Q6_K, c, 256);
  EXPECT_EQ(z[0], 0.5f * 3 * (1 - 32));
  EXPECT_EQ(z[32], 0.5f * -1 * (16 - 32));
  EXPECT_EQ(z[64], 0.5f * 2 * (2 + 32 - 32));
  EXPECT_EQ(z[96], 0.5f * 1 * (48 - 32));
}

TEST(GgmlDecode, PlainFloatTypes) {
  const std::vector<float> v = {1.5f, -0.0f, 65504.0f, 3.0517578125e-05f, -2.0f};
  std::vector<std::uint8_t> f32(v.size() * 4), f16(v.size() * 2), bf16(v.size() * 2);
  std::memcpy(f32.data(), v.data(), f32.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::uint16_t h = float_to_half(v[i]), b = float_to_bf16(v[i]);
    std::memcpy(f16.data() + 2 * i, &h, 2);
    std::memcpy(bf16.data() + 2 * i, &b, 2);
  }
  const auto a = decode(GgmlType::F32, f32, v.size()), h = decode(GgmlType::F16, f16, v.size()),
             b = decode(GgmlType::BF16, bf16, v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(std::memcmp(&a[i], &v[i], 4), 0) << i;
    EXPECT_EQ(std::memcmp(&h[i], &v[i], 4), 0) << i;
    EXPECT_EQ(b[i], bf16_to_float(float_to_bf16(v[i]))) << i;
  }
  EXPECT_EQ(b[0], 1.5f);
  EXPECT_EQ(b[4], -2.0f);
}

TEST(GgmlDecode, WrongSizesAndUnknownTypesThrow) {
  std::vector<std::uint8_t> blk(144, 0);
  std::vector<float> out(512);
  expect_error([&] { io::dequantize_ggml(id(GgmlType::Q4_K), io::ByteView{blk.data(), 143}, 256, out.data()); },
               "needs 1 x 144 bytes");
  expect_error([&] { io::dequantize_ggml(id(GgmlType::Q4_K), io::ByteView{blk.data(), 144}, 512, out.data()); },
               "needs 2 x 144 bytes");
  expect_error([&] { io::dequantize_ggml(id(GgmlType::Q4_K), io::ByteView{blk.data(), 144}, 100, out.data()); },
               "not a whole number of 256-element blocks");
  expect_error([&] { io::dequantize_ggml(10, io::ByteView{blk.data(), 84}, 256, out.data()); },
               "cannot decode data of ggml type Q2_K");
  expect_error([&] { io::dequantize_ggml(999, io::ByteView{blk.data(), 4}, 1, out.data()); }, "ggml type id 999");
}

// Every type through the writer and reader: load_float gives rows = ne[1], cols = ne[0],
// with odd row counts and several blocks per row, equal to the block decoder's output.
TEST(GgufLoadFloat, EveryTypeThroughTheReader) {
  std::mt19937 rng(9);
  const GgmlType types[] = {GgmlType::F32,  GgmlType::F16,  GgmlType::BF16, GgmlType::Q8_0,
                            GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                            GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K, GgmlType::IQ4_NL};
  const std::string path = temp_path("every.gguf");
  std::vector<std::vector<std::uint8_t>> data;
  {
    io::GgufWriter w(path);
    for (GgmlType t : types) {
      const auto ts = io::ggml_type_size(id(t));
      const std::size_t rows = 3, cols = 3 * ts.block * (ts.block == 1 ? 32 : 1);
      std::vector<std::uint8_t> bytes(rows * cols / ts.block * ts.bytes);
      for (auto& v : bytes) v = static_cast<std::uint8_t>(rng());
      // Keep every f16 field finite: rewrite the d / m positions with small values.
      for (std::size_t b = 0; b < bytes.size() / ts.bytes; ++b) {
        std::uint8_t* p = bytes.data() + b * ts.bytes;
        const float dv = static_cast<float>(b % 7 + 1) / 64.0f;
        if (t == GgmlType::F16 || t == GgmlType::BF16 || t == GgmlType::F32) continue;
        if (t == GgmlType::Q6_K) {
          put_f16(p + 208, dv);
          continue;
        }
        put_f16(p, dv);
        if (t == GgmlType::Q4_1 || t == GgmlType::Q5_1 || t == GgmlType::Q4_K || t == GgmlType::Q5_K)
          put_f16(p + 2, -dv);
      }
      if (t == GgmlType::F32)
        for (std::size_t i = 0; i < bytes.size() / 4; ++i) {
          const float f = static_cast<float>(i) * 0.375f - 7.0f;
          std::memcpy(bytes.data() + 4 * i, &f, 4);
        }
      if (t == GgmlType::BF16)
        for (std::size_t i = 0; i < bytes.size() / 2; ++i) {
          const std::uint16_t h = float_to_bf16(static_cast<float>(i) * -0.3f);
          std::memcpy(bytes.data() + 2 * i, &h, 2);
        }
      if (t == GgmlType::F16)
        for (std::size_t i = 0; i < bytes.size() / 2; ++i) put_f16(bytes.data() + 2 * i, static_cast<float>(i) - 50.0f);
      w.add_tensor(std::string("t.") + io::ggml_type_name(id(t)), id(t), {cols, rows}, bytes.data(), bytes.size());
      data.push_back(bytes);
    }
    w.finish();
  }
  const GgufReader r = GgufReader::open(path);
  for (std::size_t k = 0; k < std::size(types); ++k) {
    const std::string name = std::string("t.") + io::ggml_type_name(id(types[k]));
    const RowMatrixXf m = r.load_float(name);
    const auto& ne = r.info(name).ne;
    ASSERT_EQ(m.rows(), 3) << name;
    ASSERT_EQ(static_cast<std::uint64_t>(m.cols()), ne[0]) << name;
    const std::vector<float> want = decode(types[k], data[k], static_cast<std::size_t>(m.size()));
    EXPECT_EQ(std::memcmp(m.data(), want.data(), want.size() * 4), 0) << name;
    EXPECT_TRUE(m.allFinite()) << name;
  }
  std::remove(path.c_str());
}

TEST(GgufLoadFloat, ShapesVectorsAndErrorsNameTheTensor) {
  const std::string path = temp_path("shapes.gguf");
  {
    io::GgufWriter w(path);
    std::vector<float> v(2 * 3 * 32);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
    w.add_tensor("norm", id(GgmlType::F32), {32}, v.data(), 128);
    w.add_tensor("cube", id(GgmlType::F32), {32, 3, 2}, v.data(), v.size() * 4);
    std::vector<std::uint8_t> q2k(84, 0);
    w.add_tensor("q2k", 10, {256}, q2k.data(), q2k.size());  // Q2_K: laid out, not decoded
    w.finish();
  }
  const GgufReader r = GgufReader::open(path);
  const Eigen::VectorXf norm = r.load_vector("norm");
  ASSERT_EQ(norm.size(), 32);
  EXPECT_EQ(norm(31), 31.0f);
  const RowMatrixXf cube = r.load_float("cube");  // rows = ne[1]·ne[2]
  ASSERT_EQ(cube.rows(), 6);
  ASSERT_EQ(cube.cols(), 32);
  EXPECT_EQ(cube(5, 31), 191.0f);
  expect_error([&] { r.load_float("q2k"); }, "tensor 'q2k' has ggml type Q2_K, which nibble does not decode");
  expect_error([&] { r.load_vector("cube"); }, "'cube' has 3 dimensions");
  expect_error([&] { r.load_float("nope"); }, "no tensor named 'nope'");
  expect_error([&] { r.load_quantized("norm"); }, "not a 2-D Q4_0, Q4_1 or IQ4_NL");
  std::remove(path.c_str());
}

TEST(GgufLoadFloat, TruncatedOrLyingFilesThrow) {
  const std::string path = temp_path("trunc.gguf");
  std::vector<std::uint8_t> blk(176 * 2, 0);
  {
    io::GgufWriter w(path);
    w.add_tensor("w", id(GgmlType::Q5_K), {256, 2}, blk.data(), blk.size());
    w.finish();
  }
  std::vector<std::uint8_t> file;
  {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    ASSERT_NE(f, nullptr);
    int c;
    while ((c = std::fgetc(f)) != EOF) file.push_back(static_cast<std::uint8_t>(c));
    std::fclose(f);
  }
  std::remove(path.c_str());
  EXPECT_NO_THROW(GgufReader::from_bytes(file).load_float("w"));
  expect_error([&] { GgufReader::from_bytes(std::vector<std::uint8_t>(file.begin(), file.end() - 1)); },
               "runs past the data section");
  // The shape field lies: ne[1] = 3 (needs 528 bytes, the file has 352).
  std::vector<std::uint8_t> lie = file;
  const std::uint64_t two = 2, three = 3, odd = 255;
  std::uint8_t pattern[16];
  const std::uint64_t k256 = 256;
  std::memcpy(pattern, &k256, 8);
  std::memcpy(pattern + 8, &two, 8);
  const auto at = std::search(lie.begin(), lie.end(), pattern, pattern + 16);
  ASSERT_NE(at, lie.end());
  const std::size_t ne_at = static_cast<std::size_t>(at - lie.begin());
  std::memcpy(lie.data() + ne_at + 8, &three, 8);
  expect_error([&] { GgufReader::from_bytes(lie); }, "runs past the data section");
  // ne[0] not a multiple of the 256-element block.
  lie = file;
  std::memcpy(lie.data() + ne_at, &odd, 8);
  expect_error([&] { GgufReader::from_bytes(lie); }, "not a multiple of its block size 256");
}

// ---- Q4_1 → QuantizedMatrix --------------------------------------------------------------

namespace {

// rows × cols Q4_1 blocks with random codes, d and m of realistic magnitudes (and a
// constant block, d = 0, in row 1).
std::vector<std::uint8_t> random_q4_1(std::size_t rows, std::size_t cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dd(0.001f, 0.05f), mm(-0.4f, 0.1f);
  std::vector<std::uint8_t> out;
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t b = 0; b < cols / 32; ++b) {
      int q[32];
      for (int& v : q) v = static_cast<int>(rng() % 16);
      const bool constant = r == 1 && b == 0;
      const float d = constant ? 0.0f : half_to_float(float_to_half(dd(rng)));
      const float m = half_to_float(float_to_half(mm(rng)));
      append(out, block32(GgmlType::Q4_1, q, d, m));
    }
  return out;
}

}  // namespace

TEST(GgufQ4_1, ImportsCodesAndScalesExactlyAndValuesWithinTheBound) {
  const std::size_t rows = 37, cols = 96;
  const std::vector<std::uint8_t> bytes = random_q4_1(rows, cols, 21);
  const QuantizedMatrix q = io::from_q4_1_blocks(rows, cols, io::ByteView{bytes.data(), bytes.size()});
  EXPECT_EQ(q.codebook(), Codebook::uint4_asym);
  EXPECT_EQ(q.group_size(), 32u);
  EXPECT_EQ(q.scales().format(), ScaleFormat::f16);
  EXPECT_EQ(q.zeros().format, ZeroFormat::f32);
  const std::vector<float> want = decode(GgmlType::Q4_1, bytes, rows * cols);
  const Eigen::MatrixXf got = q.dequantize();
  double worst_in_bounds = 0;
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t b = 0; b < cols / 32; ++b) {
      const std::uint8_t* blk = bytes.data() + (r * cols / 32 + b) * 20;
      const float d = half_to_float(io::load_u16(blk)), m = half_to_float(io::load_u16(blk + 2));
      if (d != 0.0f) {
        EXPECT_EQ(q.scales().raw16()[r * cols / 32 + b], io::load_u16(blk));
        for (int j = 0; j < 16; ++j) {
          EXPECT_EQ(q.code(r, b * 32 + static_cast<std::size_t>(j)), blk[4 + j] & 15);
          EXPECT_EQ(q.code(r, b * 32 + static_cast<std::size_t>(j) + 16), blk[4 + j] >> 4);
        }
      }
      const float bound = io::q4_1_rounding_bound(d, m);
      for (std::size_t c = b * 32; c < b * 32 + 32; ++c) {
        const float diff = std::fabs(got(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c)) -
                                     want[r * cols + c]);
        if (d == 0.0f) {
          EXPECT_EQ(diff, 0.0f) << "constant block must be exact";
          continue;
        }
        ASSERT_LE(diff, bound) << "row " << r << " col " << c;
        worst_in_bounds = std::max(worst_in_bounds, static_cast<double>(diff / bound));
      }
    }
  EXPECT_GT(worst_in_bounds, 0.0) << "expected some rounding difference on random data";
  // Two roundings is what the bound is for: a tighter one (a quarter) would be violated
  // rarely if ever; the point is that it is not loose by orders of magnitude.
  EXPECT_LT(worst_in_bounds, 1.0);
}

TEST(GgufQ4_1, RunsOnTheKernelsThroughTheReader) {
  const std::size_t rows = 45, cols = 160;
  const std::vector<std::uint8_t> bytes = random_q4_1(rows, cols, 22);
  const std::string path = temp_path("q41.gguf");
  {
    io::GgufWriter w(path);
    w.add_tensor("blk.0.ffn_up.weight", id(GgmlType::Q4_1), {cols, rows}, bytes.data(), bytes.size());
    w.finish();
  }
  const GgufReader r = GgufReader::open(path);
  const RowMatrixXf W = r.load_float("blk.0.ffn_up.weight");
  const QuantizedMatrix q = r.load_quantized("blk.0.ffn_up.weight");
  std::remove(path.c_str());
  const PackedMatrix P(q);
  const Eigen::VectorXf x = test::gaussian_matrix(static_cast<Eigen::Index>(cols), 1, 5);
  const Eigen::VectorXf ref = W * x;
  for (ActivationMode mode : {ActivationMode::exact, ActivationMode::fast}) {
    Eigen::VectorXf y(static_cast<Eigen::Index>(rows));
    GemvOptions opt;
    opt.mode = mode;
    gemv(P, x, y, opt);
    // exact: fp32 sums in another order; fast: activations rounded to int8 per block.
    const float tol = mode == ActivationMode::exact ? 1e-4f : 2e-2f;
    EXPECT_LE((y - ref).cwiseAbs().maxCoeff(), tol * (1.0f + ref.cwiseAbs().maxCoeff()))
        << (mode == ActivationMode::exact ? "exact" : "fast");
  }
}

TEST(GgufQ4_1, BadBlocksThrow) {
  std::vector<std::uint8_t> bytes = random_q4_1(2, 64, 3);
  expect_error([&] { io::from_q4_1_blocks(2, 64, io::ByteView{bytes.data(), bytes.size() - 1}); },
               "needs 80 bytes of Q4_1 blocks, got 79");
  expect_error([&] { io::from_q4_1_blocks(2, 48, io::ByteView{bytes.data(), bytes.size()}); }, "2 x 48 is invalid");
  const std::uint16_t inf = 0x7C00;
  std::memcpy(bytes.data() + 20 + 2, &inf, 2);  // m of block 1 (row 0) = +Inf
  expect_error([&] { io::from_q4_1_blocks(2, 64, io::ByteView{bytes.data(), bytes.size()}); },
               "Q4_1 block 1 of row 0 has a non-finite d or m");
}

}  // namespace gguf_types_test
