// libFuzzer harness: the GGUF reader either parses or throws nibble::Error; on a parsed
// file every tensor goes through the float decoders (load_float, any type and rank) and
// every 4-bit one through the QuantizedMatrix import (Q4_0, Q4_1, IQ4_NL), each of which
// may again only throw nibble::Error. A file with tokenizer metadata is also loaded as a
// BpeTokenizer and encodes a short text.
#include <cstdint>
#include <vector>

#include <nibble/io/gguf.hpp>
#include <nibble/model/bpe_tokenizer.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using nibble::io::GgmlType;
  try {
    const auto r = nibble::io::GgufReader::from_bytes(std::vector<std::uint8_t>(data, data + size));
    for (const auto& t : r.tensors()) {
      try {
        r.load_float(t.name);
      } catch (const nibble::Error&) {
      }
      try {
        if (t.type == static_cast<std::uint32_t>(GgmlType::Q4_0) ||
            t.type == static_cast<std::uint32_t>(GgmlType::IQ4_NL) ||
            t.type == static_cast<std::uint32_t>(GgmlType::Q4_1))
          r.load_quantized(t.name);
      } catch (const nibble::Error&) {
      }
    }
    if (r.typed_metadata().contains("tokenizer.ggml.tokens")) {
      try {
        const auto tok = nibble::model::BpeTokenizer::from_gguf(r);
        const auto ids = tok.encode("Hello 123 <|im_start|>\xff  world", true, true);
        tok.decode(ids, false, true);
      } catch (const nibble::Error&) {
      }
    }
  } catch (const nibble::Error&) {
  }
  return 0;
}
