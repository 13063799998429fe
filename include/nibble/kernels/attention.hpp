// One query row of attention (decode): the ISA dispatch. attention_scalar.hpp is the
// specification, and every path gives its result bit for bit.
#pragma once

#include <cstddef>

#include "attention_scalar.hpp"
#include "cpu.hpp"
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
#include "attention_avx2.hpp"
#include "attention_avx512.hpp"
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
#include "attention_neon.hpp"
#endif

namespace nibble::detail {

// s[j] = q·K_j for j < n; q and each K row hold hs floats, K rows are stride apart.
inline void attention_scores(const float* q, const float* K, std::size_t stride, std::size_t n, std::size_t hs,
                             float* s, Isa isa) {
  switch (isa) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
    case Isa::avx2: attention_avx2::scores(q, K, stride, n, hs, s); return;
    case Isa::avx512: attention_avx512::scores(q, K, stride, n, hs, s); return;
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
    case Isa::neon: attention_neon::scores(q, K, stride, n, hs, s); return;
#endif
    default: attention_scalar::scores(q, K, stride, n, hs, s); return;
  }
}

// out[d] = Σ_j p[j]·V_j[d] for d < hs; V rows are stride apart.
inline void attention_mix(const float* p, const float* V, std::size_t stride, std::size_t n, std::size_t hs,
                          float* out, Isa isa) {
  switch (isa) {
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
    case Isa::avx2: attention_avx2::mix(p, V, stride, n, hs, out); return;
    case Isa::avx512: attention_avx512::mix(p, V, stride, n, hs, out); return;
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
    case Isa::neon: attention_neon::mix(p, V, stride, n, hs, out); return;
#endif
    default: attention_scalar::mix(p, V, stride, n, hs, out); return;
  }
}

}  // namespace nibble::detail
