#pragma once
// Public entry points of the native checkpoint/restore engine (used by `crbench cr` and by the
// `native` Engine). Everything is ptrace + /proc: no parasite code, no hardware breakpoints.
#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/json.hpp"
#include "core/result.hpp"

namespace crb::native {

class MemoryCapture;  // capture.hpp: pre-copy, copy-on-write
class Guardian;  // guardian.hpp

struct DumpOptions {
  bool leaveRunning = false;  // detach and let the tree continue after the dump
  bool sync = true;           // fdatasync every image file
  // Namespaces the tree must share (plain tree: the dumper's own = 0). A process in another
  // namespace than this pid's is refused.
  pid_t nsReference = 0;
  // Paths in the tree's mount namespace are seen by crbench under this prefix (container
  // rootfs); "" for a plain tree. /dev nodes are opened from the host.
  std::string rootPrefix;
  std::function<void(const std::string&)> mark = [](const std::string&) {};
  // Container: dumpTree is called with the tree's cgroup frozen; every thread is seized while
  // frozen and thaw() (always called) lets them run straight into their ptrace stops.
  std::function<Status()> thaw;
  // Stop-and-copy under a parent outside the tree that crbench holds stopped (a container's
  // init): called while waiting for the killed tree's pids to become free, to make it reap them.
  std::function<void()> reapKilled;
  // Connections to outside the tree the user accepts (`--external unix:<inode or name>`): restored
  // by connecting to the peer's name again.
  std::vector<std::string> external;
  // Sibling trees dumped with the root's into one image (a container's programs, each a child of
  // its init): restored as siblings, each created by the restorer.
  std::vector<pid_t> moreRoots;
  // Pre-copy or copy-on-write (capture.hpp): the dump takes the memory through this, lets the
  // tree run again as soon as everything is captured and writes the pages afterwards (leave-running).
  MemoryCapture* capture = nullptr;
  // A guardian already started (before a container was frozen); one is started if empty.
  std::shared_ptr<Guardian> guardian;
  // A cgroup v1 freezer directory holding the tree (`crbench cr dump --freeze-cgroup`): frozen
  // while every thread is seized, as a container's is (ignored when `thaw` is set).
  std::string freezeCgroup;
  // The root is the init of the tree's pid namespace (a whole container): the contents of its
  // mount, uts and net namespaces are recorded too, so that a restore can recreate them
  // (RestoreOptions::freshNamespaces). A mount that cannot be made again is refused.
  bool namespaceRoot = false;
  // Datagrams queued on UDP sockets are dropped (their byte count kept in the image) instead of
  // refused: UDP may lose them. For a whole container, whose agent queues the prober's pings
  // while frozen; the prober counts them lost.
  bool dropUdpQueues = false;
  // Incremental dump (incremental.hpp): store only the pages that differ from this image's.
  std::filesystem::path parent;
  // The parent, already verified and indexed by loadParentIndex (so a pre-copy's caller checks it
  // before the rounds; null: dumpTree loads `parent`).
  std::shared_ptr<struct ParentIndex> parentIndex;
  // Keep the tree's pages tracked after this dump / read only the tracked-written pages in an
  // incremental one (incremental.hpp; one crbench process makes both dumps).
  class MemoryTracker* track = nullptr;
};

struct DumpStats {
  std::map<std::string, double> phasesMs;
  uint64_t processes = 0, threads = 0, pagesWritten = 0, pagesSkippedZero = 0, bytesWritten = 0;
  double frozenMs = 0;
  // Where the frozen time went, step by step (seize .. release), for the freeze-downtime work.
  std::map<std::string, double> freezeMs;
  Json memory = Json::object();  // pre-copy: tracking method, per-round figures (precopy.cpp)
  Json toJson() const;
};

Result<DumpStats> dumpTree(pid_t root, const std::filesystem::path& dir, const DumpOptions& opts);

struct RestoreOptions {
  bool detach = false;  // do not wait for the restored root (it is reparented when we exit)
  std::string rootPrefix;
  // Create the root in new namespaces (container restore): called in the new child before it
  // stops for tracing; returns 0 or -errno. Empty: restore into crbench's own namespaces.
  std::function<int()> childSetup;
  int cloneNamespaces = 0;  // CLONE_NEW* flags for the root's clone3
  int netnsFd = -1;         // sockets are created in this netns (setns around their creation)
  // Restore into the namespaces of this running process (a container's init), keeping the image's
  // pids, which are pids in that pid namespace: a helper forked into its pid namespace opens the
  // image's files from crbench's side (rootPrefix), then joins its mount, net, ipc and uts
  // namespaces and creates the tree with clone3(set_tid). When the helper exits, the restored
  // root is reparented to that init, as the original was its child.
  pid_t joinNamespacesOf = 0;
  std::vector<std::string> joinCgroups;  // cgroup.procs files the helper enters first (inherited)
  // Namespace fds the restorer setns()es into after opening the image's files and before creating
  // the tree (set by the joinNamespacesOf helper; the tree then sees paths without rootPrefix).
  std::vector<int> setnsBeforeTree;
  // Restore a whole container (dumped with DumpOptions::namespaceRoot) into new pid, mount, IPC
  // and UTS namespaces: the root is its pid namespace's init again (pid 1), the others keep their
  // pids; the mounts are made again on `rootfsDir` (the container's root file system, "" = the
  // one recorded) and the process pivots into it. The network namespace is joined from
  // `freshNetnsFd` (one a runtime holds) or, if -1, a new one with only loopback (refused if the
  // dumped one had other interfaces). joinCgroups are entered first. rootPid is a host pid.
  bool freshNamespaces = false;
  std::string rootfsDir;
  int freshNetnsFd = -1;
  // Internal to the fresh-namespace restore: the root already exists (made by the helper with the
  // mounts in place): seize this pid instead of cloning it; the time namespace is made already.
  pid_t seizeRoot = 0;
  bool timeNamespaceReady = false;
  uint64_t bootReady = 0;  // the bootstrap page, mapped before the root was cloned
  // Lazy restore (lazy.hpp): private anonymous memory is served on demand by a page server.
  bool lazy = false;
  // Called once the tree runs (lazy: before all pages are in); restoreTree returns when they are.
  std::function<void()> onResumed;
};

struct RestoreResult {
  pid_t rootPid = -1;  // in crbench's pid namespace
  std::map<std::string, double> phasesMs;
  uint64_t processes = 0, threads = 0, pagesRestored = 0;
  Json lazy;  // lazy restore's figures (lazy.hpp)
};

Result<RestoreResult> restoreTree(const std::filesystem::path& dir, const RestoreOptions& opts);

// The namespaces a process is in: {pid|mnt|net|ipc|uts|time: {inode: "mnt:[...]", id: NS_GET_ID}}
// (id only where the kernel has NS_GET_ID).
Json describeNamespaces(pid_t pid);

// What an image holds, for `crbench cr show` (verifies every file's checksum on the way).
Result<Json> describeImage(const std::filesystem::path& dir);
// `crbench cr flatten`: a self-contained copy of an incremental image's chain (incremental.hpp).
Result<Json> flattenImage(const std::filesystem::path& src, const std::filesystem::path& out, bool sync);

}  // namespace crb::native
