// GPTQ (v1/v2), AutoAWQ GEMM and bitsandbytes NF4/FP4 checkpoint layouts: bit
// positions checked against the documented formulas written out here, round trips
// back into QuantizedMatrix, and every unrepresentable matrix rejected by name.
// (Independent numpy readers run in scripts/test-interop.sh.)
#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/io/awq_checkpoint.hpp>
#include <nibble/io/bnb_checkpoint.hpp>
#include <nibble/io/gptq_checkpoint.hpp>
#include <nibble/kernels/gemv.hpp>
#include <nibble/quant/gptq.hpp>
#include <nibble/quant/rtn.hpp>

#include "test_util.hpp"

namespace checkpoint_formats_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;
using io::SafetensorsReader;
using io::SafetensorsWriter;

namespace {

std::string temp_path(const std::string& name) { return ::testing::TempDir() + "nibble_ckpt_" + name; }

QuantizedMatrix make(Codebook cb, int group, ScaleFormat sf, Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  QuantConfig c;
  c.codebook = cb;
  c.group_size = group;
  c.scale_format = sf;
  return quantize(test::gaussian_matrix(rows, cols, seed), c);
}

template <class Write>
SafetensorsReader write_and_open(const std::string& name, Write write) {
  const std::string path = temp_path(name);
  {
    SafetensorsWriter w(path);
    write(w);
    w.finish();
  }
  auto r = SafetensorsReader::open(path);  // the map stays valid after the unlink
  std::remove(path.c_str());
  return r;
}

void expect_error_containing(const std::function<void()>& f, const std::string& fragment) {
  try {
    f();
    FAIL() << "expected nibble::Error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(GptqCheckpoint, SymmetricZerosAreTheKnownConstants) {
  const QuantizedMatrix m = make(Codebook::int4_sym, 32, ScaleFormat::f16, 16, 64, 1);
  for (const auto& [format_in_list, word] :
       {std::pair{io::GptqFormat::v1, 0x77777777u}, std::pair{io::GptqFormat::v2, 0x88888888u}}) {
    const io::GptqFormat format = format_in_list;  // C++17 lambdas cannot capture a structured binding
    const auto r = write_and_open("sym.safetensors", [&](SafetensorsWriter& w) { io::write_gptq(w, "l", m, format); });
    for (std::uint32_t z : r.values<std::uint32_t>("l.qzeros", io::DType::I32)) EXPECT_EQ(z, word);
    EXPECT_EQ(r.info("l.qweight").shape, (std::vector<std::uint64_t>{8, 16}));
    EXPECT_EQ(r.values<std::int32_t>("l.g_idx", io::DType::I32)[33], 1);
    EXPECT_TRUE(io::read_gptq(r, "l", format).dequantize().isApprox(m.dequantize(), 0.0f));
  }
}

TEST(GptqCheckpoint, QweightBitPositionsFollowTheFormula) {
  // Asymmetric, with ragged groups: check every nibble against qweight[i/8, o] >> 4(i%8).
  const QuantizedMatrix m = make(Codebook::uint4_asym, 16, ScaleFormat::f16, 8, 40, 2);
  const auto r = write_and_open("asym.safetensors", [&](SafetensorsWriter& w) { io::write_gptq(w, "l", m, io::GptqFormat::v2); });
  const auto qw = r.values<std::uint32_t>("l.qweight", io::DType::I32);
  const auto qz = r.values<std::uint32_t>("l.qzeros", io::DType::I32);
  const auto sc = r.values<std::uint16_t>("l.scales", io::DType::F16);
  const std::size_t G = 3;  // ⌈40/16⌉
  for (std::size_t o = 0; o < 8; ++o)
    for (std::size_t i = 0; i < 40; ++i) {
      const std::size_t g = i / 16;
      const int q = static_cast<int>((qw[(i / 8) * 8 + o] >> (4 * (i % 8))) & 15);
      const int z = static_cast<int>((qz[g * 1 + o / 8] >> (4 * (o % 8))) & 15);
      const float w = half_to_float(sc[g * 8 + o]) * static_cast<float>(q - z);
      EXPECT_EQ(w, m.value(o, i)) << o << "," << i;
    }
  (void)G;
  const QuantizedMatrix back = io::read_gptq(r, "l", io::GptqFormat::v2);
  EXPECT_EQ(back.group_size(), 16u);
  EXPECT_TRUE(back.dequantize().isApprox(m.dequantize(), 0.0f));
}

TEST(GptqCheckpoint, RejectsWhatItCannotRepresent) {
  SafetensorsWriter w(temp_path("rej.safetensors"));
  expect_error_containing([&] { io::write_gptq(w, "a", make(Codebook::int4_sym, 16, ScaleFormat::f16, 6, 32, 3), io::GptqFormat::v1); },
                          "multiples of 8");
  expect_error_containing([&] { io::write_gptq(w, "b", make(Codebook::nf4, 16, ScaleFormat::f16, 8, 32, 3), io::GptqFormat::v1); },
                          "int4_sym or uint4_asym");
  // A zero point of 0 (all-positive group) is fine in v2 and impossible in v1.
  Eigen::MatrixXf pos = test::uniform_matrix(8, 32, 4, 0.1f, 1.0f);
  QuantConfig c;
  c.codebook = Codebook::uint4_asym;
  c.group_size = 16;
  c.scale_format = ScaleFormat::f16;
  const QuantizedMatrix m = quantize(pos, c);
  expect_error_containing([&] { io::write_gptq(w, "c", m, io::GptqFormat::v1); }, "cannot store zero point 0");
  EXPECT_NO_THROW(io::write_gptq(w, "d", m, io::GptqFormat::v2));
  std::remove((temp_path("rej.safetensors") + ".part").c_str());
}

// Act-order checkpoints (desc_act, permuted groups): written from a GPTQ result with an
// input order, read back as the same matrix and order; the g_idx is what AutoGPTQ
// writes, g_idx[input_order[j]] = j / group_size.
TEST(GptqCheckpoint, ActOrderRoundTripsWithItsInputOrder) {
  const Eigen::MatrixXf W = test::gaussian_matrix(16, 64, 11);
  Eigen::MatrixXf X = test::gaussian_matrix(200, 64, 12);
  for (Eigen::Index c = 0; c < 64; c += 5) X.col(c) *= 3.0f;
  const Eigen::MatrixXd H = 2.0 / 200 * (X.cast<double>().transpose() * X.cast<double>());
  GptqConfig g;
  g.quant.codebook = Codebook::uint4_asym;
  g.quant.group_size = 16;
  g.quant.scale_format = ScaleFormat::f16;
  g.act_order = g.permuted_groups = true;
  const GptqResult res = gptq_quantize(W, H, g);
  ASSERT_FALSE(res.input_order.empty());
  const auto r = write_and_open("desc_act.safetensors", [&](SafetensorsWriter& w) {
    io::write_gptq(w, "l", res.matrix, io::GptqFormat::v2, res.input_order);
  });
  const auto g_idx = r.values<std::int32_t>("l.g_idx", io::DType::I32);
  for (std::size_t j = 0; j < 64; ++j) EXPECT_EQ(g_idx[res.input_order[j]], static_cast<std::int32_t>(j / 16));
  // The file keeps each column's group, not the order inside a group (which does not
  // matter): the reader lists a group's columns in ascending input order. Scales and
  // zeros come back as they were, and the weight the layer stands for is identical.
  const io::GptqLayer back = io::read_gptq_layer(r, "l", io::GptqFormat::v2);
  for (std::size_t j = 0; j < 64; ++j) {
    EXPECT_EQ(g_idx[back.input_order[j]], static_cast<std::int32_t>(j / 16));
    if (j % 16 != 0) {
      EXPECT_LT(back.input_order[j - 1], back.input_order[j]);
    }
  }
  EXPECT_EQ(back.matrix.scales().raw16(), res.matrix.scales().raw16());
  EXPECT_EQ(back.matrix.decoded_zeros(), res.matrix.decoded_zeros());
  EXPECT_TRUE(gptq_dequantize(back.matrix, back.input_order).isApprox(gptq_dequantize(res), 0.0f));
  // A plain read refuses, and names the function that can read it.
  expect_error_containing([&] { io::read_gptq(r, "l", io::GptqFormat::v2); }, "read_gptq_layer");
  // The kernels run it with the input gathered into that order.
  const Eigen::VectorXf x = test::gaussian_matrix(64, 1, 13);
  Eigen::VectorXf xp(64);
  for (Eigen::Index j = 0; j < 64; ++j) xp[j] = x[back.input_order[static_cast<std::size_t>(j)]];
  Eigen::VectorXf y(16);
  gemv(PackedMatrix(back.matrix), xp.data(), y.data(), GemvOptions{ActivationMode::exact, 1});
  const Eigen::VectorXf want = gptq_dequantize(res) * x;
  EXPECT_LT((y - want).cwiseAbs().maxCoeff(), 1e-4f * want.cwiseAbs().maxCoeff());
  expect_error_containing(
      [&] {
        SafetensorsWriter w(temp_path("bad.safetensors"));
        io::write_gptq(w, "x", res.matrix, io::GptqFormat::v2, std::vector<std::uint32_t>(64, 0));
      },
      "not a permutation");
  std::remove((temp_path("bad.safetensors") + ".part").c_str());
}

TEST(GptqCheckpoint, RejectsActOrderGIdxAndShapeLies) {
  const QuantizedMatrix m = make(Codebook::uint4_asym, 16, ScaleFormat::f16, 8, 32, 5);
  std::vector<std::int32_t> g_idx(32);
  for (int i = 0; i < 32; ++i) g_idx[i] = i % 2;  // act-order style gather
  const auto r = write_and_open("actorder.safetensors", [&](SafetensorsWriter& w) {
    io::write_gptq(w, "ok", m, io::GptqFormat::v2);
    std::vector<std::uint32_t> qweight(4 * 8), qzeros(2);
    std::vector<std::uint16_t> scales(16, float_to_half(1.0f));
    w.add("act.qweight", io::DType::I32, {4, 8}, qweight.data(), 128);
    w.add("act.qzeros", io::DType::I32, {2, 1}, qzeros.data(), 8);
    w.add("act.scales", io::DType::F16, {2, 8}, scales.data(), 32);
    w.add("act.g_idx", io::DType::I32, {32}, g_idx.data(), 128);
    std::vector<std::int32_t> uneven(32, 1);
    for (int i = 0; i < 10; ++i) uneven[i] = 0;  // groups of 10 and 22 columns: the last is longer
    w.add("uneven.qweight", io::DType::I32, {4, 8}, qweight.data(), 128);
    w.add("uneven.qzeros", io::DType::I32, {2, 1}, qzeros.data(), 8);
    w.add("uneven.scales", io::DType::F16, {2, 8}, scales.data(), 32);
    w.add("uneven.g_idx", io::DType::I32, {32}, uneven.data(), 128);
    w.add("lie.qweight", io::DType::I32, {4, 8}, qweight.data(), 128);
    w.add("lie.qzeros", io::DType::I32, {1, 2}, qzeros.data(), 8);
    w.add("lie.scales", io::DType::F16, {2, 8}, scales.data(), 32);
  });
  EXPECT_NO_THROW(io::read_gptq(r, "ok", io::GptqFormat::v2));
  expect_error_containing([&] { io::read_gptq(r, "act", io::GptqFormat::v2); }, "act-order");
  // read_gptq_layer reads it: even columns form group 0, odd ones group 1.
  const io::GptqLayer act = io::read_gptq_layer(r, "act", io::GptqFormat::v2);
  for (std::uint32_t j = 0; j < 32; ++j) EXPECT_EQ(act.input_order[j], j < 16 ? 2 * j : 2 * (j - 16) + 1);
  EXPECT_EQ(act.matrix.group_size(), 16u);
  expect_error_containing([&] { io::read_gptq_layer(r, "uneven", io::GptqFormat::v2); }, "groups must have equal sizes");
  expect_error_containing([&] { io::read_gptq(r, "lie", io::GptqFormat::v2); }, "lie.qzeros' has shape [1 x 2]");
  expect_error_containing([&] { io::read_gptq(r, "missing", io::GptqFormat::v2); }, "no tensor named");
}

TEST(AwqCheckpoint, InterleaveMatchesTheDocumentedOrder) {
  // Values 0..7 for output columns 0..7: slot k holds column ORDER[k] = 0,2,4,6,1,3,5,7.
  const std::uint8_t v[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_EQ(io::awq_pack(v), 0x75316420u);
  std::uint8_t back[8];
  io::awq_unpack(0x75316420u, back);
  for (int k = 0; k < 8; ++k) EXPECT_EQ(back[k], k);
}

TEST(AwqCheckpoint, RoundTripsAndMatchesTheFormula) {
  const QuantizedMatrix m = make(Codebook::uint4_asym, 32, ScaleFormat::f16, 16, 64, 6);
  const auto r = write_and_open("awq.safetensors", [&](SafetensorsWriter& w) { io::write_awq(w, "l", m); });
  EXPECT_EQ(r.info("l.qweight").shape, (std::vector<std::uint64_t>{64, 2}));
  const auto qw = r.values<std::uint32_t>("l.qweight", io::DType::I32);
  const auto qz = r.values<std::uint32_t>("l.qzeros", io::DType::I32);
  const auto sc = r.values<std::uint16_t>("l.scales", io::DType::F16);
  constexpr int reverse[8] = {0, 4, 1, 5, 2, 6, 3, 7};  // AWQ_REVERSE_ORDER: column j sits in slot reverse[j]
  for (std::size_t i = 0; i < 64; ++i)
    for (std::size_t o = 0; o < 16; ++o) {
      const std::size_t g = i / 32, c = o / 8;
      const int q = static_cast<int>((qw[i * 2 + c] >> (4 * reverse[o % 8])) & 15);
      const int z = static_cast<int>((qz[g * 2 + c] >> (4 * reverse[o % 8])) & 15);
      EXPECT_EQ(half_to_float(sc[g * 16 + o]) * static_cast<float>(q - z), m.value(o, i));
    }
  EXPECT_TRUE(io::read_awq(r, "l").dequantize().isApprox(m.dequantize(), 0.0f));
  SafetensorsWriter w(temp_path("awq_rej.safetensors"));
  expect_error_containing([&] { io::write_awq(w, "x", make(Codebook::uint4_asym, 16, ScaleFormat::f16, 12, 32, 7)); },
                          "multiple of 8");
  expect_error_containing([&] { io::write_awq(w, "y", make(Codebook::uint4_asym, 16, ScaleFormat::f16, 8, 40, 7)); },
                          "divisible by the group size");
}

TEST(BnbCheckpoint, Nf4WithAndWithoutDoubleQuantRoundTrips) {
  for (ScaleFormat sf : {ScaleFormat::f32, ScaleFormat::dq8}) {
    const QuantizedMatrix m = make(Codebook::nf4, 64, sf, 48, 384, 8);  // 288 blocks: two nested blocks
    const auto r = write_and_open("bnb.safetensors", [&](SafetensorsWriter& w) { io::write_bnb(w, "l.weight", m, "bfloat16"); });
    EXPECT_EQ(r.info("l.weight").shape, (std::vector<std::uint64_t>{48 * 384 / 2, 1}));
    EXPECT_EQ(r.info("l.weight.absmax").dtype, sf == ScaleFormat::dq8 ? io::DType::U8 : io::DType::F32);
    EXPECT_EQ(r.contains("l.weight.nested_absmax"), sf == ScaleFormat::dq8);
    const auto js = r.bytes("l.weight.quant_state.bitsandbytes__nf4");
    const auto state = nlohmann::json::parse(js.data, js.data + js.size);
    EXPECT_EQ(state["blocksize"], 64);
    EXPECT_EQ(state["dtype"], "bfloat16");
    EXPECT_EQ(state["shape"], nlohmann::json({48, 384}));
    // Hand dequantization of one element from the stored pieces: w = quant_map[q] · absmax.
    const auto packed = r.bytes("l.weight");
    const std::size_t flat = 5 * 384 + 77, block = flat / 64;
    const int q = (packed.data[flat / 2] >> (flat % 2 == 0 ? 4 : 0)) & 15;
    float absmax;
    if (sf == ScaleFormat::dq8) {
      const auto a = r.values<std::uint8_t>("l.weight.absmax", io::DType::U8);
      absmax = r.floats("l.weight.nested_quant_map")[a[block]] * r.floats("l.weight.nested_absmax")[block / 256] +
               state["nested_offset"].get<float>();
    } else {
      absmax = r.floats("l.weight.absmax")[block];
    }
    EXPECT_EQ(r.floats("l.weight.quant_map")[q] * absmax, m.value(5, 77));
    const QuantizedMatrix back = io::read_bnb(r, "l.weight");
    EXPECT_EQ(back.scales().format(), sf);
    EXPECT_TRUE(back.dequantize().isApprox(m.dequantize(), 0.0f));
  }
}

TEST(BnbCheckpoint, BitsandbytesExactConfigRoundTrips) {
  const Eigen::MatrixXf W = test::gaussian_matrix(48, 256, 21, 0.05f);
  const QuantizedMatrix exact = quantize(W, io::bnb_quant_config(true, 64, true));
  QuantConfig restored_config = io::bnb_quant_config(true, 64, true);
  restored_config.code_fit = CodeFit::restored;
  const QuantizedMatrix restored = quantize(W, restored_config);
  EXPECT_NE(exact.codes(), restored.codes());  // the two fits differ once scales are compressed
  const auto r = write_and_open("bnb_exact.safetensors", [&](SafetensorsWriter& w) { io::write_bnb(w, "w", exact); });
  const QuantizedMatrix back = io::read_bnb(r, "w");
  EXPECT_EQ(back.codes(), exact.codes());
  EXPECT_EQ(back.scales().dq_codes(), exact.scales().dq_codes());
  EXPECT_EQ(back.scales().dq_offset(), exact.scales().dq_offset());
  EXPECT_THROW(quantize(W, io::bnb_quant_config(false, 48)), Error);
}

TEST(BnbCheckpoint, Fp4AndRejections) {
  const QuantizedMatrix m = make(Codebook::fp4, 32, ScaleFormat::f16, 4, 64, 9);
  const auto r = write_and_open("fp4.safetensors", [&](SafetensorsWriter& w) { io::write_bnb(w, "w", m); });
  EXPECT_TRUE(r.contains("w.quant_state.bitsandbytes__fp4"));
  EXPECT_TRUE(io::read_bnb(r, "w").dequantize().isApprox(m.dequantize(), 0.0f));
  SafetensorsWriter w(temp_path("bnb_rej.safetensors"));
  expect_error_containing([&] { io::write_bnb(w, "a", make(Codebook::nf4, 48, ScaleFormat::f32, 4, 96, 1)); },
                          "power of two");
  expect_error_containing([&] { io::write_bnb(w, "b", make(Codebook::nf4, 32, ScaleFormat::f32, 4, 80, 1)); },
                          "divisible by the blocksize");
  expect_error_containing([&] { io::write_bnb(w, "c", make(Codebook::int4_sym, 32, ScaleFormat::f32, 4, 64, 1)); },
                          "nf4 or fp4");
}

}  // namespace checkpoint_formats_test
