// SysV IPC: shared memory segments (attached at the same addresses: X's MIT-SHM), semaphore sets
// and message queues, with the ids the tree knows them by.
//
// Dump: a tree with an IPC namespace of its own (a container's, or one it unshared) has every
// object of that namespace carried: listed with *_STAT_ANY, segment contents read through a
// read-only attach, semaphore values with GETALL, messages copied out with msgrcv(MSG_COPY)
// (nothing is consumed, so leave-running leaves the queues as they were). All of it runs in a
// thread that joined that namespace. A tree in crbench's own namespace has only the segments it
// attached carried (refused when a process outside the tree has them attached too); semaphores and
// queues there outlive the tree like files do and are not part of its image.
//
// Restore, in the tree's namespace (after the restorer joined it, before the tree exists): an
// object still there with the same id, key and size gets its dump-time state written back; a
// missing one is recreated under its id by writing the id to kernel.{shm,sem,msg}_next_id first
// (through a /proc/sys/kernel opened before the mount namespace changed: the ipc sysctls answer for
// the opener's IPC namespace). A segment that was IPC_RMID'd while attached is held by the
// restorer until every process attached it again, then removed. Attaches are injected shmat()s at
// the recorded addresses. Semaphore undo values (SEM_UNDO) are not visible to crbench: a process
// with an undo list is refused by name (refuseSemUndo).
#include "engine/native/sysv_ipc.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>

#include "core/fsutil.hpp"
#include "engine/native/freeze_trace.hpp"
#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

#ifndef SHM_STAT_ANY
#define SHM_STAT_ANY 15
#endif
#ifndef SEM_STAT_ANY
#define SEM_STAT_ANY 20
#endif
#ifndef MSG_STAT_ANY
#define MSG_STAT_ANY 13
#endif
#ifndef MSG_COPY
#define MSG_COPY 040000
#endif

namespace crb::native {

static void permTo(Json& j, const IpcPerm& p) {
  j["id"] = p.id;
  j["key"] = p.key;
  j["mode"] = p.mode;
  j["uid"] = p.uid;
  j["gid"] = p.gid;
}
static IpcPerm permFrom(const Json& j) {
  IpcPerm p;
  p.id = j.value("id", 0);
  p.key = j.value("key", 0);
  p.mode = j.value("mode", 0600);
  p.uid = j.value("uid", 0u);
  p.gid = j.value("gid", 0u);
  return p;
}

void to_json(Json& j, const IpcImage& v) {
  j = Json{{"wholeNamespace", v.wholeNamespace}, {"unshared", v.unshared}, {"shm", Json::array()},
           {"sem", Json::array()}, {"msg", Json::array()}};
  for (auto& s : v.shm) {
    Json e{{"size", s.size}, {"destroyed", s.destroyed}};
    permTo(e, s.perm);
    j["shm"].push_back(e);
  }
  for (auto& s : v.sem) {
    Json e{{"values", s.values}};
    permTo(e, s.perm);
    j["sem"].push_back(e);
  }
  for (auto& s : v.msg) {
    Json e{{"qbytes", s.qbytes}, {"types", s.types}, {"sizes", s.sizes}};
    permTo(e, s.perm);
    j["msg"].push_back(e);
  }
}

void from_json(const Json& j, IpcImage& v) {
  v.wholeNamespace = j.value("wholeNamespace", false);
  v.unshared = j.value("unshared", false);
  for (auto& e : j.value("shm", Json::array())) {
    SysvShm s;
    s.perm = permFrom(e);
    s.size = e.value("size", 0ull);
    s.destroyed = e.value("destroyed", false);
    v.shm.push_back(s);
  }
  for (auto& e : j.value("sem", Json::array())) {
    SysvSem s;
    s.perm = permFrom(e);
    s.values = e.value("values", std::vector<uint16_t>{});
    v.sem.push_back(s);
  }
  for (auto& e : j.value("msg", Json::array())) {
    SysvMsg s;
    s.perm = permFrom(e);
    s.qbytes = e.value("qbytes", 0ull);
    s.types = e.value("types", std::vector<int64_t>{});
    s.sizes = e.value("sizes", std::vector<uint64_t>{});
    v.msg.push_back(s);
  }
}

namespace {
constexpr const char* kIpcImage = "ipc.img";
constexpr const char* kIpcData = "ipc-data.img";

std::string nsLink(pid_t pid) {
  auto l = readLink(pid ? fmt::format("/proc/{}/ns/ipc", pid) : std::string("/proc/self/ns/ipc"));
  return l.ok() ? *l : "";
}

// Runs `fn` in the IPC namespace of `pid` (a thread that joined it), or here when it is ours.
Status inIpcNamespace(pid_t pid, const std::function<Status()>& fn) {
  if (nsLink(pid) == nsLink(0)) return fn();
  Fd ns(::open(fmt::format("/proc/{}/ns/ipc", pid).c_str(), O_RDONLY | O_CLOEXEC));
  if (!ns.valid()) return sysError(fmt::format("open /proc/{}/ns/ipc", pid), errno);
  // In this thread and back (no new thread): during a dump's freeze a thread's start waits for a
  // CPU on a busy machine (4-12 ms measured at load 5-6), and only the IPC namespace changes.
  Fd mine(::open("/proc/thread-self/ns/ipc", O_RDONLY | O_CLOEXEC));
  if (!mine.valid()) return sysError("open /proc/thread-self/ns/ipc", errno);
  if (::setns(ns.get(), CLONE_NEWIPC) != 0) return sysError(fmt::format("join the IPC namespace of pid {}", pid), errno);
  Status st = fn();
  if (::setns(mine.get(), CLONE_NEWIPC) != 0) {
    // Every later IPC call of crbench would act on the tree's namespace: stop here.
    std::fprintf(stderr, "crbench: cannot return to its own IPC namespace: %s\n", std::strerror(errno));
    std::abort();
  }
  return st;
}

IpcPerm permOf(int id, const ipc_perm& p) {
  IpcPerm r;
  r.id = id;
  r.key = p.__key;
  r.mode = p.mode & 0777;
  r.uid = p.uid;
  r.gid = p.gid;
  return r;
}
}  // namespace

// memory.cpp: a /SYSV<key> mapping; /proc/<pid>/maps shows the segment's id as the inode.
bool dumpSysvShmVma(DumpCtx& c, pid_t pid, const MapsLine& m, Vma& v) {
  (void)c;
  (void)pid;
  v.kind = "sysvshm";
  v.object = int(m.ino);
  return true;
}

// SEM_UNDO adjustments live in a per-process undo list the kernel does not show (no /proc file,
// no semctl command); kcmp(KCMP_SYSVSEM) only tells whether a process has such a list (crbench
// has none). Applying it to read it (unshare(CLONE_SYSVSEM)) would run other processes' blocked
// semops, so a process with one is refused, naming the sets it last operated on (GETPID). Runs
// in the tree's IPC namespace.
static void refuseSemUndo(DumpCtx& c) {
  // The reference without a list: a process forked from crbench (crbench's threads were cloned
  // with CLONE_SYSVSEM, which gives a process an empty list; so do a tree's threads). The dump
  // guardian is one, forked before anything was frozen and never touching a semaphore, so no
  // fork runs in the freeze (3-4 ms measured; the fork copies crbench's page tables). Only when
  // it is not there (or gone: kcmp with itself fails) is a reference forked here.
  pid_t ref = -1;
  bool forked = false;
  if (c.seizure && c.seizure->guardian()) {
    ref = c.seizure->guardian()->pid();
    if (ref <= 0 || ::syscall(SYS_kcmp, ref, ref, 6 /*KCMP_SYSVSEM*/, 0, 0) != 0) ref = -1;
  }
  if (ref < 0) {
    ref = ::fork();
    if (ref == 0) {
      ::pause();
      ::_exit(0);
    }
    if (ref < 0) {
      c.refuse("SysV semaphore undo state: cannot fork a reference process to compare with");
      return;
    }
    forked = true;
  }
  std::vector<std::pair<pid_t, pid_t>> holders;  // (pid, tid) with an undo list
  std::set<pid_t> threaded;
  for (auto& ps : c.tree.procs) {
    if (ps.zombie) continue;
    if (ps.threads.size() > 1) threaded.insert(ps.pid);
    for (auto& t : ps.threads)
      if (::syscall(SYS_kcmp, t.tid, ref, 6 /*KCMP_SYSVSEM*/, 0, 0) != 0) {
        holders.push_back({ps.pid, t.tid});
        break;
      }
  }
  if (forked) {
    ::kill(ref, SIGKILL);
    ::waitpid(ref, nullptr, 0);
  }
  if (holders.empty()) return;
  seminfo sinfo{};
  int maxSem = ::semctl(0, 0, SEM_INFO, &sinfo);
  for (auto [pid, tid] : holders) {
    std::string sets, all;
    for (int i = 0; i <= maxSem; i++) {
      semid_ds ds{};
      int id = ::semctl(i, 0, SEM_STAT_ANY, &ds);
      if (id < 0) continue;
      std::string name = fmt::format("id {} (key {:#x})", id, uint32_t(ds.sem_perm.__key));
      all += (all.empty() ? "" : ", ") + name;
      for (unsigned k = 0; k < ds.sem_nsems; k++) {
        int last = ::semctl(id, int(k), GETPID);
        if (last == pid || last == tid) {
          sets += (sets.empty() ? "" : ", ") + name;
          break;
        }
      }
    }
    if (all.empty()) continue;  // every set is gone: the list has nothing left to undo
    // A multi-threaded process has a list from its first thread on, mostly empty: refused only
    // when it operated on a set last.
    if (threaded.count(pid) && sets.empty()) continue;
    c.refuse(fmt::format("SysV semaphore undo adjustments (SEM_UNDO) of pid {}, which the kernel does not expose and "
                         "a restore would lose; semaphore set(s) {}",
                         c.imagePid(pid), !sets.empty() ? "it last operated on: " + sets : "it may hold them on: " + all));
  }
}

Status dumpSysvIpc(DumpCtx& c) {
  if (c.tree.procs.empty()) return success();
  pid_t root = c.seizure && !c.seizure->order.empty() ? c.seizure->order[0] : c.tree.procs[0].pid;
  freezeTrace("sysv_start");
  IpcImage img;
  std::string rootNs = nsLink(root);
  img.wholeNamespace = !rootNs.empty() && rootNs != nsLink(0);
  img.unshared = img.wholeNamespace && !c.opts.nsReference;
  // Attaches per segment id inside the tree (to spot attachers outside it).
  // One attach can show as several mappings (mprotect split it): adjacent ones of the same id form a run.
  std::map<int, int> attaches;
  struct Run {
    pid_t pid;
    int id;
    uint64_t start, len;  // len 0: does not start at the segment's beginning
  };
  std::vector<Run> runs;
  for (auto& ps : c.tree.procs)
    for (size_t i = 0; i < ps.vmas.size(); i++) {
      auto& v = ps.vmas[i];
      if (v.kind != "sysvshm") continue;
      bool cont = i > 0 && ps.vmas[i - 1].kind == "sysvshm" && ps.vmas[i - 1].object == v.object &&
                  ps.vmas[i - 1].end == v.start;
      attaches[v.object]++;  // the kernel's shm_nattch counts mappings
      // Restored by attaching whole and mprotect()ing the pieces: a run must start at the
      // segment's beginning and cover all of it.
      size_t j = i;
      while (j + 1 < ps.vmas.size() && ps.vmas[j + 1].kind == "sysvshm" && ps.vmas[j + 1].object == v.object &&
             ps.vmas[j + 1].start == ps.vmas[j].end)
        j++;
      if (!cont) runs.push_back({ps.pid, v.object, v.start, v.pgoff == 0 ? ps.vmas[j].end - v.start : 0});
    }
  freezeTrace("sysv_nslink_runs");
  if (!img.wholeNamespace && attaches.empty()) {
    refuseSemUndo(c);
    return success();
  }
  CRB_ASSIGN(auto data, ImageWriter::create(c.dir, kIpcData));
  freezeTrace("sysv_create_data");
  Status body = inIpcNamespace(root, [&]() -> Status {
    freezeTrace("sysv_setns");
    shm_info si{};
    int maxShm = ::shmctl(0, SHM_INFO, reinterpret_cast<shmid_ds*>(&si));
    for (int i = 0; i <= maxShm; i++) {
      shmid_ds ds{};
      int id = ::shmctl(i, SHM_STAT_ANY, &ds);
      if (id < 0) continue;
      if (!img.wholeNamespace && !attaches.count(id)) continue;
      SysvShm s;
      s.perm = permOf(id, ds.shm_perm);
      s.size = ds.shm_segsz;
      s.destroyed = (ds.shm_perm.mode & SHM_DEST) != 0;
      std::string what = fmt::format("SysV shm segment id {} (key {:#x}, {} bytes)", id, uint32_t(s.perm.key), s.size);
      int inTree = attaches.count(id) ? attaches[id] : 0;
      for (auto& r : runs)
        if (r.id == id && r.len != (s.size + kPage - 1) / kPage * kPage)
          c.refuse(fmt::format("{} partly mapped at {:#x} in pid {} (munmap'd or mremap'd in part)", what, r.start,
                               c.imagePid(r.pid)));
      if (!img.wholeNamespace && ds.shm_nattch > uint64_t(inTree))
        c.refuse(fmt::format("{} is attached by {} process(es) outside the tree", what, ds.shm_nattch - inTree));
      if (ds.shm_perm.mode & SHM_HUGETLB) c.refuse(what + " uses huge pages");
      void* p = ::shmat(id, nullptr, SHM_RDONLY);
      if (p == reinterpret_cast<void*>(-1)) return sysError("attach " + what + " to read it", errno);
      Status w = data.write(p, s.size);
      ::shmdt(p);
      CRB_CHECK(w);
      img.shm.push_back(s);
    }
    // Every segment the tree has attached must have been found.
    for (auto& [id, n] : attaches) {
      bool found = false;
      for (auto& s : img.shm) found = found || s.perm.id == id;
      if (!found) c.refuse(fmt::format("SysV shm segment id {} attached by the tree but not listed by shmctl", id));
    }
    freezeTrace("sysv_shm");
    refuseSemUndo(c);
    freezeTrace("sysv_semundo");
    if (!img.wholeNamespace) return success();
    seminfo sinfo{};
    int maxSem = ::semctl(0, 0, SEM_INFO, &sinfo);
    for (int i = 0; i <= maxSem; i++) {
      semid_ds ds{};
      int id = ::semctl(i, 0, SEM_STAT_ANY, &ds);
      if (id < 0) continue;
      SysvSem s;
      s.perm = permOf(id, ds.sem_perm);
      s.values.resize(ds.sem_nsems);
      if (::semctl(id, 0, GETALL, s.values.data()) != 0)
        return sysError(fmt::format("read SysV semaphore set id {}", id), errno);
      img.sem.push_back(s);
    }
    freezeTrace("sysv_sem");
    msginfo minfo{};
    int maxMsg = ::msgctl(0, MSG_INFO, reinterpret_cast<msqid_ds*>(&minfo));
    std::vector<char> buf(sizeof(long) + 65536);
    for (int i = 0; i <= maxMsg; i++) {
      msqid_ds ds{};
      int id = ::msgctl(i, MSG_STAT_ANY, &ds);
      if (id < 0) continue;
      SysvMsg q;
      q.perm = permOf(id, ds.msg_perm);
      q.qbytes = ds.msg_qbytes;
      std::string what = fmt::format("SysV message queue id {} (key {:#x})", id, uint32_t(q.perm.key));
      if (buf.size() < sizeof(long) + ds.msg_qbytes) buf.resize(sizeof(long) + ds.msg_qbytes);
      for (uint64_t m = 0; m < ds.msg_qnum; m++) {
        ssize_t n = ::msgrcv(id, buf.data(), buf.size() - sizeof(long), long(m), IPC_NOWAIT | MSG_COPY | MSG_NOERROR);
        if (n < 0) {
          if (errno == ENOSYS) {
            c.refuse(what + " holds messages and this kernel cannot copy them out (MSG_COPY needs CONFIG_CHECKPOINT_RESTORE)");
            break;
          }
          return sysError(fmt::format("copy message {} of {}", m, what), errno);
        }
        long type;
        std::memcpy(&type, buf.data(), sizeof type);
        q.types.push_back(type);
        q.sizes.push_back(uint64_t(n));
        CRB_CHECK(data.write(buf.data() + sizeof(long), size_t(n)));
      }
      img.msg.push_back(q);
    }
    return success();
  });
  freezeTrace("sysv_msg_setnsback");
  CRB_CHECK(body);
  // The objects' contents are in the writer (read in the freeze); committing it and writing
  // ipc.img wait until the tree runs again.
  auto w = std::make_shared<ImageWriter>(std::move(data));
  c.writeAfterFreeze.push_back([&c, w, j = Json(img)]() -> Status {
    CRB_CHECK(w->commit(c.opts.sync));
    return writeJsonImage(c.dir, kIpcImage, j, c.opts.sync);
  });
  return success();
}

// ---------------------------------------------------------------- restore
namespace {
struct RestoreState {
  IpcImage img;
  bool present = false;
  Fd sysctlDir;  // /proc/sys/kernel as seen before the restorer changed namespaces
  std::vector<int> createdShm, createdSem, createdMsg;
  std::vector<std::pair<int, void*>> held;  // segments the restorer keeps attached until the end
};
std::map<const RestoreCtx*, RestoreState> gRestore;

Status setNextId(RestoreState& rs, const char* file, int id) {
  Fd f(::openat(rs.sysctlDir.get(), file, O_WRONLY | O_CLOEXEC));
  std::string v = std::to_string(id);
  if (!f.valid() || ::write(f.get(), v.data(), v.size()) != ssize_t(v.size()))
    return sysError(fmt::format("write {} to kernel.{} (recreate the IPC object under its id)", id, file), errno);
  return success();
}
}  // namespace

Status prepareSysvIpc(RestoreCtx& c) {
  if (!std::filesystem::exists(c.dir / kIpcImage)) return success();
  auto& rs = gRestore[&c];
  CRB_ASSIGN(Json j, readJsonImage(c.dir, kIpcImage));
  try {
    rs.img = j.get<IpcImage>();
  } catch (const std::exception& e) {
    return makeError(std::string("ipc.img has unexpected content: ") + e.what(), "dump again");
  }
  rs.present = true;
  // A plain tree that had unshared its IPC namespace gets a fresh one (the restorer's, inherited
  // by the tree); a container restore joins the container's instead (setnsBeforeTree).
  if (rs.img.unshared && c.opts.setnsBeforeTree.empty() && ::unshare(CLONE_NEWIPC) != 0)
    return sysError("unshare a new IPC namespace for the tree", errno);
  rs.sysctlDir.reset(::open("/proc/sys/kernel", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!rs.sysctlDir.valid()) return sysError("open /proc/sys/kernel", errno);
  return success();
}

Status restoreSysvIpc(RestoreCtx& c) {
  auto it = gRestore.find(&c);
  if (it == gRestore.end() || !it->second.present) return success();
  auto& rs = it->second;
  CRB_ASSIGN(auto data, RawImageReader::open(c.dir, kIpcData));
  for (auto& s : rs.img.shm) {
    std::string what = fmt::format("SysV shm segment id {} (key {:#x}, {} bytes)", s.perm.id, uint32_t(s.perm.key), s.size);
    shmid_ds ds{};
    int id = -1;
    if (::shmctl(s.perm.id, IPC_STAT, &ds) == 0) {
      if (ds.shm_perm.__key != s.perm.key || ds.shm_segsz != s.size)
        return makeError(what + ": another segment has that id now", "remove it, or restore into the namespace the tree had");
      id = s.perm.id;
    } else {
      CRB_CHECK(setNextId(rs, "shm_next_id", s.perm.id));
      id = ::shmget(s.destroyed ? IPC_PRIVATE : s.perm.key, s.size, IPC_CREAT | IPC_EXCL | s.perm.mode);
      if (id < 0) return sysError("recreate " + what, errno);
      rs.createdShm.push_back(id);
      if (id != s.perm.id) return makeError(fmt::format("{} was recreated as id {}", what, id));
      shmid_ds set{};
      set.shm_perm.uid = s.perm.uid;
      set.shm_perm.gid = s.perm.gid;
      set.shm_perm.mode = unsigned(s.perm.mode);
      if (::shmctl(id, IPC_SET, &set) != 0) return sysError("set owner of " + what, errno);
    }
    void* p = ::shmat(id, nullptr, 0);
    if (p == reinterpret_cast<void*>(-1)) return sysError("attach " + what, errno);
    rs.held.push_back({id, p});
    CRB_CHECK(data.read(p, s.size));
  }
  for (auto& s : rs.img.sem) {
    std::string what = fmt::format("SysV semaphore set id {} (key {:#x})", s.perm.id, uint32_t(s.perm.key));
    semid_ds ds{};
    int id = -1;
    if (::semctl(s.perm.id, 0, IPC_STAT, &ds) == 0) {
      if (ds.sem_perm.__key != s.perm.key || ds.sem_nsems != s.values.size())
        return makeError(what + ": another set has that id now", "restore into the namespace the tree had");
      id = s.perm.id;
    } else {
      CRB_CHECK(setNextId(rs, "sem_next_id", s.perm.id));
      id = ::semget(s.perm.key, int(s.values.size()), IPC_CREAT | IPC_EXCL | s.perm.mode);
      if (id < 0) return sysError("recreate " + what, errno);
      rs.createdSem.push_back(id);
      if (id != s.perm.id) return makeError(fmt::format("{} was recreated as id {}", what, id));
      semid_ds set{};
      set.sem_perm.uid = s.perm.uid;
      set.sem_perm.gid = s.perm.gid;
      set.sem_perm.mode = unsigned(s.perm.mode);
      if (::semctl(id, 0, IPC_SET, &set) != 0) return sysError("set owner of " + what, errno);
    }
    auto vals = s.values;
    if (!vals.empty() && ::semctl(id, 0, SETALL, vals.data()) != 0) return sysError("set values of " + what, errno);
  }
  std::vector<char> buf;
  for (auto& q : rs.img.msg) {
    std::string what = fmt::format("SysV message queue id {} (key {:#x})", q.perm.id, uint32_t(q.perm.key));
    msqid_ds ds{};
    int id = -1;
    if (::msgctl(q.perm.id, IPC_STAT, &ds) == 0) {
      if (ds.msg_perm.__key != q.perm.key)
        return makeError(what + ": another queue has that id now", "restore into the namespace the tree had");
      id = q.perm.id;
      // Back to the dump's contents: what is there now goes.
      std::vector<char> drain(sizeof(long) + 65536);
      while (::msgrcv(id, drain.data(), drain.size() - sizeof(long), 0, IPC_NOWAIT | MSG_NOERROR) >= 0) {
      }
    } else {
      CRB_CHECK(setNextId(rs, "msg_next_id", q.perm.id));
      id = ::msgget(q.perm.key, IPC_CREAT | IPC_EXCL | q.perm.mode);
      if (id < 0) return sysError("recreate " + what, errno);
      rs.createdMsg.push_back(id);
      if (id != q.perm.id) return makeError(fmt::format("{} was recreated as id {}", what, id));
    }
    msqid_ds set{};
    if (::msgctl(id, IPC_STAT, &set) == 0) {
      set.msg_perm.uid = q.perm.uid;
      set.msg_perm.gid = q.perm.gid;
      set.msg_perm.mode = unsigned(q.perm.mode);
      set.msg_qbytes = q.qbytes;
      if (::msgctl(id, IPC_SET, &set) != 0) return sysError("set owner and size of " + what, errno);
    }
    for (size_t m = 0; m < q.sizes.size(); m++) {
      buf.resize(sizeof(long) + q.sizes[m]);
      long type = long(q.types[m]);
      std::memcpy(buf.data(), &type, sizeof type);
      CRB_CHECK(data.read(buf.data() + sizeof(long), q.sizes[m]));
      if (::msgsnd(id, buf.data(), q.sizes[m], IPC_NOWAIT) != 0)
        return sysError(fmt::format("re-queue message {} of {}", m, what), errno);
    }
  }
  return data.verifyComplete();
}

// In a restored process (memory.cpp): attach the segment at its address again.
// The first piece of an attach attaches the whole segment (writable if any piece is, as shmat
// then allowed mprotect to it); every piece then gets its own protection.
Status restoreSysvShmVma(RestoreCtx& c, pid_t pid, const Vma& v) {
  auto inj = c.inj(pid);
  if (v.pgoff == 0) {
    int prot = 0;
    const ProcessState* ps = c.find(pid);
    uint64_t end = v.start;
    if (ps)
      for (auto& o : ps->vmas)
        if (o.kind == "sysvshm" && o.object == v.object && o.start == end) {
          prot |= o.prot;
          end = o.end;
        }
    uint64_t flags = (prot & PROT_WRITE) ? 0 : SHM_RDONLY;
    if (prot & PROT_EXEC) flags |= SHM_EXEC;
    CRB_ASSIGN(long got, inj.check(fmt::format("shmat SysV segment id {} at {:#x}", v.object, v.start), SYS_shmat,
                                   uint64_t(v.object), v.start, flags));
    if (uint64_t(got) != v.start)
      return makeError(fmt::format("SysV segment id {} attached at {:#x}, not {:#x}", v.object, got, v.start));
  }
  CRB_CHECK(inj.check("mprotect a piece of a SysV segment", SYS_mprotect, v.start, v.end - v.start, uint64_t(v.prot)));
  return success();
}

// End of the restore: segments that were IPC_RMID'd are removed again now that the tree holds
// them; on failure, what this restore created goes away.
void finishSysvIpc(RestoreCtx& c, bool ok) {
  auto it = gRestore.find(&c);
  if (it == gRestore.end()) return;
  auto& rs = it->second;
  if (ok) {
    for (auto& s : rs.img.shm)
      if (s.destroyed) ::shmctl(s.perm.id, IPC_RMID, nullptr);
  } else {
    for (int id : rs.createdShm) ::shmctl(id, IPC_RMID, nullptr);
    for (int id : rs.createdSem) ::semctl(id, 0, IPC_RMID);
    for (int id : rs.createdMsg) ::msgctl(id, IPC_RMID, nullptr);
  }
  for (auto& [id, p] : rs.held) ::shmdt(p);
  gRestore.erase(it);
}

}  // namespace crb::native
