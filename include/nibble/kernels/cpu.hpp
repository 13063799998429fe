// CPU feature detection and the choice of kernel path (ISA).
//
// x86-64: CPUID + XGETBV, read once and cached. A path counts as available only
// when the CPU has the instructions AND the OS saves the wide registers (XCR0).
// AArch64: NEON is architecturally mandatory, so it is always available there;
// dotprod is chosen at compile time (__ARM_FEATURE_DOTPROD).
//
// The selected path is, in order: the one forced with force_isa(), else the
// environment variable NIBBLE_ISA=scalar|avx2|avx512|neon, else the best detected.
// Asking for a path this CPU or this build cannot run throws nibble::Error.
//
// avx512 needs AVX-512 F, BW and VL (plus what avx2 needs); VNNI is used when
// present (Ice Lake and later, Zen 4), else its kernels use maddubs like AVX2.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "../core/error.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#define NIBBLE_X86_64 1
#if defined(__GNUC__) || defined(__clang__)
#include <cpuid.h>
#define NIBBLE_HAVE_AVX2_KERNELS 1
#endif
#endif

#if defined(__aarch64__) && defined(__ARM_NEON)
#define NIBBLE_HAVE_NEON_KERNELS 1
#endif

namespace nibble {

enum class Isa { scalar, avx2, avx512, neon };

inline const char* to_string(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    case Isa::neon: return "neon";
  }
  return "unknown";
}

inline Isa isa_from_string(const std::string& s) {
  if (s == "scalar") return Isa::scalar;
  if (s == "avx2") return Isa::avx2;
  if (s == "avx512") return Isa::avx512;
  if (s == "neon") return Isa::neon;
  detail::throw_error("unknown ISA '", s, "' (expected scalar, avx2, avx512 or neon)");
}

// What the CPU (and OS) offers, independent of which kernels this build contains.
struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;   // with OS support for YMM state
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false;  // with OS support for ZMM state
  bool avx512vbmi = false;  // vpermb: the VNNI panel kernels' table lookups
  bool neon = false, neon_dotprod = false;         // neon_dotprod: compiled in (compile-time feature)
};

namespace detail {

inline CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return f;
  const bool osxsave = (c >> 27) & 1u;
  const bool cpu_fma = (c >> 12) & 1u, cpu_f16c = (c >> 29) & 1u, cpu_avx = (c >> 28) & 1u;
  std::uint64_t xcr0 = 0;
  if (osxsave) {
    std::uint32_t lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<std::uint64_t>(hi) << 32) | lo;
  }
  const bool ymm_state = (xcr0 & 0x6u) == 0x6u;     // SSE and AVX state saved by the OS
  const bool zmm_state = (xcr0 & 0xE6u) == 0xE6u;   // plus opmask and ZMM state
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  unsigned b7 = 0, c7 = 0;
  if (max_leaf >= 7) {
    unsigned a7 = 0, d7 = 0;
    __cpuid_count(7, 0, a7, b7, c7, d7);
  }
  f.avx2 = cpu_avx && ymm_state && ((b7 >> 5) & 1u);
  f.fma = f.avx2 && cpu_fma;
  f.f16c = f.avx2 && cpu_f16c;
  f.avx512f = zmm_state && ((b7 >> 16) & 1u);
  f.avx512bw = f.avx512f && ((b7 >> 30) & 1u);
  f.avx512vl = f.avx512f && ((b7 >> 31) & 1u);
  f.avx512vnni = f.avx512f && ((c7 >> 11) & 1u);
  f.avx512vbmi = f.avx512f && ((c7 >> 1) & 1u);
#endif
#if defined(NIBBLE_HAVE_NEON_KERNELS)
  f.neon = true;
#if defined(__ARM_FEATURE_DOTPROD)
  f.neon_dotprod = true;
#endif
#endif
  return f;
}

// -1: nothing forced; otherwise an Isa value.
inline std::atomic<int>& forced_isa_slot() {
  static std::atomic<int> slot{-1};
  return slot;
}

}  // namespace detail

inline const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detail::detect_cpu_features();  // thread-safe, once
  return features;
}

namespace detail {
// Empty if this build and CPU can run `isa`, else the reason it cannot (a literal: the
// kernels ask on every call, and a std::string of the reason allocated each time).
inline const char* isa_unavailable_why(Isa isa) {
  const CpuFeatures& f = cpu_features();
  switch (isa) {
    case Isa::scalar: return "";
    case Isa::avx2:
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
      return (f.avx2 && f.fma && f.f16c) ? "" : "this CPU lacks AVX2+FMA+F16C";
#else
      return "AVX2 kernels are only built for x86-64 with GCC or Clang";
#endif
    case Isa::avx512:
#if defined(NIBBLE_HAVE_AVX2_KERNELS)
      return (f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl)
                 ? ""
                 : "this CPU (or OS) lacks AVX-512 F+BW+VL";
#else
      return "AVX-512 kernels are only built for x86-64 with GCC or Clang";
#endif
    case Isa::neon:
#if defined(NIBBLE_HAVE_NEON_KERNELS)
      return "";
#else
      return "NEON kernels exist only on AArch64";
#endif
  }
  return "unknown ISA";
}
}  // namespace detail

// Empty if this build and CPU can run `isa`, else the reason it cannot.
inline std::string isa_unavailable_reason(Isa isa) { return detail::isa_unavailable_why(isa); }

inline bool isa_available(Isa isa) { return *detail::isa_unavailable_why(isa) == '\0'; }

// The best path this build can run on this CPU (found once: the CPU does not change).
inline Isa detected_isa() {
  static const Isa best = [] {
    if (isa_available(Isa::neon)) return Isa::neon;
    if (isa_available(Isa::avx512)) return Isa::avx512;
    if (isa_available(Isa::avx2)) return Isa::avx2;
    return Isa::scalar;
  }();
  return best;
}

// Forces every later kernel call onto `isa`; throws if it is not available.
inline void force_isa(Isa isa) {
  const std::string why = isa_unavailable_reason(isa);
  detail::require(why.empty(), "cannot force ISA ", to_string(isa), ": ", why);
  detail::forced_isa_slot().store(static_cast<int>(isa));
}

// Undoes force_isa(): back to NIBBLE_ISA or detection.
inline void clear_forced_isa() { detail::forced_isa_slot().store(-1); }

// The path kernel calls take now. NIBBLE_ISA is read on every call (cheap next to a
// GEMV), so a test or a user can change it at run time.
inline Isa selected_isa() {
  const int forced = detail::forced_isa_slot().load();
  if (forced >= 0) return static_cast<Isa>(forced);
  if (const char* env = std::getenv("NIBBLE_ISA"); env != nullptr && *env != '\0') {
    const Isa isa = isa_from_string(env);
    const char* why = detail::isa_unavailable_why(isa);
    detail::require(*why == '\0', "NIBBLE_ISA=", env, " cannot be used: ", why);
    return isa;
  }
  return detected_isa();
}

}  // namespace nibble
