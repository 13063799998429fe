// libFuzzer harness: the GGUF reader either parses (and decodes every supported tensor)
// or throws nibble::Error.
#include <cstdint>
#include <vector>

#include <nibble/io/gguf.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto r = nibble::io::GgufReader::from_bytes(std::vector<std::uint8_t>(data, data + size));
    for (const auto& t : r.tensors()) {
      try {
        if (t.ne.size() <= 2) r.dequantize(t.name);
        if (t.type == static_cast<std::uint32_t>(nibble::io::GgmlType::Q4_0) ||
            t.type == static_cast<std::uint32_t>(nibble::io::GgmlType::IQ4_NL))
          r.load_quantized(t.name);
      } catch (const nibble::Error&) {
      }
    }
  } catch (const nibble::Error&) {
  }
  return 0;
}
