#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "nibble/format/packing.hpp"

namespace packing_test {  // one per file: a test group compiles as one unit (tests/CMakeLists.txt)

using namespace nibble;

TEST(Packing, FirstElementGoesInTheHighNibble) {
  const std::vector<std::uint8_t> packed = pack_nibbles({0x1, 0x2, 0xA, 0xF, 0x7});
  ASSERT_EQ(packed.size(), 3u);
  EXPECT_EQ(packed[0], 0x12);
  EXPECT_EQ(packed[1], 0xAF);
  EXPECT_EQ(packed[2], 0x70);  // odd length: low nibble of the last byte is 0
}

TEST(Packing, RoundTripEveryLengthUpTo1000) {
  std::mt19937 rng(7);
  for (std::size_t n = 1; n <= 1000; ++n) {
    std::vector<std::uint8_t> values(n);
    for (auto& v : values) v = static_cast<std::uint8_t>(rng() & 0xF);
    const auto packed = pack_nibbles(values);
    ASSERT_EQ(packed.size(), (n + 1) / 2);
    ASSERT_EQ(unpack_nibbles(packed, n), values) << n;
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(get_nibble(packed.data(), i), values[i]);
  }
}

TEST(Packing, SetNibbleTouchesOnlyItsHalf) {
  std::vector<std::uint8_t> bytes = {0x00, 0xFF};
  set_nibble(bytes.data(), 0, 0xA);
  set_nibble(bytes.data(), 3, 0x3);
  EXPECT_EQ(bytes[0], 0xA0);
  EXPECT_EQ(bytes[1], 0xF3);
}

TEST(Packing, RejectsValuesWiderThanFourBits) {
  EXPECT_THROW(pack_nibbles({1, 16}), Error);
  EXPECT_THROW(unpack_nibbles(std::vector<std::uint8_t>{0x12}, 3), Error);
}

}  // namespace packing_test
