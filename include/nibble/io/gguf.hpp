// GGUF (version 3, as written by llama.cpp / gguf-py): a streaming writer (F32, Q4_0,
// IQ4_NL) and a validating reader that decodes every type in ggml_types.hpp to float and
// imports Q4_0, IQ4_NL and Q4_1 tensors into QuantizedMatrix.
//
// File layout, little-endian:
//   u32 magic "GGUF" | u32 version 3 | u64 tensor_count | u64 kv_count
//   kv_count × { string key | u32 value_type | value }      string = u64 length + bytes
//   tensor_count × { string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset }
//   padding to `general.alignment` (default 32), then the data section; every tensor
//   offset is relative to it and a multiple of the alignment.
// ne[0] is the contiguous dimension: a PyTorch Linear weight [out, in] is ne = {in, out},
// and blocks of 32 run along `in` inside each output row.
//
// Q4_0 block (18 bytes / 32 weights): fp16 d, then 16 bytes; element j (0..15) is the
// LOW nibble of byte j, element j+16 the HIGH nibble. w = d · (q − 8).
// IQ4_NL block (18 bytes / 32 weights): same nibble layout, w = d · kvalues[q] with the
// non-uniform int8 table below.
// Q4_1 block (20 bytes / 32 weights): fp16 d, fp16 m, the same 16 bytes; w = d · q + m.
// The other types' layouts are described next to their decoders in ggml_types.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "../format/quantized_matrix.hpp"
#include "../quant/rtn.hpp"
#include "binary.hpp"
#include "ggml_types.hpp"
#include "gguf_metadata.hpp"

namespace nibble::io {

inline constexpr std::size_t kGgufBlock = 32;

// ---- Q4_0 ---------------------------------------------------------------------------

// llama.cpp quantize_row_q4_0_ref, block by block: d = (signed extreme)/−8, id = 1/d,
// q = min(15, (int8)(x·id + 8.5f)), d stored as fp16 while codes use the fp32 id.
// x·id is rounded to float before the add on purpose: that is the C source's
// semantics without FMA contraction, and going through an exact double product
// keeps the compiler from fusing the two operations on any target.
inline void quantize_row_q4_0_ref(const float* x, std::size_t n, std::uint8_t* out) {
  detail::require(n % kGgufBlock == 0, "Q4_0: row length ", n, " is not a multiple of 32");
  for (std::size_t b = 0; b < n / kGgufBlock; ++b) {
    const float* xb = x + b * kGgufBlock;
    float amax = 0.0f, max = 0.0f;
    for (std::size_t j = 0; j < kGgufBlock; ++j)
      if (std::fabs(xb[j]) > amax) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    std::uint8_t* blk = out + b * 18;
    const std::uint16_t dh = float_to_half(d);
    std::memcpy(blk, &dh, 2);
    for (std::size_t j = 0; j < 16; ++j) {
      auto code = [&](float v) {
        const float prod = static_cast<float>(static_cast<double>(v) * static_cast<double>(id));
        const float shifted = prod + 8.5f;
        return static_cast<std::uint8_t>(std::min(15, static_cast<int>(static_cast<std::int8_t>(shifted))));
      };
      blk[2 + j] = static_cast<std::uint8_t>(code(xb[j]) | (code(xb[j + 16]) << 4));
    }
  }
}

// Both 4-bit block types nibble stores map onto a QuantizedMatrix with groups of 32
// and f16 scales: Q4_0 as int4_sym (w = d·(code − 8)), IQ4_NL as iq4_nl (w = d·table[code]).
inline Codebook gguf_block_codebook(GgmlType type) {
  detail::require(type == GgmlType::Q4_0 || type == GgmlType::IQ4_NL, "GGUF: ggml type ",
                  static_cast<std::uint32_t>(type), " is not a 4-bit block type nibble stores (Q4_0, IQ4_NL)");
  return type == GgmlType::Q4_0 ? Codebook::int4_sym : Codebook::iq4_nl;
}
inline const char* gguf_type_name(GgmlType type) { return type == GgmlType::Q4_0 ? "Q4_0" : "IQ4_NL"; }

// GGUF 4-bit blocks (rows × cols/32 blocks of 18 bytes) → QuantizedMatrix, losslessly.
inline QuantizedMatrix from_gguf_blocks(GgmlType type, std::size_t rows, std::size_t cols, ByteView bytes) {
  const Codebook cb = gguf_block_codebook(type);
  const char* tn = gguf_type_name(type);
  detail::require(cols % kGgufBlock == 0 && rows > 0 && cols > 0 && rows <= (1ull << 40) / cols, tn, ": shape ", rows,
                  " x ", cols, " is invalid (expected non-empty, in_features a multiple of 32)");
  const std::size_t nb = cols / kGgufBlock;
  detail::require(bytes.size == rows * nb * 18, tn, ": ", rows, " x ", cols, " needs ", rows * nb * 18,
                  " bytes, got ", bytes.size);
  std::vector<std::uint8_t> codes(rows * cols / 2);
  std::vector<std::uint16_t> scales(rows * nb);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t b = 0; b < nb; ++b) {
      const std::uint8_t* blk = bytes.data + (r * nb + b) * 18;
      scales[r * nb + b] = load_u16(blk);
      for (std::size_t j = 0; j < 16; ++j) {
        set_nibble(codes.data() + r * cols / 2, b * kGgufBlock + j, blk[2 + j] & 0x0F);
        set_nibble(codes.data() + r * cols / 2, b * kGgufBlock + j + 16, blk[2 + j] >> 4);
      }
    }
  // from_raw16 validates: a block whose d is Inf/NaN is rejected with its index.
  return QuantizedMatrix(rows, cols, kGgufBlock, cb, std::move(codes),
                         ScaleArray::from_raw16(std::move(scales), ScaleFormat::f16));
}

// ---- Q4_1 ---------------------------------------------------------------------------

// Q4_1 blocks (rows × cols/32 blocks of 20 bytes) → QuantizedMatrix: uint4_asym, groups of
// 32, the file's d as f16 scale (bit for bit), codes as stored, and f32 zero points
// z = −m/d, so that s·(q − z) = d·q + m. Codes and d are exact; the value is not always
// bit-exact, because z is rounded to f32 and the container computes d·(q − z) where the
// file means fl(fl(d·q) + m). No float z makes every code exact (on SmolLM2, moving z
// by up to ±8 ulps from −m/d makes no further block exact), so we accept rounding:
// three roundings here (z, q − z, the product) and two in the reference, each at most
// 2^-24 relative, bound the difference by
//   |Δ| ≤ 2^-24 · (|m| + 3|w| + |d·q|) ≤ 2^-22 · (15·|d| + |m|)   per block
// (q4_1_rounding_bound), i.e. a few float32 ulps of the block's range. Measured on
// SmolLM2-135M's 106M Q4_1 weights: max |Δ| 4.8e-7, at most 0.28 of the bound, 40% of
// values identical (scripts/test-interop.sh). A block with d = 0 holds the constant m;
// it is stored exactly as scale m, codes 0, zero −1 (m·(0 + 1) = m).
inline float q4_1_rounding_bound(float d, float m) {
  return std::ldexp(15.0f * std::fabs(d) + std::fabs(m), -22);
}

inline QuantizedMatrix from_q4_1_blocks(std::size_t rows, std::size_t cols, ByteView bytes,
                                        const std::string& what = "Q4_1 tensor") {
  detail::require(cols % kGgufBlock == 0 && rows > 0 && cols > 0 && rows <= (1ull << 40) / cols, what, ": shape ",
                  rows, " x ", cols, " is invalid (expected non-empty, in_features a multiple of 32)");
  const std::size_t nb = cols / kGgufBlock;
  detail::require(bytes.size / 20 / nb == rows && bytes.size % (20 * nb) == 0, what, ": ", rows, " x ", cols,
                  " needs ", rows * nb * 20, " bytes of Q4_1 blocks, got ", bytes.size);
  std::vector<std::uint8_t> codes(rows * cols / 2);
  std::vector<std::uint16_t> scales(rows * nb);
  std::vector<float> zeros(rows * nb);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t b = 0; b < nb; ++b) {
      const std::size_t i = r * nb + b;
      const std::uint8_t* blk = bytes.data + i * 20;
      const std::uint16_t dh = load_u16(blk), mh = load_u16(blk + 2);
      const float d = half_to_float(dh), m = half_to_float(mh);
      detail::require(std::isfinite(d) && std::isfinite(m), what, ": Q4_1 block ", b, " of row ", r,
                      " has a non-finite d or m (", d, ", ", m, ")");
      std::uint8_t* row = codes.data() + r * cols / 2;
      if (d == 0.0f) {  // constant block: codes are irrelevant to the file, keep them 0
        scales[i] = mh;
        zeros[i] = -1.0f;
        continue;
      }
      scales[i] = dh;
      zeros[i] = -m / d;
      for (std::size_t j = 0; j < 16; ++j) {
        set_nibble(row, b * kGgufBlock + j, blk[4 + j] & 0x0F);
        set_nibble(row, b * kGgufBlock + j + 16, blk[4 + j] >> 4);
      }
    }
  return QuantizedMatrix(rows, cols, kGgufBlock, Codebook::uint4_asym, std::move(codes),
                         ScaleArray::from_raw16(std::move(scales), ScaleFormat::f16),
                         ZeroPoints::floats(zeros, ScaleFormat::f32));
}

// QuantizedMatrix (group 32, the type's codebook) → GGUF blocks, row after row. Scales
// that are not already fp16 are rounded to fp16 (the only scale type these blocks have).
inline std::vector<std::uint8_t> to_gguf_blocks(GgmlType type, const QuantizedMatrix& m) {
  const Codebook cb = gguf_block_codebook(type);
  const char* tn = gguf_type_name(type);
  detail::require(m.codebook() == cb, tn, " needs the ", to_string(cb), " codebook, got ", to_string(m.codebook()));
  detail::require(m.group_size() == kGgufBlock && m.cols() % kGgufBlock == 0, tn,
                  " needs groups of exactly 32 and in_features divisible by 32 (got group ", m.group_size(),
                  ", in_features ", m.cols(), ")");
  const std::size_t nb = m.cols() / kGgufBlock;
  std::vector<std::uint8_t> out(m.rows() * nb * 18);
  for (std::size_t r = 0; r < m.rows(); ++r)
    for (std::size_t b = 0; b < nb; ++b) {
      std::uint8_t* blk = out.data() + (r * nb + b) * 18;
      const std::uint16_t d = m.scales().format() == ScaleFormat::f16 ? m.scales().raw16()[r * nb + b]
                                                                       : float_to_half(m.scale(r, b));
      std::memcpy(blk, &d, 2);
      for (std::size_t j = 0; j < 16; ++j)
        blk[2 + j] = static_cast<std::uint8_t>(m.code(r, b * kGgufBlock + j) | (m.code(r, b * kGgufBlock + j + 16) << 4));
    }
  return out;
}

inline std::vector<std::uint8_t> to_q4_0_blocks(const QuantizedMatrix& m) { return to_gguf_blocks(GgmlType::Q4_0, m); }
inline QuantizedMatrix from_q4_0_blocks(std::size_t rows, std::size_t cols, ByteView bytes) {
  return from_gguf_blocks(GgmlType::Q4_0, rows, cols, bytes);
}

// Quantizes every row of W with a llama.cpp row quantizer into GGUF blocks and returns
// them as a QuantizedMatrix, which to_gguf_blocks turns back into the identical bytes.
template <class Derived, class RowQuantizer>
QuantizedMatrix quantize_gguf_rows(GgmlType type, const Eigen::MatrixBase<Derived>& W, RowQuantizer quantize_row) {
  const RowMatrixXf Wf = to_checked_float(W, NonFinitePolicy::reject, "weight matrix");
  const std::size_t rows = static_cast<std::size_t>(Wf.rows()), cols = static_cast<std::size_t>(Wf.cols());
  detail::require(cols % kGgufBlock == 0, gguf_type_name(type), " needs in_features (cols) divisible by 32, got ", cols);
  std::vector<std::uint8_t> blocks(rows * cols / kGgufBlock * 18);
  for (std::size_t r = 0; r < rows; ++r)
    quantize_row(Wf.row(static_cast<Eigen::Index>(r)).data(), cols, blocks.data() + r * cols / kGgufBlock * 18);
  return from_gguf_blocks(type, rows, cols, {blocks.data(), blocks.size()});
}

// Q4_0 quantization of a whole matrix (rows = out, cols = in), as llama-quantize does
// without an importance matrix: int4_sym, groups of 32, f16 scales.
template <class Derived>
QuantizedMatrix quantize_q4_0(const Eigen::MatrixBase<Derived>& W) {
  return quantize_gguf_rows(GgmlType::Q4_0, W, quantize_row_q4_0_ref);
}

// ---- IQ4_NL -------------------------------------------------------------------------

// One row of IQ4_NL blocks, following llama.cpp quantize_row_iq4_nl_impl (ntry = 7,
// no importance matrix): weights x², start from d = max/127, least-squares refit of d
// for 15 trial scales, keep the best; codes re-chosen with the fp32 d, d stored as fp16.
inline void quantize_row_iq4_nl(const float* x, std::size_t n, std::uint8_t* out) {
  detail::require(n % kGgufBlock == 0, "IQ4_NL: row length ", n, " is not a multiple of 32");
  constexpr int ntry = 7;
  for (std::size_t b = 0; b < n / kGgufBlock; ++b) {
    const float* xb = x + b * kGgufBlock;
    std::uint8_t* blk = out + b * 18;
    float weight[kGgufBlock];
    float amax = 0.0f, max = 0.0f;
    for (std::size_t j = 0; j < kGgufBlock; ++j) {
      weight[j] = xb[j] * xb[j];
      if (std::fabs(xb[j]) > amax) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    }
    float d = 0.0f;
    if (amax >= 1e-15f) {
      auto fit = [&](float id, float& sumqx, float& sumq2) {
        sumqx = sumq2 = 0.0f;
        for (std::size_t j = 0; j < kGgufBlock; ++j) {
          const float q = kIQ4NLValues[nearest_iq4_nl(id * xb[j])];
          sumqx += weight[j] * q * xb[j];
          sumq2 += weight[j] * q * q;
        }
      };
      float sumqx, sumq2;
      fit(1.0f / (-max / kIQ4NLValues[0]), sumqx, sumq2);
      d = sumqx / sumq2;
      float best = d * sumqx;
      for (int itry = -ntry; itry <= ntry; ++itry) {
        fit((static_cast<float>(itry) + kIQ4NLValues[0]) / max, sumqx, sumq2);
        if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
          d = sumqx / sumq2;
          best = d * sumqx;
        }
      }
    }
    const std::uint16_t dh = float_to_half(d);
    std::memcpy(blk, &dh, 2);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (std::size_t j = 0; j < 16; ++j)
      blk[2 + j] = static_cast<std::uint8_t>(nearest_iq4_nl(id * xb[j]) | (nearest_iq4_nl(id * xb[j + 16]) << 4));
  }
}

// IQ4_NL quantization of a whole matrix as llama-quantize does without an importance
// matrix: iq4_nl codebook, groups of 32, f16 scales (d may be negative).
template <class Derived>
QuantizedMatrix quantize_iq4_nl(const Eigen::MatrixBase<Derived>& W) {
  return quantize_gguf_rows(GgmlType::IQ4_NL, W, quantize_row_iq4_nl);
}

// ---- block decoding -----------------------------------------------------------------

// Raw-pointer form kept for callers that have no byte count: `count` elements of `type`
// read from p, which must hold count / block · bytes-per-block bytes.
inline void dequantize_ggml(std::uint32_t type, const std::uint8_t* p, std::size_t count, float* out) {
  const GgmlTypeSize ts = ggml_type_size(type);
  detail::require(ts.block != 0, "GGUF: unknown ggml type ", type);
  dequantize_ggml(type, ByteView{p, count / ts.block * ts.bytes}, count, out);
}

// ---- writer -------------------------------------------------------------------------

class GgufWriter {
 public:
  explicit GgufWriter(const std::string& path, std::uint32_t alignment = 32) : spill_(path), alignment_(alignment) {
    detail::require(alignment > 0 && (alignment & (alignment - 1)) == 0, "GGUF: alignment ", alignment,
                    " is not a power of two");
    if (alignment != 32) set_u32("general.alignment", alignment);
  }

  void set_string(const std::string& key, const std::string& value) {
    begin_kv(key, GgufValueType::string);
    put_string(kv_, value);
  }
  void set_u32(const std::string& key, std::uint32_t value) {
    begin_kv(key, GgufValueType::u32);
    put(kv_, value);
  }
  void set_f32(const std::string& key, float value) {
    begin_kv(key, GgufValueType::f32);
    put(kv_, value);
  }
  void set_bool(const std::string& key, bool value) {
    begin_kv(key, GgufValueType::boolean);
    put<std::uint8_t>(kv_, value ? 1 : 0);
  }
  // Any value read from another file (GgufReader::typed_metadata()), written as it was.
  // general.alignment comes from the constructor instead.
  void set_value(const std::string& key, const GgufValue& value) {
    detail::require(key != "general.alignment", "GGUF: general.alignment is the writer's constructor argument");
    detail::require(keys_.insert(key).second, "GGUF: metadata key '", key, "' set twice");
    put_string(kv_, key);
    append_gguf_value(kv_, value);
    ++kv_count_;
  }
  void set_string_array(const std::string& key, const std::vector<std::string>& values) {
    begin_kv(key, GgufValueType::array);
    put<std::uint32_t>(kv_, static_cast<std::uint32_t>(GgufValueType::string));
    put<std::uint64_t>(kv_, values.size());
    for (const auto& v : values) put_string(kv_, v);
  }
  void set_i32_array(const std::string& key, const std::vector<std::int32_t>& values) {
    begin_kv(key, GgufValueType::array);
    put<std::uint32_t>(kv_, static_cast<std::uint32_t>(GgufValueType::i32));
    put<std::uint64_t>(kv_, values.size());
    for (auto v : values) put<std::int32_t>(kv_, v);
  }

  // The keys llama.cpp-style readers look for first. file_type: 0 all F32, 2 mostly
  // Q4_0, 25 mostly IQ4_NL (llama_ftype).
  void set_general(const std::string& architecture, const std::string& name, std::uint32_t file_type) {
    set_string("general.architecture", architecture);
    set_string("general.name", name);
    set_u32("general.file_type", file_type);
    set_u32("general.quantization_version", 2);
  }

  // Raw tensor bytes; `ne` in GGUF order (ne[0] contiguous).
  void add_tensor(const std::string& name, std::uint32_t type, const std::vector<std::uint64_t>& ne, const void* data,
                  std::size_t bytes) {
    detail::require(!name.empty() && names_.insert(name).second, "GGUF: tensor name '", name, "' is empty or repeated");
    detail::require(!ne.empty() && ne.size() <= 4, "GGUF: tensor '", name, "' needs 1 to 4 dimensions");
    const GgmlTypeSize ts = ggml_type_size(type);
    detail::require(ts.block != 0, "GGUF: unknown ggml type ", type);
    detail::require(ne[0] % ts.block == 0, "GGUF: tensor '", name, "' has ne[0] = ", ne[0],
                    ", not a multiple of the block size ", ts.block);
    std::uint64_t elements = 1;
    for (auto d : ne) elements = checked_mul(elements, d, "GGUF tensor");
    detail::require(elements / ts.block * ts.bytes == bytes, "GGUF: tensor '", name, "' needs ",
                    elements / ts.block * ts.bytes, " bytes, got ", bytes);
    spill_.pad_to(alignment_);
    put_string(infos_, name);
    put<std::uint32_t>(infos_, static_cast<std::uint32_t>(ne.size()));
    for (auto d : ne) put<std::uint64_t>(infos_, d);
    put<std::uint32_t>(infos_, type);
    put<std::uint64_t>(infos_, spill_.size());
    spill_.write(data, bytes);
    ++tensor_count_;
  }

  void add_f32(const std::string& name, std::size_t rows, std::size_t cols, const float* data) {
    add_tensor(name, static_cast<std::uint32_t>(GgmlType::F32), rows > 1 ? std::vector<std::uint64_t>{cols, rows}
                                                                        : std::vector<std::uint64_t>{cols},
               data, rows * cols * 4);
  }
  void add_q4_0(const std::string& name, const QuantizedMatrix& m) {
    const auto blocks = to_gguf_blocks(GgmlType::Q4_0, m);
    add_tensor(name, static_cast<std::uint32_t>(GgmlType::Q4_0), {m.cols(), m.rows()}, blocks.data(), blocks.size());
  }
  // IQ4_NL from a QuantizedMatrix (iq4_nl codebook, group 32), e.g. one GPTQ made.
  void add_iq4_nl(const std::string& name, const QuantizedMatrix& m) {
    const auto blocks = to_gguf_blocks(GgmlType::IQ4_NL, m);
    add_tensor(name, static_cast<std::uint32_t>(GgmlType::IQ4_NL), {m.cols(), m.rows()}, blocks.data(), blocks.size());
  }
  // IQ4_NL with llama.cpp's own fit.
  template <class Derived>
  void add_iq4_nl(const std::string& name, const Eigen::MatrixBase<Derived>& W) {
    add_iq4_nl(name, quantize_iq4_nl(W));
  }

  // Tensor bytes added so far, alignment padding included.
  std::uint64_t data_bytes() const { return spill_.size(); }

  void finish() {
    std::vector<std::uint8_t> head;
    put_bytes(head, "GGUF", 4);
    put<std::uint32_t>(head, 3);
    put<std::uint64_t>(head, tensor_count_);
    put<std::uint64_t>(head, kv_count_);
    put_bytes(head, kv_.data(), kv_.size());
    put_bytes(head, infos_.data(), infos_.size());
    head.resize(static_cast<std::size_t>(align_up(head.size(), alignment_)), 0);
    spill_.finish(head);
  }

 private:
  static void put_string(std::vector<std::uint8_t>& out, const std::string& s) {
    put<std::uint64_t>(out, s.size());
    put_bytes(out, s.data(), s.size());
  }
  void begin_kv(const std::string& key, GgufValueType type) {
    detail::require(keys_.insert(key).second, "GGUF: metadata key '", key, "' set twice");
    put_string(kv_, key);
    put<std::uint32_t>(kv_, static_cast<std::uint32_t>(type));
    ++kv_count_;
  }

  SpillFile spill_;
  std::uint32_t alignment_;
  std::vector<std::uint8_t> kv_, infos_;
  std::uint64_t kv_count_ = 0, tensor_count_ = 0;
  std::set<std::string> names_, keys_;
};

// ---- reader -------------------------------------------------------------------------

struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> ne;
  std::uint32_t type = 0;
  std::uint64_t offset = 0, size = 0;  // offset relative to the data section
  std::uint64_t elements() const {
    std::uint64_t n = 1;
    for (auto d : ne) n *= d;
    return n;
  }
};

class GgufReader {
 public:
  static GgufReader open(const std::string& path) { return GgufReader(FileBytes::open(path)); }
  static GgufReader from_bytes(std::vector<std::uint8_t> bytes) { return GgufReader(FileBytes::from_vector(std::move(bytes))); }

  std::uint32_t version() const { return version_; }
  std::uint32_t alignment() const { return alignment_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // Scalar and string metadata rendered as text (arrays as "[array of N]").
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Every metadata value with its type, arrays included (gguf_metadata.hpp): e.g.
  // typed_metadata().string_array("tokenizer.ggml.tokens").
  const GgufMetadata& typed_metadata() const { return typed_metadata_; }
  // Frees a metadata value the caller has consumed while the reader stays open for the
  // tensors (the tokenizer's arrays: a few MiB for a 49k vocabulary).
  void forget_metadata(const std::string& key) {
    typed_metadata_.erase(key);
    metadata_.erase(key);
  }
  const GgufTensorInfo& info(const std::string& name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return t;
    detail::throw_error("GGUF: no tensor named '", name, "'");
  }
  ByteView bytes(const GgufTensorInfo& t) const {
    return {file_.view().data + data_start_ + t.offset, static_cast<std::size_t>(t.size)};
  }
  // Lets the kernel drop a memory-mapped tensor's pages once it has been decoded, so
  // loading a model does not hold the whole file resident next to its copy.
  void release(const GgufTensorInfo& t) const {
    if (file_.map) file_.map->release(static_cast<std::size_t>(data_start_ + t.offset), static_cast<std::size_t>(t.size));
  }

  // Any tensor of a type dequantize_ggml decodes, as a row-major float matrix with
  // cols = ne[0] (the contiguous dimension) and rows = ne[1]·ne[2]·ne[3] (1 for a 1-D
  // tensor). Values are exactly gguf-py's dequantize.
  RowMatrixXf load_float(const std::string& name) const {
    const GgufTensorInfo& t = info(name);
    detail::require(ggml_type_decodable(t.type), "GGUF: tensor '", name, "' has ggml type ", ggml_type_name(t.type),
                    ", which nibble does not decode (supported: ", kGgmlDecodableTypes, ")");
    std::uint64_t rows = 1;
    for (std::size_t d = 1; d < t.ne.size(); ++d) rows = checked_mul(rows, t.ne[d], "GGUF tensor rows");
    const std::uint64_t cols = t.ne[0];
    detail::require(rows <= kMaxDimension && cols <= kMaxDimension && (cols == 0 || rows <= kMaxDimension / cols),
                    "GGUF: tensor '", name, "' (", rows, " x ", cols, ") is too large to decode");
    RowMatrixXf m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
    dequantize_ggml(t.type, bytes(t), static_cast<std::size_t>(rows * cols), m.data(),
                    "tensor '" + name + "'");
    return m;
  }
  // A 1-D tensor (e.g. a norm weight) as a vector.
  Eigen::VectorXf load_vector(const std::string& name) const {
    const GgufTensorInfo& t = info(name);
    detail::require(t.ne.size() == 1, "GGUF: tensor '", name, "' has ", t.ne.size(), " dimensions, expected 1");
    const RowMatrixXf m = load_float(name);
    return Eigen::Map<const Eigen::VectorXf>(m.data(), m.cols());
  }
  // Older name of load_float for 1-D and 2-D tensors.
  RowMatrixXf dequantize(const std::string& name) const {
    detail::require(info(name).ne.size() <= 2, "GGUF: tensor '", name, "' has ", info(name).ne.size(),
                    " dimensions, expected 1 or 2");
    return load_float(name);
  }

  // A 2-D 4-bit tensor as a QuantizedMatrix ready for the kernels, group 32, f16 scales:
  // Q4_0 as int4_sym and IQ4_NL as iq4_nl, losslessly; Q4_1 as uint4_asym with f32 zero
  // points (codes and scales exact, values within q4_1_rounding_bound; see from_q4_1_blocks).
  QuantizedMatrix load_quantized(const std::string& name) const {
    const GgufTensorInfo& t = info(name);
    const bool four_bit = t.type == static_cast<std::uint32_t>(GgmlType::Q4_0) ||
                          t.type == static_cast<std::uint32_t>(GgmlType::IQ4_NL) ||
                          t.type == static_cast<std::uint32_t>(GgmlType::Q4_1);
    detail::require(four_bit && t.ne.size() == 2, "GGUF: tensor '", name,
                    "' is not a 2-D Q4_0, Q4_1 or IQ4_NL tensor (type ", ggml_type_name(t.type), ", ", t.ne.size(),
                    " dims)");
    if (t.type == static_cast<std::uint32_t>(GgmlType::Q4_1))
      return from_q4_1_blocks(static_cast<std::size_t>(t.ne[1]), static_cast<std::size_t>(t.ne[0]), bytes(t),
                              "GGUF: tensor '" + name + "'");
    return from_gguf_blocks(static_cast<GgmlType>(t.type), static_cast<std::size_t>(t.ne[1]),
                            static_cast<std::size_t>(t.ne[0]), bytes(t));
  }
  QuantizedMatrix load_q4_0(const std::string& name) const {
    detail::require(info(name).type == static_cast<std::uint32_t>(GgmlType::Q4_0), "GGUF: tensor '", name,
                    "' is not Q4_0 (type ", info(name).type, ")");
    return load_quantized(name);
  }

 private:
  explicit GgufReader(FileBytes file) : file_(std::move(file)) { parse(); }

  std::string read_string(Cursor& c, const char* field) { return c.string(c.u64(field), field); }

  void parse() {
    Cursor c(file_.view(), "GGUF");
    const std::uint8_t* magic = c.take(4, "magic");
    detail::require(std::memcmp(magic, "GGUF", 4) == 0, "GGUF: wrong magic (expected \"GGUF\")");
    version_ = c.u32("version");
    detail::require(version_ == 2 || version_ == 3, "GGUF: unsupported version ", version_, " (expected 2 or 3)");
    const std::uint64_t n_tensors = c.u64("tensor count");
    const std::uint64_t n_kv = c.u64("metadata count");
    detail::require(n_tensors <= kMaxTensorCount && n_kv <= kMaxTensorCount, "GGUF: ", n_tensors, " tensors / ",
                    n_kv, " metadata entries exceed the limit");
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      std::string key = read_string(c, "metadata key");
      const std::uint32_t type = c.u32("metadata type");
      if (key == "general.alignment") {
        detail::require(type == static_cast<std::uint32_t>(GgufValueType::u32), "GGUF: general.alignment is not u32");
        alignment_ = c.u32("alignment");
        detail::require(alignment_ > 0 && alignment_ <= (1u << 20) && (alignment_ & (alignment_ - 1)) == 0,
                        "GGUF: general.alignment ", alignment_, " is not a power of two up to 1 MiB");
        GgufValue v;
        v.type = GgufValueType::u32;
        v.integer = alignment_;
        typed_metadata_.set(key, std::move(v));
      } else {
        typed_metadata_.set(key, read_gguf_value(c, type));
      }
    }
    metadata_ = typed_metadata_.render();
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensorInfo t;
      t.name = read_string(c, "tensor name");
      const std::uint32_t nd = c.u32("n_dims");
      detail::require(nd >= 1 && nd <= 4, "GGUF: tensor '", t.name, "' has ", nd, " dimensions (expected 1 to 4)");
      for (std::uint32_t d = 0; d < nd; ++d) {
        t.ne.push_back(c.u64("dimension"));
        detail::require(t.ne.back() <= kMaxDimension, "GGUF: tensor '", t.name, "' has dimension ", t.ne.back(),
                        " above the limit 2^48");
      }
      t.type = c.u32("tensor type");
      t.offset = c.u64("tensor offset");
      const GgmlTypeSize ts = ggml_type_size(t.type);
      detail::require(ts.block != 0, "GGUF: tensor '", t.name, "' has unknown ggml type ", t.type);
      detail::require(t.ne[0] % ts.block == 0, "GGUF: tensor '", t.name, "' has ne[0] = ", t.ne[0],
                      ", not a multiple of its block size ", ts.block);
      t.size = checked_mul(shape_elements_(t.ne) / ts.block, ts.bytes, "GGUF tensor bytes");
      tensors_.push_back(std::move(t));
    }
    data_start_ = align_up(c.position(), alignment_);
    const std::uint64_t file_size = file_.view().size;
    detail::require(data_start_ <= file_size, "GGUF: truncated before the data section");
    const std::uint64_t data_size = file_size - data_start_;
    std::set<std::string> names;
    for (const auto& t : tensors_) {
      detail::require(names.insert(t.name).second, "GGUF: tensor name '", t.name, "' is repeated");
      detail::require(t.offset % alignment_ == 0, "GGUF: tensor '", t.name, "' offset ", t.offset,
                      " is not a multiple of the alignment ", alignment_);
      detail::require(t.offset <= data_size && t.size <= data_size - t.offset, "GGUF: tensor '", t.name, "' [",
                      t.offset, ", +", t.size, ") runs past the data section of ", data_size, " bytes (truncated?)");
    }
    std::vector<const GgufTensorInfo*> order;
    for (const auto& t : tensors_) order.push_back(&t);
    std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (std::size_t i = 1; i < order.size(); ++i)
      detail::require(order[i]->offset >= order[i - 1]->offset + order[i - 1]->size, "GGUF: tensors '",
                      order[i - 1]->name, "' and '", order[i]->name, "' overlap");
  }

  static std::uint64_t shape_elements_(const std::vector<std::uint64_t>& ne) {
    std::uint64_t n = 1;
    for (auto d : ne) n = checked_mul(n, d, "GGUF tensor shape");
    return n;
  }

  FileBytes file_;
  std::uint32_t version_ = 0, alignment_ = 32;
  std::uint64_t data_start_ = 0;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  GgufMetadata typed_metadata_;
};

}  // namespace nibble::io
