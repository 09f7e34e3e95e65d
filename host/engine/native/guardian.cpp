// The dump's guardian (see guardian.hpp for why it exists and what it guarantees).
#include "engine/native/guardian.hpp"

#include <fcntl.h>
#include <mqueue.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "core/fsutil.hpp"
#include "engine/native/ptrace.hpp"

namespace crb::native {

namespace {
constexpr int kMaxProcs = 4096;
constexpr int kMaxThreads = 16384;
constexpr int kMaxFixes = 8192;  // 3 per TCP connection, 1 per peeked socket or injected fd
// Room for one drained message queue (shared, touched only as far as used).
constexpr size_t kMqArea = size_t(256) << 20;
}  // namespace

struct GuardRecord {
  char freezer[512];  // freezer.state file to write THAWED into ("" = nothing frozen)
  int32_t nprocs, nthreads;
  GuardProc procs[kMaxProcs];
  GuardThread threads[kMaxThreads];
  int32_t nfixes;
  GuardFix fixes[kMaxFixes];
  struct {
    int32_t pid, fd, pauseMs;
    int32_t error;  // errno of a failed read; E2BIG: more than kMqArea
    int32_t lost;   // messages that could not be put back
    int64_t count;  // messages in the shared area: (u32 length, u32 priority, data padded to 8) each
  } mq;
  struct {
    char argv[1024];  // as GuardFix::argv
    int32_t status;   // wait status (-1: could not fork)
  } cmd;
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

// A system call (munmap, close) run inside the stopped thread; its registers are set back by the caller.
bool injectSyscall(pid_t tid, uint64_t insn, long nr, uint64_t a1, uint64_t a2, const user_regs_struct& base) {
  user_regs_struct r = base;
  r.rip = insn;
  r.rax = uint64_t(nr);
  r.orig_rax = uint64_t(-1);
  r.rdi = a1;
  r.rsi = a2;
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
  user_regs_struct mainRegs{}, mainNow{};
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
      user_regs_struct& now = mainNow;
      ::ptrace(PTRACE_GETREGS, t.tid, nullptr, &now);
      // A scratch mmap that completed after the dumper died: its result is in rax.
      if ((p.flags & kGuardMapping) && now.rip == p.syscallInsn + 2 && now.orig_rax == SYS_mmap &&
          now.rax < uint64_t(-4096))
        p.scratch = now.rax;
      mainRegs = (t.flags & kGuardRegs) ? t.regs : now;
    }
    // The main thread's registers are set back last: it may have system calls to run first.
    if ((t.flags & kGuardRegs) && t.tid != p.pid) {
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
  // Descriptors created in the process by an injected syscall (the dumper's userfaultfd): the
  // number was recorded, or the call had just returned it when the dumper died.
  int remote[16], nremote = 0;
  for (int i = 0; i < rec->nfixes && nremote < 16; i++) {
    GuardFix& f = rec->fixes[i];
    if (f.kind != kFixRemoteFd || f.pid != p.pid) continue;
    int fd = f.fd;
    if (fd < 0 && mainSeized && mainNow.rip == p.syscallInsn + 2 && long(mainNow.orig_rax) == f.value &&
        mainNow.rax < uint64_t(-4096))
      fd = int(mainNow.rax);
    if (fd >= 0) remote[nremote++] = fd;
    f.kind = 0;
  }
  if ((p.scratch || nremote) && (mainSeized || seize(p.pid))) {
    if (!mainSeized) ::ptrace(PTRACE_GETREGS, p.pid, nullptr, &mainRegs);
    mainSeized = true;
    for (int k = 0; k < nremote; k++) {
      bool ok = injectSyscall(p.pid, p.syscallInsn, SYS_close, uint64_t(remote[k]), 0, mainRegs);
      m.add(ok ? "crbench guardian: closed the dumper's descriptor " : "crbench guardian: could NOT close the dumper's descriptor ");
      m.add(long(remote[k]));
      m.add(" in pid ");
      m.add(long(p.pid));
      m.flush();
    }
    if (p.scratch && !injectSyscall(p.pid, p.syscallInsn, SYS_munmap, p.scratch, 4096, mainRegs)) {
      m.add("crbench guardian: could not unmap the dumper's scratch page in pid ");
      m.add(long(p.pid));
      m.flush();
    }
  }
  if (mainSeized && ::ptrace(PTRACE_SETREGS, p.pid, nullptr, &mainRegs) == 0) nregs++;
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

// A descriptor of another process, through pidfd_getfd (-1 if it or the process is gone).
int remoteFd(pid_t pid, int fd) {
  int pfd = int(::syscall(SYS_pidfd_open, pid, 0));
  if (pfd < 0) return -1;
  int s = int(::syscall(SYS_pidfd_getfd, pfd, fd, 0));
  ::close(pfd);
  return s;
}

// Runs a packed argv (NUL-separated, argv[0] absolute, "" ends it); returns its wait status.
int runPacked(char* packed, size_t cap, Msg& m, bool say) {
  char* argv[64];
  int n = 0;
  for (char* a = packed; a < packed + cap && *a && n < 63; a += std::strlen(a) + 1) argv[n++] = a;
  argv[n] = nullptr;
  if (!n) return -1;
  pid_t c = ::fork();
  if (c == 0) {
    char path[] = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
    char* envp[] = {path, nullptr};
    ::execve(argv[0], argv, envp);
    ::_exit(127);
  }
  int st = -1;
  while (c > 0 && ::waitpid(c, &st, 0) < 0 && errno == EINTR) {
  }
  bool ok = c > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  if (say || !ok) {
    m.add(ok ? "crbench guardian: ran" : "crbench guardian: FAILED to run");
    for (int i = 0; i < n; i++) m.add(" "), m.add(argv[i]);
    m.flush();
  }
  return c > 0 ? st : -1;
}

// The tree's kernel objects first, newest change first, before anything of it runs again.
void undoFixes(GuardRecord* rec, Msg& m) {
  for (int i = rec->nfixes - 1; i >= 0; i--) {
    GuardFix& f = rec->fixes[i];
    if (f.kind == kFixCommand) {
      runPacked(f.argv, sizeof f.argv, m, true);
    } else if (f.kind == kFixTcpRepair || f.kind == kFixPeekOff) {
      int s = remoteFd(f.pid, f.fd);
      int off = TCP_REPAIR_OFF;
      bool ok = s >= 0 && (f.kind == kFixTcpRepair ? ::setsockopt(s, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off)
                                                   : ::setsockopt(s, SOL_SOCKET, SO_PEEK_OFF, &f.value, sizeof f.value)) == 0;
      if (s >= 0) ::close(s);
      m.add(ok ? "crbench guardian: " : "crbench guardian: could NOT ");
      m.add(f.kind == kFixTcpRepair ? "take TCP repair mode off fd " : "set SO_PEEK_OFF back on fd ");
      m.add(long(f.fd));
      m.add(" of pid ");
      m.add(long(f.pid));
      m.flush();
    } else {
      continue;  // kFixRemoteFd: with the process's registers (recoverProc)
    }
    f.kind = 0;
  }
}

// The dumper's request: drain the queue into the shared area and put every message back.
void serveMessageQueue(GuardRecord* rec, char* area, Msg& m) {
  auto& q = rec->mq;
  q.error = 0;
  q.lost = 0;
  q.count = 0;
  Msg path;
  path.add("/proc/");
  path.add(long(q.pid));
  path.add("/fd/");
  path.add(long(q.fd));
  path.buf[path.n] = 0;
  int fd = ::open(path.buf, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    q.error = errno;
    return;
  }
  mq_attr a{};
  if (::syscall(SYS_mq_getsetattr, fd, nullptr, &a) != 0) {
    q.error = errno;
    ::close(fd);
    return;
  }
  if (a.mq_curmsgs * (a.mq_msgsize + 8 + 8) > long(kMqArea)) {
    q.error = E2BIG;
    ::close(fd);
    return;
  }
  size_t off = 0;
  int64_t n = 0;
  for (long i = 0; i < a.mq_curmsgs; i++) {
    unsigned prio = 0;
    timespec zero{};
    long r = ::syscall(SYS_mq_timedreceive, fd, area + off + 8, size_t(a.mq_msgsize), &prio, &zero);
    if (r < 0) break;
    uint32_t hdr[2] = {uint32_t(r), prio};
    std::memcpy(area + off, hdr, 8);
    off += 8 + ((size_t(r) + 7) & ~size_t(7));
    n++;
  }
  if (q.pauseMs > 0) {
    timespec t{q.pauseMs / 1000, long(q.pauseMs % 1000) * 1000000};
    while (::nanosleep(&t, &t) != 0 && errno == EINTR) {
    }
  }
  off = 0;
  for (int64_t k = 0; k < n; k++) {
    uint32_t hdr[2];
    std::memcpy(hdr, area + off, 8);
    if (::syscall(SYS_mq_timedsend, fd, area + off + 8, size_t(hdr[0]), hdr[1], nullptr) != 0) {
      q.lost = int32_t(n - k);
      m.add("crbench guardian: could not put back ");
      m.add(long(n - k));
      m.add(" message(s) of POSIX message queue ");
      m.add(path.buf);
      m.flush();
      break;
    }
    off += 8 + ((size_t(hdr[0]) + 7) & ~size_t(7));
  }
  q.count = n;
  ::close(fd);
}

[[noreturn]] void guardianMain(GuardRecord* rec, char* mqArea, int doneFd, int dumperFd, int replyFd) {
  ::setsid();  // out of the dumper's process group: a ^C or a group kill aimed at it spares us
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2, SIGTSTP, SIGTTIN, SIGTTOU})
    ::signal(s, SIG_IGN);
  // Hold nothing of the dumper's (listening sockets, pipes a caller waits on) but stderr.
  int in = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (in >= 0) ::dup2(in, 0), ::dup2(in, 1);
  // Out of the way first: any of them may already be 10, 11 or 12.
  doneFd = ::fcntl(doneFd, F_DUPFD, 13);
  dumperFd = ::fcntl(dumperFd, F_DUPFD, 13);
  replyFd = ::fcntl(replyFd, F_DUPFD, 13);
  ::dup2(doneFd, 10);
  ::dup2(dumperFd, 11);
  ::dup2(replyFd, 12);
  ::syscall(SYS_close_range, 3, 9, 0);
  ::syscall(SYS_close_range, 13, ~0u, 0);
  for (int fd = 10; fd <= 12; fd++) ::fcntl(fd, F_SETFD, FD_CLOEXEC);  // not into the commands it runs
  Msg m;
  pollfd fds[2] = {{10, POLLIN, 0}, {11, POLLIN, 0}};
  // 'D': the dumper is done (all put back); 'Q': drain and refill a message queue.
  auto request = [&](char c) {
    if (c == 'D') ::_exit(0);
    if (c == 'C') {  // a command whose undo is recorded: run here, so it never outlives its undo
      rec->cmd.status = runPacked(rec->cmd.argv, sizeof rec->cmd.argv, m, false);
      ssize_t w = ::write(12, "R", 1);
      (void)w;
    }
    if (c == 'Q') {
      serveMessageQueue(rec, mqArea, m);
      if (::write(12, "R", 1) != 1) {  // EPIPE: the dumper died meanwhile (SIGPIPE is ignored)
        m.add("crbench guardian: the dumper died while a message queue was read; put back ");
        m.add(long(rec->mq.count - rec->mq.lost));
        m.add(" message(s) of fd ");
        m.add(long(rec->mq.fd));
        m.add(" of pid ");
        m.add(long(rec->mq.pid));
        m.flush();
      }
    }
  };
  for (;;) {
    int n = ::poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) ::_exit(1);
    char c = 0;
    if ((fds[0].revents & POLLIN) && ::read(10, &c, 1) == 1) request(c);
    if (fds[1].revents & (POLLIN | POLLHUP)) break;  // the dumper has exited: its tracees are detached
    if (fds[0].revents & (POLLHUP | POLLERR)) fds[0].fd = -1;  // only the pidfd counts now
  }
  char c = 0;
  ::fcntl(10, F_SETFL, O_NONBLOCK);
  while (::read(10, &c, 1) == 1) request(c);
  undoFixes(rec, m);
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
    for (int k = 0; k < rec->nfixes && !any; k++) any = rec->fixes[k].pid == p.pid && rec->fixes[k].kind == kFixRemoteFd;
    if (any) recoverProc(rec, p, m);
  }
  ::_exit(0);
}

}  // namespace

Result<std::shared_ptr<Guardian>> Guardian::start() {
  std::shared_ptr<Guardian> g(new Guardian());  // its destructor undoes a half-done start
  void* mem = ::mmap(nullptr, sizeof(GuardRecord), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return sysError("map the dump guardian's record", errno);
  g->rec_ = static_cast<GuardRecord*>(mem);
  void* area = ::mmap(nullptr, kMqArea, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (area == MAP_FAILED) return sysError("map the dump guardian's message queue area", errno);
  g->mqArea_ = static_cast<char*>(area);
  int req[2], reply[2];
  if (::pipe2(req, O_CLOEXEC) != 0) return sysError("create the dump guardian's pipe", errno);
  g->doneFd_ = req[1];
  Fd reqRead(req[0]);
  if (::pipe2(reply, O_CLOEXEC) != 0) return sysError("create the dump guardian's reply pipe", errno);
  g->replyFd_ = reply[0];
  Fd replyWrite(reply[1]);
  Fd self(int(::syscall(SYS_pidfd_open, ::getpid(), 0)));
  if (!self.valid()) return sysError("pidfd_open for the dump guardian (Linux >= 5.3)", errno);
  pid_t child = ::fork();
  if (child < 0) return sysError("fork the dump guardian", errno);
  if (child == 0) guardianMain(g->rec_, g->mqArea_, reqRead.get(), self.get(), replyWrite.get());
  g->child_ = child;
  return g;
}

Guardian::~Guardian() {
  if (doneFd_ >= 0 && child_ > 0) {
    ssize_t w = ::write(doneFd_, "D", 1);
    (void)w;
  }
  if (doneFd_ >= 0) ::close(doneFd_);
  if (child_ > 0)
    while (::waitpid(child_, nullptr, 0) < 0 && errno == EINTR) {
    }
  if (replyFd_ >= 0) ::close(replyFd_);
  if (rec_) ::munmap(rec_, sizeof(GuardRecord));
  if (mqArea_) ::munmap(mqArea_, kMqArea);
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
  // Its sockets go with it (closed in repair mode: silently); netfilter rules stay for the restore.
  for (int i = 0; i < rec_->nfixes; i++)
    if (rec_->fixes[i].pid == pid) rec_->fixes[i].kind = 0;
  auto it = procIdx_.find(pid);
  if (it != procIdx_.end()) {
    rec_->procs[it->second].flags = 0;
    rec_->procs[it->second].scratch = 0;
  }
  for (auto& [tid, i] : threadIdx_)
    if (rec_->threads[i].pid == pid) rec_->threads[i].flags = 0;
  published();
}

Result<int> Guardian::fix(const GuardFix& f) {
  if (rec_->nfixes >= kMaxFixes)
    return makeError(fmt::format("unsupported: more than {} kernel objects changed in one dump", kMaxFixes),
                     "the dump guardian's record is full");
  int i = rec_->nfixes;
  rec_->fixes[i] = f;
  published();
  rec_->nfixes++;
  published();
  return i;
}

Result<int> Guardian::noteTcpRepair(pid_t pid, int fd) {
  GuardFix f{};
  f.kind = kFixTcpRepair;
  f.pid = pid;
  f.fd = fd;
  return fix(f);
}

Result<int> Guardian::notePeekOff(pid_t pid, int fd, int old) {
  GuardFix f{};
  f.kind = kFixPeekOff;
  f.pid = pid;
  f.fd = fd;
  f.value = old;
  return fix(f);
}

namespace {
Status packArgv(const std::vector<std::string>& argv, char* out, size_t cap) {
  if (argv.empty()) return makeError("an empty command for the dump guardian");
  std::string exe = argv[0];
  if (exe.find('/') == std::string::npos) {
    exe.clear();
    for (const char* dir : {"/usr/sbin", "/usr/bin", "/sbin", "/bin"})
      if (::access((std::string(dir) + "/" + argv[0]).c_str(), X_OK) == 0) {
        exe = std::string(dir) + "/" + argv[0];
        break;
      }
    if (exe.empty()) return makeError(argv[0] + " not found in /usr/sbin, /usr/bin, /sbin, /bin");
  }
  std::memset(out, 0, cap);
  size_t n = 0;
  for (size_t i = 0; i < argv.size(); i++) {
    const std::string& a = i ? argv[i] : exe;
    if (n + a.size() + 2 > cap || a.empty() || i >= 63)
      return makeError("command too long for the dump guardian's record: " + argv[0]);
    std::memcpy(out + n, a.c_str(), a.size() + 1);
    n += a.size() + 1;
  }
  return success();
}
}  // namespace

Result<int> Guardian::noteCommand(pid_t pid, const std::vector<std::string>& argv) {
  GuardFix f{};
  f.kind = kFixCommand;
  f.pid = pid;
  f.fd = -1;
  CRB_CHECK(packArgv(argv, f.argv, sizeof f.argv));
  return fix(f);
}

Result<int> Guardian::runCommand(const std::vector<std::string>& argv) {
  CRB_CHECK(packArgv(argv, rec_->cmd.argv, sizeof rec_->cmd.argv));
  rec_->cmd.status = -1;
  published();
  if (::write(doneFd_, "C", 1) != 1) return sysError("ask the dump guardian to run " + argv[0], errno);
  faultPoint("guardian-command");
  char c = 0;
  ssize_t n;
  while ((n = ::read(replyFd_, &c, 1)) < 0 && errno == EINTR) {
  }
  if (n != 1) return makeError("the dump guardian did not answer (it died?)");
  return int(rec_->cmd.status);
}

Result<int> Guardian::noteRemoteFd(pid_t pid, long syscallNr) {
  CRB_CHECK(proc(pid));
  GuardFix f{};
  f.kind = kFixRemoteFd;
  f.pid = pid;
  f.fd = -1;
  f.value = int32_t(syscallNr);
  return fix(f);
}

void Guardian::noteRemoteFdNumber(int slot, int fd) {
  if (slot < 0 || slot >= rec_->nfixes) return;
  rec_->fixes[slot].fd = fd;
  published();
}

void Guardian::fixed(int slot) {
  if (slot < 0 || slot >= rec_->nfixes) return;
  rec_->fixes[slot].kind = 0;
  published();
}

Result<std::vector<std::pair<unsigned, std::string>>> Guardian::readMessageQueue(pid_t pid, int fd, int pauseMs) {
  rec_->mq.pid = pid;
  rec_->mq.fd = fd;
  rec_->mq.pauseMs = pauseMs;
  published();
  if (::write(doneFd_, "Q", 1) != 1) return sysError("ask the dump guardian to read a message queue", errno);
  faultPoint("mq-drain");
  char c = 0;
  ssize_t n;
  while ((n = ::read(replyFd_, &c, 1)) < 0 && errno == EINTR) {
  }
  if (n != 1) return makeError("the dump guardian did not answer (it died?)");
  auto& q = rec_->mq;
  if (q.error == E2BIG) return makeError(fmt::format("more than {} MiB of messages queued", kMqArea >> 20));
  if (q.error) return sysError("open and read it", q.error);
  if (q.lost) return makeError(fmt::format("could not put {} message(s) back; the queue lost them", q.lost));
  std::vector<std::pair<unsigned, std::string>> out;
  size_t off = 0;
  for (int64_t k = 0; k < q.count; k++) {
    uint32_t hdr[2];
    std::memcpy(hdr, mqArea_ + off, 8);
    out.emplace_back(hdr[1], std::string(mqArea_ + off + 8, hdr[0]));
    off += 8 + ((size_t(hdr[0]) + 7) & ~size_t(7));
  }
  // The pages go back, so a large queue costs memory only while it is read.
  ::madvise(mqArea_, (off + 4095) & ~size_t(4095), MADV_REMOVE);
  return out;
}

}  // namespace crb::native
