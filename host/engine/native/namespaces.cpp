// Namespaces. The tree's pid/mnt/net/ipc/uts namespaces are either crbench's own (plain trees) or
// a container's, which the restore re-joins (RestoreOptions::joinNamespacesOf, restore.cpp); a
// process in namespaces of its own is refused in process.cpp. The container's mounts live on in
// its mount namespace, which the runtime keeps.
//
// Time: CLOCK_MONOTONIC and CLOCK_BOOTTIME of the tree are recorded as the tree is seized, and the
// restore creates the tree in a fresh time namespace whose offsets make both clocks carry on from
// those values, so the restored programs see no jump over the time they were not running.
#include <fcntl.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <sstream>

#include "core/fsutil.hpp"

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

namespace crb::native {

namespace {
constexpr int64_t kNs = 1000000000;

int64_t nowNs(clockid_t clock) {
  timespec t{};
  ::clock_gettime(clock, &t);
  return int64_t(t.tv_sec) * kNs + t.tv_nsec;
}

// Offsets (ns) of the time namespace a process lives in, from /proc/<pid>/timens_offsets.
std::map<std::string, int64_t> timensOffsets(pid_t pid) {
  std::map<std::string, int64_t> out{{"monotonic", 0}, {"boottime", 0}};
  auto s = pid ? readProc(pid, "timens_offsets") : Result<std::string>(makeError(""));
  if (!s.ok()) return out;
  std::istringstream in(*s);
  std::string name;
  int64_t sec = 0, nsec = 0;
  while (in >> name >> sec >> nsec) out[name] = sec * kNs + nsec;
  return out;
}
}  // namespace

Status dumpClocks(DumpCtx& c, pid_t root) {
  auto mine = readLink("/proc/self/ns/time");
  auto theirs = readLink(fmt::format("/proc/{}/ns/time", root));
  for (pid_t pid : c.seizure->order) {
    auto ns = readLink(fmt::format("/proc/{}/ns/time", pid));
    if (ns.ok() && theirs.ok() && *ns != *theirs)
      c.refuse(fmt::format("process {} in another time namespace ({}) than the tree's root ({})", pid, *ns, *theirs));
  }
  // The tree's clocks: ours, moved by the difference between its time namespace and ours.
  auto treeOff = timensOffsets(root), selfOff = timensOffsets(::getpid());
  Json j{{"monotonic_ns", nowNs(CLOCK_MONOTONIC) + treeOff["monotonic"] - selfOff["monotonic"]},
         {"boottime_ns", nowNs(CLOCK_BOOTTIME) + treeOff["boottime"] - selfOff["boottime"]},
         {"tree_time_ns", theirs.ok() ? *theirs : ""},
         {"dumper_time_ns", mine.ok() ? *mine : ""}};
  return writeJsonImage(c.dir, "namespaces.img", j, c.opts.sync);
}

Status enterTimeNamespace(RestoreCtx& c) {
  if (!std::filesystem::exists(c.dir / "namespaces.img")) return success();  // older images
  CRB_ASSIGN(Json j, readJsonImage(c.dir, "namespaces.img"));
  if (!j.contains("monotonic_ns")) return success();
  if (::unshare(CLONE_NEWTIME) != 0)
    return sysError("create a time namespace for the restored tree (unshare CLONE_NEWTIME)", errno)
        .context("the kernel needs CONFIG_TIME_NS");
  // Offsets are relative to the host's clocks; ours may already be offset.
  auto selfOff = timensOffsets(::getpid());
  int64_t mono = j["monotonic_ns"].get<int64_t>() - (nowNs(CLOCK_MONOTONIC) - selfOff["monotonic"]);
  int64_t boot = j["boottime_ns"].get<int64_t>() - (nowNs(CLOCK_BOOTTIME) - selfOff["boottime"]);
  auto line = [](const char* name, int64_t ns) {
    int64_t sec = ns / kNs, rem = ns % kNs;
    if (rem < 0) {
      rem += kNs;
      sec -= 1;
    }
    return fmt::format("{} {} {}\n", name, sec, rem);
  };
  // One write per clock: the kernel takes the whole buffer as one update and fails it as a whole.
  for (auto& l : {line("monotonic", mono), line("boottime", boot)}) {
    Fd f(::open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC));
    if (!f.valid()) return sysError("open /proc/self/timens_offsets", errno);
    if (::write(f.get(), l.data(), l.size()) != ssize_t(l.size()))
      return sysError("write the restored tree's clock offsets (" + l.substr(0, l.size() - 1) + ")", errno);
  }
  return success();
}

}  // namespace crb::native
