// The dump's guardian (see guardian.hpp for why it exists and what it guarantees).
#include "engine/native/guardian.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace crb::native {

namespace {
constexpr int kMaxProcs = 4096;
constexpr int kMaxThreads = 16384;
}  // namespace

struct GuardRecord {
  char freezer[512];  // freezer.state file to write THAWED into ("" = nothing frozen)
  int32_t nprocs, nthreads;
  GuardProc procs[kMaxProcs];
  GuardThread threads[kMaxThreads];
};

namespace {

// Stores must reach the shared page before the system call that makes them necessary.
inline void published() { std::atomic_signal_fence(std::memory_order_seq_cst); }

// ---------------------------------------------------------------- the guardian process
// Only system calls from here on: it may have been forked from a multi-threaded process.
struct Msg {
  char buf[1024];
  size_t n = 0;
  void add(const char* s) {
    while (*s && n + 1 < sizeof buf) buf[n++] = *s++;
  }
  void add(long v) {
    char t[24];
    int i = 0;
    bool neg = v < 0;
    unsigned long u = neg ? 0ul - static_cast<unsigned long>(v) : static_cast<unsigned long>(v);
    do {
      t[i++] = char('0' + u % 10);
      u /= 10;
    } while (u && i < 22);
    if (neg) t[i++] = '-';
    while (i && n + 1 < sizeof buf) buf[n++] = t[--i];
  }
  void flush() {
    if (n && (n + 1 < sizeof buf)) buf[n++] = '\n';
    ssize_t w = ::write(2, buf, n);
    (void)w;
    n = 0;
  }
};

// Wait for `tid` to reach a ptrace-stop we may act in (a group-stop or interrupt trap). A signal
// that arrives meanwhile is remembered in *sig and re-sent after the detach.
bool waitTrap(pid_t tid, int* sig) {
  for (;;) {
    int st = 0;
    if (::waitpid(tid, &st, __WALL) < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (WIFEXITED(st) || WIFSIGNALED(st)) return false;
    if ((st >> 16) == PTRACE_EVENT_STOP) return true;
    int s = WSTOPSIG(st);
    if (s == SIGSTOP) {  // the group stop we started, reaching this thread: let it begin
      ::ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(long(SIGSTOP)));
      continue;
    }
    if (s != SIGTRAP) *sig = s;
    ::ptrace(PTRACE_CONT, tid, nullptr, nullptr);
  }
}

// munmap(addr, 4096) run inside the stopped thread; its registers are set back by the caller.
bool injectMunmap(pid_t tid, uint64_t insn, uint64_t addr, const user_regs_struct& base) {
  user_regs_struct r = base;
  r.rip = insn;
  r.rax = SYS_munmap;
  r.orig_rax = uint64_t(-1);
  r.rdi = addr;
  r.rsi = 4096;
  if (::ptrace(PTRACE_SETREGS, tid, nullptr, &r) != 0) return false;
  for (int stops = 0; stops < 2;) {
    if (::ptrace(PTRACE_SYSCALL, tid, nullptr, nullptr) != 0) return false;
    int st = 0;
    if (::waitpid(tid, &st, __WALL) < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (WIFEXITED(st) || WIFSIGNALED(st)) return false;
    if (WSTOPSIG(st) == (SIGTRAP | 0x80)) stops++;
  }
  return true;
}

void recoverProc(GuardRecord* rec, GuardProc& p, Msg& m) {
  pid_t seized[64];
  int sigs[64];
  int nseized = 0, nregs = 0;
  bool mainSeized = false;
  user_regs_struct mainRegs{};
  auto seize = [&](pid_t tid) -> bool {
    for (int i = 0; i < nseized; i++)
      if (seized[i] == tid) return true;
    if (nseized == 64) return false;
    if (::ptrace(PTRACE_SEIZE, tid, nullptr, reinterpret_cast<void*>(long(PTRACE_O_TRACESYSGOOD))) != 0) return false;
    ::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr);
    sigs[nseized] = 0;
    if (!waitTrap(tid, &sigs[nseized])) {
      ::ptrace(PTRACE_DETACH, tid, nullptr, nullptr);
      return false;
    }
    seized[nseized++] = tid;
    return true;
  };
  // Threads whose registers or mask we changed, in batches (a process may have many threads).
  for (int i = 0; i < rec->nthreads; i++) {
    GuardThread& t = rec->threads[i];
    if (t.pid != p.pid || !t.flags) continue;
    if (!seize(t.tid)) {
      m.add("crbench guardian: cannot seize thread ");
      m.add(long(t.tid));
      m.add(" to put its registers back");
      m.flush();
      continue;
    }
    if (t.tid == p.pid) {
      mainSeized = true;
      user_regs_struct now{};
      ::ptrace(PTRACE_GETREGS, t.tid, nullptr, &now);
      // A scratch mmap that completed after the dumper died: its result is in rax.
      if ((p.flags & kGuardMapping) && now.rip == p.syscallInsn + 2 && now.orig_rax == SYS_mmap &&
          now.rax < uint64_t(-4096))
        p.scratch = now.rax;
      mainRegs = (t.flags & kGuardRegs) ? t.regs : now;
    }
    if ((t.flags & kGuardRegs) && !(t.tid == p.pid && p.scratch)) {
      if (::ptrace(PTRACE_SETREGS, t.tid, nullptr, &t.regs) == 0) nregs++;
    }
    if (t.flags & kGuardMask) ::ptrace(PTRACE_SETSIGMASK, t.tid, reinterpret_cast<void*>(8), &t.mask);
    if (nseized == 64) {  // detach this batch (they stay group-stopped) before the next
      for (int k = 0; k < nseized; k++)
        if (seized[k] != p.pid) ::ptrace(PTRACE_DETACH, seized[k], nullptr, nullptr);
      nseized = 0;
      if (mainSeized) seized[nseized++] = p.pid;
    }
  }
  if (p.scratch && (mainSeized || seize(p.pid))) {
    if (!mainSeized) ::ptrace(PTRACE_GETREGS, p.pid, nullptr, &mainRegs);
    bool ok = injectMunmap(p.pid, p.syscallInsn, p.scratch, mainRegs);
    if (::ptrace(PTRACE_SETREGS, p.pid, nullptr, &mainRegs) == 0) nregs++;
    if (!ok) {
      m.add("crbench guardian: could not unmap the dumper's scratch page in pid ");
      m.add(long(p.pid));
      m.flush();
    }
  }
  for (int k = 0; k < nseized; k++) ::ptrace(PTRACE_DETACH, seized[k], nullptr, nullptr);
  if (p.flags & kGuardStopped) ::kill(p.pid, SIGCONT);
  for (int k = 0; k < nseized; k++)
    if (sigs[k]) ::syscall(SYS_tgkill, p.pid, seized[k], sigs[k]);
  m.add("crbench guardian: the dumper died; pid ");
  m.add(long(p.pid));
  m.add(": put back the registers of ");
  m.add(long(nregs));
  m.add(" thread(s)");
  if (p.flags & kGuardStopped) m.add(", ended the group stop");
  m.flush();
}

[[noreturn]] void guardianMain(GuardRecord* rec, int doneFd, int dumperFd) {
  ::setsid();  // out of the dumper's process group: a ^C or a group kill aimed at it spares us
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2, SIGTSTP, SIGTTIN, SIGTTOU})
    ::signal(s, SIG_IGN);
  // Hold nothing of the dumper's (listening sockets, pipes a caller waits on) but stderr.
  int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (in >= 0) ::dup2(in, 0), ::dup2(in, 1);
  ::dup2(doneFd, 10);
  ::dup2(dumperFd, 11);
  ::syscall(SYS_close_range, 3, 9, 0);
  ::syscall(SYS_close_range, 12, ~0u, 0);
  pollfd fds[2] = {{10, POLLIN, 0}, {11, POLLIN, 0}};
  for (;;) {
    int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) ::_exit(1);
    char c = 0;
    if ((fds[0].revents & POLLIN) && ::read(10, &c, 1) == 1 && c == 'D') ::_exit(0);
    if (fds[1].revents & (POLLIN | POLLHUP)) break;  // the dumper has exited: its tracees are detached
    if (fds[0].revents & (POLLHUP | POLLERR)) fds[0].fd = -1;  // only the pidfd counts now
  }
  char c = 0;
  ::fcntl(10, F_SETFL, O_NONBLOCK);
  if (::read(10, &c, 1) == 1 && c == 'D') ::_exit(0);
  Msg m;
  // Thaw first: a frozen task cannot reach the stop we wait for.
  if (rec->freezer[0]) {
    int fd = ::open(rec->freezer, O_WRONLY | O_CLOEXEC);
    bool ok = fd >= 0 && ::write(fd, "THAWED", 6) == 6;
    if (fd >= 0) ::close(fd);
    m.add(ok ? "crbench guardian: the dumper died; thawed " : "crbench guardian: the dumper died; could NOT thaw ");
    m.add(rec->freezer);
    m.flush();
  }
  for (int i = 0; i < rec->nprocs; i++) {
    GuardProc& p = rec->procs[i];
    bool any = p.flags || p.scratch;
    for (int k = 0; k < rec->nthreads && !any; k++) any = rec->threads[k].pid == p.pid && rec->threads[k].flags;
    if (any) recoverProc(rec, p, m);
  }
  ::_exit(0);
}

}  // namespace

Result<std::shared_ptr<Guardian>> Guardian::start() {
  void* mem = ::mmap(nullptr, sizeof(GuardRecord), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return sysError("map the dump guardian's record", errno);
  auto* rec = static_cast<GuardRecord*>(mem);
  int pfd[2];
  if (::pipe2(pfd, O_CLOEXEC) != 0) {
    ::munmap(mem, sizeof(GuardRecord));
    return sysError("create the dump guardian's pipe", errno);
  }
  int self = int(::syscall(SYS_pidfd_open, ::getpid(), 0));
  if (self < 0) {
    int e = errno;
    ::close(pfd[0]);
    ::close(pfd[1]);
    ::munmap(mem, sizeof(GuardRecord));
    return sysError("pidfd_open for the dump guardian (Linux >= 5.3)", e);
  }
  pid_t child = ::fork();
  if (child < 0) {
    int e = errno;
    ::close(pfd[0]);
    ::close(pfd[1]);
    ::close(self);
    ::munmap(mem, sizeof(GuardRecord));
    return sysError("fork the dump guardian", e);
  }
  if (child == 0) guardianMain(rec, pfd[0], self);
  ::close(pfd[0]);
  ::close(self);
  std::shared_ptr<Guardian> g(new Guardian());
  g->rec_ = rec;
  g->child_ = child;
  g->doneFd_ = pfd[1];
  return g;
}

Guardian::~Guardian() {
  if (doneFd_ >= 0) {
    ssize_t w = ::write(doneFd_, "D", 1);
    (void)w;
    ::close(doneFd_);
  }
  if (child_ > 0)
    while (::waitpid(child_, nullptr, 0) < 0 && errno == EINTR) {
    }
  if (rec_) ::munmap(rec_, sizeof(GuardRecord));
}

void Guardian::noteFrozen(const std::string& file) {
  size_t n = std::min(file.size(), sizeof(rec_->freezer) - 1);
  std::memcpy(rec_->freezer, file.data(), n);
  rec_->freezer[n] = 0;
  published();
}

void Guardian::noteThawed() {
  rec_->freezer[0] = 0;
  published();
}

Result<GuardProc*> Guardian::proc(pid_t pid) {
  auto it = procIdx_.find(pid);
  if (it != procIdx_.end()) return &rec_->procs[it->second];
  if (rec_->nprocs >= kMaxProcs)
    return makeError(fmt::format("unsupported: more than {} processes in one dump", kMaxProcs),
                     "the dump guardian's record is full");
  int i = rec_->nprocs;
  GuardProc& p = rec_->procs[i];
  p = GuardProc{};
  p.pid = pid;
  published();
  rec_->nprocs++;
  procIdx_[pid] = i;
  return &p;
}

Status Guardian::noteStopped(pid_t pid) {
  CRB_ASSIGN(GuardProc * p, proc(pid));
  p->flags |= kGuardStopped;
  published();
  return success();
}

void Guardian::noteUnstopped(pid_t pid) {
  if (auto it = procIdx_.find(pid); it != procIdx_.end()) rec_->procs[it->second].flags &= ~kGuardStopped;
  published();
}

Status Guardian::noteMapping(pid_t pid, uint64_t insn) {
  CRB_ASSIGN(GuardProc * p, proc(pid));
  p->syscallInsn = insn;
  published();
  p->flags |= kGuardMapping;
  published();
  return success();
}

void Guardian::noteScratch(pid_t pid, uint64_t scratch) {
  auto it = procIdx_.find(pid);
  if (it == procIdx_.end()) return;
  GuardProc& p = rec_->procs[it->second];
  p.scratch = scratch;
  published();
  p.flags &= ~kGuardMapping;
  published();
}

Result<GuardThread*> Guardian::thread(pid_t pid, pid_t tid) {
  auto it = threadIdx_.find(tid);
  if (it != threadIdx_.end()) return &rec_->threads[it->second];
  if (rec_->nthreads >= kMaxThreads)
    return makeError(fmt::format("unsupported: more than {} threads in one dump", kMaxThreads),
                     "the dump guardian's record is full");
  CRB_CHECK(proc(pid));
  int i = rec_->nthreads;
  GuardThread& t = rec_->threads[i];
  t = GuardThread{};
  t.pid = pid;
  t.tid = tid;
  published();
  rec_->nthreads++;
  threadIdx_[tid] = i;
  return &t;
}

Status Guardian::noteRegs(pid_t pid, pid_t tid, const user_regs_struct& original) {
  CRB_ASSIGN(GuardThread * t, thread(pid, tid));
  if (t->flags & kGuardRegs) return success();  // the first record is the original
  t->regs = original;
  published();
  t->flags |= kGuardRegs;
  published();
  return success();
}

Status Guardian::noteMask(pid_t pid, pid_t tid, uint64_t original) {
  CRB_ASSIGN(GuardThread * t, thread(pid, tid));
  if (t->flags & kGuardMask) return success();
  t->mask = original;
  published();
  t->flags |= kGuardMask;
  published();
  return success();
}

void Guardian::noteRestored(pid_t tid) {
  auto it = threadIdx_.find(tid);
  if (it == threadIdx_.end()) return;
  rec_->threads[it->second].flags = 0;
  published();
}

void Guardian::forget(pid_t pid) {
  auto it = procIdx_.find(pid);
  if (it != procIdx_.end()) {
    rec_->procs[it->second].flags = 0;
    rec_->procs[it->second].scratch = 0;
  }
  for (auto& [tid, i] : threadIdx_)
    if (rec_->threads[i].pid == pid) rec_->threads[i].flags = 0;
  published();
}

}  // namespace crb::native
