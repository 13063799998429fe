// WeightArena / WeightBuffer (core/weight_arena.hpp): what the arena hands out, that its
// mappings are advised for huge pages and trimmed to what was used, and that a
// PackedMatrix built in an arena is the same matrix as one built on its own.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "nibble/core/weight_arena.hpp"
#include "nibble/kernels/gemv.hpp"
#include "nibble/kernels/packed_matrix.hpp"
#include "packed_test_util.hpp"

namespace weight_arena_test {

using nibble::WeightArena;
using nibble::WeightBuffer;

#if defined(__linux__)
// The /proc/self/smaps entry of the mapping that holds address p: its end address and
// its VmFlags line. Empty flags when no mapping holds p.
struct Mapping {
  std::uintptr_t end = 0;
  std::string flags;
};
Mapping mapping_of(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool inside = false;
  Mapping m;
  while (std::getline(in, line)) {
    std::uintptr_t lo = 0, hi = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> lo >> dash >> hi && dash == '-' && line.find(':') > line.find(' ')) {
      inside = lo <= a && a < hi;
      if (inside) m.end = hi;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) {
      m.flags = line.substr(8);
      return m;
    }
  }
  return m;
}

bool emulated() {
#if defined(NIBBLE_TEST_USER_MODE_EMULATOR)
  return true;  // qemu-user's /proc/self/smaps is its own rendering of the guest's maps
#else
  const char* e = std::getenv("NIBBLE_TEST_USER_MODE_EMULATOR");
  return e != nullptr && *e != '\0';
#endif
}
#endif

TEST(WeightArena, HandsOutAlignedZeroedDisjointBlocksThatOutliveIt) {
  std::vector<std::shared_ptr<std::uint8_t>> blocks;
  const std::vector<std::size_t> sizes = {1, 63, 64, 65, 4096, 100000, 3 << 20, 0, 777};
  {
    WeightArena arena(std::size_t{4} << 20);  // small chunks: the 3 MiB block forces a second one
    for (std::size_t n : sizes) {
      blocks.push_back(arena.allocate(n));
      const std::uint8_t* p = blocks.back().get();
      ASSERT_NE(p, nullptr);
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 64, 0u) << n;
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(p[i], 0) << "byte " << i << " of a " << n << "-byte block";
    }
  }  // the arena is gone; its chunks live while a block does
  for (std::size_t b = 0; b < sizes.size(); ++b)
    std::memset(blocks[b].get(), static_cast<int>(b + 1), sizes[b]);
  for (std::size_t b = 0; b < sizes.size(); ++b)
    for (std::size_t i = 0; i < sizes[b]; ++i)
      ASSERT_EQ(blocks[b].get()[i], static_cast<std::uint8_t>(b + 1)) << "block " << b << " was overwritten at " << i;
}

TEST(WeightArena, ChunksAreAdvisedForHugePagesAndTrimmedToWhatWasUsed) {
#if !defined(__linux__)
  GTEST_SKIP() << "huge pages are a Linux feature here";
#else
  if (emulated()) GTEST_SKIP() << "under a user-mode emulator /proc/self/smaps is not the kernel's";
  if (!std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled"))
    GTEST_SKIP() << "this kernel has no transparent huge pages";
  WeightArena arena(std::size_t{8} << 20);
  const auto first = arena.allocate(std::size_t{5} << 20);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(first.get()) % nibble::kHugePageBytes, 0u) << "a chunk starts on a huge page";
  const Mapping before = mapping_of(first.get());
  ASSERT_FALSE(before.flags.empty());
  EXPECT_NE(before.flags.find(" hg"), std::string::npos) << "VmFlags:" << before.flags << " (no MADV_HUGEPAGE)";
  EXPECT_EQ(before.end, reinterpret_cast<std::uintptr_t>(first.get()) + (std::size_t{8} << 20));
  // 4 MiB more does not fit: the first chunk keeps its 5 MiB, the block goes to a new one.
  const auto second = arena.allocate(std::size_t{4} << 20);
  EXPECT_EQ(mapping_of(first.get()).end, reinterpret_cast<std::uintptr_t>(first.get()) + (std::size_t{5} << 20));
  arena.allocate(1000);
  arena.finish();  // the second chunk's tail: 4 MiB + 1000 bytes used, rounded up to a 4 KiB page
  EXPECT_EQ(mapping_of(second.get()).end,
            reinterpret_cast<std::uintptr_t>(second.get()) + (std::size_t{4} << 20) + 4096);
#endif
}

TEST(WeightBuffer, ZeroFilledSharedOnCopyAndEmptyWhenSizeZero) {
  WeightArena arena;
  for (WeightArena* a : {static_cast<WeightArena*>(nullptr), &arena}) {
    WeightBuffer<std::uint16_t> b(1000, a);
    ASSERT_EQ(b.size(), 1000u);
    for (std::size_t i = 0; i < b.size(); ++i) ASSERT_EQ(b[i], 0);
    const WeightBuffer<std::uint16_t> copy = b;
    b[7] = 1234;
    EXPECT_EQ(copy[7], 1234) << "copies share their elements";
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % 64, 0u);
    const WeightBuffer<float> none(0, a);
    EXPECT_TRUE(none.empty());
  }
}

// The arena only moves where a PackedMatrix's arrays live: unpack() gives the same
// container and every product the same bits, for each layout and for the formats that
// keep tile-ordered scales and zeros of each kind.
TEST(WeightArena, PackedMatrixInAnArenaIsTheSameMatrix) {
  using nibble::Codebook;
  using nibble::ScaleFormat;
  using packed_test::ZeroKind;
  struct Case {
    Codebook codebook;
    ScaleFormat scales;
    ZeroKind zeros;  // uint4_asym only
  };
  const std::vector<Case> cases = {{Codebook::int4_sym, ScaleFormat::f16, ZeroKind::uint4},
                                   {Codebook::int4_sym, ScaleFormat::f32, ZeroKind::uint4},
                                   {Codebook::uint4_asym, ScaleFormat::f16, ZeroKind::uint4},
                                   {Codebook::uint4_asym, ScaleFormat::f32, ZeroKind::f32},
                                   {Codebook::uint4_asym, ScaleFormat::f16, ZeroKind::f16},
                                   {Codebook::nf4, ScaleFormat::dq8, ZeroKind::uint4}};
  WeightArena arena(std::size_t{1} << 20);
  const std::size_t rows = 37, cols = 200, batch = 3;
  std::mt19937 rng(5);
  std::vector<float> x(cols * batch);
  for (float& v : x) v = std::normal_distribution<float>()(rng);
  for (const Case& c : cases)
    for (nibble::CodeLayout layout : {nibble::CodeLayout::row_tiles, nibble::CodeLayout::row_panels}) {
      const auto q = packed_test::random_matrix(rows, cols, 64, c.codebook, c.scales, 11, c.zeros);
      const nibble::PackedMatrix alone(q, layout), in_arena(q, layout, &arena);
      const std::string label = std::string(nibble::to_string(c.codebook)) + " scales " +
                                std::to_string(static_cast<int>(c.scales)) + " layout " +
                                std::to_string(static_cast<int>(layout));
      const nibble::QuantizedMatrix back = in_arena.unpack();
      EXPECT_EQ(back.codes(), q.codes()) << label;
      EXPECT_TRUE(back.dequantize() == q.dequantize()) << label;
      for (nibble::ActivationMode mode : {nibble::ActivationMode::exact, nibble::ActivationMode::fast}) {
        nibble::GemvOptions o;
        o.mode = mode;
        std::vector<float> y1(rows * batch), y2(rows * batch);
        nibble::gemm(alone, x.data(), batch, y1.data(), o);
        nibble::gemm(in_arena, x.data(), batch, y2.data(), o);
        EXPECT_EQ(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float)), 0) << label;
      }
    }
}

}  // namespace weight_arena_test
