// libFuzzer harness: any byte string given to the safetensors reader either parses or
// throws nibble::Error; every accessor on a parsed file stays inside the buffer.
#include <cstdint>
#include <vector>

#include <nibble/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto r = nibble::io::SafetensorsReader::from_bytes(std::vector<std::uint8_t>(data, data + size));
    for (const auto& t : r.tensors()) {
      const auto b = r.bytes(t);
      volatile std::uint8_t sink = b.size ? b.data[b.size - 1] : 0;
      (void)sink;
      if (t.dtype == nibble::io::DType::F32 || t.dtype == nibble::io::DType::F16 || t.dtype == nibble::io::DType::BF16) {
        r.floats(t.name);
        if (t.shape.size() <= 2) r.matrix(t.name);
      }
    }
  } catch (const nibble::Error&) {
  }
  return 0;
}
