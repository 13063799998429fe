// safetensors: read (memory-mapped) and write.
//
// Layout (huggingface/safetensors):
//   u64 LE   N = header length
//   N bytes  JSON object: { "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//                           "__metadata__": {"key": "value", ...} }   (optional, strings only)
//   data     tensor bytes, row-major little-endian; offsets are relative to the data start
//
// The reader validates the whole header before any tensor byte is used: header
// length within the file and below 100 MiB, JSON well formed and not deeply nested,
// every dtype known, shape × dtype size == end − begin without overflow, offsets
// inside the data section, no two tensors overlapping.
//
// Needs nlohmann/json.hpp (CMake target nibble::io).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include <Eigen/Core>

#include "../core/error.hpp"
#include "../core/half.hpp"
#include "binary.hpp"

namespace nibble::io {

enum class DType : std::uint8_t { F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL };

inline const char* to_string(DType t) {
  static const char* names[] = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "BOOL"};
  return names[static_cast<int>(t)];
}

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: case DType::U64: return 8;
    case DType::F32: case DType::I32: case DType::U32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: case DType::U16: return 2;
    default: return 1;
  }
}

// Float values as the bytes of a float dtype (F32, F16 or BF16; round to nearest even).
// A value F16 cannot hold (|v| ≥ 65520, which would round to infinity) is an error naming
// `what`.
inline std::vector<std::uint8_t> encode_floats(const float* v, std::size_t n, DType dtype, const std::string& what) {
  detail::require(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, what, ": cannot store floats as ",
                  to_string(dtype));
  std::vector<std::uint8_t> out(n * dtype_size(dtype));
  if (dtype == DType::F32) {
    if (n) std::memcpy(out.data(), v, 4 * n);
    return out;
  }
  for (std::size_t i = 0; i < n; ++i) {
    detail::require(dtype != DType::F16 || std::fabs(v[i]) < 65520.0f, what, ": value ", v[i], " overflows F16");
    const std::uint16_t h = dtype == DType::F16 ? float_to_half(v[i]) : float_to_bf16(v[i]);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

inline DType dtype_from_string(const std::string& s) {
  for (int i = 0; i <= static_cast<int>(DType::BOOL); ++i)
    if (s == to_string(static_cast<DType>(i))) return static_cast<DType>(i);
  detail::throw_error("safetensors: unsupported dtype '", s,
                      "' (expected one of F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL)");
}

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;  // relative to the data section
  std::uint64_t elements() const {
    std::uint64_t n = 1;
    for (auto d : shape) n *= d;  // validated not to overflow when read
    return n;
  }
};

// Number of elements of a shape, overflow-checked.
inline std::uint64_t shape_elements(const std::vector<std::uint64_t>& shape, const char* what) {
  std::uint64_t n = 1;
  for (auto d : shape) n = checked_mul(n, d, what);
  return n;
}

// Rejects JSON nested deeper than `limit` before the parser sees it (a header is
// two levels deep; a hostile one could nest a million levels).
inline void check_json_depth(const char* p, std::size_t n, int limit, const char* what = "safetensors: header JSON") {
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = p[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > limit) detail::throw_error(what, " nests deeper than ", limit, " levels");
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
}

class SafetensorsReader {
 public:
  static SafetensorsReader open(const std::string& path) { return SafetensorsReader(FileBytes::open(path)); }
  static SafetensorsReader from_bytes(std::vector<std::uint8_t> bytes) {
    return SafetensorsReader(FileBytes::from_vector(std::move(bytes)));
  }

  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) detail::throw_error("safetensors: no tensor named '", name, "'");
    return tensors_[it->second];
  }

  // The tensor, after checking it has exactly this dtype and shape (importers use this
  // before trusting any layout).
  const TensorInfo& expect(const std::string& name, DType dtype, const std::vector<std::uint64_t>& shape) const {
    const TensorInfo& t = info(name);
    detail::require(t.dtype == dtype, "'", name, "' has dtype ", to_string(t.dtype), ", expected ", to_string(dtype));
    if (t.shape != shape) {
      std::string want, got;
      for (auto d : shape) want += (want.empty() ? "" : " x ") + std::to_string(d);
      for (auto d : t.shape) got += (got.empty() ? "" : " x ") + std::to_string(d);
      detail::throw_error("'", name, "' has shape [", got, "], expected [", want, "]");
    }
    return t;
  }

  // The raw bytes of a tensor (any dtype), valid while this reader lives.
  ByteView bytes(const std::string& name) const { return bytes(info(name)); }
  ByteView bytes(const TensorInfo& t) const {
    return {file_.view().data + data_start_ + t.begin, static_cast<std::size_t>(t.end - t.begin)};
  }

  // Elements converted to float (F32, F16, BF16, F64).
  std::vector<float> floats(const std::string& name) const {
    const TensorInfo& t = info(name);
    const ByteView b = bytes(t);
    std::vector<float> out(static_cast<std::size_t>(t.elements()));
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = element_to_float(t, b.data, i);
    return out;
  }

  // A 2-D (or 1-D, as one row) float tensor as a row-major matrix.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> matrix(const std::string& name) const {
    const TensorInfo& t = info(name);
    detail::require(t.shape.size() == 2 || t.shape.size() == 1, "safetensors: tensor '", name, "' has ",
                    t.shape.size(), " dimensions, expected 1 or 2");
    const std::uint64_t rows = t.shape.size() == 2 ? t.shape[0] : 1;
    const std::uint64_t cols = t.shape.back();
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(static_cast<Eigen::Index>(rows),
                                                                           static_cast<Eigen::Index>(cols));
    const ByteView b = bytes(t);
    for (std::size_t i = 0; i < static_cast<std::size_t>(rows * cols); ++i) m.data()[i] = element_to_float(t, b.data, i);
    return m;
  }

  // Typed copy of an integer tensor's elements (the dtype must match T's size and kind).
  template <class T>
  std::vector<T> values(const std::string& name, DType expected) const {
    const TensorInfo& t = info(name);
    detail::require(t.dtype == expected, "safetensors: tensor '", name, "' has dtype ", to_string(t.dtype),
                    ", expected ", to_string(expected));
    static_assert(std::is_trivially_copyable_v<T>);
    detail::require(sizeof(T) == dtype_size(expected), "safetensors: element size mismatch for '", name, "'");
    std::vector<T> out(static_cast<std::size_t>(t.elements()));
    if (!out.empty()) std::memcpy(out.data(), bytes(t).data, out.size() * sizeof(T));
    return out;
  }

  // Advises the kernel that a tensor's pages are no longer needed (streaming).
  void release(const TensorInfo& t) const {
    if (file_.map) file_.map->release(static_cast<std::size_t>(data_start_ + t.begin), static_cast<std::size_t>(t.end - t.begin));
  }

 private:
  explicit SafetensorsReader(FileBytes file) : file_(std::move(file)) { parse(); }

  static float element_to_float(const TensorInfo& t, const std::uint8_t* p, std::size_t i) {
    switch (t.dtype) {
      case DType::F32: return load_f32(p + 4 * i);
      case DType::F16: return half_to_float(load_u16(p + 2 * i));
      case DType::BF16: return bf16_to_float(load_u16(p + 2 * i));
      case DType::F64: {
        double d;
        std::memcpy(&d, p + 8 * i, 8);
        return static_cast<float>(d);
      }
      default:
        detail::throw_error("safetensors: tensor '", t.name, "' has dtype ", to_string(t.dtype),
                            ", expected a float type (F32, F16, BF16, F64)");
    }
  }

  static std::uint64_t json_uint(const nlohmann::json& v, const std::string& what) {
    detail::require(v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0),
                    "safetensors: ", what, " must be a non-negative integer");
    return v.get<std::uint64_t>();
  }

  void parse() {
    const ByteView all = file_.view();
    Cursor cur(all, "safetensors");
    const std::uint64_t n = cur.u64("header length");
    detail::require(n >= 2, "safetensors: header length ", n, " is too small for a JSON object");
    detail::require(n <= kMaxHeaderBytes, "safetensors: header length ", n, " exceeds the limit ", kMaxHeaderBytes);
    detail::require(n <= cur.remaining(), "safetensors: header length ", n, " runs past the end of the file (",
                    cur.remaining(), " bytes after the length field)");
    const char* text = reinterpret_cast<const char*>(cur.take(n, "header"));
    data_start_ = 8 + n;
    const std::uint64_t data_size = all.size - data_start_;
    check_json_depth(text, static_cast<std::size_t>(n), 8);
    const nlohmann::json header = nlohmann::json::parse(text, text + n, nullptr, false);
    detail::require(!header.is_discarded(), "safetensors: header is not valid JSON");
    detail::require(header.is_object(), "safetensors: header is not a JSON object");
    detail::require(header.size() <= kMaxTensorCount, "safetensors: ", header.size(), " entries exceed the limit");

    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const nlohmann::json& v = it.value();
      if (name == "__metadata__") {
        detail::require(v.is_object(), "safetensors: __metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m) {
          detail::require(m.value().is_string(), "safetensors: metadata value of '", m.key(), "' is not a string");
          metadata_[m.key()] = m.value().get<std::string>();
        }
        continue;
      }
      detail::require(!name.empty(), "safetensors: a tensor has an empty name");
      detail::require(v.is_object(), "safetensors: entry '", name, "' is not an object");
      const auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
      detail::require(dt != v.end() && dt->is_string(), "safetensors: tensor '", name, "' has no string dtype");
      detail::require(sh != v.end() && sh->is_array(), "safetensors: tensor '", name, "' has no shape array");
      detail::require(off != v.end() && off->is_array() && off->size() == 2, "safetensors: tensor '", name,
                      "' needs data_offsets [begin, end]");
      detail::require(sh->size() <= kMaxDims, "safetensors: tensor '", name, "' has ", sh->size(),
                      " dimensions (limit ", kMaxDims, ")");
      TensorInfo t;
      t.name = name;
      t.dtype = dtype_from_string(dt->get<std::string>());
      for (const auto& d : *sh) {
        t.shape.push_back(json_uint(d, "a dimension of '" + name + "'"));
        detail::require(t.shape.back() <= kMaxDimension, "safetensors: tensor '", name, "' has dimension ",
                        t.shape.back(), " above the limit 2^48");
      }
      t.begin = json_uint((*off)[0], "data_offsets of '" + name + "'");
      t.end = json_uint((*off)[1], "data_offsets of '" + name + "'");
      detail::require(t.begin <= t.end, "safetensors: tensor '", name, "' has begin ", t.begin, " > end ", t.end);
      detail::require(t.end <= data_size, "safetensors: tensor '", name, "' ends at ", t.end,
                      ", past the data section of ", data_size, " bytes (file truncated?)");
      const std::uint64_t expected = checked_mul(shape_elements(t.shape, "tensor shape"), dtype_size(t.dtype), "tensor bytes");
      detail::require(expected == t.end - t.begin, "safetensors: tensor '", name, "' of dtype ", to_string(t.dtype),
                      " and shape has ", expected, " bytes, but its offsets span ", t.end - t.begin);
      tensors_.push_back(std::move(t));
    }
    // File order = data order; overlapping ranges mean the header lies.
    std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    for (std::size_t i = 1; i < tensors_.size(); ++i)
      detail::require(tensors_[i].begin >= tensors_[i - 1].end || tensors_[i - 1].begin == tensors_[i - 1].end ||
                          tensors_[i].begin == tensors_[i].end,
                      "safetensors: tensors '", tensors_[i - 1].name, "' and '", tensors_[i].name, "' overlap");
    for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
  }

  FileBytes file_;
  std::uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Streaming writer: add() appends a tensor's bytes to a side file; finish() writes
// the header and the data. Tensors are stored in the order they were added.
class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(const std::string& path) : spill_(path) {}

  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  void add(const std::string& name, DType dtype, const std::vector<std::uint64_t>& shape, const void* data,
           std::size_t bytes) {
    detail::require(!name.empty() && name != "__metadata__", "safetensors: invalid tensor name '", name, "'");
    const std::uint64_t expected = checked_mul(shape_elements(shape, "tensor shape"), dtype_size(dtype), "tensor bytes");
    detail::require(expected == bytes, "safetensors: tensor '", name, "' has shape needing ", expected,
                    " bytes of ", to_string(dtype), ", got ", bytes);
    detail::require(names_.insert(name).second, "safetensors: tensor '", name, "' was added twice");
    const std::uint64_t begin = spill_.size();
    spill_.write(data, bytes);
    header_[name] = {{"dtype", to_string(dtype)}, {"shape", shape}, {"data_offsets", {begin, spill_.size()}}};
  }
  void add_floats(const std::string& name, const std::vector<std::uint64_t>& shape, const float* data, std::size_t n) {
    add(name, DType::F32, shape, data, n * sizeof(float));
  }

  // Tensor bytes added so far.
  std::uint64_t data_bytes() const { return spill_.size(); }

  void finish() {
    nlohmann::ordered_json header = header_;
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::string text = header.dump();
    // Pad with spaces so the data section starts 8-byte aligned (as the Python writer does).
    text.append((8 - text.size() % 8) % 8, ' ');
    std::vector<std::uint8_t> head;
    put<std::uint64_t>(head, text.size());
    put_bytes(head, text.data(), text.size());
    spill_.finish(head);
  }

 private:
  SpillFile spill_;
  nlohmann::ordered_json header_ = nlohmann::ordered_json::object();
  std::map<std::string, std::string> metadata_;
  std::set<std::string> names_;
};

}  // namespace nibble::io
