// Clocks across dump -> restore: the harness waits at least one second between the dump and the
// restore. CLOCK_MONOTONIC and CLOCK_BOOTTIME must carry on from where they stopped (less than half
// a second of jump, the time namespace of the restore), while CLOCK_REALTIME, which a time
// namespace does not move, shows the gap.
#include <cstdint>

#include "tp.hpp"

static int64_t ns(clockid_t c) {
  timespec t{};
  clock_gettime(c, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

int main(int argc, char** argv) {
  tp::init(argc, argv);
  tp::ready();
  int64_t mono = ns(CLOCK_MONOTONIC), boot = ns(CLOCK_BOOTTIME), real = ns(CLOCK_REALTIME);
  // The last readings before the tree stopped are the reference.
  while (!tp::goExists()) {
    mono = ns(CLOCK_MONOTONIC);
    boot = ns(CLOCK_BOOTTIME);
    real = ns(CLOCK_REALTIME);
    timespec t{0, 5 * 1000 * 1000};
    nanosleep(&t, nullptr);
  }
  double dMono = double(ns(CLOCK_MONOTONIC) - mono) / 1e9, dBoot = double(ns(CLOCK_BOOTTIME) - boot) / 1e9;
  double dReal = double(ns(CLOCK_REALTIME) - real) / 1e9;
  std::printf("gap: monotonic %.3f s, boottime %.3f s, realtime %.3f s\n", dMono, dBoot, dReal);
  tp::check(dReal >= 1.0, "the harness's one-second gap shows on CLOCK_REALTIME (%.3f s)", dReal);
  tp::check(dMono >= 0 && dMono < 0.5, "CLOCK_MONOTONIC carried on (%.3f s jump)", dMono);
  tp::check(dBoot >= 0 && dBoot < 0.5, "CLOCK_BOOTTIME carried on (%.3f s jump)", dBoot);
  return tp::finish();
}
