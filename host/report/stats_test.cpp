#include "report/stats.hpp"

#include <gtest/gtest.h>

namespace crb {
namespace {

TEST(Stats, MedianOddEvenAndUnsorted) {
  EXPECT_DOUBLE_EQ(median({3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(median({4, 1, 3, 2}), 2.5);
  EXPECT_DOUBLE_EQ(median({7}), 7);
  EXPECT_DOUBLE_EQ(quantile({1, 2, 3, 4, 5}, 0.25), 2);
}

TEST(Stats, CoverageMatchesBinomialByHand) {
  // n = 6, j = 1: 1 - 2 * (1/64) = 0.96875
  EXPECT_NEAR(orderStatisticCoverage(6, 1), 0.96875, 1e-12);
  // n = 10, j = 2: 1 - 2 * (1 + 10) / 1024
  EXPECT_NEAR(orderStatisticCoverage(10, 2), 1 - 22.0 / 1024, 1e-12);
  // n = 10, j = 3: 1 - 2 * (1 + 10 + 45) / 1024 (below 95%)
  EXPECT_NEAR(orderStatisticCoverage(10, 3), 1 - 112.0 / 1024, 1e-12);
}

TEST(Stats, MedianIntervalOnKnownData) {
  std::vector<double> v{10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
  auto ci = medianInterval(v);
  ASSERT_TRUE(ci.has_value());
  EXPECT_DOUBLE_EQ(ci->low, 2);   // x(2)
  EXPECT_DOUBLE_EQ(ci->high, 9);  // x(9)
  EXPECT_NEAR(ci->coverage, 1 - 22.0 / 1024, 1e-12);
}

TEST(Stats, NoIntervalWhenTooFewSamples) {
  // n = 5: even [min, max] covers only 93.75 %, so a 95 % interval does not exist.
  EXPECT_FALSE(medianInterval({1, 2, 3, 4, 5}).has_value());
  auto six = medianInterval({1, 2, 3, 4, 5, 6});
  ASSERT_TRUE(six.has_value());
  EXPECT_DOUBLE_EQ(six->low, 1);
  EXPECT_DOUBLE_EQ(six->high, 6);
}

TEST(Stats, SummaryOfKnownSamples) {
  auto s = summarize({5, 1, 4, 2, 3, 100});
  EXPECT_EQ(s.n, 6u);
  EXPECT_DOUBLE_EQ(s.median, 3.5);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 100);
  EXPECT_NEAR(s.mean, 115.0 / 6, 1e-12);
  EXPECT_TRUE(s.ci95.has_value());
  EXPECT_EQ(summarize({}).n, 0u);
}

}  // namespace
}  // namespace crb
