#pragma once
// The "container" runtime: the workload image run as a lightweight container.
//
//   runtime dir   /run/crbench/<id> (0700): upper/ work/ (overlay), root/ (merged rootfs),
//                 netns (bind mount holding the network namespace), agent.log
//   rootfs        overlayfs, lower = the cached image (never modified), upper/work in the runtime dir
//   network       a netns created and held by the host, so it outlives the processes; lo up and a
//                 veth pair to the host with a private /30 chosen per sandbox
//   cgroups       v1 freezer and pids: crbench/<id>
//   init          cloned with new pid, mount, ipc, uts namespaces; joins the netns; /dev is a tmpfs
//                 with bind-mounted device nodes; pivot_root; execs /sbin/crbench-agent as PID 1
//
// Engines (native, CRIU) work on the public ContainerSandbox: they freeze/thaw it, read its pids,
// and after restoring the process tree they call setInitPid() so stop() and the prober keep
// working. prepareContainerChild() is the child-side set-up, reusable by an engine that recreates
// the namespaces itself.
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "image/image.hpp"
#include "runtime/sandbox.hpp"

namespace crb {

// Everything the child needs, prepared by the parent before clone() so the child only makes
// system calls (it may run in a copy of a multi-threaded process).
struct ContainerChildPlan {
  std::string rootDir;       // merged rootfs (a mount point)
  std::string hostname;      // uts
  int netnsFd = -1;          // setns() into it; -1 = stay
  int logFd = -1;            // becomes stdout/stderr (stdin is /dev/null); -1 = keep
};

// Child side of a container start, to be called right after clone(CLONE_NEWPID|CLONE_NEWNS|...):
// join the netns, set the hostname, make mounts private, mount /proc, /sys, a tmpfs /dev with
// bind-mounted null, zero, full, random, urandom, tty, a devpts with /dev/ptmx, /dev/shm, then
// pivot_root into plan.rootDir. Returns 0, or -errno with *failedStep naming the step.
int prepareContainerChild(const ContainerChildPlan& plan, const char** failedStep);

class ContainerSandbox : public Sandbox {
 public:
  static Result<std::unique_ptr<ContainerSandbox>> start(const Scenario& scenario, const SandboxOptions& opts);
  ~ContainerSandbox() override;

  RuntimeKind kind() const override { return RuntimeKind::Container; }
  const std::string& id() const override { return id_; }
  Result<Fd> openProbeSocket() override;
  Result<Fd> openControlSocket() override;
  Json describe() const override;
  Status stop() override;

  // PID (in the host's pid namespace) of the container's init (the agent, or what an engine
  // restored in its place).
  pid_t initPid() const { return initPid_; }
  // After an engine restored the process tree: the new init. Its pid namespace is remembered so
  // stop() can kill everything in it.
  void setInitPid(pid_t pid);

  const std::filesystem::path& runtimeDir() const { return runtimeDir_; }
  std::filesystem::path rootDir() const { return runtimeDir_ / "root"; }
  std::filesystem::path agentLogPath() const { return runtimeDir_ / "agent.log"; }
  std::filesystem::path freezerCgroupDir() const { return freezerDir_; }
  std::filesystem::path pidsCgroupDir() const { return pidsDir_; }
  // Put a process (e.g. one an engine restored) into the sandbox's cgroups.
  Status addToCgroups(pid_t pid);

  // Freeze / thaw the freezer cgroup and wait until the kernel reports FROZEN / THAWED.
  // A freeze that does not complete in time is undone (thawed) and reported as an error.
  Status freeze(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  Status thaw(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  std::string freezerState() const;
  // Processes (tgids, host pid namespace) in the freezer cgroup.
  Result<std::vector<pid_t>> pids() const;

  // The network namespace, held by a bind mount so it outlives the processes.
  std::filesystem::path netnsPath() const { return runtimeDir_ / "netns"; }
  Result<Fd> openNetns() const;
  const std::string& hostname() const { return hostname_; }
  // Namespaces the init is cloned with (the netns is joined, not created by the clone).
  static constexpr int kCloneNamespaces = 0x20000000 /*NEWPID*/ | 0x00020000 /*NEWNS*/ |
                                          0x08000000 /*NEWIPC*/ | 0x04000000 /*NEWUTS*/;
  const std::string& containerAddress() const { return ctrAddr_; }
  const std::string& hostAddress() const { return hostAddr_; }
  const std::string& hostVeth() const { return hostVeth_; }

  const WorkloadImage& image() const { return image_; }
  // Clone of the init until the agent answered, milliseconds.
  double startMs() const { return startMs_; }
  // Wait until the agent (or its restored replacement) answers a ping on the control port.
  Status waitForAgentPing(std::chrono::milliseconds timeout);
  // Child-side plan for this sandbox (hostname, rootfs, netns fd): engines that recreate the
  // container's namespaces call prepareContainerChild() with it. The netns fd stays open as long
  // as the sandbox lives.
  ContainerChildPlan childPlan() const;

 private:
  ContainerSandbox() = default;
  Status setUp(const Scenario& scenario, const SandboxOptions& opts);
  Status createNetns();
  Status createVeth();
  Status createCgroups();
  Status mountRootfs();
  Status cloneInit();
  void rememberPidNs(pid_t pid);
  std::string agentLogTail() const;

  std::string id_;
  std::string hostname_;
  std::filesystem::path runtimeDir_;
  std::filesystem::path freezerDir_, pidsDir_;
  std::string hostVeth_, hostAddr_, ctrAddr_;
  WorkloadImage image_;
  Fd netnsFd_;
  pid_t initPid_ = -1;
  pid_t childPid_ = -1;  // the init we cloned (ours to reap)
  std::set<unsigned long> pidNamespaces_;  // inode numbers of pid namespaces we created/adopted
  double startMs_ = 0;
  double netSetupMs_ = 0;
  bool stopped_ = false;
  bool ownsRuntimeDir_ = false;  // only what we created is ours to remove
  bool verbose_ = false;
};

}  // namespace crb
