// Namespaces. The tree's pid/mnt/net/ipc/uts namespaces are either crbench's own (plain trees) or
// a container's, which the restore re-joins (RestoreOptions::joinNamespacesOf, restore.cpp) or,
// for a whole container (its init is the tree's root), recreates (RestoreOptions::freshNamespaces:
// the mount table, host name and interfaces recorded at dump, below); a process in namespaces of
// its own is refused in process.cpp.
//
// Time: CLOCK_MONOTONIC and CLOCK_BOOTTIME of the tree are recorded as the tree is seized, and the
// restore creates the tree in a fresh time namespace whose offsets make both clocks carry on from
// those values, so the restored programs see no jump over the time they were not running.
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

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
  // The clocks are read now, in the freeze; the file is written with the rest of the image.
  c.writeAfterFreeze.push_back([&c, j]() { return writeJsonImage(c.dir, "namespaces.img", j, c.opts.sync); });
  return success();
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

// ---------------------------------------------------------------- fresh namespaces
// A tree whose root is the init of its pid namespace (a whole container) can be restored into new
// pid/mnt/ipc/uts (and net) namespaces instead of the ones it ran in, which may be gone by then.
// What those namespaces held besides processes is recorded here: the mount table (every mount by
// kind: proc, sysfs, mqueue, devpts, tmpfs with what it holds, bind mounts of host files), the
// host and domain names and the network interfaces. The IPC objects are sysv_ipc.cpp's and
// posix_mq.cpp's. A mount that cannot be made again is refused by name at dump time.

namespace crb::native {

namespace {
constexpr const char* kNsContentImage = "ns-content.img";
constexpr uint64_t kTmpfsCarryLimit = 4 << 20;  // bytes of tmpfs file content carried in the image

std::string unescapeMount(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      out += char(std::stoi(s.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

struct MountLine {
  std::string devno, root, point, fstype, source, mntOpts, superOpts;
};

std::vector<MountLine> readMountinfo(const std::string& path) {
  std::vector<MountLine> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    MountLine m;
    std::string id, parent, tok;
    ls >> id >> parent >> m.devno >> m.root >> m.point >> m.mntOpts;
    while (ls >> tok && tok != "-") {
    }
    ls >> m.fstype >> m.source >> m.superOpts;
    m.root = unescapeMount(m.root);
    m.point = unescapeMount(m.point);
    out.push_back(m);
  }
  return out;
}

unsigned long mountFlags(const std::string& opts) {
  unsigned long f = 0;
  std::istringstream in(opts);
  std::string o;
  while (std::getline(in, o, ',')) {
    if (o == "ro") f |= MS_RDONLY;
    else if (o == "nosuid") f |= MS_NOSUID;
    else if (o == "nodev") f |= MS_NODEV;
    else if (o == "noexec") f |= MS_NOEXEC;
    else if (o == "noatime") f |= MS_NOATIME;
    else if (o == "nodiratime") f |= MS_NODIRATIME;
    else if (o == "relatime") f |= MS_RELATIME;
    else if (o == "strictatime") f |= MS_STRICTATIME;
  }
  return f;
}

// The file system options a new instance is made with (the rest are the kernel's defaults or
// describe the instance, like tmpfs's inode64).
std::string keepOptions(const std::string& fstype, const std::string& superOpts) {
  std::vector<std::string> keep;
  if (fstype == "tmpfs") keep = {"size=", "nr_inodes=", "mode=", "uid=", "gid=", "huge="};
  if (fstype == "devpts") keep = {"mode=", "ptmxmode=", "gid="};
  if (fstype == "proc") keep = {"hidepid=", "subset="};
  std::string out = fstype == "devpts" ? "newinstance" : "";
  std::istringstream in(superOpts);
  std::string o;
  while (std::getline(in, o, ','))
    for (auto& k : keep)
      if (o.rfind(k, 0) == 0) out += (out.empty() ? "" : ",") + o;
  return out;
}

bool recreatable(const std::string& fstype) {
  return fstype == "proc" || fstype == "sysfs" || fstype == "tmpfs" || fstype == "devpts" || fstype == "mqueue";
}

// Runs `fn` on a thread that joined namespace `type` of `pid` (uts and net may be joined by one
// thread of a multi-threaded process).
template <typename Fn>
Status inNamespaceOf(pid_t pid, const char* name, int type, Fn fn) {
  Fd ns(::open(fmt::format("/proc/{}/ns/{}", pid, name).c_str(), O_RDONLY | O_CLOEXEC));
  if (!ns.valid()) return sysError(fmt::format("open /proc/{}/ns/{}", pid, name), errno);
  Status st = success();
  std::thread t([&] {
    if (::unshare(CLONE_FS) != 0 || ::setns(ns.get(), type) != 0) {
      st = sysError(fmt::format("join the {} namespace of pid {}", name, pid), errno);
      return;
    }
    st = fn();
  });
  t.join();
  return st;
}

// What one tmpfs holds, as entries to make again (paths relative to the new root, parents first).
void walkTmpfs(DumpCtx& c, pid_t root, const std::string& point, dev_t dev, Json& entries, uint64_t& carried) {
  std::string base = fmt::format("/proc/{}/root{}", root, point == "/" ? "" : point);
  std::error_code ec;
  auto it = std::filesystem::recursive_directory_iterator(base, std::filesystem::directory_options::none, ec);
  if (ec) {
    c.refuse(fmt::format("tmpfs {}: cannot list it ({})", point, ec.message()));
    return;
  }
  for (; it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) {
      c.refuse(fmt::format("tmpfs {}: cannot list it ({})", point, ec.message()));
      return;
    }
    std::string full = it->path().string();
    std::string rel = point + full.substr(base.size());
    struct stat st {};
    if (::lstat(full.c_str(), &st) != 0) continue;
    Json e{{"path", rel}, {"mode", int(st.st_mode & 07777)}, {"uid", st.st_uid}, {"gid", st.st_gid}};
    if (st.st_dev != dev) {
      // Another mount sits here (a bind-mounted /dev node, devpts): only its mount point is made.
      e["type"] = S_ISDIR(st.st_mode) ? "dir" : "file";
      it.disable_recursion_pending();
    } else if (S_ISDIR(st.st_mode)) {
      e["type"] = "dir";
    } else if (S_ISLNK(st.st_mode)) {
      auto target = readLink(full);
      e["type"] = "symlink";
      e["target"] = target.ok() ? *target : "";
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISFIFO(st.st_mode)) {
      e["type"] = "node";
      e["fmt"] = int(st.st_mode & S_IFMT);
      e["rdev"] = uint64_t(st.st_rdev);
    } else if (S_ISREG(st.st_mode)) {
      carried += uint64_t(st.st_size);
      if (carried > kTmpfsCarryLimit) {
        c.refuse(fmt::format("file {} on tmpfs {}: more than {} MiB of tmpfs content to carry", rel, point,
                             kTmpfsCarryLimit >> 20));
        continue;
      }
      auto data = readFile(full);
      if (!data.ok()) {
        c.refuse(fmt::format("file {} on tmpfs {}: cannot read it", rel, point));
        continue;
      }
      e["type"] = "file";
      e["content"] = toHex(data->data(), data->size());
    } else {
      // A socket file: a bound socket of the tree is bound again by unix_sockets.cpp; one nobody
      // holds cannot be connected to anyway.
      continue;
    }
    entries.push_back(e);
  }
}
}  // namespace

Status dumpNamespaceContents(DumpCtx& c, pid_t root) {
  Json img{{"mounts", Json::array()}};
  auto mounts = readMountinfo(fmt::format("/proc/{}/mountinfo", root));
  auto host = readMountinfo("/proc/self/mountinfo");
  struct stat rootSt {}, prefixSt {};
  std::string prefix = c.opts.rootPrefix.empty() ? "/" : c.opts.rootPrefix;
  if (::stat(fmt::format("/proc/{}/root/", root).c_str(), &rootSt) != 0 || ::stat(prefix.c_str(), &prefixSt) != 0 ||
      rootSt.st_dev != prefixSt.st_dev || rootSt.st_ino != prefixSt.st_ino)
    c.refuse(fmt::format("the root directory of pid {} is not {} (the root file system a fresh mount namespace is "
                         "built on)", root, prefix));
  img["rootfs"] = prefix;
  uint64_t carried = 0;
  bool sawRoot = false;
  for (auto& m : mounts) {
    if (m.point == "/" && !sawRoot) {
      sawRoot = true;
      continue;
    }
    Json j{{"point", m.point}, {"fstype", m.fstype}, {"flags", mountFlags(m.mntOpts)}};
    std::string what = fmt::format("mount {} ({} {}, root {})", m.point, m.fstype, m.source, m.root);
    if (recreatable(m.fstype) && m.root == "/") {
      j["kind"] = "new";
      j["source"] = m.source;
      j["data"] = keepOptions(m.fstype, m.superOpts);
      if (m.fstype == "tmpfs") {
        struct stat st {};
        std::string at = fmt::format("/proc/{}/root{}", root, m.point);
        if (::stat(at.c_str(), &st) != 0) {
          c.refuse(what + ": cannot stat it");
          continue;
        }
        j["entries"] = Json::array();
        walkTmpfs(c, root, m.point, st.st_dev, j["entries"], carried);
      }
    } else {
      // A bind mount of something the host has mounted: found by device and path in our table.
      std::string source;
      for (auto& h : host) {
        if (h.devno != m.devno) continue;
        if (m.root.rfind(h.root, 0) != 0) continue;
        std::string rest = m.root.substr(h.root == "/" ? 0 : h.root.size());
        source = (h.point == "/" ? "" : h.point) + rest;
        if (source.empty()) source = "/";
        break;
      }
      if (source.empty()) {
        c.refuse(what + ": cannot be recreated in a fresh mount namespace (neither a kind crbench makes anew nor a "
                        "bind mount of something mounted on the host)");
        continue;
      }
      j["kind"] = "bind";
      j["source"] = source;
    }
    img["mounts"].push_back(j);
  }
  // The tree's files on a tmpfs made anew get new inodes (their content is carried above): the
  // restore's inode checks let a remade tmpfs's files through (files.cpp, memory.cpp).
  CRB_CHECK(inNamespaceOf(root, "uts", CLONE_NEWUTS, [&]() -> Status {
    utsname u{};
    ::uname(&u);
    img["hostname"] = u.nodename;
    img["domainname"] = u.domainname;
    return success();
  }));
  img["interfaces"] = Json::array();
  CRB_CHECK(inNamespaceOf(root, "net", CLONE_NEWNET, [&]() -> Status {
    ifaddrs* all = nullptr;
    if (::getifaddrs(&all) != 0) return sysError("list the network interfaces (getifaddrs)", errno);
    std::map<std::string, Json> byName;
    for (ifaddrs* a = all; a; a = a->ifa_next) {
      auto& j = byName[a->ifa_name];
      j["name"] = a->ifa_name;
      j["up"] = (a->ifa_flags & IFF_UP) != 0;
      j["loopback"] = (a->ifa_flags & IFF_LOOPBACK) != 0;
    }
    ::freeifaddrs(all);
    for (auto& [n, j] : byName) img["interfaces"].push_back(j);
    return success();
  }));
  img["dumped_ns"] = describeNamespaces(root);
  return writeJsonImage(c.dir, kNsContentImage, img, c.opts.sync);
}

Json describeNamespaces(pid_t pid) {
  Json j = Json::object();
  for (const char* n : {"pid", "mnt", "net", "ipc", "uts", "time"}) {
    std::string path = fmt::format("/proc/{}/ns/{}", pid, n);
    Json e{{"inode", readLink(path).valueOr("")}};
    // NS_GET_ID (Linux 6.18): a 64-bit id never given to another namespace, unlike the inode
    // number, which a namespace created after the old one died may get again.
    Fd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    uint64_t id = 0;
    if (f.valid() && ::ioctl(f.get(), _IOR(0xb7, 0xd, uint64_t), &id) == 0) e["id"] = id;
    j[n] = e;
  }
  return j;
}

// ---- restore: built by the parent, run by the new root before anything else (system calls only)
struct FreshNsPlan {
  struct Step {
    enum Kind { Mount, Bind, Dir, File, Symlink, Node } kind;
    std::string path, source, fstype, data, content;
    unsigned long flags = 0;
    unsigned mode = 0;
    uid_t uid = 0;
    gid_t gid = 0;
    dev_t rdev = 0;
  };
  std::string rootfs, hostname, domainname;
  std::vector<Step> steps;
  bool newNetHasOnlyLoopback = true;
  std::string otherInterface;
};

Result<std::shared_ptr<FreshNsPlan>> loadFreshNsPlan(const std::filesystem::path& dir, const std::string& rootfs) {
  if (!std::filesystem::exists(dir / kNsContentImage))
    return makeError("image " + dir.string() + " has no record of its namespaces' contents (ns-content.img)",
                     "dump the whole container (its init as the root) to restore it into fresh namespaces");
  CRB_ASSIGN(Json j, readJsonImage(dir, kNsContentImage));
  auto p = std::make_shared<FreshNsPlan>();
  try {
    p->rootfs = rootfs.empty() ? j.at("rootfs").get<std::string>() : rootfs;
    p->hostname = j.value("hostname", "");
    p->domainname = j.value("domainname", "");
    for (auto& i : j.value("interfaces", Json::array()))
      if (!i.value("loopback", false) && p->newNetHasOnlyLoopback) {
        p->newNetHasOnlyLoopback = false;
        p->otherInterface = i.value("name", "");
      }
    auto rel = [](const std::string& s) { return s == "/" ? std::string(".") : s.substr(s[0] == '/' ? 1 : 0); };
    for (auto& m : j.at("mounts")) {
      FreshNsPlan::Step s{};
      s.kind = m.at("kind") == "bind" ? FreshNsPlan::Step::Bind : FreshNsPlan::Step::Mount;
      s.path = rel(m.at("point").get<std::string>());
      s.source = m.at("source").get<std::string>();
      s.fstype = m.at("fstype").get<std::string>();
      s.data = m.value("data", "");
      s.flags = m.at("flags").get<unsigned long>();
      struct stat st {};
      // A bind mount's target is a file when its source is.
      s.mode = s.kind == FreshNsPlan::Step::Bind && ::stat(s.source.c_str(), &st) == 0 && !S_ISDIR(st.st_mode) ? 1 : 0;
      p->steps.push_back(s);
      for (auto& e : m.value("entries", Json::array())) {
        FreshNsPlan::Step f{};
        std::string type = e.at("type");
        f.kind = type == "dir" ? FreshNsPlan::Step::Dir : type == "symlink" ? FreshNsPlan::Step::Symlink
                 : type == "node" ? FreshNsPlan::Step::Node : FreshNsPlan::Step::File;
        f.path = rel(e.at("path").get<std::string>());
        f.mode = e.at("mode").get<unsigned>() | (type == "node" ? e.at("fmt").get<unsigned>() : 0);
        f.uid = e.at("uid").get<uid_t>();
        f.gid = e.at("gid").get<gid_t>();
        f.rdev = dev_t(e.value("rdev", uint64_t(0)));
        f.source = e.value("target", "");
        if (e.contains("content")) {
          CRB_ASSIGN(f.content, fromHex(e["content"].get<std::string>()));
        }
        p->steps.push_back(f);
      }
    }
  } catch (const std::exception& e) {
    return makeError(std::string("ns-content.img has unexpected content: ") + e.what(), "dump again");
  }
  return p;
}

std::string freshNsOtherInterface(const FreshNsPlan& p) { return p.newNetHasOnlyLoopback ? "" : p.otherInterface; }

int runFreshNsPlan(const FreshNsPlan& p, int netnsFd, const char** step) {
#define CRB_NS_STEP(name, expr) \
  do {                          \
    if ((expr) != 0) {          \
      *step = name;             \
      return -errno;            \
    }                           \
  } while (0)
  if (netnsFd >= 0) {
    CRB_NS_STEP("setns(net)", ::setns(netnsFd, CLONE_NEWNET));
  } else {
    // A new network namespace has a loopback interface, down.
    int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ifreq r{};
    std::memcpy(r.ifr_name, "lo", 3);
    CRB_NS_STEP("read the flags of lo", s < 0 ? -1 : ::ioctl(s, SIOCGIFFLAGS, &r));
    r.ifr_flags = short(r.ifr_flags | IFF_UP);
    CRB_NS_STEP("bring lo up", ::ioctl(s, SIOCSIFFLAGS, &r));
    ::close(s);
  }
  CRB_NS_STEP("sethostname", ::sethostname(p.hostname.data(), p.hostname.size()));
  CRB_NS_STEP("setdomainname", ::setdomainname(p.domainname.data(), p.domainname.size()));
  CRB_NS_STEP("make / private", ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr));
  CRB_NS_STEP("bind the rootfs", ::mount(p.rootfs.c_str(), p.rootfs.c_str(), nullptr, MS_BIND, nullptr));
  CRB_NS_STEP("chdir to the rootfs", ::chdir(p.rootfs.c_str()));
  for (auto& s : p.steps) {
    const char* at = s.path.c_str();
    switch (s.kind) {
      case FreshNsPlan::Step::Mount:
        ::mkdir(at, 0755);  // normally there: the mount reports a real problem
        CRB_NS_STEP("mount a file system", ::mount(s.source.c_str(), at, s.fstype.c_str(), s.flags,
                                                   s.data.empty() ? nullptr : s.data.c_str()));
        break;
      case FreshNsPlan::Step::Bind:
        if (s.mode == 1) {
          int fd = ::open(at, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
          if (fd >= 0) ::close(fd);
        } else {
          ::mkdir(at, 0755);
        }
        CRB_NS_STEP("bind mount", ::mount(s.source.c_str(), at, nullptr, MS_BIND, nullptr));
        if (s.flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC))
          CRB_NS_STEP("remount a bind mount", ::mount(nullptr, at, nullptr, MS_BIND | MS_REMOUNT | s.flags, nullptr));
        break;
      case FreshNsPlan::Step::Dir:
        if (::mkdir(at, s.mode) != 0 && errno != EEXIST) CRB_NS_STEP("mkdir on a tmpfs", -1);
        break;
      case FreshNsPlan::Step::Symlink:
        CRB_NS_STEP("symlink on a tmpfs", ::symlink(s.source.c_str(), at));
        break;
      case FreshNsPlan::Step::Node:
        CRB_NS_STEP("mknod on a tmpfs", ::mknod(at, s.mode, s.rdev));
        break;
      case FreshNsPlan::Step::File: {
        int fd = ::open(at, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, s.mode);
        CRB_NS_STEP("create a file on a tmpfs", fd < 0 ? -1 : 0);
        size_t off = 0;
        while (off < s.content.size()) {
          ssize_t n = ::write(fd, s.content.data() + off, s.content.size() - off);
          if (n <= 0) {
            ::close(fd);
            CRB_NS_STEP("write a file on a tmpfs", -1);
          }
          off += size_t(n);
        }
        ::close(fd);
        break;
      }
    }
    if (s.kind != FreshNsPlan::Step::Mount && s.kind != FreshNsPlan::Step::Bind) {
      CRB_NS_STEP("chown on a tmpfs", ::lchown(at, s.uid, s.gid));
      if (s.kind != FreshNsPlan::Step::Symlink) CRB_NS_STEP("chmod on a tmpfs", ::chmod(at, s.mode & 07777));
    }
  }
  CRB_NS_STEP("pivot_root", int(::syscall(SYS_pivot_root, ".", ".")));
  CRB_NS_STEP("detach the old root", ::umount2(".", MNT_DETACH));
  CRB_NS_STEP("chdir /", ::chdir("/"));
  return 0;
#undef CRB_NS_STEP
}

}  // namespace crb::native
