// ggml tensor types as stored in GGUF files, and their decoding to float32.
//
// Every quantized type is a sequence of fixed-size blocks laid along ne[0] (the
// contiguous dimension); a block never straddles two rows because ne[0] must be a
// multiple of the block size. Multi-byte fields are little-endian; "f16" is IEEE
// binary16. Decoders produce exactly the float32 values gguf-py's numpy dequantize
// produces: every product is rounded to float32 before the next operation, in the same
// order (e.g. Q4_K is (d·sc)·q − (dmin·m), never a fused multiply-add).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "../format/codebook.hpp"
#include "binary.hpp"

namespace nibble::io {

enum class GgmlType : std::uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q4_K = 12, Q5_K = 13, Q6_K = 14, IQ4_NL = 20, BF16 = 30
};

// Block size (elements) and bytes per block of every ggml type a GGUF file may hold, so a
// reader can lay out files containing types nibble does not decode. {0, 0} = unknown.
struct GgmlTypeSize {
  std::uint32_t block, bytes;
};
inline GgmlTypeSize ggml_type_size(std::uint32_t type) {
  static const GgmlTypeSize table[] = {
      {1, 4},     {1, 2},     {32, 18},   {32, 20},   {0, 0},     {0, 0},     {32, 22},   {32, 24},
      {32, 34},   {32, 36},   {256, 84},  {256, 110}, {256, 144}, {256, 176}, {256, 210}, {256, 292},
      {256, 66},  {256, 74},  {256, 98},  {256, 50},  {32, 18},   {256, 110}, {256, 82},  {256, 136},
      {1, 1},     {1, 2},     {1, 4},     {1, 8},     {1, 8},     {256, 56},  {1, 2}};
  return type < sizeof(table) / sizeof(table[0]) ? table[type] : GgmlTypeSize{0, 0};
}

// Name of a ggml type id as llama.cpp spells it (ids 4 and 5 are retired; "id N" for
// those and for ids past the table).
inline std::string ggml_type_name(std::uint32_t type) {
  static const char* const names[] = {"F32",     "F16",   "Q4_0",    "Q4_1",   "id 4",   "id 5",   "Q5_0",  "Q5_1",
                                      "Q8_0",    "Q8_1",  "Q2_K",    "Q3_K",   "Q4_K",   "Q5_K",   "Q6_K",  "Q8_K",
                                      "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",  "IQ2_S", "IQ4_XS",
                                      "I8",      "I16",   "I32",     "I64",    "F64",    "IQ1_M",  "BF16"};
  return type < sizeof(names) / sizeof(names[0]) ? names[type] : "id " + std::to_string(type);
}

// Whether dequantize_ggml decodes this type.
inline bool ggml_type_decodable(std::uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q8_0:
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1:
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K: case GgmlType::IQ4_NL:
      return true;
  }
  return false;
}

inline constexpr const char* kGgmlDecodableTypes =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, IQ4_NL";

namespace detail_ggml {

// a·b rounded once to float32. The double product of two floats is exact, so this is the
// correctly rounded float product; going through double also keeps the compiler from
// fusing it with a following add into an FMA (which would skip this rounding).
inline float mul_f32(float a, float b) { return static_cast<float>(static_cast<double>(a) * static_cast<double>(b)); }

inline float f16_at(const std::uint8_t* p) { return half_to_float(load_u16(p)); }

// The 4-bit nibble layout shared by Q4_0, Q4_1, Q5_0, Q5_1 and IQ4_NL: 16 bytes hold 32
// elements; element j (0..15) is the LOW nibble of byte j, element j+16 its HIGH nibble
// (the first half of the block in low nibbles, the second half in high ones).
inline void split_nibbles_32(const std::uint8_t* qs, int* q) {
  for (int j = 0; j < 16; ++j) {
    q[j] = qs[j] & 0x0F;
    q[j + 16] = qs[j] >> 4;
  }
}

// Q5_0 / Q5_1 add a fifth (top) bit per element from a 32-bit little-endian mask:
// bit j belongs to element j, for all 32 elements in order.
inline void add_fifth_bits_32(const std::uint8_t* qh, int* q) {
  std::uint32_t mask;
  std::memcpy(&mask, qh, 4);  // little-endian hosts only, as the rest of nibble's io
  for (int j = 0; j < 32; ++j) q[j] |= static_cast<int>((mask >> j) & 1u) << 4;
}

// Q4_K / Q5_K: 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min, packed in
// 12 bytes. Sub-blocks 0..3 keep theirs in the low 6 bits of bytes 0..3 (scales) and
// 4..7 (mins). Sub-blocks 4..7 take their low 4 bits from bytes 8..11 (scale in the low
// nibble, min in the high nibble) and their top 2 bits from the otherwise unused top 2
// bits of bytes 0..3 (scales) and 4..7 (mins).
inline void k_scales_mins(const std::uint8_t* s, int* sc, int* mn) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = s[j] & 63;
    mn[j] = s[j + 4] & 63;
    sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
    mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
  }
}

// Q4_K / Q5_K low 4 bits: 128 bytes, one 32-byte run per pair of sub-blocks; in run c,
// byte l holds element l of sub-block 2c in its low nibble and element l of sub-block
// 2c+1 in its high nibble.
inline void k_nibbles_256(const std::uint8_t* qs, int* q) {
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      q[64 * c + l] = qs[32 * c + l] & 0x0F;
      q[64 * c + 32 + l] = qs[32 * c + l] >> 4;
    }
}

// ---- one block of each type → float ------------------------------------------------

// Q8_0 (34 bytes / 32): f16 d, then 32 int8 codes in element order. w = d·q.
inline void decode_q8_0(const std::uint8_t* b, float* y) {
  const float d = f16_at(b);
  for (int j = 0; j < 32; ++j) y[j] = mul_f32(d, static_cast<float>(static_cast<std::int8_t>(b[2 + j])));
}

// Q4_0 (18 bytes / 32): f16 d, 16 bytes of nibbles. w = d·(q − 8).
inline void decode_q4_0(const std::uint8_t* b, float* y) {
  const float d = f16_at(b);
  int q[32];
  split_nibbles_32(b + 2, q);
  for (int j = 0; j < 32; ++j) y[j] = mul_f32(d, static_cast<float>(q[j] - 8));
}

// IQ4_NL (18 bytes / 32): as Q4_0, but the code indexes the non-uniform int8 table
// kIQ4NLValues. w = d·table[q].
inline void decode_iq4_nl(const std::uint8_t* b, float* y) {
  const float d = f16_at(b);
  int q[32];
  split_nibbles_32(b + 2, q);
  for (int j = 0; j < 32; ++j) y[j] = mul_f32(d, kIQ4NLValues[static_cast<std::size_t>(q[j])]);
}

// Q4_1 (20 bytes / 32): f16 d, f16 m, 16 bytes of nibbles. w = d·q + m, q ∈ [0, 15].
inline void decode_q4_1(const std::uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  int q[32];
  split_nibbles_32(b + 4, q);
  for (int j = 0; j < 32; ++j) y[j] = mul_f32(d, static_cast<float>(q[j])) + m;
}

// Q5_0 (22 bytes / 32): f16 d, 4 bytes of fifth bits, 16 bytes of nibbles.
// w = d·(q − 16), q ∈ [0, 31].
inline void decode_q5_0(const std::uint8_t* b, float* y) {
  const float d = f16_at(b);
  int q[32];
  split_nibbles_32(b + 6, q);
  add_fifth_bits_32(b + 2, q);
  for (int j = 0; j < 32; ++j) y[j] = mul_f32(d, static_cast<float>(q[j] - 16));
}

// Q5_1 (24 bytes / 32): f16 d, f16 m, 4 bytes of fifth bits, 16 bytes of nibbles.
// w = d·q + m, q ∈ [0, 31].
inline void decode_q5_1(const std::uint8_t* b, float* y) {
  const float d = f16_at(b), m = f16_at(b + 2);
  int q[32];
  split_nibbles_32(b + 8, q);
  add_fifth_bits_32(b + 4, q);
  for (int j = 0; j < 32; ++j) y[j] = mul_f32(d, static_cast<float>(q[j])) + m;
}

// Q4_K (144 bytes / 256): f16 d, f16 dmin, 12 bytes of packed 6-bit scales and mins
// (k_scales_mins), 128 bytes of nibbles (k_nibbles_256). In sub-block s:
// w = (d·sc[s])·q − (dmin·m[s]), q ∈ [0, 15].
inline void decode_q4_k(const std::uint8_t* b, float* y) {
  const float d = f16_at(b), dmin = f16_at(b + 2);
  int sc[8], mn[8], q[256];
  k_scales_mins(b + 4, sc, mn);
  k_nibbles_256(b + 16, q);
  for (int s = 0; s < 8; ++s) {
    const float ds = mul_f32(d, static_cast<float>(sc[s])), ms = mul_f32(dmin, static_cast<float>(mn[s]));
    for (int l = 0; l < 32; ++l) y[32 * s + l] = mul_f32(ds, static_cast<float>(q[32 * s + l])) - ms;
  }
}

// Q5_K (176 bytes / 256): f16 d, f16 dmin, 12 bytes of scales and mins as Q4_K, 32 bytes
// of fifth bits, 128 bytes of nibbles as Q4_K. The fifth bit of element l of sub-block s
// is bit s of byte l of the 32. w = (d·sc[s])·q − (dmin·m[s]), q ∈ [0, 31].
inline void decode_q5_k(const std::uint8_t* b, float* y) {
  const float d = f16_at(b), dmin = f16_at(b + 2);
  int sc[8], mn[8], q[256];
  k_scales_mins(b + 4, sc, mn);
  const std::uint8_t* qh = b + 16;
  k_nibbles_256(b + 48, q);
  for (int s = 0; s < 8; ++s) {
    const float ds = mul_f32(d, static_cast<float>(sc[s])), ms = mul_f32(dmin, static_cast<float>(mn[s]));
    for (int l = 0; l < 32; ++l) {
      const int v = q[32 * s + l] | (((qh[l] >> s) & 1) << 4);
      y[32 * s + l] = mul_f32(ds, static_cast<float>(v)) - ms;
    }
  }
}

// Q6_K (210 bytes / 256): 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16
// int8 sub-block scales (one per 16 elements), then f16 d — d comes LAST here. The block
// is two halves of 128; half h uses low-nibble bytes [64h, 64h+64), high bytes
// [32h, 32h+32). Within a half, for l in 0..31, byte ql[l] carries elements l (low
// nibble) and l+64 (high nibble), ql[l+32] carries l+32 and l+96, and qh[l] holds the
// top two bits of l, l+32, l+64, l+96 in bits 0-1, 2-3, 4-5, 6-7.
// w = (d·scale[e/16])·(q − 32), q ∈ [0, 63].
inline void decode_q6_k(const std::uint8_t* b, float* y) {
  const std::uint8_t* ql = b;
  const std::uint8_t* qh = b + 128;
  const std::uint8_t* scales = b + 192;
  const float d = f16_at(b + 208);
  int q[256];
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const std::uint8_t lo0 = ql[64 * h + l], lo1 = ql[64 * h + 32 + l], hi = qh[32 * h + l];
      int* qq = q + 128 * h;
      qq[l] = (lo0 & 0x0F) | ((hi & 3) << 4);
      qq[l + 32] = (lo1 & 0x0F) | (((hi >> 2) & 3) << 4);
      qq[l + 64] = (lo0 >> 4) | (((hi >> 4) & 3) << 4);
      qq[l + 96] = (lo1 >> 4) | (((hi >> 6) & 3) << 4);
    }
  for (int s = 0; s < 16; ++s) {
    const float ds = mul_f32(d, static_cast<float>(static_cast<std::int8_t>(scales[s])));
    for (int l = 0; l < 16; ++l) y[16 * s + l] = mul_f32(ds, static_cast<float>(q[16 * s + l] - 32));
  }
}

}  // namespace detail_ggml

// Decodes `count` elements of ggml type `type` from `bytes` into out[0, count).
// `count` must be whole blocks and `bytes` exactly their size; anything else — or a type
// nibble does not decode — is a nibble::Error naming `what` (e.g. the tensor) and the type.
inline void dequantize_ggml(std::uint32_t type, ByteView bytes, std::size_t count, float* out,
                            const std::string& what = "data") {
  const GgmlTypeSize ts = ggml_type_size(type);
  detail::require(ggml_type_decodable(type), "GGUF: cannot decode ", what, " of ggml type ",
                          ggml_type_name(type), " (supported: ", kGgmlDecodableTypes, ")");
  detail::require(count % ts.block == 0, "GGUF: ", what, " (", ggml_type_name(type), ") has ", count,
                          " elements, not a whole number of ", ts.block, "-element blocks");
  const std::size_t blocks = count / ts.block;
  detail::require(bytes.size / ts.bytes == blocks && bytes.size % ts.bytes == 0, "GGUF: ", what, " (",
                          ggml_type_name(type), ") needs ", blocks, " x ", ts.bytes, " bytes for ", count,
                          " elements, got ", bytes.size);
  const std::uint8_t* p = bytes.data;
  void (*block_fn)(const std::uint8_t*, float*) = nullptr;
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32:
      if (count) std::memcpy(out, p, count * 4);  // bit patterns kept, NaN payloads included
      return;
    case GgmlType::F16:
      for (std::size_t i = 0; i < count; ++i) out[i] = half_to_float(load_u16(p + 2 * i));
      return;
    case GgmlType::BF16:
      for (std::size_t i = 0; i < count; ++i) out[i] = bf16_to_float(load_u16(p + 2 * i));
      return;
    case GgmlType::Q8_0: block_fn = detail_ggml::decode_q8_0; break;
    case GgmlType::Q4_0: block_fn = detail_ggml::decode_q4_0; break;
    case GgmlType::Q4_1: block_fn = detail_ggml::decode_q4_1; break;
    case GgmlType::Q5_0: block_fn = detail_ggml::decode_q5_0; break;
    case GgmlType::Q5_1: block_fn = detail_ggml::decode_q5_1; break;
    case GgmlType::Q4_K: block_fn = detail_ggml::decode_q4_k; break;
    case GgmlType::Q5_K: block_fn = detail_ggml::decode_q5_k; break;
    case GgmlType::Q6_K: block_fn = detail_ggml::decode_q6_k; break;
    case GgmlType::IQ4_NL: block_fn = detail_ggml::decode_iq4_nl; break;
  }
  for (std::size_t b = 0; b < blocks; ++b) block_fn(p + b * ts.bytes, out + b * ts.block);
}

}  // namespace nibble::io
