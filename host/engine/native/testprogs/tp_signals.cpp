// Signals: a handler with SA_SIGINFO and a mask, a blocked real-time signal queued with a value
// (pending across the dump), an ignored signal, and the thread's blocked mask.
#include <signal.h>

#include <atomic>

#include "tp.hpp"

static std::atomic<int> got{0}, gotValue{0}, gotCode{0};

static void handler(int sig, siginfo_t* si, void*) {
  got = sig;
  gotValue = si->si_value.sival_int;
  gotCode = si->si_code;
}

int main(int argc, char** argv) {
  tp::init(argc, argv);
  struct sigaction sa {};
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigaddset(&sa.sa_mask, SIGUSR2);
  sigaction(SIGRTMIN + 3, &sa, nullptr);
  signal(SIGUSR2, SIG_IGN);
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIGRTMIN + 3);
  sigaddset(&block, SIGWINCH);
  sigprocmask(SIG_BLOCK, &block, nullptr);
  union sigval v;
  v.sival_int = 4242;
  sigqueue(getpid(), SIGRTMIN + 3, v);
  tp::ready();
  tp::waitGo();
  sigset_t cur;
  sigprocmask(SIG_BLOCK, nullptr, &cur);
  tp::check(sigismember(&cur, SIGWINCH) && sigismember(&cur, SIGRTMIN + 3), "blocked mask");
  sigset_t pend;
  sigpending(&pend);
  tp::check(sigismember(&pend, SIGRTMIN + 3), "real-time signal still pending");
  struct sigaction old {};
  sigaction(SIGUSR2, nullptr, &old);
  tp::check(old.sa_handler == SIG_IGN, "SIGUSR2 ignored");
  sigaction(SIGRTMIN + 3, nullptr, &old);
  tp::check((old.sa_flags & SA_SIGINFO) && sigismember(&old.sa_mask, SIGUSR2), "handler flags and mask");
  sigprocmask(SIG_UNBLOCK, &block, nullptr);
  tp::check(got == SIGRTMIN + 3, "handler ran (%d)", int(got));
  tp::check(gotValue == 4242 && gotCode == SI_QUEUE, "siginfo kept (value %d code %d)", int(gotValue), int(gotCode));
  return tp::finish();
}
