// Importance matrices (io/imatrix.hpp) and the importance-weighted 4-bit block fit
// (quant/weighted_fit.hpp).
//
// Reader: a legacy imatrix.dat and a GGUF imatrix are written here byte by byte, from
// the layout in llama.cpp tools/imatrix/imatrix.cpp (not with nibble's writers), and
// read back exactly; truncated, corrupted and inconsistent files throw nibble::Error.
// Fit: on every block the weighted error is no worse than llama.cpp's plain Q4_0 and
// IQ4_NL rounding (io::quantize_q4_0 / quantize_iq4_nl) and than llama.cpp's own imatrix
// fit (re-implemented below from its description in ggml-quants.c), within a hair of an
// exhaustive search over every fp16 scale, and it round-trips through GGUF blocks.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/io/gguf.hpp>
#include <nibble/io/imatrix.hpp>
#include <nibble/quant/weighted_fit.hpp>

#include "llama_imatrix_fit_ref.hpp"
#include "test_util.hpp"

namespace imatrix_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

namespace {

// ---- byte builders -------------------------------------------------------------------

struct Bytes {
  std::vector<std::uint8_t> b;
  template <class T>
  Bytes& raw(T v) {
    std::uint8_t tmp[sizeof(T)];
    std::memcpy(tmp, &v, sizeof(T));
    b.insert(b.end(), tmp, tmp + sizeof(T));
    return *this;
  }
  Bytes& i32(std::int32_t v) { return raw(v); }
  Bytes& u32(std::uint32_t v) { return raw(v); }
  Bytes& u64(std::uint64_t v) { return raw(v); }
  Bytes& f32(float v) { return raw(v); }
  Bytes& text(const std::string& s) {
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& gstr(const std::string& s) { return u64(s.size()).text(s); }  // GGUF string
  Bytes& pad(std::size_t alignment) {
    while (b.size() % alignment) b.push_back(0);
    return *this;
  }
};

struct LegacyEntry {
  std::string name;
  std::int32_t ncall;
  std::vector<float> values;
};

std::vector<std::uint8_t> legacy_file(const std::vector<LegacyEntry>& entries, bool trailer = true,
                                      std::int32_t chunks = 4, const std::string& dataset = "train.txt") {
  Bytes out;
  out.i32(static_cast<std::int32_t>(entries.size()));
  for (const auto& e : entries) {
    out.i32(static_cast<std::int32_t>(e.name.size())).text(e.name).i32(e.ncall);
    out.i32(static_cast<std::int32_t>(e.values.size()));
    for (float v : e.values) out.f32(v);
  }
  if (trailer) out.i32(chunks).i32(static_cast<std::int32_t>(dataset.size())).text(dataset);
  return out.b;
}

std::vector<LegacyEntry> legacy_entries() {
  std::vector<LegacyEntry> e(2);
  e[0].name = "blk.0.attn_q.weight";
  e[0].ncall = 4;
  for (int j = 0; j < 64; ++j) e[0].values.push_back(0.25f * static_cast<float>(j) + 0.125f);
  e[1].name = "blk.0.ffn_down.weight";
  e[1].ncall = 3;
  for (int j = 0; j < 32; ++j) e[1].values.push_back(static_cast<float>(j * j) / 7.0f);
  return e;
}

struct GgufTensor {
  std::string name;
  std::vector<std::uint64_t> ne;
  std::uint32_t type;  // 0 = F32, 1 = F16
  std::vector<float> data;
};

// A GGUF v3 file as gguf_write_to_file lays it out: header, key/values, tensor infos,
// padding to 32, tensor data each padded to 32.
std::vector<std::uint8_t> gguf_file(const std::vector<GgufTensor>& tensors, bool metadata = true,
                                    const std::string& type = "imatrix") {
  Bytes out;
  out.text("GGUF").u32(3).u64(tensors.size()).u64(metadata ? 4 : 0);
  if (metadata) {
    out.gstr("general.type").u32(8).gstr(type);
    out.gstr("imatrix.datasets").u32(9).u32(8).u64(2).gstr("a.txt").gstr("b.txt");
    out.gstr("imatrix.chunk_count").u32(4).u32(7);
    out.gstr("imatrix.chunk_size").u32(4).u32(512);
  }
  std::uint64_t offset = 0;
  std::vector<std::uint64_t> offsets;
  for (const auto& t : tensors) {
    out.gstr(t.name).u32(static_cast<std::uint32_t>(t.ne.size()));
    for (auto d : t.ne) out.u64(d);
    out.u32(t.type).u64(offset);
    offsets.push_back(offset);
    const std::uint64_t bytes = t.data.size() * (t.type == 1 ? 2 : 4);
    offset += (bytes + 31) / 32 * 32;
  }
  out.pad(32);
  for (const auto& t : tensors) {
    for (float v : t.data) {
      if (t.type == 1)
        out.raw(float_to_half(v));
      else
        out.f32(v);
    }
    out.pad(32);
  }
  return out.b;
}

std::vector<GgufTensor> gguf_tensors() {
  std::vector<GgufTensor> t;
  std::vector<float> sums(64);
  for (int j = 0; j < 64; ++j) sums[j] = 3.0f * static_cast<float>(j) + 0.5f;
  t.push_back({"blk.0.attn_q.weight.in_sum2", {64}, 0, sums});
  t.push_back({"blk.0.attn_q.weight.counts", {1}, 0, {1024.0f}});
  // A 3-D (MoE) weight: 3 experts of 32 columns, expert 1 never routed to.
  std::vector<float> moe(96, 0.0f);
  for (int j = 0; j < 32; ++j) {
    moe[j] = static_cast<float>(j) + 1.0f;
    moe[64 + j] = 2.0f * static_cast<float>(j);
  }
  t.push_back({"blk.1.ffn_up_exps.weight.in_sum2", {32, 3}, 0, moe});
  t.push_back({"blk.1.ffn_up_exps.weight.counts", {1, 3}, 0, {10.0f, 0.0f, 5.0f}});
  return t;
}

template <class F>
void expect_error(F&& f, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "expected nibble::Error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

std::string temp_path(const std::string& name) { return ::testing::TempDir() + "nibble_imatrix_" + name; }

void write_file(const std::string& path, const std::vector<std::uint8_t>& b) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace

// ---- reader: legacy ----------------------------------------------------------------------

TEST(ImatrixLegacy, ReadsBackExactly) {
  const auto entries = legacy_entries();
  const auto m = io::imatrix_from_bytes(legacy_file(entries));
  EXPECT_EQ(m.format, io::ImatrixFormat::legacy_dat);
  EXPECT_EQ(m.chunks, 4u);
  ASSERT_EQ(m.datasets.size(), 1u);
  EXPECT_EQ(m.datasets[0], "train.txt");
  ASSERT_EQ(m.per_tensor.size(), 2u);
  for (const auto& e : entries) {
    const auto& got = m.per_tensor.at(e.name);
    ASSERT_EQ(got.values.size(), e.values.size());
    EXPECT_EQ(got.cols, e.values.size());
    EXPECT_EQ(got.matrices, 1u);
    EXPECT_EQ(got.counts, std::vector<std::int64_t>{e.ncall});
    for (std::size_t j = 0; j < e.values.size(); ++j)
      EXPECT_EQ(got.values[j], e.values[j] / static_cast<float>(e.ncall)) << e.name << " " << j;
    EXPECT_EQ(&m.for_weight(e.name, e.values.size()), &got.values);
  }
}

TEST(ImatrixLegacy, TrailerIsOptional) {
  const auto entries = legacy_entries();
  const auto m = io::imatrix_from_bytes(legacy_file(entries, false));
  EXPECT_EQ(m.chunks, 0u);
  EXPECT_TRUE(m.datasets.empty());
  EXPECT_EQ(m.per_tensor.size(), 2u);
  auto only_chunks = legacy_file(entries, false);
  Bytes b{only_chunks};
  b.i32(9);
  EXPECT_EQ(io::imatrix_from_bytes(b.b).chunks, 9u);
}

TEST(ImatrixLegacy, EveryTruncationThrows) {
  const auto entries = legacy_entries();
  const auto full = legacy_file(entries);
  const std::size_t no_trailer = legacy_file(entries, false).size();
  for (std::size_t n = 0; n < full.size(); ++n) {
    if (n == no_trailer || n == no_trailer + 4) continue;  // the optional trailer's two valid cut points
    EXPECT_THROW(io::imatrix_from_bytes(std::vector<std::uint8_t>(full.begin(), full.begin() + n)), Error) << n;
  }
}

TEST(ImatrixLegacy, BadFieldsThrowWithTheEntryName) {
  auto e = legacy_entries();
  expect_error([&] { io::imatrix_from_bytes(legacy_file({})); }, "entry count 0");
  auto bad = e;
  bad[1].ncall = 0;
  expect_error([&] { io::imatrix_from_bytes(legacy_file(bad)); }, "'blk.0.ffn_down.weight' has ncall 0");
  bad = e;
  bad[0].values[5] = -1.0f;
  expect_error([&] { io::imatrix_from_bytes(legacy_file(bad)); }, "'blk.0.attn_q.weight' value 5 is -1");
  bad = e;
  bad[0].values[7] = std::nanf("");
  expect_error([&] { io::imatrix_from_bytes(legacy_file(bad)); }, "value 7 is nan");
  bad = e;
  bad[1].values[0] = INFINITY;
  expect_error([&] { io::imatrix_from_bytes(legacy_file(bad)); }, "value 0 is inf");
  bad = e;
  bad[1].name = bad[0].name;
  expect_error([&] { io::imatrix_from_bytes(legacy_file(bad)); }, "is repeated");
  bad = e;
  bad[0].name = "";
  expect_error([&] { io::imatrix_from_bytes(legacy_file(bad)); }, "name length 0");
  // nval claims more values than the file holds.
  auto bytes = legacy_file(e, false);
  const std::size_t nval_at = 4 + 4 + e[0].name.size() + 4;
  const std::int32_t huge = 1 << 30;
  std::memcpy(bytes.data() + nval_at, &huge, 4);
  expect_error([&] { io::imatrix_from_bytes(bytes); }, "truncated while reading entry values");
  const std::int32_t negative = -3;
  std::memcpy(bytes.data() + nval_at, &negative, 4);
  expect_error([&] { io::imatrix_from_bytes(bytes); }, "has -3 values");
  // Garbage after the dataset name.
  Bytes tail{legacy_file(e)};
  tail.i32(1);
  expect_error([&] { io::imatrix_from_bytes(tail.b); }, "unexpected bytes");
  // Negative dataset length.
  Bytes neg{legacy_file(e, false)};
  neg.i32(4).i32(-1);
  expect_error([&] { io::imatrix_from_bytes(neg.b); }, "dataset name length -1");
}

// ---- reader: GGUF --------------------------------------------------------------------

TEST(ImatrixGguf, ReadsBackExactly) {
  const auto t = gguf_tensors();
  const auto m = io::imatrix_from_bytes(gguf_file(t));
  EXPECT_EQ(m.format, io::ImatrixFormat::gguf);
  EXPECT_EQ(m.chunks, 7u);
  EXPECT_EQ(m.chunk_size, 512u);
  EXPECT_EQ(m.datasets, (std::vector<std::string>{"a.txt", "b.txt"}));
  ASSERT_EQ(m.per_tensor.size(), 2u);

  const auto& q = m.per_tensor.at("blk.0.attn_q.weight");
  EXPECT_EQ(q.cols, 64u);
  EXPECT_EQ(q.matrices, 1u);
  EXPECT_EQ(q.counts, std::vector<std::int64_t>{1024});
  for (int j = 0; j < 64; ++j) EXPECT_EQ(q.values[j], t[0].data[j] / 1024.0f);

  const auto& moe = m.per_tensor.at("blk.1.ffn_up_exps.weight");
  EXPECT_EQ(moe.cols, 32u);
  EXPECT_EQ(moe.matrices, 3u);
  EXPECT_EQ(moe.counts, (std::vector<std::int64_t>{10, 0, 5}));
  const auto e0 = m.expert("blk.1.ffn_up_exps.weight", 0, 32);
  const auto e1 = m.expert("blk.1.ffn_up_exps.weight", 1, 32);
  const auto e2 = m.expert("blk.1.ffn_up_exps.weight", 2, 32);
  for (int j = 0; j < 32; ++j) {
    EXPECT_EQ(e0[j], t[2].data[j] / 10.0f);
    EXPECT_EQ(e1[j], 1.0f);  // never used: uniform importance, as llama-quantize does
    EXPECT_EQ(e2[j], t[2].data[64 + j] / 5.0f);
  }
  expect_error([&] { m.for_weight("blk.1.ffn_up_exps.weight", 32); }, "3-D (MoE)");
  expect_error([&] { m.for_weight("blk.0.attn_q.weight", 32); }, "has 64 values, expected one per input column (32)");
  expect_error([&] { m.for_weight("blk.9.attn_q.weight", 64); }, "no entry for weight 'blk.9.attn_q.weight'");
  expect_error([&] { m.expert("blk.1.ffn_up_exps.weight", 3, 32); }, "no expert 3");
}

TEST(ImatrixGguf, MetadataIsOptional) {
  const auto m = io::imatrix_from_bytes(gguf_file(gguf_tensors(), false));
  EXPECT_EQ(m.chunks, 0u);
  EXPECT_TRUE(m.datasets.empty());
  EXPECT_EQ(m.per_tensor.size(), 2u);
}

TEST(ImatrixGguf, EveryTruncationThrows) {
  const auto full = gguf_file(gguf_tensors());
  // The last tensor (3 counts, 12 bytes) is followed by 20 bytes of padding that a
  // reader does not need.
  for (std::size_t n = 0; n < full.size() - 20; ++n)
    EXPECT_THROW(io::imatrix_from_bytes(std::vector<std::uint8_t>(full.begin(), full.begin() + n)), Error) << n;
}

TEST(ImatrixGguf, InconsistentFilesThrowWithTheTensorName) {
  const auto good = gguf_tensors();
  auto t = good;
  t.pop_back();
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "'blk.1.ffn_up_exps.weight' has .in_sum2 but no .counts");
  t = good;
  t[3].data = {10.0f, 0.0f};
  t[3].ne = {1, 2};
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "has shape {1, 2}, expected {1, 3}");
  t = good;
  t[1].data = {-1.0f};
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "count 0 is -1");
  t = good;
  t[1].data = {2.5f};
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "count 0 is 2.5");
  t = good;
  t[1].data = {NAN};
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "count 0 is nan");
  t = good;
  t[0].data[3] = -2.0f;
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "'blk.0.attn_q.weight' value 3 is -2");
  t = good;
  t[2].data[40] = 1.0f;  // expert 1 has count 0 but a sum
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "matrix 1 has count 0 but a non-zero sum at column 8");
  t = good;
  t[0].type = 1;
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "must be F32");
  t = good;
  t.push_back({"token_embd.weight", {32}, 0, std::vector<float>(32, 1.0f)});
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "unexpected tensor 'token_embd.weight'");
  expect_error([&] { io::imatrix_from_bytes(gguf_file(good, true, "model")); }, "general.type is 'model'");
  expect_error([&] { io::imatrix_from_bytes(gguf_file({})); }, "no importance entries");
  t = good;
  t[0].ne = {32, 1, 2};
  t[0].data.resize(64);
  expect_error([&] { io::imatrix_from_bytes(gguf_file(t)); }, "ne[2] = 2");
}

TEST(Imatrix, RandomCorruptionOnlyThrowsNibbleError) {
  std::mt19937 rng(7);
  for (const auto& base : {legacy_file(legacy_entries()), gguf_file(gguf_tensors())}) {
    for (int trial = 0; trial < 2000; ++trial) {
      auto b = base;
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f) b[rng() % b.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
      try {
        const auto m = io::imatrix_from_bytes(b);
        for (const auto& [name, e] : m.per_tensor)
          for (float v : e.values) ASSERT_TRUE(std::isfinite(v) && v >= 0.0f) << name;
      } catch (const Error&) {
      }
    }
  }
}

TEST(Imatrix, LoadsFilesOfBothFormatsAndNamesThem) {
  const std::string dat = temp_path("a.dat"), gguf = temp_path("a.gguf"), bad = temp_path("bad.dat");
  write_file(dat, legacy_file(legacy_entries()));
  write_file(gguf, gguf_file(gguf_tensors()));
  EXPECT_EQ(io::load_imatrix(dat).format, io::ImatrixFormat::legacy_dat);
  EXPECT_EQ(io::load_imatrix(gguf).format, io::ImatrixFormat::gguf);
  EXPECT_EQ(io::load_imatrix(gguf).per_tensor.at("blk.0.attn_q.weight").values,
            io::imatrix_from_bytes(gguf_file(gguf_tensors())).per_tensor.at("blk.0.attn_q.weight").values);
  auto b = legacy_file(legacy_entries());
  b.resize(b.size() - 30);
  write_file(bad, b);
  expect_error([&] { io::load_imatrix(bad); }, "imatrix '" + bad + "'");
  auto g = gguf_file(gguf_tensors());
  g.resize(g.size() - 40);
  write_file(bad, g);
  expect_error([&] { io::load_imatrix(bad); }, "imatrix '" + bad + "': GGUF");
  expect_error([&] { io::load_imatrix(temp_path("missing")); }, "cannot open");
  std::remove(dat.c_str());
  std::remove(gguf.c_str());
  std::remove(bad.c_str());
}

// ---- weighted fit ----------------------------------------------------------------------

namespace {

// Heavy-tailed weights (Student-t with 3 degrees of freedom, a few rows scaled up) and
// heavy-tailed importance (log-normal with σ = 2.5, a few exact zeros).
RowMatrixXf heavy_matrix(int rows, int cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::chi_squared_distribution<float> chi(3.0f);
  RowMatrixXf W(rows, cols);
  for (int r = 0; r < rows; ++r) {
    const float row_scale = (r % 7 == 0) ? 20.0f : 0.02f;
    for (int c = 0; c < cols; ++c) W(r, c) = row_scale * n01(rng) / std::sqrt(chi(rng) / 3.0f);
  }
  return W;
}

std::vector<float> heavy_importance(int cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> imp(cols);
  for (int c = 0; c < cols; ++c) imp[c] = (rng() % 50 == 0) ? 0.0f : std::exp(2.5f * n01(rng));
  return imp;
}

double block_error(const RowMatrixXf& W, const float* imp, const QuantizedMatrix& q, std::size_t r, std::size_t b) {
  std::uint8_t codes[32];
  for (std::size_t j = 0; j < 32; ++j) codes[j] = q.code(r, b * 32 + j);
  return weighted_block_error(W.row(static_cast<Eigen::Index>(r)).data() + b * 32, imp ? imp + b * 32 : nullptr, 32,
                              q.codebook(), q.scale(r, b), codes);
}

double block_error_raw(const RowMatrixXf& W, const float* imp, Codebook cb, std::size_t r, std::size_t b,
                       std::uint16_t dh, const std::uint8_t* codes) {
  return weighted_block_error(W.row(static_cast<Eigen::Index>(r)).data() + b * 32, imp + b * 32, 32, cb,
                              half_to_float(dh), codes);
}

}  // namespace

TEST(WeightedFit, NeverWorseThanLlamaCppOnAnyBlock) {
  const int rows = 48, cols = 512;
  double tot[2][4] = {};  // [codebook][ours, plain reference, llama imatrix, unit-weight ours]
  int worse_than_llama_imatrix[2] = {0, 0};
  for (std::uint32_t seed = 1; seed <= 3; ++seed) {
    const RowMatrixXf W = heavy_matrix(rows, cols, seed);
    const std::vector<float> imp = heavy_importance(cols, seed + 100);
    for (int k = 0; k < 2; ++k) {
      const Codebook cb = k == 0 ? Codebook::int4_sym : Codebook::iq4_nl;
      const QuantizedMatrix ours = quantize_weighted(W, cb, imp);
      const QuantizedMatrix unit = quantize_weighted(W, cb, {});
      const QuantizedMatrix plain = k == 0 ? io::quantize_q4_0(W) : io::quantize_iq4_nl(W);
      for (std::size_t r = 0; r < static_cast<std::size_t>(rows); ++r) {
        std::vector<std::uint16_t> ld(cols / 32);
        std::vector<std::uint8_t> lc(cols);
        if (k == 0)
          test::llama_imatrix_q4_0_row(W.row(static_cast<Eigen::Index>(r)).data(), imp.data(), cols, ld.data(), lc.data());
        else
          for (int b = 0; b < cols / 32; ++b)
            test::llama_imatrix_iq4_nl_block(W.row(static_cast<Eigen::Index>(r)).data() + 32 * b, imp.data() + 32 * b,
                                       &ld[b], lc.data() + 32 * b);
        for (std::size_t b = 0; b < static_cast<std::size_t>(cols / 32); ++b) {
          const double e_ours = block_error(W, imp.data(), ours, r, b);
          const double e_plain = block_error(W, imp.data(), plain, r, b);
          const double e_llama = block_error_raw(W, imp.data(), cb, r, b, ld[b], lc.data() + 32 * b);
          const double e_unit = block_error(W, imp.data(), unit, r, b);
          ASSERT_LE(e_ours, e_plain) << to_string(cb) << " row " << r << " block " << b;
          if (e_ours > e_llama * (1 + 1e-12)) ++worse_than_llama_imatrix[k];
          tot[k][0] += e_ours;
          tot[k][1] += e_plain;
          tot[k][2] += e_llama;
          tot[k][3] += e_unit;
          // Unweighted: the plain-MSE fit is no worse than reference rounding in MSE.
          EXPECT_LE(block_error(W, nullptr, unit, r, b), block_error(W, nullptr, plain, r, b));
        }
      }
    }
  }
  for (int k = 0; k < 2; ++k) {
    std::printf("%s weighted error, relative to plain llama.cpp rounding: ours %.4f, llama.cpp imatrix fit %.4f, "
                "ours without imatrix %.4f; blocks where llama.cpp's imatrix fit beats ours: %d of %d\n",
                k == 0 ? "Q4_0  " : "IQ4_NL", tot[k][0] / tot[k][1], tot[k][2] / tot[k][1], tot[k][3] / tot[k][1],
                worse_than_llama_imatrix[k], 3 * rows * cols / 32);
    EXPECT_LT(tot[k][0], tot[k][2]);
    EXPECT_EQ(worse_than_llama_imatrix[k], 0);
  }
}

TEST(WeightedFit, WithinAHairOfExhaustiveFp16Search) {
  std::mt19937 rng(11);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  double worst_gap = 0.0;
  int exact = 0, blocks = 0;
  for (int trial = 0; trial < 60; ++trial) {
    const std::size_t n = trial % 3 == 0 ? 32 : 8 + trial % 17;
    std::vector<float> x(n), imp(n);
    const float scale = std::exp(3.0f * n01(rng));
    for (std::size_t j = 0; j < n; ++j) {
      x[j] = scale * n01(rng) * (trial % 2 ? 1.0f : std::fabs(n01(rng)) + 0.1f);
      imp[j] = trial % 5 == 0 ? 1.0f : std::exp(2.5f * n01(rng));
    }
    for (Codebook cb : {Codebook::int4_sym, Codebook::iq4_nl}) {
      std::uint8_t codes[32];
      const std::uint16_t h = fit_block_weighted(x.data(), imp.data(), n, cb, codes);
      const double ours = weighted_block_error(x.data(), imp.data(), n, cb, half_to_float(h), codes);
      // Every finite fp16 scale of either sign with the nearest codes for it. The 16
      // grid points d * v[c] in ascending order put the nearest one to x[j] next to where
      // x[j] would be inserted, so two candidates per weight give the minimum over all
      // 16 (the same value as trying each; a third of the time: 94 -> 32 s under ASan).
      double brute = INFINITY;
      const auto& v = codebook_values(cb);
      ASSERT_TRUE(std::is_sorted(v.begin(), v.end()));
      for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
        const float d = half_to_float(static_cast<std::uint16_t>(bits));
        if (!std::isfinite(d)) continue;
        double grid[16];
        for (int c = 0; c < 16; ++c) grid[d < 0 ? 15 - c : c] = static_cast<double>(d * v[c]);
        double e = 0.0;
        for (std::size_t j = 0; j < n; ++j) {
          const double xj = static_cast<double>(x[j]);
          const double* above = std::lower_bound(grid, grid + 16, xj);
          double best_j = INFINITY;
          if (above != grid + 16) best_j = (xj - *above) * (xj - *above);
          if (above != grid) best_j = std::min(best_j, (xj - above[-1]) * (xj - above[-1]));
          e += imp[j] * best_j;
        }
        brute = std::min(brute, e);
      }
      ASSERT_GE(ours, brute * (1 - 1e-12));
      const double gap = (ours - brute) / std::max(brute, 1e-300);
      worst_gap = std::max(worst_gap, gap);
      exact += gap <= 1e-12;
      ++blocks;
      EXPECT_LE(gap, 2e-3) << to_string(cb) << " trial " << trial << " n " << n;
    }
  }
  std::printf("exhaustive fp16 search: ours optimal on %d of %d blocks, worst relative gap %.2e\n", exact, blocks,
              worst_gap);
}

TEST(WeightedFit, RoundTripsThroughGgufBlocksBitExactly) {
  const RowMatrixXf W = heavy_matrix(9, 96, 5);
  const auto imp = heavy_importance(96, 6);
  for (io::GgmlType type : {io::GgmlType::Q4_0, io::GgmlType::IQ4_NL}) {
    const QuantizedMatrix q = quantize_weighted(W, io::gguf_block_codebook(type), imp);
    const auto blocks = io::to_gguf_blocks(type, q);
    const QuantizedMatrix back = io::from_gguf_blocks(type, 9, 96, {blocks.data(), blocks.size()});
    EXPECT_EQ(io::to_gguf_blocks(type, back), blocks);
    EXPECT_EQ(back.scales().raw16(), q.scales().raw16());
    for (std::size_t r = 0; r < 9; ++r)
      for (std::size_t c = 0; c < 96; ++c) ASSERT_EQ(back.code(r, c), q.code(r, c));
  }
}

TEST(WeightedFit, SameResultOnAnyThreadCount) {
  const RowMatrixXf W = heavy_matrix(37, 128, 21);
  const auto imp = heavy_importance(128, 22);
  const QuantizedMatrix one = quantize_weighted(W, Codebook::iq4_nl, imp);
  for (int threads : {2, 3, 8, 64}) {
    WeightedFitOptions o;
    o.threads = threads;
    const QuantizedMatrix many = quantize_weighted(W, Codebook::iq4_nl, imp, o);
    EXPECT_EQ(io::to_gguf_blocks(io::GgmlType::IQ4_NL, many), io::to_gguf_blocks(io::GgmlType::IQ4_NL, one));
  }
  RowMatrixXf huge = W;
  huge(30, 70) = huge(12, 5) = 1e9f;  // two failing rows in different workers' ranges
  for (int threads : {1, 4}) {
    WeightedFitOptions o;
    o.threads = threads;
    expect_error([&] { quantize_weighted(huge, Codebook::int4_sym, imp, o); }, "row 12, block 0");
  }
  WeightedFitOptions bad;
  bad.threads = 0;
  expect_error([&] { quantize_weighted(W, Codebook::int4_sym, imp, bad); }, "threads is 0");
}

TEST(WeightedFit, EdgeCases) {
  // An all-zero block decodes to exactly zero; a block with zero importance is fitted
  // as plain MSE (no worse than reference rounding).
  RowMatrixXf W = heavy_matrix(2, 64, 3);
  W.row(0).head(32).setZero();
  std::vector<float> imp(64, 1.0f);
  std::fill(imp.begin() + 32, imp.end(), 0.0f);
  for (Codebook cb : {Codebook::int4_sym, Codebook::iq4_nl}) {
    const QuantizedMatrix q = quantize_weighted(W, cb, imp);
    const RowMatrixXf D = q.dequantize();
    for (int j = 0; j < 32; ++j) EXPECT_EQ(D(0, j), 0.0f);
    const QuantizedMatrix plain = cb == Codebook::int4_sym ? io::quantize_q4_0(W) : io::quantize_iq4_nl(W);
    EXPECT_LE(block_error(W, nullptr, q, 1, 1), block_error(W, nullptr, plain, 1, 1));
  }
  // Bad input.
  expect_error([&] { quantize_weighted(W, Codebook::nf4, imp); }, "codebook nf4 is not supported");
  expect_error([&] { quantize_weighted(W, Codebook::int4_sym, std::vector<float>(63, 1.0f)); },
               "importance has 63 values");
  auto bad = imp;
  bad[5] = -1.0f;
  expect_error([&] { quantize_weighted(W, Codebook::int4_sym, bad); }, "importance of column 5 is -1");
  bad[5] = NAN;
  expect_error([&] { quantize_weighted(W, Codebook::int4_sym, bad); }, "importance of column 5 is nan");
  expect_error([&] { quantize_weighted(RowMatrixXf::Ones(2, 48), Codebook::int4_sym, {}); }, "not a multiple of 32");
  RowMatrixXf nan = W;
  nan(1, 7) = NAN;
  expect_error([&] { quantize_weighted(nan, Codebook::int4_sym, {}); }, "row 1, column 7");
  RowMatrixXf huge = W;
  huge(1, 40) = 3e9f;
  expect_error([&] { quantize_weighted(huge, Codebook::int4_sym, {}); }, "row 1, block 1");
  expect_error([&] { quantize_weighted(huge, Codebook::int4_sym, {}); }, "above the fp16 maximum");
  huge(1, 40) = 65504.0f * 100.0f;  // fine for IQ4_NL (d = x / 127), too large for Q4_0 (x / 8)
  EXPECT_NO_THROW(quantize_weighted(huge, Codebook::iq4_nl, {}));
}

}  // namespace imatrix_test
