// Interval timers: ITIMER_REAL with a SIGALRM handler keeps firing after restore, and a long
// ITIMER_VIRTUAL value survives.
#include <signal.h>
#include <sys/time.h>

#include <atomic>

#include "tp.hpp"

static std::atomic<int> ticks{0};
static void onAlarm(int) { ticks++; }

int main(int argc, char** argv) {
  tp::init(argc, argv);
  signal(SIGALRM, onAlarm);
  itimerval it{{0, 50000}, {0, 50000}};
  setitimer(ITIMER_REAL, &it, nullptr);
  itimerval v{{100, 0}, {100, 0}};
  setitimer(ITIMER_VIRTUAL, &v, nullptr);
  while (ticks < 2) pause();
  tp::ready();
  tp::waitGo();
  int before = ticks;
  while (ticks < before + 3) pause();
  itimerval cur{};
  getitimer(ITIMER_REAL, &cur);
  tp::check(cur.it_interval.tv_usec == 50000, "ITIMER_REAL interval (%ld)", long(cur.it_interval.tv_usec));
  getitimer(ITIMER_VIRTUAL, &cur);
  tp::check(cur.it_interval.tv_sec == 100 && cur.it_value.tv_sec > 90, "ITIMER_VIRTUAL kept");
  return tp::finish();
}
