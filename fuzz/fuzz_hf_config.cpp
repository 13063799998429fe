// libFuzzer harness for the Hugging Face directory loader's JSON inputs. The input is
// config.json text, optionally followed by a NUL byte and model.safetensors.index.json
// text. Each parses or throws nibble::Error. A config that parses is also written into
// a scratch directory beside a fixed tiny model.safetensors (the one the seed config
// describes) and loaded, so mutated hyper-parameters reach the tensor checks: they must
// end in a loaded model or nibble::Error, never a crash or a huge allocation.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <unistd.h>

#include <nibble/model/hf_model.hpp>

namespace {

// 1 layer, hidden 8, intermediate 12, 2 heads over 1 kv head, vocab 5, untied.
std::string make_dir() {
  static std::string dir;
  if (!dir.empty()) return dir;
  char tmpl[] = "/tmp/nibble_fuzz_hf_XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) std::abort();
  dir = tmpl;
  nibble::io::SafetensorsWriter w(dir + "/model.safetensors");
  auto add = [&](const std::string& name, std::vector<std::uint64_t> shape) {
    std::uint64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(n);
    for (std::uint64_t i = 0; i < n; ++i) v[i] = 0.01f * static_cast<float>(i % 97) - 0.3f;
    w.add_floats(name, shape, v.data(), v.size());
  };
  add("model.embed_tokens.weight", {5, 8});
  add("lm_head.weight", {5, 8});
  add("model.norm.weight", {8});
  const std::string p = "model.layers.0.";
  add(p + "input_layernorm.weight", {8});
  add(p + "post_attention_layernorm.weight", {8});
  add(p + "self_attn.q_proj.weight", {8, 8});
  add(p + "self_attn.k_proj.weight", {4, 8});
  add(p + "self_attn.v_proj.weight", {4, 8});
  add(p + "self_attn.o_proj.weight", {8, 8});
  add(p + "mlp.gate_proj.weight", {12, 8});
  add(p + "mlp.up_proj.weight", {12, 8});
  add(p + "mlp.down_proj.weight", {8, 12});
  w.finish();
  std::atexit([] {
    std::remove((dir + "/config.json").c_str());
    std::remove((dir + "/model.safetensors").c_str());
    ::rmdir(dir.c_str());
  });
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  const std::size_t nul = all.find('\0');
  const std::string config = all.substr(0, nul);
  bool config_ok = false;
  try {
    nibble::model::hf_llama_config(config);
    config_ok = true;
  } catch (const nibble::Error&) {
  }
  if (nul != std::string::npos) {
    try {
      nibble::model::hf_weight_map(all.substr(nul + 1));
    } catch (const nibble::Error&) {
    }
  }
  if (config_ok) {
    const std::string dir = make_dir();
    std::FILE* f = std::fopen((dir + "/config.json").c_str(), "wb");
    if (f == nullptr) std::abort();
    std::fwrite(config.data(), 1, config.size(), f);
    std::fclose(f);
    try {
      nibble::model::load_hf_model(dir);
    } catch (const nibble::Error&) {
    }
  }
  return 0;
}
