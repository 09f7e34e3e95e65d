// signalfd: SIGUSR1 and SIGRTMIN+3 blocked and read through a signalfd, one SIGUSR1 already
// pending at the dump. After restore: the pending one is read with its sender's value, and the
// mask is the same (SIGUSR2, not in it, does not show up).
#include <signal.h>
#include <sys/signalfd.h>

#include "tp.hpp"

int main(int argc, char** argv) {
  tp::init(argc, argv);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGRTMIN + 3);
  sigaddset(&set, SIGUSR2);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  sigdelset(&set, SIGUSR2);
  int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  sigval v{};
  v.sival_int = 4242;
  sigqueue(getpid(), SIGUSR1, v);
  tp::ready();
  tp::waitGo();
  signalfd_siginfo si{};
  tp::check(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1 && si.ssi_int == 4242,
            "pending SIGUSR1 read through the signalfd (signo %u, value %d)", si.ssi_signo, si.ssi_int);
  raise(SIGUSR2);
  tp::check(read(sfd, &si, sizeof si) < 0, "SIGUSR2 is not in the signalfd's mask");
  sigqueue(getpid(), SIGRTMIN + 3, v);
  tp::check(read(sfd, &si, sizeof si) == sizeof si && int(si.ssi_signo) == SIGRTMIN + 3, "SIGRTMIN+3 in the mask");
  return tp::finish();
}
