// The CUDA kernels' index division (index_math.hpp), checked on the host against C++'s / and %: the 32-bit path
// at and around its limits, and the 64-bit path beyond them.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "index_math.hpp"

namespace {

using ekinet::detail::divide;

TEST(IndexMath, DivideEqualsTruncatingDivisionOnBothPaths) {
  constexpr std::int64_t k31 = std::int64_t{1} << 31;
  const std::vector<std::int64_t> numerators = {
      0, 1, 2, 7, 255, 256, 65535, 65536, k31 - 2, k31 - 1, k31, k31 + 1, 2 * k31, 3 * k31 + 5,
      std::int64_t{1} << 40, (std::int64_t{1} << 62) + 3};
  const std::vector<std::int64_t> divisors = {
      1, 2, 3, 9, 16, 128, 784, 65535, k31 - 1, k31, k31 + 7, std::int64_t{1} << 40};
  for (const std::int64_t a : numerators) {
    for (const std::int64_t b : divisors) {
      const auto [quotient, remainder] = divide(a, b);
      EXPECT_EQ(quotient, a / b) << a << " / " << b;
      EXPECT_EQ(remainder, a % b) << a << " % " << b;
    }
  }
}

TEST(IndexMath, NegativeNumeratorsTakeThe64BitPath) {
  // Not used by the kernels (their flat indices are non-negative), but the 32-bit path must not take them.
  for (const std::int64_t a : {std::int64_t{-1}, std::int64_t{-7}, std::int64_t{-(std::int64_t{1} << 33)}}) {
    const auto [quotient, remainder] = divide(a, 3);
    EXPECT_EQ(quotient, a / 3);
    EXPECT_EQ(remainder, a % 3);
  }
}

TEST(IndexMath, ExhaustiveOnSmallRanges) {
  for (std::int64_t b = 1; b <= 64; ++b) {
    for (std::int64_t a = 0; a < 4096; ++a) {
      const auto [quotient, remainder] = divide(a, b);
      ASSERT_EQ(quotient * b + remainder, a);
      ASSERT_LT(remainder, b);
      ASSERT_GE(remainder, 0);
    }
  }
}

}  // namespace
