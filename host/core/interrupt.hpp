#pragma once
// SIGINT, SIGTERM and SIGHUP as a request to stop, for the long CLI verbs (run, compare): the
// handler only records the signal, and the run loop looks at interrupted() at its safe points
// (between phases, during waits), then tears down what it started through the normal path
// (sandbox stop, engine and libvirt connection destructors) and writes what it has. Cleanup in the
// handler itself could not be async-signal-safe. A second signal exits at once, without cleanup.
#include <csignal>
#include <string>

namespace crb {

class InterruptGuard {
 public:
  InterruptGuard();   // installs the handlers (SA_RESTART: an engine's syscalls are not cut short)
  ~InterruptGuard();  // restores the previous dispositions
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;

 private:
  struct sigaction old_[3]{};
};

// The first of SIGINT/SIGTERM/SIGHUP received while a guard was installed; 0 when none.
int interruptSignal();
inline bool interrupted() { return interruptSignal() != 0; }
// "SIGTERM" etc.
std::string signalName(int sig);
// The shell's code for a process ended by `sig`: 128 + sig.
inline int signalExitCode(int sig) { return 128 + sig; }

// For tests only: forget a received signal.
void resetInterruptForTest();

}  // namespace crb
