// Writes the small valid files that seed the fuzzers' corpora (fuzz/corpus/<harness>/).
//   make_seeds OUT_DIR
#include <cstdio>
#include <string>

#include <nibble/io/io.hpp>
#include <nibble/quant/rtn.hpp>

using namespace nibble;

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string d = argv[1];
  Eigen::MatrixXf W(8, 32);
  for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = static_cast<float>((i * 37) % 23) / 7.0f - 1.5f;
  auto q = [&](Codebook cb, int g, ScaleFormat sf) {
    QuantConfig c;
    c.codebook = cb;
    c.group_size = g;
    c.scale_format = sf;
    return quantize(W, c);
  };
  {
    io::SafetensorsWriter w(d + "/safetensors/plain.safetensors");
    RowMatrixXf R = W;
    w.set_metadata("format", "pt");
    w.add_floats("a", {8, 32}, R.data(), 256);
    std::vector<std::uint16_t> h(4, 0x3C00);
    w.add("b", io::DType::F16, {2, 2}, h.data(), 8);
    w.finish();
  }
  io::save_nibble(d + "/nibble_file/two.nibble", {{"sym", q(Codebook::int4_sym, 16, ScaleFormat::f16)},
                                                  {"asym", q(Codebook::uint4_asym, 32, ScaleFormat::f32)}});
  io::save_nibble(d + "/nibble_file/dq.nibble", {{"nf4", q(Codebook::nf4, 16, ScaleFormat::dq8)}});
  {
    io::GgufWriter w(d + "/gguf/small.gguf");
    w.set_general("llama", "seed", 2);
    w.add_q4_0("q", io::quantize_q4_0(W));
    w.add_iq4_nl("iq", W);
    RowMatrixXf R = W.row(0);
    w.add_f32("n", 1, 32, R.data());
    w.finish();
  }
  {
    io::SafetensorsWriter w(d + "/checkpoints/gptq.safetensors");
    io::write_gptq(w, "l", q(Codebook::uint4_asym, 16, ScaleFormat::f16), io::GptqFormat::v2);
    w.finish();
  }
  {
    io::SafetensorsWriter w(d + "/checkpoints/awq.safetensors");
    io::write_awq(w, "l", q(Codebook::uint4_asym, 16, ScaleFormat::f16));
    w.finish();
  }
  {
    io::SafetensorsWriter w(d + "/checkpoints/bnb.safetensors");
    io::write_bnb(w, "l.weight", q(Codebook::nf4, 32, ScaleFormat::dq8));
    w.finish();
  }
  return 0;
}
