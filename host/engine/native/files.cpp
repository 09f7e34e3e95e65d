// Files: the fd table of every process and the open file descriptions behind it (shared
// descriptions stay shared: kcmp(KCMP_FILE)). Regular files (path, flags, offset), deleted files
// (content carried), directories, /dev/null-like devices, pipes (pipes.cpp), memfd, event files (events.cpp) and
// stdio inherited from the restorer. Everything else is refused by name.
#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/vfs.h>
#include <linux/kcmp.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <set>
#include <sstream>

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

namespace {
std::map<std::string, std::string> readFdinfo(pid_t pid, int fd) {
  std::map<std::string, std::string> m;
  auto s = readProc(pid, fmt::format("fdinfo/{}", fd));
  if (!s.ok()) return m;
  std::istringstream in(*s);
  std::string line;
  while (std::getline(in, line)) {
    auto c = line.find(':');
    if (c == std::string::npos) continue;
    auto v = line.substr(c + 1);
    auto b = v.find_first_not_of(" \t");
    m[line.substr(0, c)] = b == std::string::npos ? "" : v.substr(b);
  }
  return m;
}

std::vector<int> listFds(pid_t pid) {
  std::vector<int> out;
  DIR* d = ::opendir(fmt::format("/proc/{}/fd", pid).c_str());
  if (!d) return out;
  while (auto* e = ::readdir(d))
    if (e->d_name[0] != '.') out.push_back(std::atoi(e->d_name));
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

bool endsWith(const std::string& s, const std::string& t) {
  return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
}

// Processes outside `tree` holding the object `link` (e.g. "pipe:[123]").
std::vector<pid_t> outsideHolders(const std::string& link, const std::set<pid_t>& tree) {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  if (!d) return out;
  while (auto* e = ::readdir(d)) {
    pid_t p = std::atoi(e->d_name);
    if (p <= 0 || tree.count(p) || p == ::getpid()) continue;
    for (int fd : listFds(p)) {
      auto l = readLink(fmt::format("/proc/{}/fd/{}", p, fd));
      if (l.ok() && *l == link) {
        out.push_back(p);
        break;
      }
    }
  }
  ::closedir(d);
  return out;
}
}  // namespace

// /proc shows a container process's files relative to the container's root, except files outside
// it (the runtime's log file): those show their host path. Tell them apart by identity.
static bool outsideRoot(const DumpCtx& c, const std::string& path, const struct stat& st) {
  if (c.opts.rootPrefix.empty()) return false;
  struct stat in {}, host {};
  if (::stat((c.opts.rootPrefix + path).c_str(), &in) == 0 && in.st_dev == st.st_dev && in.st_ino == st.st_ino)
    return false;
  return ::stat(path.c_str(), &host) == 0 && host.st_dev == st.st_dev && host.st_ino == st.st_ino;
}

Status dumpFiles(DumpCtx& c) {
  resetLocalSockets(c);
  std::set<pid_t> inTree;
  for (auto& ps : c.tree.procs) inTree.insert(ps.pid);
  for (auto& ps : c.tree.procs) {
    if (ps.zombie) continue;
    // A fd table or address space shared with another process (CLONE_FILES / vfork) is refused.
    if (inTree.count(ps.ppid)) {
      if (::syscall(SYS_kcmp, ps.pid, ps.ppid, KCMP_FILES, 0, 0) == 0)
        c.refuse(fmt::format("fd table shared between processes {} and {}", ps.pid, ps.ppid));
      if (::syscall(SYS_kcmp, ps.pid, ps.ppid, KCMP_VM, 0, 0) == 0)
        c.refuse(fmt::format("address space shared between processes {} and {} (vfork)", ps.pid, ps.ppid));
    }
    for (int fd : listFds(ps.pid)) {
      std::string proc = fmt::format("/proc/{}/fd/{}", ps.pid, fd);
      auto linkR = readLink(proc);
      if (!linkR.ok()) continue;
      std::string link = *linkR;
      auto info = readFdinfo(ps.pid, fd);
      int flags = int(std::strtol(info["flags"].c_str(), nullptr, 8));
      FdEntry e{fd, -1, (flags & O_CLOEXEC) != 0};
      flags &= ~O_CLOEXEC;
      struct stat st {};
      bool haveStat = ::stat(proc.c_str(), &st) == 0;
      // Same description as one we already have?
      for (auto& [id, rep] : c.fileRep) {
        auto& f = c.tree.files[size_t(id)];
        if (haveStat && (f.dev != st.st_dev || f.ino != st.st_ino)) continue;
        if (::syscall(SYS_kcmp, ps.pid, rep.first, KCMP_FILE, fd, rep.second) == 0) {
          e.file = id;
          break;
        }
      }
      if (e.file >= 0) {
        ps.fds.push_back(e);
        continue;
      }
      FileDesc f;
      f.id = int(c.tree.files.size());
      f.flags = flags;
      f.pos = std::strtoull(info["pos"].c_str(), nullptr, 10);
      if (haveStat) {
        f.dev = st.st_dev;
        f.ino = st.st_ino;
        f.size = uint64_t(st.st_size);
        f.mode = int(st.st_mode & 07777);
      }
      std::string what = fmt::format("fd {} of pid {} ({})", fd, ps.pid, link);
      std::string path = link;
      if (!c.opts.rootPrefix.empty() && path.rfind(c.opts.rootPrefix, 0) == 0) path = path.substr(c.opts.rootPrefix.size());
      bool stdio = fd <= 2;
      if (link.rfind("anon_inode:", 0) == 0) {
        if (!dumpEventFile(c, ps.pid, fd, link, f, what)) {
          c.refuse(what);
          continue;
        }
      } else if (!haveStat) {
        c.refuse(what + " (cannot stat it)");
        continue;
      } else if (S_ISREG(st.st_mode) && dumpPosixMqFd(c, ps.pid, fd, f, link, what)) {
        // posix_mq.cpp
      } else if (S_ISREG(st.st_mode)) {
        if (link.rfind("/memfd:", 0) == 0) {
          f.kind = "memfd";
          std::string name = link.substr(7, link.size() - 7 - (endsWith(link, " (deleted)") ? 10 : 0));
          f.object = c.shmemFor(st.st_dev, st.st_ino, uint64_t(st.st_size), name, proc);
        } else if (endsWith(link, " (deleted)")) {
          f.kind = "deleted";
          f.path = path.substr(0, path.size() - 10);
          f.blobLen = uint64_t(st.st_size);
          if (st.st_size > (1ll << 30)) c.refuse("deleted file larger than 1 GiB, " + what);
        } else {
          f.kind = "reg";
          f.path = path;
          f.outsideRoot = outsideRoot(c, path, st);
        }
      } else if (S_ISDIR(st.st_mode)) {
        f.kind = "dir";
        f.path = path;
        f.outsideRoot = outsideRoot(c, path, st);
      } else if (S_ISCHR(st.st_mode) && major(st.st_rdev) == 1 &&
                 (minor(st.st_rdev) == 3 || minor(st.st_rdev) == 5 || minor(st.st_rdev) == 7 ||
                  minor(st.st_rdev) == 8 || minor(st.st_rdev) == 9)) {
        f.kind = "dev";
        f.path = link;
      } else if (S_ISFIFO(st.st_mode) && link.rfind("pipe:", 0) == 0) {
        f.kind = "pipe";
        int pid = -1;
        for (auto& p : c.tree.pipes)
          if (p.ino == st.st_ino) pid = p.id;
        if (pid < 0) {
          PipeObject p;
          p.id = pid = int(c.tree.pipes.size());
          p.ino = st.st_ino;
          c.tree.pipes.push_back(p);
        }
        f.object = pid;
        auto& p = c.tree.pipes[size_t(pid)];
        if ((flags & O_ACCMODE) == O_RDONLY) {
          p.readerInTree = true;
          if (!c.pipeReader.count(pid)) c.pipeReader[pid] = {ps.pid, fd};
        } else {
          p.writerInTree = true;
        }
        if (!c.pipeAny.count(pid)) c.pipeAny[pid] = {ps.pid, fd};
      } else if (S_ISCHR(st.st_mode) && major(st.st_rdev) == 5 && minor(st.st_rdev) == 0 && !stdio) {
        // /dev/tty names the caller's controlling terminal: reopened inside the restored process
        // once it has it again (tty.cpp); finishTtys() refuses it when that terminal is not ours.
        f.kind = "devtty";
        f.path = link;
      } else if (dumpInetSocket(c, ps.pid, fd, st, f, what)) {
      } else if (dumpTtyFile(c, ps.pid, fd, path, st, f, what)) {
      } else if (S_ISSOCK(st.st_mode) && dumpUnixSocketFd(c, ps.pid, fd, f, what)) {
        // unix_sockets.cpp
      } else if (stdio && (S_ISCHR(st.st_mode) || S_ISSOCK(st.st_mode))) {
        f.kind = "stdio";
        f.stdioFd = fd;
      } else {
        c.refuse(what);
        continue;
      }
      c.tree.files.push_back(f);
      c.fileRep[f.id] = {ps.pid, fd};
      e.file = f.id;
      ps.fds.push_back(e);
    }
  }
  // Pipes with one end outside the tree: at fd 0-2 they become the restorer's stdio; elsewhere
  // they are refused. A pipe whose other end is simply closed is restored as such.
  for (auto& p : c.tree.pipes) {
    if (p.readerInTree && p.writerInTree) continue;
    std::string link = fmt::format("pipe:[{}]", p.ino);
    auto outside = outsideHolders(link, inTree);
    if (outside.empty()) continue;
    for (auto& ps : c.tree.procs)
      for (auto& e : ps.fds) {
        auto& f = c.tree.files[size_t(e.file)];
        if (f.kind != "pipe" || f.object != p.id) continue;
        if (e.fd <= 2) {
          f.kind = "stdio";
          f.stdioFd = e.fd;
          f.object = -1;
        } else {
          c.refuse(fmt::format("{} at fd {} of pid {} shared with pid {} outside the tree", link, e.fd, ps.pid,
                               outside[0]));
        }
      }
    p.readerInTree = p.writerInTree = false;  // nothing to carry for it
  }
  finishTtys(c);
  CRB_CHECK(resolveUnixSockets(c));
  return success();
}

Status dumpFileContents(DumpCtx& c) {
  std::vector<char> buf;  // allocated (and zeroed) only when there is a deleted file: 0.3-1 ms in the freeze
  for (auto& f : c.tree.files) {
    if (f.kind != "deleted") continue;
    if (buf.empty()) buf.resize(1 << 20);
    auto [pid, fd] = c.fileRep.at(f.id);
    std::string proc = fmt::format("/proc/{}/fd/{}", pid, fd);
    Fd in(::open(proc.c_str(), O_RDONLY | O_CLOEXEC));
    if (!in.valid()) return sysError("open deleted file " + f.path + " through " + proc, errno);
    uint64_t done = 0;
    while (done < f.blobLen) {
      ssize_t n = ::pread(in.get(), buf.data(), std::min<uint64_t>(buf.size(), f.blobLen - done), off_t(done));
      if (n <= 0) return sysError("read deleted file " + f.path, n < 0 ? errno : EIO);
      CRB_CHECK(c.blobs->write(buf.data(), size_t(n)));
      done += uint64_t(n);
    }
  }
  return success();
}

// ---------------------------------------------------------------- restore
static Result<int> moveUp(RestoreCtx& c, int fd, const std::string& what) {
  int hi = ::fcntl(fd, F_DUPFD, c.fdBase);
  int e = errno;
  ::close(fd);
  if (hi < 0) return sysError("move fd of " + what + " up", e);
  return hi;
}

static Result<int> openDeleted(RestoreCtx& c, const FileDesc& f, RawImageReader& blobs) {
  std::string p = pathInTree(c.opts.rootPrefix, f.path);
  std::string content(f.blobLen, '\0');
  CRB_CHECK(blobs.read(content.data(), content.size()));
  int acc = f.flags & O_ACCMODE;
  // Recreate it under its old name and unlink it, so /proc shows the same "(deleted)" path;
  // if that name is taken now, use an unnamed O_TMPFILE in the same directory.
  Fd fd(::open(p.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, f.mode));
  bool named = fd.valid();
  if (!named) {
    auto dir = std::filesystem::path(p).parent_path();
    fd.reset(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, f.mode));
    if (!fd.valid()) return sysError("recreate deleted file " + p, errno);
  }
  if (::write(fd.get(), content.data(), content.size()) != ssize_t(content.size()))
    return sysError("write deleted file " + p, errno);
  int out = ::open(fmt::format("/proc/self/fd/{}", fd.get()).c_str(), (f.flags & ~O_ACCMODE) | acc);
  if (out < 0) return sysError("reopen deleted file " + p, errno);
  if (named) ::unlink(p.c_str());
  ::lseek(out, off_t(f.pos), SEEK_SET);
  return out;
}

Status openFilesForRestore(RestoreCtx& c, RawImageReader& blobs, bool memfdPass) {
  if (!memfdPass) CRB_CHECK(createPipes(c, blobs));
  std::map<int, bool> pipeEndUsed;  // pipe id*2+end -> first description took the pipe's own fd
  for (auto& f : c.tree.files) {
    // blobs.img order is pipes, deleted files, shmem: memfd descriptions come in a second pass,
    // after the shmem objects exist.
    if ((f.kind == "memfd") != memfdPass) continue;
    if (c.fileFds.count(f.id)) continue;  // opened early with another (a pty master with its slave)
    if (f.kind == "unix" || f.kind == "netlink" || f.kind == "mqueue") continue;  // createUnixSockets(), in the tree's namespaces
    std::string what = f.kind + " " + f.path;
    int fd = -1;
    int openFlags = f.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY);
    if (f.kind == "devtty") {
      // A placeholder at the fd's number; restoreDevTty() swaps in the real /dev/tty.
      fd = ::open("/dev/null", O_RDWR);
      if (fd < 0) return sysError("open /dev/null (placeholder for /dev/tty)", errno);
    } else if (f.kind == "reg" || f.kind == "dir" || f.kind == "dev") {
      std::string p = f.outsideRoot ? f.path : pathInTree(c.opts.rootPrefix, f.path);
      fd = ::open(p.c_str(), openFlags);
      if (fd < 0) return sysError("reopen " + p, errno);
      if (f.kind == "reg") {
        struct stat st {};
        ::fstat(fd, &st);
        // A fresh-namespace restore made every tmpfs of the tree anew (namespaces.cpp): new inodes.
        struct statfs sf {};
        bool remade = c.opts.seizeRoot > 0 && ::fstatfs(fd, &sf) == 0 && sf.f_type == TMPFS_MAGIC;
        if (st.st_ino != f.ino && !remade)
          return makeError("file " + p + " was replaced since the dump (inode differs)",
                           "restore needs the files the tree had open");
        ::lseek(fd, off_t(f.pos), SEEK_SET);
      }
    } else if (f.kind == "deleted") {
      CRB_ASSIGN(fd, openDeleted(c, f, blobs));
    } else if (f.kind == "pipe") {
      auto [r, w] = c.pipeFds.at(f.object);
      bool reader = (f.flags & O_ACCMODE) == O_RDONLY;
      int key = f.object * 2 + (reader ? 0 : 1);
      if (!pipeEndUsed[key]) {
        pipeEndUsed[key] = true;
        fd = ::fcntl(reader ? r : w, F_DUPFD, c.fdBase);
        if (fd >= 0) ::fcntl(fd, F_SETFL, f.flags & ~O_ACCMODE);
      } else {
        fd = ::open(fmt::format("/proc/self/fd/{}", reader ? r : w).c_str(), openFlags);
      }
      if (fd < 0) return sysError("recreate pipe description", errno);
    } else if (f.kind == "memfd") {
      fd = ::open(fmt::format("/proc/self/fd/{}", c.shmemFds.at(f.object)).c_str(), openFlags);
      if (fd < 0) return sysError("reopen memfd", errno);
      ::lseek(fd, off_t(f.pos), SEEK_SET);
    } else if (isEventKind(f.kind)) {
      CRB_ASSIGN(fd, openEventFile(c, f));
    } else if (isInetKind(f.kind)) {
      CRB_ASSIGN(fd, openInetSocket(c, f));
    } else if (isTtyKind(f.kind)) {
      CRB_ASSIGN(fd, openTtyFile(c, f));
    } else if (f.kind == "stdio") {
      fd = ::fcntl(f.stdioFd, F_DUPFD, c.fdBase);
      if (fd < 0) return sysError(fmt::format("inherit crbench's fd {} for the tree's stdio", f.stdioFd), errno);
    } else {
      return makeError("unknown file kind " + f.kind + " in image");
    }
    if (fd < c.fdBase) {
      CRB_ASSIGN(fd, moveUp(c, fd, what));
    }
    c.fileFds[f.id] = fd;
  }
  return success();
}

// In the restored process: put every description at its fd number, then close what crbench's
// fd table left below the restore range.
Status restoreFdTable(RestoreCtx& c, const ProcessState& ps) {
  auto inj = c.inj(ps.pid);
  std::set<int> wanted;
  for (auto& e : ps.fds) {
    CRB_CHECK(inj.check(fmt::format("dup3 to fd {}", e.fd), SYS_dup3, uint64_t(c.fileFds.at(e.file)), uint64_t(e.fd),
                        e.cloexec ? O_CLOEXEC : 0));
    wanted.insert(e.fd);
  }
  int lo = 0;
  for (int w : wanted) {
    if (w > lo) CRB_CHECK(inj.check("close_range", SYS_close_range, uint64_t(lo), uint64_t(w - 1), 0));
    lo = w + 1;
  }
  if (lo < c.fdBase) CRB_CHECK(inj.check("close_range", SYS_close_range, uint64_t(lo), uint64_t(c.fdBase - 1), 0));
  return success();
}

Status closeRestoreFds(RestoreCtx& c, const ProcessState& ps) {
  auto inj = c.inj(ps.pid);
  CRB_CHECK(inj.check("close the restore fds", SYS_close_range, uint64_t(c.fdBase), uint64_t(~0u), 0));
  return success();
}

}  // namespace crb::native
