#pragma once
// Runtime flavor "vm-libvirt": a Sandbox of kind Vm whose QEMU is a libvirt domain booted straight
// from the vm runtime's kernel + initramfs (direct kernel boot). The guest agent is reached through
// QEMU user networking with host forwards 127.0.0.1:<port> -> guest 7700/udp and 7701/tcp, given on
// <qemu:commandline> (libvirt's own <interface type='user'> has no port forwards without passt).
// The domain is persistent while the sandbox lives, so it survives virDomainSave (a transient one
// vanishes, and its completed job statistics with it); stop() destroys and undefines it.
#include <libvirt/libvirt.h>

#include <filesystem>
#include <memory>
#include <string>

#include "core/json.hpp"
#include "engine/libvirt/libvirt_conn.hpp"
#include "runtime/sandbox.hpp"

namespace crb::libvirt {

struct DomainSpec {
  std::string name;
  std::string accel = "tcg";  // "kvm" -> <domain type='kvm'>, else type='qemu' (TCG)
  int memoryMiB = 256;
  int cpus = 1;
  std::string kernel, initrd, cmdline;
  std::string consoleLog;  // serial console appended to this file
  int hostUdpPort = 0;     // -> guest kAgentEchoPort
  int hostTcpPort = 0;     // -> guest kAgentControlPort
};

// The domain XML for `spec`. QEMU runs as root (static DAC label, no relabelling) so it can use
// the 0700 runtime directories and image directories crbench keeps private.
std::string domainXml(const DomainSpec& spec);

struct BootFiles {
  std::string kernel, initrd, cmdline;
  std::string source;  // where they came from (for describe())
};
// Kernel, initramfs and command line for the scenario: the vm runtime's boot files, or
// $CRBENCH_VM_KERNEL / $CRBENCH_VM_INITRD / $CRBENCH_VM_CMDLINE when set.
Result<BootFiles> bootFilesFor(const Scenario& scenario);

class LibvirtSandbox : public Sandbox {
 public:
  static Result<std::unique_ptr<Sandbox>> start(const Scenario& scenario, const SandboxOptions& opts);
  ~LibvirtSandbox() override;

  RuntimeKind kind() const override { return RuntimeKind::Vm; }
  const std::string& id() const override { return id_; }
  Result<Fd> openProbeSocket() override;
  Result<Fd> openControlSocket() override;
  Json describe() const override;
  Status stop() override;

  // For the libvirt engine.
  Connection& connection() { return *conn_; }
  virDomainPtr domain() const { return dom_; }
  const std::string& domainName() const { return spec_.name; }
  const std::filesystem::path& runDir() const { return dir_; }
  // One ping over the control port; Ok when the agent answered {"ok":true,...}.
  Result<Json> pingAgent(std::chrono::milliseconds timeout);
  // Poll pingAgent until it answers or `timeout` passes.
  Status waitForAgentPing(std::chrono::milliseconds timeout);

 private:
  LibvirtSandbox() = default;
  std::string id_;
  std::filesystem::path dir_;
  std::shared_ptr<Connection> conn_;
  virDomainPtr dom_ = nullptr;
  DomainSpec spec_;
  Json facts_ = Json::object();
  bool stopped_ = false;
};

}  // namespace crb::libvirt
