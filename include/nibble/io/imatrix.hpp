// Importance matrices written by llama.cpp's llama-imatrix: for every weight W that a
// matrix multiplication y = W x touched, the mean of x_j² over the calibration tokens,
// one value per input column j. quant/weighted_fit.hpp turns such a vector into a
// weighted 4-bit fit.
//
// Two file layouts exist (llama.cpp tools/imatrix; both little-endian):
//
// GGUF (llama-imatrix's default, "--output-format gguf"): an ordinary GGUF file with
//   general.type = "imatrix", imatrix.datasets (string array), imatrix.chunk_count (u32),
//   imatrix.chunk_size (u32), and two F32 tensors per weight name N:
//     N.in_sum2  ne = {cols, matrices}   raw sums of x_j² (not divided by anything)
//     N.counts   ne = {1, matrices}      how many activation rows went into each sum
//   matrices is 1 for a plain 2-D weight and the expert count for a 3-D (MoE) one;
//   ggml drops trailing 1-sized dimensions, so a 2-D weight's tensors are 1-D. A count
//   of 0 means the matrix (an expert) was never used: llama-quantize then falls back to
//   importance 1, and so do we (ImatrixEntry::counts shows it).
//
// Legacy "imatrix.dat" ("--output-format dat"):
//   i32 n_entries
//   n_entries × { i32 name_len | name bytes | i32 ncall | i32 nval | f32 value[nval] }
//   optional trailer: i32 chunk_count | i32 dataset_len | dataset bytes
//   value = mean(x²) · ncall, so the mean is value / ncall. A MoE entry has
//   nval = cols · experts with each expert's block already normalised by its own count;
//   the file does not say how many experts there are (the model's tensor shape does).
//
// The GGUF form is detected by its magic; anything else is read as the legacy form.
// Everything is validated: sizes against the bytes present, counts (finite,
// non-negative, integral), values (finite, non-negative), duplicate or orphaned names.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "binary.hpp"
#include "ggml_types.hpp"
#include "gguf.hpp"

namespace nibble::io {

struct ImatrixEntry {
  // Mean squared activation per input column, `matrices` rows of `cols` values
  // (row e = expert e of a MoE weight).
  std::vector<float> values;
  std::size_t cols = 0;
  std::size_t matrices = 1;
  // GGUF: activation rows per matrix (0 = never used; its values are then all 1).
  // Legacy: one entry, the file's ncall (chunks, not tokens).
  std::vector<std::int64_t> counts;
};

enum class ImatrixFormat : std::uint8_t { gguf, legacy_dat };

struct ImportanceMatrix {
  // Keyed by the GGUF weight name, e.g. "blk.0.attn_q.weight".
  std::map<std::string, ImatrixEntry> per_tensor;
  std::vector<std::string> datasets;  // calibration text file(s) the collector was given
  std::uint32_t chunks = 0;           // chunks processed (0 when the file does not say)
  std::uint32_t chunk_size = 0;       // tokens per chunk (GGUF only; 0 when absent)
  ImatrixFormat format = ImatrixFormat::gguf;

  bool contains(const std::string& weight) const { return per_tensor.count(weight) != 0; }

  // The importance of a 2-D weight with `cols` input columns. A legacy entry does not
  // record its expert count, so it is taken from `cols` here; an entry that holds more
  // than one matrix (a 3-D MoE weight) is rejected: use expert() for those.
  const std::vector<float>& for_weight(const std::string& weight, std::size_t cols) const {
    const ImatrixEntry& e = entry_(weight);
    detail::require(e.values.size() == cols, "imatrix: entry '", weight, "' has ", e.values.size(),
                    " values, expected one per input column (", cols, ")",
                    e.values.size() % (cols == 0 ? 1 : cols) == 0 && e.values.size() > cols
                        ? ": it is a 3-D (MoE) entry, take one expert with expert()"
                        : "");
    return e.values;
  }
  // Expert `index` of a 3-D (MoE) weight with `cols` input columns; a legacy entry
  // is split by cols, a GGUF entry must agree with it.
  std::vector<float> expert(const std::string& weight, std::size_t index, std::size_t cols) const {
    const ImatrixEntry& e = entry_(weight);
    detail::require(cols > 0 && e.values.size() % cols == 0, "imatrix: entry '", weight, "' has ", e.values.size(),
                    " values, not a multiple of ", cols, " input columns");
    const std::size_t n = e.values.size() / cols;
    detail::require(index < n, "imatrix: entry '", weight, "' holds ", n, " matrices, no expert ", index);
    return std::vector<float>(e.values.begin() + static_cast<std::ptrdiff_t>(index * cols),
                              e.values.begin() + static_cast<std::ptrdiff_t>((index + 1) * cols));
  }

 private:
  const ImatrixEntry& entry_(const std::string& weight) const {
    const auto it = per_tensor.find(weight);
    detail::require(it != per_tensor.end(), "imatrix: no entry for weight '", weight, "'");
    return it->second;
  }
};

namespace imatrix_detail {

inline constexpr std::int64_t kMaxCount = std::int64_t{1} << 53;  // counts stored as f32 stay exact below 2^24

inline void check_values(const float* v, std::size_t n, const std::string& what, const std::string& name) {
  for (std::size_t i = 0; i < n; ++i)
    detail::require(std::isfinite(v[i]) && v[i] >= 0.0f, what, ": entry '", name, "' value ", i, " is ", v[i],
                    " (a mean of squares must be finite and >= 0)");
}

inline ImportanceMatrix parse_legacy(ByteView bytes, const std::string& what) {
  Cursor c(bytes, "imatrix");
  ImportanceMatrix m;
  m.format = ImatrixFormat::legacy_dat;
  const std::int32_t n_entries = c.read<std::int32_t>("entry count");
  detail::require(n_entries >= 1 && static_cast<std::uint64_t>(n_entries) <= kMaxTensorCount, what,
                  ": entry count ", n_entries, " is not between 1 and ", kMaxTensorCount,
                  " (not a llama.cpp imatrix.dat or GGUF imatrix?)");
  for (std::int32_t i = 0; i < n_entries; ++i) {
    const std::int32_t len = c.read<std::int32_t>("name length");
    detail::require(len >= 1 && static_cast<std::uint64_t>(len) <= kMaxNameBytes, what, ": entry ", i,
                    " has name length ", len, " (expected 1 to ", kMaxNameBytes, ")");
    std::string name = c.string(static_cast<std::uint64_t>(len), "entry name");
    const std::int32_t ncall = c.read<std::int32_t>("ncall");
    const std::int32_t nval = c.read<std::int32_t>("value count");
    detail::require(ncall >= 1, what, ": entry '", name, "' has ncall ", ncall,
                    " (expected >= 1: llama-imatrix only stores entries that saw data)");
    detail::require(nval >= 1, what, ": entry '", name, "' has ", nval, " values (expected >= 1)");
    const std::uint8_t* p = c.take(checked_mul(static_cast<std::uint64_t>(nval), 4, "imatrix values"), "entry values");
    ImatrixEntry e;
    e.values.resize(static_cast<std::size_t>(nval));
    std::memcpy(e.values.data(), p, e.values.size() * 4);
    check_values(e.values.data(), e.values.size(), what, name);
    for (float& v : e.values) v /= static_cast<float>(ncall);
    e.cols = e.values.size();
    e.counts = {ncall};
    detail::require(m.per_tensor.emplace(name, std::move(e)).second, what, ": entry '", name, "' is repeated");
  }
  // Trailer: chunk count, then the dataset name; llama.cpp treats both as optional.
  if (c.remaining() > 0) {
    const std::int32_t chunks = c.read<std::int32_t>("chunk count");
    detail::require(chunks >= 0, what, ": chunk count ", chunks, " is negative");
    m.chunks = static_cast<std::uint32_t>(chunks);
    if (c.remaining() > 0) {
      const std::int32_t len = c.read<std::int32_t>("dataset name length");
      detail::require(len >= 0 && static_cast<std::uint64_t>(len) <= kMaxNameBytes, what, ": dataset name length ",
                      len, " is not between 0 and ", kMaxNameBytes);
      std::string dataset = c.string(static_cast<std::uint64_t>(len), "dataset name");
      if (!dataset.empty()) m.datasets.push_back(std::move(dataset));
    }
  }
  detail::require(c.remaining() == 0, what, ": ", c.remaining(), " unexpected bytes after the dataset name at byte ",
                  c.position());
  return m;
}

inline bool strip_suffix(std::string& s, const char* suffix) {
  const std::size_t n = std::strlen(suffix);
  if (s.size() <= n || s.compare(s.size() - n, n, suffix) != 0) return false;
  s.resize(s.size() - n);
  return true;
}

// A tensor's shape as {cols, matrices}: ggml writes {n} for 1 × n and {n, m} otherwise;
// any further dimension must be 1.
inline std::pair<std::uint64_t, std::uint64_t> two_dims(const GgufTensorInfo& t, const std::string& what) {
  for (std::size_t d = 2; d < t.ne.size(); ++d)
    detail::require(t.ne[d] == 1, what, ": tensor '", t.name, "' has ", t.ne.size(),
                    " dimensions with ne[", d, "] = ", t.ne[d], " (expected {columns, matrices})");
  return {t.ne[0], t.ne.size() > 1 ? t.ne[1] : 1};
}

inline ImportanceMatrix parse_gguf(const GgufReader& r, const std::string& what) {
  ImportanceMatrix m;
  m.format = ImatrixFormat::gguf;
  const GgufMetadata& meta = r.typed_metadata();
  if (meta.contains("general.type")) {
    const GgufValue& v = meta.at("general.type");
    detail::require(v.type == GgufValueType::string && v.text == "imatrix", what, ": general.type is '", v.render(),
                    "', expected 'imatrix' (is this a model file?)");
  }
  auto u32_key = [&](const char* key) -> std::uint32_t {
    if (!meta.contains(key)) return 0;
    const GgufValue& v = meta.at(key);
    detail::require(v.type == GgufValueType::u32, what, ": ", key, " has type ",
                    gguf_value_type_name(static_cast<std::uint32_t>(v.type)), ", expected u32");
    return static_cast<std::uint32_t>(v.integer);
  };
  m.chunks = u32_key("imatrix.chunk_count");
  m.chunk_size = u32_key("imatrix.chunk_size");
  if (meta.contains("imatrix.datasets")) {
    const GgufValue& v = meta.at("imatrix.datasets");
    detail::require(v.is_array() && v.element_type == GgufValueType::string, what,
                    ": imatrix.datasets is not an array of strings");
    m.datasets = v.strings;
  }

  std::map<std::string, std::pair<const GgufTensorInfo*, const GgufTensorInfo*>> pairs;  // sums, counts
  for (const auto& t : r.tensors()) {
    std::string base = t.name;
    if (strip_suffix(base, ".in_sum2"))
      pairs[base].first = &t;
    else if (strip_suffix(base, ".counts"))
      pairs[base].second = &t;
    else
      detail::throw_error(what, ": unexpected tensor '", t.name,
                          "' (an imatrix holds only <weight>.in_sum2 and <weight>.counts; is this a model file?)");
  }
  detail::require(!pairs.empty(), what, ": no importance entries (no tensors)");
  const auto f32 = static_cast<std::uint32_t>(GgmlType::F32);
  for (const auto& [name, p] : pairs) {
    detail::require(p.first != nullptr && p.second != nullptr, what, ": weight '", name, "' has ",
                    p.first ? ".in_sum2 but no .counts" : ".counts but no .in_sum2");
    const GgufTensorInfo& sums = *p.first;
    const GgufTensorInfo& cnts = *p.second;
    detail::require(sums.type == f32 && cnts.type == f32, what, ": '", name, "' sums and counts must be F32 (got ",
                    ggml_type_name(sums.type), ", ", ggml_type_name(cnts.type), ")");
    const auto [cols, mats] = two_dims(sums, what);
    const auto [one, cmats] = two_dims(cnts, what);
    detail::require(cols >= 1 && mats >= 1, what, ": '", sums.name, "' is empty");
    detail::require(one == 1 && cmats == mats, what, ": '", cnts.name, "' has shape {", one, ", ", cmats,
                    "}, expected {1, ", mats, "} to match '", sums.name, "'");
    detail::require(cols * mats <= (std::uint64_t{1} << 32), what, ": '", sums.name, "' has ", cols, " x ", mats,
                    " values, above the limit 2^32");
    const ByteView sb = r.bytes(sums), cb = r.bytes(cnts);
    ImatrixEntry e;
    e.cols = static_cast<std::size_t>(cols);
    e.matrices = static_cast<std::size_t>(mats);
    e.values.resize(e.cols * e.matrices);
    e.counts.resize(e.matrices);
    for (std::size_t k = 0; k < e.matrices; ++k) {
      const float c = load_f32(cb.data + 4 * k);
      detail::require(std::isfinite(c) && c >= 0.0f && c == std::floor(c) && c <= static_cast<float>(kMaxCount), what,
                      ": '", cnts.name, "' count ", k, " is ", c, " (expected a whole number >= 0)");
      e.counts[k] = static_cast<std::int64_t>(c);
      float* out = e.values.data() + k * e.cols;
      for (std::size_t j = 0; j < e.cols; ++j) out[j] = load_f32(sb.data + 4 * (k * e.cols + j));
      check_values(out, e.cols, what, name);
      if (e.counts[k] == 0) {
        for (std::size_t j = 0; j < e.cols; ++j)
          detail::require(out[j] == 0.0f, what, ": '", sums.name, "' matrix ", k,
                          " has count 0 but a non-zero sum at column ", j);
        std::fill(out, out + e.cols, 1.0f);  // never used: no information, uniform importance
      } else {
        for (std::size_t j = 0; j < e.cols; ++j) out[j] /= c;  // a division, as llama-quantize does
      }
    }
    m.per_tensor.emplace(name, std::move(e));
  }
  return m;
}

inline bool has_gguf_magic(ByteView b) { return b.size >= 4 && std::memcmp(b.data, "GGUF", 4) == 0; }

// Runs f, prefixing any nibble::Error from the GGUF layer with the file's name.
template <class F>
auto named(const std::string& what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.rfind("nibble: ", 0) == 0) msg = msg.substr(8);
    if (msg.rfind(what, 0) == 0) throw;
    throw Error(what + ": " + msg);
  }
}

}  // namespace imatrix_detail

// Reads an importance matrix in either layout from memory (the fuzzers' entry point).
inline ImportanceMatrix imatrix_from_bytes(std::vector<std::uint8_t> bytes, const std::string& name = "<memory>") {
  const std::string what = "imatrix '" + name + "'";
  if (imatrix_detail::has_gguf_magic({bytes.data(), bytes.size()}))
    return imatrix_detail::named(what, [&] {
      return imatrix_detail::parse_gguf(GgufReader::from_bytes(std::move(bytes)), what);
    });
  return imatrix_detail::named(what, [&] { return imatrix_detail::parse_legacy({bytes.data(), bytes.size()}, what); });
}

// Reads llama-imatrix's output, GGUF (imatrix.gguf) or legacy (imatrix.dat).
inline ImportanceMatrix load_imatrix(const std::string& path) {
  const std::string what = "imatrix '" + path + "'";
  const FileBytes file = FileBytes::open(path);
  if (imatrix_detail::has_gguf_magic(file.view()))
    return imatrix_detail::named(what, [&] { return imatrix_detail::parse_gguf(GgufReader::open(path), what); });
  return imatrix_detail::named(what, [&] { return imatrix_detail::parse_legacy(file.view(), what); });
}

}  // namespace nibble::io
