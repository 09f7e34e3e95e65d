// timerfd: a periodic CLOCK_MONOTONIC timer (interval 150 ms) with expirations not yet read, and
// a one-shot CLOCK_REALTIME timer far in the future. After restore: the unread expirations are
// still counted, the period is the same, the far timer is still armed and has not fired.
#include <sys/timerfd.h>

#include <cstdint>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  int per = timerfd_create(CLOCK_MONOTONIC, 0);
  itimerspec its{{0, 150 * 1000 * 1000}, {0, 150 * 1000 * 1000}};
  timerfd_settime(per, 0, &its, nullptr);
  int far = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
  itimerspec f{{0, 0}, {3600, 0}};
  timerfd_settime(far, 0, &f, nullptr);
  timespec t{0, 400 * 1000 * 1000};
  nanosleep(&t, nullptr);  // two expirations pending, unread
  tp::ready();
  tp::waitGo();
  uint64_t n = 0;
  tp::check(read(per, &n, 8) == 8 && n >= 2, "pending expirations kept (%llu)", (unsigned long long)n);
  itimerspec cur{};
  timerfd_gettime(per, &cur);
  tp::check(cur.it_interval.tv_sec == 0 && cur.it_interval.tv_nsec == 150 * 1000 * 1000, "interval kept");
  tp::check(read(per, &n, 8) == 8 && n >= 1, "periodic timer fires again");
  timerfd_gettime(far, &cur);
  tp::check(cur.it_value.tv_sec > 3000 && cur.it_value.tv_sec <= 3600, "far timer still armed (%ld s left)",
            (long)cur.it_value.tv_sec);
  tp::check(read(far, &n, 8) < 0, "far timer has not fired");
  return tp::finish();
}
