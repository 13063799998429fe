// GGUF metadata (the key/value section): typed values, including arrays, and the parser
// GgufReader uses for them.
//
// Value encoding, little-endian: u32 value_type, then the value; a string is u64 length +
// bytes; an array is u32 element_type + u64 count + count values (nibble, like llama.cpp,
// does not accept nested arrays). Tokenizers live here: tokenizer.ggml.tokens (string
// array), .token_type (i32 array), .merges (string array), .bos_token_id (u32), ...
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "binary.hpp"

namespace nibble::io {

enum class GgufValueType : std::uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9,
  u64 = 10, i64 = 11, f64 = 12
};

inline const char* gguf_value_type_name(std::uint32_t t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array",
                                "u64", "i64", "f64"};
  return t < 13 ? names[t] : "unknown";
}

// One metadata value. Integers of every width are held as int64 / uint64 (`integer`
// keeps the value exactly when it fits in int64, which GGUF's u64 values in practice do),
// floats as double. Arrays hold their elements in the vector of their element kind.
struct GgufValue {
  GgufValueType type = GgufValueType::u8;
  GgufValueType element_type = GgufValueType::u8;  // arrays only
  std::int64_t integer = 0;                        // every integer type and bool
  std::uint64_t unsigned_integer = 0;              // u64 exactly
  double real = 0.0;                               // f32 / f64
  std::string text;                                // string
  std::vector<std::string> strings;                // array of string
  std::vector<std::int64_t> integers;              // array of any integer type or bool
  std::vector<double> reals;                       // array of f32 / f64
  std::uint64_t array_size = 0;

  bool is_array() const { return type == GgufValueType::array; }
  static bool is_integer_type(GgufValueType t) {
    switch (t) {
      case GgufValueType::u8: case GgufValueType::i8: case GgufValueType::u16: case GgufValueType::i16:
      case GgufValueType::u32: case GgufValueType::i32: case GgufValueType::u64: case GgufValueType::i64:
      case GgufValueType::boolean:
        return true;
      default:
        return false;
    }
  }

  // Text form, as GgufReader::metadata() shows it ("[array of N]" for arrays).
  std::string render() const {
    switch (type) {
      case GgufValueType::string: return text;
      case GgufValueType::boolean: return integer ? "true" : "false";
      case GgufValueType::u64: return std::to_string(unsigned_integer);
      case GgufValueType::f32: case GgufValueType::f64: {
        // Enough digits to read back the same value (9 for f32, 17 for f64).
        char buf[40];
        std::snprintf(buf, sizeof buf, "%.*g", type == GgufValueType::f32 ? 9 : 17, real);
        return buf;
      }
      case GgufValueType::array: return "[array of " + std::to_string(array_size) + "]";
      default: return std::to_string(integer);
    }
  }
};

namespace gguf_detail {

// Reads one scalar of `type` into v (v.type already set by the caller for top-level values).
inline void read_scalar(Cursor& c, GgufValueType type, GgufValue& v) {
  switch (type) {
    case GgufValueType::u8: v.integer = c.u8("u8 value"); return;
    case GgufValueType::i8: v.integer = static_cast<std::int8_t>(c.u8("i8 value")); return;
    case GgufValueType::u16: v.integer = c.read<std::uint16_t>("u16 value"); return;
    case GgufValueType::i16: v.integer = c.read<std::int16_t>("i16 value"); return;
    case GgufValueType::u32: v.integer = c.u32("u32 value"); return;
    case GgufValueType::i32: v.integer = c.read<std::int32_t>("i32 value"); return;
    case GgufValueType::u64:
      v.unsigned_integer = c.u64("u64 value");
      v.integer = static_cast<std::int64_t>(v.unsigned_integer);
      return;
    case GgufValueType::i64: v.integer = c.read<std::int64_t>("i64 value"); return;
    case GgufValueType::f32: v.real = c.f32("f32 value"); return;
    case GgufValueType::f64: v.real = c.read<double>("f64 value"); return;
    case GgufValueType::boolean: {
      const std::uint8_t b = c.u8("bool value");
      detail::require(b <= 1, "GGUF: bool value ", int(b), " is not 0 or 1");
      v.integer = b;
      return;
    }
    case GgufValueType::string: v.text = c.string(c.u64("string length"), "string value"); return;
    case GgufValueType::array: break;
  }
  detail::throw_error("GGUF: unknown metadata value type ", static_cast<std::uint32_t>(type));
}

}  // namespace gguf_detail

inline constexpr std::uint64_t kMaxGgufArray = 1u << 24;

// Reads one value of `type` (a u32 from the file, validated here).
inline GgufValue read_gguf_value(Cursor& c, std::uint32_t type) {
  GgufValue v;
  detail::require(type <= 12, "GGUF: unknown metadata value type ", type);
  v.type = static_cast<GgufValueType>(type);
  if (v.type != GgufValueType::array) {
    gguf_detail::read_scalar(c, v.type, v);
    return v;
  }
  const std::uint32_t elem = c.u32("array element type");
  detail::require(elem <= 12, "GGUF: unknown array element type ", elem);
  detail::require(elem != static_cast<std::uint32_t>(GgufValueType::array), "GGUF: nested arrays are not supported");
  v.element_type = static_cast<GgufValueType>(elem);
  const std::uint64_t n = c.u64("array length");
  // Every element takes at least one byte, so a length beyond the bytes left is a lie.
  detail::require(n <= c.remaining(), "GGUF: array of ", n, " elements is longer than the ", c.remaining(),
                  " bytes left");
  // Metadata arrays are vocabularies at most (~10^5..10^6 entries); holding a hostile
  // file's billion-element array would take several times the file's size in memory.
  detail::require(n <= kMaxGgufArray, "GGUF: metadata array of ", n, " elements exceeds the limit ", kMaxGgufArray);
  v.array_size = n;
  GgufValue e;
  if (v.element_type == GgufValueType::string) {
    v.strings.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t i = 0; i < n; ++i) {
      gguf_detail::read_scalar(c, v.element_type, e);
      v.strings.push_back(std::move(e.text));
    }
  } else if (v.element_type == GgufValueType::f32 || v.element_type == GgufValueType::f64) {
    v.reals.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t i = 0; i < n; ++i) {
      gguf_detail::read_scalar(c, v.element_type, e);
      v.reals.push_back(e.real);
    }
  } else {
    v.integers.reserve(static_cast<std::size_t>(n));
    for (std::uint64_t i = 0; i < n; ++i) {
      gguf_detail::read_scalar(c, v.element_type, e);
      v.integers.push_back(e.integer);
    }
  }
  return v;
}

// The key/value section of a GGUF file with typed accessors. Every accessor names the
// key and the expected type when it throws.
class GgufMetadata {
 public:
  void set(const std::string& key, GgufValue v) {
    if (values_.count(key) == 0) order_.push_back(key);
    values_[key] = std::move(v);
  }
  // Removes a key (and frees its value); absent keys are ignored.
  void erase(const std::string& key) {
    if (values_.erase(key) != 0) order_.erase(std::find(order_.begin(), order_.end(), key));
  }
  // Keys in the order they were first set (a file's order, for a reader).
  const std::vector<std::string>& keys() const { return order_; }
  bool contains(const std::string& key) const { return values_.count(key) != 0; }
  const std::map<std::string, GgufValue>& values() const { return values_; }

  const GgufValue& at(const std::string& key) const {
    const auto it = values_.find(key);
    if (it == values_.end()) detail::throw_error("GGUF: metadata key '", key, "' is missing");
    return it->second;
  }

  const std::string& get_string(const std::string& key) const {
    const GgufValue& v = at(key);
    expect(key, v, v.type == GgufValueType::string, "a string");
    return v.text;
  }
  std::string get_string(const std::string& key, const std::string& fallback) const {
    return contains(key) ? get_string(key) : fallback;
  }
  // Any integer type (or bool); the value must fit in int64.
  std::int64_t get_int(const std::string& key) const {
    const GgufValue& v = at(key);
    expect(key, v, !v.is_array() && GgufValue::is_integer_type(v.type), "an integer");
    detail::require(v.type != GgufValueType::u64 || v.unsigned_integer <= static_cast<std::uint64_t>(INT64_MAX),
                    "GGUF: metadata '", key, "' = ", v.unsigned_integer, " does not fit in int64");
    return v.integer;
  }
  std::int64_t get_int(const std::string& key, std::int64_t fallback) const {
    return contains(key) ? get_int(key) : fallback;
  }
  bool get_bool(const std::string& key) const {
    const GgufValue& v = at(key);
    expect(key, v, v.type == GgufValueType::boolean, "a bool");
    return v.integer != 0;
  }
  bool get_bool(const std::string& key, bool fallback) const { return contains(key) ? get_bool(key) : fallback; }
  double get_float(const std::string& key) const {
    const GgufValue& v = at(key);
    expect(key, v, v.type == GgufValueType::f32 || v.type == GgufValueType::f64, "a float");
    return v.real;
  }

  const std::vector<std::string>& string_array(const std::string& key) const {
    const GgufValue& v = at(key);
    expect(key, v, v.is_array() && v.element_type == GgufValueType::string, "an array of strings");
    return v.strings;
  }
  // Arrays of any integer element type (or bool), widened to int64.
  const std::vector<std::int64_t>& int_array(const std::string& key) const {
    const GgufValue& v = at(key);
    expect(key, v, v.is_array() && GgufValue::is_integer_type(v.element_type), "an array of integers");
    return v.integers;
  }
  const std::vector<double>& float_array(const std::string& key) const {
    const GgufValue& v = at(key);
    expect(key, v, v.is_array() && (v.element_type == GgufValueType::f32 || v.element_type == GgufValueType::f64),
           "an array of floats");
    return v.reals;
  }

  // Every value as text, arrays as "[array of N]".
  std::map<std::string, std::string> render() const {
    std::map<std::string, std::string> out;
    for (const auto& [k, v] : values_) out[k] = v.render();
    return out;
  }

 private:
  static void expect(const std::string& key, const GgufValue& v, bool ok, const char* wanted) {
    if (ok) return;
    const std::string got = v.is_array() ? std::string("array of ") +
                                               gguf_value_type_name(static_cast<std::uint32_t>(v.element_type))
                                         : gguf_value_type_name(static_cast<std::uint32_t>(v.type));
    detail::throw_error("GGUF: metadata '", key, "' is ", got, ", expected ", wanted);
  }

  std::map<std::string, GgufValue> values_;
  std::vector<std::string> order_;
};

// Appends v's encoding (type tag, then the value, as read_gguf_value reads it) to out, so
// a value read from one file is written to another byte for byte.
inline void append_gguf_value(std::vector<std::uint8_t>& out, const GgufValue& v) {
  auto scalar = [&out](GgufValueType t, std::int64_t i, std::uint64_t u, double r, const std::string* text) {
    switch (t) {
      case GgufValueType::u8: case GgufValueType::boolean: put<std::uint8_t>(out, static_cast<std::uint8_t>(i)); return;
      case GgufValueType::i8: put<std::int8_t>(out, static_cast<std::int8_t>(i)); return;
      case GgufValueType::u16: put<std::uint16_t>(out, static_cast<std::uint16_t>(i)); return;
      case GgufValueType::i16: put<std::int16_t>(out, static_cast<std::int16_t>(i)); return;
      case GgufValueType::u32: put<std::uint32_t>(out, static_cast<std::uint32_t>(i)); return;
      case GgufValueType::i32: put<std::int32_t>(out, static_cast<std::int32_t>(i)); return;
      case GgufValueType::u64: put<std::uint64_t>(out, u); return;
      case GgufValueType::i64: put<std::int64_t>(out, i); return;
      case GgufValueType::f32: put<float>(out, static_cast<float>(r)); return;
      case GgufValueType::f64: put<double>(out, r); return;
      case GgufValueType::string:
        put<std::uint64_t>(out, text->size());
        put_bytes(out, text->data(), text->size());
        return;
      case GgufValueType::array: break;
    }
    detail::throw_error("GGUF: cannot write a value of type ", gguf_value_type_name(static_cast<std::uint32_t>(t)));
  };
  put<std::uint32_t>(out, static_cast<std::uint32_t>(v.type));
  if (!v.is_array()) {
    scalar(v.type, v.integer, v.unsigned_integer, v.real, &v.text);
    return;
  }
  detail::require(v.element_type != GgufValueType::array, "GGUF: nested arrays are not supported");
  put<std::uint32_t>(out, static_cast<std::uint32_t>(v.element_type));
  put<std::uint64_t>(out, v.array_size);
  for (std::uint64_t i = 0; i < v.array_size; ++i) {
    const std::size_t k = static_cast<std::size_t>(i);
    if (v.element_type == GgufValueType::string) scalar(v.element_type, 0, 0, 0.0, &v.strings.at(k));
    else if (v.element_type == GgufValueType::f32 || v.element_type == GgufValueType::f64)
      scalar(v.element_type, 0, 0, v.reals.at(k), nullptr);
    else
      scalar(v.element_type, v.integers.at(k), static_cast<std::uint64_t>(v.integers.at(k)), 0.0, nullptr);
  }
}

}  // namespace nibble::io
