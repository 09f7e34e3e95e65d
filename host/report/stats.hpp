#pragma once
// Summary statistics for repeated measurements. Samples of C/R timings are few (5-20) and skewed
// (a slow outlier is common), so the centre is the median and its confidence interval is
// distribution-free: the order-statistic interval [x(j), x(n-j+1)] whose exact binomial coverage
// is at least the requested level. With too few samples no such interval exists (n < 6 for 95%);
// then the interval is absent and the report says so rather than printing a made-up one.
#include <optional>
#include <vector>

namespace crb {

struct Interval {
  double low = 0, high = 0;
  double coverage = 0;  // exact coverage of this order-statistic interval (>= the level asked)
};

struct Summary {
  size_t n = 0;
  double median = 0, min = 0, max = 0, mean = 0;
  std::optional<Interval> ci95;
};

double median(std::vector<double> v);  // v non-empty
// Linear-interpolation quantile (q in [0,1]) of non-empty v.
double quantile(std::vector<double> v, double q);
// Distribution-free CI of the median at `level`; nullopt when n is too small for that level.
std::optional<Interval> medianInterval(std::vector<double> v, double level = 0.95);
// P(j <= B <= n - j) for B ~ Binomial(n, 1/2): coverage of [x(j), x(n-j+1)] (j 1-based).
double orderStatisticCoverage(size_t n, size_t j);
Summary summarize(const std::vector<double>& v);  // v may be empty (n = 0)

}  // namespace crb
