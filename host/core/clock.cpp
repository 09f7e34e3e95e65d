#include "core/clock.hpp"

#include <time.h>

namespace crb {
static int64_t readClock(clockid_t id) {
  timespec ts{};
  clock_gettime(id, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}
int64_t monoNs() { return readClock(CLOCK_MONOTONIC); }
int64_t wallNs() { return readClock(CLOCK_REALTIME); }
}  // namespace crb
