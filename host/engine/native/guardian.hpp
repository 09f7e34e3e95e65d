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
// The dump also changes kernel objects of the tree, each recorded the same way before the change
// and put back by the guardian (before the thaw and the end of the group stops, so the tree never
// runs with them): a TCP connection in repair mode (TCP_REPAIR off again through a pidfd_getfd
// copy), the netfilter DROP rules that silence it (the recorded `iptables -D` run in the socket's
// network namespace), SO_PEEK_OFF of a unix socket whose queue is peeked (its old value set
// back), and a descriptor created in the tree by an injected system call (the userfaultfd of
// dirty tracking: closed again by an injected close, its number read from the thread's
// registers if the dumper died right after the call returned).
//
// The commands that make such changes (iptables -I) are run by the guardian too, on the dumper's
// request: one run by a child of a dying dumper could land after the guardian's undo.
//
// A POSIX message queue cannot be read without taking its messages out, and a dumper killed
// between taking and putting back would lose them (even a SIGKILL sent during mq_timedreceive
// lets the call complete and drops its result). So the guardian itself drains and refills the
// queue on the dumper's request (readMessageQueue), into memory shared with the dumper: a dumper
// that dies meanwhile leaves the guardian to finish the refill before anything else.
//
// The guardian runs between fork and _exit only system calls (it may be forked from a
// multi-threaded crbench), so its record is fixed-size plain data.
#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

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

// A kernel object of the tree the dump changed (kind 0: nothing to put back).
struct GuardFix {
  uint32_t kind;
  int32_t pid, fd;  // the process holding the object, and its descriptor there
  int32_t value;    // kFixPeekOff: the old offset; kFixRemoteFd: the syscall number (fd: -1 until known)
  char argv[1024];  // kFixCommand: NUL-separated argv, argv[0] absolute, an empty string ends it
};

constexpr uint32_t kFixTcpRepair = 1, kFixPeekOff = 2, kFixCommand = 3, kFixRemoteFd = 4;

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

  // Kernel objects changed in the tree (see above). Each returns a slot; fixed(slot) once undone.
  Result<int> noteTcpRepair(pid_t pid, int fd);
  Result<int> notePeekOff(pid_t pid, int fd, int old);
  // A command that undoes a change (argv[0] looked up in PATH now), run if the dumper dies.
  Result<int> noteCommand(pid_t pid, const std::vector<std::string>& argv);
  // Runs a command whose undo was noted, in the guardian (its stderr is ours): if the dumper dies
  // meanwhile the command still ends before the guardian undoes it. Returns the wait status.
  Result<int> runCommand(const std::vector<std::string>& argv);
  Result<int> noteRemoteFd(pid_t pid, long syscallNr);  // before injecting a syscall that creates an fd
  void noteRemoteFdNumber(int slot, int fd);             // what it returned
  void fixed(int slot);
  // The messages of the POSIX message queue at fd `fd` of `pid`, in the order they come out
  // (priority, then age), taken out and put back by the guardian (see above). `pauseMs`: the
  // guardian waits that long with the queue drained (fault tests only).
  Result<std::vector<std::pair<unsigned, std::string>>> readMessageQueue(pid_t pid, int fd, int pauseMs = 0);
  // The guardian process (forked, never touching SysV semaphores): sysv_ipc.cpp's reference for
  // a process without a SEM_UNDO list.
  pid_t pid() const { return child_; }

 private:
  Guardian() = default;
  Result<GuardProc*> proc(pid_t pid);
  Result<GuardThread*> thread(pid_t pid, pid_t tid);
  Result<int> fix(const GuardFix& f);
  GuardRecord* rec_ = nullptr;
  char* mqArea_ = nullptr;  // messages the guardian drained (shared)
  pid_t child_ = -1;
  int doneFd_ = -1, replyFd_ = -1;
  std::map<pid_t, int> procIdx_, threadIdx_;
};

}  // namespace crb::native
