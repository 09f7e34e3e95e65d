// POSIX message queues (mq_open descriptors): attributes, owner and mode, whether the name was
// unlinked, and the queued messages with their priorities.
//
// Dump: a message queue cannot be peeked, so its messages are received through a descriptor
// opened on the queue (via /proc/<pid>/fd) and sent straight back in the order they came out
// (highest priority first, FIFO within one), which recreates the same queue; the tree is stopped
// meanwhile, and a failure to send back is a dump error naming the queue. The dump's guardian
// does this on crbench's behalf, so a crbench killed mid-drain loses no message (guardian.hpp). A queue with an
// mq_notify() registration is refused (it names a process and a signal we do not carry).
//
// Restore, in the tree's IPC namespace (after the restorer joined it): the queue is created under
// its name with its attributes, or, if it still exists (crbench's own namespace: queues outlive
// their users like files), emptied; then refilled, and each description opened with its flags.
// An unlinked queue is unlinked again once every description is open.
#include <fcntl.h>
#include <mqueue.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <set>

#include "core/fsutil.hpp"
#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

#include <filesystem>

namespace crb::native {

namespace {
constexpr long kMqueueMagic = 0x19800202;
std::map<const DumpCtx*, std::set<uint64_t>> gCarried;  // queue inodes whose messages are in the image
}  // namespace

bool dumpPosixMqFd(DumpCtx& c, pid_t pid, int fd, FileDesc& f, const std::string& link, const std::string& what) {
  std::string proc = fmt::format("/proc/{}/fd/{}", pid, fd);
  struct statfs sfs {};
  if (::statfs(proc.c_str(), &sfs) != 0 || sfs.f_type != kMqueueMagic) return false;
  f.kind = "mqueue";
  bool deleted = link.size() > 10 && link.compare(link.size() - 10, 10, " (deleted)") == 0;
  std::string name = deleted ? link.substr(0, link.size() - 10) : link;
  f.path = name;
  Fd q(::open(proc.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!q.valid()) {
    c.refuse(what + fmt::format(" (POSIX message queue {}: cannot open it to read its messages: {})", name, std::strerror(errno)));
    return true;
  }
  mq_attr attr{};
  if (::mq_getattr(q.get(), &attr) != 0) {
    c.refuse(what + " (POSIX message queue " + name + ": mq_getattr failed)");
    return true;
  }
  char status[256] = {};
  (void)!::pread(q.get(), status, sizeof status - 1, 0);
  std::string st(status);
  auto np = st.find("NOTIFY_PID:");
  if (np != std::string::npos && std::atoi(st.c_str() + np + 11) != 0)
    c.refuse(what + " (POSIX message queue " + name + " with an mq_notify registration)");
  Json d{{"name", name}, {"deleted", deleted}, {"maxmsg", attr.mq_maxmsg}, {"msgsize", attr.mq_msgsize},
         {"mode", f.mode}, {"messages", Json::array()}};
  struct stat sst {};
  ::fstat(q.get(), &sst);
  d["uid"] = sst.st_uid;
  d["gid"] = sst.st_gid;
  if (gCarried[&c].insert(f.ino).second) {
    d["carries"] = true;
    // Taken out and put back by the guardian, so a dumper killed meanwhile loses none (guardian.hpp).
    // The fault tests make it hold the queue drained a moment, so the kill lands mid-drain.
    const char* fault = std::getenv("CRBENCH_NATIVE_FAULT");
    int pauseMs = fault && std::string(fault).rfind("mq-drain:", 0) == 0 ? 300 : 0;
    auto msgs = c.seizure->guardian()->readMessageQueue(pid, fd, pauseMs);
    if (!msgs.ok()) {
      c.refuse(what + fmt::format(" (POSIX message queue {}: {})", name, msgs.error().message));
    } else {
      for (auto& [prio, m] : *msgs) d["messages"].push_back({{"prio", prio}, {"hex", toHex(m.data(), m.size())}});
    }
  }
  f.detail = d;
  return true;
}

Status restorePosixMqueues(RestoreCtx& c) {
  std::map<std::string, bool> ready;  // queue name -> deleted
  for (auto& f : c.tree.files) {
    if (f.kind != "mqueue" || !f.detail.value("carries", false)) continue;
    std::string name = f.detail.value("name", "");
    mq_attr attr{};
    attr.mq_maxmsg = f.detail.value("maxmsg", 10L);
    attr.mq_msgsize = f.detail.value("msgsize", 8192L);
    mode_t old = ::umask(0);
    int q = ::mq_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NONBLOCK | O_CLOEXEC, mode_t(f.detail.value("mode", 0600)), &attr);
    ::umask(old);
    if (q < 0 && errno == EEXIST) {
      q = ::mq_open(name.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC);
      mq_attr now{};
      if (q >= 0 && ::mq_getattr(q, &now) == 0 && (now.mq_maxmsg != attr.mq_maxmsg || now.mq_msgsize != attr.mq_msgsize)) {
        ::close(q);
        return makeError("POSIX message queue " + name + " exists with other attributes than at the dump",
                         "remove it (mq_unlink), then restore");
      }
      std::string buf(size_t(attr.mq_msgsize), '\0');
      timespec zero{};
      while (q >= 0 && ::mq_timedreceive(q, buf.data(), buf.size(), nullptr, &zero) >= 0) {
      }
    }
    if (q < 0) return sysError("recreate POSIX message queue " + name, errno);
    Fd qf(q);
    if (::fchown(q, f.detail.value("uid", 0u), f.detail.value("gid", 0u)) != 0)
      return sysError("set the owner of POSIX message queue " + name, errno);
    for (auto& m : f.detail.value("messages", Json::array())) {
      CRB_ASSIGN(std::string text, fromHex(m.value("hex", "")));
      if (::mq_send(q, text.data(), text.size(), m.value("prio", 0u)) != 0)
        return sysError("re-queue a message in POSIX message queue " + name, errno);
    }
    ready[name] = f.detail.value("deleted", false);
  }
  for (auto& f : c.tree.files) {
    if (f.kind != "mqueue") continue;
    int fd = ::mq_open(f.path.c_str(), (f.flags & (O_ACCMODE | O_NONBLOCK)) | O_CLOEXEC);
    if (fd < 0) return sysError("open POSIX message queue " + f.path, errno);
    int hi = ::fcntl(fd, F_DUPFD, c.fdBase);
    ::close(fd);
    if (hi < 0) return sysError("move a message queue's fd up", errno);
    c.fileFds[f.id] = hi;
  }
  for (auto& [name, deleted] : ready)
    if (deleted && ::mq_unlink(name.c_str()) != 0) return sysError("unlink POSIX message queue " + name + " again", errno);
  return success();
}

void liveDevShmName(const DumpCtx& c, pid_t pid, MapsLine& m, Vma& v, bool& deleted) {
  std::string p = m.path.substr(0, m.path.size() - 10);
  if (!c.opts.rootPrefix.empty() && p.rfind(c.opts.rootPrefix, 0) == 0) p = p.substr(c.opts.rootPrefix.size());
  if (p.rfind("/dev/shm/", 0) != 0) return;
  struct stat st {};
  if (::stat(fmt::format("/proc/{}/map_files/{:x}-{:x}", pid, m.start, m.end).c_str(), &st) != 0 || st.st_nlink == 0) return;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator(c.opts.rootPrefix + "/dev/shm", ec)) {
    struct stat o {};
    if (::lstat(e.path().c_str(), &o) == 0 && o.st_ino == st.st_ino && o.st_dev == st.st_dev && S_ISREG(o.st_mode)) {
      m.path = c.opts.rootPrefix + "/dev/shm/" + e.path().filename().string();
      v.path = m.path;
      deleted = false;
      return;
    }
  }
}

void forgetPosixMqDump(const DumpCtx& c) { gCarried.erase(&c); }  // called by resetLocalSockets()

}  // namespace crb::native
