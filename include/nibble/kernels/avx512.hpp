// AVX-512 kernels (F + BW + VL; VNNI's vpdpbusd where the CPU has it), x86-64,
// GCC/Clang. Like avx2.hpp, every function carries its target attribute, so no
// -mavx512* flag is needed; only called after cpu.hpp found the features.
//
// fast:  the AVX2 path's tile layout and float steps, with four rows' worth of code
//        bytes per instruction. In a pair step (two full blocks A, B that start a
//        32-byte chunk) one 64-byte load takes rows 2k and 2k+1 of the tile (32 bytes
//        each; in each, block A's 16 bytes then B's), so four loads cover the 8 rows.
//        The activations of A and B are repeated in both 256-bit halves. Integer dot
//        products are 4 bytes per int32 lane:
//          VNNI:    vpdpbusd(u8 code, s8 q) straight into 32-bit sums. Table codebooks
//                   look up w + 128 (unsigned) and subtract 128·Σq of the block after.
//          no VNNI: maddubs + madd(1), and for table codebooks |w| with q negated
//                   where w < 0 (AVX-512 has no vpsignb).
//        Each integer sum is exact, and the float steps then run one row per lane in the
//        scalar reference's order, so results equal it bit for bit. Blocks that cannot
//        be paired (short blocks, group sizes that are not a multiple of 64) take the
//        AVX2 single-block step, and the per-tile scale decoding is the AVX2 one.
// exact: one row at a time, 16 weights per vector: nibbles widen to int32 and one
//        vpermps picks each float from the 16 base values (for int4/uint4 they are
//        0..15), then FMA with x.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "activation.hpp"
#include "avx2.hpp"
#include "packed_matrix.hpp"
#include "unroll.hpp"

// The VNNI and VBMI instructions are only emitted where the code asks for them
// (kVnni = true, kVbmi = true); the kVnni = false kernels are tested on a CPU model
// without VNNI (scripts/bochs), the kVbmi = false ones by calling them directly.
#define NIBBLE_TARGET_AVX512 \
  __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")))

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), which -Wmaybe-uninitialized
// and -Wuninitialized report once they are inlined (GCC bug 105593); the values are never read.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace nibble::detail::avx512 {

// 64 code bytes made ready for the dot product: u is the unsigned operand, and for
// table codebooks without VNNI, neg marks the bytes whose weight is negative.
struct Codes {
  __m512i u;
  __mmask64 neg;
};

// table: for kVnni, the 16 values w + 128 (as bytes); otherwise the 16 int8 values w.
template <bool kTable, bool kVnni>
NIBBLE_TARGET_AVX512 inline Codes make_codes(__m512i nibbles, __m512i table) {
  if constexpr (!kTable) {
    return {nibbles, 0};
  } else {
    const __m512i w = _mm512_shuffle_epi8(table, nibbles);
    if constexpr (kVnni) return {w, 0};
    else return {_mm512_abs_epi8(w), _mm512_movepi8_mask(w)};
  }
}

// acc + Σ of each int32 lane's four products u·q. Without VNNI, maddubs pairs stay
// within int16: 2·15·127 for int4/uint4 codes, 2·127·127 for |w| of a table.
template <bool kTable, bool kVnni>
NIBBLE_TARGET_AVX512 inline __m512i dot(__m512i acc, const Codes& c, __m512i q) {
  if constexpr (kVnni) {
    return _mm512_dpbusd_epi32(acc, c.u, q);
  } else {
    if constexpr (kTable) q = _mm512_mask_sub_epi8(q, c.neg, _mm512_setzero_si512(), q);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(c.u, q), _mm512_set1_epi16(1)));
  }
}

// acc[k] holds rows 2k, 2k+1 of the tile; its 128-bit lane L the partial sums of
// row 2k + L/2, block L%2 (4 int32 each). Returns the 16 sums as [block A rows 0..7 |
// block B rows 0..7].
NIBBLE_TARGET_AVX512 inline __m512i pair_sums(const __m512i* acc) {
  const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[0], acc[1]), _mm512_unpackhi_epi32(acc[0], acc[1]));
  const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(acc[2], acc[3]), _mm512_unpackhi_epi32(acc[2], acc[3]));
  // Element 4L + k: the full sum of acc[k]'s lane L.
  const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
  // Row r, block b sits at 4·(2·(r % 2) + b) + r / 2.
  const __m512i order = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
  return _mm512_permutexvar_epi32(order, s);
}

// The lookup table make_codes expects, in all four 128-bit lanes.
template <bool kVnni>
NIBBLE_TARGET_AVX512 inline __m512i codes_table(const PackedMatrix& W) {
  alignas(16) std::int8_t table_bytes[16];
  for (int i = 0; i < 16; ++i)  // + 128 wraps to the unsigned byte w + 128
    table_bytes[i] = static_cast<std::int8_t>(W.int8_base_values()[i] + (kVnni ? 128 : 0));
  return _mm512_broadcast_i32x4(_mm_load_si128(reinterpret_cast<const __m128i*>(table_bytes)));
}

// One pair step (blocks blk = A and blk + 1 = B of tile t) for batch rows [b0, b0 + NB),
// finished as avx2::finish_pair<kTwoGroups> does: within one group, or for two
// one-block groups (group size 32).
template <bool kTable, bool kVnni, int NB, bool kTwoGroups>
NIBBLE_TARGET_AVX512 __attribute__((always_inline)) inline void pair_step(const PackedMatrix& W,
                                                                          const PreparedActivations& p, std::size_t t,
                                                                          std::size_t nb, std::size_t blk,
                                                                          __m512i table, __m256* a,
                                                                          __m256* y, __m256 neg_off, const float* sv,
                                                                          const float* nov, std::size_t g,
                                                                          std::size_t b0) {
  const std::uint8_t* tile_chunk = avx2::pair_chunk(W, t, W.blocks()[blk]);  // row i at + 32·i
  Codes hi[4], lo[4];  // even / odd elements of rows 2k, 2k+1
  NIBBLE_UNROLL
  for (int k = 0; k < 4; ++k) {
    const __m512i v = _mm512_loadu_si512(tile_chunk + 64 * k);
    hi[k] = make_codes<kTable, kVnni>(_mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0F)), table);
    lo[k] = make_codes<kTable, kVnni>(_mm512_and_si512(v, _mm512_set1_epi8(0x0F)), table);
  }
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) {
    const std::size_t slot = (b0 + static_cast<std::size_t>(j)) * nb + blk;
    const std::int8_t* qa = p.q.data() + slot * kActivationBlock;
    const __m512i qe = _mm512_broadcast_i64x4(avx2::pair_activations(qa, 0));
    const __m512i qo = _mm512_broadcast_i64x4(avx2::pair_activations(qa, 16));
    __m512i acc[4];
    NIBBLE_UNROLL
    for (int k = 0; k < 4; ++k)
      acc[k] = dot<kTable, kVnni>(dot<kTable, kVnni>(_mm512_setzero_si512(), hi[k], qe), lo[k], qo);
    __m512i sums = pair_sums(acc);
    if constexpr (kTable && kVnni) {  // remove the + 128 bias: 128·Σq per block
      const __m512i qsum = _mm512_inserti64x4(_mm512_set1_epi32(p.qsum[slot]), _mm256_set1_epi32(p.qsum[slot + 1]), 1);
      sums = _mm512_sub_epi32(sums, _mm512_slli_epi32(qsum, 7));
    }
    const __m512 f = _mm512_cvtepi32_ps(sums);
    avx2::finish_pair<kTwoGroups>(_mm512_castps512_ps256(f),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)), a[j], y[j],
                                  neg_off, sv, nov, g, p, slot);
  }
}

// Rows of tile t; batch rows [b0, b0 + NB). sv / nov as in avx2::fast_tile.
template <bool kTable, bool kVnni, int NB>
NIBBLE_TARGET_AVX512 inline void fast_tile(const PackedMatrix& W, const PreparedActivations& p, std::size_t t,
                                           const float* sv, const float* nov, float* out, std::size_t b0) {
  const std::size_t G = W.groups_per_row(), nb = W.block_count();
  const __m512i table = codes_table<kVnni>(W);
  const __m256i table_avx2 =  // the AVX2 single-block step wants the signed values
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
    for (; avx2::is_pair_step(spans, blk, blk_end); blk += 2)
      pair_step<kTable, kVnni, NB, false>(W, p, t, nb, blk, table, a, y, neg_off, sv, nov, g, b0);
    for (; blk < blk_end; ++blk) avx2::single_block<kTable, NB>(W, p, t, blk, table_avx2, neg_off, a, b0);
    const __m256 s = _mm256_loadu_ps(sv + 8 * g);
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) y[j] = _mm256_fmadd_ps(s, a[j], y[j]);
  }
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) _mm256_storeu_ps(out + 8 * j, y[j]);
}

// Group size 32: one pair step per two full groups, then the groups left (as avx2::fast_tile_g32).
template <bool kTable, bool kVnni, int NB>
NIBBLE_TARGET_AVX512 inline void fast_tile_g32(const PackedMatrix& W, const PreparedActivations& p, std::size_t t,
                                               const float* sv, const float* nov, float* out, std::size_t b0) {
  const std::size_t G = W.groups_per_row(), pairs = avx2::group_pairs(W), nb = W.block_count();
  const __m512i table = codes_table<kVnni>(W);
  __m256 y[NB];
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) y[j] = _mm256_setzero_ps();
  for (std::size_t g = 0; g < 2 * pairs; g += 2)
    pair_step<kTable, kVnni, NB, true>(W, p, t, nb, W.first_block(g), table, y, y, _mm256_setzero_ps(), sv, nov, g, b0);
  const __m256i table_avx2 =
      _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(W.int8_base_values().data())));
  for (std::size_t g = 2 * pairs; g < G; ++g) avx2::last_group<kTable, NB>(W, p, t, g, table_avx2, sv, nov, y, b0);
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) _mm256_storeu_ps(out + 8 * j, y[j]);
}

template <bool kTable, bool kVnni>
NIBBLE_TARGET_AVX512 inline void fast_rows(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                           std::size_t r0, std::size_t r1) {
  if (avx2::group_pairs(W) > 0)
    avx2::fast_rows<fast_tile_g32<kTable, kVnni, 1>, fast_tile_g32<kTable, kVnni, 2>, fast_tile_g32<kTable, kVnni, 4>>(
        W, p, Y, r0, r1);
  else
    avx2::fast_rows<fast_tile<kTable, kVnni, 1>, fast_tile<kTable, kVnni, 2>, fast_tile<kTable, kVnni, 4>>(W, p, Y, r0,
                                                                                                       r1);
}

// vnni: whether to use vpdpbusd (cpu.hpp's avx512vnni). Row tiles (CodeLayout::row_tiles).
NIBBLE_TARGET_AVX512 inline void gemm_fast(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                           std::size_t r0, std::size_t r1, bool vnni) {
  if (W.table_codebook()) {
    if (vnni) fast_rows<true, true>(W, p, Y, r0, r1);
    else fast_rows<true, false>(W, p, Y, r0, r1);
  } else {
    if (vnni) fast_rows<false, true>(W, p, Y, r0, r1);
    else fast_rows<false, false>(W, p, Y, r0, r1);
  }
}

// ---- Row panels (CodeLayout::row_panels), VNNI: 16 rows, one row per int32 lane ----
//
// Block blk of panel pn is 4 vectors of 64 bytes (PackedMatrix::panel_dword): vector m
// holds code bytes 4m .. 4m + 3 of the block for each of the 16 rows. Their high
// nibbles are even elements, which meet dword m of the block's de-interleaved
// activations; their low nibbles meet dword 4 + m. vpdpbusd with that dword broadcast
// to all lanes adds 4 products to each row's sum: no horizontal sums, no shuffles, and
// the float steps run 16 rows per vector in the scalar reference's order, so results
// equal it bit for bit (as everywhere in fast mode), at every batch size.
// int4/uint4 codes are multiplied where they lie: v & 0xF0 is 16·code, and the even
// sums are shifted right by 4 after (exact: they are multiples of 16 far below 2^31).
// Table codebooks look up w + 128 (unsigned) and subtract 128·Σq of the block.

// 8 floats at lo, then 8 at hi.
NIBBLE_TARGET_AVX512 inline __m512 join8(const float* lo, const float* hi) {
  const __m512d v = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(lo)));
  return _mm512_castpd_ps(_mm512_insertf64x4(v, _mm256_castps_pd(_mm256_loadu_ps(hi)), 1));
}

// A table codebook's 16 values w + 128 (unsigned bytes) as lookup tables over a code
// byte v. by_low: w[v & 15] for vpshufb (all four 128-bit lanes) and for vpermb, which
// reads bits 0..5 of v (the table repeats every 16 bytes). by_high: w[(i >> 2) & 15] at
// byte i, for vpermb on v >> 2 (bits 2..5 are then the high nibble; 0..1 do not matter).
struct PanelTable {
  __m512i by_low, by_high;
};

NIBBLE_TARGET_AVX512 inline PanelTable panel_table(const PackedMatrix& W) {
  alignas(64) std::uint8_t high[64];
  for (int i = 0; i < 64; ++i) high[i] = static_cast<std::uint8_t>(W.int8_base_values()[(i >> 2) & 15] + 128);
  return {codes_table<true>(W), _mm512_load_si512(high)};
}

// The codes of one block of panel pn, ready for vpdpbusd: even[m] / odd[m] meet
// activation dwords m / 4 + m. A block that does not start on a dword, or would read
// past the stored dwords (ragged group sizes), is gathered byte by byte; bytes past a
// short block meet zero activations. Table codebooks: kVbmi looks the values up with
// vpermb (AVX512_VBMI), 3 instructions per 64 code bytes where vpshufb needs a mask per
// nibble, 5 (measured 11% faster for NF4 on AMD EPYC Zen 4, 2048×1024, one thread).
template <bool kTable, bool kVbmi>
NIBBLE_TARGET_AVX512 __attribute__((always_inline)) inline void panel_block_codes(const PackedMatrix& W,
                                                                                   std::size_t pn,
                                                                                   const BlockSpan& span,
                                                                                   const PanelTable& table,
                                                                                   __m512i* even,
                                                                                   __m512i* odd) {
  const std::size_t k = span.byte_begin;
  __m512i v[4];
  if (k % 4 == 0 && k / 4 + 4 <= W.panel_dwords()) {
    const std::uint8_t* src = W.panel_dword(pn, k / 4);
    // The panel is one sequential stream; into L2 as avx2::pair_chunk explains.
    const std::uintptr_t ahead = reinterpret_cast<std::uintptr_t>(src) + avx2::kPrefetchBytes;
    NIBBLE_UNROLL
    for (std::size_t m = 0; m < 4; ++m) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + 64 * m), _MM_HINT_T1);
      v[m] = _mm512_loadu_si512(src + 64 * m);
    }
  } else {
    alignas(64) std::uint8_t tmp[4 * 64];
    for (std::size_t i = 0; i < kPanelRows; ++i)
      for (std::size_t j = 0; j < 16; ++j) tmp[(j / 4) * 64 + 4 * i + j % 4] = W.code_byte(pn * kPanelRows + i, k + j);
    NIBBLE_UNROLL
    for (std::size_t m = 0; m < 4; ++m) v[m] = _mm512_load_si512(tmp + 64 * m);
  }
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  NIBBLE_UNROLL
  for (std::size_t m = 0; m < 4; ++m) {
    if constexpr (kTable && kVbmi) {
      even[m] = _mm512_permutexvar_epi8(_mm512_srli_epi16(v[m], 2), table.by_high);
      odd[m] = _mm512_permutexvar_epi8(v[m], table.by_low);
    } else if constexpr (kTable) {
      even[m] = _mm512_shuffle_epi8(table.by_low, _mm512_and_si512(_mm512_srli_epi16(v[m], 4), low4));
      odd[m] = _mm512_shuffle_epi8(table.by_low, _mm512_and_si512(v[m], low4));
    } else {
      even[m] = _mm512_andnot_si512(low4, v[m]);  // 16·code
      odd[m] = _mm512_and_si512(v[m], low4);
    }
  }
}

// Groups ahead at which panel_rows prefetches fp16 scales: avx2::kPrefetchBytes of codes
// at group size 32 (256 code bytes per 16-row block).
inline constexpr std::size_t kScalePrefetchGroups = avx2::kPrefetchBytes / 256;

// From this batch on, each panel's codes are split once per call into per-thread
// scratch (8 vectors per block, even codes as they are, not times 16), and the batch
// rows read them from there: no splitting and no shift per batch row. Measured on
// 4096² g32 at batch 512 (AMD EPYC Zen 4): splitting per 4 batch rows was 12–18% slower.
inline constexpr std::size_t kSplitMinBatch = 16;
inline constexpr std::size_t kSplitBlockBytes = 8 * 64;

template <bool kTable, bool kVbmi>
NIBBLE_TARGET_AVX512 inline void split_panel(const PackedMatrix& W, std::size_t pn, const PanelTable& table,
                                             std::uint8_t* out) {
  for (std::size_t blk = 0; blk < W.block_count(); ++blk) {
    __m512i v[8];
    panel_block_codes<kTable, kVbmi>(W, pn, W.blocks()[blk], table, v, v + 4);
    NIBBLE_UNROLL
    for (std::size_t m = 0; m < 4; ++m) {
      if constexpr (!kTable) v[m] = _mm512_srli_epi16(v[m], 4);  // 16·code → code (the low nibbles are 0)
      _mm512_storeu_si512(out + blk * kSplitBlockBytes + 64 * m, v[m]);
      _mm512_storeu_si512(out + blk * kSplitBlockBytes + 64 * (m + 4), v[m + 4]);
    }
  }
}

// t_b = fma(−offset, Σq, i_b) of one block of activation slot `slot` for the panel's
// 16 rows, as accumulate_block.
// kEvenTimes16: the even codes are panel_block_codes' 16·code (else split_panel's code).
template <bool kTable, bool kEvenTimes16>
NIBBLE_TARGET_AVX512 __attribute__((always_inline)) inline __m512 panel_block_sum(const __m512i* even,
                                                                                   const __m512i* odd,
                                                                                   const PreparedActivations& p,
                                                                                   std::size_t slot, __m512 neg_off) {
  const std::int32_t* qd = reinterpret_cast<const std::int32_t*>(p.q.data()) + slot * (kActivationBlock / 4);
  // Two chains (even and odd elements) so consecutive vpdpbusd do not wait on each other.
  __m512i e = _mm512_dpbusd_epi32(_mm512_setzero_si512(), even[0], _mm512_set1_epi32(qd[0]));
  __m512i o = _mm512_dpbusd_epi32(_mm512_setzero_si512(), odd[0], _mm512_set1_epi32(qd[4]));
  NIBBLE_UNROLL
  for (int m = 1; m < 4; ++m) {
    e = _mm512_dpbusd_epi32(e, even[m], _mm512_set1_epi32(qd[m]));
    o = _mm512_dpbusd_epi32(o, odd[m], _mm512_set1_epi32(qd[m + 4]));
  }
  __m512i isum;
  if constexpr (kTable) isum = _mm512_sub_epi32(_mm512_add_epi32(e, o), _mm512_set1_epi32(p.qsum[slot] * 128));
  else if constexpr (kEvenTimes16) isum = _mm512_add_epi32(_mm512_srai_epi32(e, 4), o);
  else isum = _mm512_add_epi32(e, o);
  return _mm512_fmadd_ps(neg_off, _mm512_set1_ps(p.qsum_f[slot]), _mm512_cvtepi32_ps(isum));
}

// Batch rows [b0, b0 + NB) of panel pn: Y rows r .. r + nr − 1. Per group g the 16 rows'
// scales come from the fp16 tile-ordered copy s16 (kF16Scales) or from sv, times k
// (fast mode's factor where they are the stored scales, 1 where sv has it already), and
// their −offsets from the tile-ordered uint4 zeros z8 or fp16 zeros o16 where given,
// else from nov, at 16g + lane. kSplit: the codes come from split_panel's scratch
// `split`. kOneBlockGroups: every group is one block (group size 32), so the group
// loop is the block loop.
template <bool kTable, bool kVbmi, bool kOneBlockGroups, bool kF16Scales, bool kSplit, int NB>
NIBBLE_TARGET_AVX512 inline void panel_rows(const PackedMatrix& W, const PreparedActivations& p, std::size_t pn,
                                            const std::uint16_t* s16, const float* sv, float k,
                                            const std::uint8_t* z8, const std::uint16_t* o16, const float* nov,
                                            const std::uint8_t* split, const PanelTable& table, float* Y,
                                            std::size_t r, std::size_t nr, std::size_t b0) {
  const std::size_t G = W.groups_per_row(), nb = W.block_count(), rows = W.rows();
  const BlockSpan* spans = W.blocks();
  __m512 y[NB];
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) y[j] = _mm512_setzero_ps();
  for (std::size_t g = 0; g < G; ++g) {
    // The scales are a second stream next to the codes (32 bytes per group and panel):
    // into L2 as far ahead as panel_block_codes fetches the codes at one block per group.
    if constexpr (kF16Scales)
      _mm_prefetch(reinterpret_cast<const char*>(s16 + kPanelRows * (g + kScalePrefetchGroups)), _MM_HINT_T1);
    __m512 neg_off;
    if (z8 != nullptr)  // −z, also −0 for 0 as in the scalar code
      neg_off = _mm512_castsi512_ps(_mm512_xor_si512(
          _mm512_castps_si512(_mm512_cvtepi32_ps(
              _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(z8 + kPanelRows * g))))),
          _mm512_set1_epi32(static_cast<int>(0x80000000u))));
    else if (o16 != nullptr)
      neg_off = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(o16 + kPanelRows * g)));
    else
      neg_off = _mm512_loadu_ps(nov + kPanelRows * g);
    __m512 a[NB];
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) a[j] = _mm512_setzero_ps();
    const std::size_t blk_begin = kOneBlockGroups ? g : W.first_block(g);
    const std::size_t blk_end = kOneBlockGroups ? g + 1 : W.first_block(g + 1);
    for (std::size_t blk = blk_begin; blk < blk_end; ++blk) {
      __m512i even[4], odd[4];
      if constexpr (kSplit) {
        NIBBLE_UNROLL
        for (std::size_t m = 0; m < 4; ++m) {
          even[m] = _mm512_loadu_si512(split + blk * kSplitBlockBytes + 64 * m);
          odd[m] = _mm512_loadu_si512(split + blk * kSplitBlockBytes + 64 * (m + 4));
        }
      } else {
        panel_block_codes<kTable, kVbmi>(W, pn, spans[blk], table, even, odd);
      }
      NIBBLE_UNROLL
      for (int j = 0; j < NB; ++j) {
        const std::size_t slot = (b0 + static_cast<std::size_t>(j)) * nb + blk;
        a[j] = _mm512_fmadd_ps(_mm512_set1_ps(p.d[slot]),
                               panel_block_sum<kTable, !kSplit>(even, odd, p, slot, neg_off), a[j]);
      }
    }
    const __m512 s = _mm512_mul_ps(
        kF16Scales ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s16 + kPanelRows * g)))
                   : _mm512_loadu_ps(sv + kPanelRows * g),
        _mm512_set1_ps(k));
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) y[j] = _mm512_fmadd_ps(s, a[j], y[j]);
  }
  const __mmask16 keep = static_cast<__mmask16>((1u << nr) - 1);
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) _mm512_mask_storeu_ps(Y + (b0 + static_cast<std::size_t>(j)) * rows + r, keep, y[j]);
}

// Rows [r0, r1) (r0 a multiple of 16) for the whole batch, panel by panel.
template <bool kTable, bool kVbmi, bool kOneBlockGroups, bool kF16Scales>
NIBBLE_TARGET_AVX512 inline void panel_gemm_rows(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                                 std::size_t r0, std::size_t r1) {
  const std::size_t G = W.groups_per_row();
  const PanelTable table = panel_table(W);
  // Per-thread scratch kept across calls: the panel's scales and −offsets, and
  // tile_scales' output for its two 8-row halves.
  thread_local std::vector<float> sv, nov, tile_sv[2], tile_nov[2];
  thread_local std::vector<std::uint8_t> split;
  const bool split_codes = p.batch >= kSplitMinBatch;
  if (split_codes) split.resize(W.block_count() * kSplitBlockBytes);
  sv.resize(kPanelRows * G);
  nov.resize(kPanelRows * G);
  for (std::size_t half = 0; half < 2; ++half) {
    tile_sv[half].resize(kTileRows * G);
    tile_nov[half].resize(kTileRows * G);
  }
  // Scales and zeros are read in place from the tile-ordered copies where there are
  // some (f16 / f32 scales; every zero format); the rest (bf16 / dq8 scales) is decoded
  // per panel, and the offsets that do not vary by row (all but uint4_asym) once per
  // call: by tile_scales' first_tile where scales are decoded anyway, else as one row's
  // offsets given to all 16 lanes (a decode-sized call spent more on tile_scales than
  // on its first panel's products).
  for (std::size_t r = r0; r < r1; r += kPanelRows) {
    const std::size_t nr = std::min(kPanelRows, r1 - r), pn = r / kPanelRows;
    const float* o32 = W.tile_offsets32(pn * 2);
    const float* s32 = W.tile_scales32(pn * 2);
    const std::uint8_t* z8 = W.tile_zeros8(pn * 2);
    const std::uint16_t* o16 = W.tile_offsets16(pn * 2);
    const bool scales_in_place = kF16Scales || s32 != nullptr;
    if (scales_in_place && r == r0 && o32 == nullptr && o16 == nullptr && z8 == nullptr) {
      float* row_nov = tile_nov[0].data();  // scratch for one row's G offsets
      W.decode_negated_offsets(0, G, row_nov, 1);
      for (std::size_t g = G; g-- > 0;) _mm512_storeu_ps(nov.data() + kPanelRows * g, _mm512_set1_ps(row_nov[g]));
    } else if (!scales_in_place) {
      for (std::size_t half = 0; half < (nr > kTileRows ? 2u : 1u); ++half) {
        const std::size_t hr = r + half * kTileRows;
        avx2::tile_scales(W, hr, std::min(kTileRows, r1 - hr), r == r0, tile_sv[half].data(), tile_nov[half].data());
      }
      // Lanes 8..15 of a panel with 8 rows or fewer are never stored, whatever they hold.
      for (std::size_t g = 0; g < G; ++g) {
        _mm512_storeu_ps(sv.data() + kPanelRows * g, join8(tile_sv[0].data() + 8 * g, tile_sv[1].data() + 8 * g));
        _mm512_storeu_ps(nov.data() + kPanelRows * g, join8(tile_nov[0].data() + 8 * g, tile_nov[1].data() + 8 * g));
      }
    }
    const std::uint16_t* s16 = W.tile_scales16(pn * 2);
    const float* svp = s32 != nullptr ? s32 : sv.data();
    const float k = scales_in_place ? W.int8_factor() : 1.0f;
    const float* nv = o32 != nullptr ? o32 : nov.data();
    std::size_t b = 0;
    if (split_codes) {
      const std::uint8_t* codes = split.data();
      split_panel<kTable, kVbmi>(W, pn, table, split.data());
      for (; b + 4 <= p.batch; b += 4)
        panel_rows<kTable, kVbmi, kOneBlockGroups, kF16Scales, true, 4>(W, p, pn, s16, svp, k, z8, o16, nv, codes,
                                                                        table, Y, r, nr, b);
      for (; b < p.batch; ++b)
        panel_rows<kTable, kVbmi, kOneBlockGroups, kF16Scales, true, 1>(W, p, pn, s16, svp, k, z8, o16, nv, codes,
                                                                        table, Y, r, nr, b);
    } else {
      for (; b + 4 <= p.batch; b += 4)
        panel_rows<kTable, kVbmi, kOneBlockGroups, kF16Scales, false, 4>(W, p, pn, s16, svp, k, z8, o16, nv, nullptr,
                                                                         table, Y, r, nr, b);
      for (; b < p.batch; ++b)
        panel_rows<kTable, kVbmi, kOneBlockGroups, kF16Scales, false, 1>(W, p, pn, s16, svp, k, z8, o16, nv, nullptr,
                                                                         table, Y, r, nr, b);
    }
  }
}

template <bool kTable, bool kVbmi>
NIBBLE_TARGET_AVX512 inline void panel_gemm_for(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                                std::size_t r0, std::size_t r1) {
  const bool one_block_groups = W.block_count() == W.groups_per_row();
  const bool f16 = W.tile_scales16(0) != nullptr;
  if (one_block_groups && f16) panel_gemm_rows<kTable, kVbmi, true, true>(W, p, Y, r0, r1);
  else if (one_block_groups) panel_gemm_rows<kTable, kVbmi, true, false>(W, p, Y, r0, r1);
  else if (f16) panel_gemm_rows<kTable, kVbmi, false, true>(W, p, Y, r0, r1);
  else panel_gemm_rows<kTable, kVbmi, false, false>(W, p, Y, r0, r1);
}

// Fast mode on a row_panels matrix (VNNI only: without it the unsigned w + 128 of a
// table would overflow maddubs' 16-bit pairs). vbmi: whether the CPU has AVX512_VBMI
// (cpu.hpp's avx512vbmi), for the table codebooks' lookups.
NIBBLE_TARGET_AVX512 inline void panel_gemm(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                            std::size_t r0, std::size_t r1, bool vbmi) {
  if (!W.table_codebook()) panel_gemm_for<false, false>(W, p, Y, r0, r1);
  else if (vbmi) panel_gemm_for<true, true>(W, p, Y, r0, r1);
  else panel_gemm_for<true, false>(W, p, Y, r0, r1);
}

template <int NB>
NIBBLE_TARGET_AVX512 inline void exact_row(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                           std::size_t r, std::size_t b0) {
  const std::size_t G = W.groups_per_row(), rows = W.rows(), nb = W.block_count();
  const __m512 values = _mm512_loadu_ps(W.base_values().data());
  const std::size_t t = r / kTileRows, ti = r % kTileRows;
  __m512 y[NB];
  float correction[NB];
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j) {
    y[j] = _mm512_setzero_ps();
    correction[j] = 0.0f;
  }
  for (std::size_t g = 0; g < G; ++g) {
    __m512 a0[NB], a1[NB];  // even / odd elements
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) a0[j] = a1[j] = _mm512_setzero_ps();
    for (std::size_t blk = W.first_block(g); blk < W.first_block(g + 1); ++blk) {
      const __m128i bytes = avx2::load_code_bytes(W, t, ti, W.blocks()[blk]);
      const __m128i even = _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
      const __m128i odd = _mm_and_si128(bytes, _mm_set1_epi8(0x0F));
      const __m512 ve = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(even), values);
      const __m512 vo = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(odd), values);
      NIBBLE_UNROLL
      for (int j = 0; j < NB; ++j) {
        const float* x = p.x.data() + ((b0 + static_cast<std::size_t>(j)) * nb + blk) * kActivationBlock;
        a0[j] = _mm512_fmadd_ps(ve, _mm512_loadu_ps(x), a0[j]);
        a1[j] = _mm512_fmadd_ps(vo, _mm512_loadu_ps(x + 16), a1[j]);
      }
    }
    const float s = avx2::scale_at(W, r, g), off = W.offset(r * G + g);
    NIBBLE_UNROLL
    for (int j = 0; j < NB; ++j) {
      y[j] = _mm512_fmadd_ps(_mm512_add_ps(a0[j], a1[j]), _mm512_set1_ps(s), y[j]);
      if (off != 0.0f) correction[j] += s * off * p.group_sum[(b0 + static_cast<std::size_t>(j)) * G + g];
    }
  }
  NIBBLE_UNROLL
  for (int j = 0; j < NB; ++j)
    Y[(b0 + static_cast<std::size_t>(j)) * rows + r] = _mm512_reduce_add_ps(y[j]) - correction[j];
}

NIBBLE_TARGET_AVX512 inline void gemm_exact(const PackedMatrix& W, const PreparedActivations& p, float* Y,
                                            std::size_t r0, std::size_t r1) {
  for (std::size_t r = r0; r < r1; ++r) {
    std::size_t b = 0;
    for (; b + 4 <= p.batch; b += 4) exact_row<4>(W, p, Y, r, b);
    for (; b + 2 <= p.batch; b += 2) exact_row<2>(W, p, Y, r, b);
    for (; b < p.batch; ++b) exact_row<1>(W, p, Y, r, b);
  }
}

}  // namespace nibble::detail::avx512

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
