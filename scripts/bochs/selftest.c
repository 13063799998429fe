// Self-test for run_static.sh: proves the emulated CPU really executes AVX-512
// and VNNI, and gives instruction loops of known length for timing bochs.
//   selftest                    feature report + AVX-512F/BW/VL (+VNNI if present) checks
//   selftest --require-vnni     as above, but VNNI missing is a failure (exit 4)
//   selftest --exit=N           run the checks, then exit N (tests status propagation)
//   selftest --abort            die by SIGABRT (tests signal reporting)
//   selftest --bench-int=M      M million iterations of 10 scalar instructions
//   selftest --bench-vnni=M     M million iterations of 8 zmm vpdpbusd + 2 scalar
// Exit: 0 ok, 1 wrong result, 2 AVX-512F/BW/VL or its OS state missing, 4 see above.
// Build: gcc -static -O2 -o selftest selftest.c
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

static uint64_t xgetbv0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t)hi << 32 | lo;
}

static uint8_t a[64];  // unsigned operand of vpdpbusd
static int8_t b[64];   // signed operand
static int32_t c[16];  // accumulator

static void fill(void) {
  uint32_t x = 12345;
  for (int i = 0; i < 64; i++) {
    x = x * 1103515245u + 12345u;
    a[i] = (uint8_t)(x >> 16);
    b[i] = (int8_t)(x >> 8);
  }
  for (int i = 0; i < 16; i++) c[i] = (int32_t)(i * 1000 - 7777);
  a[0] = 255, b[0] = -128, a[1] = 255, b[1] = -128;  // extremes of the u8*s8 product
}

// Masked add, a BW saturating add and a VL 256-bit op, each checked element-wise.
AVX512 static int check_avx512(void) {
  int bad = 0;
  __m512i va = _mm512_loadu_si512(a), vb = _mm512_loadu_si512(b), vc = _mm512_loadu_si512(c);
  int32_t sum[16];
  _mm512_storeu_si512(sum, _mm512_mask_add_epi32(vc, 0x5555, vc, va));
  for (int i = 0; i < 16; i++) {
    int32_t ai;
    memcpy(&ai, a + 4 * i, 4);
    bad += sum[i] != (i % 2 ? c[i] : c[i] + ai);
  }
  int8_t sat[64];
  _mm512_storeu_si512(sat, _mm512_adds_epi8(vb, vb));
  for (int i = 0; i < 64; i++) {
    int s = 2 * b[i];
    bad += sat[i] != (s > 127 ? 127 : s < -128 ? -128 : s);
  }
  int32_t mx[8];
  _mm256_storeu_si256((__m256i *)mx, _mm256_max_epi32(_mm256_loadu_si256((const __m256i *)c),
                                                     _mm256_set1_epi32(0)));
  for (int i = 0; i < 8; i++) bad += mx[i] != (c[i] > 0 ? c[i] : 0);
  return bad;
}

// vpdpbusd at 512 and 256 bits against the scalar definition.
VNNI static int check_vnni(void) {
  int bad = 0;
  int32_t r512[16], r256[8];
  _mm512_storeu_si512(r512, _mm512_dpbusd_epi32(_mm512_loadu_si512(c), _mm512_loadu_si512(a),
                                                _mm512_loadu_si512(b)));
  _mm256_storeu_si256((__m256i *)r256,
                      _mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)c),
                                          _mm256_loadu_si256((const __m256i *)a),
                                          _mm256_loadu_si256((const __m256i *)b)));
  for (int i = 0; i < 16; i++) {
    int32_t want = c[i];
    for (int k = 0; k < 4; k++) want += a[4 * i + k] * b[4 * i + k];
    bad += r512[i] != want;
    if (i < 8) bad += r256[i] != want;
  }
  return bad;
}

// Each bench prints a line before and after its loop so the host can time it
// from when the lines appear on the serial log.
static void bench_int(long m) {
  uint64_t n = (uint64_t)m * 1000000, x = 0;
  printf("bench-int: start\n");
  fflush(stdout);
  __asm__ volatile(
      "1:\n\tadd $1, %1\n\tadd $2, %1\n\tadd $3, %1\n\tadd $4, %1\n\t"
      "add $5, %1\n\tadd $6, %1\n\tadd $7, %1\n\tadd $8, %1\n\tdec %0\n\tjnz 1b"
      : "+r"(n), "+r"(x));
  printf("bench-int: done, %ld M iterations of 10 insns, x=%llu\n", m, (unsigned long long)x);
}

VNNI static void bench_vnni(long m) {
  uint64_t n = (uint64_t)m * 1000000;
  printf("bench-vnni: start\n");
  fflush(stdout);
  __m512i acc = _mm512_loadu_si512(c), va = _mm512_loadu_si512(a), vb = _mm512_loadu_si512(b);
  __asm__ volatile(
      "1:\n\t"
      "vpdpbusd %3, %2, %0\n\tvpdpbusd %3, %2, %0\n\tvpdpbusd %3, %2, %0\n\tvpdpbusd %3, %2, %0\n\t"
      "vpdpbusd %3, %2, %0\n\tvpdpbusd %3, %2, %0\n\tvpdpbusd %3, %2, %0\n\tvpdpbusd %3, %2, %0\n\t"
      "dec %1\n\tjnz 1b"
      : "+v"(acc), "+r"(n) : "v"(va), "v"(vb) : "cc");
  int32_t out[16];
  _mm512_storeu_si512(out, acc);
  printf("bench-vnni: done, %ld M iterations of 10 insns, lane0=%d\n", m, out[0]);
}

int main(int argc, char **argv) {
  int exit_with = -1, require_vnni = 0;
  long bint = 0, bvnni = 0;
  for (int i = 1; i < argc; i++) {
    printf("argv[%d]=\"%s\"\n", i, argv[i]);
    if (!strncmp(argv[i], "--exit=", 7)) exit_with = atoi(argv[i] + 7);
    else if (!strcmp(argv[i], "--abort")) fflush(stdout), abort();
    else if (!strcmp(argv[i], "--require-vnni")) require_vnni = 1;
    else if (!strncmp(argv[i], "--bench-int=", 12)) bint = atol(argv[i] + 12);
    else if (!strncmp(argv[i], "--bench-vnni=", 13)) bvnni = atol(argv[i] + 13);
  }
  unsigned eax, ebx, ecx, edx;
  __cpuid(0, eax, ebx, ecx, edx);
  unsigned max_leaf = eax;
  char vendor[13] = {0};
  memcpy(vendor, &ebx, 4), memcpy(vendor + 4, &edx, 4), memcpy(vendor + 8, &ecx, 4);
  __cpuid(1, eax, ebx, ecx, edx);
  int osxsave = ecx >> 27 & 1;
  unsigned b7 = 0, c7 = 0;
  if (max_leaf >= 7) __cpuid_count(7, 0, eax, b7, c7, edx);
  int f = b7 >> 16 & 1, bw = b7 >> 30 & 1, vl = b7 >> 31 & 1, vnni = c7 >> 11 & 1;
  uint64_t xcr0 = osxsave ? xgetbv0() : 0;
  int zmm_state = (xcr0 & 0xe6) == 0xe6;  // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
  printf("cpu vendor=%s leaf7 ebx=0x%08x ecx=0x%08x\n", vendor, b7, c7);
  printf("avx512f=%d avx512bw=%d avx512vl=%d avx512vnni=%d osxsave=%d xcr0=%#llx zmm_state=%d\n",
         f, bw, vl, vnni, osxsave, (unsigned long long)xcr0, zmm_state);
  fflush(stdout);
  if (bint) bench_int(bint);
  if (!(f && bw && vl && zmm_state)) {
    puts("AVX-512F/BW/VL not usable: nothing checked");
    return 2;
  }
  fill();
  int bad = check_avx512();
  printf("avx512 f/bw/vl check: %s (%d wrong)\n", bad ? "FAIL" : "ok", bad);
  if (vnni) {
    int bad_vnni = check_vnni();
    printf("vnni vpdpbusd check: %s (%d wrong)\n", bad_vnni ? "FAIL" : "ok", bad_vnni);
    bad += bad_vnni;
  } else {
    puts("vnni vpdpbusd check: skipped, CPU has no AVX512_VNNI");
  }
  fflush(stdout);
  if (bvnni && vnni) bench_vnni(bvnni);
  fflush(stdout);
  if (bad) return 1;
  if (require_vnni && !vnni) return 4;
  return exit_with >= 0 ? exit_with : 0;
}
