#include "engine/libvirt/libvirt_sandbox.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <random>
#include <thread>

#include "core/clock.hpp"
#include "core/log.hpp"
#include "core/paths.hpp"
#include "kvm/accel.hpp"
#include "runtime/vm_image.hpp"

namespace crb::libvirt {

namespace {

std::string xmlEscape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '\'': o += "&apos;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string randomHex(int bytes) {
  std::random_device rd;
  std::string s;
  for (int i = 0; i < bytes; ++i) s += fmt::format("{:02x}", rd() & 0xff);
  return s;
}

// A loopback port free for both TCP and UDP right now. QEMU binds it a moment later; a clash in
// between makes the domain fail to start with a clear libvirt error rather than cross-talk.
Result<int> freeLoopbackPort() {
  for (int attempt = 0; attempt < 20; ++attempt) {
    Fd t(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(t.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
      return sysError("bind a loopback TCP port", errno);
    socklen_t len = sizeof a;
    ::getsockname(t.get(), reinterpret_cast<sockaddr*>(&a), &len);
    Fd u(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (::bind(u.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) return ntohs(a.sin_port);
  }
  return makeError("no loopback port free for both TCP and UDP after 20 tries");
}

Result<Fd> connectLoopback(int type, int port) {
  Fd s(::socket(AF_INET, type | SOCK_CLOEXEC, 0));
  if (!s.valid()) return sysError("socket", errno);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return sysError(fmt::format("connect to 127.0.0.1:{}", port), errno);
  return s;
}

std::string envStr(const char* n) {
  const char* v = std::getenv(n);
  return v ? v : "";
}

}  // namespace

std::string domainXml(const DomainSpec& s) {
  bool kvm = s.accel == "kvm";
  std::string netdev = fmt::format(
      "user,id=crbnet,hostfwd=udp:127.0.0.1:{}-:{},hostfwd=tcp:127.0.0.1:{}-:{}", s.hostUdpPort,
      kAgentEchoPort, s.hostTcpPort, kAgentControlPort);
  return fmt::format(
      R"(<domain type='{type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>{cpus}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
{cpu}  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>
  <devices>
    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='{netdev}'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=crbnet'/>
  </qemu:commandline>
</domain>
)",
      fmt::arg("type", kvm ? "kvm" : "qemu"), fmt::arg("name", xmlEscape(s.name)),
      fmt::arg("mem", s.memoryMiB), fmt::arg("cpus", s.cpus),
      fmt::arg("kernel", xmlEscape(s.kernel)), fmt::arg("initrd", xmlEscape(s.initrd)),
      fmt::arg("cmdline", xmlEscape(s.cmdline)),
      fmt::arg("cpu", kvm ? "  <cpu mode='host-passthrough'/>\n" : ""),
      fmt::arg("console", xmlEscape(s.consoleLog)), fmt::arg("netdev", xmlEscape(netdev)));
}

Result<BootFiles> bootFilesFor(const Scenario& scenario) {
  BootFiles b;
  b.kernel = envStr("CRBENCH_VM_KERNEL");
  b.initrd = envStr("CRBENCH_VM_INITRD");
  if (!b.kernel.empty() || !b.initrd.empty()) {
    if (b.kernel.empty() || b.initrd.empty())
      return makeError("CRBENCH_VM_KERNEL and CRBENCH_VM_INITRD must be set together");
    b.cmdline = envStr("CRBENCH_VM_CMDLINE");
    if (b.cmdline.empty()) b.cmdline = "console=ttyS0 quiet panic=-1";
    b.source = "environment (CRBENCH_VM_KERNEL/CRBENCH_VM_INITRD)";
    for (auto* p : {&b.kernel, &b.initrd})
      if (!fs::exists(*p)) return makeError(fmt::format("VM boot file {} does not exist", *p));
    return b;
  }
  // The same kernel, initramfs (workload image + virtio modules) and command line as the qemu
  // runtime, so both VM engines snapshot the same guest.
  auto vb = prepareVmBootFiles(scenario);
  if (!vb) return vb.error().context("vm-libvirt boot files");
  b.kernel = vb->kernel.string();
  b.initrd = vb->initramfs.string();
  b.cmdline = vb->cmdline;
  b.source = "vm runtime (prepareVmBootFiles), initramfs " + vb->initramfsHash;
  return b;
}

Result<std::unique_ptr<Sandbox>> LibvirtSandbox::start(const Scenario& scenario,
                                                       const SandboxOptions& opts) {
  std::unique_ptr<LibvirtSandbox> sb(new LibvirtSandbox());
  sb->id_ = opts.id.empty() ? "lv" + randomHex(5) : opts.id;
  sb->dir_ = runtimeDir() / sb->id_;
  CRB_CHECK(makeDirs(sb->dir_, 0700));

  CRB_ASSIGN(BootFiles boot, bootFilesFor(scenario));
  auto& s = sb->spec_;
  s.name = "crbench-" + sb->id_;
  s.memoryMiB = scenario.vmMemoryMiB;
  s.cpus = scenario.vmCpus;
  s.kernel = boot.kernel;
  s.initrd = boot.initrd;
  s.cmdline = boot.cmdline;
  s.consoleLog = (sb->dir_ / "console.log").string();
  CRB_ASSIGN(s.hostTcpPort, freeLoopbackPort());
  s.hostUdpPort = s.hostTcpPort;

  Json accel = Json::object();
  if (!opts.accel.empty()) {
    s.accel = opts.accel;
    accel = {{"accel", opts.accel}, {"reason", "chosen with --accel"}};
  } else {
    AccelChoice a = chooseAccelerator();
    s.accel = a.accel;
    accel = {{"accel", a.accel}, {"reason", a.reason}, {"forced", a.forced}};
  }
  if (s.accel != "kvm" && s.accel != "tcg")
    return makeError(fmt::format("unknown accelerator '{}'", s.accel), "use kvm or tcg");

  CRB_ASSIGN(sb->conn_, connect());
  std::string xml = domainXml(s);
  CRB_CHECK(writeFileAtomic(sb->dir_ / "domain.xml", xml, 0600));

  sb->facts_ = {{"runtime", "vm-libvirt"},
                {"id", sb->id_},
                {"domain", s.name},
                {"accelerator", accel},
                {"memory_mib", s.memoryMiB},
                {"cpus", s.cpus},
                {"kernel", s.kernel},
                {"initrd", s.initrd},
                {"cmdline", s.cmdline},
                {"boot_files", boot.source},
                {"host_udp_port", s.hostUdpPort},
                {"host_tcp_port", s.hostTcpPort},
                {"console_log", s.consoleLog},
                {"libvirt", sb->conn_->describe()}};

  sb->dom_ = virDomainDefineXML(sb->conn_->get(), xml.c_str());
  if (!sb->dom_) return lastError("define libvirt domain " + s.name);
  if (auto st = sb->conn_->ensureLogDaemon(); !st) {
    Error e = st.error();
    (void)sb->stop();
    return e;
  }
  auto t0 = Clock::now();
  if (virDomainCreate(sb->dom_) != 0) {
    Error e = lastError("start libvirt domain " + s.name);
    (void)sb->stop();
    return e;
  }
  sb->facts_["create_seconds"] = secondsSince(t0);
  if (auto st = sb->waitForAgentPing(std::chrono::seconds(120)); !st) {
    Error e = st.error().context("vm-libvirt sandbox " + sb->id_);
    e.hint = "see the guest console in " + s.consoleLog;
    (void)sb->stop();
    return e;
  }
  // From virDomainCreate to the agent's first answer: what a user waits for.
  sb->facts_["boot_seconds"] = secondsSince(t0);
  return std::unique_ptr<Sandbox>(std::move(sb));
}

LibvirtSandbox::~LibvirtSandbox() { (void)stop(); }

Result<Fd> LibvirtSandbox::openProbeSocket() { return connectLoopback(SOCK_DGRAM, spec_.hostUdpPort); }

Result<Fd> LibvirtSandbox::openControlSocket() {
  return connectLoopback(SOCK_STREAM, spec_.hostTcpPort);
}

Result<Json> LibvirtSandbox::pingAgent(std::chrono::milliseconds timeout) {
  CRB_ASSIGN(Fd s, openControlSocket());
  std::string req = "{\"op\":\"ping\"}\n";
  if (::send(s.get(), req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size()))
    return sysError("send ping to the agent", errno);
  // slirp accepts the host side of a forward before the guest listens; only a reply line counts.
  std::string line;
  auto deadline = Clock::now() + timeout;
  while (line.find('\n') == std::string::npos) {
    int ms = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (ms <= 0) return makeError("agent did not answer ping in time");
    pollfd p{s.get(), POLLIN, 0};
    int r = ::poll(&p, 1, ms);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return makeError("agent did not answer ping in time");
    char buf[4096];
    ssize_t n = ::recv(s.get(), buf, sizeof buf, 0);
    if (n <= 0) return makeError("agent closed the control connection without answering");
    line.append(buf, n);
  }
  Json j = Json::parse(line.substr(0, line.find('\n')), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.value("ok", false))
    return makeError("agent answered ping with '" + line.substr(0, 200) + "'");
  return j;
}

Status LibvirtSandbox::waitForAgentPing(std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  std::string last = "no attempt";
  while (Clock::now() < deadline) {
    int state = 0, reason = 0;
    if (virDomainGetState(dom_, &state, &reason, 0) == 0 && state != VIR_DOMAIN_RUNNING &&
        state != VIR_DOMAIN_PAUSED && state != VIR_DOMAIN_BLOCKED)
      return makeError(fmt::format("domain {} is no longer running (state {}, reason {})",
                                   spec_.name, state, reason));
    virResetLastError();
    auto r = pingAgent(std::chrono::seconds(2));
    if (r) return success();
    last = r.error().message;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return makeError(fmt::format("guest agent did not answer within {} s (last: {})",
                               timeout.count() / 1000, last));
}

Json LibvirtSandbox::describe() const { return facts_; }

Status LibvirtSandbox::stop() {
  if (stopped_) return success();
  stopped_ = true;
  Status result = success();
  if (dom_) {
    if (virDomainIsActive(dom_) == 1 && virDomainDestroy(dom_) != 0)
      result = lastError("destroy libvirt domain " + spec_.name);
    // Undefine also when destroy failed: a defined-but-dead domain is still something left.
    unsigned flags = VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
    if (virDomainIsPersistent(dom_) == 1 && virDomainUndefineFlags(dom_, flags) != 0 && result)
      result = lastError("undefine libvirt domain " + spec_.name);
    virDomainFree(dom_);
    dom_ = nullptr;
    virResetLastError();
    std::error_code ec;
    // virtlogd's copy of the console/QEMU log for this domain; the name is ours alone.
    fs::remove(fs::path("/var/log/libvirt/qemu") / (spec_.name + ".log"), ec);
  }
  conn_.reset();  // stops crbench's own daemon when this was its last user
  std::error_code ec;
  if (!dir_.empty() && std::getenv("CRBENCH_KEEP_RUNTIME_DIR") == nullptr) fs::remove_all(dir_, ec);
  return result;
}

namespace {
Result<std::unique_ptr<Sandbox>> startLibvirtSandbox(const Scenario& sc, const SandboxOptions& o) {
  return LibvirtSandbox::start(sc, o);
}
}  // namespace

}  // namespace crb::libvirt

CRB_REGISTER_RUNTIME(vm_libvirt, "vm-libvirt", crb::libvirt::startLibvirtSandbox);
