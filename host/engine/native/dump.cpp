// The dump: seize the tree, let each resource file record its state, write the image, then
// kill the tree (stop-and-copy) or put everything back and detach (leave-running). Any error or
// refusal detaches and leaves the tree running, untouched.
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>

#include "engine/native/freeze_trace.hpp"
#include "engine/native/internal.hpp"
#include "engine/native/capture.hpp"
#include "engine/native/incremental.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

namespace {
using Clock = std::chrono::steady_clock;
double msSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}
}  // namespace

Json DumpStats::toJson() const {
  return Json{{"phases_ms", phasesMs},
              {"processes", processes},
              {"threads", threads},
              {"pages_written", pagesWritten},
              {"bytes_written", bytesWritten},
              {"frozen_ms", frozenMs},
              {"freeze_ms", freezeMs},
              {"memory", memory}};
}

// The innermost pid in /proc/<pid>[/task/<tid>]/status NSpid: the pid as the tree sees it.
static Result<pid_t> innermostPid(pid_t pid, pid_t tid = 0) {
  CRB_ASSIGN(auto st, readStatus(pid, tid));
  auto it = st.find("NSpid");
  if (it == st.end()) return makeError(fmt::format("/proc/{}/status has no NSpid line", pid));
  auto pos = it->second.find_last_of(" \t");
  return pid_t(std::stol(pos == std::string::npos ? it->second : it->second.substr(pos + 1)));
}

// A tree in another pid namespace (a container's) is recorded with the pids it sees, which are
// what a restore into that namespace recreates; crbench itself works with host pids throughout.
static Status mapNamespacePids(DumpCtx& c) {
  if (!c.opts.nsReference) return success();
  auto mine = readLink("/proc/self/ns/pid");
  auto theirs = readLink(fmt::format("/proc/{}/ns/pid", c.opts.nsReference));
  if (!mine.ok() || !theirs.ok() || *mine == *theirs) return success();
  auto add = [&](pid_t host, pid_t tid) -> Status {
    if (host <= 0 || c.nsPids.count(tid ? tid : host)) return success();
    CRB_ASSIGN(pid_t ns, innermostPid(host, tid));
    c.nsPids[tid ? tid : host] = ns;
    return success();
  };
  for (auto& ps : c.tree.procs) {
    CRB_CHECK(add(ps.pid, 0));
    for (auto& t : ps.threads) CRB_CHECK(add(ps.pid, t.tid));
    // Parent, group and session leaders may be outside the tree (the container's init).
    for (pid_t other : {ps.ppid, ps.pgid, ps.sid})
      if (other > 0 && !add(other, 0).ok())
        return makeError(fmt::format("process {} refers to pid {} which is gone", ps.pid, other));
  }
  return success();
}

static void translatePids(DumpCtx& c) {
  for (auto& ps : c.tree.procs) {
    for (auto& t : ps.threads) t.tid = c.imagePid(t.tid);
    ps.pid = c.imagePid(ps.pid);
    ps.ppid = c.imagePid(ps.ppid);
    ps.pgid = c.imagePid(ps.pgid);
    ps.sid = c.imagePid(ps.sid);
  }
}

static Result<DumpStats> dumpTreeImpl(pid_t root, const std::filesystem::path& dir, const DumpOptions& opts) {
  if (::geteuid() != 0) return makeError("the native engine needs root (ptrace of any process, clone3 set_tid)", "run as root");
  CRB_CHECK(checkWritableDir(dir));
  if (std::filesystem::exists(dir / "inventory.img"))
    return makeError("image directory " + dir.string() + " already holds an image", "choose an empty directory");
  DumpCtx c;
  c.dir = dir;
  c.opts = opts;
  Seizure seizure;
  c.seizure = &seizure;
  // Declared after the seizure, so it runs before the tree is released on any return.
  struct UndoGuard {
    DumpCtx& c;
    ~UndoGuard() { c.runUndo(); }
  } undoGuard{c};
  // The freeze is the downtime: the dumper goes ahead of everything else on a busy machine while
  // the tree is stopped (restored on every return; the writing after a capture's thaw is niced).
  struct Priority {
    int before = 0;
    bool raised = false;
    Priority() {
      errno = 0;
      before = ::getpriority(PRIO_PROCESS, id_t(::syscall(SYS_gettid)));
      if (errno == 0) raised = ::setpriority(PRIO_PROCESS, id_t(::syscall(SYS_gettid)), -10) == 0;
      else before = 0;
    }
    ~Priority() {
      if (raised) ::setpriority(PRIO_PROCESS, id_t(::syscall(SYS_gettid)), before);
    }
  } priority;
  if (!opts.parent.empty()) {
    // Before anything is frozen: the parent chain is checked and its page hashes loaded.
    if (opts.parentIndex) {
      c.parent = opts.parentIndex;
    } else {
      auto idx = loadParentIndex(opts.parent, dir);
      if (!idx.ok()) return idx.error().context("--parent " + opts.parent.string());
      c.parent = *idx;
    }
    c.stats.phasesMs["parent_index"] = c.parent->loadMs;
  }
  auto t0 = Clock::now();
  if (opts.guardian) CRB_CHECK(seizure.useGuardian(opts.guardian));
  std::function<Status()> thaw = opts.thaw;
  if (!thaw && !opts.freezeCgroup.empty()) {
    // The guardian exists before the freeze, so a dumper killed from here on leaves it thawed.
    CRB_CHECK(seizure.useGuardian());
    auto state = std::filesystem::path(opts.freezeCgroup) / "freezer.state";
    if (!std::filesystem::exists(state))
      return makeError(fmt::format("--freeze-cgroup {}: no freezer.state there", opts.freezeCgroup),
                       "give a cgroup v1 freezer directory, e.g. /sys/fs/cgroup/freezer/<name>");
    auto guard = seizure.guardian();
    auto waitState = [state](const char* want) -> Status {
      for (int i = 0; i < 50000; i++) {
        auto now = readFile(state);
        if (now.ok() && now->rfind(want, 0) == 0) return success();
        ::usleep(100);
      }
      return makeError(fmt::format("{} did not become {} within 5 s", state.string(), want));
    };
    thaw = [state, guard, waitState]() -> Status {
      CRB_CHECK(writeControlFile(state, "THAWED"));
      CRB_CHECK(waitState("THAWED"));
      guard->noteThawed();
      return success();
    };
    guard->noteFrozen(state.string());
    if (auto st = writeControlFile(state, "FROZEN"); !st.ok()) {
      (void)thaw();
      return st.error().context("--freeze-cgroup");
    }
    if (auto st = waitState("FROZEN"); !st.ok()) {
      (void)thaw();
      return st.error().context("--freeze-cgroup (left thawed)");
    }
  }
  freezeTrace("dump_start");
  CRB_CHECK(seizure.seizeTree(root, thaw, opts.moreRoots));
  CRB_CHECK(dumpClocks(c, root));  // namespaces.cpp: the clocks the tree stopped at
  opts.mark("frozen");
  c.stats.phasesMs["freeze"] = msSince(t0);
  auto t1 = Clock::now();
  auto lapAt = t1;
  auto lap = [&](const char* step) {
    auto now = Clock::now();
    c.stats.freezeMs[step] += std::chrono::duration<double, std::milli>(now - lapAt).count();
    lapAt = now;
  };
  c.stats.freezeMs["seize"] = c.stats.phasesMs["freeze"];
  for (pid_t pid : seizure.order) {
    ProcessState& ps = c.proc(pid);
    if (seizure.zombies.count(pid)) {
      ps.zombie = true;
      CRB_ASSIGN(auto stat, readStat(pid));
      ps.ppid = pid_t(std::stol(stat[4]));
      ps.pgid = pid_t(std::stol(stat[5]));
      ps.sid = pid_t(std::stol(stat[6]));
      ps.comm = stat[2];
      ps.exitCode = stat.size() > 52 ? std::stoi(stat[52]) : 0;
      continue;
    }
    CRB_CHECK(seizure.prepareInjection(pid));
    CRB_CHECK(dumpProcessAttrs(c, pid, ps));
    freezeTrace("attrs");
    CRB_CHECK(dumpThreads(c, pid, ps));
    freezeTrace("threads");
    CRB_CHECK(dumpSignals(c, pid, ps));
    freezeTrace("signals");
    CRB_CHECK(dumpPosixTimers(c, pid, ps));  // events.cpp
    freezeTrace("timers");
    if (opts.track && !c.parent) opts.track->attach(seizure, pid);  // incremental.cpp: for the next dump
    CRB_CHECK(seizure.finishInjection(pid));
    freezeTrace("finish_injection");
  }
  c.stats.processes = c.tree.procs.size();
  lap("process_state");
  CRB_CHECK(mapNamespacePids(c));
  if (c.tree.procs.empty() || c.tree.procs[0].zombie) return makeError(fmt::format("process {} is a zombie", root));
  lap("ns_pids");
  CRB_CHECK(dumpFiles(c));
  lap("files");
  freezeTrace("files");
  for (auto& ps : c.tree.procs)
    if (!ps.zombie) CRB_CHECK(dumpMemoryLayout(c, ps.pid, ps));
  lap("memory_layout");
  freezeTrace("memory_layout");
  CRB_CHECK(dumpSysvIpc(c));
  lap("sysv_ipc");
  freezeTrace("sysv_ipc_end");
  if (opts.namespaceRoot) CRB_CHECK(dumpNamespaceContents(c, root));  // namespaces.cpp
  c.stats.phasesMs["state"] = msSince(t1);
  if (!c.unsupported.empty()) {
    std::string all;
    for (auto& u : c.unsupported) all += (all.empty() ? "" : "; ") + u;
    return makeError("cannot dump the tree of " + std::to_string(root) + ": " + all,
                     "the native engine refuses what it cannot restore faithfully; the tree is left running");
  }
  auto t2 = Clock::now();
  {
    CRB_ASSIGN(auto blobs, ImageWriter::create(dir, "blobs.img"));
    c.blobs.emplace(std::move(blobs));
  }
  freezeTrace("blobs_create");
  CRB_CHECK(dumpPipeData(c));
  freezeTrace("pipe_data");
  CRB_CHECK(dumpFileContents(c));
  freezeTrace("file_contents");
  CRB_CHECK(dumpShmemObjects(c));
  freezeTrace("shmem_objects");
  lap("pipes_files_shmem");
  for (auto& ps : c.tree.procs)
    if (!ps.zombie)
      CRB_CHECK(opts.capture  ? opts.capture->frozen(c, ps.pid, ps)
                : c.parent    ? dumpIncrementalPages(c, ps.pid, ps)  // incremental.cpp
                              : dumpMemoryPages(c, ps.pid, ps));
  lap(opts.capture ? "final_pages" : "pages");
  freezeTrace("final_pages");
  c.stats.phasesMs["memdump"] = msSince(t2);
  if (opts.capture) {
    // Everything is captured: the tree runs again before a byte of the image is written, its
    // TCP connections out of repair mode first (a send in repair mode would go to its own
    // receive queue) and their netfilter rules gone.
    c.runUndo();
    lap("undo");
    seizure.release();
    lap("release");
    freezeTrace("release");
    c.stats.frozenMs = msSince(t0);
    // The holder of the prober's agent (container) lets it go on "resumed": before the trackers
    // are dropped, which walks the page tables again (COW's handler starts a moment later).
    opts.mark("resumed");
    auto tw = Clock::now();
    // The image is written at the lowest CPU priority: the resumed tree (and the prober's agent)
    // come first on a busy machine. So is the trackers' end (a page-table walk clearing every
    // write-protect bit, 20-40 ms per GiB here). COW's fault handler raises its own priority.
    pid_t self = pid_t(::syscall(SYS_gettid));
    int nice = priority.before;
    bool niced = ::setpriority(PRIO_PROCESS, id_t(self), 19) == 0;
    opts.capture->released();
    // VmFlags taken from the last look before the freeze are checked against a look after it.
    Status written = verifyCachedVmFlags(c);
    c.stats.phasesMs["vmflags_check"] = msSince(tw);
    for (auto& ps : c.tree.procs)
      if (!ps.zombie && written.ok()) written = opts.capture->afterThaw(c, ps.pid, ps);
    if (written.ok()) written = writeShmemAfterThaw(c);
    if (niced) ::setpriority(PRIO_PROCESS, id_t(self), nice);
    CRB_CHECK(written);
    c.stats.phasesMs["pages_after_thaw"] = msSince(tw);
  }
  auto t3 = Clock::now();
  CRB_CHECK(c.blobs->commit(opts.sync));
  for (auto& w : c.writeAfterFreeze) CRB_CHECK(w());
  translatePids(c);
  for (auto& ps : c.tree.procs) CRB_CHECK(writeJsonImage(dir, fmt::format("core-{}.img", ps.pid), Json(ps), opts.sync));
  Json files{{"files", c.tree.files}, {"pipes", c.tree.pipes}, {"shmem", c.tree.shmem}, {"mapped", c.tree.mapped},
             {"unix", c.tree.unixSockets}};
  CRB_CHECK(writeJsonImage(dir, "files.img", files, opts.sync));
  utsname u{};
  ::uname(&u);
  Json inv{{"engine", "crbench-native"},
           {"format_version", kImageFormatVersion},
           {"root_pid", c.imagePid(root)},
           {"pids", Json::array()},
           {"kernel", u.release},
           {"leave_running", opts.leaveRunning},
           {"created_unix", ::time(nullptr)}};
  for (auto& ps : c.tree.procs) inv["pids"].push_back(ps.pid);
  inv["uuid"] = newImageUuid();  // what an incremental child names its parent by
  if (c.parent) incrementalInventory(c, inv);
  CRB_CHECK(writeJsonImage(dir, "inventory.img", inv, opts.sync));
  c.stats.phasesMs["write"] = msSince(t3);
  if (opts.capture) {
    Json incremental = c.stats.memory.is_object() ? c.stats.memory.value("incremental", Json()) : Json();
    c.stats.memory = opts.capture->figures();
    if (!incremental.is_null()) c.stats.memory["incremental"] = incremental;  // PageSink (--parent)
    return c.stats;
  }
  c.stats.frozenMs = msSince(t0);
  lapAt = Clock::now();
  if (opts.leaveRunning) {
    c.runUndo();
    seizure.release();
  } else {
    CRB_CHECK(seizure.killAll(opts.reapKilled));
    c.undo.clear();  // TCP sockets close silently in repair mode; their netfilter rules stay for the restore
  }
  lap("release");
  opts.mark("resumed");
  return c.stats;
}

Result<DumpStats> dumpTree(pid_t root, const std::filesystem::path& dir, const DumpOptions& opts) {
  bool existed = std::filesystem::exists(dir / "inventory.img");
  auto r = dumpTreeImpl(root, dir, opts);
  // A failed dump leaves no partial image behind (the tree itself is already running again).
  if (!r.ok() && !existed) {
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator(dir, ec))
      if (e.path().extension() == ".img") std::filesystem::remove(e.path(), ec);
  }
  return r;
}

}  // namespace crb::native
