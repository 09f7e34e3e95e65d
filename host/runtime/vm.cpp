#include "runtime/vm.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"
#include "kvm/accel.hpp"

namespace crb {

namespace {

using std::chrono::milliseconds;

Result<int> envPort(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  long p = std::strtol(v, &end, 10);
  if (*end || p <= 0 || p > 65535)
    return makeError(fmt::format("${} = '{}' is not a port number", name, v), "use 1-65535 or unset it");
  return static_cast<int>(p);
}

// Bind 127.0.0.1:port (0 = any); returns the bound port, or an errno.
Result<int> bindLoopback(int type, int port, Fd* keep = nullptr) {
  Fd s(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
  if (!s.valid()) return sysError("socket", errno);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    int e = errno;
    return Error{std::strerror(e), "", e};
  }
  socklen_t len = sizeof a;
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
  if (keep) *keep = std::move(s);
  return static_cast<int>(ntohs(a.sin_port));
}

std::string tailOfFile(const fs::path& p, size_t lines) {
  auto data = readFile(p);
  if (!data.ok()) return {};
  std::string s = *data;
  // Serial consoles carry escape sequences and CRs; keep printable text.
  std::string clean;
  for (char c : s)
    if (c == '\n' || (c >= 32 && c < 127)) clean.push_back(c);
  std::vector<std::string> all;
  std::stringstream ss(clean);
  for (std::string l; std::getline(ss, l);)
    if (!l.empty()) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); i++) out += all[i] + "\n";
  return out;
}

std::string newId() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  return fmt::format("vm-{}-{}-{:04x}", ::getpid(), counter++, rd() & 0xffff);
}

}  // namespace

bool QemuInstance::reap() {
  if (exited || pid <= 0) return true;
  int st = 0;
  pid_t w = ::waitpid(pid, &st, WNOHANG);
  if (w == pid || (w < 0 && errno == ECHILD)) {
    exited = true;
    waitStatus = st;
    return true;
  }
  return false;
}

Result<std::string> findQemuBinary() {
  const char* env = std::getenv("CRBENCH_QEMU");
  std::string bin = env && *env ? env : "qemu-system-x86_64";
  std::string hint =
      "install QEMU: run scripts/setup.sh (qemu-system-x86 from bookworm-backports), or set "
      "$CRBENCH_QEMU to a qemu-system-x86_64 binary";
  if (bin.find('/') != std::string::npos) {
    if (::access(bin.c_str(), X_OK) != 0)
      return makeError(fmt::format("QEMU binary {} is missing or not executable", bin), hint);
    return bin;
  }
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    fs::path cand = fs::path(dir.empty() ? "." : dir) / bin;
    if (::access(cand.c_str(), X_OK) == 0) return cand.string();
  }
  return makeError(fmt::format("QEMU ({}) is not installed: not found in PATH", bin), hint);
}

Result<VmPorts> chooseVmPorts() {
  VmPorts p;
  CRB_ASSIGN(p.udp, envPort("CRBENCH_VM_UDP_PORT"));
  CRB_ASSIGN(p.tcp, envPort("CRBENCH_VM_TCP_PORT"));
  p.chosenByUs = p.udp == 0 && p.tcp == 0;
  struct Want {
    int type;
    int* port;
    const char* proto;
    const char* env;
  } wants[] = {{SOCK_DGRAM, &p.udp, "UDP", "CRBENCH_VM_UDP_PORT"},
               {SOCK_STREAM, &p.tcp, "TCP", "CRBENCH_VM_TCP_PORT"}};
  for (auto& w : wants) {
    auto r = bindLoopback(w.type, *w.port);
    if (!r.ok()) {
      if (*w.port == 0) return makeError(fmt::format("no free {} port on 127.0.0.1: {}", w.proto, r.error().message));
      return makeError(fmt::format("{} port 127.0.0.1:{} (from ${}) is busy: {}", w.proto, *w.port, w.env,
                                   r.error().message),
                       fmt::format("choose another port or unset ${} to let crbench pick a free one", w.env));
    }
    // The kernel's choice is free now; QEMU binds it a moment later. A race with another program
    // is caught when QEMU fails to set up the forward, and start() then retries with new ports.
    *w.port = *r;
  }
  return p;
}

Result<std::unique_ptr<VmSandbox>> VmSandbox::start(const Scenario& scenario, const SandboxOptions& opts) {
  std::unique_ptr<VmSandbox> vm(new VmSandbox());
  vm->id_ = opts.id.empty() ? newId() : opts.id;
  vm->scenario_ = scenario;
  vm->opts_ = opts;
  CRB_ASSIGN(vm->qemuBinary_, findQemuBinary());
  if (opts.accel == "kvm" || opts.accel == "tcg") {
    vm->accel_ = opts.accel;
    vm->accelReason_ = "requested by the caller";
  } else if (!opts.accel.empty()) {
    return makeError(fmt::format("unknown accelerator '{}'", opts.accel), "use kvm, tcg, or leave it empty (auto)");
  } else {
    AccelChoice c = chooseAccelerator();
    vm->accel_ = c.accel;
    vm->accelReason_ = c.reason;
  }
  CRB_ASSIGN(vm->boot_, prepareVmBootFiles(scenario));
  CRB_ASSIGN(VmPorts ports, chooseVmPorts());
  vm->udpPort_ = ports.udp;
  vm->tcpPort_ = ports.tcp;
  vm->portsChosenByUs_ = ports.chosenByUs;

  vm->runDir_ = runtimeDir() / vm->id_;
  if (opts.flavor == "vm-file-ram") vm->ramFile_ = vm->runDir_ / "guest-ram";
  CRB_CHECK(makeDirs(runtimeDir(), 0755));
  std::error_code ec;
  if (fs::exists(vm->runDir_, ec))
    return makeError(fmt::format("runtime directory {} already exists", vm->runDir_.string()),
                     "another sandbox uses this id; choose another id or remove the stale directory");
  if (::mkdir(vm->runDir_.c_str(), 0700) != 0) return sysError("create " + vm->runDir_.string(), errno);
  ::chmod(vm->runDir_.c_str(), 0700);  // umask-proof

  auto t0 = Clock::now();
  Result<QemuInstance*> inst = makeError("not started");
  // A port the kernel called free can be taken before QEMU binds it: retry with fresh ones.
  for (int attempt = 0; attempt < 3; attempt++) {
    t0 = Clock::now();
    QemuLaunch first;
    first.ramFile = vm->ramFile_;
    inst = vm->launch(first);
    if (inst.ok() || !vm->portsChosenByUs_ ||
        inst.error().message.find("host forwarding") == std::string::npos)
      break;
    CRB_ASSIGN(VmPorts again, chooseVmPorts());
    vm->udpPort_ = again.udp;
    vm->tcpPort_ = again.tcp;
  }
  if (!inst.ok()) {
    Error e = inst.error();
    (void)vm->stop();
    return e;
  }
  vm->current_ = *inst;
  vm->qemuVersion_ = vm->current_->qmp->qemuVersion();
  milliseconds bootTimeout(120000);
  if (const char* t = std::getenv("CRBENCH_VM_BOOT_TIMEOUT_S"); t && *t) bootTimeout = milliseconds(std::atol(t) * 1000);
  auto waited = vm->waitForAgent(bootTimeout);
  if (!waited.ok()) {
    Error e = waited.error().context(fmt::format("VM {} did not boot", vm->id_));
    (void)vm->stop();
    return e;
  }
  vm->bootMs_ = msSince(t0);
  spdlog::info("vm {}: booted in {:.0f} ms ({}; QEMU {}; ports udp {} tcp {})", vm->id_, vm->bootMs_,
               vm->accel_, vm->qemuVersion_, vm->udpPort_, vm->tcpPort_);
  return vm;
}

VmSandbox::~VmSandbox() { (void)stop(); }

std::vector<std::string> VmSandbox::buildArgv(const QemuLaunch& spec) const {
  fs::path qmp = runDir_ / fmt::format("qmp-{}.sock", spec.tag);
  fs::path serial = runDir_ / fmt::format("serial-{}.log", spec.tag);
  int mem = scenario_.vmMemoryMiB;
  std::string machine = "pc";
  std::vector<std::string> a = {qemuBinary_, "-name", fmt::format("crbench-{},debug-threads=on", id_),
                                "-nodefaults", "-no-user-config", "-display", "none",
                                "-accel", accel_,
                                "-m", fmt::format("{}M", mem),
                                "-smp", std::to_string(scenario_.vmCpus)};
  if (!spec.ramFile.empty()) {
    a.insert(a.end(), {"-object", fmt::format("memory-backend-file,id=crbram,size={}M,mem-path={},share={}",
                                              mem, spec.ramFile.string(), spec.ramShared ? "on" : "off")});
    machine += ",memory-backend=crbram";
  }
  a.insert(a.end(), {"-machine", machine,
                     "-kernel", boot_.kernel.string(),
                     "-initrd", boot_.initramfs.string(),
                     "-append", boot_.cmdline,
                     "-serial", "file:" + serial.string(),
                     "-chardev", fmt::format("socket,id=qmp,path={},server=on,wait=off", qmp.string()),
                     "-mon", "chardev=qmp,mode=control",
                     "-no-reboot"});
  // restrict=off: restrict=on makes slirp drop the replies of the UDP echo. No vhost here
  // (vhost=on aborts QEMU on this kind of host). romfile= skips the iPXE option ROM.
  std::string netdev = "user,id=n0,restrict=off";
  if (spec.hostForwards)
    netdev += fmt::format(",hostfwd=udp:127.0.0.1:{}-:{},hostfwd=tcp:127.0.0.1:{}-:{}", udpPort_,
                          kAgentEchoPort, tcpPort_, kAgentControlPort);
  a.insert(a.end(), {"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="});
  a.insert(a.end(), spec.extraArgs.begin(), spec.extraArgs.end());
  return a;
}

Result<QemuInstance*> VmSandbox::launch(const QemuLaunch& spec) {
  if (stopped_) return makeError(fmt::format("VM {} is stopped", id_));
  auto inst = std::make_unique<QemuInstance>();
  inst->tag = spec.tag;
  for (auto& i : instances_)
    if (i->tag == spec.tag) inst->tag = fmt::format("{}-{}", spec.tag, ++launches_);
  QemuLaunch s = spec;
  s.tag = inst->tag;
  inst->argv = buildArgv(s);
  inst->qmpSocket = runDir_ / fmt::format("qmp-{}.sock", inst->tag);
  inst->serialLog = runDir_ / fmt::format("serial-{}.log", inst->tag);
  inst->stderrLog = runDir_ / fmt::format("qemu-{}.log", inst->tag);
  std::error_code ec;
  fs::remove(inst->qmpSocket, ec);
  spdlog::debug("vm {}: {}", id_, joinArgs(inst->argv));
  auto t0 = Clock::now();
  CRB_ASSIGN(inst->pid, spawnBackground(inst->argv, inst->stderrLog.string()));
  QemuInstance* raw = inst.get();
  instances_.push_back(std::move(inst));

  auto fail = [&](Error e) -> Result<QemuInstance*> {
    std::string tail = logTail(*raw, 6);
    kill(raw);
    if (!tail.empty()) e.message += "\n" + tail;
    return e;
  };
  // Wait for the socket while watching the process: a QEMU that cannot start (bad option, busy
  // port) exits within milliseconds and its stderr says why.
  auto deadline = Clock::now() + milliseconds(20000);
  while (!fs::exists(raw->qmpSocket, ec)) {
    if (raw->reap()) {
      std::string err = tailOfFile(raw->stderrLog, 4);
      while (!err.empty() && err.back() == '\n') err.pop_back();
      return fail(makeError(fmt::format("QEMU ({}) exited at start-up: {}", raw->tag,
                                        err.empty() ? "no message" : err),
                            err.find("host forwarding") != std::string::npos
                                ? "a forwarded port is taken; choose other ports"
                                : "see the QEMU command line with --verbose"));
    }
    if (Clock::now() > deadline)
      return fail(makeError(fmt::format("QEMU ({}) did not create its QMP socket {} within 20 s",
                                        raw->tag, raw->qmpSocket.string())));
    std::this_thread::sleep_for(milliseconds(2));
  }
  // The directory is 0700 already; the socket itself is made private to root as well.
  ::chmod(raw->qmpSocket.c_str(), 0600);
  auto q = qmp::QmpClient::connect(raw->qmpSocket, milliseconds(15000));
  if (!q.ok()) return fail(q.error());
  raw->qmp = std::move(*q);
  raw->spawnToQmpMs = msSince(t0);
  return raw;
}

void VmSandbox::kill(QemuInstance* inst) {
  if (!inst) return;
  if (inst->qmp) inst->qmp->close();
  if (!inst->reap()) {
    ::kill(inst->pid, SIGKILL);
    int st = 0;
    ::waitpid(inst->pid, &st, 0);
    inst->exited = true;
    inst->waitStatus = st;
  }
  std::error_code ec;
  fs::remove(inst->qmpSocket, ec);
  if (current_ == inst) current_ = nullptr;
}

Status VmSandbox::adopt(QemuInstance* inst) {
  if (!inst) return makeError("adopt: no QEMU given");
  if (current_ && current_ != inst) kill(current_);
  current_ = inst;
  return success();
}

Result<QemuInstance*> VmSandbox::relaunch(const std::vector<std::string>& extraArgs, const std::string& tag) {
  QemuLaunch spec;
  spec.tag = tag;
  spec.extraArgs = extraArgs;
  return relaunch(std::move(spec));
}

Result<QemuInstance*> VmSandbox::relaunch(QemuLaunch spec) {
  // The new QEMU binds the same forwarded ports, so the old one has to be gone first.
  if (current_) kill(current_);
  CRB_ASSIGN(QemuInstance * inst, launch(spec));
  current_ = inst;
  return inst;
}

Status VmSandbox::moveHostForwards(QemuInstance& from, QemuInstance& to) {
  // HMP answers in prose: hostfwd_remove says "... removed" on success, hostfwd_add says nothing.
  auto hmp = [](QemuInstance& q, const std::string& line, bool expectRemoved) -> Status {
    if (!q.qmp) return makeError(fmt::format("QEMU ({}) has no QMP connection", q.tag));
    CRB_ASSIGN(Json out, q.qmp->execute("human-monitor-command", Json{{"command-line", line}}, milliseconds(5000)));
    std::string text = out.is_string() ? out.get<std::string>() : "";
    bool blank = text.find_first_not_of(" \r\n") == std::string::npos;
    bool ok = expectRemoved ? text.find("removed") != std::string::npos : blank;
    if (!ok) return makeError(fmt::format("QEMU ({}) '{}': {}", q.tag, line, blank ? "no confirmation" : text));
    return success();
  };
  CRB_CHECK(hmp(from, fmt::format("hostfwd_remove n0 udp:127.0.0.1:{}", udpPort_), true));
  CRB_CHECK(hmp(from, fmt::format("hostfwd_remove n0 tcp:127.0.0.1:{}", tcpPort_), true));
  CRB_CHECK(hmp(to, fmt::format("hostfwd_add n0 udp:127.0.0.1:{}-:{}", udpPort_, kAgentEchoPort), false));
  CRB_CHECK(hmp(to, fmt::format("hostfwd_add n0 tcp:127.0.0.1:{}-:{}", tcpPort_, kAgentControlPort), false));
  return success();
}

static Result<Fd> connectLoopback(int type, int port, milliseconds timeout) {
  Fd s(::socket(AF_INET, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s.valid()) return sysError("socket", errno);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (errno != EINPROGRESS) return sysError(fmt::format("connect to 127.0.0.1:{}", port), errno);
    pollfd p{s.get(), POLLOUT, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1)
      return makeError(fmt::format("connect to 127.0.0.1:{} timed out", port));
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return sysError(fmt::format("connect to 127.0.0.1:{}", port), err);
  }
  int fl = ::fcntl(s.get(), F_GETFL);
  ::fcntl(s.get(), F_SETFL, fl & ~O_NONBLOCK);
  return s;
}

Result<Fd> VmSandbox::openProbeSocket() { return connectLoopback(SOCK_DGRAM, udpPort_, milliseconds(1000)); }
Result<Fd> VmSandbox::openControlSocket() { return connectLoopback(SOCK_STREAM, tcpPort_, milliseconds(2000)); }

Status VmSandbox::pingAgentOnce(milliseconds timeout) {
  // slirp accepts the host side of a forwarded TCP connection before the guest listens, then
  // closes it: only a JSON answer counts.
  CRB_ASSIGN(Fd s, openControlSocket());
  std::string req = "{\"op\":\"ping\"}\n";
  if (::send(s.get(), req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size()))
    return sysError("send ping", errno);
  std::string line;
  auto deadline = Clock::now() + timeout;
  char buf[4096];
  while (line.find('\n') == std::string::npos) {
    int left = static_cast<int>(std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count());
    if (left <= 0) return makeError("no answer to ping");
    pollfd p{s.get(), POLLIN, 0};
    if (::poll(&p, 1, left) != 1) return makeError("no answer to ping");
    ssize_t n = ::recv(s.get(), buf, sizeof buf, 0);
    if (n <= 0) return makeError("connection closed before an answer");
    line.append(buf, static_cast<size_t>(n));
  }
  Json j = Json::parse(line.substr(0, line.find('\n')), nullptr, false);
  if (j.is_discarded() || !j.value("ok", false)) return makeError("unexpected answer to ping: " + line);
  return success();
}

Result<double> VmSandbox::waitForAgent(milliseconds timeout) {
  auto t0 = Clock::now();
  auto deadline = t0 + timeout;
  std::string last = "no attempt";
  while (Clock::now() < deadline) {
    if (!current_) return makeError(fmt::format("VM {} has no running QEMU", id_));
    if (current_->reap())
      return makeError(fmt::format("QEMU ({}) exited while crbench waited for the guest agent:\n{}",
                                   current_->tag, logTail(*current_)),
                       "see the serial console above; the guest kernel or /init failed");
    auto st = pingAgentOnce(milliseconds(1000));
    if (st.ok()) return msSince(t0);
    last = st.error().message;
    std::this_thread::sleep_for(milliseconds(50));
  }
  return makeError(fmt::format("the guest agent did not answer on 127.0.0.1:{} within {:.0f} s ({}); serial console:\n{}",
                               tcpPort_, timeout.count() / 1000.0, last, current_ ? logTail(*current_) : ""),
                   "raise $CRBENCH_VM_BOOT_TIMEOUT_S on a slow host, or check the agent in the serial log");
}

std::string VmSandbox::logTail(const QemuInstance& inst, size_t lines) const {
  std::string s;
  std::string serial = tailOfFile(inst.serialLog, lines);
  std::string err = tailOfFile(inst.stderrLog, 4);
  if (!serial.empty()) s += "[serial " + inst.serialLog.string() + "]\n" + serial;
  if (!err.empty()) s += (s.empty() ? "" : "\n") + std::string("[qemu stderr]\n") + err;
  if (s.empty()) s = "(serial console and QEMU stderr are empty: the kernel stopped before its console came up)";
  return s;
}

Json VmSandbox::describe() const {
  Json j;
  j["runtime"] = "vm";
  j["id"] = id_;
  j["accelerator"] = accel_;
  j["accelerator_reason"] = accelReason_;
  j["qemu_binary"] = qemuBinary_;
  j["qemu_version"] = qemuVersion_;
  j["boot_ms"] = bootMs_;
  j["memory_mib"] = scenario_.vmMemoryMiB;
  j["cpus"] = scenario_.vmCpus;
  j["kernel"] = boot_.kernel.string();
  j["kernel_release"] = boot_.kernelRelease;
  j["kernel_cmdline"] = boot_.cmdline;
  j["initramfs"] = boot_.initramfs.string();
  j["initramfs_bytes"] = boot_.initramfsBytes;
  j["initramfs_from_cache"] = boot_.initramfsFromCache;
  j["boot_files_seconds"] = boot_.buildSeconds;
  j["modules"] = boot_.modules;
  j["image_hash"] = boot_.imageHash;
  j["ports"] = {{"udp_echo", udpPort_}, {"tcp_control", tcpPort_}};
  j["run_dir"] = runDir_.string();
  if (!ramFile_.empty()) j["ram_file"] = ramFile_.string();
  j["runtime_dir"] = runDir_.string();
  if (current_) {
    j["qemu_pid"] = current_->pid;
    j["qemu_tag"] = current_->tag;
    j["qmp_socket"] = current_->qmpSocket.string();
    j["serial_log"] = current_->serialLog.string();
    j["qemu_argv"] = current_->argv;
    j["qemu_spawn_to_qmp_ms"] = current_->spawnToQmpMs;
    // Resident memory of the QEMU process now (the guest's RAM as far as it has been touched).
    if (auto st = readFile(fmt::format("/proc/{}/status", current_->pid)); st.ok()) {
      auto pos = st->find("VmRSS:");
      if (pos != std::string::npos) j["qemu_rss_kib"] = std::atol(st->c_str() + pos + 6);
    }
  }
  return j;
}

Status VmSandbox::stop() {
  if (stopped_) return success();
  stopped_ = true;
  for (auto& inst : instances_) kill(inst.get());
  current_ = nullptr;
  std::error_code ec;
  if (!runDir_.empty()) fs::remove_all(runDir_, ec);
  if (ec) return sysError("remove " + runDir_.string(), ec.value());
  return success();
}

CRB_REGISTER_RUNTIME(vm, "vm", [](const Scenario& s, const SandboxOptions& o) -> Result<std::unique_ptr<Sandbox>> {
  auto r = VmSandbox::start(s, o);
  if (!r.ok()) return r.error();
  return std::unique_ptr<Sandbox>(std::move(*r));
});
CRB_REGISTER_RUNTIME(vm_file_ram, "vm-file-ram",
                     [](const Scenario& s, const SandboxOptions& o) -> Result<std::unique_ptr<Sandbox>> {
                       auto r = VmSandbox::start(s, o);
                       if (!r.ok()) return r.error();
                       return std::unique_ptr<Sandbox>(std::move(*r));
                     });

}  // namespace crb
