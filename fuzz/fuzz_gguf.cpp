// libFuzzer harness: the GGUF reader either parses or throws nibble::Error; on a parsed
// file every tensor goes through the float decoders (load_float, any type and rank) and
// every 4-bit one through the QuantizedMatrix import (Q4_0, Q4_1, IQ4_NL), each of which
// may again only throw nibble::Error.
#include <cstdint>
#include <vector>

#include <nibble/io/gguf.hpp>

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
  } catch (const nibble::Error&) {
  }
  return 0;
}
