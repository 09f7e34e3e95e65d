// Terminals: pseudo-terminals whose master is inside the tree (the pty index, the slave's termios,
// window size, packet mode), the session leaders' controlling terminal and its foreground process
// group. A pty slave whose master is outside the tree (the terminal crbench was started from) at
// fd 0-2 stays "stdio": the restored tree gets crbench's own fd there. Bytes queued in a pty are
// refused by name (reading them would take them away from the running tree).
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

#include <cstring>

#include "engine/native/internal.hpp"
#include "engine/native/procfs.hpp"

namespace crb::native {

namespace {
bool isPtySlave(dev_t rdev) { return major(rdev) >= 136 && major(rdev) <= 143; }
int slaveIndex(dev_t rdev) { return int((major(rdev) - 136) * 256 + minor(rdev)); }
bool isPtmx(dev_t rdev) { return major(rdev) == 5 && minor(rdev) == 2; }

// "/dev/pts/3" -> "/dev/pts/ptmx"; "/dev/ptmx" stays (the kernel finds the devpts next to it).
std::string ptsDir(const std::string& path) {
  auto s = path.rfind('/');
  return s == std::string::npos ? "/dev/pts" : path.substr(0, s);
}
}  // namespace

bool dumpTtyFile(DumpCtx& c, pid_t pid, int fd, const std::string& path, const struct stat& st, FileDesc& f,
                 const std::string& what) {
  if (!S_ISCHR(st.st_mode)) return false;
  if (isPtmx(st.st_rdev)) {
    f.kind = "ptmx";
    f.path = path;
    auto dup = grabRemoteFd(pid, fd);
    int index = -1, pkt = 0, locked = 0;
    termios tio{};
    winsize ws{};
    if (!dup.ok() || ::ioctl(dup->get(), TIOCGPTN, &index) != 0 || ::tcgetattr(dup->get(), &tio) != 0 ||
        ::ioctl(dup->get(), TIOCGWINSZ, &ws) != 0) {
      c.refuse(what + " (cannot read the pty's index and settings through pidfd_getfd)");
      return true;
    }
    ::ioctl(dup->get(), TIOCGPKT, &pkt);
    ::ioctl(dup->get(), TIOCGPTLCK, &locked);
    int queued = 0;
    if (::ioctl(dup->get(), FIONREAD, &queued) == 0 && queued > 0)
      c.refuse(fmt::format("{}: {} bytes written by /dev/pts/{} not yet read by the master", what, queued, index));
    f.detail = {{"index", index},  {"termios", toHex(&tio, sizeof tio)}, {"winsize", toHex(&ws, sizeof ws)},
                {"packet", pkt}, {"locked", locked}};
    return true;
  }
  if (isPtySlave(st.st_rdev)) {
    f.kind = "pts";
    f.path = path;
    int queued = 0;
    auto dup = grabRemoteFd(pid, fd);
    if (dup.ok() && ::ioctl(dup->get(), FIONREAD, &queued) == 0 && queued > 0)
      c.refuse(fmt::format("{}: {} bytes of input not yet read from the pty", what, queued));
    f.detail = {{"index", slaveIndex(st.st_rdev)}, {"rep_fd", fd}};
    return true;
  }
  return false;
}

// After every fd is known: slaves are matched with masters in the tree (else they are the
// restorer's stdio at fd 0-2, or refused), and session leaders' controlling terminals recorded.
void finishTtys(DumpCtx& c) {
  std::map<int, int> masters;  // pty index -> FileDesc id
  for (auto& f : c.tree.files)
    if (f.kind == "ptmx") masters[f.detail.value("index", -1)] = f.id;
  for (auto& f : c.tree.files) {
    if (f.kind != "pts") continue;
    int index = f.detail.value("index", -1);
    if (masters.count(index)) {
      // A container's pty and its master come from the same devpts: compare the directories.
      auto& m = c.tree.files[size_t(masters[index])];
      if (ptsDir(m.path) == ptsDir(f.path) || m.path == "/dev/ptmx") continue;
    }
    int fd = f.detail.value("rep_fd", -1);
    if (fd >= 0 && fd <= 2) {
      f.kind = "stdio";
      f.stdioFd = fd;
      continue;
    }
    auto [pid, at] = c.fileRep.at(f.id);
    c.refuse(fmt::format("fd {} of pid {} ({}): a pty whose master is outside the tree", at, pid, f.path));
  }
  for (auto& ps : c.tree.procs) {
    if (ps.zombie || ps.sid != ps.pid) continue;
    auto stat = readStat(ps.pid);
    if (!stat.ok()) continue;
    dev_t tty = dev_t(std::stoull((*stat)[7]));
    pid_t tpgid = pid_t(std::stol((*stat)[8]));
    if (tty == 0) continue;
    int found = -1;
    if (isPtySlave(tty))
      for (auto& f : c.tree.files)
        if (f.kind == "pts" && f.detail.value("index", -1) == slaveIndex(tty) && masters.count(slaveIndex(tty)))
          found = f.id;
    if (found < 0) {
      c.refuse(fmt::format("controlling terminal (device {}:{}) of session leader {}: not a pty whose master is in "
                           "the tree",
                           major(tty), minor(tty), ps.pid));
      continue;
    }
    ps.ctty = found;
    ps.ttyPgrp = tpgid > 0 ? c.imagePid(tpgid) : 0;
  }
  // /dev/tty above fd 2: its holder's session leader must be in the tree with a pty of the tree as
  // controlling terminal (restored above), and the description must not be shared: each fd gets
  // its own open at restore, so a shared one would come back as several.
  for (auto& f : c.tree.files) {
    if (f.kind != "devtty") continue;
    auto [pid, at] = c.fileRep.at(f.id);
    std::string what = fmt::format("fd {} of pid {} (/dev/tty)", at, pid);
    int uses = 0;
    pid_t sid = 0;
    for (auto& ps : c.tree.procs)
      for (auto& e : ps.fds)
        if (e.file == f.id) {
          ++uses;
          sid = ps.sid;
        }
    const ProcessState* leader = nullptr;
    for (auto& ps : c.tree.procs)
      if (ps.pid == sid) leader = &ps;
    if (!leader || leader->ctty < 0)
      c.refuse(what + ": its controlling terminal is not a pty whose session leader and master are in the tree");
    else if (uses != 1)
      c.refuse(fmt::format("{}: the open /dev/tty is shared by {} fds (only one is restored)", what, uses));
  }
}

bool isTtyKind(const std::string& kind) { return kind == "ptmx" || kind == "pts"; }

// ptmx hands out the lowest free index: open masters until the wanted one comes, then close the
// ones taken on the way.
static Result<int> openMasterAt(const std::string& ptmx, int index) {
  std::vector<Fd> extra;
  for (;;) {
    Fd m(::open(ptmx.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!m.valid()) return sysError("open " + ptmx, errno);
    int got = -1;
    if (::ioctl(m.get(), TIOCGPTN, &got) != 0) return sysError("TIOCGPTN on " + ptmx, errno);
    if (got == index) return m.release();
    if (got > index)
      return makeError(fmt::format("pty {} is in use in {} (a new master got index {})", index, ptmx, got),
                       "the restored tree needs its pty numbers; close the terminal holding that pty");
    extra.push_back(std::move(m));
  }
}

static Result<int> openMaster(RestoreCtx& c, const FileDesc& f) {
  const Json& d = f.detail;
  std::string ptmx = pathInTree(c.opts.rootPrefix, f.path);
  CRB_ASSIGN(int fd, openMasterAt(ptmx, d.value("index", -1)));
  Fd m(fd);
  CRB_ASSIGN(auto tio, fromHex(d.value("termios", "")));
  CRB_ASSIGN(auto ws, fromHex(d.value("winsize", "")));
  termios t{};
  winsize w{};
  std::memcpy(&t, tio.data(), std::min(tio.size(), sizeof t));
  std::memcpy(&w, ws.data(), std::min(ws.size(), sizeof w));
  int unlock = 0, pkt = d.value("packet", 0);
  // On the master these set the slave's termios and window size.
  if (::tcsetattr(m.get(), TCSANOW, &t) != 0) return sysError("set the termios of pty " + ptmx, errno);
  if (::ioctl(m.get(), TIOCSWINSZ, &w) != 0) return sysError("set the window size of pty " + ptmx, errno);
  if (::ioctl(m.get(), TIOCSPTLCK, &unlock) != 0) return sysError("unlock pty", errno);
  if (pkt && ::ioctl(m.get(), TIOCPKT, &pkt) != 0) return sysError("packet mode on pty", errno);
  if (::fcntl(m.get(), F_SETFL, f.flags & ~O_ACCMODE) != 0) return sysError("flags of pty master", errno);
  return m.release();
}

Result<int> openTtyFile(RestoreCtx& c, const FileDesc& f) {
  if (f.kind == "ptmx") return openMaster(c, f);
  int index = f.detail.value("index", -1);
  for (auto& m : c.tree.files) {
    if (m.kind != "ptmx" || m.detail.value("index", -1) != index || c.fileFds.count(m.id)) continue;
    CRB_ASSIGN(int fd, openMaster(c, m));
    int hi = ::fcntl(fd, F_DUPFD, c.fdBase);
    ::close(fd);
    if (hi < 0) return sysError("move the pty master up", errno);
    c.fileFds[m.id] = hi;
  }
  std::string p = pathInTree(c.opts.rootPrefix, f.path);
  int fd = ::open(p.c_str(), (f.flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_NOCTTY);
  if (fd < 0) return sysError("open pty " + p, errno);
  return fd;
}

// In the restored session leader right after its setsid, through the tracer's inherited fd: a
// process gets its controlling terminal from its parent at fork, so this comes before the leader's
// children are cloned.
Status takeControllingTty(RestoreCtx& c, const ProcessState& ps) {
  if (ps.ctty < 0 || ps.sid != ps.pid) return success();
  auto inj = c.inj(ps.pid);
  int fd = c.fileFds.at(ps.ctty);
  CRB_CHECK(inj.check(fmt::format("TIOCSCTTY for session {}", ps.pid), SYS_ioctl, uint64_t(fd), TIOCSCTTY, 0));
  return success();
}

// Once every process group exists: the terminal's foreground group.
Status restoreControllingTty(RestoreCtx& c, const ProcessState& ps) {
  if (ps.ctty < 0 || ps.sid != ps.pid) return success();
  auto inj = c.inj(ps.pid);
  int fd = c.fileFds.at(ps.ctty);
  if (ps.ttyPgrp > 0 && ps.ttyPgrp != ps.pgid) {
    pid_t pg = ps.ttyPgrp;
    CRB_CHECK(writeMem(ps.pid, c.scratch(), &pg, sizeof pg));
    CRB_CHECK(inj.check(fmt::format("TIOCSPGRP {} for session {}", pg, ps.pid), SYS_ioctl, uint64_t(fd), TIOCSPGRP,
                        c.scratch()));
  }
  return success();
}

// After restoreFdTable(), the process has its controlling terminal (taken by its session leader
// before it was cloned): open /dev/tty inside it, so that the kernel ties the file to that
// terminal, and move it over the placeholder.
Status restoreDevTty(RestoreCtx& c, const ProcessState& ps) {
  for (auto& e : ps.fds) {
    const FileDesc* f = nullptr;
    for (auto& d : c.tree.files)
      if (d.id == e.file) f = &d;
    if (!f || f->kind != "devtty") continue;
    auto inj = c.inj(ps.pid);
    static const char kPath[] = "/dev/tty";
    CRB_CHECK(writeMem(ps.pid, c.scratch(), kPath, sizeof kPath));
    int flags = (f->flags & ~(O_CREAT | O_EXCL | O_TRUNC)) | O_NOCTTY;
    std::string what = fmt::format("/dev/tty at fd {} of pid {}", e.fd, ps.pid);
    CRB_ASSIGN(long nfd, inj.call(SYS_openat, uint64_t(AT_FDCWD), c.scratch(), uint64_t(flags), 0));
    if (nfd < 0) return sysError("open " + what + " inside the process", int(-nfd));
    CRB_CHECK(inj.check("dup3 " + what, SYS_dup3, uint64_t(nfd), uint64_t(e.fd), e.cloexec ? O_CLOEXEC : 0));
    CRB_CHECK(inj.check("close the temporary fd of " + what, SYS_close, uint64_t(nfd)));
  }
  return success();
}

}  // namespace crb::native
