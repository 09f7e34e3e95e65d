// Processes: seizing the tree, and per-process attributes (ids, sessions, credentials, rlimits,
// cwd, umask, personality, mm fields). Dump half first, restore half below.
#include <fcntl.h>
#include <linux/prctl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <sstream>

#include "engine/native/freeze_trace.hpp"
#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

std::string pathInTree(const std::string& prefix, const std::string& path) {
  if (prefix.empty() || path.rfind("/dev/", 0) == 0) return path;
  return prefix + path;
}

ProcessState& DumpCtx::proc(pid_t pid) {
  for (auto& p : tree.procs)
    if (p.pid == pid) return p;
  tree.procs.push_back({});
  tree.procs.back().pid = pid;
  return tree.procs.back();
}

const ProcessState* RestoreCtx::find(pid_t pid) const {
  for (auto& p : tree.procs)
    if (p.pid == pid) return &p;
  return nullptr;
}

// ---------------------------------------------------------------- seizing
Status Seizure::seizeThread(pid_t pid, pid_t tid, bool wait) {
  if (tid == pid) {
    auto stat = readStat(pid);
    if (stat.ok() && (*stat)[3] == "T") preStopped_.insert(pid);
  }
  if (::ptrace(PTRACE_SEIZE, tid, nullptr, reinterpret_cast<void*>(long(PTRACE_O_TRACESYSGOOD))) != 0) {
    if (errno == ESRCH) return success();  // exited meanwhile
    return sysError(fmt::format("seize thread {} of pid {} (is it traced by another debugger?)", tid, pid), errno);
  }
  seized_.push_back(tid);
  if (::ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) != 0)
    return sysError(fmt::format("interrupt thread {}", tid), errno);
  if (!wait) {
    pending_.push_back({pid, tid});
    return success();
  }
  return waitSeized(pid, tid);
}

Status Seizure::waitSeized(pid_t pid, pid_t tid) {
  for (;;) {
    int st = 0;
    if (::waitpid(tid, &st, __WALL) < 0) {
      if (errno == EINTR) continue;
      return sysError(fmt::format("wait for thread {} to stop", tid), errno);
    }
    if (WIFEXITED(st) || WIFSIGNALED(st)) {
      std::erase(seized_, tid);
      return success();
    }
    int event = st >> 16;
    if (event == PTRACE_EVENT_STOP) break;
    // A signal was on its way into the thread: let it be delivered as it would have been.
    ::ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(long(WSTOPSIG(st))));
  }
  auto& rp = procs[pid];
  rp.pid = pid;
  rp.wasStopped = preStopped_.count(pid) > 0;
  rp.tids.push_back(tid);
  CRB_ASSIGN(rp.savedRegs[tid], getGpRegs(tid));
  return success();
}

Status Seizure::waitPending() {
  Status first = success();
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto [pid, tid] : pending) {
    auto st = waitSeized(pid, tid);
    if (!st.ok() && first.ok()) first = st;
  }
  return first;
}

Status Seizure::useGuardian(std::shared_ptr<Guardian> g) {
  if (guard_) return success();
  if (g) {
    guard_ = std::move(g);
    return success();
  }
  CRB_ASSIGN(guard_, Guardian::start());
  return success();
}

Status Seizure::holdProcess(pid_t pid) {
  CRB_CHECK(useGuardian());
  if (::kill(pid, 0) != 0) return sysError(fmt::format("process {}", pid), errno);
  for (pid_t t : listTasks(pid)) CRB_CHECK(seizeThread(pid, t, false));
  return success();
}

Status Seizure::seizeTree(pid_t root, const std::function<Status()>& thaw, const std::vector<pid_t>& moreRoots) {
  if (auto g = useGuardian(); !g.ok()) {
    if (thaw) (void)thaw();
    return g;
  }
  if (thaw) {
    // Frozen: nothing forks or exits under us, so one walk finds every thread.
    Status walked = success();
    std::vector<pid_t> queue{root};
    queue.insert(queue.end(), moreRoots.begin(), moreRoots.end());
    while (!queue.empty() && walked.ok()) {
      pid_t p = queue.front();
      queue.erase(queue.begin());
      auto stat = readStat(p);
      if (!stat.ok() || (*stat)[3] == "Z") continue;  // zombies are handled by the loop below
      for (pid_t t : listTasks(p)) {
        walked = seizeThread(p, t, false);
        if (!walked.ok()) break;
      }
      for (pid_t ch : listChildren(p)) queue.push_back(ch);
    }
    freezeTrace("seize_walk");
    faultPoint("frozen");
    Status thawed = thaw();
    freezeTrace("seize_thaw");
    Status stopped = waitPending();
    freezeTrace("seize_waitpending");
    CRB_CHECK(walked);
    CRB_CHECK(thawed);
    CRB_CHECK(stopped);
  }
  if (::kill(root, 0) != 0) return sysError(fmt::format("process {}", root), errno);
  for (bool changed = true; changed;) {
    changed = false;
    std::vector<pid_t> queue{root}, seen;
    queue.insert(queue.end(), moreRoots.begin(), moreRoots.end());
    while (!queue.empty()) {
      pid_t p = queue.front();
      queue.erase(queue.begin());
      seen.push_back(p);
      auto stat = readStat(p);
      if (!stat.ok()) continue;
      if ((*stat)[3] == "Z") {
        if (listTasks(p).size() > 1)
          return makeError(fmt::format("unsupported: process {} whose main thread has exited", p));
        if (zombies.insert(p).second) changed = true;
        continue;
      }
      for (pid_t t : listTasks(p)) {
        auto& rp = procs[p];
        if (std::find(rp.tids.begin(), rp.tids.end(), t) != rp.tids.end()) continue;
        CRB_CHECK(seizeThread(p, t));
        changed = true;
      }
      for (pid_t ch : listChildren(p)) queue.push_back(ch);
    }
    order = seen;
  }
  freezeTrace("seize_rewalk");
  for (auto it = procs.begin(); it != procs.end();) {
    if (it->second.tids.empty()) it = procs.erase(it);
    else ++it;
  }
  return success();
}

static Result<uint64_t> findSyscallInsn(pid_t pid) {
  CRB_ASSIGN(auto maps, readMaps(pid, false));
  for (auto& m : maps) {
    if (m.path != "[vdso]") continue;
    std::string buf(m.end - m.start, '\0');
    CRB_CHECK(readMem(pid, m.start, buf.data(), buf.size()));
    for (size_t i = 0; i + 1 < buf.size(); i++)
      if (uint8_t(buf[i]) == 0x0f && uint8_t(buf[i + 1]) == 0x05) return m.start + i;
  }
  return makeError(fmt::format("unsupported: process {} has no vdso to run system calls through", pid));
}

Injector Seizure::injector(pid_t pid, pid_t tid) {
  auto& rp = procs.at(pid);
  // An injection after finishInjection() (the group stop still holds): record the original again.
  if (guard_ && rp.safe && rp.savedRegs.count(tid)) (void)guard_->noteRegs(pid, tid, rp.savedRegs.at(tid));
  rp.touched.insert(tid);
  return Injector(tid, rp.syscallInsn);
}

void Seizure::noteStray(Injector& inj) {
  for (auto& s : inj.straySignals()) stray[s.tid].push_back(s);
  inj.straySignals().clear();
}

// Puts the process into a group stop before we change anything in it: if we die from here on,
// the kernel detaches its threads but keeps them stopped (guardian.hpp), and the guardian puts
// back what the record says. The stop is started by the main thread taking a SIGSTOP while all its
// other signals are blocked, so it takes nothing else; every thread keeps signals blocked while we
// inject (a signal taken then would leave the queue the dump reads).
Status Seizure::safetyStop(pid_t pid) {
  auto& rp = procs.at(pid);
  if (rp.safe) return success();
  for (pid_t t : rp.tids) CRB_CHECK(guard_->noteRegs(pid, t, rp.savedRegs.at(t)));
  if (!rp.wasStopped) {
    CRB_CHECK(guard_->noteStopped(pid));
    rp.stoppedByUs = true;
    if (::syscall(SYS_tgkill, pid, pid, SIGSTOP) != 0) return sysError(fmt::format("stop process {}", pid), errno);
  }
  rp.masked = true;
  for (pid_t t : rp.tids) {
    uint64_t mask = 0, all = ~0ull;
    if (::ptrace(PTRACE_GETSIGMASK, t, reinterpret_cast<void*>(8), &mask) != 0)
      return sysError(fmt::format("read signal mask of thread {}", t), errno);
    CRB_CHECK(guard_->noteMask(pid, t, mask));
    rp.savedMask[t] = mask;
    if (::ptrace(PTRACE_SETSIGMASK, t, reinterpret_cast<void*>(8), &all) != 0)
      return sysError(fmt::format("block signals of thread {}", t), errno);
  }
  if (rp.wasStopped) {
    rp.safe = true;
    return success();
  }
  faultPoint("safety-stop");
  int sig = 0;
  for (;;) {
    if (::ptrace(PTRACE_CONT, pid, nullptr, reinterpret_cast<void*>(long(sig))) != 0)
      return sysError(fmt::format("resume pid {} into its group stop", pid), errno);
    sig = 0;
    CRB_ASSIGN(int st, waitStopped(pid));
    int s = WSTOPSIG(st), event = st >> 16;
    if (event == PTRACE_EVENT_STOP) {
      if (s == SIGTRAP) continue;  // a pending interrupt trap, not the group stop yet
      break;
    }
    if (event != 0) continue;
    if (s == SIGSTOP) {
      sig = SIGSTOP;  // let the stop begin: the thread traps again as the group stop's first member
      continue;
    }
    stray[pid].push_back({pid, s});  // only a synchronous signal could get through the mask
  }
  rp.safe = true;
  return success();
}

Status Seizure::prepareInjection(pid_t pid) {
  freezeTrace("prep_start");
  CRB_CHECK(safetyStop(pid));
  freezeTrace("prep_safetystop");
  auto& rp = procs.at(pid);
  CRB_ASSIGN(rp.syscallInsn, findSyscallInsn(pid));
  freezeTrace("prep_findsyscall");
  CRB_CHECK(guard_->noteMapping(pid, rp.syscallInsn));
  auto inj = injector(pid, pid);
  CRB_ASSIGN(long a, inj.check("map a scratch page", SYS_mmap, 0, kPage, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, uint64_t(-1), 0));
  noteStray(inj);
  rp.scratch = uint64_t(a);
  freezeTrace("prep_mmap");
  guard_->noteScratch(pid, rp.scratch);
  return success();
}

// Puts back registers and masks; the process stays in its group stop until release() or killAll().
Status Seizure::finishInjection(pid_t pid) {
  auto& rp = procs.at(pid);
  if (rp.scratch) {
    auto inj = injector(pid, pid);
    CRB_CHECK(inj.check("unmap the scratch page", SYS_munmap, rp.scratch, kPage));
    noteStray(inj);
    rp.scratch = 0;
    if (guard_) guard_->noteScratch(pid, 0);
  }
  for (pid_t t : rp.touched) CRB_CHECK(setGpRegs(t, rp.savedRegs.at(t)));
  rp.touched.clear();
  if (rp.masked) {
    for (auto& [t, mask] : rp.savedMask) {
      uint64_t m = mask;
      if (::ptrace(PTRACE_SETSIGMASK, t, reinterpret_cast<void*>(8), &m) != 0)
        return sysError(fmt::format("put back the signal mask of thread {}", t), errno);
    }
    rp.masked = false;
  }
  if (guard_)
    for (pid_t t : rp.tids) guard_->noteRestored(t);
  return success();
}

Status Seizure::killAll(const std::function<void()>& reap) {
  for (pid_t p : order) ::kill(p, SIGKILL);
  // Nothing left to put back, and the pids will be reused by the restore: the guardian must not
  // touch them if we die from here on.
  if (guard_)
    for (pid_t p : order) guard_->forget(p);
  // As their tracer we must collect each dead thread before its parent can: non-leaders first,
  // a group leader is reported only after the rest of its group.
  auto leaders = std::stable_partition(seized_.begin(), seized_.end(), [&](pid_t t) { return !procs.count(t); });
  // Children before parents: a pid namespace's init that is killed waits for every process in
  // its namespace, so waiting for it first (a whole container) would never return.
  std::reverse(leaders, seized_.end());
  for (pid_t t : seized_) {
    int st;
    while (::waitpid(t, &st, __WALL) < 0 && errno == EINTR) {
    }
  }
  seized_.clear();
  released_ = true;
  // The pids must be free again before a restore can take them: wait until every process but
  // the root (whose parent reaps it) is gone, reaped by its new parent.
  for (int i = 0; i < 300; i++) {
    if (reap) reap();
    bool any = false;
    for (size_t k = reap ? 0 : 1; k < order.size(); k++) any = any || ::kill(order[k], 0) == 0;
    if (!any) break;
    ::usleep(10000);
  }
  return success();
}

void Seizure::release() {
  if (released_) return;
  released_ = true;
  // A thread seized but not yet stopped cannot be detached: collect its stop first.
  (void)waitPending();
  for (auto& [pid, rp] : procs) {
    if (rp.scratch || rp.masked || !rp.touched.empty()) (void)finishInjection(pid);
    for (pid_t t : rp.touched) (void)setGpRegs(t, rp.savedRegs.at(t));
  }
  for (pid_t t : seized_) ::ptrace(PTRACE_DETACH, t, nullptr, nullptr);
  // Detached while in the group stop, the threads stop again as plain stopped tasks; SIGCONT ends
  // the stop now that nothing traces them (so an untraced default SIGCONT is simply discarded).
  for (auto& [pid, rp] : procs)
    if (rp.stoppedByUs) {
      ::kill(pid, SIGCONT);
      if (guard_) guard_->noteUnstopped(pid);
    }
  // Signals that arrived while we held the tree are delivered now (their siginfo is not kept).
  for (auto& [tid, sigs] : stray)
    for (auto& s : sigs) {
      pid_t tgid = tid;
      for (auto& [pid, rp] : procs)
        if (std::find(rp.tids.begin(), rp.tids.end(), tid) != rp.tids.end()) tgid = pid;
      ::syscall(SYS_tgkill, tgid, tid, s.sig);
    }
  seized_.clear();
}

// ---------------------------------------------------------------- process attributes
static std::vector<uint64_t> numbers(const std::string& s) {
  std::vector<uint64_t> v;
  std::istringstream in(s);
  uint64_t x;
  while (in >> x) v.push_back(x);
  return v;
}

Status dumpProcessAttrs(DumpCtx& c, pid_t pid, ProcessState& ps) {
  CRB_ASSIGN(auto st, readStatus(pid));
  CRB_ASSIGN(auto stat, readStat(pid));
  ps.ppid = pid_t(std::stol(stat[4]));
  ps.pgid = pid_t(std::stol(stat[5]));
  ps.sid = pid_t(std::stol(stat[6]));
  ps.comm = stat[2];
  auto u = numbers(st["Uid"]), g = numbers(st["Gid"]);
  for (int i = 0; i < 4 && i < int(u.size()); i++) ps.uids[i] = uint32_t(u[i]);
  for (int i = 0; i < 4 && i < int(g.size()); i++) ps.gids[i] = uint32_t(g[i]);
  for (auto x : numbers(st["Groups"])) ps.groups.push_back(uint32_t(x));
  ps.umask = unsigned(std::stoul(st.count("Umask") ? st["Umask"] : "022", nullptr, 8));
  if (st["Seccomp"] != "0") c.refuse(fmt::format("seccomp filter in process {}", pid));
  // A session leader's controlling terminal: tty.cpp (finishTtys).
  CRB_ASSIGN(auto pers, readProc(pid, "personality"));
  ps.personality = parseHex(pers);
  CRB_ASSIGN(ps.cwd, readLink(fmt::format("/proc/{}/cwd", pid)));
  CRB_ASSIGN(ps.exe, readLink(fmt::format("/proc/{}/exe", pid)));
  CRB_ASSIGN(auto root, readLink(fmt::format("/proc/{}/root", pid)));
  std::string wantRoot = c.opts.rootPrefix.empty() ? "/" : c.opts.rootPrefix;
  // A container's process shows "/" from the host: /proc prints paths relative to its own root.
  if (root != wantRoot && !(root == "/" && !c.opts.rootPrefix.empty())) c.refuse(fmt::format("process {} has root directory {} (chroot)", pid, root));
  if (!c.opts.rootPrefix.empty()) {
    if (ps.cwd.rfind(c.opts.rootPrefix, 0) == 0) ps.cwd = ps.cwd.substr(c.opts.rootPrefix.size());
    if (ps.exe.rfind(c.opts.rootPrefix, 0) == 0) ps.exe = ps.exe.substr(c.opts.rootPrefix.size());
    if (ps.cwd.empty()) ps.cwd = "/";
  }
  if (ps.cwd.find(" (deleted)") != std::string::npos)
    c.refuse(fmt::format("process {} has a deleted working directory", pid));
  // The time namespace is namespaces.cpp's (a restored tree has one of its own).
  for (const char* ns : {"mnt", "net", "ipc", "uts", "pid", "user", "cgroup"}) {
    auto mine = readLink(fmt::format("/proc/{}/ns/{}", c.opts.nsReference ? c.opts.nsReference : ::getpid(), ns));
    auto theirs = readLink(fmt::format("/proc/{}/ns/{}", pid, ns));
    // An IPC namespace the whole tree shares is carried (sysv_ipc.cpp).
    if (std::string(ns) == "ipc" && theirs.ok() && c.seizure && !c.seizure->order.empty() &&
        readLink(fmt::format("/proc/{}/ns/ipc", c.seizure->order[0])).ok() &&
        *readLink(fmt::format("/proc/{}/ns/ipc", c.seizure->order[0])) == *theirs)
      continue;
    if (mine.ok() && theirs.ok() && *mine != *theirs)
      c.refuse(fmt::format("process {} in its own {} namespace ({})", pid, ns, *theirs));
  }
  // POSIX timers: events.cpp (dumpPosixTimers).
  for (int r = 0; r < RLIM_NLIMITS; r++) {
    rlimit64 l{};
    if (::prlimit64(pid, __rlimit_resource(r), nullptr, &l) != 0)
      return sysError(fmt::format("read rlimit {} of pid {}", r, pid), errno);
    ps.rlimits.push_back({l.rlim_cur, l.rlim_max});
  }
  // prctl_mm_map order: start_code end_code start_data end_data start_brk brk start_stack
  // arg_start arg_end env_start env_end
  auto f = [&](int i) { return uint64_t(std::stoull(stat[size_t(i)])); };
  auto inj = c.seizure->injector(pid, pid);
  CRB_ASSIGN(long brk, inj.check("read brk", SYS_brk, 0));
  c.seizure->noteStray(inj);
  ps.mm = {f(26), f(27), f(45), f(46), f(47), uint64_t(brk), f(28), f(48), f(49), f(50), f(51)};
  CRB_ASSIGN(auto auxv, readProc(pid, "auxv"));
  ps.auxv = toHex(auxv.data(), auxv.size());
  return success();
}

// Restore half: runs in the restored process through injected syscalls, after memory.
Status restoreProcessAttrs(RestoreCtx& c, const ProcessState& ps) {
  auto inj = c.inj(ps.pid);
  uint64_t s = c.scratch();
  std::string cwd = pathInTree(c.opts.rootPrefix.empty() || c.opts.childSetup || !c.opts.setnsBeforeTree.empty() ? "" : c.opts.rootPrefix, ps.cwd);
  CRB_CHECK(writeMem(ps.pid, s, cwd.c_str(), cwd.size() + 1));
  CRB_CHECK(inj.check("chdir " + cwd, SYS_chdir, s));
  CRB_CHECK(inj.check("umask", SYS_umask, ps.umask));
  CRB_CHECK(inj.check("personality", SYS_personality, ps.personality));
  // mm fields (brk, arg/env areas, auxv, exe link) in one PR_SET_MM_MAP.
  CRB_ASSIGN(std::string auxv, fromHex(ps.auxv));
  if (ps.mm.size() == 11) {
    struct prctl_mm_map m {};
    __u64* fields = &m.start_code;
    for (int i = 0; i < 11; i++) fields[i] = ps.mm[size_t(i)];
    m.auxv = reinterpret_cast<__u64*>(s + 512);
    m.auxv_size = uint32_t(auxv.size());
    m.exe_fd = c.exeFds.count(ps.pid) ? uint32_t(c.exeFds.at(ps.pid)) : uint32_t(-1);
    CRB_CHECK(writeMem(ps.pid, s + 512, auxv.data(), auxv.size()));
    CRB_CHECK(writeMem(ps.pid, s, &m, sizeof m));
    CRB_CHECK(inj.check("prctl(PR_SET_MM_MAP)", SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, s, sizeof m));
  }
  std::string comm = ps.comm.substr(0, 15);
  CRB_CHECK(writeMem(ps.pid, s, comm.c_str(), comm.size() + 1));
  CRB_CHECK(inj.check("set the process name", SYS_prctl, PR_SET_NAME, s));
  for (size_t r = 0; r < ps.rlimits.size(); r++) {
    rlimit64 l{ps.rlimits[r][0], ps.rlimits[r][1]};
    if (::prlimit64(ps.pid, __rlimit_resource(int(r)), &l, nullptr) != 0)
      return sysError(fmt::format("set rlimit {} of pid {}", r, ps.pid), errno);
  }
  return success();
}

}  // namespace crb::native

namespace crb::native {
// Credentials last: once they drop, the process may no longer be ours to shape.
Status restoreCreds(RestoreCtx& c, const ProcessState& ps) {
  bool allRoot = true;
  for (int i = 0; i < 4; i++) allRoot = allRoot && ps.uids[size_t(i)] == 0 && ps.gids[size_t(i)] == 0;
  if (allRoot && ps.groups.empty()) return success();
  auto inj = c.inj(ps.pid);
  uint64_t s = c.scratch();
  if (!ps.groups.empty()) CRB_CHECK(writeMem(ps.pid, s, ps.groups.data(), ps.groups.size() * 4));
  CRB_CHECK(inj.check("setgroups", SYS_setgroups, ps.groups.size(), s));
  CRB_CHECK(inj.check("setresgid", SYS_setresgid, ps.gids[0], ps.gids[1], ps.gids[2]));
  CRB_CHECK(inj.check("setfsgid", SYS_setfsgid, ps.gids[3]));
  CRB_CHECK(inj.check("setresuid", SYS_setresuid, ps.uids[0], ps.uids[1], ps.uids[2]));
  CRB_CHECK(inj.check("setfsuid", SYS_setfsuid, ps.uids[3]));
  return success();
}
}  // namespace crb::native
