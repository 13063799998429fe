// libFuzzer harness: GPTQ, AWQ and bitsandbytes importers on an arbitrary safetensors
// file either return a valid QuantizedMatrix or throw nibble::Error.
#include <cstdint>
#include <string>
#include <vector>

#include <nibble/io/awq_checkpoint.hpp>
#include <nibble/io/bnb_checkpoint.hpp>
#include <nibble/io/gptq_checkpoint.hpp>

namespace {
bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}
template <class F>
void attempt(F f) {
  try {
    f();
  } catch (const nibble::Error&) {
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace nibble::io;
  try {
    const auto r = SafetensorsReader::from_bytes(std::vector<std::uint8_t>(data, data + size));
    for (const auto& t : r.tensors()) {
      if (ends_with(t.name, ".qweight")) {
        const std::string prefix = t.name.substr(0, t.name.size() - 8);
        attempt([&] { read_gptq_layer(r, prefix, GptqFormat::v1).matrix.dequantize(); });
        attempt([&] { read_gptq_layer(r, prefix, GptqFormat::v2).matrix.dequantize(); });
        attempt([&] { read_awq(r, prefix).dequantize(); });
      }
      for (const char* q : {".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4"})
        if (ends_with(t.name, q)) {
          const std::string base = t.name.substr(0, t.name.size() - std::string(q).size());
          attempt([&] { read_bnb(r, base).dequantize(); });
        }
    }
  } catch (const nibble::Error&) {
  }
  return 0;
}
