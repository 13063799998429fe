// nibble-quant --method awq on a llama-style layer: the scales are folded into the norms
// and into v_proj / up_proj rows, so a format without a place for them (AutoAWQ GEMM
// here) holds a model that computes what the original does. Checked by running the
// layer's linear paths with the file's weights and norms against the float layer.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nibble/io/io.hpp>

#include "cli_util.hpp"
#include "test_util.hpp"

namespace nibble_quant_awq_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

namespace {

constexpr Eigen::Index kDim = 64, kHidden = 128, kTokens = 256;
const std::string kPrefix = "model.layers.0.";

RowMatrixXf rms_normalize(const RowMatrixXf& x) {
  RowMatrixXf n = x;
  for (Eigen::Index t = 0; t < x.rows(); ++t) n.row(t) /= std::sqrt(x.row(t).squaredNorm() / x.cols() + 1e-6f);
  return n;
}
RowMatrixXf scale_columns(const RowMatrixXf& x, const std::vector<float>& g) {
  return x * Eigen::Map<const Eigen::VectorXf>(g.data(), static_cast<Eigen::Index>(g.size())).asDiagonal();
}
RowMatrixXf silu(const RowMatrixXf& x) { return x.array() / (1.0f + (-x.array()).exp()); }

double rel_error(const RowMatrixXf& got, const RowMatrixXf& want) { return (got - want).norm() / want.norm(); }

// The float layer and the inputs of its linears.
struct Layer {
  RowMatrixXf q, k, v, o, gate, up, down;
  std::vector<float> g_in, g_post;
  RowMatrixXf x, x2;  // block input, and the input of the MLP half
};

Layer make_layer() {
  Layer L;
  auto w = [](Eigen::Index r, Eigen::Index c, std::uint32_t seed) { return RowMatrixXf(test::gaussian_matrix(r, c, seed, 0.05f)); };
  L.q = w(kDim, kDim, 1), L.k = w(kDim, kDim, 2), L.v = w(kDim, kDim, 3), L.o = w(kDim, kDim, 4);
  L.gate = w(kHidden, kDim, 5), L.up = w(kHidden, kDim, 6), L.down = w(kDim, kHidden, 7);
  const Eigen::MatrixXf g = test::uniform_matrix(2, kDim, 8, 0.5f, 1.5f);
  for (Eigen::Index c = 0; c < kDim; ++c) {
    L.g_in.push_back(g(0, c));
    L.g_post.push_back(g(1, c));
  }
  L.x = test::gaussian_matrix(kTokens, kDim, 9);
  for (Eigen::Index c : {3, 17, 40}) L.x.col(c) *= 8.0f;  // loud channels, as in real models
  const RowMatrixXf h_in = scale_columns(rms_normalize(L.x), L.g_in);
  L.x2 = L.x + h_in * L.v.transpose() * L.o.transpose();  // attention over one token: its own v
  for (Eigen::Index c : {5, 60}) L.x2.col(c) *= 6.0f;
  return L;
}

// Outputs of the three linear paths: [q k v] of the attention input, o·v, and the MLP.
struct Paths {
  RowMatrixXf qkv, ov, mlp;
};
Paths run_paths(const Layer& L, const std::vector<float>& g_in, const std::vector<float>& g_post, const RowMatrixXf& q,
                const RowMatrixXf& k, const RowMatrixXf& v, const RowMatrixXf& o, const RowMatrixXf& gate,
                const RowMatrixXf& up, const RowMatrixXf& down) {
  const RowMatrixXf h = scale_columns(rms_normalize(L.x), g_in), h2 = scale_columns(rms_normalize(L.x2), g_post);
  Paths p;
  p.qkv.resize(kTokens, 3 * kDim);
  p.qkv << h * q.transpose(), h * k.transpose(), h * v.transpose();
  p.ov = h * v.transpose() * o.transpose();
  p.mlp = RowMatrixXf(silu(h2 * gate.transpose()).cwiseProduct(h2 * up.transpose())) * down.transpose();
  return p;
}

void write_bf16(io::SafetensorsWriter& w, const std::string& name, const std::vector<float>& v) {
  std::vector<std::uint16_t> b;
  for (float f : v) b.push_back(float_to_bf16(f));
  w.add(name, io::DType::BF16, {v.size()}, b.data(), 2 * b.size());
}

}  // namespace

TEST(CliAwq, FoldedScalesKeepTheLayerFunctionInAnyFormat) {
  const Layer L = make_layer();
  const std::string dir = test::cli_dir(), in = dir + "llama.safetensors", calib = dir + "llama_calib.safetensors";
  const std::string a = kPrefix + "self_attn.", m = kPrefix + "mlp.";
  {
    io::SafetensorsWriter w(in);
    write_bf16(w, kPrefix + "input_layernorm.weight", L.g_in);  // folded values are re-encoded as BF16
    write_bf16(w, kPrefix + "post_attention_layernorm.weight", L.g_post);
    const std::pair<std::string, const RowMatrixXf*> linears[] = {
        {a + "q_proj", &L.q}, {a + "k_proj", &L.k}, {a + "v_proj", &L.v}, {a + "o_proj", &L.o},
        {m + "gate_proj", &L.gate}, {m + "up_proj", &L.up}, {m + "down_proj", &L.down}};
    for (const auto& [name, W] : linears)
      w.add_floats(name + ".weight", {static_cast<std::uint64_t>(W->rows()), static_cast<std::uint64_t>(W->cols())},
                   W->data(), W->size());
    w.finish();
    // Calibration: each linear's own inputs, from the float layer.
    const RowMatrixXf h = scale_columns(rms_normalize(L.x), L.g_in), h2 = scale_columns(rms_normalize(L.x2), L.g_post);
    const RowMatrixXf xo = h * L.v.transpose(), xd = silu(h2 * L.gate.transpose()).cwiseProduct(h2 * L.up.transpose());
    io::SafetensorsWriter c(calib);
    const std::pair<std::string, const RowMatrixXf*> inputs[] = {
        {a + "q_proj", &h}, {a + "k_proj", &h}, {a + "v_proj", &h}, {a + "o_proj", &xo},
        {m + "gate_proj", &h2}, {m + "up_proj", &h2}, {m + "down_proj", &xd}};
    for (const auto& [name, X] : inputs)
      c.add_floats(name + ".weight", {static_cast<std::uint64_t>(X->rows()), static_cast<std::uint64_t>(X->cols())},
                   X->data(), X->size());
    c.finish();
  }
  const Paths want = run_paths(L, L.g_in, L.g_post, L.q, L.k, L.v, L.o, L.gate, L.up, L.down);

  // Reads an AutoAWQ checkpoint back and runs the paths with its weights and norms.
  auto evaluate = [&](const std::string& path, bool use_file_norms) {
    const auto r = io::SafetensorsReader::open(path);
    EXPECT_FALSE(r.contains(a + "q_proj.weight.awq_scale"));
    auto deq = [&](const std::string& name) { return RowMatrixXf(io::read_awq(r, name).dequantize()); };
    const std::vector<float> g_in = use_file_norms ? r.floats(kPrefix + "input_layernorm.weight") : L.g_in;
    const std::vector<float> g_post = use_file_norms ? r.floats(kPrefix + "post_attention_layernorm.weight") : L.g_post;
    const Paths got = run_paths(L, g_in, g_post, deq(a + "q_proj"), deq(a + "k_proj"), deq(a + "v_proj"),
                                deq(a + "o_proj"), deq(m + "gate_proj"), deq(m + "up_proj"), deq(m + "down_proj"));
    return std::vector<double>{rel_error(got.qkv, want.qkv), rel_error(got.ov, want.ov), rel_error(got.mlp, want.mlp)};
  };

  std::string log;
  const std::string awq = dir + "llama_awq.safetensors", rtn = dir + "llama_rtn.safetensors";
  ASSERT_EQ(test::run_cli(in + " " + awq + " --format awq --method awq --group 32 --calib " + calib, &log), 0) << log;
  EXPECT_NE(log.find("fold into norms / v_proj / up_proj in 1 of 1 layers"), std::string::npos) << log;
  ASSERT_EQ(test::run_cli(in + " " + rtn + " --format awq --method rtn --group 32", &log), 0) << log;

  const std::vector<double> e_awq = evaluate(awq, true), e_rtn = evaluate(rtn, true);
  const std::vector<double> e_unfolded = evaluate(awq, false);  // the file's weights with the original norms
  const char* path_names[] = {"q/k/v", "o·v", "mlp"};
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(path_names[i]);
    // 4-bit accuracy, not worse than plain rounding (AWQ keeps s ≡ 1 unless it helps) ...
    EXPECT_LT(e_awq[i], 0.15);  // measured 0.068 / 0.082 / 0.108 (RTN 0.080 / 0.107 / 0.141)
    EXPECT_LE(e_awq[i], e_rtn[i] * 1.02);
    // ... and only because the norms were changed to match: the same weights with the
    // original norms are far off (so this test would catch a fold that was not done).
    EXPECT_GT(e_unfolded[i], 3 * e_awq[i]);
  }
  // With loud input channels AWQ is clearly better than plain rounding overall.
  EXPECT_LT(e_awq[0] + e_awq[1] + e_awq[2], 0.9 * (e_rtn[0] + e_rtn[1] + e_rtn[2]))
      << "awq " << e_awq[0] << " " << e_awq[1] << " " << e_awq[2] << " rtn " << e_rtn[0] << " " << e_rtn[1] << " "
      << e_rtn[2];
  for (const std::string& f : {in, calib, awq, rtn, awq + ".quantization_config.json", rtn + ".quantization_config.json"})
    std::remove(f.c_str());
}

}  // namespace nibble_quant_awq_test
