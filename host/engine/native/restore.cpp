// The restore: crbench clones the root (clone3 with set_tid), every other process and thread is
// created by clone3 injected into its restored parent, and each process is then reshaped from
// inside by injected system calls run from a bootstrap page mapped at an address no restored
// mapping uses. Registers are set last and all threads are released together. Every traced
// process dies with crbench (PTRACE_O_EXITKILL) and is killed on any error: no half-restored
// process survives a failed restore.
#include <fcntl.h>
#include <poll.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>

#include "core/fsutil.hpp"

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"
#include "engine/native/incremental.hpp"
#include "engine/native/lazy.hpp"

namespace crb::native {

namespace {
using Clock = std::chrono::steady_clock;
double msSince(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

struct CloneArgs {
  uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
};

Result<TreeState> loadTree(const std::filesystem::path& dir, Json* inventory) {
  CRB_ASSIGN(Json inv, readJsonImage(dir, "inventory.img"));
  if (inv.value("engine", "") != "crbench-native")
    return makeError("image " + dir.string() + " was not written by the crbench native engine");
  TreeState t;
  try {
    for (auto& p : inv.at("pids")) {
      CRB_ASSIGN(Json j, readJsonImage(dir, fmt::format("core-{}.img", p.get<int>())));
      t.procs.push_back(j.get<ProcessState>());
    }
    CRB_ASSIGN(Json f, readJsonImage(dir, "files.img"));
    t.files = f.at("files").get<std::vector<FileDesc>>();
    t.pipes = f.at("pipes").get<std::vector<PipeObject>>();
    t.shmem = f.at("shmem").get<std::vector<ShmemObject>>();
    t.mapped = f.at("mapped").get<std::vector<MappedFile>>();
    t.unixSockets = f.value("unix", std::vector<UnixSocket>{});
  } catch (const std::exception& e) {
    return makeError("image " + dir.string() + " has unexpected content: " + e.what(), "dump again");
  }
  if (inventory) *inventory = inv;
  return t;
}

// An address range of kBootSize free in every restored process and in crbench.
Result<uint64_t> chooseBoot(const TreeState& t) {
  for (uint64_t cand = 0x100000000ull; cand < 0x7f0000000000ull; cand += 0x10000000000ull) {
    bool clash = false;
    for (auto& ps : t.procs)
      for (auto& v : ps.vmas) clash = clash || (v.start < cand + kBootSize && v.end > cand);
    if (clash) continue;
    void* p = ::mmap(reinterpret_cast<void*>(cand), kBootSize, PROT_READ | PROT_WRITE | PROT_EXEC,
                     MAP_PRIVATE | MAP_ANONYMOUS | 0x100000 /*MAP_FIXED_NOREPLACE*/, -1, 0);
    if (p == MAP_FAILED) continue;
    auto* code = static_cast<uint8_t*>(p);
    code[0] = 0x0f;  // syscall
    code[1] = 0x05;
    code[2] = 0xcc;  // int3: never reached, we stop at syscall exit
    return cand;
  }
  return makeError("no address range is free in every process of the image for the restore's bootstrap page");
}

struct RootChild {
  const RestoreOptions* opts;
};

// Child side of the root's clone3: runs in a copy of crbench, system calls only.
[[noreturn]] void rootChild(const RestoreOptions& opts) {
  if (opts.childSetup) {
    int rc = opts.childSetup();
    if (rc < 0) ::syscall(SYS_exit_group, 120);
  }
  ::ptrace(PTRACE_TRACEME, 0, nullptr, nullptr);
  ::syscall(SYS_kill, ::syscall(SYS_getpid), SIGSTOP);
  ::syscall(SYS_exit_group, 121);
  __builtin_unreachable();
}

class Restorer {
 public:
  Restorer(RestoreCtx& c) : c_(c) {}
  ~Restorer() {
    if (!ok_) {
      for (pid_t t : c_.traced) ::kill(t, SIGKILL);
      if (c_.result.rootPid > 0) ::waitpid(c_.result.rootPid, nullptr, __WALL);
      for (pid_t t : c_.traced) ::waitpid(t, nullptr, __WALL | WNOHANG);
    }
    closeTracerFds();
    finishSysvIpc(c_, ok_);
    if (c_.boot) ::munmap(reinterpret_cast<void*>(c_.boot), kBootSize);
  }
  void closeTracerFds() {
    for (auto& [k, v] : c_.fileFds) ::close(v);
    for (auto& [k, v] : c_.mappedFds) ::close(v);
    for (auto& [k, v] : c_.shmemFds) ::close(v);
    for (auto& [k, v] : c_.exeFds) ::close(v);
    for (auto& [k, v] : c_.pipeFds) {
      ::close(v.first);
      ::close(v.second);
    }
    c_.fileFds.clear();
    c_.mappedFds.clear();
    c_.shmemFds.clear();
    c_.exeFds.clear();
    c_.pipeFds.clear();
  }
  Status run();
  bool ok_ = false;

 private:
  Status createRoot(const ProcessState& root);
  Status createTree();
  RestoreCtx& c_;
};

pid_t setTidFor(const RestoreCtx& c, const ProcessState& ps) {
  (void)c;
  return ps.pid;
}

Status Restorer::createRoot(const ProcessState& root) {
  if (c_.opts.seizeRoot > 0 && &root == &c_.tree.procs[0]) {
    // Fresh namespaces: the root exists (pid 1, its mounts made), blocked in a read; the
    // interrupt stop is where the injections start (they clear the read's restart).
    pid_t pid = c_.opts.seizeRoot;
    long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_EXITKILL;
    if (pid != root.pid) return makeError(fmt::format("the new namespace's init is pid {}, the image's root {}", pid, root.pid));
    if (::ptrace(PTRACE_SEIZE, pid, nullptr, reinterpret_cast<void*>(opts)) != 0)
      return sysError("seize the new namespace's init", errno);
    c_.result.rootPid = pid;
    c_.traced.push_back(pid);
    if (::ptrace(PTRACE_INTERRUPT, pid, nullptr, nullptr) != 0) return sysError("interrupt the new namespace's init", errno);
    CRB_ASSIGN(int st, waitStopped(pid));
    if ((st >> 16) != PTRACE_EVENT_STOP) return makeError(fmt::format("the new namespace's init stopped with status {:#x}", st));
    // It shares our fd table (CLONE_FILES): its own copy now holds every file opened for the tree.
    CRB_CHECK(c_.inj(pid).check("unshare the fd table", SYS_unshare, CLONE_FILES));
    return success();
  }
  CloneArgs a{};
  pid_t want = setTidFor(c_, root);
  a.flags = uint64_t(c_.opts.cloneNamespaces);
  a.exit_signal = SIGCHLD;
  a.set_tid = reinterpret_cast<uint64_t>(&want);
  a.set_tid_size = 1;
  long pid = ::syscall(SYS_clone3, &a, sizeof a);
  if (pid == 0) rootChild(c_.opts);
  if (pid < 0) {
    int e = errno;
    return sysError(fmt::format("clone3 with pid {}", want), e)
        .context(e == EEXIST ? "pid is in use (the original, or a zombie not yet reaped by its parent)" : "create the root");
  }
  c_.result.rootPid = pid_t(pid);
  c_.traced.push_back(pid_t(pid));
  CRB_ASSIGN(int st, waitStopped(pid_t(pid)));
  if (WSTOPSIG(st) != SIGSTOP) return makeError("the restored root did not stop as expected");
  long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_EXITKILL;
  if (::ptrace(PTRACE_SETOPTIONS, pid, nullptr, reinterpret_cast<void*>(opts)) != 0)
    return sysError("set ptrace options on the restored root", errno);
  return success();
}

Status Restorer::createTree() {
  uint64_t s = c_.scratch();
  for (auto& ps : c_.tree.procs) {
    if (ps.zombie) continue;
    auto inj = c_.inj(ps.pid);
    uint64_t all = ~0ull;
    if (::ptrace(PTRACE_SETSIGMASK, ps.pid, reinterpret_cast<void*>(8), &all) != 0)
      return sysError(fmt::format("block signals in pid {}", ps.pid), errno);
    if (ps.sid == ps.pid) {
      CRB_CHECK(inj.check("setsid", SYS_setsid));
      CRB_CHECK(takeControllingTty(c_, ps));  // before its children are cloned: they inherit it
    } else if (ps.pgid == ps.pid) {
      CRB_CHECK(inj.check("setpgid", SYS_setpgid, 0, 0));
    }
    for (auto& ch : c_.tree.procs) {
      if (ch.ppid != ps.pid || ch.pid == ps.pid) continue;
      CloneArgs a{};
      pid_t want = setTidFor(c_, ch);
      a.exit_signal = SIGCHLD;
      a.set_tid = s + 256;
      a.set_tid_size = 1;
      CRB_CHECK(writeMem(ps.pid, s + 256, &want, sizeof want));
      CRB_CHECK(writeMem(ps.pid, s, &a, sizeof a));
      CRB_ASSIGN(long pid, inj.check(fmt::format("clone3 process {}", ch.pid), SYS_clone3, s, sizeof a));
      if (pid != ch.pid) return makeError(fmt::format("process {} was created as {}", ch.pid, pid));
      c_.traced.push_back(pid_t(pid));
      CRB_ASSIGN(int st, waitStopped(pid_t(pid)));
      (void)st;
    }
  }
  // Process groups led by another process of the tree, now that every leader exists.
  for (auto& ps : c_.tree.procs) {
    if (ps.zombie || ps.pgid == ps.pid || ps.sid == ps.pid || !c_.find(ps.pgid)) continue;
    auto inj = c_.inj(ps.pid);
    CRB_CHECK(inj.check(fmt::format("join process group {}", ps.pgid), SYS_setpgid, 0, uint64_t(ps.pgid)));
  }
  return success();
}

Status Restorer::run() {
  auto t0 = Clock::now();
  // Our own fd table is what the tree inherits: lift the fd limit and find a range above
  // every fd number the tree uses.
  rlimit nofile{};
  ::getrlimit(RLIMIT_NOFILE, &nofile);
  nofile.rlim_cur = nofile.rlim_max;
  ::setrlimit(RLIMIT_NOFILE, &nofile);
  int maxFd = 2;
  for (auto& ps : c_.tree.procs)
    for (auto& e : ps.fds) maxFd = std::max(maxFd, e.fd);
  c_.fdBase = maxFd + 1;
  if (rlim_t(c_.fdBase) + 4096 > nofile.rlim_cur) return makeError("the tree uses fd numbers beyond crbench's fd limit");
  CRB_ASSIGN(auto blobs, RawImageReader::open(c_.dir, "blobs.img"));
  CRB_CHECK(openFilesForRestore(c_, blobs, false));
  CRB_CHECK(createShmemObjects(c_, blobs));
  CRB_CHECK(openFilesForRestore(c_, blobs, true));
  CRB_CHECK(blobs.verifyComplete());
  CRB_CHECK(openMappedFiles(c_));
  if (c_.opts.bootReady) {
    c_.boot = c_.opts.bootReady;
  } else {
    CRB_ASSIGN(c_.boot, chooseBoot(c_.tree));
  }
  CRB_CHECK(prepareSysvIpc(c_));
  for (int fd : c_.opts.setnsBeforeTree)
    if (::setns(fd, 0) != 0) return sysError("join the target's namespaces (setns)", errno);
  CRB_CHECK(createUnixSockets(c_));
  CRB_CHECK(restoreSysvIpc(c_));
  CRB_CHECK(restorePosixMqueues(c_));
  if (!c_.opts.timeNamespaceReady) CRB_CHECK(enterTimeNamespace(c_));  // namespaces.cpp: the tree's clocks carry on
  c_.result.phasesMs["prepare"] = msSince(t0);

  auto t1 = Clock::now();
  if (c_.tree.procs.empty()) return makeError("image holds no process");
  CRB_CHECK(createRoot(c_.tree.procs[0]));
  // Sibling trees of the image (parent outside it) are created by the restorer too.
  pid_t firstRoot = c_.result.rootPid;
  for (auto& ps : c_.tree.procs)
    if (&ps != &c_.tree.procs[0] && !c_.find(ps.ppid)) {
      if (ps.zombie) return makeError(fmt::format("process {} is a zombie without a parent in the image", ps.pid));
      CRB_CHECK(createRoot(ps));
    }
  c_.result.rootPid = firstRoot;
  CRB_CHECK(createTree());
  c_.result.phasesMs["fork"] = msSince(t1);

  auto t2 = Clock::now();
  for (auto& ps : c_.tree.procs) {
    if (ps.zombie) continue;
    CRB_ASSIGN(auto pages, RawImageReader::open(c_.dir, fmt::format("pages-{}.img", ps.pid)));
    CRB_CHECK(resetInheritedThreadState(c_, ps.pid));
    CRB_CHECK(restoreFdTable(c_, ps));
    CRB_CHECK(restoreEpollWatches(c_, ps));
    CRB_CHECK(restoreControllingTty(c_, ps));
    CRB_CHECK(restoreDevTty(c_, ps));
    CRB_CHECK(restoreMemory(c_, ps, pages));
    CRB_CHECK(restoreProcessAttrs(c_, ps));
    CRB_CHECK(restoreSignals(c_, ps));
    CRB_CHECK(restoreThreads(c_, ps));
    CRB_CHECK(restorePosixTimers(c_, ps));  // events.cpp: after the threads a timer may signal
    CRB_CHECK(closeRestoreFds(c_, ps));
    c_.result.processes++;
  }
  c_.result.phasesMs["state"] = msSince(t2);
  auto t3 = Clock::now();
  // Zombies: created like any child, then made to exit with their recorded status.
  for (auto& ps : c_.tree.procs) {
    if (!ps.zombie) continue;
    auto inj = c_.inj(ps.pid);
    if (WIFSIGNALED(ps.exitCode)) {
      ::kill(ps.pid, WTERMSIG(ps.exitCode));
      uint64_t none = 0;
      ::ptrace(PTRACE_SETSIGMASK, ps.pid, reinterpret_cast<void*>(8), &none);
      CRB_CHECK(inj.check("rt_sigaction default", SYS_rt_sigaction, WTERMSIG(ps.exitCode), 0, 0, 8));
      ::ptrace(PTRACE_CONT, ps.pid, nullptr, nullptr);
      for (;;) {
        int st;
        if (::waitpid(ps.pid, &st, __WALL) < 0 || WIFEXITED(st) || WIFSIGNALED(st)) break;
        ::ptrace(PTRACE_CONT, ps.pid, nullptr, reinterpret_cast<void*>(long(WSTOPSIG(st))));
      }
    } else {
      (void)inj.call(SYS_exit_group, uint64_t(WEXITSTATUS(ps.exitCode)));
    }
    std::erase(c_.traced, ps.pid);
  }
  for (auto& ps : c_.tree.procs)
    if (!ps.zombie) CRB_CHECK(restoreSignalQueues(c_, ps));
  for (auto& ps : c_.tree.procs)
    if (!ps.zombie) CRB_CHECK(restoreCreds(c_, ps));
  for (auto& ps : c_.tree.procs)
    if (!ps.zombie) CRB_CHECK(restoreListenerCreds(c_, ps));
  for (auto& ps : c_.tree.procs) {
    if (ps.zombie) continue;
    auto inj = c_.inj(ps.pid);
    CRB_CHECK(inj.check("unmap the bootstrap page", SYS_munmap, c_.boot, kBootSize));
    CRB_CHECK(finishThreads(c_, ps));
  }
  c_.result.phasesMs["finish"] = msSince(t3);
  CRB_CHECK(finishInetSockets(c_));
  // Release: every thread leaves its ptrace stop with its own registers.
  for (auto& ps : c_.tree.procs)
    if (!ps.zombie)
      for (auto& t : ps.threads)
        if (::ptrace(PTRACE_DETACH, t.tid, nullptr, nullptr) != 0)
          return sysError(fmt::format("release restored thread {}", t.tid), errno);
  ok_ = true;
  closeTracerFds();
  return success();
}
}  // namespace

// Reap the restore helper and read the JSON result (or error) it sent back.
static Result<RestoreResult> helperResult(pid_t outer, const std::string& out) {
  int st = 0;
  while (::waitpid(outer, &st, 0) < 0 && errno == EINTR) {
  }
  auto j = Json::parse(out, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return makeError(fmt::format("the restore helper died without a result ({})",
                                 WIFSIGNALED(st) ? fmt::format("signal {}", WTERMSIG(st)) : fmt::format("status {}", WEXITSTATUS(st))));
  if (j.contains("error")) return makeError(j.value("error", ""), j.value("hint", ""));
  RestoreResult r;
  r.rootPid = j.value("root_pid", -1);
  r.phasesMs = j.value("phases_ms", std::map<std::string, double>{});
  r.processes = j.value("processes", 0ull);
  r.threads = j.value("threads", 0ull);
  r.pagesRestored = j.value("pages_restored", 0ull);
  if (j.contains("lazy")) r.lazy = j["lazy"];
  return r;
}

// Restore into a running process's namespaces (see RestoreOptions::joinNamespacesOf). Two forks
// of crbench: the first joins the target's cgroups and its pid namespace for its children, the
// second (the restorer, a pid in that namespace, single-threaded) runs the restore and sends the
// result back over a pipe as JSON.
static Result<RestoreResult> restoreInNamespaces(const std::filesystem::path& dir, const RestoreOptions& opts) {
  pid_t target = opts.joinNamespacesOf;
  Fd dirFd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dirFd.valid()) return sysError("open image directory " + dir.string(), errno);
  std::map<std::string, Fd> ns;
  for (const char* n : {"pid", "mnt", "net", "ipc", "uts"}) {
    ns[n].reset(::open(fmt::format("/proc/{}/ns/{}", target, n).c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns[n].valid()) return sysError(fmt::format("open /proc/{}/ns/{}", target, n), errno);
  }
  int pfd[2];
  if (::pipe2(pfd, O_CLOEXEC) != 0) return sysError("pipe", errno);
  Fd rd(pfd[0]), wr(pfd[1]);
  pid_t outer = ::fork();
  if (outer < 0) return sysError("fork the restore helper", errno);
  if (outer == 0) {
    rd.reset();
    for (auto& f : opts.joinCgroups) {
      Fd cg(::open(f.c_str(), O_WRONLY | O_CLOEXEC));
      std::string me = std::to_string(::getpid());
      if (!cg.valid() || ::write(cg.get(), me.data(), me.size()) != ssize_t(me.size())) {
        std::string msg = Json{{"error", fmt::format("join cgroup {}: {}", f, std::strerror(errno))}}.dump();
        (void)!::write(wr.get(), msg.data(), msg.size());
        ::_exit(1);
      }
    }
    if (::setns(ns["pid"].get(), CLONE_NEWPID) != 0) {
      std::string msg = Json{{"error", fmt::format("join the pid namespace of {}: {}", target, std::strerror(errno))}}.dump();
      (void)!::write(wr.get(), msg.data(), msg.size());
      ::_exit(1);
    }
    pid_t inner = ::fork();
    if (inner == 0) {
      RestoreOptions o = opts;
      o.joinNamespacesOf = 0;
      o.joinCgroups.clear();
      o.setnsBeforeTree = {ns["mnt"].get(), ns["net"].get(), ns["ipc"].get(), ns["uts"].get()};
      o.netnsFd = ns["net"].get();  // sockets are created before the tree joins it
      // Lazy: the tree runs before the restore returns; crbench hears of it on a line of its own.
      o.onResumed = [&wr] {
        std::string line = "{\"resumed\":true}\n";
        (void)!::write(wr.get(), line.data(), line.size());
      };
      // Through our fd: after the mount namespace changes, the host path is out of reach.
      auto r = restoreTree(fmt::format("/proc/self/fd/{}", dirFd.get()), o);
      Json j;
      if (r.ok())
        j = {{"root_pid", r->rootPid}, {"phases_ms", r->phasesMs}, {"processes", r->processes},
             {"threads", r->threads}, {"pages_restored", r->pagesRestored}, {"lazy", r->lazy}};
      else
        j = {{"error", r.error().message}, {"hint", r.error().hint}};
      std::string msg = j.dump();
      (void)!::write(wr.get(), msg.data(), msg.size());
      ::_exit(r.ok() ? 0 : 1);
    }
    int st = 0;
    if (inner > 0) ::waitpid(inner, &st, 0);
    ::_exit(inner > 0 && WIFEXITED(st) ? WEXITSTATUS(st) : 1);
  }
  wr.reset();
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(rd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, size_t(n));
    // {"resumed":true} lines come before the result (lazy restore: the tree runs already).
    for (size_t nl; (nl = out.find('\n')) != std::string::npos;) {
      auto line = Json::parse(out.substr(0, nl), nullptr, false);
      out.erase(0, nl + 1);
      if (line.is_object() && line.contains("resumed") && opts.onResumed) opts.onResumed();
    }
  }
  return helperResult(outer, out);
}

// Restore a whole container into new namespaces (RestoreOptions::freshNamespaces). A helper
// forked from crbench joins the cgroups, makes the time namespace and a new pid namespace for its
// children, and clones the root into new mount/IPC/UTS (and net) namespaces: the root, pid 1
// there, makes the mounts recorded at dump, pivots into the container's root and blocks. The
// helper's second child, the restorer, is created in the new pid namespace (under a pid the image
// does not use) so that the image's pids are its pids; it joins the root's namespaces once the
// image's files are open and restores the tree from the root, which it seizes. The root's parent
// is the helper; when the helper exits, it is reparented like any daemon.
static Result<RestoreResult> restoreInFreshNamespaces(const std::filesystem::path& dir, const RestoreOptions& opts) {
  CRB_ASSIGN(auto plan, loadFreshNsPlan(dir, opts.rootfsDir));
  if (opts.freshNetnsFd < 0 && !freshNsOtherInterface(*plan).empty())
    return makeError(fmt::format("unsupported: the dumped network namespace had interface {}, which a new network "
                                 "namespace does not recreate (only loopback)", freshNsOtherInterface(*plan)),
                     "restore into a network namespace the runtime holds (freshNetnsFd)");
  Json inv;
  CRB_ASSIGN(TreeState tree, loadTree(dir, &inv));
  if (tree.procs.empty() || tree.procs[0].pid != 1)
    return makeError(fmt::format("image {}: its root is pid {}, not the init of its pid namespace", dir.string(),
                                 tree.procs.empty() ? 0 : tree.procs[0].pid),
                     "only a whole container (dumped from its init) can be restored into fresh namespaces");
  pid_t tracerPid = 1;
  for (auto& ps : tree.procs) {
    tracerPid = std::max(tracerPid, ps.pid);
    for (auto& t : ps.threads) tracerPid = std::max(tracerPid, t.tid);
  }
  tracerPid += 1;
  Fd dirFd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dirFd.valid()) return sysError("open image directory " + dir.string(), errno);
  int pfd[2], ready[2], hold[2];
  if (::pipe2(pfd, O_CLOEXEC) != 0 || ::pipe2(ready, O_CLOEXEC) != 0 || ::pipe2(hold, O_CLOEXEC) != 0)
    return sysError("pipe", errno);
  Fd rd(pfd[0]), wr(pfd[1]), readyRd(ready[0]), readyWr(ready[1]), holdRd(hold[0]), holdWr(hold[1]);
  pid_t outer = ::fork();
  if (outer < 0) return sysError("fork the restore helper", errno);
  if (outer == 0) {
    rd.reset();
    auto fail = [&](const std::string& what) {
      std::string msg = Json{{"error", what}}.dump();
      (void)!::write(wr.get(), msg.data(), msg.size());
      ::_exit(1);
    };
    for (auto& f : opts.joinCgroups) {
      Fd cg(::open(f.c_str(), O_WRONLY | O_CLOEXEC));
      std::string me = std::to_string(::getpid());
      if (!cg.valid() || ::write(cg.get(), me.data(), me.size()) != ssize_t(me.size()))
        fail(fmt::format("join cgroup {}: {}", f, std::strerror(errno)));
    }
    RestoreCtx tc;
    tc.dir = dir;
    if (auto st = enterTimeNamespace(tc); !st.ok()) fail(st.error().message);
    // The bootstrap page exists before the root is cloned, so the root and the restorer share it.
    auto boot = chooseBoot(tree);
    if (!boot.ok()) fail(boot.error().message);
    if (::unshare(CLONE_NEWPID) != 0) fail(fmt::format("create a pid namespace: {}", std::strerror(errno)));
    CloneArgs a{};
    // The root, the helper and the restorer share one fd table: the files the restorer opens for
    // the tree are the root's too (it takes its own copy once seized), as a cloned root's would be.
    a.flags = CLONE_FILES | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | (opts.freshNetnsFd < 0 ? CLONE_NEWNET : 0);
    a.exit_signal = SIGCHLD;
    long root = ::syscall(SYS_clone3, &a, sizeof a);
    if (root == 0) {
      const char* step = "";
      int rc = runFreshNsPlan(*plan, opts.freshNetnsFd, &step);
      char msg[160];
      int n = rc == 0 ? std::snprintf(msg, sizeof msg, "ok")
                      : std::snprintf(msg, sizeof msg, "%s: %s", step, std::strerror(-rc));
      (void)!::write(readyWr.get(), msg, size_t(n));
      if (rc != 0) ::_exit(1);
      char c;
      for (;;) (void)!::read(holdRd.get(), &c, 1);
    }
    if (root < 0) fail(fmt::format("clone the new namespaces' init: {}", std::strerror(errno)));
    // (The root shares this fd table: closing our write end would close its own.)
    char msg[160] = {};
    ssize_t n = 0;
    for (;;) {
      pollfd pf{readyRd.get(), POLLIN, 0};
      if (::poll(&pf, 1, 100) > 0) {
        n = ::read(readyRd.get(), msg, sizeof msg - 1);
        break;
      }
      if (::waitpid(pid_t(root), nullptr, WNOHANG) == pid_t(root)) break;
    }
    if (n != 2 || std::string(msg, 2) != "ok") {
      ::kill(pid_t(root), SIGKILL);
      ::waitpid(pid_t(root), nullptr, 0);
      fail(fmt::format("set up the fresh namespaces: {}", n > 0 ? std::string(msg, size_t(n)) : "the init died"));
    }
    CloneArgs t{};
    t.flags = CLONE_FILES;
    t.exit_signal = SIGCHLD;
    t.set_tid = reinterpret_cast<uint64_t>(&tracerPid);
    t.set_tid_size = 1;
    long tracer = ::syscall(SYS_clone3, &t, sizeof t);
    if (tracer == 0) {
      std::vector<Fd> ns;
      for (const char* name : {"mnt", "net", "ipc", "uts"}) {
        ns.emplace_back(::open(fmt::format("/proc/{}/ns/{}", root, name).c_str(), O_RDONLY | O_CLOEXEC));
        if (!ns.back().valid()) fail(fmt::format("open /proc/{}/ns/{}: {}", root, name, std::strerror(errno)));
      }
      RestoreOptions o = opts;
      o.freshNamespaces = false;
      o.joinCgroups.clear();
      o.seizeRoot = 1;
      o.timeNamespaceReady = true;
      o.bootReady = *boot;
      o.setnsBeforeTree = {ns[0].get(), ns[1].get(), ns[2].get(), ns[3].get()};
      o.netnsFd = ns[1].get();
      o.rootPrefix = fmt::format("/proc/{}/root", root);
      auto r = restoreTree(fmt::format("/proc/self/fd/{}", dirFd.get()), o);
      Json j;
      if (r.ok())
        j = {{"root_pid", root}, {"phases_ms", r->phasesMs}, {"processes", r->processes}, {"threads", r->threads},
             {"pages_restored", r->pagesRestored}};
      else
        j = {{"error", r.error().message}, {"hint", r.error().hint}};
      std::string out = j.dump();
      (void)!::write(wr.get(), out.data(), out.size());
      ::_exit(r.ok() ? 0 : 1);
    }
    int st = 0;
    if (tracer > 0) ::waitpid(pid_t(tracer), &st, 0);
    bool ok = tracer > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!ok) {
      // The restorer is gone without a tree (its tracees died with it): so goes the init.
      ::kill(pid_t(root), SIGKILL);
      ::waitpid(pid_t(root), nullptr, 0);
      if (tracer < 0) fail(fmt::format("create the restorer in the new pid namespace (pid {}): {}", tracerPid,
                                       std::strerror(errno)));
    }
    ::_exit(ok ? 0 : 1);
  }
  wr.reset();
  readyWr.reset();
  holdRd.reset();
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(rd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, size_t(n));
  }
  return helperResult(outer, out);
}

Result<RestoreResult> restoreTree(const std::filesystem::path& dir, const RestoreOptions& opts) {
  if (::geteuid() != 0) return makeError("the native engine needs root (ptrace, clone3 set_tid)", "run as root");
  if (opts.freshNamespaces) {
    // The dump's DROP rules live in the dumped network namespace: gone with it, or in the one
    // the runtime holds and the tree joins again.
    // Through our pid: the path is opened by a helper program (nsenter), not by us.
    std::string nsPath = opts.freshNetnsFd >= 0 ? fmt::format("/proc/{}/fd/{}", ::getpid(), opts.freshNetnsFd) : "";
    auto early = nsPath.empty() ? success() : unlockTcp(dir, nsPath, UnlockWhich::InTreePairs);
    auto r = early.ok() ? restoreInFreshNamespaces(dir, opts) : Result<RestoreResult>(early.error());
    auto u = nsPath.empty() ? success() : unlockTcp(dir, nsPath, UnlockWhich::OutsidePeers);
    if (r.ok() && !u.ok()) return u.error();
    if (!r.ok()) return r.error().context("restore from " + dir.string() + " into fresh namespaces");
    return r;
  }
  // Either way the dump's netfilter rules go: the copy's TCP connections may talk again, or, the
  // restore having failed, nothing is left behind (those connections are lost with the tree).
  if (opts.joinNamespacesOf > 0) {
    std::string nsPath = fmt::format("/proc/{}/ns/net", opts.joinNamespacesOf);
    auto early = unlockTcp(dir, nsPath, UnlockWhich::InTreePairs);
    auto r = early.ok() ? restoreInNamespaces(dir, opts) : Result<RestoreResult>(early.error());
    auto u = unlockTcp(dir, nsPath, UnlockWhich::OutsidePeers);
    if (r.ok() && !u.ok()) return u.error();
    return r;
  }
  RestoreCtx c;
  c.dir = dir;
  c.opts = opts;
  Json inv;
  CRB_ASSIGN(c.tree, loadTree(dir, &inv));
  auto t0 = Clock::now();
  // An incremental image restores from its chain (incremental.cpp); a lazy restore serves
  // memory on demand (lazy.cpp) from the same page index.
  if (inv.contains("parent") || opts.lazy) {
    auto chain = PageChain::load(dir);
    if (!chain.ok()) return chain.error().context("restore from " + dir.string());
    c.chain = *chain;
    c.result.phasesMs["chain_load"] = msSince(t0);
  }
  if (opts.lazy) {
    auto srv = LazyServer::create(c.chain);
    if (!srv.ok()) return srv.error().context("lazy restore from " + dir.string());
    c.lazy = *srv;
  }
  Status st = success();
  // A restorer inside a container's mounts has no iptables: restoreInNamespaces' caller unlocks.
  bool unlockHere = c.opts.setnsBeforeTree.empty();
  std::string nsPath = c.opts.netnsFd >= 0 ? fmt::format("/proc/self/fd/{}", c.opts.netnsFd) : "/proc/self/ns/net";
  if (unlockHere) st = unlockTcp(dir, nsPath, UnlockWhich::InTreePairs);
  if (st.ok()) {
    Restorer r(c);
    st = r.run();
  }
  if (c.lazy) {
    if (st.ok()) {
      c.result.phasesMs["to_resumed"] = msSince(t0);
      if (opts.onResumed) opts.onResumed();
      auto f = c.lazy->finish();  // the tree runs while the rest of its memory is pushed
      if (f.ok()) c.result.lazy = *f;
      else st = f.error();
    }
    c.lazy->abort();
  } else if (st.ok() && opts.onResumed) {
    opts.onResumed();
  }
  if (unlockHere) {
    auto u = unlockTcp(dir, nsPath, UnlockWhich::OutsidePeers);
    if (st.ok() && !u.ok()) return u.error();
  }
  if (!st.ok()) return st.error().context("restore from " + dir.string());
  c.result.phasesMs["total"] = msSince(t0);
  return c.result;
}

Result<Json> describeImage(const std::filesystem::path& dir) {
  Json inv;
  CRB_ASSIGN(TreeState t, loadTree(dir, &inv));
  Json out = inv;
  out["processes"] = Json::array();
  for (auto& ps : t.procs) {
    Json p{{"pid", ps.pid}, {"ppid", ps.ppid}, {"pgid", ps.pgid}, {"sid", ps.sid}, {"comm", ps.comm},
           {"zombie", ps.zombie}, {"threads", ps.threads.size()}, {"fds", Json::array()}, {"cwd", ps.cwd},
           {"exe", ps.exe}, {"handlers", ps.sigactions.size()}};
    uint64_t pages = 0;
    for (auto& v : ps.vmas)
      for (auto& r : v.pages) pages += r.pages;
    p["vmas"] = ps.vmas.size();
    p["pages"] = pages;
    size_t pending = ps.sharedPending.size();
    for (auto& th : ps.threads) pending += th.pending.size();
    p["pending_signals"] = pending;
    for (auto& e : ps.fds) {
      auto& f = t.files.at(size_t(e.file));
      p["fds"].push_back({{"fd", e.fd}, {"kind", f.kind}, {"path", f.path}, {"pos", f.pos}, {"description", f.id}});
    }
    if (!ps.zombie) {
      auto pr = RawImageReader::open(dir, fmt::format("pages-{}.img", ps.pid));
      if (!pr.ok()) return pr.error();
      CRB_CHECK(pr->verifyComplete());
      if (inv.contains("parent")) {  // incremental: pages-<pid>.img holds the stored pages only
        CRB_ASSIGN(Json idx, readJsonImage(dir, fmt::format("pageindex-{}.img", ps.pid)));
        p["stored_pages"] = runPages(idx.value("stored", std::vector<PageRun>{}));
        pages = p["stored_pages"].get<uint64_t>();
      }
      if (pr->payloadSize() != pages * kPage)
        return makeError(fmt::format("pages-{}.img holds {} bytes, the index says {}", ps.pid, pr->payloadSize(), pages * kPage));
    }
    out["processes"].push_back(p);
  }
  auto blobs = RawImageReader::open(dir, "blobs.img");
  if (!blobs.ok()) return blobs.error();
  CRB_CHECK(blobs->verifyComplete());
  if (inv.contains("parent")) {
    CRB_ASSIGN(auto chain, PageChain::load(dir));  // every link verified
    out["chain"] = chain->describe();
  }
  out["pipes"] = t.pipes;
  out["shared_memory"] = Json::array();
  for (auto& o : t.shmem) out["shared_memory"].push_back({{"name", o.name}, {"size", o.size}, {"extents", o.extents.size()}});
  out["mapped_files"] = Json::array();
  for (auto& m : t.mapped) out["mapped_files"].push_back(m.path);
  return out;
}

}  // namespace crb::native
