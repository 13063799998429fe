// Fixtures for scripts/test-bnb.sh, which compares nibble's CodeFit::bitsandbytes with
// bitsandbytes' own quantize_4bit / dequantize_4bit (tests/interop/check_bnb.py).
//
//   bnb_fixtures cases OUT_DIR     writes OUT_DIR/cases.safetensors: per case the input
//                                  weights and nibble's codes, absmax (decoded), double-
//                                  quantization parts and dequantization; the case list is
//                                  JSON in the metadata. Also OUT_DIR/model.safetensors, an
//                                  input for nibble-quant --format bnb-nf4.
//   bnb_fixtures deq CKPT OUT      reads every bitsandbytes tensor of CKPT with
//                                  io::read_bnb and writes its dequantize() to OUT.
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <nibble/io/bnb_checkpoint.hpp>
#include <nibble/quant/rtn.hpp>

#include "../test_util.hpp"

using namespace nibble;

namespace {

struct Case {
  std::string name;
  Codebook codebook;
  int group;
  bool dq;
  Eigen::MatrixXf W;
  bool one_thread = false;  // torch's mean splits across threads from 65536 values on
};

// Rows scaled over four decades with Student-t(3) entries, some exact zeros.
Eigen::MatrixXf heavy_rows(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::student_t_distribution<float> t(3.0f);
  std::uniform_real_distribution<float> decade(-3.0f, 1.0f);
  Eigen::MatrixXf W(rows, cols);
  for (Eigen::Index r = 0; r < rows; ++r) {
    const float s = std::pow(10.0f, decade(rng));
    for (Eigen::Index c = 0; c < cols; ++c) W(r, c) = (c % 37 == 5) ? 0.0f : s * t(rng);
  }
  return W;
}

std::vector<Case> cases() {
  std::vector<Case> out;
  out.push_back({"nf4_g64_f32", Codebook::nf4, 64, false, test::gaussian_matrix(128, 1024, 11)});
  out.push_back({"fp4_g32_f32", Codebook::fp4, 32, false, test::gaussian_matrix(96, 768, 12)});
  out.push_back({"nf4_g32_dq", Codebook::nf4, 32, true, test::gaussian_matrix(64, 512, 13)});
  out.push_back({"nf4_g64_dq_heavy", Codebook::nf4, 64, true, heavy_rows(256, 4096, 14)});
  out.push_back({"fp4_g64_dq", Codebook::fp4, 64, true, test::gaussian_matrix(96, 768, 15)});
  out.push_back({"fp4_g32_dq_heavy", Codebook::fp4, 32, true, heavy_rows(64, 1024, 16)});
  std::uint32_t seed = 20;
  for (int g : {128, 256, 512, 1024, 2048, 4096})
    for (Codebook cb : {Codebook::nf4, Codebook::fp4})
      for (bool dq : {false, true})
        out.push_back({std::string(to_string(cb)) + "_g" + std::to_string(g) + (dq ? "_dq" : "_f32"), cb, g, dq,
                       heavy_rows(32, 8192, seed++)});
  {  // all-zero groups and rows among normal ones
    Eigen::MatrixXf W = test::gaussian_matrix(32, 512, 40);
    W.row(3).setZero();
    W.block(7, 64, 1, 64).setZero();
    W.block(9, 0, 5, 32).setZero();
    for (Codebook cb : {Codebook::nf4, Codebook::fp4})
      for (bool dq : {false, true})
        out.push_back({std::string(to_string(cb)) + "_zero_groups" + (dq ? "_dq" : ""), cb, 32, dq, W});
  }
  for (Codebook cb : {Codebook::nf4, Codebook::fp4}) {
    out.push_back({std::string(to_string(cb)) + "_all_zero_dq", cb, 64, true, Eigen::MatrixXf::Zero(8, 256)});
    // One row, so nibble's groups are bitsandbytes' flat blocks: a ragged final block.
    out.push_back({std::string(to_string(cb)) + "_ragged_1x1000_dq", cb, 64, true, heavy_rows(1, 1000, 41)});
    Eigen::MatrixXf Z = test::gaussian_matrix(1, 1000, 42);
    Z.rightCols(40).setZero();  // an all-zero final partial block: absmax stored as 1e-38
    out.push_back({std::string(to_string(cb)) + "_ragged_zero_tail", cb, 64, false, Z});
    out.push_back({std::string(to_string(cb)) + "_odd_1x999", cb, 32, false, test::gaussian_matrix(1, 999, 43)});
  }
  Case big{"nf4_g64_dq_65536_blocks", Codebook::nf4, 64, true, heavy_rows(1024, 4096, 50)};
  big.one_thread = true;
  out.push_back(big);
  return out;
}

void add(io::SafetensorsWriter& w, const std::string& name, const Eigen::MatrixXf& m) {
  const RowMatrixXf r = m;
  w.add_floats(name, {static_cast<std::uint64_t>(r.rows()), static_cast<std::uint64_t>(r.cols())}, r.data(),
               static_cast<std::size_t>(r.size()));
}

int write_cases(const std::string& dir) {
  io::SafetensorsWriter w(dir + "/cases.safetensors");
  nlohmann::json list = nlohmann::json::array();
  for (const Case& c : cases()) {
    QuantConfig qc;
    qc.codebook = c.codebook;
    qc.group_size = c.group;
    qc.scale_format = c.dq ? ScaleFormat::dq8 : ScaleFormat::f32;
    qc.code_fit = CodeFit::bitsandbytes;
    const QuantizedMatrix q = quantize(c.W, qc);
    add(w, c.name + ".w", c.W);
    w.add(c.name + ".codes", io::DType::U8, {q.codes().size()}, q.codes().data(), q.codes().size());
    const std::vector<float> absmax = q.scales().decode();
    w.add_floats(c.name + ".absmax", {absmax.size()}, absmax.data(), absmax.size());
    if (c.dq) {
      const ScaleArray& s = q.scales();
      w.add(c.name + ".qabsmax", io::DType::U8, {s.size()}, s.dq_codes().data(), s.size());
      w.add_floats(c.name + ".absmax2", {s.dq_absmax2().size()}, s.dq_absmax2().data(), s.dq_absmax2().size());
      const float offset = s.dq_offset();
      w.add_floats(c.name + ".offset", {1}, &offset, 1);
    }
    add(w, c.name + ".deq", q.dequantize());
    list.push_back({{"name", c.name}, {"quant_type", to_string(c.codebook)}, {"blocksize", c.group},
                    {"dq", c.dq}, {"one_thread", c.one_thread}});
  }
  w.set_metadata("cases", list.dump());
  w.finish();
  // nibble-quant input: llama-style names so the default skip list keeps nothing else out.
  io::SafetensorsWriter m(dir + "/model.safetensors");
  add(m, "model.layers.0.mlp.up_proj.weight", heavy_rows(256, 512, 60));
  add(m, "model.layers.0.self_attn.q_proj.weight", test::gaussian_matrix(128, 256, 61, 0.02f));
  m.finish();
  std::printf("wrote %zu bitsandbytes cases to %s\n", list.size(), dir.c_str());
  return 0;
}

int write_deq(const std::string& ckpt, const std::string& out_path) {
  const auto r = io::SafetensorsReader::open(ckpt);
  io::SafetensorsWriter w(out_path);
  int n = 0;
  for (const auto& t : r.tensors())
    for (const char* suffix : {".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"}) {
      const std::string s = suffix;
      if (t.name.size() > s.size() && t.name.compare(t.name.size() - s.size(), s.size(), s) == 0) {
        const std::string name = t.name.substr(0, t.name.size() - s.size());
        add(w, name, io::read_bnb(r, name).dequantize());
        ++n;
      }
    }
  w.finish();
  std::printf("dequantized %d bitsandbytes tensors of %s\n", n, ckpt.c_str());
  return n > 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "cases" && argc == 3) return write_cases(argv[2]);
    if (mode == "deq" && argc == 4) return write_deq(argv[2], argv[3]);
    std::fprintf(stderr, "usage: %s cases OUT_DIR | %s deq CHECKPOINT OUT\n", argv[0], argv[0]);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bnb_fixtures: %s\n", e.what());
    return 1;
  }
}
