// POSIX timers: a periodic timer signalling SIGUSR1 with a value, a SIGEV_NONE timer an hour
// away, and a deleted one between them (the ids are not contiguous). After restore: the same ids,
// the deleted id is still unused, the far timer still has about an hour left, the periodic one
// keeps firing with its value and interval.
#include <signal.h>

#include <cerrno>
#include <ctime>

#include "tp.hpp"

static volatile sig_atomic_t fired = 0, badValue = 0;

static void onTimer(int, siginfo_t* si, void*) {
  if (si->si_code == SI_TIMER && si->si_value.sival_int == 777) fired = fired + 1;
  else badValue = 1;
}

int main(int argc, char** argv) {
  tp::init(argc, argv);
  struct sigaction sa {};
  sa.sa_sigaction = onTimer;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigaction(SIGUSR1, &sa, nullptr);
  sigevent ev{};
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = SIGUSR1;
  ev.sigev_value.sival_int = 777;
  timer_t periodic, gone, far;
  timer_create(CLOCK_MONOTONIC, &ev, &periodic);
  sigevent none{};
  none.sigev_notify = SIGEV_NONE;
  timer_create(CLOCK_REALTIME, &none, &gone);
  timer_create(CLOCK_BOOTTIME, &none, &far);
  timer_delete(gone);
  itimerspec p{{0, 50 * 1000 * 1000}, {0, 50 * 1000 * 1000}}, f{{0, 0}, {3600, 0}};
  timer_settime(periodic, 0, &p, nullptr);
  timer_settime(far, 0, &f, nullptr);
  tp::ready();
  tp::waitGo();
  sig_atomic_t before = fired;
  timespec t{0, 400 * 1000 * 1000};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
  tp::check(fired > before + 2, "the periodic timer keeps firing (%d -> %d)", int(before), int(fired));
  tp::check(!badValue, "its signals carry SI_TIMER and the value 777");
  itimerspec cur{};
  tp::check(timer_gettime(periodic, &cur) == 0 && cur.it_interval.tv_nsec == 50 * 1000 * 1000,
            "periodic timer under its id with its interval");
  tp::check(timer_gettime(far, &cur) == 0 && cur.it_value.tv_sec > 3000 && cur.it_value.tv_sec <= 3600,
            "far timer under its id, about an hour left (%ld s)", long(cur.it_value.tv_sec));
  tp::check(timer_gettime(gone, &cur) != 0 && errno == EINVAL, "the deleted timer's id is still free");
  return tp::finish();
}
