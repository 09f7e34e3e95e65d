#pragma once
// The dump's guardian: a small process that outlives a dumper killed mid-dump and puts back what
// the dumper had changed in the workload.
//
// Why a separate process and a group stop: when a tracer dies the kernel detaches its tracees and
// lets them run at once, with whatever registers they hold — a thread caught inside an injected
// system call would run on from the vdso with the injected registers and crash. ptrace cannot be
// handed over, and the dying tracer cannot act. But the kernel does not restart a tracee whose
// process is in a job-control (group) stop: `__ptrace_unlink` re-arms the stop, so the thread
// stops again before it returns to user space ("If the tracer dies, all tracees are automatically
// detached and restarted, unless they were in group-stop", ptrace(2)). So the dumper puts each
// process into a group stop (SIGSTOP, taken by a thread whose other signals are blocked) before it
// changes any register, and records, in memory shared with the guardian and *before* each change,
// what it will have to put back: original registers and signal masks, the scratch page it maps,
// the group stop it started, the cgroup it froze. If the dumper dies, the guardian (notified
// through a pidfd, after the kernel has detached everything) thaws the cgroup, seizes each
// recorded thread, puts its registers and mask back, unmaps the scratch page, detaches and ends
// the group stop with SIGCONT. The workload never runs a user instruction with the dumper's
// registers.
//
// The guardian runs between fork and _exit only system calls (it may be forked from a
// multi-threaded crbench), so its record is fixed-size plain data.
#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "core/result.hpp"

namespace crb::native {

struct GuardThread {
  int32_t pid, tid;
  uint32_t flags;  // kGuardRegs: registers may differ from `regs`; kGuardMask: mask may differ from `mask`
  uint32_t pad;
  user_regs_struct regs;
  uint64_t mask;
};

struct GuardProc {
  int32_t pid;
  uint32_t flags;  // kGuardStopped: a group stop we started (end it); kGuardMapping: scratch mmap in flight
  uint64_t syscallInsn;
  uint64_t scratch;  // our scratch page, to unmap
};

constexpr uint32_t kGuardRegs = 1, kGuardMask = 2;
constexpr uint32_t kGuardStopped = 1, kGuardMapping = 2;

struct GuardRecord;

class Guardian {
 public:
  // Forks the guardian. Call before anything of the workload is changed.
  static Result<std::shared_ptr<Guardian>> start();
  // Tells the guardian that the dumper is done (all was put back) and reaps it.
  ~Guardian();
  Guardian(const Guardian&) = delete;
  Guardian& operator=(const Guardian&) = delete;

  // Record before the change, clear after it is undone.
  void noteFrozen(const std::string& freezerStateFile);
  void noteThawed();
  Status noteStopped(pid_t pid);  // a group stop we started: the guardian ends it with SIGCONT
  void noteUnstopped(pid_t pid);
  Status noteMapping(pid_t pid, uint64_t syscallInsn);  // a scratch mmap is about to be injected
  void noteScratch(pid_t pid, uint64_t scratch);       // its result (0: unmapped again)
  Status noteRegs(pid_t pid, pid_t tid, const user_regs_struct& original);
  Status noteMask(pid_t pid, pid_t tid, uint64_t original);
  void noteRestored(pid_t tid);  // registers and mask are back
  void forget(pid_t pid);        // the process is gone (killed): nothing to put back

 private:
  Guardian() = default;
  Result<GuardProc*> proc(pid_t pid);
  Result<GuardThread*> thread(pid_t pid, pid_t tid);
  GuardRecord* rec_ = nullptr;
  pid_t child_ = -1;
  int doneFd_ = -1;
  std::map<pid_t, int> procIdx_, threadIdx_;
};

}  // namespace crb::native
