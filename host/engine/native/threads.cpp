// Threads: registers (general, FS/GS base, full xsave incl. AVX-512), signal masks, names,
// robust lists, clear_child_tid, alternate signal stacks, rseq. Dump half, then restore half.
#include <linux/prctl.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

namespace {
constexpr long kGetRseqConf = 0x420f;  // PTRACE_GET_RSEQ_CONFIGURATION (5.13)
struct RseqConf {
  uint64_t ptr;
  uint32_t size, sig, flags, pad;
};
struct KernelStack {
  uint64_t sp;
  int32_t flags;
  int32_t pad;
  uint64_t size;
};
struct CloneArgs {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
      set_tid_size, cgroup;
};

std::string trimNl(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

Result<std::vector<std::string>> peekSigInfo(pid_t tid, bool shared) {
  struct {
    uint64_t off;
    uint32_t flags;
    int32_t nr;
  } args{0, shared ? 1u : 0u, 32};
  std::vector<std::string> out;
  for (;;) {
    siginfo_t si[32];
    long n = ::ptrace(PTRACE_PEEKSIGINFO, tid, &args, si);
    if (n < 0) return sysError(fmt::format("read pending signals of thread {}", tid), errno);
    for (long i = 0; i < n; i++) out.push_back(toHex(&si[i], sizeof si[i]));
    if (n < 32) break;
    args.off += uint64_t(n);
  }
  return out;
}
}  // namespace

Result<std::vector<std::string>> peekSharedSignals(pid_t tid) { return peekSigInfo(tid, true); }

Status dumpThreads(DumpCtx& c, pid_t pid, ProcessState& ps) {
  auto& rp = c.seizure->procs.at(pid);
  std::vector<pid_t> tids = rp.tids;
  std::sort(tids.begin(), tids.end());
  std::rotate(tids.begin(), std::find(tids.begin(), tids.end(), pid), std::find(tids.begin(), tids.end(), pid) + 1);
  uint64_t s = rp.scratch;
  for (pid_t tid : tids) {
    ThreadState t;
    t.tid = tid;
    CRB_ASSIGN(auto regs, getRegs(tid));
    regs.gp = rp.savedRegs.at(tid);  // as seized, before any injected syscall
    t.gpregs = toHex(&regs.gp, sizeof regs.gp);
    t.xstate = toHex(regs.xstate.data(), regs.xstate.size());
    if (rp.savedMask.count(tid)) {
      t.sigmask = rp.savedMask.at(tid);  // ours blocks everything while we inject
    } else if (::ptrace(PTRACE_GETSIGMASK, tid, reinterpret_cast<void*>(8), &t.sigmask) != 0) {
      return sysError(fmt::format("read signal mask of thread {}", tid), errno);
    }
    auto name = readProc(pid, fmt::format("task/{}/comm", tid));
    t.name = name.ok() ? trimNl(*name) : "";
    long len = 0;
    uint64_t head = 0;
    if (::syscall(SYS_get_robust_list, tid, &head, &len) == 0) {
      t.robustHead = head;
      t.robustLen = uint64_t(len);
    }
    RseqConf rc{};
    if (::ptrace(__ptrace_request(kGetRseqConf), tid, reinterpret_cast<void*>(sizeof rc), &rc) > 0 && rc.ptr) {
      t.rseqPtr = rc.ptr;
      t.rseqLen = rc.size;
      t.rseqSig = rc.sig;
    }
    auto inj = c.seizure->injector(pid, tid);
    CRB_CHECK(inj.check("read clear_child_tid", SYS_prctl, PR_GET_TID_ADDRESS, s));
    CRB_CHECK(readMem(pid, s, &t.clearTid, 8));
    CRB_CHECK(inj.check("read the alternate signal stack", SYS_sigaltstack, 0, s));
    KernelStack ks{};
    CRB_CHECK(readMem(pid, s, &ks, sizeof ks));
    c.seizure->noteStray(inj);
    t.altSp = ks.sp;
    t.altSize = ks.size;
    t.altFlags = ks.flags & ~SS_ONSTACK;
    CRB_ASSIGN(t.pending, peekSigInfo(tid, false));
    ps.threads.push_back(std::move(t));
  }
  c.stats.threads += tids.size();
  return success();
}

// ---------------------------------------------------------------- restore
// A process freshly cloned from crbench carries crbench's rseq registration: drop it before its
// memory is replaced, or the kernel would write into the restored memory.
Status resetInheritedThreadState(RestoreCtx& c, pid_t pid) {
  RseqConf rc{};
  if (::ptrace(__ptrace_request(kGetRseqConf), pid, reinterpret_cast<void*>(sizeof rc), &rc) > 0 && rc.ptr) {
    auto inj = c.inj(pid);
    CRB_CHECK(inj.check("unregister the inherited rseq area", SYS_rseq, rc.ptr, rc.size, 1 /*UNREGISTER*/, rc.sig));
  }
  uint64_t all = ~0ull;
  if (::ptrace(PTRACE_SETSIGMASK, pid, reinterpret_cast<void*>(8), &all) != 0)
    return sysError(fmt::format("block signals in pid {}", pid), errno);
  return success();
}

static Status restoreThreadAttrs(RestoreCtx& c, pid_t pid, const ThreadState& t) {
  auto inj = c.inj(t.tid);
  uint64_t s = c.scratch();
  uint64_t all = ~0ull;
  if (::ptrace(PTRACE_SETSIGMASK, t.tid, reinterpret_cast<void*>(8), &all) != 0)
    return sysError(fmt::format("block signals in thread {}", t.tid), errno);
  if (t.robustHead) CRB_CHECK(inj.check("set_robust_list", SYS_set_robust_list, t.robustHead, t.robustLen));
  CRB_CHECK(inj.check("set_tid_address", SYS_set_tid_address, t.clearTid));
  KernelStack ks{t.altSp, t.altFlags, 0, t.altSize};
  if (t.altFlags & SS_DISABLE) ks = {0, SS_DISABLE, 0, 0};
  CRB_CHECK(writeMem(pid, s, &ks, sizeof ks));
  CRB_CHECK(inj.check("sigaltstack", SYS_sigaltstack, s, 0));
  std::string name = t.name.substr(0, 15);
  CRB_CHECK(writeMem(pid, s, name.c_str(), name.size() + 1));
  CRB_CHECK(inj.check("set the thread name", SYS_prctl, PR_SET_NAME, s));
  if (t.rseqPtr) CRB_CHECK(inj.check("register rseq", SYS_rseq, t.rseqPtr, t.rseqLen, 0, t.rseqSig));
  return success();
}

Status restoreThreads(RestoreCtx& c, const ProcessState& ps) {
  uint64_t s = c.scratch();
  for (size_t i = 1; i < ps.threads.size(); i++) {
    const auto& t = ps.threads[i];
    pid_t setTid = t.tid;
    CloneArgs a{};
    a.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    a.set_tid = s + 256;
    a.set_tid_size = 1;
    CRB_CHECK(writeMem(ps.pid, s + 256, &setTid, sizeof setTid));
    CRB_CHECK(writeMem(ps.pid, s, &a, sizeof a));
    auto inj = c.inj(ps.pid);
    CRB_ASSIGN(long tid, inj.check(fmt::format("clone3 thread {}", t.tid), SYS_clone3, s, sizeof a));
    if (tid != t.tid) return makeError(fmt::format("thread {} was created as {}", t.tid, tid));
    c.traced.push_back(pid_t(tid));
    CRB_CHECK(waitStopped(pid_t(tid)));
  }
  for (auto& t : ps.threads) CRB_CHECK(restoreThreadAttrs(c, ps.pid, t));
  c.result.threads += ps.threads.size();
  return success();
}

Status finishThreads(RestoreCtx& c, const ProcessState& ps) {
  (void)c;
  for (auto& t : ps.threads) {
    ThreadRegs r;
    CRB_ASSIGN(std::string gp, fromHex(t.gpregs));
    CRB_ASSIGN(r.xstate, fromHex(t.xstate));
    if (gp.size() != sizeof r.gp) return makeError(fmt::format("bad register blob for thread {}", t.tid));
    std::memcpy(&r.gp, gp.data(), sizeof r.gp);
    // A thread stopped inside an interrupted system call: re-issue it when it resumes, as the
    // kernel would have (relative timeouts start again; the restart block is not carried over).
    long orig = long(r.gp.orig_rax), ret = long(r.gp.rax);
    if (orig >= 0 && (ret == -512 || ret == -513 || ret == -514 || ret == -516)) {
      r.gp.rax = r.gp.orig_rax;
      r.gp.rip -= 2;
    }
    r.gp.orig_rax = uint64_t(-1);
    CRB_CHECK(setRegs(t.tid, r));
    uint64_t mask = t.sigmask;
    if (::ptrace(PTRACE_SETSIGMASK, t.tid, reinterpret_cast<void*>(8), &mask) != 0)
      return sysError(fmt::format("set the signal mask of thread {}", t.tid), errno);
  }
  return success();
}

}  // namespace crb::native
