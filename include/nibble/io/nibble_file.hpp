// nibble's own container: named QuantizedMatrix tensors (plus raw float tensors such
// as norms and embeddings that were left unquantized) and string metadata.
//
// Layout, all integers little-endian:
//
//   0    header (64 bytes)
//          char[8] magic "NIBBLEQ\0" | u32 version (1) | u32 reserved 0
//          u64 index_offset | u64 index_size | u64 index_fnv1a64 | u64 file_size | zero padding
//   64   tensor blobs, each starting at a multiple of 64 (usable straight from an mmap)
//   ...  index (at the end, so tensors can be streamed out before the index is known):
//          u32 metadata_count, then per entry: u32 len, key bytes, u32 len, value bytes
//          u32 tensor_count, then per tensor:
//            u32 len, name bytes | u8 kind (0 quantized, 1 raw)
//            quantized: u64 rows | u64 cols | u64 group_size | u8 codebook | u8 scale_format
//                       | u8 zero_format | u8 0 | f32 dq_offset
//            raw:       u8 dtype (io::DType) | u8 ndims | u64 dims[ndims]
//            u64 blob_offset | u64 blob_size | u64 blob_fnv1a64
//
// A quantized blob holds its sections back to back, each starting at a multiple of 64
// from the blob start: codes (rows·⌈cols/2⌉), scales (f32: 4n, f16/bf16: 2n, dq8: n code
// bytes), second-level absmax (dq8 only: 4·⌈n/256⌉), zeros (uint4: ⌈n/2⌉, f32: 4n,
// f16/bf16: 2n), n = number of groups. Every size follows from the index fields, so a
// blob whose recorded size differs is rejected: the file lies about a shape.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "../format/quantized_matrix.hpp"
#include "binary.hpp"
#include "safetensors.hpp"

namespace nibble::io {

// Fuzzing builds set NIBBLE_FUZZ_NO_CHECKSUMS so mutated files reach the parser behind
// the checksums; never define it otherwise.
#ifdef NIBBLE_FUZZ_NO_CHECKSUMS
inline constexpr bool kVerifyChecksums = false;
#else
inline constexpr bool kVerifyChecksums = true;
#endif

inline constexpr char kNibbleMagic[8] = {'N', 'I', 'B', 'B', 'L', 'E', 'Q', '\0'};
inline constexpr std::uint32_t kNibbleVersion = 1;
inline constexpr std::uint64_t kNibbleAlign = 64;

enum class TensorKind : std::uint8_t { quantized = 0, raw = 1 };

struct NibbleTensorInfo {
  std::string name;
  TensorKind kind = TensorKind::quantized;
  // quantized
  std::uint64_t rows = 0, cols = 0, group_size = 0;
  Codebook codebook = Codebook::int4_sym;
  ScaleFormat scale_format = ScaleFormat::f32;
  ZeroFormat zero_format = ZeroFormat::none;
  float dq_offset = 0.0f;
  // raw
  DType dtype = DType::F32;
  std::vector<std::uint64_t> shape;
  // storage
  std::uint64_t offset = 0, size = 0, checksum = 0;
};

namespace detail_nibble {

struct Section {
  std::uint64_t offset, size;
};

// Section placement of a quantized blob: codes, scales, absmax2, zeros.
inline std::vector<Section> quantized_sections(const NibbleTensorInfo& t) {
  const std::uint64_t row_bytes = (t.cols + 1) / 2;
  const std::uint64_t groups = checked_mul(t.rows, (t.cols + t.group_size - 1) / t.group_size, "group count");
  std::uint64_t scale_bytes = 0, absmax2_bytes = 0, zero_bytes = 0;
  switch (t.scale_format) {
    case ScaleFormat::f32: scale_bytes = checked_mul(groups, 4, "scales"); break;
    case ScaleFormat::f16:
    case ScaleFormat::bf16: scale_bytes = checked_mul(groups, 2, "scales"); break;
    case ScaleFormat::dq8:
      scale_bytes = groups;
      absmax2_bytes = checked_mul((groups + kDoubleQuantBlock - 1) / kDoubleQuantBlock, 4, "absmax2");
      break;
  }
  switch (t.zero_format) {
    case ZeroFormat::none: break;
    case ZeroFormat::uint4: zero_bytes = (groups + 1) / 2; break;
    case ZeroFormat::f32: zero_bytes = checked_mul(groups, 4, "zeros"); break;
    case ZeroFormat::f16:
    case ZeroFormat::bf16: zero_bytes = checked_mul(groups, 2, "zeros"); break;
  }
  std::vector<Section> s;
  std::uint64_t pos = 0;
  for (std::uint64_t size : {checked_mul(t.rows, row_bytes, "codes"), scale_bytes, absmax2_bytes, zero_bytes}) {
    pos = align_up(pos, kNibbleAlign);
    s.push_back({pos, size});
    pos = checked_add(pos, size, "tensor blob");
  }
  return s;
}

inline std::uint64_t blob_size(const NibbleTensorInfo& t) {
  if (t.kind == TensorKind::raw)
    return checked_mul(shape_elements(t.shape, "raw tensor"), dtype_size(t.dtype), "raw tensor bytes");
  const auto s = quantized_sections(t);
  return s.back().offset + s.back().size;
}

inline void put_string(std::vector<std::uint8_t>& out, const std::string& s) {
  put<std::uint32_t>(out, static_cast<std::uint32_t>(s.size()));
  put_bytes(out, s.data(), s.size());
}

}  // namespace detail_nibble

class NibbleFileReader {
 public:
  static NibbleFileReader open(const std::string& path) { return NibbleFileReader(FileBytes::open(path)); }
  static NibbleFileReader from_bytes(std::vector<std::uint8_t> bytes) {
    return NibbleFileReader(FileBytes::from_vector(std::move(bytes)));
  }

  const std::vector<NibbleTensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const NibbleTensorInfo& info(const std::string& name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return t;
    detail::throw_error("nibble file: no tensor named '", name, "'");
  }

  // The tensor's bytes after checking its checksum.
  ByteView blob(const NibbleTensorInfo& t) const {
    const ByteView b{file_.view().data + t.offset, static_cast<std::size_t>(t.size)};
    detail::require(!kVerifyChecksums || fnv1a64(b.data, b.size) == t.checksum, "nibble file: checksum mismatch in tensor '", t.name,
                    "' (file corrupted)");
    return b;
  }

  QuantizedMatrix load(const std::string& name) const {
    const NibbleTensorInfo& t = info(name);
    detail::require(t.kind == TensorKind::quantized, "nibble file: tensor '", name, "' is raw, not quantized");
    const ByteView b = blob(t);
    const auto sec = detail_nibble::quantized_sections(t);
    const std::uint64_t groups = t.rows * ((t.cols + t.group_size - 1) / t.group_size);
    const std::uint8_t* p = b.data;
    std::vector<std::uint8_t> codes(p + sec[0].offset, p + sec[0].offset + sec[0].size);
    ScaleArray scales;
    const std::uint8_t* sp = p + sec[1].offset;
    switch (t.scale_format) {
      case ScaleFormat::f32: {
        std::vector<float> v(groups);
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = load_f32(sp + 4 * i);
        scales = ScaleArray::encode(v, ScaleFormat::f32);
        break;
      }
      case ScaleFormat::f16:
      case ScaleFormat::bf16: {
        std::vector<std::uint16_t> v(groups);
        for (std::size_t i = 0; i < v.size(); ++i) v[i] = load_u16(sp + 2 * i);
        scales = ScaleArray::from_raw16(std::move(v), t.scale_format);
        break;
      }
      case ScaleFormat::dq8: {
        std::vector<std::uint8_t> q(sp, sp + groups);
        std::vector<float> a(sec[2].size / 4);
        for (std::size_t i = 0; i < a.size(); ++i) a[i] = load_f32(p + sec[2].offset + 4 * i);
        scales = ScaleArray::from_double_quant(std::move(q), std::move(a), t.dq_offset);
        break;
      }
    }
    ZeroPoints zeros;
    const std::uint8_t* zp = p + sec[3].offset;
    if (t.zero_format == ZeroFormat::uint4) {
      zeros.format = ZeroFormat::uint4;
      zeros.packed.assign(zp, zp + sec[3].size);
      if (groups % 2 == 1) detail::require((zeros.packed.back() & 0x0F) == 0, "nibble file: tensor '", name,
                                           "' has a non-zero padding nibble in its zero points");
    } else if (t.zero_format != ZeroFormat::none) {
      std::vector<float> v(groups);
      const ScaleFormat storage = t.zero_format == ZeroFormat::f32   ? ScaleFormat::f32
                                  : t.zero_format == ZeroFormat::f16 ? ScaleFormat::f16
                                                                     : ScaleFormat::bf16;
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (storage == ScaleFormat::f32) v[i] = load_f32(zp + 4 * i);
        else if (storage == ScaleFormat::f16) v[i] = half_to_float(load_u16(zp + 2 * i));
        else v[i] = bf16_to_float(load_u16(zp + 2 * i));
      }
      zeros = ZeroPoints::floats(v, storage);
    }
    return QuantizedMatrix(static_cast<std::size_t>(t.rows), static_cast<std::size_t>(t.cols),
                           static_cast<std::size_t>(t.group_size), t.codebook, std::move(codes), std::move(scales),
                           std::move(zeros));
  }

  // A raw tensor's elements as floats (F32, F16, BF16 storage).
  std::vector<float> load_raw(const std::string& name) const {
    const NibbleTensorInfo& t = info(name);
    detail::require(t.kind == TensorKind::raw, "nibble file: tensor '", name, "' is quantized, not raw");
    const ByteView b = blob(t);
    std::vector<float> out(static_cast<std::size_t>(shape_elements(t.shape, "raw tensor")));
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (t.dtype == DType::F32) out[i] = load_f32(b.data + 4 * i);
      else if (t.dtype == DType::F16) out[i] = half_to_float(load_u16(b.data + 2 * i));
      else out[i] = bf16_to_float(load_u16(b.data + 2 * i));
    }
    return out;
  }

 private:
  explicit NibbleFileReader(FileBytes file) : file_(std::move(file)) { parse(); }

  void parse() {
    const ByteView all = file_.view();
    Cursor head(all, "nibble file");
    const std::uint8_t* magic = head.take(8, "magic");
    detail::require(std::memcmp(magic, kNibbleMagic, 8) == 0, "nibble file: wrong magic (expected \"NIBBLEQ\")");
    const std::uint32_t version = head.u32("version");
    detail::require(version == kNibbleVersion, "nibble file: unsupported version ", version, " (expected ",
                    kNibbleVersion, ")");
    head.u32("reserved");
    const std::uint64_t index_offset = head.u64("index offset");
    const std::uint64_t index_size = head.u64("index size");
    const std::uint64_t index_sum = head.u64("index checksum");
    const std::uint64_t file_size = head.u64("file size");
    detail::require(file_size == all.size, "nibble file: header records ", file_size, " bytes but the file has ",
                    all.size, " (truncated or appended to)");
    detail::require(index_offset >= kNibbleAlign && index_offset <= all.size && index_size <= all.size - index_offset,
                    "nibble file: index [", index_offset, ", +", index_size, ") lies outside the file of ", all.size,
                    " bytes");
    detail::require(index_size <= kMaxHeaderBytes, "nibble file: index size ", index_size, " exceeds the limit");
    detail::require(!kVerifyChecksums || fnv1a64(all.data + index_offset, static_cast<std::size_t>(index_size)) == index_sum,
                    "nibble file: index checksum mismatch (file corrupted)");

    Cursor c(ByteView{all.data + index_offset, static_cast<std::size_t>(index_size)}, "nibble file index");
    const std::uint32_t n_meta = c.u32("metadata count");
    detail::require(n_meta <= kMaxTensorCount, "nibble file: ", n_meta, " metadata entries exceed the limit");
    for (std::uint32_t i = 0; i < n_meta; ++i) {
      std::string key = c.string(c.u32("metadata key length"), "metadata key");
      metadata_[key] = c.string(c.u32("metadata value length"), "metadata value");
    }
    const std::uint32_t n = c.u32("tensor count");
    detail::require(n <= kMaxTensorCount, "nibble file: ", n, " tensors exceed the limit");
    std::set<std::string> names;
    for (std::uint32_t i = 0; i < n; ++i) {
      NibbleTensorInfo t;
      t.name = c.string(c.u32("name length"), "tensor name");
      detail::require(!t.name.empty() && names.insert(t.name).second, "nibble file: tensor name '", t.name,
                      "' is empty or repeated");
      const std::uint8_t kind = c.u8("tensor kind");
      detail::require(kind <= 1, "nibble file: tensor '", t.name, "' has invalid kind ", int(kind), " (expected 0 or 1)");
      t.kind = static_cast<TensorKind>(kind);
      if (t.kind == TensorKind::quantized) {
        t.rows = c.u64("rows");
        t.cols = c.u64("cols");
        t.group_size = c.u64("group size");
        const std::uint8_t cb = c.u8("codebook"), sf = c.u8("scale format"), zf = c.u8("zero format");
        c.u8("padding");
        t.dq_offset = c.f32("dq offset");
        detail::require(t.rows > 0 && t.cols > 0 && t.rows <= (1ull << 40) / t.cols, "nibble file: tensor '",
                        t.name, "' has an invalid shape ", t.rows, " x ", t.cols);
        validate_group_size(static_cast<std::size_t>(t.group_size), static_cast<std::size_t>(t.cols));
        detail::require(is_valid_codebook(cb), "nibble file: tensor '", t.name, "' has invalid codebook ", int(cb));
        detail::require(sf <= 3, "nibble file: tensor '", t.name, "' has invalid scale format ", int(sf));
        detail::require(zf <= 4, "nibble file: tensor '", t.name, "' has invalid zero format ", int(zf));
        t.codebook = static_cast<Codebook>(cb);
        t.scale_format = static_cast<ScaleFormat>(sf);
        t.zero_format = static_cast<ZeroFormat>(zf);
      } else {
        const std::uint8_t dt = c.u8("dtype");
        detail::require(dt == static_cast<std::uint8_t>(DType::F32) || dt == static_cast<std::uint8_t>(DType::F16) ||
                            dt == static_cast<std::uint8_t>(DType::BF16),
                        "nibble file: raw tensor '", t.name, "' has unsupported dtype ", int(dt),
                        " (expected F32, F16 or BF16)");
        t.dtype = static_cast<DType>(dt);
        const std::uint8_t nd = c.u8("ndims");
        detail::require(nd >= 1 && nd <= kMaxDims, "nibble file: raw tensor '", t.name, "' has ", int(nd), " dims");
        for (std::uint8_t d = 0; d < nd; ++d) t.shape.push_back(c.u64("dimension"));
      }
      t.offset = c.u64("blob offset");
      t.size = c.u64("blob size");
      t.checksum = c.u64("blob checksum");
      detail::require(t.size == detail_nibble::blob_size(t), "nibble file: tensor '", t.name, "' records ", t.size,
                      " bytes but its shape and formats need ", detail_nibble::blob_size(t));
      detail::require(t.offset % kNibbleAlign == 0 && t.offset >= kNibbleAlign && t.offset <= index_offset &&
                          t.size <= index_offset - t.offset,
                      "nibble file: tensor '", t.name, "' at [", t.offset, ", +", t.size,
                      ") is misaligned or outside the data area");
      tensors_.push_back(std::move(t));
    }
    detail::require(c.remaining() == 0, "nibble file: ", c.remaining(), " unexpected bytes after the index");
    std::vector<const NibbleTensorInfo*> by_offset;
    for (const auto& t : tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (std::size_t i = 1; i < by_offset.size(); ++i)
      detail::require(by_offset[i]->offset >= by_offset[i - 1]->offset + by_offset[i - 1]->size,
                      "nibble file: tensors '", by_offset[i - 1]->name, "' and '", by_offset[i]->name, "' overlap");
  }

  FileBytes file_;
  std::vector<NibbleTensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Streams tensors straight into the final file; the index and header are written by finish().
class NibbleFileWriter {
 public:
  explicit NibbleFileWriter(const std::string& path) : out_(path, "wb") { out_.zeros(kNibbleAlign); }

  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  void add(const std::string& name, const QuantizedMatrix& m) {
    NibbleTensorInfo t = start(name, TensorKind::quantized);
    t.rows = m.rows();
    t.cols = m.cols();
    t.group_size = m.group_size();
    t.codebook = m.codebook();
    t.scale_format = m.scales().format();
    t.zero_format = m.zeros().format;
    t.dq_offset = m.scales().dq_offset();
    const auto sec = detail_nibble::quantized_sections(t);
    std::vector<std::uint8_t> blob(static_cast<std::size_t>(sec.back().offset + sec.back().size), 0);
    auto place = [&](std::size_t i, const void* p, std::size_t n) {
      detail::require(n == sec[i].size, "nibble file: internal size mismatch in section ", i, " of '", name, "'");
      if (n > 0) std::memcpy(blob.data() + sec[i].offset, p, n);
    };
    place(0, m.codes().data(), m.codes().size());
    const ScaleArray& s = m.scales();
    switch (s.format()) {
      case ScaleFormat::f32: place(1, s.f32_values().data(), 4 * s.size()); break;
      case ScaleFormat::f16:
      case ScaleFormat::bf16: place(1, s.raw16().data(), 2 * s.size()); break;
      case ScaleFormat::dq8:
        place(1, s.dq_codes().data(), s.size());
        place(2, s.dq_absmax2().data(), 4 * s.dq_absmax2().size());
        break;
    }
    const ZeroPoints& z = m.zeros();
    if (z.format == ZeroFormat::uint4) place(3, z.packed.data(), z.packed.size());
    else if (z.format == ZeroFormat::f32) place(3, z.values.f32_values().data(), 4 * z.values.size());
    else if (z.format != ZeroFormat::none) place(3, z.values.raw16().data(), 2 * z.values.size());
    write_blob(t, blob.data(), blob.size());
  }

  void add_raw(const std::string& name, DType dtype, const std::vector<std::uint64_t>& shape, const void* data,
               std::size_t bytes) {
    detail::require(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, "nibble file: raw tensor '",
                    name, "' must be F32, F16 or BF16, got ", to_string(dtype));
    detail::require(!shape.empty() && shape.size() <= kMaxDims, "nibble file: raw tensor '", name,
                    "' needs 1 to ", kMaxDims, " dimensions");
    NibbleTensorInfo t = start(name, TensorKind::raw);
    t.dtype = dtype;
    t.shape = shape;
    detail::require(detail_nibble::blob_size(t) == bytes, "nibble file: raw tensor '", name, "' shape needs ",
                    detail_nibble::blob_size(t), " bytes, got ", bytes);
    write_blob(t, data, bytes);
  }

  // Bytes written so far (header and alignment padding included).
  std::uint64_t bytes_written() const { return pos_; }

  void finish() {
    using detail_nibble::put_string;
    std::vector<std::uint8_t> index;
    put<std::uint32_t>(index, static_cast<std::uint32_t>(metadata_.size()));
    for (const auto& [k, v] : metadata_) {
      put_string(index, k);
      put_string(index, v);
    }
    put<std::uint32_t>(index, static_cast<std::uint32_t>(tensors_.size()));
    for (const auto& t : tensors_) {
      put_string(index, t.name);
      put<std::uint8_t>(index, static_cast<std::uint8_t>(t.kind));
      if (t.kind == TensorKind::quantized) {
        put<std::uint64_t>(index, t.rows);
        put<std::uint64_t>(index, t.cols);
        put<std::uint64_t>(index, t.group_size);
        put<std::uint8_t>(index, static_cast<std::uint8_t>(t.codebook));
        put<std::uint8_t>(index, static_cast<std::uint8_t>(t.scale_format));
        put<std::uint8_t>(index, static_cast<std::uint8_t>(t.zero_format));
        put<std::uint8_t>(index, 0);
        put<float>(index, t.dq_offset);
      } else {
        put<std::uint8_t>(index, static_cast<std::uint8_t>(t.dtype));
        put<std::uint8_t>(index, static_cast<std::uint8_t>(t.shape.size()));
        for (auto d : t.shape) put<std::uint64_t>(index, d);
      }
      put<std::uint64_t>(index, t.offset);
      put<std::uint64_t>(index, t.size);
      put<std::uint64_t>(index, t.checksum);
    }
    pad();
    const std::uint64_t index_offset = pos_;
    out_.write(index);
    pos_ += index.size();
    std::vector<std::uint8_t> header;
    put_bytes(header, kNibbleMagic, 8);
    put<std::uint32_t>(header, kNibbleVersion);
    put<std::uint32_t>(header, 0);
    put<std::uint64_t>(header, index_offset);
    put<std::uint64_t>(header, index.size());
    put<std::uint64_t>(header, fnv1a64(index.data(), index.size()));
    put<std::uint64_t>(header, pos_);
    out_.seek(0);
    out_.write(header);
    out_.close();
  }

 private:
  NibbleTensorInfo start(const std::string& name, TensorKind kind) {
    detail::require(!name.empty() && name.size() <= kMaxNameBytes, "nibble file: invalid tensor name '", name, "'");
    detail::require(names_.insert(name).second, "nibble file: tensor '", name, "' was added twice");
    NibbleTensorInfo t;
    t.name = name;
    t.kind = kind;
    return t;
  }
  void pad() {
    const std::uint64_t target = align_up(pos_, kNibbleAlign);
    out_.zeros(static_cast<std::size_t>(target - pos_));
    pos_ = target;
  }
  void write_blob(NibbleTensorInfo& t, const void* data, std::size_t bytes) {
    pad();
    t.offset = pos_;
    t.size = bytes;
    t.checksum = fnv1a64(data, bytes);
    out_.write(data, bytes);
    pos_ += bytes;
    tensors_.push_back(std::move(t));
  }

  OutputFile out_;
  std::uint64_t pos_ = kNibbleAlign;
  std::vector<NibbleTensorInfo> tensors_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
};

// One-call save/load of a set of quantized matrices.
inline void save_nibble(const std::string& path, const std::map<std::string, QuantizedMatrix>& tensors,
                        const std::map<std::string, std::string>& metadata = {}) {
  NibbleFileWriter w(path);
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  for (const auto& [name, m] : tensors) w.add(name, m);
  w.finish();
}

inline std::map<std::string, QuantizedMatrix> load_nibble(const std::string& path) {
  const NibbleFileReader r = NibbleFileReader::open(path);
  std::map<std::string, QuantizedMatrix> out;
  for (const auto& t : r.tensors())
    if (t.kind == TensorKind::quantized) out.emplace(t.name, r.load(t.name));
  return out;
}

}  // namespace nibble::io
