#include "runtime/container.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"

namespace crb {

namespace {

constexpr const char* kFreezerRoot = "/sys/fs/cgroup/freezer";
constexpr const char* kPidsRoot = "/sys/fs/cgroup/pids";
// Private range for the per-sandbox /30s; the addresses only exist on veth pairs we create.
constexpr uint32_t kNetBase = (10u << 24) | (213u << 16);
constexpr uint32_t kNetSlots = 1u << 14;  // /30s in 10.213.0.0/16

std::string ipv4(uint32_t a) {
  return fmt::format("{}.{}.{}.{}", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255);
}

std::string readText(const fs::path& p) {
  auto r = readFile(p);
  if (!r.ok()) return {};
  std::string s = *r;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

unsigned long nsInode(pid_t pid, const char* ns) {
  struct stat st {};
  std::string p = fmt::format("/proc/{}/ns/{}", pid, ns);
  if (::stat(p.c_str(), &st) != 0) return 0;
  return st.st_ino;
}

// Mount points at or below `dir`, deepest first (from our mount table).
std::vector<std::string> mountsUnder(const fs::path& dir) {
  std::vector<std::string> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line, prefix = dir.string();
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, target;
    ls >> id >> parent >> devno >> root >> target;
    if (target == prefix || target.rfind(prefix + "/", 0) == 0) out.push_back(target);
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.size() > b.size(); });
  return out;
}

std::string randomHex(int bytes) {
  std::random_device rd;
  std::string s;
  for (int i = 0; i < bytes; i++) s += fmt::format("{:02x}", rd() & 255);
  return s;
}

// Polls the agent's control port with {"op":"ping"} on a fresh connection; true when it answers ok.
bool pingOnce(ContainerSandbox& sb) {
  auto fd = sb.openControlSocket();
  if (!fd.ok()) return false;
  static const char req[] = "{\"op\":\"ping\"}\n";
  if (::send(fd->get(), req, sizeof req - 1, MSG_NOSIGNAL) != sizeof req - 1) return false;
  std::string line;
  char buf[4096];
  auto deadline = Clock::now() + std::chrono::seconds(2);
  while (line.find('\n') == std::string::npos && Clock::now() < deadline) {
    pollfd p{fd->get(), POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    ssize_t n = ::recv(fd->get(), buf, sizeof buf, 0);
    if (n <= 0) return false;
    line.append(buf, static_cast<size_t>(n));
  }
  auto j = Json::parse(line.substr(0, line.find('\n')), nullptr, false);
  return !j.is_discarded() && j.value("ok", false);
}

}  // namespace

// ---- child side -------------------------------------------------------------------------------

int prepareContainerChild(const ContainerChildPlan& plan, const char** failedStep) {
#define CRB_STEP(name, expr)     \
  do {                           \
    if ((expr) != 0) {           \
      *failedStep = name;        \
      return -errno;             \
    }                            \
  } while (0)
  // The container's init leads its own session: otherwise it keeps the session of whoever cloned
  // it (outside the pid namespace), which CRIU refuses to dump, and a terminal's ^C would reach it.
  if (::setsid() < 0) {
    *failedStep = "setsid";
    return -errno;
  }
  if (plan.netnsFd >= 0) CRB_STEP("setns(net)", ::setns(plan.netnsFd, CLONE_NEWNET));
  CRB_STEP("sethostname", ::sethostname(plan.hostname.data(), plan.hostname.size()));
  // Nothing we mount may propagate back to the host.
  CRB_STEP("make / private", ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr));
  CRB_STEP("chdir rootfs", ::chdir(plan.rootDir.c_str()));
  // Relative paths from here: the rootfs is the cwd. mkdir failures (EEXIST) are fine; the
  // mount that follows reports a real problem.
  ::mkdir("proc", 0555);
  ::mkdir("sys", 0555);
  ::mkdir("dev", 0755);
  ::mkdir("tmp", 01777);
  CRB_STEP("mount /proc", ::mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr));
  CRB_STEP("mount /sys", ::mount("sysfs", "sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, nullptr));
  CRB_STEP("mount /dev", ::mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k"));
  static const char* const devices[] = {"null", "zero", "full", "random", "urandom", "tty"};
  for (const char* d : devices) {
    char target[32] = "dev/";
    char source[32] = "/dev/";
    std::strncat(target, d, sizeof target - 5);
    std::strncat(source, d, sizeof source - 6);
    int fd = ::open(target, O_CREAT | O_WRONLY | O_CLOEXEC, 0666);
    if (fd < 0) {
      *failedStep = "create /dev node";
      return -errno;
    }
    ::close(fd);
    CRB_STEP("bind-mount a /dev node", ::mount(source, target, nullptr, MS_BIND, nullptr));
  }
  ::mkdir("dev/pts", 0755);
  ::mkdir("dev/shm", 01777);
  CRB_STEP("mount /dev/pts", ::mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                                     "newinstance,ptmxmode=0666,mode=620"));
  CRB_STEP("link /dev/ptmx", ::symlink("pts/ptmx", "dev/ptmx"));
  CRB_STEP("mount /dev/shm", ::mount("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"));
  ::symlink("/proc/self/fd", "dev/fd");
  ::symlink("/proc/self/fd/0", "dev/stdin");
  ::symlink("/proc/self/fd/1", "dev/stdout");
  ::symlink("/proc/self/fd/2", "dev/stderr");
  // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves only the
  // rootfs, without needing a directory for the old root inside the image.
  CRB_STEP("pivot_root", static_cast<int>(::syscall(SYS_pivot_root, ".", ".")));
  CRB_STEP("detach old root", ::umount2(".", MNT_DETACH));
  CRB_STEP("chdir /", ::chdir("/"));
  if (plan.logFd >= 0) {
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(plan.logFd, 1);
    ::dup2(plan.logFd, 2);
  }
  // Whatever crbench inherited without close-on-exec (fds of the shell that ran it) must not
  // reach the container: the workload would hold them and checkpoint them (the native engine
  // refused "pipe at fd 251 shared with a process outside the tree").
  ::syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */);
#undef CRB_STEP
  return 0;
}

// ---- host side --------------------------------------------------------------------------------

Result<std::unique_ptr<ContainerSandbox>> ContainerSandbox::start(const Scenario& scenario,
                                                                  const SandboxOptions& opts) {
  std::unique_ptr<ContainerSandbox> sb(new ContainerSandbox());
  auto st = sb->setUp(scenario, opts);
  if (!st.ok()) {
    auto stopSt = sb->stop();
    Error e = st.error().context("start container sandbox " + sb->id_);
    if (!stopSt.ok()) e.message += "; cleaning up also failed: " + stopSt.error().message;
    return e;
  }
  return sb;
}

ContainerSandbox::~ContainerSandbox() {
  auto st = stop();
  if (!st.ok()) spdlog::warn("container {}: {}", id_, st.error().text());
}

Status ContainerSandbox::setUp(const Scenario& scenario, const SandboxOptions& opts) {
  verbose_ = opts.verbose;
  id_ = opts.id.empty() ? "c" + randomHex(5) : opts.id;
  for (char c : id_)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_')
      return makeError(fmt::format("sandbox id '{}' has characters other than letters, digits, - and _", id_));
  hostname_ = "crb-" + id_.substr(0, 40);
  runtimeDir_ = crb::runtimeDir() / id_;
  if (fs::exists(runtimeDir_))
    return makeError(fmt::format("runtime dir {} already exists", runtimeDir_.string()),
                     "another sandbox uses this id; choose another or remove the leftover");
  CRB_ASSIGN(image_, buildWorkloadImage(scenario));
  CRB_CHECK(makeDirs(crb::runtimeDir(), 0755));
  if (::mkdir(runtimeDir_.c_str(), 0700) != 0) return sysError("create " + runtimeDir_.string(), errno);
  ownsRuntimeDir_ = true;
  auto t0 = Clock::now();
  CRB_CHECK(createNetns());
  CRB_CHECK(createVeth());
  netSetupMs_ = msSince(t0);
  CRB_CHECK(createCgroups());
  CRB_CHECK(mountRootfs());
  CRB_CHECK(cloneInit());
  return success();
}

Status ContainerSandbox::createNetns() {
  // The file the namespace is bind-mounted on must exist first.
  Fd f(::open(netnsPath().c_str(), O_CREAT | O_EXCL | O_RDONLY | O_CLOEXEC, 0400));
  if (!f.valid()) return sysError("create " + netnsPath().string(), errno);
  f.reset();
  // A short-lived child creates the namespace and pins it with a bind mount in our (shared) mount
  // namespace; once pinned, the namespace lives until stop() unmounts it.
  std::string target = netnsPath().string();
  pid_t pid = ::fork();
  if (pid < 0) return sysError("fork", errno);
  if (pid == 0) {
    if (::unshare(CLONE_NEWNET) != 0) _exit(10);
    if (::mount("/proc/self/ns/net", target.c_str(), nullptr, MS_BIND, nullptr) != 0) _exit(11);
    _exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return makeError(fmt::format("cannot create network namespace at {} ({})", target,
                                 WIFEXITED(status) && WEXITSTATUS(status) == 10 ? "unshare failed" : "bind mount failed"),
                     "crbench needs root and a kernel with network namespaces");
  netnsFd_.reset(::open(target.c_str(), O_RDONLY | O_CLOEXEC));
  if (!netnsFd_.valid()) return sysError("open " + target, errno);
  return success();
}

Status ContainerSandbox::createVeth() {
  // Host-side interface names are limited to 15 characters: derive a short tag from the id.
  std::string tag = contentHash(id_ + runtimeDir_.string()).substr(0, 8);
  hostVeth_ = "crb" + tag + "h";
  // Pick a free /30: skip those an address on this host already uses.
  CRB_ASSIGN(auto used, runCommand({"ip", "-4", "-o", "addr", "show"}));
  std::mt19937 rng(std::random_device{}());
  uint32_t net = 0;
  for (int tries = 0; tries < 64 && net == 0; tries++) {
    uint32_t cand = kNetBase + (rng() % kNetSlots) * 4;
    if (used.out.find(" " + ipv4(cand + 1) + "/") == std::string::npos &&
        used.out.find(" " + ipv4(cand + 2) + "/") == std::string::npos)
      net = cand;
  }
  if (net == 0) return makeError("no free /30 in 10.213.0.0/16 for the container's veth pair");
  hostAddr_ = ipv4(net + 1);
  ctrAddr_ = ipv4(net + 2);
  RunOptions ro;
  ro.timeout = std::chrono::seconds(10);
  // Created inside the netns so the container end never appears on the host; the peer is moved
  // to our own netns (named by our pid).
  std::string inside = fmt::format(
      "link set lo up\n"
      "link add eth0 type veth peer name {} netns {}\n"
      "addr add {}/30 dev eth0\n"
      "link set eth0 up\n",
      hostVeth_, ::getpid(), ctrAddr_);
  ro.stdinData = inside;
  CRB_ASSIGN(auto r1, runCommand({"nsenter", "--net=" + netnsPath().string(), "ip", "-batch", "-"}, ro));
  if (!r1.succeeded())
    return makeError(fmt::format("set up the container's network (veth {}): ip {}", hostVeth_, r1.describe()),
                     "is iproute2 installed and the veth module available?");
  ro.stdinData = fmt::format("addr add {}/30 dev {}\nlink set {} up\n", hostAddr_, hostVeth_, hostVeth_);
  CRB_ASSIGN(auto r2, runCommand({"ip", "-batch", "-"}, ro));
  if (!r2.succeeded())
    return makeError(fmt::format("configure host veth {}: ip {}", hostVeth_, r2.describe()));
  return success();
}

Status ContainerSandbox::createCgroups() {
  for (auto [root, dir] : {std::pair{kFreezerRoot, &freezerDir_}, std::pair{kPidsRoot, &pidsDir_}}) {
    if (!fs::exists(fs::path(root) / "cgroup.procs"))
      return makeError(fmt::format("cgroup v1 hierarchy {} is not mounted", root),
                       "crbench's container runtime needs the cgroup v1 freezer and pids controllers");
    fs::path parent = fs::path(root) / "crbench";
    if (::mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) return sysError("create cgroup " + parent.string(), errno);
    fs::path d = parent / id_;
    // EEXIST is an error: the cgroup would belong to another sandbox.
    if (::mkdir(d.c_str(), 0755) != 0) return sysError("create cgroup " + d.string(), errno);
    *dir = d;
  }
  return success();
}

Status ContainerSandbox::mountRootfs() {
  for (auto sub : {"upper", "work", "root"})
    if (::mkdir((runtimeDir_ / sub).c_str(), 0755) != 0)
      return sysError("create " + (runtimeDir_ / sub).string(), errno);
  std::string opts = fmt::format("lowerdir={},upperdir={},workdir={}", image_.rootfs.string(),
                                 (runtimeDir_ / "upper").string(), (runtimeDir_ / "work").string());
  if (::mount("overlay", rootDir().c_str(), "overlay", 0, opts.c_str()) != 0)
    return sysError(fmt::format("mount overlay rootfs at {} (lower {})", rootDir().string(), image_.rootfs.string()),
                    errno);
  return success();
}

ContainerChildPlan ContainerSandbox::childPlan() const {
  ContainerChildPlan p;
  p.rootDir = rootDir().string();
  p.hostname = hostname_;
  p.netnsFd = netnsFd_.get();
  return p;
}

Status ContainerSandbox::cloneInit() {
  Fd logFd(::open(agentLogPath().c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!logFd.valid()) return sysError("create " + agentLogPath().string(), errno);
  int syncPipe[2], errPipe[2];
  if (::pipe2(syncPipe, O_CLOEXEC) != 0) return sysError("pipe", errno);
  if (::pipe2(errPipe, O_CLOEXEC) != 0) {
    ::close(syncPipe[0]);
    ::close(syncPipe[1]);
    return sysError("pipe", errno);
  }
  ContainerChildPlan plan = childPlan();
  plan.logFd = logFd.get();
  static const char* const argv[] = {"/sbin/crbench-agent", "--runtime", "container", nullptr};
  static const char* const envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                     "HOME=/", "TERM=linux", "container=crbench", nullptr};
  auto t0 = Clock::now();
  // fork-style clone (no new stack): the child continues here with a copy of our memory.
  long pid = ::syscall(SYS_clone, static_cast<unsigned long>(kCloneNamespaces | SIGCHLD), nullptr, nullptr,
                       nullptr, nullptr);
  if (pid < 0) {
    int e = errno;
    for (int fd : {syncPipe[0], syncPipe[1], errPipe[0], errPipe[1]}) ::close(fd);
    return sysError("clone the container init (new pid, mount, ipc, uts namespaces)", e);
  }
  if (pid == 0) {
    ::close(syncPipe[1]);
    ::close(errPipe[0]);
    char go;
    // Wait until the parent has put us into the cgroups.
    if (::read(syncPipe[0], &go, 1) != 1) _exit(120);
    const char* step = "";
    int rc = prepareContainerChild(plan, &step);
    if (rc == 0) {
      ::execve(argv[0], const_cast<char* const*>(argv), const_cast<char* const*>(envp));
      rc = -errno;
      step = "exec /sbin/crbench-agent";
    }
    struct {
      int err;
      char step[60];
    } msg{};
    msg.err = -rc;
    std::strncpy(msg.step, step, sizeof msg.step - 1);
    (void)!::write(errPipe[1], &msg, sizeof msg);
    _exit(121);
  }
  childPid_ = initPid_ = static_cast<pid_t>(pid);
  ::close(syncPipe[0]);
  ::close(errPipe[1]);
  Fd errRead(errPipe[0]);
  Status joined = addToCgroups(initPid_);
  (void)!::write(syncPipe[1], "g", 1);
  ::close(syncPipe[1]);
  CRB_CHECK(joined);
  rememberPidNs(initPid_);
  struct {
    int err;
    char step[60];
  } msg{};
  ssize_t n = ::read(errRead.get(), &msg, sizeof msg);
  if (n == static_cast<ssize_t>(sizeof msg)) {
    msg.step[sizeof msg.step - 1] = 0;
    return makeError(fmt::format("container init: {}: {}", msg.step, std::strerror(msg.err)),
                     msg.err == ENOENT ? "the image has no /sbin/crbench-agent: rebuild the guest agent" : "");
  }
  auto st = waitForAgentPing(std::chrono::seconds(20));
  if (!st.ok()) return st;
  startMs_ = msSince(t0);
  spdlog::debug("container {}: agent answered {:.1f} ms after clone (init pid {}, {} <-> {})", id_, startMs_,
                initPid_, hostAddr_, ctrAddr_);
  return success();
}

Status ContainerSandbox::waitForAgentPing(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (childPid_ > 0 && childPid_ == initPid_) {
      int status = 0;
      if (::waitpid(childPid_, &status, WNOHANG) == childPid_) {
        childPid_ = -1;
        return makeError(fmt::format("the container's agent exited ({}) before answering; agent.log: {}",
                                     WIFEXITED(status) ? fmt::format("exit {}", WEXITSTATUS(status))
                                                       : fmt::format("signal {}", WTERMSIG(status)),
                                     agentLogTail()));
      }
    }
    if (pingOnce(*this)) return success();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return makeError(fmt::format("the container's agent did not answer on {}:{} within {} ms; agent.log: {}",
                               ctrAddr_, kAgentControlPort, timeout.count(), agentLogTail()));
}

std::string ContainerSandbox::agentLogTail() const {
  std::string s = readText(agentLogPath());
  if (s.empty()) return "(empty)";
  if (s.size() > 400) s = "..." + s.substr(s.size() - 400);
  for (auto& c : s)
    if (c == '\n') c = '|';
  return s;
}

Status ContainerSandbox::addToCgroups(pid_t pid) {
  for (auto& d : {freezerDir_, pidsDir_}) {
    if (d.empty()) continue;
    CRB_CHECK(writeControlFile(d / "cgroup.procs", std::to_string(pid)));
  }
  return success();
}

void ContainerSandbox::rememberPidNs(pid_t pid) {
  if (auto ino = nsInode(pid, "pid")) pidNamespaces_.insert(ino);
}

void ContainerSandbox::setInitPid(pid_t pid) {
  initPid_ = pid;
  rememberPidNs(pid);
  // Restored processes may live in a pid namespace whose init is `pid` itself (pid_for_children
  // of a process in it is the same); remembering both covers either layout.
  if (auto ino = nsInode(pid, "pid_for_children")) pidNamespaces_.insert(ino);
}

std::string ContainerSandbox::freezerState() const {
  return freezerDir_.empty() ? std::string() : readText(freezerDir_ / "freezer.state");
}

Status ContainerSandbox::freeze(std::chrono::milliseconds timeout) {
  CRB_CHECK(writeControlFile(freezerDir_ / "freezer.state", "FROZEN"));
  auto deadline = Clock::now() + timeout;
  while (freezerState() != "FROZEN") {
    if (Clock::now() >= deadline) {
      (void)thaw();
      return makeError(fmt::format("freezing cgroup {} did not complete within {} ms (left thawed)",
                                   freezerDir_.string(), timeout.count()));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return success();
}

Status ContainerSandbox::thaw(std::chrono::milliseconds timeout) {
  CRB_CHECK(writeControlFile(freezerDir_ / "freezer.state", "THAWED"));
  auto deadline = Clock::now() + timeout;
  while (freezerState() != "THAWED") {
    if (Clock::now() >= deadline)
      return makeError(fmt::format("thawing cgroup {} did not complete within {} ms", freezerDir_.string(),
                                   timeout.count()));
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return success();
}

Result<std::vector<pid_t>> ContainerSandbox::pids() const {
  CRB_ASSIGN(std::string text, readFile(freezerDir_ / "cgroup.procs"));
  std::vector<pid_t> out;
  std::istringstream in(text);
  pid_t p;
  while (in >> p) out.push_back(p);
  return out;
}

Result<Fd> ContainerSandbox::openNetns() const {
  Fd fd(::open(netnsPath().c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return sysError("open " + netnsPath().string(), errno);
  return fd;
}

static Result<sockaddr_in> agentAddr(const std::string& ip, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1)
    return makeError(fmt::format("container address '{}' is not an IPv4 address", ip));
  return a;
}

Result<Fd> ContainerSandbox::openProbeSocket() {
  if (ctrAddr_.empty()) return makeError(fmt::format("container {} has no network", id_));
  CRB_ASSIGN(auto a, agentAddr(ctrAddr_, kAgentEchoPort));
  Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return sysError("socket(udp)", errno);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return sysError(fmt::format("connect udp {}:{}", ctrAddr_, kAgentEchoPort), errno);
  return fd;
}

Result<Fd> ContainerSandbox::openControlSocket() {
  if (ctrAddr_.empty()) return makeError(fmt::format("container {} has no network", id_));
  CRB_ASSIGN(auto a, agentAddr(ctrAddr_, kAgentControlPort));
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return sysError("socket(tcp)", errno);
  std::string what = fmt::format("connect to the agent at {}:{}", ctrAddr_, kAgentControlPort);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (errno != EINPROGRESS) return sysError(what, errno);
    pollfd p{fd.get(), POLLOUT, 0};
    if (::poll(&p, 1, 2000) != 1) return makeError(what + ": timed out");
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return sysError(what, err);
  }
  int fl = ::fcntl(fd.get(), F_GETFL);
  ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK);
  return fd;
}

Json ContainerSandbox::describe() const {
  Json j;
  j["runtime"] = "container";
  j["id"] = id_;
  j["start_ms"] = startMs_;
  j["start_measured"] = "clone() of the init until the agent answered a ping on its control port";
  j["network_setup_ms"] = netSetupMs_;
  j["runtime_dir"] = runtimeDir_.string();
  j["init_pid"] = initPid_;
  j["hostname"] = hostname_;
  j["namespaces"] = {"pid", "mnt", "ipc", "uts", "net (held by the host)"};
  j["cgroups"] = {freezerDir_.string(), pidsDir_.string()};
  j["network"] = {{"host_veth", hostVeth_}, {"host_address", hostAddr_}, {"container_address", ctrAddr_}};
  j["image"] = {{"rootfs", image_.rootfs.string()},
                {"hash", image_.hash},
                {"bytes", image_.bytes},
                {"from_cache", image_.fromCache},
                {"build_seconds", image_.buildSeconds}};
  return j;
}

Status ContainerSandbox::stop() {
  if (stopped_) return success();
  stopped_ = true;
  std::vector<std::string> problems;
  auto note = [&](const Status& s) {
    if (!s.ok()) problems.push_back(s.error().message);
  };
  // 1. Kill every process: the cgroup's, the init's, and anything left in our pid namespaces
  //    (an engine's restore may have put processes outside the cgroup). SIGKILL to frozen tasks is
  //    delivered once they are thawed, so thaw after killing.
  auto killAll = [&] {
    int killed = 0;
    if (!freezerDir_.empty() && fs::exists(freezerDir_)) {
      for (auto& d : {freezerDir_, pidsDir_}) {
        auto r = readFile(d / "cgroup.procs");
        if (!r.ok()) continue;
        std::istringstream in(*r);
        pid_t p;
        while (in >> p)
          if (::kill(p, SIGKILL) == 0) killed++;
      }
    }
    if (initPid_ > 0 && ::kill(initPid_, SIGKILL) == 0) killed++;
    if (!pidNamespaces_.empty()) {
      std::error_code ec;
      for (auto& e : fs::directory_iterator("/proc", ec)) {
        auto name = e.path().filename().string();
        if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
        pid_t p = std::stoi(name);
        if (p == ::getpid()) continue;
        if (pidNamespaces_.count(nsInode(p, "pid")) && ::kill(p, SIGKILL) == 0) killed++;
      }
    }
    if (!freezerDir_.empty() && fs::exists(freezerDir_ / "freezer.state") && freezerState() != "THAWED")
      (void)writeControlFile(freezerDir_ / "freezer.state", "THAWED");
    return killed;
  };
  killAll();
  if (childPid_ > 0) {
    waitOrKill(childPid_, std::chrono::seconds(5));
    childPid_ = -1;
  }
  // 2. Wait until the cgroups are empty, then remove them.
  auto deadline = Clock::now() + std::chrono::seconds(5);
  for (auto& d : {freezerDir_, pidsDir_}) {
    if (d.empty() || !fs::exists(d)) continue;
    while (!readText(d / "cgroup.procs").empty() && Clock::now() < deadline) {
      killAll();
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (::rmdir(d.c_str()) != 0 && errno != ENOENT)
      note(sysError(fmt::format("remove cgroup {} (processes left: {})", d.string(), readText(d / "cgroup.procs")),
                    errno));
  }
  // 3. Network: the host end of the veth goes with the namespace, but namespace teardown is
  //    asynchronous; delete it now so a new sandbox never sees a stale interface.
  if (!hostVeth_.empty() && fs::exists("/sys/class/net/" + hostVeth_)) {
    RunOptions ro;
    ro.timeout = std::chrono::seconds(10);
    auto r = runCommand({"ip", "link", "del", hostVeth_}, ro);
    if (r.ok() && !r->succeeded() && fs::exists("/sys/class/net/" + hostVeth_))
      note(makeError(fmt::format("delete veth {}: ip {}", hostVeth_, r->describe())));
  }
  netnsFd_.reset();
  // 4. Unmount everything below the runtime dir (rootfs overlay, netns pin), deepest first.
  if (ownsRuntimeDir_) {
    for (auto& m : mountsUnder(runtimeDir_)) {
      if (::umount2(m.c_str(), 0) != 0 && ::umount2(m.c_str(), MNT_DETACH) != 0)
        note(sysError("unmount " + m, errno));
    }
    // 5. Remove the runtime dir, but never through a mount: deleting inside a still-mounted
    //    overlay would reach into other file systems.
    if (fs::exists(runtimeDir_)) {
      if (mountsUnder(runtimeDir_).empty()) {
        std::error_code ec;
        fs::remove_all(runtimeDir_, ec);
        if (ec) note(makeError(fmt::format("remove {}: {}", runtimeDir_.string(), ec.message())));
      } else {
        note(makeError(fmt::format("not removing {}: something is still mounted below it", runtimeDir_.string())));
      }
    }
  }
  if (problems.empty()) return success();
  std::string msg = fmt::format("stopping container {} left things behind: ", id_);
  for (size_t i = 0; i < problems.size(); i++) msg += (i ? "; " : "") + problems[i];
  return makeError(msg, "see `mount | grep crbench`, /sys/fs/cgroup/freezer/crbench, `ip link`");
}

CRB_REGISTER_RUNTIME(container, "container",
                     [](const Scenario& s, const SandboxOptions& o) -> Result<std::unique_ptr<Sandbox>> {
                       auto r = ContainerSandbox::start(s, o);
                       if (!r.ok()) return r.error();
                       return std::unique_ptr<Sandbox>(std::move(r).value());
                     });

}  // namespace crb
