// NIBBLE_UNROLL, placed before a loop with a small fixed trip count, unrolls it
// completely at any optimization level.
//
// Why: the kernels keep arrays of SIMD registers (a block's 4 code vectors, one
// accumulator per batch row) indexed by such loops. GCC 12 at -O2 leaves many of these
// loops rolled, so the arrays live on the stack and every step goes through memory. A
// header-only library is compiled with its users' flags, and -O2 is a common one
// (CMake's RelWithDebInfo, distribution packages), so the kernels must not need -O3.
// Measured on AMD EPYC Zen 4, one thread, L2-resident matrices, before this macro:
//   AVX-512 VNNI 4-bit, 2048×1024 g32, batch 1: 56 µs at -O2 against 23 µs at -O3;
//   8-bit (Q8_0) AVX2, 2048×1024, batch 1: 90 µs against 59 µs;
//   AVX2 4-bit, g128, batch 4: 187 µs against 158 µs.
// With it, -O2 is within the noise of -O3 on each. The AVX2 4-bit kernels carry it
// only on their batched steps: on the batch-1 steps GCC already unrolls at -O2, and
// marking those loops made them about 4% slower. The attention, softmax and NEON loops
// are marked for the same reason but were not timed (NEON runs only under qemu here).
// GCC and Clang both read "#pragma GCC unroll".
#pragma once

#define NIBBLE_UNROLL _Pragma("GCC unroll 16")
