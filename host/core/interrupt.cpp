#include "core/interrupt.hpp"

#include <unistd.h>

#include <atomic>
#include <cstring>

namespace crb {
namespace {

constexpr int kSignals[3] = {SIGINT, SIGTERM, SIGHUP};
std::atomic<int> gSignal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free flag");

void say(const char* s) { (void)!::write(STDERR_FILENO, s, std::strlen(s)); }

void onSignal(int sig) {
  int none = 0;
  if (gSignal.compare_exchange_strong(none, sig)) {
    say("crbench: interrupted: stopping after the current step, tearing down and writing the results "
        "(signal again to exit at once, without cleanup)\n");
    return;
  }
  say("crbench: second signal: exiting now, without cleanup\n");
  ::_exit(signalExitCode(sig));
}

}  // namespace

InterruptGuard::InterruptGuard() {
  struct sigaction sa{};
  sa.sa_handler = onSignal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (int s : kSignals) sigaddset(&sa.sa_mask, s);  // two at once: the second still sees the first
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &sa, &old_[i]);
}

InterruptGuard::~InterruptGuard() {
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &old_[i], nullptr);
}

int interruptSignal() { return gSignal.load(); }

std::string signalName(int sig) {
  switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGHUP: return "SIGHUP";
    case 0: return "";
    default: return "signal " + std::to_string(sig);
  }
}

void resetInterruptForTest() { gSignal = 0; }

}  // namespace crb
