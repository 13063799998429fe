// AVX2 + FMA + F16C kernels (x86-64, GCC/Clang). Every function carries the target
// attribute, so no -mavx2 flag is needed and other translation units keep their
// baseline code (and Eigen its ABI). Only called after cpu.hpp found the features.
//
// Codes: one 8-row tile of the PackedMatrix at a time. Two consecutive full blocks
// (64 elements) that start a 32-byte chunk are read with one 32-byte load per row:
// (v & 0x0F) are the odd elements, ((v >> 4) & 0x0F) the even ones, block A in the
// low lane and block B in the high lane; the activations of A and B are loaded into
// the matching lanes. Other blocks (short ones, or group sizes that are not a
// multiple of 64) take 16 bytes broadcast to both lanes and a per-lane variable
// shift (4 in the low lane, 0 in the high one) before the mask.
//
// fast:  maddubs(u8 code, s8 q) gives 16-bit pair sums; for int4/uint4 they stay
//        16-bit through two hadd levels (|sum| <= 30480), then madd(1) widens; for
//        table codebooks nf4/fp4/iq4_nl (pshufb to int8 with |w| <= 127, then the
//        sign trick maddubs(|w|, sign(q, w)), since maddubs wants an unsigned first
//        operand; pairs stay <= 2·127·127) madd(1) widens at once and a 32-bit hadd
//        tree follows. The result is one vector of 8 exact row sums per
//        block, and the float steps then run with one row per lane in the scalar
//        reference's order, so results equal it bit for bit.
// exact: one row at a time; nibbles widen to int32, then to float by cvtdq2ps or,
//        for table codebooks, by two 8-entry permutes and a blend on bit 3; FMA with x.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "activation.hpp"
#include "packed_matrix.hpp"
#include "unroll.hpp"

#define NIBBLE_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace nibble::detail::avx2 {

inline constexpr std::size_t kPrefetchBytes = 8192;

// The (up to) 16 code bytes of a block for row i of tile t, as stored.
NIBBLE_TARGET_AVX2 inline __m128i load_code_bytes(const PackedMatrix& W, std::size_t t, std::size_t i,
                                                  const BlockSpan& span) {
  const std::size_t k = span.byte_begin;
  alignas(16) std::uint8_t tmp[16];
  if (W.code_layout() == CodeLayout::row_panels)  // four dwords 64 bytes apart (exact mode reads rows this way)
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(W.bytes16(t * kTileRows + i, k, tmp)));
  if (k % kChunkBytes <= kChunkBytes - 16)  // inside one chunk: bytes past a short block are multiplied by 0
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(W.chunk(t, k / kChunkBytes) + i * kChunkBytes +
                                                            k % kChunkBytes));
  // straddles two chunks (group sizes that are not a multiple of 32)
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(W.bytes16(t * kTileRows + i, k, tmp)));
}

// The same bytes split into nibbles: even elements in the low lane, odd ones in the high lane.
NIBBLE_TARGET_AVX2 inline __m256i load_nibbles(const PackedMatrix& W, std::size_t t, std::size_t i,
                                               const BlockSpan& span) {
  const __m256i both = _mm256_broadcastsi128_si256(load_code_bytes(W, t, i, span));
  const __m256i shifted = _mm256_srlv_epi32(both, _mm256_setr_epi32(4, 4, 4, 4, 0, 0, 0, 0));
  return _mm256_and_si256(shifted, _mm256_set1_epi8(0x0F));
}

// Sum of each of the 8 vectors' int32 lanes, as lane i of the result.
NIBBLE_TARGET_AVX2 inline __m256i sum_rows(const __m256i* v) {
  const __m256i s01 = _mm256_hadd_epi32(v[0], v[1]);
  const __m256i s23 = _mm256_hadd_epi32(v[2], v[3]);
  const __m256i s45 = _mm256_hadd_epi32(v[4], v[5]);
  const __m256i s67 = _mm256_hadd_epi32(v[6], v[7]);
  const __m256i s0123 = _mm256_hadd_epi32(s01, s23);  // per lane: rows 0,1,2,3
  const __m256i s4567 = _mm256_hadd_epi32(s45, s67);  // per lane: rows 4,5,6,7
  const __m256i lo = _mm256_permute2x128_si256(s0123, s4567, 0x20);
  const __m256i hi = _mm256_permute2x128_si256(s0123, s4567, 0x31);
  return _mm256_add_epi32(lo, hi);
}

template <bool kTable>
NIBBLE_TARGET_AVX2 inline __m256i block_dot(__m256i w, __m256i q) {
  __m256i prod;
  if constexpr (kTable) prod = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
  else prod = _mm256_maddubs_epi16(w, q);
  return _mm256_madd_epi16(prod, _mm256_set1_epi16(1));
}

// Row sums of 8 blocks for int4/uint4 codes: maddubs pairs are at most 2·15·127, so
// three levels of 16-bit horizontal adds (16 products, at most 30480) cannot overflow
// and replace eight pmaddwd plus the first 32-bit level.
NIBBLE_TARGET_AVX2 inline __m256i sum_rows_small(const __m256i* w, __m256i q) {
  __m256i p[8];
  for (int i = 0; i < 8; ++i) p[i] = _mm256_maddubs_epi16(w[i], q);
  const __m256i s01 = _mm256_hadd_epi16(p[0], p[1]), s23 = _mm256_hadd_epi16(p[2], p[3]);
  const __m256i s45 = _mm256_hadd_epi16(p[4], p[5]), s67 = _mm256_hadd_epi16(p[6], p[7]);
  const __m256i s0123 = _mm256_hadd_epi16(s01, s23), s4567 = _mm256_hadd_epi16(s45, s67);
  const __m256i s = _mm256_hadd_epi16(s0123, s4567);  // per lane: rows 0..7 as int16
  return _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(s)),
                          _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s, 1)));
}

// Even / odd elements of two 8-float vectors, in order: [v0 v2 … v14] and [v1 v3 … v15].
NIBBLE_TARGET_AVX2 inline __m256 evens8(__m256 a, __m256 b) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), 0xd8));
}
NIBBLE_TARGET_AVX2 inline __m256 odds8(__m256 a, __m256 b) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), 0xd8));
}
// quantize_activation_block's per-element rule on 8 values: trunc(v·scale ± 0.5), clamped.
NIBBLE_TARGET_AVX2 inline __m256i activation_codes8(__m256 v, __m256 scale) {
  const __m256 t = _mm256_mul_ps(v, scale);
  const __m256 half = _mm256_blendv_ps(_mm256_set1_ps(0.5f), _mm256_set1_ps(-0.5f),
                                       _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_LT_OQ));
  const __m256i r = _mm256_cvttps_epi32(_mm256_add_ps(t, half));
  return _mm256_min_epi32(_mm256_max_epi32(r, _mm256_set1_epi32(-127)), _mm256_set1_epi32(127));
}

// Fast mode's activation rule (quantize_activation_block) on a whole block of 32, for
// prepare_fast (FullBlockQuantizer). The same float operations per element — x·(127/amax),
// ± 0.5 by the sign, truncation, clamp — on elements taken even-first (shuffles), so the
// codes come out de-interleaved; Σq is an exact integer sum in any order.
NIBBLE_TARGET_AVX2 inline bool quantize_activation_block32(const float* src, std::int8_t* dst, QuantizedBlock* out) {
  const __m256 x0 = _mm256_loadu_ps(src), x1 = _mm256_loadu_ps(src + 8), x2 = _mm256_loadu_ps(src + 16),
               x3 = _mm256_loadu_ps(src + 24);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 a0 = _mm256_and_ps(x0, abs_mask), a1 = _mm256_and_ps(x1, abs_mask), a2 = _mm256_and_ps(x2, abs_mask),
               a3 = _mm256_and_ps(x3, abs_mask);
  const __m256 big = _mm256_set1_ps(3.40282347e38f);  // |x| <= FLT_MAX: false for inf and NaN
  const __m256 finite = _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(a0, big, _CMP_LE_OQ), _mm256_cmp_ps(a1, big, _CMP_LE_OQ)),
                                      _mm256_and_ps(_mm256_cmp_ps(a2, big, _CMP_LE_OQ), _mm256_cmp_ps(a3, big, _CMP_LE_OQ)));
  if (_mm256_movemask_ps(finite) != 0xff) return false;
  __m256 m = _mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(a2, a3));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
  const float amax = _mm_cvtss_f32(m4);
  if (amax == 0.0f) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_setzero_si256());
    *out = {0.0f, 0};
    return true;
  }
  const float inv = 127.0f / amax;
  if (!(inv <= 3.0e38f)) return false;  // the scalar rule divides instead
  const __m256 scale = _mm256_set1_ps(inv);
  const __m256i e0 = activation_codes8(evens8(x0, x1), scale), e1 = activation_codes8(evens8(x2, x3), scale);
  const __m256i o0 = activation_codes8(odds8(x0, x1), scale), o1 = activation_codes8(odds8(x2, x3), scale);
  const __m256i s = _mm256_add_epi32(_mm256_add_epi32(e0, e1), _mm256_add_epi32(o0, o1));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
  // int32 → int16 → int8 (no saturation happens: |q| <= 127); each pack interleaves the
  // 128-bit lanes, and a 64-bit permute puts them back in order.
  const __m256i ev16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(e0, e1), 0xd8);
  const __m256i od16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(o0, o1), 0xd8);
  const __m256i q8 = _mm256_permute4x64_epi64(_mm256_packs_epi16(ev16, od16), 0xd8);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), q8);
  *out = {amax / 127.0f, _mm_cvtsi128_si32(s4)};
  return true;
}

// In-place 8×8 transpose: afterwards m[j] lane i holds what m[i] lane j held.
NIBBLE_TARGET_AVX2 inline void transpose8(__m256* m) {
  const __m256 t0 = _mm256_unpacklo_ps(m[0], m[1]), t1 = _mm256_unpackhi_ps(m[0], m[1]);
  const __m256 t2 = _mm256_unpacklo_ps(m[2], m[3]), t3 = _mm256_unpackhi_ps(m[2], m[3]);
  const __m256 t4 = _mm256_unpacklo_ps(m[4], m[5]), t5 = _mm256_unpackhi_ps(m[4], m[5]);
  const __m256 t6 = _mm256_unpacklo_ps(m[6], m[7]), t7 = _mm256_unpackhi_ps(m[6], m[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  m[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  m[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  m[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  m[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  m[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  m[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  m[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  m[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// One row's two blocks (A in the low lane, B in the high lane; 32 code bytes at
// `row`) times the activations qe (even elements) and qo (odd elements): int4/uint4
// give 16-bit pair sums (at most 2·2·15·127), table codebooks 32-bit ones.
template <bool kTable>
NIBBLE_TARGET_AVX2 inline __m256i pair_dot(const std::uint8_t* row, __m256i qe, __m256i qo, __m256i table) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row));
  const __m256i lo = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
  if constexpr (kTable)
    return _mm256_add_epi32(block_dot<true>(_mm256_shuffle_epi8(table, hi), qe),
                            block_dot<true>(_mm256_shuffle_epi8(table, lo), qo));
  else
    return _mm256_add_epi16(_mm256_maddubs_epi16(hi, qe), _mm256_maddubs_epi16(lo, qo));
}

// Exact row sums of four consecutive tile rows (32 code bytes each at `rows`), block A in
// the low lane and B in the high lane (four rows at a time keep few vectors live).
// int4/uint4 pair sums stay 16-bit through two hadd levels (at most 4·2·2·15·127 =
// 30480) and widen at the end; table codebooks' are 32-bit already.
template <bool kTable>
NIBBLE_TARGET_AVX2 inline __m256i four_row_sums(const std::uint8_t* rows, __m256i qe, __m256i qo, __m256i table) {
  const __m256i d0 = pair_dot<kTable>(rows + 0 * kChunkBytes, qe, qo, table);
  const __m256i d1 = pair_dot<kTable>(rows + 1 * kChunkBytes, qe, qo, table);
  const __m256i d2 = pair_dot<kTable>(rows + 2 * kChunkBytes, qe, qo, table);
  const __m256i d3 = pair_dot<kTable>(rows + 3 * kChunkBytes, qe, qo, table);
  if constexpr (kTable)
    return _mm256_hadd_epi32(_mm256_hadd_epi32(d0, d1), _mm256_hadd_epi32(d2, d3));
  else
    return _mm256_madd_epi16(_mm256_hadd_epi16(_mm256_hadd_epi16(d0, d1), _mm256_hadd_epi16(d2, d3)),
                             _mm256_set1_epi16(1));
}

// Activations of two consecutive blocks (slot, slot + 1; de-interleaved, 32 int8 each)
// for the pair paths: bytes at + 0..15 of block A in the low lane, of block B in the
// high lane (at 0: even elements, 16: odd elements).
NIBBLE_TARGET_AVX2 inline __m256i pair_activations(const std::int8_t* qa, std::size_t at) {
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qa + at))),
                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(qa + 32 + at)), 1);
}

// a += d·(isum − off·Σq) for one block of activation slot `slot`, one row per lane, in
// the scalar reference's order.
NIBBLE_TARGET_AVX2 inline __m256 accumulate_block(__m256 a, __m256 isum, __m256 neg_off, const PreparedActivations& p,
                                                  std::size_t slot) {
  const __m256 t = _mm256_fmadd_ps(neg_off, _mm256_broadcast_ss(&p.qsum_f[slot]), isum);
  return _mm256_fmadd_ps(_mm256_broadcast_ss(&p.d[slot]), t, a);
}

// Scale of row r's group g as every path decodes it (F16C here; the same value as
// half_to_float).
NIBBLE_TARGET_AVX2 inline float scale_at(const PackedMatrix& W, std::size_t r, std::size_t g) {
  if (W.scale_format() == ScaleFormat::f16) return _cvtsh_ss(W.scale_bits16(r, g));
  return W.scale(r, g);
}

// Double-quantized scales of groups at .. at + 7, bit-identical to PackedMatrix::scale:
// one fused multiply-add of the map value and block absmax, as std::fma there. (f32 and
// f16 scales are read from their tile-ordered copies instead.)
NIBBLE_TARGET_AVX2 inline __m256 decode8_scales(const PackedMatrix& W, std::size_t at) {
  const ScaleArray& s = W.row_ordered_scales();
  switch (W.scale_format()) {
    case ScaleFormat::dq8: {
      // Gathers are slow on this AMD core (measured no faster than scalar decoding), so the
      // eight map values are plain loads, and the block absmax is one broadcast unless the
      // eight groups straddle a 256-group block.
      const std::uint8_t* c = s.dq_codes().data() + at;
      const float* map = dynamic_map().data();
      const __m256 values = _mm256_setr_ps(map[c[0]], map[c[1]], map[c[2]], map[c[3]], map[c[4]], map[c[5]],
                                           map[c[6]], map[c[7]]);
      const float* a2 = s.dq_absmax2().data();
      __m256 absmax2;
      if (at / kDoubleQuantBlock == (at + 7) / kDoubleQuantBlock) {
        absmax2 = _mm256_set1_ps(a2[at / kDoubleQuantBlock]);
      } else {
        alignas(32) float tmp[8];
        for (std::size_t j = 0; j < 8; ++j) tmp[j] = a2[(at + j) / kDoubleQuantBlock];
        absmax2 = _mm256_load_ps(tmp);
      }
      return _mm256_fmadd_ps(values, absmax2, _mm256_set1_ps(s.dq_offset()));
    }
    default: break;
  }
  detail::throw_error("decode8_scales: unsupported scale format");
}

// Per group g, the scale·k (sv[8g + i]) and −offset (nov[8g + i]) of rows r + i of a
// row tile (nr real rows; padding rows reuse the last row's). The same values as
// PackedMatrix::decode_scales / decode_negated_offsets; offsets vary by row only for
// uint4_asym, so for the other codebooks only the first tile (first_tile) fills nov.
// Returns where the tile's −offsets are: nov, or the PackedMatrix's own tile-ordered
// f32 copy (read in place, not copied).
NIBBLE_TARGET_AVX2 inline const float* tile_scales(const PackedMatrix& W, std::size_t r, std::size_t nr,
                                                   bool first_tile, float* sv, float* nov) {
  const std::size_t G = W.groups_per_row(), t = r / kTileRows;
  const float k = W.int8_factor();
  // Group 0 of row i's scales and offsets (padding rows reuse the last row's); only the
  // formats decoded row by row below need them, and a decode-sized call runs this per
  // 8-row tile, so they are worked out only then.
  const auto first = [&](std::size_t i) { return (r + std::min(i, nr - 1)) * G; };
  // Scales: times k, read 8 at a time from the tile-ordered fp16 or f32 copy
  // (PackedMatrix::build_tile_order) where there is one, else (dq8) decoded 8 groups ×
  // 8 rows at a time and transposed into sv[8g + i]; bf16 and the groups left over one
  // by one.
  const std::size_t H = W.tile_order_rows();  // group g of the tile-ordered copies at + H·g
  std::size_t g_done = 0;  // groups whose scales are already in sv
  const __m256 kv = _mm256_set1_ps(k);
  if (const std::uint16_t* s16 = W.tile_scales16(t)) {
    for (; g_done < G; ++g_done)
      _mm256_storeu_ps(sv + 8 * g_done, _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(
                                                          reinterpret_cast<const __m128i*>(s16 + H * g_done))),
                                                      kv));
  } else if (const float* s32 = W.tile_scales32(t)) {
    for (; g_done < G; ++g_done) _mm256_storeu_ps(sv + 8 * g_done, _mm256_mul_ps(_mm256_loadu_ps(s32 + H * g_done), kv));
  } else if (W.scale_format() == ScaleFormat::dq8) {
    for (; g_done + 8 <= G; g_done += 8) {
      __m256 m[8];
      for (std::size_t i = 0; i < 8; ++i) m[i] = _mm256_mul_ps(decode8_scales(W, first(i) + g_done), kv);
      transpose8(m);
      for (std::size_t j = 0; j < 8; ++j) _mm256_storeu_ps(sv + 8 * (g_done + j), m[j]);
    }
  }
  // −Offsets: the tile-ordered f32 copy is read in place (8-row tiles; copied for 16-row
  // panels); fp16 ones and uint4 zero points are widened 8 at a time.
  const float* offsets = nov;
  std::size_t nov_done = 0;  // groups whose −offsets are already in place
  if (const float* o32 = W.tile_offsets32(t)) {  // float zero points (HQQ, GGUF Q4_1 imports)
    if (H == kTileRows) {
      offsets = o32;
    } else {
      for (std::size_t g = 0; g < G; ++g) _mm256_storeu_ps(nov + 8 * g, _mm256_loadu_ps(o32 + H * g));
    }
    nov_done = G;
  } else if (const std::uint16_t* o16 = W.tile_offsets16(t)) {
    for (; nov_done < G; ++nov_done)
      _mm256_storeu_ps(nov + 8 * nov_done,
                       _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(o16 + H * nov_done))));
  } else if (const std::uint8_t* z8 = W.tile_zeros8(t)) {  // −z, also −0 for 0 as in the scalar code
    for (; nov_done < G; ++nov_done) {
      const __m256i z = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(z8 + H * nov_done)));
      _mm256_storeu_ps(nov + 8 * nov_done, _mm256_xor_ps(_mm256_cvtepi32_ps(z), _mm256_set1_ps(-0.0f)));
    }
  }
  const bool offsets_left = (W.codebook() == Codebook::uint4_asym || first_tile) && nov_done < G;
  if (g_done == G && !offsets_left) return offsets;
  for (std::size_t i = 0; i < 8; ++i) {
    // Groups left over (bf16, and dq8 past a multiple of 8) exist only without a
    // tile-ordered copy.
    if (g_done < G) W.decode_scales(first(i) + g_done, G - g_done, k, sv + 8 * g_done + i, 8);
    if (offsets_left) W.decode_negated_offsets(first(i) + nov_done, G - nov_done, nov + 8 * nov_done + i, 8);
  }
  return offsets;
}

// One block (any length, any position) of tile t for batch rows [b0, b0 + NB): the
// path for blocks that cannot be paired (short blocks, group sizes that are not a
// multiple of 64). Each row's 16 code bytes are broadcast to both lanes and split.
// Always inlined: as a call, the caller's accumulators a[] would live in memory for
// the whole tile (measured 5% slower at batch 32).
template <bool kTable, int NB>
NIBBLE_TARGET_AVX2 __attribute__((always_inline)) inline void single_block(const PackedMatrix& W, const PreparedActivations& p, std::size_t t,
                                            std::size_t blk, __m256i table, __m256 neg_off, __m256* a,
                                            std::size_t b0) {
  const BlockSpan span = W.blocks()[blk];
  __m256i w[8];
  for (std::size_t i = 0; i < 8; ++i) {
    w[i] = load_nibbles(W, t, i, span);
    if constexpr (kTable) w[i] = _mm256_shuffle_epi8(table, w[i]);
  }
  for (int j = 0; j < NB; ++j) {
    const std::size_t slot = (b0 + static_cast<std::size_t>(j)) * p.blocks + blk;
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.q.data() + slot * kActivationBlock));
    __m256i isum;
    if constexpr (kTable) {
      __m256i part[8];
      for (std::size_t i = 0; i < 8; ++i) part[i] = block_dot<true>(w[i], q);
      isum = sum_rows(part);
    } else {
      isum = sum_rows_small(w, q);
    }
    a[j] = accumulate_block(a[j], _mm256_cvtepi32_ps(isum), neg_off, p, slot);
  }
}

// Whether blocks blk, blk + 1 (of a group ending at blk_end) form a pair step: both
// full, the first starting a 32-byte chunk.
inline bool is_pair_step(const BlockSpan* spans, std::size_t blk, std::size_t blk_end) {
  return blk + 2 <= blk_end && spans[blk + 1].elements == kActivationBlock && spans[blk].byte_begin % kChunkBytes == 0;
}

// The chunk of tile t that starts at block `first` (row i at + 32·i), with the bytes
// 8 KiB ahead prefetched: the tile's 256 bytes per step are one sequential stream, and
// prefetching measured ~1.5x faster from DRAM (16384², 1 thread) and ~10% faster from
// L3 (4096²). Into L2 (T1), not L1: on AMD EPYC Zen 4, g32 cold 16384² at 1 thread read
// 8.1 GB/s with T0 and 13.3–14.9 GB/s with T1 (the streaming read: 21–24), 4096² cold
// 8.6 → 13.9–14.2, hot unchanged; the int8 kernels' prefetch gained as much. (Fewer
// misses can be outstanding from L1 than from L2, which would explain it.) A prefetch
// past the buffer's end is harmless; the address is formed as an integer so no
// out-of-range pointer arithmetic happens.
NIBBLE_TARGET_AVX2 inline const std::uint8_t* pair_chunk(const PackedMatrix& W, std::size_t t, const BlockSpan& first) {
  const std::uint8_t* tile_chunk = W.chunk(t, first.byte_begin / kChunkBytes);
  const std::uintptr_t ahead = reinterpret_cast<std::uintptr_t>(tile_chunk) + kPrefetchBytes;
  for (std::size_t line = 0; line < kTileRows * kChunkBytes; line += 64)
    _mm_prefetch(reinterpret_cast<const char*>(ahead + line), _MM_HINT_T1);
  return tile_chunk;
}

// Group pairs: with group size 32 (every GGUF 4-bit format) each group is one block,
// and groups 2k, 2k + 1 lie side by side in one 32-byte chunk, so one pair step serves
// both, each block keeping its own group's scale and offset. Returns how many such
// pairs a row starts with (the ragged last group, if any, is not part of one).
inline std::size_t group_pairs(const PackedMatrix& W) { return W.group_size() == 32 ? W.cols() / 64 : 0; }

// The float steps after a pair step's integer sums for batch row j. Within one group
// (kTwoGroups = false) both blocks add into the group's a; for a group pair block A
// closes group g (a = its block, y += s_g·a) and block B group g + 1, which is the
// scalar reference's order for one-block groups.
template <bool kTwoGroups>
NIBBLE_TARGET_AVX2 __attribute__((always_inline)) inline void finish_pair(__m256 isum_a, __m256 isum_b, __m256& a,
                                                                          __m256& y, __m256 neg_off, const float* sv,
                                                                          const float* nov, std::size_t g,
                                                                          const PreparedActivations& p,
                                                                          std::size_t slot) {
  if constexpr (!kTwoGroups) {
    a = accumulate_block(a, isum_a, neg_off, p, slot);
    a = accumulate_block(a, isum_b, neg_off, p, slot + 1);
  } else {
    const __m256 zero = _mm256_setzero_ps();
    y = _mm256_fmadd_ps(_mm256_loadu_ps(sv + 8 * g),
                        accumulate_block(zero, isum_a, _mm256_loadu_ps(nov + 8 * g), p, slot), y);
    y = _mm256_fmadd_ps(_mm256_loadu_ps(sv + 8 * g + 8),
                        accumulate_block(zero, isum_b, _mm256_loadu_ps(nov + 8 * g + 8), p, slot + 1), y);
  }
}

// One pair step: blocks blk (A) and blk + 1 (B) of tile t, for batch rows [b0, b0 + NB);
// then finish_pair<kTwoGroups> for each batch row (neg_off: within a group, its −offsets).
template <bool kTable, int NB, bool kTwoGroups>
NIBBLE_TARGET_AVX2 __attribute__((always_inline)) inline void pair_step(const PackedMatrix& W,
                                                                        const PreparedActivations& p, std::size_t t,
                                                                        std::size_t nb, std::size_t blk,
                                                                        __m256i table, __m256* a,
                                                                        __m256* y, __m256 neg_off, const float* sv,
                                                                        const float* nov, std::size_t g,
                                                                        std::size_t b0) {
  const std::uint8_t* tile_chunk = pair_chunk(W, t, W.blocks()[blk]);  // row i at + 32·i
  if constexpr (NB == 1) {
    // One activation row: decode and multiply each row at once (few live registers;
    // for a codebook table, keeping all 16 looked-up vectors live as the batched code
    // below does spills registers, and row by row measured ~15% faster).
    const std::size_t slot = b0 * nb + blk;
    const std::int8_t* qa = p.q.data() + slot * kActivationBlock;
    const __m256i qe = pair_activations(qa, 0), qo = pair_activations(qa, 16);
    const __m256i s0123 = four_row_sums<kTable>(tile_chunk, qe, qo, table);
    const __m256i s4567 = four_row_sums<kTable>(tile_chunk + 4 * kChunkBytes, qe, qo, table);
    finish_pair<kTwoGroups>(_mm256_cvtepi32_ps(_mm256_permute2x128_si256(s0123, s4567, 0x20)),
                            _mm256_cvtepi32_ps(_mm256_permute2x128_si256(s0123, s4567, 0x31)), a[0], y[0], neg_off, sv,
                            nov, g, p, slot);
    return;
  }
  __m256i hi[8], lo[8];
  NIBBLE_UNROLL
  for (std::size_t i = 0; i < 8; ++i) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile_chunk + i * kChunkBytes));
    lo[i] = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
    hi[i] = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
    if constexpr (kTable) {
      lo[i] = _mm256_shuffle_epi8(table, lo[i]);
      hi[i] = _mm256_shuffle_epi8(table, hi[i]);
    }
  }
  for (int j = 0; j < NB; ++j) {
    const std::size_t slot = (b0 + static_cast<std::size_t>(j)) * nb + blk;
    const std::int8_t* qa = p.q.data() + slot * kActivationBlock;  // block B follows at qa + 32
    const __m256i qe = pair_activations(qa, 0), qo = pair_activations(qa, 16);
    __m256i s0123, s4567;  // per lane (= per block): row sums 0..3 and 4..7
    if constexpr (kTable) {
      __m256i part[8];
      NIBBLE_UNROLL
      for (std::size_t i = 0; i < 8; ++i)
        part[i] = _mm256_add_epi32(block_dot<true>(hi[i], qe), block_dot<true>(lo[i], qo));
      s0123 = _mm256_hadd_epi32(_mm256_hadd_epi32(part[0], part[1]), _mm256_hadd_epi32(part[2], part[3]));
      s4567 = _mm256_hadd_epi32(_mm256_hadd_epi32(part[4], part[5]), _mm256_hadd_epi32(part[6], part[7]));
    } else {
      // |maddubs| <= 2·15·127; hi + lo and two hadd levels stay below 30480.
      __m256i part[8];
      NIBBLE_UNROLL
      for (std::size_t i = 0; i < 8; ++i)
        part[i] = _mm256_add_epi16(_mm256_maddubs_epi16(hi[i], qe), _mm256_maddubs_epi16(lo[i], qo));
      const __m256i ones = _mm256_set1_epi16(1);
      s0123 = _mm256_madd_epi16(
          _mm256_hadd_epi16(_mm256_hadd_epi16(part[0], part[1]), _mm256_hadd_epi16(part[2], part[3])), ones);
      s4567 = _mm256_madd_epi16(
          _mm256_hadd_epi16(_mm256_hadd_epi16(part[4], part[5]), _mm256_hadd_epi16(part[6], part[7])), ones);
    }
    finish_pair<kTwoGroups>(_mm256_cvtepi32_ps(_mm256_permute2x128_si256(s0123, s4567, 0x20)),
                            _mm256_cvtepi32_ps(_mm256_permute2x128_si256(s0123, s4567, 0x31)), a[j], y[j], neg_off, sv,
                            nov, g, p, slot);
  }
}

// Group g of tile t when it is a single block (a leftover of fast_tile_g32): its one
// block, then y += s_g·a.
template <bool kTable, int NB>
NIBBLE_TARGET_AVX2 inline void last_group(const PackedMatrix& W, const PreparedActivations& p, std::size_t t,
                                          std::size_t g, __m256i table, const float* sv, const float* nov, __m256* y,
                                          std::size_t b0) {
  __m256 a[NB];
  for (int j = 0; j < NB; ++j) a[j] = _mm256_setzero_ps();
  single_block<kTable, NB>(W, p, t, W.first_block(g), table, _mm256_loadu_ps(nov + 8 * g), a, b0);
  const __m256 s = _mm256_loadu_ps(sv + 8 * g);
  for (int j = 0; j < NB; ++j) y[j] = _mm256_fmadd_ps(s, a[j], y[j]);
}

// Rows of tile t; batch rows [b0, b0 + NB).
// sv / nov: per group, the 8 rows' scale·k and −offset.
template <bool kTable, int NB>
NIBBLE_TARGET_AVX2 inline void fast_tile(const PackedMatrix& W, const PreparedActivations& p, std::size_t t,
                                         const float* sv, const float* nov, float* out, std::size_t b0) {
  const std::size_t G = W.groups_per_row(), nb = W.block_count();
  const __m256i table =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(W.int8_base_values().data())));
  const BlockSpan* spans = W.blocks();
  __m256 y[NB];
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) y[j] = _mm256_setzero_ps();
  for (std::size_t g = 0; g < G; ++g) {
    const __m256 neg_off = _mm256_loadu_ps(nov + 8 * g);
    __m256 a[NB];
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) a[j] = _mm256_setzero_ps();
    std::size_t blk = W.first_block(g);
    const std::size_t blk_end = W.first_block(g + 1);
    // Two full blocks at a time: one 32-byte load per row holds both blocks' codes
    // (block A in the low lane, B in the high lane).
    for (; is_pair_step(spans, blk, blk_end); blk += 2)
      pair_step<kTable, NB, false>(W, p, t, nb, blk, table, a, y, neg_off, sv, nov, g, b0);
    for (; blk < blk_end; ++blk) single_block<kTable, NB>(W, p, t, blk, table, neg_off, a, b0);
    const __m256 s = _mm256_loadu_ps(sv + 8 * g);
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) y[j] = _mm256_fmadd_ps(s, a[j], y[j]);
  }
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) _mm256_storeu_ps(out + 8 * j, y[j]);
}

// fast_tile for group size 32: one pair step per two full groups, then the one or two
// groups left (an odd full group and/or a ragged last one), a block each. A kernel of its own so that the general
// tile loop above keeps its code generation (sharing one loop cost g128 ~10%).
template <bool kTable, int NB>
NIBBLE_TARGET_AVX2 inline void fast_tile_g32(const PackedMatrix& W, const PreparedActivations& p, std::size_t t,
                                             const float* sv, const float* nov, float* out, std::size_t b0) {
  const std::size_t G = W.groups_per_row(), pairs = group_pairs(W), nb = W.block_count();
  const __m256i table =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(W.int8_base_values().data())));
  __m256 y[NB];
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) y[j] = _mm256_setzero_ps();
  for (std::size_t g = 0; g < 2 * pairs; g += 2)
    pair_step<kTable, NB, true>(W, p, t, nb, W.first_block(g), table, y, y, _mm256_setzero_ps(), sv, nov, g, b0);
  for (std::size_t g = 2 * pairs; g < G; ++g) last_group<kTable, NB>(W, p, t, g, table, sv, nov, y, b0);
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) _mm256_storeu_ps(out + 8 * j, y[j]);
}

// A fast-mode tile kernel: tile t, batch rows [b0, b0 + NB), 8·NB results to out.
using FastTileFn = void (*)(const PackedMatrix& W, const PreparedActivations& p, std::size_t t, const float* sv,
                            const float* nov, float* out, std::size_t b0);

// Runs rows [r0, r1) (r0 a multiple of 8: threads split whole tiles) tile by tile: the
// tile's scales, then the batch in steps of 4, 2 and 1 rows (Tile4, Tile2, Tile1).
// Shared with the AVX-512 path, which brings its own tile kernels. The kernels are
// template arguments, not a table of pointers: direct calls measured ~4% faster.
template <FastTileFn Tile1, FastTileFn Tile2, FastTileFn Tile4>
NIBBLE_TARGET_AVX2 inline void fast_rows(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                         std::size_t r0, std::size_t r1) {
  const std::size_t G = W.groups_per_row(), rows = W.rows();
  // Per-thread scratch kept across calls: decode-sized products (a few µs) should not
  // pay two allocations per call and thread.
  thread_local std::vector<float> sv, nov;
  if (sv.size() < 8 * G) {
    sv.resize(8 * G);
    nov.resize(8 * G);
  }
  alignas(32) float out[8 * 4];
  for (std::size_t r = r0; r < r1; r += 8) {
    const std::size_t nr = std::min<std::size_t>(8, r1 - r), t = r / kTileRows;
    const float* nv = tile_scales(W, r, nr, r == r0, sv.data(), nov.data());
    std::size_t b = 0;
    while (b < p.batch) {
      std::size_t step = 1;
      if (p.batch - b >= 4) {
        step = 4;
        Tile4(W, p, t, sv.data(), nv, out, b);
      } else if (p.batch - b >= 2) {
        step = 2;
        Tile2(W, p, t, sv.data(), nv, out, b);
      } else {
        Tile1(W, p, t, sv.data(), nv, out, b);
      }
      for (std::size_t j = 0; j < step; ++j)
        for (std::size_t i = 0; i < nr; ++i) Y[(b + j) * rows + r + i] = out[8 * j + i];
      b += step;
    }
  }
}

NIBBLE_TARGET_AVX2 inline void gemm_fast(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                         std::size_t r0, std::size_t r1) {
  const bool g32 = group_pairs(W) > 0;
  if (W.table_codebook() && g32)
    fast_rows<fast_tile_g32<true, 1>, fast_tile_g32<true, 2>, fast_tile_g32<true, 4>>(W, p, Y, r0, r1);
  else if (W.table_codebook())
    fast_rows<fast_tile<true, 1>, fast_tile<true, 2>, fast_tile<true, 4>>(W, p, Y, r0, r1);
  else if (g32)
    fast_rows<fast_tile_g32<false, 1>, fast_tile_g32<false, 2>, fast_tile_g32<false, 4>>(W, p, Y, r0, r1);
  else
    fast_rows<fast_tile<false, 1>, fast_tile<false, 2>, fast_tile<false, 4>>(W, p, Y, r0, r1);
}

// 8 int32 codes → 8 floats of the codebook's base values.
template <bool kTable>
NIBBLE_TARGET_AVX2 inline __m256 decode8(__m128i codes8, __m256 table_lo, __m256 table_hi) {
  const __m256i idx = _mm256_cvtepu8_epi32(codes8);
  if constexpr (!kTable) {
    return _mm256_cvtepi32_ps(idx);
  } else {
    const __m256 lo = _mm256_permutevar8x32_ps(table_lo, idx);  // uses bits 0-2
    const __m256 hi = _mm256_permutevar8x32_ps(table_hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 → sign bit
  }
}

NIBBLE_TARGET_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <bool kTable, int NB>
NIBBLE_TARGET_AVX2 inline void exact_row(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                         std::size_t r, std::size_t b0) {
  const std::size_t G = W.groups_per_row(), rows = W.rows(), nb = W.block_count();
  const __m256 table_lo = _mm256_loadu_ps(W.base_values().data());
  const __m256 table_hi = _mm256_loadu_ps(W.base_values().data() + 8);
  const std::size_t t = r / kTileRows, ti = r % kTileRows;
  __m256 y[NB];
  float correction[NB];
  for (int j = 0; j < NB; ++j) {
    y[j] = _mm256_setzero_ps();
    correction[j] = 0.0f;
  }
  for (std::size_t g = 0; g < G; ++g) {
    __m256 a0[NB], a1[NB];
    for (int j = 0; j < NB; ++j) a0[j] = a1[j] = _mm256_setzero_ps();
    for (std::size_t blk = W.first_block(g); blk < W.first_block(g + 1); ++blk) {
      const __m256i nib = load_nibbles(W, t, ti, W.blocks()[blk]);
      const __m128i even = _mm256_castsi256_si128(nib), odd = _mm256_extracti128_si256(nib, 1);
      const __m256 v0 = decode8<kTable>(even, table_lo, table_hi);
      const __m256 v1 = decode8<kTable>(_mm_srli_si128(even, 8), table_lo, table_hi);
      const __m256 v2 = decode8<kTable>(odd, table_lo, table_hi);
      const __m256 v3 = decode8<kTable>(_mm_srli_si128(odd, 8), table_lo, table_hi);
      for (int j = 0; j < NB; ++j) {
        const float* x = p.x.data() + ((b0 + static_cast<std::size_t>(j)) * nb + blk) * kActivationBlock;
        a0[j] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x), a0[j]);
        a1[j] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(x + 8), a1[j]);
        a0[j] = _mm256_fmadd_ps(v2, _mm256_loadu_ps(x + 16), a0[j]);
        a1[j] = _mm256_fmadd_ps(v3, _mm256_loadu_ps(x + 24), a1[j]);
      }
    }
    const float s = scale_at(W, r, g), off = W.offset(r * G + g);
    for (int j = 0; j < NB; ++j) {
      y[j] = _mm256_fmadd_ps(_mm256_add_ps(a0[j], a1[j]), _mm256_set1_ps(s), y[j]);
      if (off != 0.0f) correction[j] += s * off * p.group_sum[(b0 + static_cast<std::size_t>(j)) * G + g];
    }
  }
  for (int j = 0; j < NB; ++j) Y[(b0 + static_cast<std::size_t>(j)) * rows + r] = hsum(y[j]) - correction[j];
}

template <bool kTable>
NIBBLE_TARGET_AVX2 inline void exact_rows(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                          std::size_t r0, std::size_t r1) {
  for (std::size_t r = r0; r < r1; ++r) {
    std::size_t b = 0;
    for (; b + 4 <= p.batch; b += 4) exact_row<kTable, 4>(W, p, Y, r, b);
    for (; b + 2 <= p.batch; b += 2) exact_row<kTable, 2>(W, p, Y, r, b);
    for (; b < p.batch; ++b) exact_row<kTable, 1>(W, p, Y, r, b);
  }
}

NIBBLE_TARGET_AVX2 inline void gemm_exact(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                          std::size_t r0, std::size_t r1) {
  if (W.table_codebook()) exact_rows<true>(W, p, Y, r0, r1);
  else exact_rows<false>(W, p, Y, r0, r1);
}

}  // namespace nibble::detail::avx2
