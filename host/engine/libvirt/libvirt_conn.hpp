#pragma once
// The libvirt connection shared by the `libvirt` engine and the `vm-libvirt` runtime, and the
// daemon behind it. When no daemon answers at qemu:///system, crbench starts its own virtlogd and
// libvirtd (no systemd needed) with libvirtd's sockets in a private 0700 directory; the last user
// (in this or any other crbench process sharing that daemon) stops both when it lets go. libvirt's errors become crbench Errors carrying
// libvirt's own message; libvirt never prints on its own (virSetErrorFunc).
//
// Environment (for tests and unusual hosts):
//   CRBENCH_LIBVIRT_URI       URI tried first instead of qemu:///system
//   CRBENCH_LIBVIRTD          libvirtd binary used when crbench starts its own daemon
//   CRBENCH_VIRTLOGD          virtlogd binary (idem)
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include <filesystem>
#include <memory>
#include <string>

#include "core/json.hpp"
#include "core/result.hpp"

namespace crb::libvirt {

// Install the silent error handler and initialise libvirt (idempotent, thread-safe).
void initLibvirt();

// An Error built from libvirt's last error on this thread: "<what>: <libvirt message>".
Error lastError(const std::string& what, const std::string& hint = {});

// A daemon crbench started: virtlogd (unless one already serves the system socket) + libvirtd.
struct OwnDaemon {
  std::filesystem::path dir;  // private 0700 directory: sockets, config, pid files, logs
  pid_t libvirtdPid = -1;
  pid_t virtlogdPid = -1;  // -1 when a running virtlogd was reused
  int lockFd = -1;         // flock held while the daemon is ours
  double startSeconds = 0;
};

class Connection {
 public:
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  virConnectPtr get() const { return conn_; }
  const std::string& uri() const { return uri_; }
  bool ownsDaemon() const { return daemon_ != nullptr; }
  // libvirt and hypervisor versions, URI, whether crbench started the daemon.
  Json describe() const;
  // Before a domain starts: crbench's virtlogd exits when idle (so that it cannot outlive a killed
  // crbench), and the QEMU driver needs it; start it again if it went. No-op for a system daemon.
  Status ensureLogDaemon();

 private:
  friend Result<std::shared_ptr<Connection>> connect();
  Connection() = default;
  virConnectPtr conn_ = nullptr;
  std::string uri_;
  std::unique_ptr<OwnDaemon> daemon_;     // set when this process started the private daemon
  std::filesystem::path daemonDir_;       // private daemon in use (started here or joined)
  int usersFd_ = -1;                      // shared flock on <daemonDir_>/users while connected
};

// The process-wide connection: reuses a live one, else connects to the system daemon, else starts
// crbench's own. Errors say why no daemon could be reached or started (the engine's `unavailable`).
Result<std::shared_ptr<Connection>> connect();

// Directory of crbench's private daemon (under runtimeDir()).
std::filesystem::path privateDaemonDir();

// Text of a libvirt version number (major*1e6 + minor*1e3 + micro).
std::string versionText(unsigned long v);

}  // namespace crb::libvirt
