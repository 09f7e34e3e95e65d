#pragma once
// ptrace plumbing shared by dump and restore: register sets and system calls injected into a
// stopped tracee (rip pointed at a `syscall` instruction, run to the syscall-exit stop).
#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/result.hpp"

namespace crb::native {

struct ThreadRegs {
  user_regs_struct gp{};
  std::string xstate;  // NT_X86_XSTATE buffer as the kernel returned it
};

Result<ThreadRegs> getRegs(pid_t tid);
Status setRegs(pid_t tid, const ThreadRegs& r);
Result<user_regs_struct> getGpRegs(pid_t tid);
Status setGpRegs(pid_t tid, const user_regs_struct& r);

// A signal that arrived while we drove a tracee; it is kept, never silently dropped.
struct StraySignal {
  pid_t tid;
  int sig;
};

// Runs system calls inside a stopped tracee. `syscallInsn` is the address of a `syscall`
// instruction (0f 05) mapped executable in the tracee.
class Injector {
 public:
  Injector(pid_t tid, uint64_t syscallInsn) : tid_(tid), insn_(syscallInsn) {}
  // Returns the raw return value (negative errno on failure).
  Result<long> call(long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0, uint64_t a4 = 0,
                    uint64_t a5 = 0, uint64_t a6 = 0);
  // As call(), but turns a negative return into an error naming `what`.
  Result<long> check(const std::string& what, long nr, uint64_t a1 = 0, uint64_t a2 = 0,
                     uint64_t a3 = 0, uint64_t a4 = 0, uint64_t a5 = 0, uint64_t a6 = 0);
  pid_t tid() const { return tid_; }
  // Children created by injected clone/fork (auto-attached through PTRACE_O_TRACECLONE/FORK).
  std::vector<pid_t> takeNewChildren() { return std::move(newChildren_); }
  std::vector<StraySignal>& straySignals() { return stray_; }

 private:
  pid_t tid_;
  uint64_t insn_;
  std::vector<pid_t> newChildren_;
  std::vector<StraySignal> stray_;
};

// Memory of a tracee through /proc/<pid>/mem (works across protections, like a debugger).
Status writeMem(pid_t pid, uint64_t addr, const void* data, size_t len);
Status readMem(pid_t pid, uint64_t addr, void* data, size_t len);

// Fault injection for the fault-safety tests: CRBENCH_NATIVE_FAULT=<point>:<n> makes crbench
// SIGKILL itself the n-th time it passes <point> (inject-set: an injected syscall's registers are
// set; inject-entry / inject-exit: it is at the syscall-entry / -exit stop; safety-stop: SIGSTOP
// sent, signals blocked, group stop not yet begun; frozen: every thread seized while the tree's
// cgroup is frozen, before the thaw; tcp-lock: a TCP connection's DROP rules are in, not yet in
// repair mode; tcp-repair: in repair mode, its queues read; peek: a unix socket's queue partly
// peeked with SO_PEEK_OFF 0; mq-drain: the guardian is draining a POSIX message queue (held
// drained for 300 ms); uffd: a userfaultfd created in the target, not yet closed there;
// guardian-command: the dumper asked the guardian to run a command (iptables -I) whose undo is
// recorded; lazy-push: the lazy restore's page server pushes a batch; lazy-fault: it serves a fault). Unset: nothing happens.
void faultPoint(const char* point);

// Wait for a stop of `tid` (any kind); error if it exited.
Result<int> waitStopped(pid_t tid);

}  // namespace crb::native
