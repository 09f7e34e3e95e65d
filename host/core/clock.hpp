#pragma once
#include <chrono>
#include <cstdint>

namespace crb {
using Clock = std::chrono::steady_clock;

inline double secondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}
inline double msSince(Clock::time_point t) { return secondsSince(t) * 1e3; }
// CLOCK_MONOTONIC in nanoseconds (same clock as steady_clock on Linux); used in probe traces.
int64_t monoNs();
// CLOCK_REALTIME in nanoseconds.
int64_t wallNs();
}  // namespace crb
