// Writes one file per exporter into a directory, plus expected.safetensors holding each
// tensor's original weights ("<file>/<tensor>.orig") and nibble's own dequantization
// ("<file>/<tensor>.deq"). tests/interop/check.py then reads every file with the PyPI
// packages gguf, safetensors and numpy and compares.
//
//   write_fixtures OUT_DIR
#include <cstdio>
#include <map>
#include <string>

#include <nibble/io/awq_checkpoint.hpp>
#include <nibble/io/bnb_checkpoint.hpp>
#include <nibble/io/gguf.hpp>
#include <nibble/io/gptq_checkpoint.hpp>
#include <nibble/quant/gptq.hpp>
#include <nibble/quant/rtn.hpp>

#include "../test_util.hpp"

using namespace nibble;

namespace {

struct Expected {
  std::map<std::string, RowMatrixXf> tensors;
  void add(const std::string& file, const std::string& tensor, const Eigen::MatrixXf& orig, const Eigen::MatrixXf& deq) {
    tensors[file + "/" + tensor + ".orig"] = orig;
    tensors[file + "/" + tensor + ".deq"] = deq;
  }
};

QuantizedMatrix make(const Eigen::MatrixXf& W, Codebook cb, int group, ScaleFormat sf) {
  QuantConfig c;
  c.codebook = cb;
  c.group_size = group;
  c.scale_format = sf;
  return quantize(W, c);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  Expected expected;
  try {
    {  // GGUF: Q4_0 from the llama.cpp reference rule, IQ4_NL, and an F32 tensor.
      const Eigen::MatrixXf W = test::gaussian_matrix(64, 256, 1, 0.02f);
      Eigen::MatrixXf W2 = test::uniform_matrix(16, 96, 2, -1.0f, 3.0f);
      W2.row(3).setZero();
      const Eigen::MatrixXf norm = test::gaussian_matrix(1, 96, 3);
      io::GgufWriter w(dir + "/model.gguf");
      w.set_general("llama", "nibble interop fixture", 2);
      const QuantizedMatrix q = io::quantize_q4_0(W), q2 = io::quantize_q4_0(W2);
      w.add_q4_0("blk.0.ffn_up.weight", q);
      w.add_q4_0("blk.0.ffn_down.weight", q2);
      w.add_iq4_nl("blk.0.attn_q.weight", W);
      RowMatrixXf n = norm;
      w.add_f32("blk.0.attn_norm.weight", 1, 96, n.data());
      w.finish();
      expected.add("model.gguf", "blk.0.ffn_up.weight", W, q.dequantize());
      expected.add("model.gguf", "blk.0.ffn_down.weight", W2, q2.dequantize());
      expected.add("model.gguf", "blk.0.attn_q.weight",
                   W, io::GgufReader::open(dir + "/model.gguf").dequantize("blk.0.attn_q.weight"));
      expected.add("model.gguf", "blk.0.attn_norm.weight", norm, norm);
    }
    for (auto format : {io::GptqFormat::v1, io::GptqFormat::v2}) {
      const std::string file = format == io::GptqFormat::v1 ? "gptq_v1.safetensors" : "gptq_v2.safetensors";
      const Eigen::MatrixXf A = test::gaussian_matrix(32, 80, 4);  // ragged last group
      const Eigen::MatrixXf B = test::gaussian_matrix(16, 128, 5);
      const QuantizedMatrix qa = make(A, Codebook::uint4_asym, 32, ScaleFormat::f16);
      const QuantizedMatrix qb = make(B, Codebook::int4_sym, 64, ScaleFormat::f16);
      io::SafetensorsWriter w(dir + "/" + file);
      w.set_metadata("quantize_config", io::gptq_quantize_config(32, false, format));
      io::write_gptq(w, "model.layers.0.mlp.up_proj", qa, format);
      io::write_gptq(w, "model.layers.0.self_attn.q_proj", qb, format);
      // An act-order layer (desc_act, permuted groups) whose g_idx is not i / group_size.
      const Eigen::MatrixXf C = test::gaussian_matrix(8, 64, 9);
      Eigen::MatrixXf X = test::gaussian_matrix(128, 64, 10);
      for (Eigen::Index c = 0; c < 64; c += 3) X.col(c) *= 3.0f;
      GptqConfig g;
      g.quant.codebook = Codebook::uint4_asym;
      g.quant.group_size = 16;
      g.quant.scale_format = ScaleFormat::f16;
      g.act_order = g.permuted_groups = true;
      const GptqResult qc = gptq_quantize(C, 2.0 / 128 * (X.cast<double>().transpose() * X.cast<double>()), g);
      io::write_gptq(w, "model.layers.0.self_attn.k_proj", qc.matrix, format, qc.input_order);
      w.finish();
      expected.add(file, "model.layers.0.mlp.up_proj", A, qa.dequantize());
      expected.add(file, "model.layers.0.self_attn.q_proj", B, qb.dequantize());
      expected.add(file, "model.layers.0.self_attn.k_proj", C, gptq_dequantize(qc));
    }
    {
      const Eigen::MatrixXf A = test::gaussian_matrix(24, 256, 6, 0.1f);
      const QuantizedMatrix qa = make(A, Codebook::uint4_asym, 128, ScaleFormat::f16);
      io::SafetensorsWriter w(dir + "/awq.safetensors");
      io::write_awq(w, "model.layers.0.mlp.down_proj", qa);
      w.finish();
      expected.add("awq.safetensors", "model.layers.0.mlp.down_proj", A, qa.dequantize());
    }
    {
      const Eigen::MatrixXf A = test::gaussian_matrix(80, 512, 7, 0.05f);  // 640 blocks: 3 nested blocks
      const Eigen::MatrixXf B = test::gaussian_matrix(8, 128, 8);
      const QuantizedMatrix dq = make(A, Codebook::nf4, 64, ScaleFormat::dq8);
      const QuantizedMatrix plain = make(B, Codebook::nf4, 64, ScaleFormat::f32);
      const QuantizedMatrix fp4 = make(B, Codebook::fp4, 32, ScaleFormat::f32);
      io::SafetensorsWriter w(dir + "/bnb.safetensors");
      io::write_bnb(w, "dq.weight", dq);
      io::write_bnb(w, "plain.weight", plain);
      io::write_bnb(w, "fp4.weight", fp4);
      w.finish();
      expected.add("bnb.safetensors", "dq.weight", A, dq.dequantize());
      expected.add("bnb.safetensors", "plain.weight", B, plain.dequantize());
      expected.add("bnb.safetensors", "fp4.weight", B, fp4.dequantize());
    }
    io::SafetensorsWriter w(dir + "/expected.safetensors");
    for (const auto& [name, m] : expected.tensors)
      w.add_floats(name, {static_cast<std::uint64_t>(m.rows()), static_cast<std::uint64_t>(m.cols())}, m.data(),
                   static_cast<std::size_t>(m.size()));
    w.finish();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "write_fixtures: %s\n", e.what());
    return 1;
  }
  std::printf("wrote interop fixtures to %s\n", dir.c_str());
  return 0;
}
