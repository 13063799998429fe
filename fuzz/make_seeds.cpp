// Writes the small valid files that seed the fuzzers' corpora (fuzz/corpus/<harness>/).
//   make_seeds OUT_DIR
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <nibble/format/int8_matrix.hpp>
#include <nibble/io/io.hpp>
#include <nibble/io/llama_logits.hpp>
#include <nibble/model/bpe_tokenizer.hpp>
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
    // One small tensor of every ggml type the reader decodes (2 rows, one block each),
    // deterministic bytes with a 1/64 f16 in every d / m / dmin field.
    io::GgufWriter w(d + "/gguf/types.gguf");
    const io::GgmlType types[] = {io::GgmlType::F32,  io::GgmlType::F16,  io::GgmlType::BF16, io::GgmlType::Q8_0,
                                  io::GgmlType::Q4_0, io::GgmlType::Q4_1, io::GgmlType::Q5_0, io::GgmlType::Q5_1,
                                  io::GgmlType::Q4_K, io::GgmlType::Q5_K, io::GgmlType::Q6_K, io::GgmlType::IQ4_NL};
    for (io::GgmlType t : types) {
      const auto id = static_cast<std::uint32_t>(t);
      const io::GgmlTypeSize ts = io::ggml_type_size(id);
      const std::size_t cols = ts.block == 1 ? 32 : ts.block;
      std::vector<std::uint8_t> bytes(2 * cols / ts.block * ts.bytes);
      for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(i * 73 + 11);
      const std::uint16_t small = float_to_half(1.0f / 64.0f);
      if (ts.block > 1)
        for (std::size_t b = 0; b < bytes.size() / ts.bytes; ++b) {
          std::uint8_t* p = bytes.data() + b * ts.bytes;
          if (t == io::GgmlType::Q6_K) {
            std::memcpy(p + 208, &small, 2);
          } else {
            std::memcpy(p, &small, 2);
            std::memcpy(p + 2, &small, 2);  // m / dmin where the type has one, else codes
          }
        }
      w.add_tensor("t." + io::ggml_type_name(id), id, {cols, 2}, bytes.data(), bytes.size());
    }
    w.finish();
  }
  {
    // A byte-level BPE vocabulary: 256 byte tokens, two merges, one control token.
    io::GgufWriter w(d + "/gguf/tokenizer.gguf");
    std::vector<std::string> tokens;
    for (int b = 0; b < 256; ++b) tokens.push_back(model::bpe_detail::byte_map().byte_to_text[b]);
    tokens.push_back("ll");
    tokens.push_back("he");
    tokens.push_back("<|im_start|>");
    std::vector<std::int32_t> types(tokens.size(), 1);
    types.back() = 3;
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "smollm");
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_i32_array("tokenizer.ggml.token_type", types);
    w.set_string_array("tokenizer.ggml.merges", {"l l", "h e"});
    w.set_u32("tokenizer.ggml.bos_token_id", 258);
    w.set_bool("tokenizer.ggml.add_bos_token", true);
    w.finish();
  }
  for (const char* text : {"Hello world! I have 1234 apples.", "\x09<|im_start|>user\nhi<|im_end|>  \r\n",
                           "na\xc3\xafve caf\xc3\xa9 \xf0\x9f\x91\x8d\xff\xfe don't I'M"}) {
    static int n = 0;
    const std::string path = d + "/bpe/text" + std::to_string(n++);
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return 1;
    std::fwrite(text, 1, std::strlen(text), f);
    std::fclose(f);
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
  {
    // A one-layer llama model (dim 32, 2 heads, 1 kv head, vocab 8) with a byte-level
    // BPE vocabulary: Q8_0 embedding, Q4_0 and F32 linears.
    io::GgufWriter w(d + "/model/tiny.gguf");
    w.set_general("llama", "seed", 2);
    w.set_u32("llama.block_count", 1);
    w.set_u32("llama.context_length", 16);
    w.set_u32("llama.embedding_length", 32);
    w.set_u32("llama.feed_forward_length", 32);
    w.set_u32("llama.attention.head_count", 2);
    w.set_u32("llama.attention.head_count_kv", 1);
    w.set_f32("llama.rope.freq_base", 10000.0f);
    w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "smollm");
    w.set_string_array("tokenizer.ggml.tokens", {"<|endoftext|>", "H", "e", "l", "o", "He", "ll", "\xc4\xa0"});
    w.set_i32_array("tokenizer.ggml.token_type", {3, 1, 1, 1, 1, 1, 1, 1});
    w.set_string_array("tokenizer.ggml.merges", {"H e", "l l"});
    w.set_u32("tokenizer.ggml.bos_token_id", 0);
    w.set_u32("tokenizer.ggml.eos_token_id", 0);
    const RowMatrixXf E = W.topRows(8);
    const auto e8 = quantize_q8_0(E).to_q8_0_blocks();
    w.add_tensor("token_embd.weight", static_cast<std::uint32_t>(io::GgmlType::Q8_0), {32, 8}, e8.data(), e8.size());
    RowMatrixXf ones = RowMatrixXf::Ones(1, 32);
    w.add_f32("output_norm.weight", 1, 32, ones.data());
    w.add_f32("blk.0.attn_norm.weight", 1, 32, ones.data());
    w.add_f32("blk.0.ffn_norm.weight", 1, 32, ones.data());
    RowMatrixXf sq(32, 32), kv(16, 32);
    for (Eigen::Index i = 0; i < sq.size(); ++i) sq.data()[i] = static_cast<float>((i * 29) % 17) / 40.0f - 0.2f;
    kv = sq.topRows(16);
    w.add_q4_0("blk.0.attn_q.weight", io::quantize_q4_0(sq));
    w.add_q4_0("blk.0.attn_k.weight", io::quantize_q4_0(kv));
    w.add_f32("blk.0.attn_v.weight", 16, 32, kv.data());
    w.add_f32("blk.0.attn_output.weight", 32, 32, sq.data());
    w.add_q4_0("blk.0.ffn_gate.weight", io::quantize_q4_0(sq));
    w.add_iq4_nl("blk.0.ffn_up.weight", sq);
    w.add_f32("blk.0.ffn_down.weight", 32, 32, sq.data());
    w.finish();
  }
  {
    // llama.cpp's saved logits: 2 chunks of 8 tokens over a vocabulary of 5.
    io::LlamaLogitsHeader h;
    h.n_ctx = 8, h.n_vocab = 5, h.n_chunk = 2;
    io::LlamaLogitsWriter w(d + "/llama_logits/two.kld", h, std::vector<int>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0});
    for (int i = 0; i < 6; ++i) {
      const float logits[5] = {0.5f * i, -1.0f, 2.0f, -30.0f, 0.0f};
      w.add(logits);
    }
    w.finish();
  }
  {
    // fuzz_hf_config: config.json text [NUL index text]; the first config describes the
    // tiny model.safetensors the harness writes.
    const std::string llama =
        R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "intermediate_size": 12,)"
        R"( "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,)"
        R"( "max_position_embeddings": 16, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": null,)"
        R"( "tie_word_embeddings": false, "vocab_size": 5, "hidden_act": "silu", "torch_dtype": "float32"})";
    const std::string index =
        R"({"metadata": {"total_size": 1000}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",)"
        R"( "model.norm.weight": "model-00002-of-00002.safetensors"}})";
    const std::string qwen2 =
        R"({"model_type": "qwen2", "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,)"
        R"( "num_attention_heads": 2, "num_key_value_heads": null, "vocab_size": 5, "tie_word_embeddings": true,)"
        R"( "use_sliding_window": false, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}})";
    auto put = [&](const std::string& name, const std::string& text) {
      std::FILE* f = std::fopen((d + "/hf_config/" + name).c_str(), "wb");
      if (f == nullptr) std::exit(1);
      std::fwrite(text.data(), 1, text.size(), f);
      std::fclose(f);
    };
    put("llama.txt", llama);
    put("llama_index.txt", llama + std::string(1, '\0') + index);
    put("qwen2.txt", qwen2);
    // The same with a quantization_config (hf_quantization; the packed tensors are missing).
    put("llama_gptq.txt", llama.substr(0, llama.size() - 1) +
                              R"(, "quantization_config": {"quant_method": "gptq", "bits": 4, "checkpoint_format": "gptq_v2"}})");
  }
  {
    // fuzz_imatrix: a GGUF imatrix (a 2-D entry and a 3-expert MoE entry with one unused
    // expert) and a legacy imatrix.dat with its trailer.
    io::GgufWriter w(d + "/imatrix/small.imatrix.gguf");
    w.set_string("general.type", "imatrix");
    w.set_string_array("imatrix.datasets", {"train.txt"});
    w.set_u32("imatrix.chunk_count", 2);
    w.set_u32("imatrix.chunk_size", 512);
    std::vector<float> sums(64), moe(96, 0.0f);
    for (int j = 0; j < 64; ++j) sums[j] = 0.5f + static_cast<float>(j);
    for (int j = 0; j < 32; ++j) moe[j] = moe[64 + j] = static_cast<float>(j % 5);
    const float count = 1024.0f, moe_counts[3] = {7.0f, 0.0f, 3.0f};
    w.add_f32("blk.0.attn_q.weight.in_sum2", 1, 64, sums.data());
    w.add_f32("blk.0.attn_q.weight.counts", 1, 1, &count);
    w.add_f32("blk.0.ffn_up_exps.weight.in_sum2", 3, 32, moe.data());
    w.add_f32("blk.0.ffn_up_exps.weight.counts", 3, 1, moe_counts);
    w.finish();
    std::vector<std::uint8_t> dat;
    auto i32 = [&](std::int32_t v) { io::put(dat, v); };
    i32(1);
    const std::string name = "blk.0.attn_q.weight", dataset = "train.txt";
    i32(static_cast<std::int32_t>(name.size()));
    io::put_bytes(dat, name.data(), name.size());
    i32(2);   // ncall
    i32(32);  // nval
    for (int j = 0; j < 32; ++j) io::put(dat, 0.25f * static_cast<float>(j));
    i32(2);
    i32(static_cast<std::int32_t>(dataset.size()));
    io::put_bytes(dat, dataset.data(), dataset.size());
    std::FILE* f = std::fopen((d + "/imatrix/small.imatrix.dat").c_str(), "wb");
    if (f == nullptr) std::exit(1);
    std::fwrite(dat.data(), 1, dat.size(), f);
    std::fclose(f);
  }
  return 0;
}
