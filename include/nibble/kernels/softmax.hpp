// In-place softmax of one row (attention scores) and the feed-forward gate silu(g)·u: the
// ISA dispatch. softmax_scalar.hpp is the specification, and every path gives its result
// bit for bit.
#pragma once

#include <cstddef>

#include "cpu.hpp"
#include "softmax_scalar.hpp"
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
#include "softmax_avx2.hpp"
#include "softmax_avx512.hpp"
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
#include "softmax_neon.hpp"
#endif

namespace nibble::detail {

inline void softmax(float* v, std::size_t n, Isa isa) {
  if (n == 0) return;
  switch (isa) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
    case Isa::avx2: softmax_avx2::softmax(v, n); return;
    case Isa::avx512: softmax_avx512::softmax(v, n); return;
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
    case Isa::neon: softmax_neon::softmax(v, n); return;
#endif
    default: softmax_scalar::softmax(v, n); return;
  }
}

// out[i] = silu(gate[i]) · up[i] (softmax_scalar::silu_mul); out may be gate.
inline void silu_mul(const float* gate, const float* up, float* out, std::size_t n, Isa isa) {
  switch (isa) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
    case Isa::avx2: softmax_avx2::silu_mul(gate, up, out, n); return;
    case Isa::avx512: softmax_avx512::silu_mul(gate, up, out, n); return;
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
    case Isa::neon: softmax_neon::silu_mul(gate, up, out, n); return;
#endif
    default: softmax_scalar::silu_mul(gate, up, out, n); return;
  }
}

}  // namespace nibble::detail
