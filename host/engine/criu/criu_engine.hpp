#pragma once
// The `criu` engine: CRIU (>= 4.2) on the container runtime.
//
// CRIU is driven through its command line rather than `criu swrk` + rpc.proto:
//  - The CRIU that works here is Debian sid's, unpacked into .deps/criu and started through the
//    prefix's own loader by a wrapper script. rpc.proto ships only in sid's libcriu-dev, which is
//    not installed on the system, so an RPC build would depend on set-up having run before meson.
//    The CLI needs nothing at build time and behaves identically through the wrapper.
//  - What RPC adds (notifications at freeze / resume) we observe directly: the container's
//    freezer cgroup state shows when the tree is frozen and thawed, and CRIU's stats images give
//    its own phase times after the fact.
//  - Every run is reproducible from the logged command line (`crbench -v` prints it).
#include <sys/types.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "engine/criu/criu_probe.hpp"
#include "engine/engine.hpp"

namespace crb {

class ContainerSandbox;

namespace criu {

// A mount of the container that CRIU must treat as external: a bind mount of a host file or
// directory (the /dev nodes). On restore the same host path is bound again.
struct ExternalMount {
  std::string mountpoint;  // inside the container ("/dev/null")
  std::string key;         // CRIU cookie
  std::string hostPath;    // what to bind on restore ("/dev/null")
};

// An open file of the workload that lives outside the container's mounts (the agent's log).
struct ExternalFile {
  std::string key;       // "file[<mnt_id hex>:<inode hex>]"
  std::string hostPath;  // reopened on restore and handed to CRIU with --inherit-fd
  int flags = 0;         // open flags (O_ACCMODE | O_APPEND)
};

// Parse /proc/<pid>/mountinfo of the container and the host's, and list the container's bind
// mounts of host files with the host path that backs them.
Result<std::vector<ExternalMount>> findExternalMounts(pid_t containerInit);
// Open files of the given processes whose mount is not in the container's mount namespace.
std::vector<ExternalFile> findExternalFiles(const std::vector<pid_t>& pids, pid_t containerInit);

// Established TCP connections in the network namespace of `pidInNetns` (/proc/<pid>/net/tcp{,6}),
// addresses as the kernel prints them (hex).
struct TcpConnection {
  std::string local, remote;
};
std::vector<TcpConnection> establishedTcp(pid_t pidInNetns);
// Whether to dump with --tcp-established, and why: option tcp-established=on|off|auto (default
// auto: on when the container has an established connection, which CRIU would otherwise refuse).
Result<std::pair<bool, std::string>> chooseTcpEstablished(const Json& options, pid_t init);

}  // namespace criu

class CriuEngine : public Engine {
 public:
  ~CriuEngine() override;
  std::string name() const override { return "criu"; }
  Capabilities capabilities() override;
  Result<PhaseReport> checkpoint(Sandbox& sandbox, const CheckpointContext& ctx) override;
  Result<PhaseReport> restore(Sandbox& sandbox, const CheckpointContext& ctx) override;

 private:
  Result<criu::CriuBinary> usableBinary(const Json& options, criu::ProbeResult& probe);
  pid_t lazyDaemon_ = -1;
};

}  // namespace crb
