#pragma once
// The vm runtime: the scenario's workload image booted by QEMU (Debian's kernel, the image as
// initramfs, the guest agent as /init). The guest is reached through QEMU user networking:
// hostfwd 127.0.0.1:<udp> -> guest 7700 (prober echo) and 127.0.0.1:<tcp> -> guest 7701 (control).
// Engines drive QEMU through the QMP socket in /run/crbench/<id>/ (dir 0700, socket 0600).
//
// One VmSandbox may own several QEMU processes over its life (a restore target, a migration
// target); exactly one is "current" — the one the agent sockets reach and describe() reports.
//
// Flavor "vm-file-ram" (the qemu engine's file-ram mode) boots the same machine with its RAM in a
// shared file, <run dir>/guest-ram (memory-backend-file,share=on), so a snapshot can leave the RAM
// where it is and save only the device state.
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "qmp/qmp_client.hpp"
#include "runtime/sandbox.hpp"
#include "runtime/vm_image.hpp"

namespace crb {

// How to start one QEMU of this sandbox. The machine (kernel, initramfs, memory size, devices)
// is always the sandbox's own, so any QEMU launched here can take the others' migration stream.
struct QemuLaunch {
  std::string tag = "main";                 // names its socket and logs: qmp-<tag>.sock ...
  std::vector<std::string> extraArgs;       // e.g. {"-incoming", "defer"}
  bool hostForwards = true;                 // false for a migration target while the source
                                            // still holds the ports (see moveHostForwards)
  // Guest RAM in a file (memory-backend-file): empty = anonymous RAM.
  std::filesystem::path ramFile;
  bool ramShared = true;                    // share=on (writes reach the file) / off (private COW)
};

struct QemuInstance {
  std::string tag;
  pid_t pid = -1;
  std::vector<std::string> argv;
  std::filesystem::path qmpSocket;
  std::filesystem::path serialLog;
  std::filesystem::path stderrLog;
  std::unique_ptr<qmp::QmpClient> qmp;
  double spawnToQmpMs = 0;  // exec -> QMP greeting negotiated
  bool exited = false;      // reaped
  int waitStatus = 0;
  // Reap without blocking; true when the process is gone.
  bool reap();
  bool alive() { return !reap(); }
};

class VmSandbox : public Sandbox {
 public:
  static Result<std::unique_ptr<VmSandbox>> start(const Scenario& scenario, const SandboxOptions& opts);
  ~VmSandbox() override;

  RuntimeKind kind() const override { return RuntimeKind::Vm; }
  const std::string& id() const override { return id_; }
  Result<Fd> openProbeSocket() override;
  Result<Fd> openControlSocket() override;
  Json describe() const override;
  Status stop() override;

  // --- for engines ---
  QemuInstance& current() { return *current_; }
  qmp::QmpClient& qmp() { return *current_->qmp; }
  const std::filesystem::path& qmpSocketPath() const { return current_->qmpSocket; }
  pid_t qemuPid() const { return current_->pid; }
  const std::vector<std::string>& argv() const { return current_->argv; }
  const std::filesystem::path& runDir() const { return runDir_; }
  int udpPort() const { return udpPort_; }
  int tcpPort() const { return tcpPort_; }
  const std::string& accelerator() const { return accel_; }
  const std::string& qemuVersion() const { return qemuVersion_; }
  const VmBootFiles& bootFiles() const { return boot_; }
  const Scenario& scenario() const { return scenario_; }

  // The full argv for a launch (exposed so engines can record it and tests can check it).
  std::vector<std::string> buildArgv(const QemuLaunch& spec) const;
  // Start another QEMU of this sandbox and connect to its QMP; it does not become current.
  // On failure nothing is left running. The sandbox tracks it and kills it in stop().
  Result<QemuInstance*> launch(const QemuLaunch& spec);
  // Make `inst` current; the previous current QEMU is killed (unless it is `inst`).
  Status adopt(QemuInstance* inst);
  // Kill one QEMU (SIGKILL, reaped) and drop it; if it was current, there is no current guest
  // until adopt(). Its logs stay in runDir until stop().
  void kill(QemuInstance* inst);
  // Kill the current QEMU and start a new current one with `extraArgs` (restore: -incoming defer).
  Result<QemuInstance*> relaunch(const std::vector<std::string>& extraArgs, const std::string& tag);
  Result<QemuInstance*> relaunch(QemuLaunch spec);
  // The shared RAM file the guest booted with (flavor vm-file-ram); empty for anonymous RAM.
  const std::filesystem::path& ramFile() const { return ramFile_; }
  // Move the agent port forwards from one QEMU to another (HMP hostfwd_remove / hostfwd_add over
  // QMP), used at the end of a live migration between two QEMUs on this host.
  Status moveHostForwards(QemuInstance& from, QemuInstance& to);
  // Poll the agent until it answers; returns milliseconds waited. Fails early if QEMU exits.
  Result<double> waitForAgent(std::chrono::milliseconds timeout);
  // The last lines of a QEMU's serial console and stderr, for error messages.
  std::string logTail(const QemuInstance& inst, size_t lines = 12) const;

 private:
  VmSandbox() = default;
  Status pingAgentOnce(std::chrono::milliseconds timeout);

  std::string id_;
  Scenario scenario_;
  SandboxOptions opts_;
  std::filesystem::path runDir_;
  std::string qemuBinary_;
  std::string accel_, accelReason_;
  std::string qemuVersion_;
  VmBootFiles boot_;
  int udpPort_ = 0, tcpPort_ = 0;
  bool portsChosenByUs_ = true;
  double bootMs_ = 0;
  std::vector<std::unique_ptr<QemuInstance>> instances_;
  QemuInstance* current_ = nullptr;
  bool stopped_ = false;
  int launches_ = 0;
  std::filesystem::path ramFile_;
};

// Pick the QEMU binary ($CRBENCH_QEMU or qemu-system-x86_64 in PATH); errors say how to install.
Result<std::string> findQemuBinary();

// Ports for the agent forwards: $CRBENCH_VM_UDP_PORT / $CRBENCH_VM_TCP_PORT when set (a busy one
// is an error naming it), else free ports chosen by the kernel.
struct VmPorts {
  int udp = 0, tcp = 0;
  bool chosenByUs = true;
};
Result<VmPorts> chooseVmPorts();

}  // namespace crb
