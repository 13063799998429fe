// llama.cpp's CPU matrix multiplication as a peer in gemv_bench (benchmarks/compare
// --peer llama.cpp). Compiled only when the build is given a llama.cpp build tree
// (NIBBLE_PEER_LLAMA_CPP_BUILD / _SOURCE, set by compare from scripts/build-llama-cpp.sh);
// otherwise gemv_bench has no peer rows and these functions are never called.
#pragma once

#include <cstddef>
#include <string>

namespace peer {

// Registers llama.cpp benchmarks for one configuration, named
//   llamacpp/<type>/<buffer>/<rows>x<cols>/b<batch>/t<threads>/<regime>
// for q4_0, iq4_nl and q4_K (4.5 bits per weight each; q4_K only where cols is a
// multiple of its 256-weight blocks), in the buffer llama.cpp itself
// would pick on this CPU (the first of the CPU device's extra buffer types that takes the
// product, e.g. AMX or CPU_REPACK, else plain CPU memory). Each is checked once against a
// double-precision product of llama.cpp's own dequantized weights before it is timed.
void register_llamacpp(std::size_t rows, std::size_t cols, std::size_t batch, int threads, bool cold,
                       std::size_t cold_bytes);

// "llama.cpp (ggml <version>), extra buffer types: ..." for the benchmark context.
std::string llamacpp_description();

}  // namespace peer
