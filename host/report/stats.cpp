#include "report/stats.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace crb {

double median(std::vector<double> v) { return quantile(std::move(v), 0.5); }

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  double pos = q * double(v.size() - 1);
  size_t lo = size_t(std::floor(pos)), hi = size_t(std::ceil(pos));
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

double orderStatisticCoverage(size_t n, size_t j) {
  if (j == 0 || 2 * j > n) return 0;
  // Sum the binomial pmf in log space: n may be a few hundred without overflow.
  double total = 0;
  for (size_t k = j; k <= n - j; ++k)
    total += std::exp(std::lgamma(double(n) + 1) - std::lgamma(double(k) + 1) - std::lgamma(double(n - k) + 1) -
                      double(n) * std::log(2.0));
  return std::min(total, 1.0);
}

std::optional<Interval> medianInterval(std::vector<double> v, double level) {
  size_t n = v.size();
  if (n < 2) return std::nullopt;
  std::sort(v.begin(), v.end());
  // The narrowest symmetric interval that still reaches the level: the largest such j.
  std::optional<Interval> best;
  for (size_t j = 1; 2 * j <= n; ++j) {
    double c = orderStatisticCoverage(n, j);
    if (c < level) break;
    best = Interval{v[j - 1], v[n - j], c};
  }
  return best;
}

Summary summarize(const std::vector<double>& v) {
  Summary s;
  s.n = v.size();
  if (v.empty()) return s;
  s.median = median(v);
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
  s.ci95 = medianInterval(v, 0.95);
  return s;
}

}  // namespace crb
