#include "engine/libvirt/libvirt_conn.hpp"

#include <fcntl.h>
#include <libvirt/virterror.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "core/clock.hpp"
#include "core/fsutil.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"

namespace crb::libvirt {

namespace {

// libvirt reports errors twice by default: into the thread's last-error slot and on stderr. We
// read the slot; the handler only keeps stderr quiet.
void quietErrorHandler(void*, virErrorPtr) {}

std::string envOr(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

// A virtlogd already serving the system socket is reused: starting a second one on the same
// socket would fail, and libvirtd's QEMU driver always talks to that path when privileged.
bool unixSocketAnswers(const std::string& path) {
  Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s.valid()) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return false;
  std::strcpy(addr.sun_path, path.c_str());
  return ::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
}

std::string findBinary(const char* envName, const std::string& name) {
  if (const char* v = std::getenv(envName); v && *v) return v;
  for (const char* dir : {"/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"}) {
    std::string p = std::string(dir) + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return name;  // not found: the error then names the bare program
}

Result<pid_t> readPidFile(const fs::path& p) {
  auto text = readFile(p);
  if (!text) return text.error();
  try {
    return static_cast<pid_t>(std::stol(*text));
  } catch (...) {
    return makeError(fmt::format("pid file {} holds no pid", p.string()));
  }
}

void stopPid(pid_t pid, const char* what) {
  if (pid <= 0 || !processAlive(pid)) return;
  ::kill(pid, SIGTERM);
  // Daemonised processes are not our children: poll until they are gone.
  auto deadline = Clock::now() + std::chrono::seconds(10);
  while (processAlive(pid) && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (processAlive(pid)) {
    spdlog::warn("{} (pid {}) ignored SIGTERM for 10 s; killing it", what, pid);
    ::kill(pid, SIGKILL);
  }
}

std::string logTail(const fs::path& p, size_t bytes = 600) {
  auto t = readFile(p);
  if (!t || t->empty()) return {};
  std::string s = t->size() > bytes ? t->substr(t->size() - bytes) : *t;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

virConnectPtr tryOpen(const std::string& uri, std::string* why) {
  virConnectPtr c = virConnectOpen(uri.c_str());
  if (!c && why) *why = lastError("connect to " + uri).message;
  return c;
}

void stopDaemon(OwnDaemon& d) {
  stopPid(d.libvirtdPid, "libvirtd");
  stopPid(d.virtlogdPid, "virtlogd");
  std::error_code ec;
  fs::remove_all(d.dir / "state", ec);
  for (const char* f : {"libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock", "libvirtd.pid",
                        "virtlogd.pid", "libvirtd.conf", "libvirtd.log", "virtlogd.log"})
    fs::remove(d.dir / f, ec);
  if (d.lockFd >= 0) {
    ::close(d.lockFd);  // releases the flock
    d.lockFd = -1;
  }
}

const std::string kSystemLogSocket = "/run/libvirt/virtlogd-sock";
// virtlogd exits after this long with no client and no domain log open. It cannot count on
// crbench to stop it: a SIGKILLed crbench runs no destructor (libvirtd's own -t covers libvirtd).
// The timer may also run out between two domains of one run, so ensureLogDaemon() starts it again
// before each domain start or restore.
constexpr const char* kLogDaemonIdleSeconds = "120";

Result<pid_t> startLogDaemon(const fs::path& dir) {
  std::string virtlogd = findBinary("CRBENCH_VIRTLOGD", "virtlogd");
  if (::access(virtlogd.c_str(), X_OK) != 0)
    return makeError(fmt::format("libvirtd needs virtlogd, which is not running and cannot be "
                                 "started: {} is not an executable file",
                                 virtlogd),
                     "install libvirt-daemon-system (scripts/setup.sh) or set CRBENCH_VIRTLOGD");
  RunOptions ro;
  ro.timeout = std::chrono::seconds(30);
  CRB_ASSIGN(auto r, runCommand({virtlogd, "-d", "-t", kLogDaemonIdleSeconds, "-p", (dir / "virtlogd.pid").string()}, ro));
  if (!r.succeeded()) return makeError(fmt::format("starting virtlogd ({}) failed: {}", virtlogd, r.describe()));
  return readPidFile(dir / "virtlogd.pid");
}

Result<std::unique_ptr<OwnDaemon>> startDaemon(const fs::path& dir) {
  auto d = std::make_unique<OwnDaemon>();
  d->dir = dir;
  auto t0 = Clock::now();
  std::string libvirtd = findBinary("CRBENCH_LIBVIRTD", "libvirtd");
  if (::access(libvirtd.c_str(), X_OK) != 0)
    return makeError(fmt::format("no libvirt daemon answers and libvirtd cannot be started: {} is "
                                 "not an executable file",
                                 libvirtd),
                     "install libvirt-daemon-system (scripts/setup.sh) or set CRBENCH_LIBVIRTD");

  if (!unixSocketAnswers(kSystemLogSocket)) {
    CRB_ASSIGN(d->virtlogdPid, startLogDaemon(dir));
  }

  // Only the sockets move into the private directory; a privileged libvirtd keeps its driver
  // state in /run/libvirt and /var/lib/libvirt whatever the config says.
  std::string conf = fmt::format(
      "unix_sock_dir = \"{0}\"\n"
      "unix_sock_rw_perms = \"0600\"\n"
      "unix_sock_ro_perms = \"0600\"\n"
      "unix_sock_admin_perms = \"0600\"\n"
      "auth_unix_rw = \"none\"\n"
      "auth_unix_ro = \"none\"\n"
      "log_outputs = \"3:file:{0}/libvirtd.log\"\n",
      dir.string());
  if (auto s = writeFileAtomic(dir / "libvirtd.conf", conf, 0600); !s) {
    stopDaemon(*d);
    return s.error();
  }
  // -t: should crbench die without stopping it, the daemon exits by itself once idle.
  RunOptions ro;
  ro.timeout = std::chrono::seconds(60);
  auto r = runCommand({libvirtd, "-d", "-t", "120", "-f", (dir / "libvirtd.conf").string(), "-p",
                       (dir / "libvirtd.pid").string()},
                      ro);
  if (!r || !r->succeeded()) {
    std::string why = r ? r->describe() : r.error().message;
    std::string tail = logTail(dir / "libvirtd.log");
    stopDaemon(*d);
    return makeError(fmt::format("starting libvirtd ({}) failed: {}{}", libvirtd, why,
                                 tail.empty() ? "" : "; its log ends: " + tail));
  }
  auto pid = readPidFile(dir / "libvirtd.pid");
  if (!pid) {
    stopDaemon(*d);
    return pid.error().context("libvirtd started but wrote no pid file");
  }
  d->libvirtdPid = *pid;
  d->startSeconds = secondsSince(t0);
  return d;
}

// flock(LOCK_EX) with a deadline, so a wedged peer cannot hang crbench.
bool lockWithin(int fd, std::chrono::seconds limit) {
  auto deadline = Clock::now() + limit;
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) return false;
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

std::mutex gMutex;
std::weak_ptr<Connection> gShared;

}  // namespace

void initLibvirt() {
  static std::once_flag once;
  std::call_once(once, [] {
    virInitialize();
    virSetErrorFunc(nullptr, quietErrorHandler);
    // libvirt's RPC client writes to its socket without MSG_NOSIGNAL and asks applications to
    // ignore SIGPIPE: a daemon that goes away mid-call must be an error, not a dead crbench.
    // Children get SIGPIPE back (core/proc resets it before exec).
    ::signal(SIGPIPE, SIG_IGN);
  });
}

Error lastError(const std::string& what, const std::string& hint) {
  virErrorPtr e = virGetLastError();
  std::string msg = e && e->message ? e->message : "libvirt gave no reason";
  virResetLastError();
  return makeError(what + ": " + msg, hint);
}

std::string versionText(unsigned long v) {
  return fmt::format("{}.{}.{}", v / 1000000, (v / 1000) % 1000, v % 1000);
}

fs::path privateDaemonDir() { return runtimeDir() / "libvirtd"; }

Connection::~Connection() {
  if (conn_) virConnectClose(conn_);
  if (usersFd_ < 0) return;
  Fd users(usersFd_);
  usersFd_ = -1;
  Fd lockFd(::open((daemonDir_ / "lock").c_str(), O_RDWR | O_CLOEXEC));
  if (!lockFd.valid() || !lockWithin(lockFd.get(), std::chrono::seconds(30))) {
    spdlog::warn("libvirt: could not take {} to stop the private daemon; it exits after 120 s idle",
                 (daemonDir_ / "lock").string());
    return;
  }
  // Exclusive only when no other crbench holds it shared: then this was the last user.
  if (::flock(users.get(), LOCK_EX | LOCK_NB) != 0) return;
  OwnDaemon d;
  if (daemon_) {
    d = *daemon_;
  } else {
    d.dir = daemonDir_;
    d.libvirtdPid = readPidFile(daemonDir_ / "libvirtd.pid").valueOr(-1);
    d.virtlogdPid = readPidFile(daemonDir_ / "virtlogd.pid").valueOr(-1);
  }
  d.lockFd = -1;
  stopDaemon(d);
}

Status Connection::ensureLogDaemon() {
  if (daemonDir_.empty() || unixSocketAnswers(kSystemLogSocket)) return success();
  // Under <dir>/lock, like any start or stop of the private daemon: another crbench sharing it
  // may be doing the same.
  Fd lockFd(::open((daemonDir_ / "lock").c_str(), O_RDWR | O_CLOEXEC));
  if (!lockFd.valid() || !lockWithin(lockFd.get(), std::chrono::seconds(60)))
    return makeError(fmt::format("virtlogd is gone and {} could not be locked to start it again", (daemonDir_ / "lock").string()));
  if (unixSocketAnswers(kSystemLogSocket)) return success();
  spdlog::debug("libvirt: virtlogd exited while idle; starting it again");
  CRB_ASSIGN(pid_t pid, startLogDaemon(daemonDir_));
  if (daemon_) daemon_->virtlogdPid = pid;
  return success();
}

Json Connection::describe() const {
  Json j = Json::object();
  j["uri"] = uri_;
  j["daemon"] = daemon_ ? "started by crbench" : usersFd_ >= 0 ? "crbench's own, shared with another crbench" : "already running";
  if (daemon_) {
    j["daemon_dir"] = daemon_->dir.string();
    j["daemon_start_seconds"] = daemon_->startSeconds;
  }
  unsigned long v = 0;
  if (virConnectGetLibVersion(conn_, &v) == 0) j["libvirt"] = versionText(v);
  if (virConnectGetVersion(conn_, &v) == 0) j["qemu"] = versionText(v);
  virResetLastError();
  return j;
}

Result<std::shared_ptr<Connection>> connect() {
  initLibvirt();
  std::lock_guard lock(gMutex);
  if (auto c = gShared.lock()) return c;

  std::shared_ptr<Connection> c(new Connection());
  std::string systemUri = envOr("CRBENCH_LIBVIRT_URI", "qemu:///system");
  std::string whySystem;
  if ((c->conn_ = tryOpen(systemUri, &whySystem))) {
    c->uri_ = systemUri;
    gShared = c;
    return c;
  }
  spdlog::debug("libvirt: {}; starting crbench's own daemon", whySystem);

  fs::path dir = privateDaemonDir();
  CRB_CHECK(makeDirs(dir, 0700));
  ::chmod(dir.c_str(), 0700);  // an older directory may have been created with a wider mode
  std::string privUri = "qemu:///system?socket=" + (dir / "libvirt-sock").string();

  // Several crbench processes may share the private daemon: each holds a shared flock on
  // <dir>/users while connected, and <dir>/lock serialises joining, starting and stopping. The
  // last user to leave stops the daemon, whichever crbench started it.
  Fd lockFd(::open((dir / "lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lockFd.valid()) return sysError("open " + (dir / "lock").string(), errno);
  if (!lockWithin(lockFd.get(), std::chrono::seconds(60)))
    return makeError(fmt::format("{} stayed locked for 60 s by another crbench starting or stopping "
                                 "its libvirt daemon",
                                 (dir / "lock").string()),
                     "stop the other crbench run or remove the stale daemon");
  Fd usersFd(::open((dir / "users").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!usersFd.valid()) return sysError("open " + (dir / "users").string(), errno);
  if (unixSocketAnswers((dir / "libvirt-sock").string()) && (c->conn_ = tryOpen(privUri, nullptr))) {
    // Cannot block: only a stopper holds `users` exclusively, and it holds `lock` meanwhile.
    ::flock(usersFd.get(), LOCK_SH);
    c->uri_ = privUri;
    c->daemonDir_ = dir;
    c->usersFd_ = usersFd.release();
    gShared = c;
    return c;
  }

  auto d = startDaemon(dir);
  if (!d)
    return d.error().context(fmt::format("libvirt unavailable ({})", whySystem));
  c->daemon_ = std::move(d).value();
  ::flock(usersFd.get(), LOCK_SH);
  c->daemonDir_ = dir;
  c->usersFd_ = usersFd.release();
  lockFd.reset();  // on a failure below, ~Connection takes the lock to stop the daemon
  std::string why;
  auto until = Clock::now() + std::chrono::seconds(15);
  while (!(c->conn_ = tryOpen(privUri, &why)) && Clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (!c->conn_)
    return makeError(fmt::format("crbench started libvirtd but cannot connect to it: {}", why));
  c->uri_ = privUri;
  spdlog::debug("libvirt: started own daemon in {} ({:.2f} s)", dir.string(),
                c->daemon_->startSeconds);
  gShared = c;
  return c;
}

}  // namespace crb::libvirt
