// Decodes every tensor of a GGUF file with nibble and streams the float32 values to
// stdout for tests/interop/check_decode.py, which compares them with gguf-py's own
// dequantize. With --import-q4_1, each 2-D Q4_1 tensor is also imported into a
// QuantizedMatrix and its dequantize() follows (the rounding-bound check).
//
// Stream, little-endian, per record:
//   u32 name length | name | u32 kind (0 = load_float, 1 = Q4_1 import) | u64 count | count × f32
//
//   interop_decode_gguf FILE.gguf [--import-q4_1] > stream
#include <cstdio>
#include <cstring>
#include <string>

#include <nibble/io/gguf.hpp>

using namespace nibble;

namespace {

void put(const void* p, std::size_t n) {
  if (n && std::fwrite(p, 1, n, stdout) != n) throw Error("decode_gguf: short write to stdout");
}

void record(const std::string& name, std::uint32_t kind, const float* v, std::uint64_t count) {
  const auto len = static_cast<std::uint32_t>(name.size());
  put(&len, 4);
  put(name.data(), name.size());
  put(&kind, 4);
  put(&count, 8);
  put(v, static_cast<std::size_t>(count) * 4);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3 || (argc == 3 && std::strcmp(argv[2], "--import-q4_1") != 0)) {
    std::fprintf(stderr, "usage: %s FILE.gguf [--import-q4_1]\n", argv[0]);
    return 2;
  }
  const bool import = argc == 3;
  try {
    const auto r = io::GgufReader::open(argv[1]);
    for (const auto& t : r.tensors()) {
      const RowMatrixXf m = r.load_float(t.name);
      record(t.name, 0, m.data(), static_cast<std::uint64_t>(m.size()));
      if (import && t.type == static_cast<std::uint32_t>(io::GgmlType::Q4_1) && t.ne.size() == 2) {
        const RowMatrixXf q = r.load_quantized(t.name).dequantize();  // column-major → row-major
        record(t.name, 1, q.data(), static_cast<std::uint64_t>(q.size()));
      }
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "decode_gguf: %s\n", e.what());
    return 1;
  }
  return std::fflush(stdout) == 0 ? 0 : 1;
}
