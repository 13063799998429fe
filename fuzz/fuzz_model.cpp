// libFuzzer harness: a GGUF file as a model. load_gguf_model (4-bit / 8-bit import and
// all-fp32) and the BPE tokenizer loader either succeed or throw nibble::Error; a model
// that loads runs two tokens through the Transformer (small ones only, to stay fast) and
// the tokenizer encodes and decodes a fixed text.
#include <cstdint>
#include <vector>

#include <nibble/model/bpe_tokenizer.hpp>
#include <nibble/model/gguf_model.hpp>
#include <nibble/model/transformer.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace nibble;
  try {
    const auto r = io::GgufReader::from_bytes(std::vector<std::uint8_t>(data, data + size));
    for (bool dequantize : {false, true}) {
      try {
        model::GgufLoadOptions o;
        o.dequantize = dequantize;
        const model::LlamaWeights w = model::load_gguf_model(r, o);
        if (w.bytes() < (1u << 20) && w.config.seq_len >= 2) {
          const model::Transformer m = model::Transformer::from_weights(w);
          model::KvCache cache = m.new_cache(2);
          m.forward({0, w.config.vocab_size - 1}, cache);
        }
      } catch (const Error&) {
      }
    }
    try {
      const model::BpeTokenizer tok = model::BpeTokenizer::from_gguf(r);
      const std::vector<int> ids = tok.encode("Hello, world! 123 <|im_start|>\xff", true, true);
      tok.decode(ids);
    } catch (const Error&) {
    }
  } catch (const Error&) {
  }
  return 0;
}
