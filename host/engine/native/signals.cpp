// Signals: handlers (read with injected rt_sigaction), process-wide and per-thread queues with
// their siginfo (PTRACE_PEEKSIGINFO), interval timers. Per-thread masks live in threads.cpp.
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

Result<std::vector<std::string>> peekSharedSignals(pid_t tid);  // threads.cpp

namespace {
struct KSigAction {
  uint64_t handler, flags, restorer, mask;
};
}  // namespace

Status dumpSignals(DumpCtx& c, pid_t pid, ProcessState& ps) {
  CRB_ASSIGN(auto st, readStatus(pid));
  uint64_t set = parseHex(st["SigCgt"]) | parseHex(st["SigIgn"]);
  auto& rp = c.seizure->procs.at(pid);
  auto inj = c.seizure->injector(pid, pid);
  for (int sig = 1; sig <= 64; sig++) {
    if (!(set & (1ull << (sig - 1))) || sig == SIGKILL || sig == SIGSTOP) continue;
    CRB_CHECK(inj.check(fmt::format("read the handler of signal {}", sig), SYS_rt_sigaction, sig, 0, rp.scratch, 8));
    KSigAction k{};
    CRB_CHECK(readMem(pid, rp.scratch, &k, sizeof k));
    ps.sigactions.push_back({sig, k.handler, k.flags, k.restorer, k.mask});
  }
  for (int which = 0; which < 3; which++) {
    CRB_CHECK(inj.check("getitimer", SYS_getitimer, which, rp.scratch));
    itimerval v{};
    CRB_CHECK(readMem(pid, rp.scratch, &v, sizeof v));
    ps.itimers.push_back(toHex(&v, sizeof v));
  }
  c.seizure->noteStray(inj);
  CRB_ASSIGN(ps.sharedPending, peekSharedSignals(pid));
  return success();
}

// Handlers and timers. Runs while every signal is blocked in the restored process.
Status restoreSignals(RestoreCtx& c, const ProcessState& ps) {
  auto inj = c.inj(ps.pid);
  uint64_t s = c.scratch();
  // Handlers inherited from crbench go back to default unless the image sets them.
  CRB_ASSIGN(auto st, readStatus(ps.pid));
  uint64_t inherited = parseHex(st["SigCgt"]) | parseHex(st["SigIgn"]);
  KSigAction dfl{};
  CRB_CHECK(writeMem(ps.pid, s, &dfl, sizeof dfl));
  for (int sig = 1; sig <= 64; sig++)
    if ((inherited & (1ull << (sig - 1))) && sig != SIGKILL && sig != SIGSTOP)
      CRB_CHECK(inj.check("reset a signal handler", SYS_rt_sigaction, sig, s, 0, 8));
  for (auto& a : ps.sigactions) {
    KSigAction k{a.handler, a.flags, a.restorer, a.mask};
    CRB_CHECK(writeMem(ps.pid, s, &k, sizeof k));
    CRB_CHECK(inj.check(fmt::format("set the handler of signal {}", a.sig), SYS_rt_sigaction, a.sig, s, 0, 8));
  }
  for (size_t which = 0; which < ps.itimers.size(); which++) {
    CRB_ASSIGN(auto v, fromHex(ps.itimers[which]));
    itimerval z{};
    if (v.size() != sizeof z || std::memcmp(v.data(), &z, sizeof z) == 0) continue;
    itimerval it{};
    std::memcpy(&it, v.data(), sizeof it);
    // An ITIMER_REAL that has fired and whose SIGALRM is still pending reads as value 0: the
    // kernel re-arms it only when that SIGALRM is dequeued. setitimer with value 0 would disarm
    // it for good, so it is set to fire at once: its SIGALRM merges with the pending one and the
    // dequeue re-arms it, as it would have.
    if (which == ITIMER_REAL && it.it_value.tv_sec == 0 && it.it_value.tv_usec == 0) it.it_value.tv_usec = 1;
    CRB_CHECK(writeMem(ps.pid, s, &it, sizeof it));
    CRB_CHECK(inj.check("setitimer", SYS_setitimer, which, s, 0));
  }
  return success();
}

// Drain whatever the restore itself queued (SIGCHLD of restored zombies ...), then queue the
// image's signals with their siginfo. Sending to oneself allows any si_code, so each queue is
// filled from inside the process (shared: main thread, private: the thread itself).
Status restoreSignalQueues(RestoreCtx& c, const ProcessState& ps) {
  uint64_t s = c.scratch();
  for (auto& t : ps.threads) {
    auto inj = c.inj(t.tid);
    uint64_t all = ~0ull;
    struct timespec zero {};
    CRB_CHECK(writeMem(ps.pid, s, &all, 8));
    CRB_CHECK(writeMem(ps.pid, s + 16, &zero, sizeof zero));
    for (int i = 0; i < 256; i++) {
      CRB_ASSIGN(long r, inj.call(SYS_rt_sigtimedwait, s, s + 64, s + 16, 8));
      if (r < 0) break;
    }
  }
  auto queue = [&](pid_t tid, const std::string& hex, bool shared) -> Status {
    CRB_ASSIGN(auto si, fromHex(hex));
    siginfo_t info{};
    if (si.size() != sizeof info) return makeError("bad siginfo blob in image");
    std::memcpy(&info, si.data(), sizeof info);
    CRB_CHECK(writeMem(ps.pid, s, &info, sizeof info));
    auto inj = c.inj(tid);
    if (shared)
      CRB_CHECK(inj.check(fmt::format("queue signal {}", info.si_signo), SYS_rt_sigqueueinfo, ps.pid, info.si_signo, s));
    else
      CRB_CHECK(inj.check(fmt::format("queue signal {} to thread {}", info.si_signo, tid), SYS_rt_tgsigqueueinfo,
                          ps.pid, tid, info.si_signo, s));
    return success();
  };
  for (auto& h : ps.sharedPending) CRB_CHECK(queue(ps.pid, h, true));
  for (auto& t : ps.threads)
    for (auto& h : t.pending) CRB_CHECK(queue(t.tid, h, false));
  return success();
}

}  // namespace crb::native
