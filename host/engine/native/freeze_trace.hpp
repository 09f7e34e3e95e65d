// Fine-grained timing of the freeze for measurement: CRB_FREEZE_TRACE=1 prints, on stderr, the
// milliseconds since the previous mark (per thread). Off by default: one getenv per mark.
#pragma once
#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace crb::native {
inline void freezeTrace(const char* what) {
  static const bool on = std::getenv("CRB_FREEZE_TRACE") != nullptr;
  if (!on) return;
  using C = std::chrono::steady_clock;
  thread_local C::time_point last = C::now();
  auto now = C::now();
  std::fprintf(stderr, "freeze-trace %-28s %8.3f ms\n", what, std::chrono::duration<double, std::milli>(now - last).count());
  last = now;
}
}  // namespace crb::native
