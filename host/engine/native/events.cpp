// Event and timer files: eventfd, epoll (its watched set), timerfd, signalfd and inotify (its
// watches). Each is read from /proc/<pid>/fdinfo at dump time and recreated by crbench before the
// tree is cloned, except epoll's watches: epoll keys a watch by (file, fd number), so they are
// re-added by epoll_ctl injected into the restored process that owns the fd numbers, once its fd
// table is in place. POSIX timers (/proc/<pid>/timers) are refused in process.cpp.
#include <fcntl.h>
#include <signal.h>
#include <linux/kcmp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <sstream>

#include "core/fsutil.hpp"

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

// <linux/timerfd.h> clashes with glibc's <fcntl.h>.
#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif

namespace {
std::vector<std::string> fdinfoLines(pid_t pid, int fd) {
  std::vector<std::string> out;
  auto s = readProc(pid, fmt::format("fdinfo/{}", fd));
  if (!s.ok()) return out;
  std::istringstream in(*s);
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

// "key:value" tokens of one fdinfo line ("tfd:  5 events: 19 data: 4 ...").
std::map<std::string, std::string> tokens(const std::string& line) {
  std::map<std::string, std::string> m;
  std::istringstream in(line);
  std::string w, key;
  while (in >> w) {
    auto c = w.find(':');
    if (c != std::string::npos) {
      key = w.substr(0, c);
      if (c + 1 < w.size()) m[key] = w.substr(c + 1);
      else m[key] = "";
    } else if (!key.empty() && m[key].empty()) {
      m[key] = w;
    }
  }
  return m;
}

std::string value(const std::vector<std::string>& lines, const std::string& key) {
  for (auto& l : lines)
    if (l.rfind(key + ":", 0) == 0) {
      auto v = l.substr(key.size() + 1);
      auto b = v.find_first_not_of(" \t");
      return b == std::string::npos ? "" : v.substr(b);
    }
  return "";
}

// The kernel prints an inode's s_dev in its internal encoding (major << 20 | minor).
dev_t fromKernelDev(uint64_t k) { return makedev(unsigned(k >> 20), unsigned(k & 0xfffff)); }

// A path for the inode that an inotify watch names, found through its file handle on the
// mount of that device as the process sees it.
Result<std::string> pathOfHandle(const DumpCtx& c, pid_t pid, dev_t dev, const std::string& type,
                                 const std::string& hex) {
  CRB_ASSIGN(auto mi, readProc(pid, "mountinfo"));
  std::istringstream in(mi);
  std::string line, mountPoint;
  std::string want = fmt::format("{}:{}", major(dev), minor(dev));
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, mm, root, mp;
    ls >> id >> parent >> mm >> root >> mp;
    if (mm == want) {
      mountPoint = mp;
      break;
    }
  }
  if (mountPoint.empty()) return makeError("no mount of device " + want + " in the process's mount table");
  Fd mfd(::open((c.opts.rootPrefix + mountPoint).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!mfd.valid()) return sysError("open mount point " + mountPoint, errno);
  std::string raw;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) raw.push_back(char(std::stoi(hex.substr(i, 2), nullptr, 16)));
  std::vector<char> buf(sizeof(file_handle) + raw.size());
  auto* fh = reinterpret_cast<file_handle*>(buf.data());
  fh->handle_bytes = unsigned(raw.size());
  fh->handle_type = int(std::strtol(type.c_str(), nullptr, 16));
  std::memcpy(fh->f_handle, raw.data(), raw.size());
  Fd fd(::open_by_handle_at(mfd.get(), fh, O_PATH | O_CLOEXEC));
  if (!fd.valid()) return sysError("open_by_handle_at on " + mountPoint, errno);
  CRB_ASSIGN(auto p, readLink(fmt::format("/proc/self/fd/{}", fd.get())));
  if (p.find(" (deleted)") != std::string::npos) return makeError("the watched file " + p + " is deleted");
  if (!c.opts.rootPrefix.empty()) {
    if (p.rfind(c.opts.rootPrefix, 0) != 0) return makeError("the watched file " + p + " is outside the container's root");
    p = p.substr(c.opts.rootPrefix.size());
    if (p.empty()) p = "/";
  }
  return p;
}

void dumpEpoll(DumpCtx& c, pid_t pid, int fd, const std::vector<std::string>& lines, FileDesc& f,
               const std::string& what) {
  Json watches = Json::array();
  for (auto& l : lines) {
    if (l.rfind("tfd:", 0) != 0) continue;
    auto t = tokens(l);
    int tfd = std::atoi(t["tfd"].c_str());
    // The watch must name a file this process holds at that fd number: that is how it is re-added.
    kcmp_epoll_slot slot{uint32_t(fd), uint32_t(tfd), 0};
    if (::syscall(SYS_kcmp, pid, pid, KCMP_EPOLL_TFD, tfd, &slot) != 0) {
      c.refuse(fmt::format("{}: watched fd {} (inode {}) is no longer open at that number in pid {}", what, tfd,
                           t["ino"], pid));
      continue;
    }
    watches.push_back({{"tfd", tfd},
                       {"events", uint32_t(std::strtoul(t["events"].c_str(), nullptr, 16))},
                       {"data", uint64_t(std::strtoull(t["data"].c_str(), nullptr, 16))}});
  }
  f.detail = {{"owner", c.imagePid(pid)}, {"watches", watches}};
}
}  // namespace

Result<Fd> grabRemoteFd(pid_t pid, int fd) {
  Fd pidfd(int(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd.valid()) return sysError(fmt::format("pidfd_open {}", pid), errno);
  Fd out(int(::syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
  if (!out.valid()) return sysError(fmt::format("pidfd_getfd fd {} of pid {}", fd, pid), errno);
  return out;
}

bool dumpEventFile(DumpCtx& c, pid_t pid, int fd, const std::string& link, FileDesc& f, const std::string& what) {
  auto lines = fdinfoLines(pid, fd);
  if (link == "anon_inode:[eventfd]") {
    f.kind = "eventfd";
    f.count = std::strtoull(value(lines, "eventfd-count").c_str(), nullptr, 16);
    auto sem = value(lines, "eventfd-semaphore");
    f.detail = {{"semaphore", !sem.empty() && sem != "0"}};
  } else if (link == "anon_inode:[eventpoll]") {
    f.kind = "epoll";
    dumpEpoll(c, pid, fd, lines, f, what);
  } else if (link == "anon_inode:[timerfd]") {
    f.kind = "timerfd";
    // A periodic timer's expirations since the last read are only counted (into "ticks") when the
    // timer is forwarded, which timerfd_gettime does; it also gives the exact remaining time.
    auto dup = grabRemoteFd(pid, fd);
    itimerspec cur{};
    if (!dup.ok() || ::timerfd_gettime(dup->get(), &cur) != 0) {
      c.refuse(what + " (cannot read its time through pidfd_getfd)");
      return true;
    }
    lines = fdinfoLines(pid, fd);
    std::array<int64_t, 2> v{cur.it_value.tv_sec, cur.it_value.tv_nsec}, i{cur.it_interval.tv_sec, cur.it_interval.tv_nsec};
    f.detail = {{"clockid", std::atoi(value(lines, "clockid").c_str())},
                {"ticks", std::strtoull(value(lines, "ticks").c_str(), nullptr, 10)},
                {"settime_flags", int(std::strtol(value(lines, "settime flags").c_str(), nullptr, 8))},
                {"value", v},
                {"interval", i}};
  } else if (link == "anon_inode:[signalfd]") {
    f.kind = "signalfd";
    f.detail = {{"sigmask", parseHex(value(lines, "sigmask"))}};
  } else if (link == "anon_inode:inotify") {
    f.kind = "inotify";
    Json watches = Json::array();
    for (auto& l : lines) {
      if (l.rfind("inotify ", 0) != 0) continue;
      auto t = tokens(l.substr(8));
      dev_t dev = fromKernelDev(parseHex(t["sdev"]));
      auto path = pathOfHandle(c, pid, dev, t["fhandle-type"], t["f_handle"]);
      if (!path.ok()) {
        c.refuse(fmt::format("{}: watch {} on inode {:#x} of device {}:{}: {}", what, parseHex(t["wd"]), parseHex(t["ino"]),
                             major(dev), minor(dev), path.error().message));
        continue;
      }
      watches.push_back({{"wd", int(parseHex(t["wd"]))}, {"mask", uint32_t(parseHex(t["mask"]))}, {"path", *path}});
    }
    f.detail = {{"watches", watches}};
  } else {
    return false;
  }
  return true;
}

bool isEventKind(const std::string& kind) {
  return kind == "eventfd" || kind == "epoll" || kind == "timerfd" || kind == "signalfd" || kind == "inotify";
}

// inotify hands out watch descriptors cyclically (after the last one given): add and remove a
// watch until the next one is the wanted number.
static Result<int> addWatchAs(int fd, const std::string& path, uint32_t mask, int wd) {
  for (int tries = 0; tries < 1 << 20; tries++) {
    int got = ::inotify_add_watch(fd, path.c_str(), mask);
    if (got < 0) return sysError("inotify_add_watch " + path, errno);
    if (got == wd) return got;
    ::inotify_rm_watch(fd, got);
    if (got > wd) break;  // wd numbers never go back below the last one without wrapping
  }
  return makeError(fmt::format("cannot get inotify watch descriptor {} for {} again", wd, path),
                   "watch descriptors must be added in increasing order");
}

Result<int> openEventFile(RestoreCtx& c, const FileDesc& f) {
  int nb = f.flags & O_NONBLOCK;
  const Json& d = f.detail;
  if (f.kind == "eventfd") {
    int flags = nb | (d.value("semaphore", false) ? EFD_SEMAPHORE : 0);
    int fd = ::eventfd(unsigned(std::min<uint64_t>(f.count, UINT_MAX)), flags);
    if (fd < 0) return sysError("create eventfd", errno);
    if (f.count > UINT_MAX) {
      uint64_t rest = f.count - UINT_MAX;
      (void)!::write(fd, &rest, 8);
    }
    return fd;
  }
  if (f.kind == "epoll") {
    int fd = ::epoll_create1(0);  // watches: restoreEpollWatches, inside the owner
    if (fd < 0) return sysError("create epoll", errno);
    return fd;
  }
  if (f.kind == "timerfd") {
    int clock = d.value("clockid", 1);
    Fd fd(::timerfd_create(clock, nb));
    if (!fd.valid()) return sysError(fmt::format("create timerfd on clock {}", clock), errno);
    auto v = d.value("value", std::array<int64_t, 2>{0, 0}), i = d.value("interval", std::array<int64_t, 2>{0, 0});
    itimerspec its{{i[0], i[1]}, {v[0], v[1]}};
    // The remaining time is relative: the timer resumes with what was left at the dump.
    if (v[0] == 0 && v[1] == 0 && (i[0] || i[1])) its.it_value.tv_nsec = 1;
    if (::timerfd_settime(fd.get(), 0, &its, nullptr) != 0) return sysError("arm timerfd", errno);
    uint64_t ticks = d.value("ticks", uint64_t(0));
    if (ticks && ::ioctl(fd.get(), TFD_IOC_SET_TICKS, &ticks) != 0)
      return sysError(fmt::format("set {} pending timerfd expirations", ticks), errno);
    return fd.release();
  }
  if (f.kind == "signalfd") {
    uint64_t mask = d.value("sigmask", uint64_t(0));
    sigset_t set;
    sigemptyset(&set);
    std::memcpy(&set, &mask, sizeof mask);
    int fd = ::signalfd(-1, &set, nb);
    if (fd < 0) return sysError("create signalfd", errno);
    return fd;
  }
  if (f.kind == "inotify") {
    Fd fd(::inotify_init1(nb));
    if (!fd.valid()) return sysError("create inotify", errno);
    auto watches = d.value("watches", Json::array());
    std::sort(watches.begin(), watches.end(), [](const Json& a, const Json& b) { return a.at("wd") < b.at("wd"); });
    for (auto& w : watches) {
      std::string p = pathInTree(c.opts.rootPrefix, w.at("path").get<std::string>());
      auto r = addWatchAs(fd.get(), p, w.at("mask").get<uint32_t>() & ~uint32_t(IN_IGNORED), w.at("wd").get<int>());
      if (!r.ok()) return r.error().context("re-add inotify watch on " + p);
    }
    return fd.release();
  }
  return makeError("not an event file kind: " + f.kind);
}

// Re-add each epoll's watches inside the process whose fd numbers they name.
Status restoreEpollWatches(RestoreCtx& c, const ProcessState& ps) {
  auto inj = c.inj(ps.pid);
  std::set<int> done;
  for (auto& e : ps.fds) {
    const FileDesc& f = c.tree.files.at(size_t(e.file));
    if (f.kind != "epoll" || done.count(f.id) || f.detail.value("owner", 0) != ps.pid) continue;
    done.insert(f.id);
    for (auto& w : f.detail.value("watches", Json::array())) {
      epoll_event ev{};
      ev.events = w.at("events").get<uint32_t>();
      ev.data.u64 = w.at("data").get<uint64_t>();
      CRB_CHECK(writeMem(ps.pid, c.scratch(), &ev, sizeof ev));
      int tfd = w.at("tfd").get<int>();
      CRB_CHECK(inj.check(fmt::format("epoll_ctl(ADD) fd {} to epoll at fd {} of pid {}", tfd, e.fd, ps.pid),
                          SYS_epoll_ctl, uint64_t(e.fd), EPOLL_CTL_ADD, uint64_t(tfd), c.scratch()));
    }
  }
  return success();
}

// ---------------------------------------------------------------- POSIX timers
// /proc/<pid>/timers gives each timer's id, signal and value, notification and clock; the time
// left comes from timer_gettime injected into the process. The restore asks the kernel for the
// same ids (PR_TIMER_CREATE_RESTORE_IDS: timer_create takes the id it is given) from inside the
// process, once its threads exist (a timer may signal one thread).
namespace {
constexpr int kPrTimerCreateRestoreIds = 77;

struct KSigevent {
  uint64_t value;
  int32_t signo, notify;
  int32_t tid;
  int32_t pad[11];
};
}  // namespace

Status dumpPosixTimers(DumpCtx& c, pid_t pid, ProcessState& ps) {
  auto text = readProc(pid, "timers");
  if (!text.ok() || text->empty()) return success();
  if (::prctl(kPrTimerCreateRestoreIds, 2, 0, 0, 0) < 0) {
    c.refuse(fmt::format("POSIX timers in process {} (this kernel cannot create timers with given ids: "
                         "PR_TIMER_CREATE_RESTORE_IDS, Linux 6.15)",
                         pid));
    return success();
  }
  auto& rp = c.seizure->procs.at(pid);
  auto inj = c.seizure->injector(pid, pid);
  std::istringstream in(*text);
  std::string line;
  Json t;
  Json all = Json::array();
  auto flush = [&]() -> Status {
    if (t.is_null()) return success();
    CRB_CHECK(inj.check(fmt::format("timer_gettime of POSIX timer {}", t["id"].get<int>()), SYS_timer_gettime,
                        uint64_t(t["id"].get<int>()), rp.scratch));
    itimerspec v{};
    CRB_CHECK(readMem(pid, rp.scratch, &v, sizeof v));
    t["value"] = {int64_t(v.it_value.tv_sec), int64_t(v.it_value.tv_nsec)};
    t["interval"] = {int64_t(v.it_interval.tv_sec), int64_t(v.it_interval.tv_nsec)};
    all.push_back(t);
    t = Json();
    return success();
  };
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon), val = line.substr(colon + 1);
    val.erase(0, val.find_first_not_of(" \t"));
    if (key == "ID") {
      CRB_CHECK(flush());
      t = Json{{"id", std::atoi(val.c_str())}};
    } else if (key == "signal") {
      auto slash = val.find('/');
      t["signo"] = std::atoi(val.c_str());
      t["sigval"] = slash == std::string::npos ? 0 : parseHex(val.substr(slash + 1));
    } else if (key == "notify") {
      // "signal/pid.N", "thread/tid.N" (SIGEV_THREAD_ID), "none/pid.N"
      auto dot = val.find('.');
      pid_t who = dot == std::string::npos ? 0 : std::atoi(val.c_str() + dot + 1);
      if (val.rfind("none", 0) == 0) t["notify"] = SIGEV_NONE;
      else if (val.find("tid.") != std::string::npos) t["notify"] = SIGEV_SIGNAL | SIGEV_THREAD_ID;
      else t["notify"] = SIGEV_SIGNAL;
      t["tid"] = c.imagePid(who);
    } else if (key == "ClockID") {
      t["clock"] = std::atoi(val.c_str());
    }
  }
  CRB_CHECK(flush());
  c.seizure->noteStray(inj);
  ps.posixTimers = all;
  return success();
}

Status restorePosixTimers(RestoreCtx& c, const ProcessState& ps) {
  if (!ps.posixTimers.is_array() || ps.posixTimers.empty()) return success();
  auto inj = c.inj(ps.pid);
  uint64_t s = c.scratch();
  CRB_CHECK(inj.check("prctl(PR_TIMER_CREATE_RESTORE_IDS, on)", SYS_prctl, kPrTimerCreateRestoreIds, 1));
  for (auto& t : ps.posixTimers) {
    int id = t.at("id").get<int>();
    KSigevent ev{};
    ev.value = t.value("sigval", uint64_t(0));
    ev.signo = t.value("signo", 0);
    ev.notify = t.value("notify", SIGEV_SIGNAL);
    ev.tid = t.value("tid", 0);
    CRB_CHECK(writeMem(ps.pid, s, &ev, sizeof ev));
    CRB_CHECK(writeMem(ps.pid, s + 128, &id, sizeof id));
    CRB_CHECK(inj.check(fmt::format("timer_create with id {} in pid {}", id, ps.pid), SYS_timer_create,
                        uint64_t(t.value("clock", 1)), s, s + 128));
    int got = -1;
    CRB_CHECK(readMem(ps.pid, s + 128, &got, sizeof got));
    if (got != id) return makeError(fmt::format("POSIX timer {} of pid {} came back as {}", id, ps.pid, got));
  }
  CRB_CHECK(inj.check("prctl(PR_TIMER_CREATE_RESTORE_IDS, off)", SYS_prctl, kPrTimerCreateRestoreIds, 0));
  for (auto& t : ps.posixTimers) {
    auto v = t.value("value", std::array<int64_t, 2>{0, 0}), i = t.value("interval", std::array<int64_t, 2>{0, 0});
    if (!v[0] && !v[1]) continue;  // disarmed
    itimerspec its{{i[0], i[1]}, {v[0], v[1]}};
    CRB_CHECK(writeMem(ps.pid, s, &its, sizeof its));
    CRB_CHECK(inj.check(fmt::format("timer_settime of POSIX timer {}", t.at("id").get<int>()), SYS_timer_settime,
                        uint64_t(t.at("id").get<int>()), 0, s, 0));
  }
  return success();
}

}  // namespace crb::native
