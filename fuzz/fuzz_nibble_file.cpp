// libFuzzer harness: the nibble container reader either loads every tensor or throws
// nibble::Error (checksums are part of the format, so most mutations stop there; the
// seeds are valid files so the parser behind the checksum is reached too).
#include <cstdint>
#include <vector>

#include <nibble/io/nibble_file.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto r = nibble::io::NibbleFileReader::from_bytes(std::vector<std::uint8_t>(data, data + size));
    for (const auto& t : r.tensors()) {
      try {
        if (t.kind == nibble::io::TensorKind::quantized) r.load(t.name).dequantize();
        else r.load_raw(t.name);
      } catch (const nibble::Error&) {
      }
    }
  } catch (const nibble::Error&) {
  }
  return 0;
}
