// Weight storage on transparent huge pages.
//
// A decode step streams every weight once, far more than the caches hold, so each 4 KiB
// page of weights costs a TLB miss and a page walk. On Linux, memory advised with
// MADV_HUGEPAGE is backed by 2 MiB pages when first touched (where the system's
// transparent_hugepage setting is "madvise" or "always"): one TLB entry per 2 MiB. On an
// AMD EPYC Zen 4 (1 thread, cold 16384² GEMV, gemv_bench) that took a plain streaming
// read from 22.1 to 26.1 GB/s and the int4 g128 kernel from 18.0 to 20.3 GB/s.
//
// Two pieces:
//   advise_huge_pages(p, n)  asks for huge pages on the whole 2 MiB pages inside a
//                            buffer not yet touched (the edges stay on 4 KiB pages, so
//                            nothing is resident that the buffer does not use);
//   WeightArena              hands out many matrices' arrays from a few 2 MiB-aligned,
//                            advised mappings. A model's matrices are mostly smaller
//                            than 2 MiB (SmolLM2-135M's are 0.2–1 MB), and on their own
//                            would get no huge page at all.
// WeightBuffer<T> is the array a matrix keeps: n elements, shared ownership of the
// memory (the arena's mapping lives as long as any buffer carved from it), and copies
// share the elements — matrices fill their buffers once, when they are built.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "error.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace nibble {

inline constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;

namespace detail {

// Whole 2 MiB pages inside [p, p + bytes): huge pages when first touched (Linux; a no-op
// elsewhere, and harmless where the kernel has no transparent huge pages).
inline void advise_huge_pages(void* p, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (begin + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  const std::uintptr_t last = (begin + bytes) / kHugePageBytes * kHugePageBytes;
  if (last > first) (void)::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)p, (void)bytes;
#endif
}

// n value-initialized elements whose whole 2 MiB pages are huge pages (the vector's
// storage is advised between being allocated and being touched).
template <class T>
std::vector<T> huge_page_vector(std::size_t n) {
  std::vector<T> v;
  v.reserve(n);
  advise_huge_pages(v.data(), n * sizeof(T));
  v.resize(n);
  return v;
}

// Gives the heap's free pages back to the system (glibc's malloc_trim; elsewhere a
// no-op). When a model's matrices are repacked into a WeightArena, the heap blocks of
// the ones they were made from are freed, but glibc keeps such freed blocks resident for
// reuse that will not come: without this a SmolLM2-135M decode peaked 52 MiB higher.
inline void release_free_heap() {
#if defined(__GLIBC__)
  (void)::malloc_trim(0);
#endif
}

}  // namespace detail

// Many matrices' arrays, allocated one after the other (64-byte aligned) from chunks of
// at least chunk_bytes, each one mapping aligned to 2 MiB and advised for huge pages.
// When a chunk cannot take the next array, and in finish(), the chunk's unused tail is
// given back, so no page is resident that no array uses. Not thread-safe: one thread
// builds a model's matrices. The arena may be destroyed before the buffers it gave out.
class WeightArena {
 public:
  explicit WeightArena(std::size_t chunk_bytes = std::size_t{64} << 20) : chunk_bytes_(chunk_bytes) {
    detail::require(chunk_bytes_ > 0, "WeightArena: chunk size 0");
  }
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;
  ~WeightArena() { finish(); }

  // `bytes` zero bytes, 64-byte aligned, alive while the returned pointer (or a copy) is.
  std::shared_ptr<std::uint8_t> allocate(std::size_t bytes) {
    const std::size_t need = round_up(std::max<std::size_t>(bytes, 1), kAlign);
    if (!chunk_ || chunk_->size - used_ < need) {
      finish();
      chunk_ = std::make_shared<Chunk>(std::max(need, chunk_bytes_));
      used_ = 0;
    }
    std::uint8_t* p = chunk_->data + used_;
    used_ += need;
    return std::shared_ptr<std::uint8_t>(chunk_, p);  // shares the chunk's ownership
  }

  // Gives back the current chunk's unused tail; the next allocate() starts a new chunk.
  void finish() {
    if (chunk_) chunk_->trim(used_);
    chunk_.reset();
    used_ = 0;
  }

 private:
  static constexpr std::size_t kAlign = 64;
  static std::size_t round_up(std::size_t n, std::size_t a) {
    detail::require(n <= SIZE_MAX - a, "WeightArena: ", n, " bytes is too large");
    return (n + a - 1) / a * a;
  }

  // One mapping, its start aligned to 2 MiB (Linux: mmap with 2 MiB of slack, the
  // slack unmapped; elsewhere plain aligned operator new, no advice, no trimming).
  struct Chunk {
    explicit Chunk(std::size_t bytes) : size(round_up(bytes, kHugePageBytes)) {
#if defined(__linux__)
      const std::size_t span = size + kHugePageBytes;
      void* m = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (m == MAP_FAILED) throw std::bad_alloc();
      auto* base = static_cast<std::uint8_t*>(m);
      const auto addr = reinterpret_cast<std::uintptr_t>(base);
      auto* aligned = base + ((kHugePageBytes - addr % kHugePageBytes) % kHugePageBytes);
      if (aligned > base) ::munmap(base, static_cast<std::size_t>(aligned - base));
      const std::size_t after = static_cast<std::size_t>(base + span - (aligned + size));
      if (after > 0) ::munmap(aligned + size, after);
      data = aligned;
      detail::advise_huge_pages(data, size);  // anonymous mappings read as zeros
#else
      data = static_cast<std::uint8_t*>(::operator new(size, std::align_val_t{kAlign}));
      std::memset(data, 0, size);
#endif
      mapped = size;
    }
    Chunk(const Chunk&) = delete;
    Chunk& operator=(const Chunk&) = delete;
    ~Chunk() {
#if defined(__linux__)
      if (mapped > 0) ::munmap(data, mapped);
#else
      ::operator delete(data, std::align_val_t{kAlign});
#endif
    }
    // Unmaps what lies past the first `used` bytes (rounded up to a 4 KiB page).
    void trim(std::size_t used) {
#if defined(__linux__)
      const std::size_t keep = round_up(used, 4096);
      if (keep < mapped) {
        ::munmap(data + keep, mapped - keep);
        mapped = keep;
      }
#else
      (void)used;
#endif
    }
    std::uint8_t* data = nullptr;
    std::size_t size = 0;    // bytes the arena may hand out
    std::size_t mapped = 0;  // bytes still mapped (size until trimmed)
  };

  std::size_t chunk_bytes_;
  std::shared_ptr<Chunk> chunk_;
  std::size_t used_ = 0;
};

// n elements of a trivially copyable T with shared ownership: from a WeightArena when
// one is given, else from the heap (advised for huge pages when large enough to hold a
// whole one). Zero-filled when made; copies share the elements.
template <class T>
class WeightBuffer {
  static_assert(std::is_trivially_copyable<T>::value, "WeightBuffer holds plain values");

 public:
  WeightBuffer() = default;
  explicit WeightBuffer(std::size_t n, WeightArena* arena = nullptr) : n_(n) {
    if (n == 0) return;
    detail::require(n <= SIZE_MAX / sizeof(T), "WeightBuffer: ", n, " elements is too large");
    const std::size_t bytes = n * sizeof(T);
    if (arena != nullptr) {
      const std::shared_ptr<std::uint8_t> block = arena->allocate(bytes);
      data_ = std::shared_ptr<T>(block, reinterpret_cast<T*>(block.get()));
      return;
    }
    T* p = static_cast<T*>(::operator new(bytes, std::align_val_t{64}));
    detail::advise_huge_pages(p, bytes);  // before the first touch
    std::memset(p, 0, bytes);
    data_ = std::shared_ptr<T>(p, [](T* q) { ::operator delete(q, std::align_val_t{64}); });
  }

  std::size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }
  T& operator[](std::size_t i) { return data_.get()[i]; }
  const T& operator[](std::size_t i) const { return data_.get()[i]; }

 private:
  std::shared_ptr<T> data_;
  std::size_t n_ = 0;
};

}  // namespace nibble
