#include "engine/criu/criu_engine.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "core/clock.hpp"
#include "core/fsutil.hpp"
#include "core/log.hpp"
#include "core/proc.hpp"
#include "engine/criu/criu_stats.hpp"
#include "engine/criu/criu_util.hpp"
#include "runtime/container.hpp"

namespace crb {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace criu {

namespace {

struct MountInfo {
  int id = 0;
  std::string dev;  // "major:minor"
  std::string root;
  std::string mountpoint;
  std::string fstype;
};

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && i + 3 < s.size() + 0 && std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

Result<std::vector<MountInfo>> readMountInfo(const fs::path& file) {
  CRB_ASSIGN(std::string text, readFile(file));
  std::vector<MountInfo> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    MountInfo m;
    std::string parent, tok;
    ls >> m.id >> parent >> m.dev >> m.root >> m.mountpoint;
    while (ls >> tok && tok != "-") {
    }
    ls >> m.fstype;
    m.root = unescape(m.root);
    m.mountpoint = unescape(m.mountpoint);
    out.push_back(m);
  }
  return out;
}

std::string keyFor(const std::string& mountpoint) {
  std::string k = "crb";
  for (char c : mountpoint) k += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
  return k;
}

}  // namespace

Result<std::vector<ExternalMount>> findExternalMounts(pid_t containerInit) {
  CRB_ASSIGN(auto inner, readMountInfo(fmt::format("/proc/{}/mountinfo", containerInit)));
  CRB_ASSIGN(auto host, readMountInfo("/proc/self/mountinfo"));
  std::vector<ExternalMount> out;
  for (auto& m : inner) {
    // A mount whose root is not its file system's root is a bind mount of part of a file system;
    // inside the container only the rootfs overlay and fresh mounts (proc, sysfs, tmpfs, devpts)
    // have root "/", so these come from the host.
    if (m.root == "/") continue;
    std::string hostPath;
    for (auto& h : host) {
      if (h.dev != m.dev) continue;
      if (h.root == "/") {
        hostPath = (h.mountpoint == "/" ? "" : h.mountpoint) + m.root;
        break;
      }
      if (m.root.rfind(h.root, 0) == 0 && hostPath.empty())
        hostPath = h.mountpoint + m.root.substr(h.root.size());
    }
    if (hostPath.empty())
      return makeError(fmt::format("container mount {} (dev {}, root {}) is a bind mount of something the host "
                                   "does not have mounted",
                                   m.mountpoint, m.dev, m.root),
                       "the criu engine can only restore bind mounts of host paths");
    out.push_back({m.mountpoint, keyFor(m.mountpoint), hostPath});
  }
  return out;
}

std::vector<ExternalFile> findExternalFiles(const std::vector<pid_t>& pids, pid_t containerInit) {
  std::set<int> inner;
  if (auto mi = readMountInfo(fmt::format("/proc/{}/mountinfo", containerInit)); mi.ok())
    for (auto& m : *mi) inner.insert(m.id);
  std::vector<ExternalFile> out;
  std::set<std::string> seen;
  for (pid_t p : pids) {
    std::error_code ec;
    for (auto& e : fs::directory_iterator(fmt::format("/proc/{}/fd", p), ec)) {
      std::string target = fs::read_symlink(e.path(), ec).string();
      if (ec || target.empty() || target[0] != '/') continue;  // sockets, pipes, anon inodes
      std::string fdinfo = readFile(fmt::format("/proc/{}/fdinfo/{}", p, e.path().filename().string())).valueOr("");
      int mntId = -1, flags = 0;
      std::istringstream in(fdinfo);
      std::string k;
      while (in >> k) {
        if (k == "mnt_id:") in >> mntId;
        else if (k == "flags:") in >> std::oct >> flags >> std::dec;
      }
      if (mntId < 0 || inner.count(mntId)) continue;
      struct stat st {};
      if (::stat(e.path().c_str(), &st) != 0) continue;
      std::string key = fmt::format("file[{:x}:{:x}]", mntId, static_cast<unsigned long long>(st.st_ino));
      if (!seen.insert(key).second) continue;
      out.push_back({key, target, flags & (O_ACCMODE | O_APPEND)});
    }
  }
  return out;
}

std::vector<TcpConnection> establishedTcp(pid_t pidInNetns) {
  std::vector<TcpConnection> out;
  for (const char* table : {"tcp", "tcp6"}) {
    std::string text = readFile(fmt::format("/proc/{}/net/{}", pidInNetns, table)).valueOr("");
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string slot, local, remote, state;
      ls >> slot >> local >> remote >> state;
      if (state == "01") out.push_back({local, remote});  // TCP_ESTABLISHED
    }
  }
  return out;
}

Result<std::pair<bool, std::string>> chooseTcpEstablished(const Json& options, pid_t init) {
  std::string v = "auto";
  if (options.is_object() && options.contains("tcp-established")) {
    const auto& o = options["tcp-established"];
    v = o.is_string() ? o.get<std::string>() : o.is_boolean() ? (o.get<bool>() ? "on" : "off") : o.dump();
  }
  if (v == "" || v == "1" || v == "on" || v == "true" || v == "yes")
    return std::make_pair(true, std::string("asked for (--engine-opt tcp-established=") + v + ")");
  if (v == "0" || v == "off" || v == "false" || v == "no")
    return std::make_pair(false, std::string("turned off (--engine-opt tcp-established=") + v + ")");
  if (v != "auto")
    return makeError(fmt::format("criu engine: tcp-established='{}' is not on, off or auto", v),
                     "use --engine-opt tcp-established=on|off|auto", 2);
  // CRIU refuses to dump an established connection without the option, and with it keeps the
  // connection (repair mode + a netfilter lock until restore): on whenever there is one to keep.
  auto conns = establishedTcp(init);
  if (conns.empty()) return std::make_pair(false, std::string("auto: no established TCP connection in the container"));
  return std::make_pair(true, fmt::format("auto: {} established TCP connection{} in the container's netns (first {} -> {})",
                                          conns.size(), conns.size() == 1 ? "" : "s", conns[0].local, conns[0].remote));
}

}  // namespace criu

namespace {

using criu::CriuBinary;
using criu::ProbeResult;

constexpr const char* kMetaFile = "crbench-criu.json";
constexpr const char* kNetnsKey = "crbench-netns";

bool optFlag(const Json& o, const char* name) {
  if (!o.is_object() || !o.contains(name)) return false;
  const auto& v = o[name];
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) return v.get<double>() != 0;
  if (v.is_string()) {
    auto s = v.get<std::string>();
    return s.empty() || s == "1" || s == "true" || s == "yes" || s == "on";
  }
  return false;
}

long optInt(const Json& o, const char* name, long fallback) {
  if (!o.is_object() || !o.contains(name)) return fallback;
  const auto& v = o[name];
  if (v.is_number()) return v.get<long>();
  if (v.is_string()) return std::strtol(v.get<std::string>().c_str(), nullptr, 10);
  return fallback;
}

// "Error (criu/x.c:1): what" lines of a CRIU log, without the noise every run prints.
std::string criuErrors(const fs::path& log, size_t maxLines = 4) {
  std::string text = readFile(log).valueOr("");
  std::istringstream in(text);
  std::string line;
  std::vector<std::string> errs;
  while (std::getline(in, line)) {
    auto e = line.find("Error (");
    if (e == std::string::npos || line.find("RLIMIT_NOFILE") != std::string::npos) continue;
    auto close = line.find("): ", e);
    errs.push_back(close == std::string::npos ? line.substr(e) : line.substr(close + 3));
  }
  std::string out;
  size_t start = errs.size() > maxLines ? errs.size() - maxLines : 0;
  for (size_t i = start; i < errs.size(); i++) out += (out.empty() ? "" : "; ") + errs[i];
  return out.empty() ? "(no error lines in " + log.string() + ")" : out;
}

// Notes the moment the freezer cgroup reports FROZEN: CRIU freezes the tree through it
// (--freeze-cgroup), so this is when the workload stopped executing, seen from outside CRIU.
class FreezerWatch {
 public:
  FreezerWatch(fs::path stateFile, const std::function<void(const std::string&)>& mark)
      : file_(std::move(stateFile)), mark_(mark) {
    thread_ = std::thread([this] { run(); });
  }
  ~FreezerWatch() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  bool sawFrozen() const { return frozenAt_ != Clock::time_point{}; }
  Clock::time_point frozenAt() const { return frozenAt_; }

 private:
  void run() {
    char buf[32];
    while (!stop_) {
      int fd = ::open(file_.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return;
      ssize_t n = ::read(fd, buf, sizeof buf - 1);
      ::close(fd);
      if (n > 0 && std::strncmp(buf, "FROZEN", 6) == 0) {
        frozenAt_ = Clock::now();
        mark_("frozen");
        return;
      }
      std::this_thread::sleep_for(300us);
    }
  }
  fs::path file_;
  std::function<void(const std::string&)> mark_;
  std::atomic<bool> stop_{false};
  Clock::time_point frozenAt_{};
  std::thread thread_;
};

void killPids(const std::vector<pid_t>& pids) {
  for (pid_t p : pids) ::kill(p, SIGKILL);
}

// Wait until the container's cgroup holds no process (after killing them), bounded.
bool waitCgroupEmpty(ContainerSandbox& c, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto p = c.pids();
    if (!p.ok() || p->empty()) return true;
    if (Clock::now() >= deadline) return false;
    killPids(*p);
    if (c.freezerState() != "THAWED") (void)c.thaw(1s);
    std::this_thread::sleep_for(5ms);
  }
}

std::vector<pid_t> allThreads(const std::vector<pid_t>& tgids) {
  std::vector<pid_t> out;
  for (pid_t p : tgids) {
    std::error_code ec;
    for (auto& t : fs::directory_iterator(fmt::format("/proc/{}/task", p), ec)) {
      try {
        out.push_back(std::stoi(t.path().filename().string()));
      } catch (...) {
      }
    }
  }
  return out;
}

// After a failed or killed dump: nothing traced, nothing stopped, cgroup thawed. Returns a
// sentence saying in which state the workload is.
std::string recoverWorkload(ContainerSandbox& c, pid_t init) {
  std::vector<std::string> problems;
  auto pids = c.pids().valueOr({});
  // Detach happens when CRIU dies; thaw first so tasks that were only frozen can run on.
  if (auto s = c.thaw(5s); !s.ok()) problems.push_back(s.error().message);
  for (pid_t t : allThreads(pids)) {
    std::string left = criu::releaseProcess(t, 3s);
    if (!left.empty()) problems.push_back(left);
  }
  if (c.freezerState() != "THAWED") {
    if (auto s = c.thaw(5s); !s.ok()) problems.push_back(s.error().message);
  }
  std::string state;
  if (processAlive(init) && !c.waitForAgentPing(3s).ok()) {
    // Seen here when CRIU was killed while its parasite was inside the agent: the tasks exist,
    // untraced and thawed, but no longer run their own code.
    state = fmt::format("workload thawed but NOT answering (its agent does not reply to ping within 3 s; CRIU was "
                        "probably killed while its parasite code was inside the tree)");
    for (auto& p : problems) state += "; " + p;
    return state;
  }
  if (!processAlive(init)) {
    state = fmt::format("the workload is gone (container init {} no longer exists)", init);
  } else {
    auto ts = criu::traceState(init);
    state = fmt::format("workload thawed and running ({} processes, freezer {}{})", c.pids().valueOr({}).size(),
                        c.freezerState(), ts.tracer ? fmt::format(", init still traced by {}", ts.tracer) : "");
  }
  for (auto& p : problems) state += "; " + p;
  return state;
}

}  // namespace

CriuEngine::~CriuEngine() {
  if (lazyDaemon_ > 0) {
    ::kill(lazyDaemon_, SIGKILL);
    ::waitpid(lazyDaemon_, nullptr, 0);
  }
}

Result<CriuBinary> CriuEngine::usableBinary(const Json& options, ProbeResult& probe) {
  CRB_ASSIGN(CriuBinary bin, criu::findCriu(options));
  probe = criu::probeCriu(bin);
  if (!probe.usable)
    return makeError(fmt::format("criu engine unavailable ({} from {}): {}", bin.path, bin.source, probe.reason));
  return bin;
}

Capabilities CriuEngine::capabilities() {
  Capabilities caps;
  caps.runtimes = {RuntimeKind::Container};
  auto bin = criu::findCriu();
  if (!bin.ok()) {
    caps.unavailable = bin.error().text();
    return caps;
  }
  ProbeResult p = criu::probeCriu(*bin);
  caps.versions["criu"] = p.version;
  caps.versions["criu_binary"] = bin->path;
  caps.versions["criu_source"] = bin->source;
  if (!p.usable) {
    caps.unavailable = p.reason;
    return caps;
  }
  caps.modes = {modes::kStopAndCopy, modes::kLeaveRunning};
  if (p.lazyPages)
    caps.modes.push_back(modes::kLazy);
  else
    caps.unsupportedModes[modes::kLazy] = "CRIU says: " + p.lazyReason;
  std::string why = p.dirtyTracking
                        ? "not implemented by crbench's criu engine (criu pre-dump would be possible here)"
                        : "CRIU says: " + p.dirtyReason + " (criu pre-dump needs soft-dirty tracking)";
  caps.unsupportedModes[modes::kPreCopy] = why;
  caps.unsupportedModes[modes::kIncremental] = why;
  caps.unsupportedModes[modes::kPostCopy] = "a VM migration mode; CRIU's counterpart is lazy restore";
  caps.unsupportedModes[modes::kBackground] = "CRIU has no write-protect based background dump";
  caps.unsupportedModes[modes::kFileRam] = "a VM mode";
  caps.unsupportedModes["cow"] = "CRIU has no copy-on-write dump (the native engine's cow mode)";
  return caps;
}

Result<PhaseReport> CriuEngine::checkpoint(Sandbox& sandbox, const CheckpointContext& ctx) {
  auto* c = dynamic_cast<ContainerSandbox*>(&sandbox);
  if (!c)
    return makeError(fmt::format("criu engine: sandbox {} is a {}, not a container", sandbox.id(),
                                 toString(sandbox.kind())),
                     "use --runtime container");
  const std::string& mode = ctx.mode;
  ProbeResult probe;
  if (mode == modes::kPreCopy || mode == modes::kIncremental) {
    CRB_ASSIGN(CriuBinary bin, usableBinary(ctx.options, probe));
    (void)bin;
    if (!probe.dirtyTracking)
      return makeError(fmt::format("criu engine: mode {} unsupported here: CRIU says: {}", mode, probe.dirtyReason),
                       "criu pre-dump needs soft-dirty memory tracking, which this kernel lacks", 3);
    return makeError(fmt::format("criu engine: mode {} is not implemented", mode), "", 3);
  }
  if (mode != modes::kStopAndCopy && mode != modes::kLeaveRunning && mode != modes::kLazy)
    return makeError(fmt::format("criu engine: unknown or unsupported mode '{}'", mode),
                     "modes: stop-and-copy, leave-running, lazy", 3);
  CRB_ASSIGN(CriuBinary bin, usableBinary(ctx.options, probe));
  if (mode == modes::kLazy && !probe.lazyPages)
    return makeError("criu engine: lazy restore unsupported here: CRIU says: " + probe.lazyReason, "", 3);

  pid_t init = c->initPid();
  if (init <= 0 || !processAlive(init))
    return makeError(fmt::format("criu engine: container {} has no running init", c->id()));
  fs::path work = c->runtimeDir() / "criu";
  CRB_CHECK(makeDirs(work, 0700));
  for (const char* f : {"dump.log", "stats-dump"}) fs::remove(work / f);

  CRB_ASSIGN(auto pids, c->pids());
  CRB_ASSIGN(auto mounts, criu::findExternalMounts(init));
  auto files = criu::findExternalFiles(pids, init);
  struct stat nst {};
  if (::stat(c->netnsPath().c_str(), &nst) != 0) return sysError("stat " + c->netnsPath().string(), errno);

  bool leave = mode == modes::kLeaveRunning;
  CRB_ASSIGN(auto tcpChoice, criu::chooseTcpEstablished(ctx.options, init));
  bool tcp = tcpChoice.first;
  // A pid-namespace init that never called setsid() keeps the host session of whoever cloned it,
  // which CRIU refuses ("session leader ... outside of its pid namespace"), --shell-job included.
  bool inheritedSession = false;
  if (auto st = readFile(fmt::format("/proc/{}/stat", init)); st.ok()) {
    auto p = st->rfind(')');
    std::istringstream in(p == std::string::npos ? std::string() : st->substr(p + 2));
    std::string state;
    long ppid = 0, pgrp = 0, session = 0;
    in >> state >> ppid >> pgrp >> session;
    inheritedSession = session != init;
  }
  bool shellJob = optFlag(ctx.options, "shell-job");
  bool extUnix = optFlag(ctx.options, "ext-unix-sk");
  std::vector<std::string> argv = {bin.path, "dump", "-t", std::to_string(init), "-D", ctx.imageDir.string(),
                                   "-W", work.string(), "-o", "dump.log",
                                   fmt::format("-v{}", optInt(ctx.options, "log-level", 4)),
                                   "--root", c->rootDir().string(), "--freeze-cgroup",
                                   c->freezerCgroupDir().string(), "--external",
                                   fmt::format("net[{}]:{}", static_cast<unsigned long long>(nst.st_ino), kNetnsKey)};
  for (auto& m : mounts) argv.insert(argv.end(), {"--external", fmt::format("mnt[{}]:{}", m.mountpoint, m.key)});
  for (auto& f : files) argv.insert(argv.end(), {"--external", f.key});
  if (leave) argv.push_back("--leave-running");
  if (tcp) argv.push_back("--tcp-established");
  if (shellJob) argv.push_back("--shell-job");
  if (extUnix) argv.push_back("--ext-unix-sk");
  spdlog::debug("criu: {}", joinArgs(argv));

  // A hard bound on CRIU: a dump that does not finish is killed and the workload released.
  // kill-after-ms is the fault-injection hook the engine's tests use to kill CRIU mid-dump.
  long killAfter = optInt(ctx.options, "kill-after-ms", 0);
  RunOptions ro;
  ro.timeout = std::chrono::milliseconds(killAfter > 0 ? killAfter : optInt(ctx.options, "timeout-ms", 120000));
  FreezerWatch watch(c->freezerCgroupDir() / "freezer.state", ctx.mark);
  auto t0 = Clock::now();
  auto rr = runCommand(argv, ro);
  double wallMs = msSince(t0);
  auto tEnd = Clock::now();
  watch.stop();
  if (!rr.ok() || !rr->succeeded()) {
    std::string why = rr.ok() ? (rr->timedOut ? fmt::format("killed after {:.0f} ms", wallMs) : rr->describe())
                              : rr.error().text();
    std::string state = recoverWorkload(*c, init);
    std::string hint = fmt::format("full log: {} (command: {})", (work / "dump.log").string(), joinArgs(argv));
    if (criuErrors(work / "dump.log").find("ctty inheritance") != std::string::npos)
      hint = "a process of the container has /dev/tty open on a pty whose master another process holds (e.g. "
             "an interactive shell inside xterm); CRIU refuses to dump that. Run a program that does not open "
             "/dev/tty on the pty. " + hint;
    if (inheritedSession)
      hint = "the container's init never called setsid(): CRIU cannot dump a pid-namespace init whose session "
             "leader is outside its namespace; the container runtime must setsid() in the child. " + hint;
    return makeError(fmt::format("criu dump of container {} failed ({}): {}; {}", c->id(), why,
                                 criuErrors(work / "dump.log"), state),
                     hint);
  }
  if (leave) ctx.mark("resumed");  // CRIU has detached from the tree by the time it exits

  Json meta{{"format", "crbench-criu-v1"},
            {"criu_version", probe.version},
            {"criu_binary", bin.path},
            {"mode", mode},
            {"init_pid", init},
            {"tcp_established", tcp},
            {"tcp_established_why", tcpChoice.second},
            {"shell_job", shellJob},
            {"ext_unix_sk", extUnix},
            {"netns_inode", static_cast<unsigned long long>(nst.st_ino)},
            {"mounts", Json::array()},
            {"files", Json::array()}};
  for (auto& m : mounts) meta["mounts"].push_back({{"mountpoint", m.mountpoint}, {"key", m.key}, {"host_path", m.hostPath}});
  for (auto& f : files) meta["files"].push_back({{"key", f.key}, {"host_path", f.hostPath}, {"flags", f.flags}});
  CRB_CHECK(writeFileAtomic(ctx.imageDir / kMetaFile, meta.dump(2) + "\n", 0600));

  PhaseReport rep;
  rep.phasesMs["criu_dump"] = wallMs;
  if (watch.sawFrozen())
    rep.phasesMs["frozen_until_criu_exit"] = std::chrono::duration<double, std::milli>(tEnd - watch.frozenAt()).count();
  rep.engineCpuSeconds = rr->cpuSeconds;
  rep.enginePeakRssKiB = rr->peakRssKiB;
  rep.engineFigures["criu_version"] = probe.version;
  rep.engineFigures["criu_command"] = joinArgs(argv);
  rep.engineFigures["tcp_established"] = {{"enabled", tcp}, {"why", tcpChoice.second}};
  for (const fs::path& d : {work, ctx.imageDir}) {
    auto st = criu::readStatsImage(d, "stats-dump");
    if (st.ok()) {
      rep.engineFigures["stats_dump"] = (*st).value("dump", Json::object());
      break;
    }
  }
  if (!rep.engineFigures.contains("stats_dump")) rep.notes.push_back("CRIU wrote no stats-dump image");
  rep.notes.push_back("criu log: " + (work / "dump.log").string());
  return rep;
}

Result<PhaseReport> CriuEngine::restore(Sandbox& sandbox, const CheckpointContext& ctx) {
  auto* c = dynamic_cast<ContainerSandbox*>(&sandbox);
  if (!c)
    return makeError(fmt::format("criu engine: sandbox {} is a {}, not a container", sandbox.id(),
                                 toString(sandbox.kind())),
                     "use --runtime container");
  ProbeResult probe;
  CRB_ASSIGN(CriuBinary bin, usableBinary(ctx.options, probe));
  auto metaText = readFile(ctx.imageDir / kMetaFile);
  if (!metaText.ok())
    return makeError(fmt::format("{} is not a criu engine image (no {})", ctx.imageDir.string(), kMetaFile),
                     "checkpoint with --engine criu first");
  Json meta = Json::parse(*metaText, nullptr, false);
  if (meta.is_discarded() || meta.value("format", "") != "crbench-criu-v1")
    return makeError(fmt::format("{}: unknown format", (ctx.imageDir / kMetaFile).string()));
  bool lazy = ctx.mode == modes::kLazy;
  if (lazy && !probe.lazyPages)
    return makeError("criu engine: lazy restore unsupported here: CRIU says: " + probe.lazyReason, "", 3);

  // After leave-running the old tree still holds the container's sockets: it is replaced.
  pid_t old = c->initPid();
  if (old > 0 && processAlive(old)) ::kill(old, SIGKILL);
  if (!waitCgroupEmpty(*c, 5s))
    return makeError(fmt::format("criu engine: the previous processes of container {} did not go away", c->id()));

  fs::path work = c->runtimeDir() / "criu";
  CRB_CHECK(makeDirs(work, 0700));
  fs::path pidfile = work / "restore.pid";
  for (const char* f : {"restore.log", "stats-restore", "restore.pid", "lazy-pages.log"}) fs::remove(work / f);

  bool tcp = meta.value("tcp_established", false);
  CRB_ASSIGN(Fd netns, c->openNetns());
  std::vector<Fd> held;
  std::vector<int> inherit = {netns.get()};
  std::vector<std::string> argv = {bin.path, "restore", "-D", ctx.imageDir.string(), "-W", work.string(),
                                   "-o", "restore.log", fmt::format("-v{}", optInt(ctx.options, "log-level", 4)),
                                   "--root", c->rootDir().string(), "-d", "--pidfile", pidfile.string(),
                                   "--inherit-fd", fmt::format("fd[{}]:{}", netns.get(), kNetnsKey)};
  for (auto& m : meta["mounts"])
    argv.insert(argv.end(), {"--external", fmt::format("mnt[{}]:{}", m.value("key", ""), m.value("host_path", ""))});
  for (auto& f : meta["files"]) {
    std::string path = f.value("host_path", "");
    int flags = f.value("flags", 0);
    Fd fd(::open(path.c_str(), flags | O_CLOEXEC | ((flags & O_ACCMODE) ? O_CREAT : 0), 0600));
    if (!fd.valid()) return sysError("criu restore: reopen the workload's file " + path, errno);
    argv.insert(argv.end(), {"--inherit-fd", fmt::format("fd[{}]:{}", fd.get(), f.value("key", ""))});
    inherit.push_back(fd.get());
    held.push_back(std::move(fd));
  }
  if (tcp) argv.push_back("--tcp-established");
  if (meta.value("shell_job", false)) argv.push_back("--shell-job");
  if (meta.value("ext_unix_sk", false)) argv.push_back("--ext-unix-sk");

  PhaseReport rep;
  auto cleanup = [&](const std::string& what) -> Error {
    std::vector<pid_t> victims = c->pids().valueOr({});
    pid_t restored = std::atoi(readFile(pidfile).valueOr("0").c_str());
    if (restored > 0) victims.push_back(restored);
    killPids(victims);
    bool empty = waitCgroupEmpty(*c, 5s);
    if (lazyDaemon_ > 0) {
      ::kill(lazyDaemon_, SIGKILL);
      ::waitpid(lazyDaemon_, nullptr, 0);
      lazyDaemon_ = -1;
    }
    return makeError(fmt::format("criu restore of container {} failed ({}): {}; {}", c->id(), what,
                                 criuErrors(work / "restore.log"),
                                 empty ? "everything it started was killed" : "some restored processes remain"),
                     fmt::format("full log: {} (command: {})", (work / "restore.log").string(), joinArgs(argv)));
  };

  if (lazy) {
    fs::path sock = work / "lazy-pages.socket";
    fs::remove(sock);
    RunOptions lo;
    auto d = spawnBackground({bin.path, "lazy-pages", "-D", ctx.imageDir.string(), "-W", work.string(), "-o",
                              "lazy-pages.log", fmt::format("-v{}", optInt(ctx.options, "log-level", 4))},
                             "", lo);
    if (!d.ok()) return d.error();
    lazyDaemon_ = *d;
    auto deadline = Clock::now() + 10s;
    while (!fs::exists(sock) && Clock::now() < deadline && processAlive(lazyDaemon_))
      std::this_thread::sleep_for(1ms);
    if (!fs::exists(sock)) return cleanup("the lazy-pages daemon did not create its socket");
    argv.push_back("--lazy-pages");
  }
  spdlog::debug("criu: {}", joinArgs(argv));
  RunOptions ro;
  ro.timeout = std::chrono::milliseconds(optInt(ctx.options, "timeout-ms", 120000));
  ro.inheritFds = inherit;
  auto t0 = Clock::now();
  auto rr = runCommand(argv, ro);
  double wallMs = msSince(t0);
  if (!rr.ok()) return cleanup(rr.error().text());
  if (!rr->succeeded()) return cleanup(rr->timedOut ? fmt::format("killed after {:.0f} ms", wallMs) : rr->describe());
  ctx.mark("resumed");  // -d: CRIU exits once the restored tree runs
  pid_t pid = std::atoi(readFile(pidfile).valueOr("0").c_str());
  if (pid <= 0 || !processAlive(pid)) return cleanup(fmt::format("no restored init (pidfile says {})", pid));
  c->setInitPid(pid);
  auto inCgroup = c->pids().valueOr({});
  if (std::find(inCgroup.begin(), inCgroup.end(), pid) == inCgroup.end()) {
    // CRIU restores cgroup membership itself (soft mode); this only catches a tree it left out.
    if (auto s = c->addToCgroups(pid); !s.ok()) rep.notes.push_back("could not put the restored init into the cgroups: " + s.error().message);
  }
  rep.phasesMs["criu_restore"] = wallMs;
  rep.engineCpuSeconds = rr->cpuSeconds;
  rep.enginePeakRssKiB = rr->peakRssKiB;
  rep.engineFigures["criu_version"] = probe.version;
  rep.engineFigures["criu_command"] = joinArgs(argv);
  rep.engineFigures["restored_init_pid"] = pid;
  rep.engineFigures["tcp_established"] = {{"enabled", tcp}, {"why", meta.value("tcp_established_why", std::string())}};
  for (const fs::path& d : {work, ctx.imageDir}) {
    auto st = criu::readStatsImage(d, "stats-restore");
    if (st.ok()) {
      rep.engineFigures["stats_restore"] = (*st).value("restore", Json::object());
      break;
    }
  }
  if (lazy) {
    // The workload already runs; the daemon keeps serving its pages until all are in. The wait is
    // reported separately so the restore time above stays what the workload waited for.
    auto t1 = Clock::now();
    int status = waitOrKill(lazyDaemon_, std::chrono::milliseconds(optInt(ctx.options, "lazy-timeout-ms", 60000)));
    rep.phasesMs["lazy_pages_served"] = msSince(t1);
    rep.engineFigures["lazy_daemon_exit"] =
        WIFEXITED(status) ? fmt::format("exit {}", WEXITSTATUS(status)) : fmt::format("signal {}", WTERMSIG(status));
    lazyDaemon_ = -1;
    auto lst = readFile(work / "lazy-pages.log").valueOr("");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      rep.notes.push_back("lazy-pages daemon: " + criuErrors(work / "lazy-pages.log"));
  }
  rep.notes.push_back("criu log: " + (work / "restore.log").string());
  return rep;
}

CRB_REGISTER_ENGINE(CriuEngine, "criu");

}  // namespace crb
