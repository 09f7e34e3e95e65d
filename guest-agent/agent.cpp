// The agent's event loop: UDP echo, the TCP control protocol, program supervision, exec jobs.
// Nothing here may block: a stalled loop would show up as downtime in the prober's trace.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <list>
#include <map>

#include "agent.hpp"

namespace agent {
namespace {

constexpr size_t kMaxRequest = 1 << 20;
constexpr size_t kMaxOutput = 1 << 20;
constexpr size_t kMaxConns = 64;
constexpr size_t kMaxJobs = 32;
constexpr int64_t kMs = 1000000;
constexpr int64_t kConnTimeoutNs = 10000 * kMs;
constexpr int64_t kRestartBackoffNs = 1000 * kMs;
constexpr int64_t kShutdownGraceNs = 3000 * kMs;

int gSelfPipe[2] = {-1, -1};

void onSignal(int sig) {
  int saved = errno;
  char c = sig == SIGCHLD ? 'c' : 't';
  [[maybe_unused]] ssize_t n = ::write(gSelfPipe[1], &c, 1);
  errno = saved;
}

void setNonBlocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

std::string dumpJson(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n"; }

struct Program {
  std::string name;
  std::vector<std::string> argv;
  std::map<std::string, std::string> env;
  bool restart = false;
  int64_t startAtNs = 0;  // when to (re)start; 0 = not scheduled
  pid_t pid = -1;
  int starts = 0;
  int lastStatus = -1;  // wait status of the last exit, -1 = never exited
  std::string error;    // why it could not start
  int execFd = -1;      // exec handshake pipe, open until the exec succeeded or failed
};

struct Conn {
  int fd = -1;
  int id = 0;
  std::string in, out;
  bool waiting = false;  // a job is producing the reply
  int64_t deadlineNs = 0;
};

struct Job {
  pid_t pid = -1;
  int outFd = -1, errFd = -1, execFd = -1;
  std::string out, err, execError;
  std::string program;  // argv[0], for error messages
  bool outTruncated = false, errTruncated = false;
  bool exited = false, timedOut = false;
  int status = 0;
  int64_t startNs = 0, deadlineNs = 0;
  int connId = 0;
  bool isDigest = false;
  Json partial;  // digest: the process part, taken before the command ran
};

class Agent {
 public:
  explicit Agent(const Options& o) : opts_(o) {}
  int run();

 private:
  bool openSockets();
  void loadConfig();
  void buildEnv();
  std::vector<std::string> envFor(const std::map<std::string, std::string>& extra) const;
  pid_t spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env, int outFd,
              int errFd, int& execFd, std::string& error);
  void readExecStatus(int& execFd, std::string& error, const std::string& program);
  void startDuePrograms(int64_t now);
  void reap();
  void onExit(pid_t pid, int status);
  void echo();
  void acceptConns(int64_t now);
  void readConn(Conn& c);
  void writeConn(Conn& c);
  void handleRequest(Conn& c, const std::string& line);
  void reply(Conn& c, const Json& j);
  Json error(const std::string& msg) { return Json{{"ok", false}, {"error", msg}}; }
  Json status() const;
  bool startJob(Conn& c, const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                int64_t timeoutMs, bool isDigest, Json partial);
  void readJob(Job& j, int fd);
  void finishJobs(int64_t now);
  void beginShutdown();
  Conn* connById(int id);

  Options opts_;
  int udp_ = -1, tcp_ = -1;
  int64_t startNs_ = 0;
  std::vector<Program> programs_;
  std::vector<std::string> digestCmd_;
  std::string configError_;
  std::vector<std::string> baseEnv_;
  std::list<Conn> conns_;
  std::list<Job> jobs_;
  int nextConnId_ = 1;
  bool shuttingDown_ = false;
  int64_t shutdownDeadlineNs_ = 0;
  bool killed_ = false;
};

bool Agent::openSockets() {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  if (::inet_pton(AF_INET, opts_.listen.c_str(), &a.sin_addr) != 1) {
    logf("--listen %s is not an IPv4 address", opts_.listen.c_str());
    return false;
  }
  int one = 1;
  udp_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  a.sin_port = htons(static_cast<uint16_t>(opts_.echoPort));
  if (udp_ < 0 || ::bind(udp_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    logf("UDP echo on %s:%d: %s", opts_.listen.c_str(), opts_.echoPort, std::strerror(errno));
    return false;
  }
  tcp_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  a.sin_port = htons(static_cast<uint16_t>(opts_.controlPort));
  if (tcp_ < 0 || ::setsockopt(tcp_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      ::bind(tcp_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(tcp_, 16) != 0) {
    logf("TCP control on %s:%d: %s", opts_.listen.c_str(), opts_.controlPort, std::strerror(errno));
    return false;
  }
  return true;
}

void Agent::loadConfig() {
  std::string text;
  if (!readText(opts_.config, text, 16 << 20)) {
    configError_ = "cannot read " + opts_.config + ": " + std::strerror(errno);
    logf("%s; running without programs", configError_.c_str());
    return;
  }
  try {
    Json j = Json::parse(text);
    int64_t readyNs = monoNs();
    for (auto& p : j.value("programs", Json::array())) {
      Program prog;
      prog.name = p.at("name").get<std::string>();
      prog.argv = p.at("argv").get<std::vector<std::string>>();
      if (prog.argv.empty()) throw std::runtime_error("program " + prog.name + " has an empty argv");
      prog.env = p.value("env", std::map<std::string, std::string>{});
      prog.restart = p.value("restart_on_exit", false);
      prog.startAtNs = readyNs + static_cast<int64_t>(p.value("start_delay_s", 0.0) * 1e9) + 1;
      programs_.push_back(std::move(prog));
    }
    digestCmd_ = j.value("digest", std::vector<std::string>{});
    logf("config %s: %zu program(s)", opts_.config.c_str(), programs_.size());
  } catch (const std::exception& e) {
    programs_.clear();
    configError_ = opts_.config + " is not a valid scenario config: " + e.what();
    logf("%s; running without programs", configError_.c_str());
  }
}

void Agent::buildEnv() {
  std::map<std::string, std::string> env{{"PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
                                         {"HOME", "/root"},
                                         {"TERM", "linux"}};
  // In --no-init mode keep the caller's environment (tests run on the host).
  if (opts_.mode == Mode::NoInit)
    for (char** e = environ; *e; ++e) {
      std::string kv = *e;
      auto eq = kv.find('=');
      if (eq != std::string::npos) env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
  for (auto& [k, v] : env) baseEnv_.push_back(k + "=" + v);
}

std::vector<std::string> Agent::envFor(const std::map<std::string, std::string>& extra) const {
  std::vector<std::string> out;
  for (auto& kv : baseEnv_)
    if (!extra.count(kv.substr(0, kv.find('=')))) out.push_back(kv);
  for (auto& [k, v] : extra) out.push_back(k + "=" + v);
  return out;
}

pid_t Agent::spawn(const std::vector<std::string>& argv, const std::map<std::string, std::string>& env, int outFd,
                   int errFd, int& execFd, std::string& error) {
  std::vector<std::string> envs = envFor(env);
  std::vector<char*> av, ev;
  for (auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
  av.push_back(nullptr);
  for (auto& e : envs) ev.push_back(const_cast<char*>(e.c_str()));
  ev.push_back(nullptr);
  // The exec error travels back over a CLOEXEC pipe so a missing binary is reported to the caller
  // instead of as an anonymous exit 127. The loop reads it like any other fd: waiting here for the
  // exec would stall the echo for the whole fork+exec (tens of ms under TCG).
  int errPipe[2];
  if (::pipe2(errPipe, O_CLOEXEC) != 0) {
    error = std::string("pipe: ") + std::strerror(errno);
    return -1;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    error = std::string("fork: ") + std::strerror(errno);
    ::close(errPipe[0]), ::close(errPipe[1]);
    return -1;
  }
  if (pid == 0) {
    ::setsid();  // own process group: a timeout or shutdown kills the whole group
    // As a plain process (tests) nothing reaps our children if we are killed: take them along.
    if (opts_.mode == Mode::NoInit) ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    int devnull = ::open("/dev/null", O_RDWR);
    if (devnull >= 0) ::dup2(devnull, 0);
    if (outFd >= 0) ::dup2(outFd, 1);
    if (errFd >= 0) ::dup2(errFd, 2);
    if (::chdir("/") != 0) {
    }
    ::execvpe(av[0], av.data(), ev.data());
    int e = errno;
    [[maybe_unused]] ssize_t n = ::write(errPipe[1], &e, sizeof e);
    ::_exit(127);
  }
  ::close(errPipe[1]);
  setNonBlocking(errPipe[0]);
  execFd = errPipe[0];
  return pid;
}

// EOF: the exec succeeded (CLOEXEC closed the pipe); an int: the child's errno from execvpe.
void Agent::readExecStatus(int& execFd, std::string& error, const std::string& program) {
  int childErr = 0;
  ssize_t n = ::read(execFd, &childErr, sizeof childErr);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n == sizeof childErr) error = "exec " + program + ": " + std::strerror(childErr);
  ::close(execFd);
  execFd = -1;
}

void Agent::startDuePrograms(int64_t now) {
  if (shuttingDown_) return;
  for (auto& p : programs_) {
    if (p.pid > 0 || p.startAtNs == 0 || p.startAtNs > now) continue;
    p.startAtNs = 0;
    p.pid = spawn(p.argv, p.env, -1, -1, p.execFd, p.error);
    if (p.pid < 0) {
      logf("program %s: %s", p.name.c_str(), p.error.c_str());
      if (p.restart) p.startAtNs = now + kRestartBackoffNs;
      continue;
    }
    p.starts++;
    p.error.clear();
    logf("program %s: started pid %d", p.name.c_str(), p.pid);
  }
}

void Agent::reap() {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    onExit(pid, status);
  }
}

std::string describeStatus(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("signal ") + strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

void Agent::onExit(pid_t pid, int status) {
  for (auto& p : programs_) {
    if (p.pid != pid) continue;
    p.pid = -1;
    p.lastStatus = status;
    logf("program %s (pid %d) ended: %s%s", p.name.c_str(), pid, describeStatus(status).c_str(),
         p.restart && !shuttingDown_ ? ", restarting in 1 s" : "");
    if (p.restart && !shuttingDown_) p.startAtNs = monoNs() + kRestartBackoffNs;
    return;
  }
  for (auto& j : jobs_) {
    if (j.pid != pid) continue;
    j.exited = true;
    j.status = status;
    return;
  }
  // Anything else is an orphan re-parented to us (we are PID 1): reaping it is all we owe it.
}

void Agent::echo() {
  char buf[65536];
  for (int i = 0; i < 256; ++i) {
    sockaddr_storage from{};
    socklen_t len = sizeof from;
    ssize_t n = ::recvfrom(udp_, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
    if (n < 0) return;
    ::sendto(udp_, buf, static_cast<size_t>(n), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), len);
  }
}

void Agent::acceptConns(int64_t now) {
  while (conns_.size() < kMaxConns) {
    int fd = ::accept4(tcp_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    Conn c;
    c.fd = fd;
    c.id = nextConnId_++;
    c.deadlineNs = now + kConnTimeoutNs;
    conns_.push_back(std::move(c));
  }
}

void Agent::readConn(Conn& c) {
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(c.fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      ::close(c.fd), c.fd = -1;
      return;
    }
    if (n == 0) {  // peer closed without a full line: treat what we have as the request
      if (c.in.empty()) {
        ::close(c.fd), c.fd = -1;
      } else {
        std::string line = std::move(c.in);
        c.in.clear();
        handleRequest(c, line);
      }
      return;
    }
    c.in.append(buf, static_cast<size_t>(n));
    auto nl = c.in.find('\n');
    if (nl != std::string::npos) {
      std::string line = c.in.substr(0, nl);
      c.in.clear();
      handleRequest(c, line);
      return;
    }
    if (c.in.size() > kMaxRequest) {
      c.in.clear();
      reply(c, error("request longer than 1 MiB without a newline; send one JSON object per line"));
      return;
    }
  }
}

void Agent::reply(Conn& c, const Json& j) {
  c.waiting = false;
  c.out = dumpJson(j);
  c.deadlineNs = monoNs() + kConnTimeoutNs;
  writeConn(c);
}

void Agent::writeConn(Conn& c) {
  while (!c.out.empty() && c.fd >= 0) {
    ssize_t n = ::write(c.fd, c.out.data(), c.out.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      break;
    }
    c.out.erase(0, static_cast<size_t>(n));
  }
  // One request per connection: closing keeps no established sockets around for a checkpoint.
  if (c.fd >= 0) ::close(c.fd);
  c.fd = -1;
}

Json Agent::status() const {
  Json progs = Json::array();
  for (auto& p : programs_) {
    Json j{{"name", p.name}, {"pid", p.pid > 0 ? Json(p.pid) : Json(nullptr)}, {"running", p.pid > 0},
           {"starts", p.starts}, {"restart", p.restart}};
    j["exit"] = nullptr;
    if (p.lastStatus >= 0) {
      if (WIFEXITED(p.lastStatus)) j["exit"] = WEXITSTATUS(p.lastStatus);
      if (WIFSIGNALED(p.lastStatus)) j["signal"] = WTERMSIG(p.lastStatus);
      j["last_exit"] = describeStatus(p.lastStatus);
    }
    if (!p.error.empty()) j["error"] = p.error;
    progs.push_back(j);
  }
  Json s{{"ok", true}, {"programs", progs}, {"uptime_ms", (monoNs() - startNs_) / kMs}};
  if (!configError_.empty()) s["config_error"] = configError_;
  return s;
}

void Agent::handleRequest(Conn& c, const std::string& line) {
  Json req;
  try {
    req = Json::parse(line);
  } catch (const std::exception& e) {
    reply(c, error(std::string("request is not valid JSON (") + e.what() + "); send one object per line, e.g. {\"op\":\"ping\"}"));
    return;
  }
  if (!req.is_object() || !req.contains("op") || !req["op"].is_string()) {
    reply(c, error("request has no \"op\" string; expected {\"op\":\"ping|status|digest|exec|shutdown\", ...}"));
    return;
  }
  std::string op = req["op"];
  if (opts_.verbose) logf("request %s", op.c_str());
  if (op == "ping") {
    const char* mode = opts_.mode == Mode::Vm ? "vm" : opts_.mode == Mode::Container ? "container" : "no-init";
    // wall_ns lets the host measure the guest's CLOCK_REALTIME against its own within one round trip.
    reply(c, Json{{"ok", true}, {"pid", ::getpid()}, {"uptime_ms", (monoNs() - startNs_) / kMs}, {"mode", mode},
                  {"wall_ns", wallNs()}});
  } else if (op == "status") {
    reply(c, status());
  } else if (op == "digest") {
    Json partial{{"ok", true}, {"agent_pid", ::getpid()}};
    partial["processes"] = processDigest(opts_.mode == Mode::NoInit ? ::getpid() : 0);
    if (digestCmd_.empty()) {
      partial["workload"] = nullptr;
      partial["wall_ns"] = wallNs();
      partial["mono_ns"] = monoNs();
      reply(c, partial);
    } else {
      startJob(c, digestCmd_, {}, 10000, true, std::move(partial));
    }
  } else if (op == "exec") {
    std::vector<std::string> argv;
    std::map<std::string, std::string> env;
    int64_t timeoutMs = 10000;
    try {
      argv = req.at("argv").get<std::vector<std::string>>();
      if (req.contains("timeout_ms")) timeoutMs = req["timeout_ms"].get<int64_t>();
      if (req.contains("env")) env = req["env"].get<std::map<std::string, std::string>>();
    } catch (const std::exception&) {
      reply(c, error("exec needs \"argv\": [strings], optional \"timeout_ms\": integer, \"env\": {string: string}"));
      return;
    }
    if (argv.empty() || argv[0].empty()) {
      reply(c, error("exec \"argv\" is empty; give at least the program"));
      return;
    }
    if (timeoutMs < 1 || timeoutMs > 600000) {
      reply(c, error("exec \"timeout_ms\" must be 1..600000"));
      return;
    }
    startJob(c, argv, env, timeoutMs, false, {});
  } else if (op == "shutdown") {
    reply(c, Json{{"ok", true}});
    beginShutdown();
  } else {
    reply(c, error("unknown op '" + op + "'; expected ping, status, digest, exec or shutdown"));
  }
}

bool Agent::startJob(Conn& c, const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
                     int64_t timeoutMs, bool isDigest, Json partial) {
  if (jobs_.size() >= kMaxJobs) {
    reply(c, error("too many commands running (32); retry when they finish"));
    return false;
  }
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    reply(c, error(std::string("pipe: ") + std::strerror(errno)));
    return false;
  }
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]), ::close(out[1]);
    reply(c, error(std::string("pipe: ") + std::strerror(errno)));
    return false;
  }
  std::string spawnError;
  int64_t startNs = monoNs();
  int execFd = -1;
  pid_t pid = spawn(argv, env, out[1], err[1], execFd, spawnError);
  ::close(out[1]), ::close(err[1]);
  if (pid < 0) {
    ::close(out[0]), ::close(err[0]);
    reply(c, error(spawnError));
    return false;
  }
  setNonBlocking(out[0]);
  setNonBlocking(err[0]);
  Job j;
  j.pid = pid;
  j.outFd = out[0];
  j.errFd = err[0];
  j.execFd = execFd;
  j.program = argv[0];
  j.startNs = startNs;
  j.deadlineNs = j.startNs + timeoutMs * kMs;
  j.connId = c.id;
  j.isDigest = isDigest;
  j.partial = std::move(partial);
  c.waiting = true;
  c.deadlineNs = j.deadlineNs + kConnTimeoutNs;
  jobs_.push_back(std::move(j));
  return true;
}

void Agent::readJob(Job& j, int fd) {
  std::string& buf = fd == j.outFd ? j.out : j.err;
  bool& truncated = fd == j.outFd ? j.outTruncated : j.errTruncated;
  char tmp[16384];
  for (;;) {
    ssize_t n = ::read(fd, tmp, sizeof tmp);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
      ::close(fd);
      (fd == j.outFd ? j.outFd : j.errFd) = -1;
      return;
    }
    size_t room = kMaxOutput > buf.size() ? kMaxOutput - buf.size() : 0;
    buf.append(tmp, std::min(room, static_cast<size_t>(n)));
    if (static_cast<size_t>(n) > room) truncated = true;  // keep draining so the child never blocks
  }
}

Conn* Agent::connById(int id) {
  for (auto& c : conns_)
    if (c.id == id) return &c;
  return nullptr;
}

void Agent::finishJobs(int64_t now) {
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    Job& j = *it;
    if (!j.exited && !j.timedOut && now >= j.deadlineNs) {
      j.timedOut = true;
      ::kill(-j.pid, SIGKILL);
      ::kill(j.pid, SIGKILL);
    }
    // A timed-out job's grandchildren may hold the pipes open: do not wait for EOF then.
    bool pipesDone = (j.outFd < 0 && j.errFd < 0 && j.execFd < 0) || j.timedOut;
    if (!(j.exited && pipesDone)) {
      ++it;
      continue;
    }
    if (j.outFd >= 0) ::close(j.outFd);
    if (j.errFd >= 0) ::close(j.errFd);
    if (j.execFd >= 0) ::close(j.execFd);
    Json r;
    if (!j.execError.empty() && !j.isDigest) {
      r = error(j.execError);
    } else if (j.isDigest) {
      r = std::move(j.partial);
      r["workload"] = j.out;
      r["workload_exit"] = WIFEXITED(j.status) ? Json(WEXITSTATUS(j.status)) : Json(nullptr);
      if (j.timedOut) r["workload_error"] = "digest command timed out after 10 s";
      else if (!j.execError.empty())
        r["workload_error"] = j.execError;
      else if (!(WIFEXITED(j.status) && WEXITSTATUS(j.status) == 0))
        r["workload_error"] = describeStatus(j.status) + ": " + j.err.substr(0, 2000);
      r["wall_ns"] = wallNs();
      r["mono_ns"] = monoNs();
    } else {
      r = Json{{"ok", true}, {"stdout", j.out}, {"stderr", j.err}, {"timed_out", j.timedOut},
               {"duration_ms", static_cast<double>(monoNs() - j.startNs) / 1e6}};
      r["exit"] = WIFEXITED(j.status) ? Json(WEXITSTATUS(j.status)) : Json(nullptr);
      if (WIFSIGNALED(j.status)) r["signal"] = WTERMSIG(j.status);
      if (j.outTruncated || j.errTruncated) r["truncated"] = true;
    }
    if (Conn* c = connById(j.connId); c && c->fd >= 0) reply(*c, r);
    it = jobs_.erase(it);
  }
}

void Agent::beginShutdown() {
  if (shuttingDown_) return;
  shuttingDown_ = true;
  shutdownDeadlineNs_ = monoNs() + kShutdownGraceNs;
  logf("shutting down: SIGTERM to the workload");
  for (auto& p : programs_) {
    p.startAtNs = 0;
    if (p.pid > 0) ::kill(-p.pid, SIGTERM), ::kill(p.pid, SIGTERM);
  }
}

int Agent::run() {
  startNs_ = monoNs();
  if (::pipe2(gSelfPipe, O_NONBLOCK | O_CLOEXEC) != 0) return 1;
  struct sigaction sa {};
  sa.sa_handler = onSignal;
  sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
  ::sigaction(SIGCHLD, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  if (!openSockets()) return 1;
  buildEnv();
  loadConfig();
  logf("ready: UDP echo %s:%d, control %s:%d", opts_.listen.c_str(), opts_.echoPort, opts_.listen.c_str(),
       opts_.controlPort);

  std::vector<pollfd> pfds;
  for (;;) {
    int64_t now = monoNs();
    startDuePrograms(now);
    finishJobs(now);
    for (auto it = conns_.begin(); it != conns_.end();) {
      if (it->fd >= 0 && now >= it->deadlineNs && !it->waiting) ::close(it->fd), it->fd = -1;
      if (it->fd < 0 && !it->waiting) it = conns_.erase(it);
      else ++it;
    }
    if (shuttingDown_) {
      bool alive = false;
      for (auto& p : programs_) alive |= p.pid > 0;
      if (!alive && conns_.empty()) break;
      if (now >= shutdownDeadlineNs_ && !killed_) {
        killed_ = true;
        for (auto& p : programs_)
          if (p.pid > 0) ::kill(-p.pid, SIGKILL), ::kill(p.pid, SIGKILL);
      }
      if (now >= shutdownDeadlineNs_ + kShutdownGraceNs) break;
    }

    int64_t next = now + 60000 * kMs;
    for (auto& p : programs_)
      if (p.startAtNs) next = std::min(next, p.startAtNs);
    for (auto& j : jobs_) next = std::min(next, j.deadlineNs);
    for (auto& c : conns_) next = std::min(next, c.deadlineNs);
    if (shuttingDown_) next = std::min(next, now + 50 * kMs);

    pfds.clear();
    pfds.push_back({udp_, POLLIN, 0});
    pfds.push_back({gSelfPipe[0], POLLIN, 0});
    pfds.push_back({tcp_, static_cast<short>(conns_.size() < kMaxConns ? POLLIN : 0), 0});
    for (auto& c : conns_)
      if (c.fd >= 0 && !c.waiting) pfds.push_back({c.fd, static_cast<short>(c.out.empty() ? POLLIN : POLLOUT), 0});
    for (auto& j : jobs_) {
      if (j.outFd >= 0) pfds.push_back({j.outFd, POLLIN, 0});
      if (j.errFd >= 0) pfds.push_back({j.errFd, POLLIN, 0});
      if (j.execFd >= 0) pfds.push_back({j.execFd, POLLIN, 0});
    }
    for (auto& p : programs_)
      if (p.execFd >= 0) pfds.push_back({p.execFd, POLLIN, 0});
    int timeoutMs = static_cast<int>(std::max<int64_t>(0, (next - now + kMs - 1) / kMs));
    int n = ::poll(pfds.data(), pfds.size(), timeoutMs);
    if (n < 0 && errno != EINTR) {
      logf("poll: %s", std::strerror(errno));
      return 1;
    }
    if (n <= 0) continue;
    // The echo goes first: its latency is the measurement.
    if (pfds[0].revents) echo();
    if (pfds[1].revents) {
      char buf[64];
      ssize_t r;
      bool term = false;
      while ((r = ::read(gSelfPipe[0], buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < r; ++i) term |= buf[i] == 't';
      reap();
      if (term) beginShutdown();
    }
    now = monoNs();
    if (pfds[2].revents) acceptConns(now);
    std::map<int, short> ready;
    for (size_t i = 3; i < pfds.size(); ++i)
      if (pfds[i].revents) ready[pfds[i].fd] = pfds[i].revents;
    for (auto& c : conns_) {
      if (c.fd < 0 || c.waiting || !ready.count(c.fd)) continue;
      if (c.out.empty()) readConn(c);
      else writeConn(c);
    }
    for (auto& j : jobs_) {
      if (j.outFd >= 0 && ready.count(j.outFd)) readJob(j, j.outFd);
      if (j.errFd >= 0 && ready.count(j.errFd)) readJob(j, j.errFd);
      if (j.execFd >= 0 && ready.count(j.execFd)) readExecStatus(j.execFd, j.execError, j.program);
    }
    for (auto& p : programs_)
      if (p.execFd >= 0 && ready.count(p.execFd)) {
        readExecStatus(p.execFd, p.error, p.argv[0]);
        if (!p.error.empty()) logf("program %s: %s", p.name.c_str(), p.error.c_str());
      }
  }
  logf("stopped");
  return 0;
}

}  // namespace

int runAgent(const Options& opts) {
  Agent a(opts);
  int rc = a.run();
  if (opts.mode == Mode::Vm) {
    // PID 1 must not exit in the VM (the kernel would panic): power off, which ends QEMU.
    ::sync();
    ::reboot(RB_POWER_OFF);
  }
  return rc;
}

}  // namespace agent
