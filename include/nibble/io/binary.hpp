// Building blocks shared by nibble's file readers and writers: a read-only memory
// map, a bounds-checked little-endian cursor, overflow-checked size arithmetic, and
// a writer that spills tensor data to a side file so a header that lists every
// tensor can be written first without holding the whole model in memory.
//
// Every reader works on a ByteView (pointer + size). Nothing outside that range is
// ever read: each access goes through Cursor, which throws nibble::Error naming the
// field that ran past the end.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/error.hpp"
#include "../core/half.hpp"

namespace nibble::io {

// Hard limits shared by the readers: a file may claim anything, these stop it from
// asking for absurd allocations before any byte is checked.
inline constexpr std::uint64_t kMaxTensorCount = 1u << 20;
inline constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;  // safetensors' own limit
inline constexpr std::uint64_t kMaxNameBytes = 1u << 16;
inline constexpr std::size_t kMaxDims = 8;
inline constexpr std::uint64_t kMaxDimension = 1ull << 48;  // any single dimension

struct ByteView {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
};

// a · b, throwing instead of wrapping.
inline std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const char* what) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a)
    detail::throw_error(what, ": size overflows 64 bits (", a, " x ", b, ")");
  return a * b;
}

inline std::uint64_t checked_add(std::uint64_t a, std::uint64_t b, const char* what) {
  if (b > std::numeric_limits<std::uint64_t>::max() - a)
    detail::throw_error(what, ": size overflows 64 bits (", a, " + ", b, ")");
  return a + b;
}

inline std::uint64_t align_up(std::uint64_t x, std::uint64_t alignment) {
  return checked_add(x, (alignment - x % alignment) % alignment, "alignment padding");
}

// FNV-1a, 64 bits: simple, byte-order free, good enough to catch corruption
// (not an integrity guarantee against an adversary).
inline constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ull;
inline std::uint64_t fnv1a64(const void* data, std::size_t n, std::uint64_t h = kFnvOffset) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

// Read-only memory map of a whole file (an empty file maps to an empty view).
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    detail::require(fd >= 0, "cannot open '", path, "': ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      detail::throw_error("'", path, "' is not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        detail::throw_error("cannot map '", path, "': ", std::strerror(errno));
      }
      data_ = static_cast<const std::uint8_t*>(p);
    }
    ::close(fd);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& o) noexcept { swap(o); }
  MappedFile& operator=(MappedFile&& o) noexcept {
    swap(o);
    return *this;
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<std::uint8_t*>(data_), size_);
  }

  ByteView view() const { return {data_, size_}; }

  // Tells the kernel a range was consumed, so a streaming pass over a model larger
  // than RAM does not keep its pages resident.
  void release(std::size_t offset, std::size_t length) const {
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t begin = offset / page * page;
    if (data_ != nullptr && begin < size_)
      ::madvise(const_cast<std::uint8_t*>(data_) + begin, std::min(size_ - begin, offset + length - begin),
                MADV_DONTNEED);
  }

 private:
  void swap(MappedFile& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
  }
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// Either a memory map or an owned buffer; readers keep one so views stay valid.
struct FileBytes {
  std::shared_ptr<MappedFile> map;
  std::shared_ptr<std::vector<std::uint8_t>> owned;
  ByteView view() const {
    if (map) return map->view();
    if (owned) return {owned->data(), owned->size()};
    return {};
  }
  static FileBytes open(const std::string& path) {
    FileBytes f;
    f.map = std::make_shared<MappedFile>(path);
    return f;
  }
  static FileBytes from_vector(std::vector<std::uint8_t> bytes) {
    FileBytes f;
    f.owned = std::make_shared<std::vector<std::uint8_t>>(std::move(bytes));
    return f;
  }
};

// Sequential little-endian reader over a ByteView. `what` names the file kind in errors.
class Cursor {
 public:
  Cursor(ByteView bytes, const char* what, std::size_t pos = 0) : bytes_(bytes), what_(what), pos_(pos) {}

  std::size_t position() const { return pos_; }
  std::size_t remaining() const { return pos_ <= bytes_.size ? bytes_.size - pos_ : 0; }

  const std::uint8_t* take(std::uint64_t n, const char* field) {
    if (n > remaining())
      detail::throw_error(what_, ": truncated while reading ", field, " at byte ", pos_, " (needs ", n,
                          " bytes, ", remaining(), " left)");
    const std::uint8_t* p = bytes_.data + pos_;
    pos_ += static_cast<std::size_t>(n);
    return p;
  }
  template <class T>
  T read(const char* field) {
    T v;
    std::memcpy(&v, take(sizeof(T), field), sizeof(T));  // little-endian hosts only (x86, AArch64)
    return v;
  }
  std::uint8_t u8(const char* f) { return read<std::uint8_t>(f); }
  std::uint32_t u32(const char* f) { return read<std::uint32_t>(f); }
  std::uint64_t u64(const char* f) { return read<std::uint64_t>(f); }
  float f32(const char* f) { return read<float>(f); }

  std::string string(std::uint64_t n, const char* field) {
    if (n > kMaxNameBytes) detail::throw_error(what_, ": ", field, " length ", n, " exceeds the limit ", kMaxNameBytes);
    const std::uint8_t* p = take(n, field);
    return std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(n));
  }

 private:
  ByteView bytes_;
  const char* what_;
  std::size_t pos_;
};

// Little-endian appends to a byte vector (headers and indexes are built in memory).
inline void put_bytes(std::vector<std::uint8_t>& out, const void* p, std::size_t n) {
  const auto* b = static_cast<const std::uint8_t*>(p);
  out.insert(out.end(), b, b + n);
}
template <class T>
void put(std::vector<std::uint8_t>& out, T v) {
  put_bytes(out, &v, sizeof v);
}

// A std::FILE* that throws on every failed write and closes itself.
class OutputFile {
 public:
  OutputFile() = default;
  OutputFile(const std::string& path, const char* mode) : path_(path), f_(std::fopen(path.c_str(), mode)) {
    detail::require(f_ != nullptr, "cannot open '", path, "' for writing: ", std::strerror(errno));
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;
  OutputFile(OutputFile&& o) noexcept : path_(std::move(o.path_)), f_(std::exchange(o.f_, nullptr)) {}
  OutputFile& operator=(OutputFile&& o) noexcept {
    close_quietly();
    path_ = std::move(o.path_);
    f_ = std::exchange(o.f_, nullptr);
    return *this;
  }
  ~OutputFile() { close_quietly(); }

  bool is_open() const { return f_ != nullptr; }
  void write(const void* p, std::size_t n) {
    if (n > 0 && std::fwrite(p, 1, n, f_) != n)
      detail::throw_error("write to '", path_, "' failed: ", std::strerror(errno));
  }
  void write(const std::vector<std::uint8_t>& v) { write(v.data(), v.size()); }
  void zeros(std::size_t n) {
    static const std::uint8_t pad[64] = {};
    while (n > 0) {
      const std::size_t k = std::min<std::size_t>(n, sizeof pad);
      write(pad, k);
      n -= k;
    }
  }
  std::uint64_t tell() const { return static_cast<std::uint64_t>(std::ftell(f_)); }
  void seek(std::uint64_t pos) {
    detail::require(std::fseek(f_, static_cast<long>(pos), SEEK_SET) == 0, "seek in '", path_, "' failed");
  }
  // Copies everything from `src` (rewound) to this file in 1 MiB chunks.
  void append_file(std::FILE* src) {
    std::rewind(src);
    std::vector<std::uint8_t> buf(1u << 20);
    for (;;) {
      const std::size_t n = std::fread(buf.data(), 1, buf.size(), src);
      write(buf.data(), n);
      if (n < buf.size()) break;
    }
    detail::require(!std::ferror(src), "reading the spill file for '", path_, "' failed");
  }
  void close() {
    if (f_ == nullptr) return;
    const bool ok = std::fflush(f_) == 0;
    const bool closed = std::fclose(f_) == 0;
    f_ = nullptr;
    detail::require(ok && closed, "closing '", path_, "' failed: ", std::strerror(errno));
  }
  std::FILE* handle() const { return f_; }
  const std::string& path() const { return path_; }

 private:
  void close_quietly() {
    if (f_ != nullptr) std::fclose(f_);
    f_ = nullptr;
  }
  std::string path_;
  std::FILE* f_ = nullptr;
};

// Tensor data goes to `<path>.part` as it arrives; finish() writes the header and
// then copies the data behind it. Peak memory is one tensor, whatever the model size.
class SpillFile {
 public:
  explicit SpillFile(const std::string& final_path)
      : final_path_(final_path), spill_(final_path + ".part", "wb+") {}
  SpillFile(SpillFile&&) = default;
  ~SpillFile() {
    if (spill_.is_open()) {
      spill_ = OutputFile();
      std::remove((final_path_ + ".part").c_str());
    }
  }

  std::uint64_t size() const { return size_; }
  void write(const void* p, std::size_t n) {
    spill_.write(p, n);
    size_ += n;
  }
  void pad_to(std::uint64_t alignment) {
    const std::uint64_t target = align_up(size_, alignment);
    spill_.zeros(static_cast<std::size_t>(target - size_));
    size_ = target;
  }
  // Writes header, then the spilled data, to the final path.
  void finish(const std::vector<std::uint8_t>& header) {
    detail::require(spill_.is_open(), "file '", final_path_, "' was already finished");
    std::fflush(spill_.handle());
    // Assembled under a temporary name and renamed, so an interrupted or failed write
    // never leaves a truncated file under the final name.
    const std::string assembling = final_path_ + ".tmp";
    try {
      OutputFile out(assembling, "wb");
      out.write(header);
      out.append_file(spill_.handle());
      out.close();
    } catch (...) {
      std::remove(assembling.c_str());
      throw;
    }
    spill_ = OutputFile();
    std::remove((final_path_ + ".part").c_str());
    if (std::rename(assembling.c_str(), final_path_.c_str()) != 0) {
      const int err = errno;
      std::remove(assembling.c_str());
      detail::throw_error("cannot rename '", assembling, "' to '", final_path_, "': ", std::strerror(err));
    }
  }

 private:
  std::string final_path_;
  OutputFile spill_;
  std::uint64_t size_ = 0;
};

// Element reads from possibly unaligned storage.
inline float load_f32(const std::uint8_t* p) {
  float v;
  std::memcpy(&v, p, 4);
  return v;
}
inline std::uint16_t load_u16(const std::uint8_t* p) {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline std::uint32_t load_u32(const std::uint8_t* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace nibble::io
