#include "engine/native/ptrace.hpp"

#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <map>

#include "core/fsutil.hpp"

namespace crb::native {

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

Result<user_regs_struct> getGpRegs(pid_t tid) {
  user_regs_struct r{};
  if (::ptrace(PTRACE_GETREGS, tid, nullptr, &r) != 0)
    return sysError(fmt::format("read registers of thread {}", tid), errno);
  return r;
}

Status setGpRegs(pid_t tid, const user_regs_struct& r) {
  if (::ptrace(PTRACE_SETREGS, tid, nullptr, &r) != 0)
    return sysError(fmt::format("set registers of thread {}", tid), errno);
  return success();
}

Result<ThreadRegs> getRegs(pid_t tid) {
  ThreadRegs t;
  CRB_ASSIGN(t.gp, getGpRegs(tid));
  std::string buf(64 * 1024, '\0');
  iovec iov{buf.data(), buf.size()};
  if (::ptrace(PTRACE_GETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) != 0)
    return sysError(fmt::format("read xsave state of thread {}", tid), errno);
  buf.resize(iov.iov_len);
  t.xstate = std::move(buf);
  return t;
}

Status setRegs(pid_t tid, const ThreadRegs& r) {
  if (!r.xstate.empty()) {
    std::string buf = r.xstate;
    iovec iov{buf.data(), buf.size()};
    if (::ptrace(PTRACE_SETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) != 0)
      return sysError(fmt::format("set xsave state of thread {}", tid), errno);
  }
  return setGpRegs(tid, r.gp);
}

void faultPoint(const char* point) {
  static const char* spec = ::getenv("CRBENCH_NATIVE_FAULT");
  if (!spec) return;
  static std::map<std::string, long> hits;
  std::string s(spec);
  auto colon = s.rfind(':');
  if (colon == std::string::npos || s.substr(0, colon) != point) return;
  if (++hits[point] == std::atol(s.c_str() + colon + 1)) ::kill(::getpid(), SIGKILL);
}

Result<int> waitStopped(pid_t tid) {
  int st = 0;
  for (;;) {
    pid_t w = ::waitpid(tid, &st, __WALL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return sysError(fmt::format("wait for thread {}", tid), errno);
    }
    break;
  }
  if (WIFEXITED(st) || WIFSIGNALED(st))
    return makeError(fmt::format("thread {} exited unexpectedly ({})", tid,
                                 WIFEXITED(st) ? fmt::format("status {}", WEXITSTATUS(st))
                                               : fmt::format("signal {}", WTERMSIG(st))));
  return st;
}

Result<long> Injector::call(long nr, uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5,
                            uint64_t a6) {
  CRB_ASSIGN(auto r, getGpRegs(tid_));
  r.rip = insn_;
  r.rax = uint64_t(nr);
  r.orig_rax = uint64_t(-1);  // no syscall-restart fix-up on the way out of the current stop
  r.rdi = a1;
  r.rsi = a2;
  r.rdx = a3;
  r.r10 = a4;
  r.r8 = a5;
  r.r9 = a6;
  CRB_CHECK(setGpRegs(tid_, r));
  faultPoint("inject-set");
  bool entered = false;
  int sig = 0;
  for (;;) {
    if (::ptrace(PTRACE_SYSCALL, tid_, nullptr, reinterpret_cast<void*>(long(sig))) != 0)
      return sysError(fmt::format("resume thread {} for injected syscall {}", tid_, nr), errno);
    sig = 0;
    CRB_ASSIGN(int st, waitStopped(tid_));
    int s = WSTOPSIG(st);
    int event = st >> 16;
    if (s == (SIGTRAP | 0x80)) {
      if (!entered) {
        entered = true;
        faultPoint("inject-entry");
        continue;
      }
      faultPoint("inject-exit");
      CRB_ASSIGN(auto out, getGpRegs(tid_));
      return long(out.rax);
    }
    if (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_CLONE || event == PTRACE_EVENT_VFORK) {
      unsigned long child = 0;
      ::ptrace(PTRACE_GETEVENTMSG, tid_, nullptr, &child);
      newChildren_.push_back(pid_t(child));
      continue;
    }
    if (event == PTRACE_EVENT_STOP || event != 0) continue;
    // A signal-delivery stop: keep the signal for the caller, do not deliver it now.
    stray_.push_back({tid_, s});
  }
}

Result<long> Injector::check(const std::string& what, long nr, uint64_t a1, uint64_t a2, uint64_t a3,
                             uint64_t a4, uint64_t a5, uint64_t a6) {
  CRB_ASSIGN(long rv, call(nr, a1, a2, a3, a4, a5, a6));
  if (rv < 0 && rv > -4096) return sysError(fmt::format("{} (in pid {})", what, tid_), int(-rv));
  return rv;
}

static Status memIo(pid_t pid, uint64_t addr, void* data, size_t len, bool write) {
  Fd fd(::open(fmt::format("/proc/{}/mem", pid).c_str(), (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC));
  if (!fd.valid()) return sysError(fmt::format("open /proc/{}/mem", pid), errno);
  auto* c = static_cast<char*>(data);
  while (len) {
    ssize_t n = write ? ::pwrite(fd.get(), c, len, off_t(addr)) : ::pread(fd.get(), c, len, off_t(addr));
    if (n <= 0)
      return sysError(fmt::format("{} memory of pid {} at {:#x}", write ? "write" : "read", pid, addr),
                      n < 0 ? errno : EIO);
    c += n;
    len -= size_t(n);
    addr += uint64_t(n);
  }
  return success();
}

Status writeMem(pid_t pid, uint64_t addr, const void* data, size_t len) {
  return memIo(pid, addr, const_cast<void*>(data), len, true);
}
Status readMem(pid_t pid, uint64_t addr, void* data, size_t len) { return memIo(pid, addr, data, len, false); }

}  // namespace crb::native
