// libFuzzer harness: llama.cpp's saved-logits file (io/llama_logits.hpp) either parses or
// throws nibble::Error; a parsed file hands out every record (scales checked there too).
#include <cstdint>
#include <vector>

#include <nibble/io/llama_logits.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace nibble;
  try {
    const auto r = io::LlamaLogitsReader::from_bytes(std::vector<std::uint8_t>(data, data + size));
    std::vector<float> lp(static_cast<std::size_t>(r.header().n_vocab));
    for (int c = 0; c < r.header().n_chunk; ++c)
      for (std::size_t t = 0; t < r.header().scored_per_chunk(); ++t) {
        try {
          r.log_probs(static_cast<std::size_t>(c), t, lp.data());
        } catch (const Error&) {
        }
      }
  } catch (const Error&) {
  }
  return 0;
}
