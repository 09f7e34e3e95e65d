#pragma once
// Shared between the per-resource files of the native engine: the dump and restore contexts and
// each resource's dump/restore halves.
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/user.h>

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/fsutil.hpp"
#include "engine/native/guardian.hpp"
#include "engine/native/image.hpp"
#include "engine/native/native.hpp"
#include "engine/native/procfs.hpp"
#include "engine/native/ptrace.hpp"
#include "engine/native/state.hpp"

namespace crb::native {

constexpr uint64_t kPage = 4096;

// ---------------------------------------------------------------- dump side
// One seized process: where we may run injected syscalls and the registers to put back.
struct RemoteProc {
  pid_t pid = 0;
  std::vector<pid_t> tids;
  uint64_t syscallInsn = 0;  // a `syscall` instruction found in the vdso
  uint64_t scratch = 0;      // an anonymous page we mapped for injected syscalls' buffers
  std::map<pid_t, user_regs_struct> savedRegs;
  std::set<pid_t> touched;  // threads whose registers we changed
  // Fault safety (guardian.hpp): before the first register change the process is put in a group
  // stop and every thread's signals are blocked (so no signal is taken while we inject).
  bool safe = false;
  bool masked = false;       // our all-blocked masks are set
  bool stoppedByUs = false;  // we started the group stop (and end it with SIGCONT)
  bool wasStopped = false;   // it was in a job-control stop already when seized
  std::map<pid_t, uint64_t> savedMask;  // original masks while ours are set
};

// Seizes a process tree with PTRACE_SEIZE + PTRACE_INTERRUPT (kill-safe: if crbench dies the
// kernel detaches and the tree runs on). The destructor puts registers back and detaches unless
// the tree was killed.
class Seizure {
 public:
  ~Seizure() { release(); }
  // With `thaw` (a container): called while the tree's cgroup is frozen; every thread is seized
  // and interrupted while frozen, then thaw() lets each run straight into its ptrace stop, so no
  // thread runs user code between the first and the last seize. thaw() is always called.
  // `moreRoots`: sibling trees dumped together with root's (a container's programs under its init).
  Status seizeTree(pid_t root, const std::function<Status()>& thaw = {}, const std::vector<pid_t>& moreRoots = {});
  // Holds one process (all its threads, not its children) without waiting for it to stop; used
  // for a container's init while its frozen cgroup is dumped. waitPending() collects the stops.
  Status holdProcess(pid_t pid);
  Status waitPending();
  std::vector<pid_t> order;               // processes, parents before children
  std::map<pid_t, RemoteProc> procs;      // live processes
  std::set<pid_t> zombies;
  std::map<pid_t, std::vector<StraySignal>> stray;
  // The guardian that undoes our changes if we die (started on first use; a container dump shares
  // the one its agent's Seizure started before freezing).
  Status useGuardian(std::shared_ptr<Guardian> g = {});
  std::shared_ptr<Guardian> guardian() const { return guard_; }
  Status prepareInjection(pid_t pid);     // group stop, block signals, find syscall insn, map the scratch page
  Status finishInjection(pid_t pid);      // unmap the scratch page, put registers back
  Injector injector(pid_t pid, pid_t tid);
  void noteStray(Injector& inj);
  // SIGKILLs the tree and waits until its pids are free; `reap` is called while waiting (a held
  // parent outside the tree must be made to reap its dead children).
  Status killAll(const std::function<void()>& reap = {});
  void release();

 private:
  Status seizeThread(pid_t pid, pid_t tid, bool wait = true);
  Status safetyStop(pid_t pid);
  std::shared_ptr<Guardian> guard_;
  std::set<pid_t> preStopped_;  // processes in a job-control stop when seized
  Status waitSeized(pid_t pid, pid_t tid);
  std::vector<pid_t> seized_;
  std::vector<std::pair<pid_t, pid_t>> pending_;  // seized and interrupted, stop not yet collected
  bool released_ = false;
};

struct DumpCtx {
  std::filesystem::path dir;
  DumpOptions opts;
  TreeState tree;
  Seizure* seizure = nullptr;
  std::vector<std::string> unsupported;
  std::optional<ImageWriter> blobs;
  DumpStats stats;
  std::map<int, std::string> shmemSource;                // shmem id -> /proc path to read it from
  std::map<int, std::pair<pid_t, int>> fileRep;          // FileDesc id -> a (pid, fd) holding it
  std::map<int, std::pair<pid_t, int>> pipeReader;       // pipe id -> a (pid, fd) holding the read end
  std::map<int, std::pair<pid_t, int>> pipeAny;          // pipe id -> any (pid, fd) holding it
  std::map<pid_t, pid_t> nsPids;  // host pid/tid -> pid in the tree's pid namespace (container dumps)
  pid_t imagePid(pid_t host) const {
    auto it = nsPids.find(host);
    return it == nsPids.end() ? host : it->second;
  }
  int shmemFor(uint64_t dev, uint64_t ino, uint64_t size, const std::string& name, const std::string& source);
  void refuse(const std::string& what) { unsupported.push_back("unsupported: " + what); }
  // What the dump changed in the tree's kernel objects (TCP repair mode, netfilter rules), put
  // back before the tree runs again; dropped when the dump ends by killing the tree.
  std::vector<std::function<void()>> undo;
  void runUndo() {
    for (auto it = undo.rbegin(); it != undo.rend(); ++it) (*it)();
    undo.clear();
  }
  ProcessState& proc(pid_t pid);
  // Processes whose VmFlags came from the capture's look just before the freeze (the frozen dump
  // read only /proc/pid/maps): the maps lines as dumped, checked after the release.
  std::map<pid_t, std::vector<MapsLine>> cachedFlags;
  // With a capture (pre-copy, COW) shared memory goes to blobs.img after the thaw: objects the
  // capture took (by id), and the data of the others, read during the freeze.
  std::set<int> shmemCaptured;
  std::map<int, std::vector<char>> shmemHeld;
  std::shared_ptr<struct ParentIndex> parent;  // incremental dump (incremental.hpp)
  // Image files whose content was taken during the freeze, written once the tree runs again (a
  // file's create/commit/rename costs 1-2 ms each): run in order with the other image writes.
  std::vector<std::function<Status()>> writeAfterFreeze;
};

Status dumpProcessAttrs(DumpCtx& c, pid_t pid, ProcessState& ps);  // process.cpp
Status dumpThreads(DumpCtx& c, pid_t pid, ProcessState& ps);       // threads.cpp
Status dumpSignals(DumpCtx& c, pid_t pid, ProcessState& ps);       // signals.cpp
Status dumpFiles(DumpCtx& c);                                       // files.cpp (all processes)
Status dumpPipeData(DumpCtx& c);                                    // pipes.cpp
Status dumpMemoryLayout(DumpCtx& c, pid_t pid, ProcessState& ps);  // memory.cpp: which pages
Status dumpMemoryPages(DumpCtx& c, pid_t pid, ProcessState& ps);   // memory.cpp: copy pages
Status dumpShmemObjects(DumpCtx& c);                                // memory.cpp
// After the release: VmFlags reused from before the freeze must match a fresh look (memory.cpp).
Status verifyCachedVmFlags(DumpCtx& c);
// After the release (capture): shared memory objects' data into blobs.img, in order (memory.cpp).
Status writeShmemAfterThaw(DumpCtx& c);
// Pages of [start, end) of a process holding data (present or swapped, not the zero page).
Result<std::vector<PageRun>> scanDataPages(pid_t pid, uint64_t start, uint64_t end, bool anonOnly);  // memory.cpp

// ---------------------------------------------------------------- restore side
constexpr uint64_t kBootSize = 64 * 1024;  // code page + scratch, mapped at the same address everywhere
constexpr uint64_t kScratchOff = 4096;

struct RestoreCtx {
  std::filesystem::path dir;
  RestoreOptions opts;
  TreeState tree;
  uint64_t boot = 0;
  int fdBase = 0;
  std::map<int, int> fileFds;    // FileDesc id -> tracer fd (inherited by every restored process)
  std::map<int, int> mappedFds;  // MappedFile id -> tracer fd
  std::map<int, int> shmemFds;   // ShmemObject id -> tracer fd
  std::map<pid_t, int> exeFds;
  std::map<int, std::pair<int, int>> pipeFds;  // pipe id -> {read, write}
  std::vector<pid_t> traced;     // every tid we trace (killed if the restore fails)
  RestoreResult result;
  std::shared_ptr<class PageChain> chain;  // incremental image or lazy restore (incremental.hpp)
  std::shared_ptr<class LazyServer> lazy;  // lazy restore (lazy.hpp)
  const ProcessState* find(pid_t pid) const;
  uint64_t scratch() const { return boot + kScratchOff; }
  Injector inj(pid_t tid) { return Injector(tid, boot); }
};

// Tracer-side preparation, before the first process is cloned (everything opened here is
// inherited by the whole tree at fds >= fdBase).
Status openFilesForRestore(RestoreCtx& c, RawImageReader& blobs, bool memfdPass);   // files.cpp (+pipes, shmem)
Status createPipes(RestoreCtx& c, RawImageReader& blobs);           // pipes.cpp
Status createShmemObjects(RestoreCtx& c, RawImageReader& blobs);    // memory.cpp
Status openMappedFiles(RestoreCtx& c);                              // memory.cpp
// In-process halves, run through injected syscalls.
Status restoreFdTable(RestoreCtx& c, const ProcessState& ps);     // files.cpp
Status closeRestoreFds(RestoreCtx& c, const ProcessState& ps);    // files.cpp
Status dumpFileContents(DumpCtx& c);                               // files.cpp
Status resetInheritedThreadState(RestoreCtx& c, pid_t pid);        // threads.cpp
Status restoreCreds(RestoreCtx& c, const ProcessState& ps);        // process.cpp
Status restoreMemory(RestoreCtx& c, const ProcessState& ps, RawImageReader& pages);  // memory.cpp
Status restoreProcessAttrs(RestoreCtx& c, const ProcessState& ps);  // process.cpp
Status restoreSignals(RestoreCtx& c, const ProcessState& ps);       // signals.cpp
Status restoreThreads(RestoreCtx& c, const ProcessState& ps);       // threads.cpp (create + per-thread)
Status restoreSignalQueues(RestoreCtx& c, const ProcessState& ps);  // signals.cpp
Status finishThreads(RestoreCtx& c, const ProcessState& ps);        // threads.cpp: regs, masks, detach

// events.cpp: eventfd, epoll, timerfd, signalfd, inotify.
bool dumpEventFile(DumpCtx& c, pid_t pid, int fd, const std::string& link, FileDesc& f, const std::string& what);
bool isEventKind(const std::string& kind);
Result<int> openEventFile(RestoreCtx& c, const FileDesc& f);
Status restoreEpollWatches(RestoreCtx& c, const ProcessState& ps);  // after restoreFdTable
Result<Fd> grabRemoteFd(pid_t pid, int fd);  // the same open file description, via pidfd_getfd
Status dumpPosixTimers(DumpCtx& c, pid_t pid, ProcessState& ps);     // injection prepared
Status restorePosixTimers(RestoreCtx& c, const ProcessState& ps);    // after restoreThreads
// tty.cpp: pty masters/slaves, controlling terminals.
bool dumpTtyFile(DumpCtx& c, pid_t pid, int fd, const std::string& path, const struct stat& st, FileDesc& f,
                 const std::string& what);
void finishTtys(DumpCtx& c);  // end of dumpFiles
bool isTtyKind(const std::string& kind);
Result<int> openTtyFile(RestoreCtx& c, const FileDesc& f);
Status takeControllingTty(RestoreCtx& c, const ProcessState& ps);     // right after setsid
Status restoreControllingTty(RestoreCtx& c, const ProcessState& ps);  // after restoreFdTable
Status restoreDevTty(RestoreCtx& c, const ProcessState& ps);          // after restoreControllingTty
// unix_sockets.cpp: per fd (false: not a unix socket), after all fds, and the restore (run in
// the tree's network and mount namespaces, before the tree is created).
bool dumpUnixSocketFd(DumpCtx& c, pid_t pid, int fd, FileDesc& f, const std::string& what);
Status resolveUnixSockets(DumpCtx& c);
Status createUnixSockets(RestoreCtx& c);
// unix_sockets.cpp: a second listen() in the restored process that had called listen(), with its
// restored credentials, so clients connecting after the restore read its SO_PEERCRED.
Status restoreListenerCreds(RestoreCtx& c, const ProcessState& ps);
void resetLocalSockets(const DumpCtx& c);  // first thing of dumpFiles
// posix_mq.cpp: an mq_open() descriptor (false: not one), and the queues' restore (after setns).
bool dumpPosixMqFd(DumpCtx& c, pid_t pid, int fd, FileDesc& f, const std::string& link, const std::string& what);
Status restorePosixMqueues(RestoreCtx& c);
// A shared mapping of a /dev/shm file whose mapped name was unlinked but which is linked under
// another name (sem_open's temporary file): mapped by that name, so it stays shared with it.
struct MapsLine;
void liveDevShmName(const DumpCtx& c, pid_t pid, MapsLine& m, Vma& v, bool& deleted);
// inet_sockets.cpp: UDP, TCP listen/established (TCP_REPAIR, netfilter lock).
bool dumpInetSocket(DumpCtx& c, pid_t pid, int fd, const struct stat& st, FileDesc& f, const std::string& what);
bool isInetKind(const std::string& kind);
Result<int> openInetSocket(RestoreCtx& c, const FileDesc& f);
Status finishInetSockets(RestoreCtx& c);  // before the tree is released: TCP leaves repair mode
// The dump's DROP rules come off in two steps. A connection with both ends in the tree is unlocked
// before the restore: nothing outside the tree owns its 4-tuple, and both restored ends stay silent
// in repair mode until finishInetSockets, whose window probes (and the tree's first writes) must
// reach the other end; dropped, the connection stalls until the first retransmission (1 s, the
// restored socket has no RTT sample). Connections to outside peers are unlocked after the restore.
enum class UnlockWhich { InTreePairs, OutsidePeers };
Status unlockTcp(const std::filesystem::path& dir, const std::string& nsPath, UnlockWhich which);
// namespaces.cpp: the tree's clocks (time namespace).
Status dumpClocks(DumpCtx& c, pid_t root);  // right after the seize
Status enterTimeNamespace(RestoreCtx& c);   // before the root is cloned
// A whole container (DumpOptions::namespaceRoot): its mounts, names and interfaces, after dumpFiles.
Status dumpNamespaceContents(DumpCtx& c, pid_t root);
// Restore into fresh namespaces: the plan is built by the parent; the new root runs it right after
// its clone (system calls only), then pivots into the container's root. 0 or -errno (*step says).
struct FreshNsPlan;
Result<std::shared_ptr<FreshNsPlan>> loadFreshNsPlan(const std::filesystem::path& dir, const std::string& rootfs);
int runFreshNsPlan(const FreshNsPlan& p, int netnsFd, const char** step);
std::string freshNsOtherInterface(const FreshNsPlan& p);  // "" when a new netns (lo) can stand in

// sysv_ipc.cpp: a /SYSV mapping (memory.cpp), the objects (after the memory layout), and the
// restore: prepare before the restorer changes namespaces, objects after, attaches per process,
// finish at the end (ok or not).
struct MapsLine;
bool dumpSysvShmVma(DumpCtx& c, pid_t pid, const MapsLine& m, Vma& v);
Status dumpSysvIpc(DumpCtx& c);
Status prepareSysvIpc(RestoreCtx& c);
Status restoreSysvIpc(RestoreCtx& c);
Status restoreSysvShmVma(RestoreCtx& c, pid_t pid, const Vma& v);
void finishSysvIpc(RestoreCtx& c, bool ok);

std::string pathInTree(const std::string& prefix, const std::string& path);

}  // namespace crb::native
