#pragma once
// A running workload image: a container or a VM. Engines checkpoint and restore sandboxes; the
// prober and the agent client reach the guest agent inside through the sockets a sandbox opens.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "core/result.hpp"
#include "scenario/scenario.hpp"

namespace crb {

enum class RuntimeKind { Container, Vm };
std::string toString(RuntimeKind k);
Result<RuntimeKind> parseRuntimeKind(const std::string& s);

// Ports the guest agent listens on inside every sandbox.
constexpr int kAgentEchoPort = 7700;     // UDP echo for the prober
constexpr int kAgentControlPort = 7701;  // TCP, newline-delimited JSON requests

struct SandboxOptions {
  std::string id;  // unique; names the cgroup, netns, runtime dir; generated when empty
  bool verbose = false;
  std::string accel;  // vm: "kvm", "tcg" or "" (auto)
  // Which implementation of the runtime: "" = the default ("container", "vm"); engines that
  // need their own manager name it in Capabilities::runtimeFlavor (e.g. "vm-libvirt").
  std::string flavor;
};

class Sandbox {
 public:
  virtual ~Sandbox() = default;
  virtual RuntimeKind kind() const = 0;
  virtual const std::string& id() const = 0;
  // A UDP socket connected to the agent's echo port (for the prober). Caller owns it.
  virtual Result<Fd> openProbeSocket() = 0;
  // A TCP connection to the agent's control port. Caller owns it.
  virtual Result<Fd> openControlSocket() = 0;
  // Facts for the result: start/boot time, accelerator, versions, pids ...
  virtual Json describe() const = 0;
  // Tear down everything the sandbox created (processes, mounts, cgroups, netns, QEMU, sockets).
  // Idempotent; also called from the destructor of implementations.
  virtual Status stop() = 0;
};

// Start a sandbox for the scenario and wait until its agent answers. Dispatches to the runtime
// registered under opts.flavor, or under toString(kind) when the flavor is empty.
Result<std::unique_ptr<Sandbox>> startSandbox(RuntimeKind kind, const Scenario& scenario,
                                              const SandboxOptions& opts);

using RuntimeFactory = std::function<Result<std::unique_ptr<Sandbox>>(const Scenario&, const SandboxOptions&)>;
struct RuntimeRegistrar {
  RuntimeRegistrar(const std::string& flavor, RuntimeFactory f);
};
#define CRB_REGISTER_RUNTIME(ident, flavor, factory) \
  static ::crb::RuntimeRegistrar crb_runtime_registrar_##ident(flavor, factory)

}  // namespace crb
