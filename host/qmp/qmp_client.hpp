#pragma once
// A small QMP client (QEMU Machine Protocol, docs/interop/qmp-spec in QEMU). There is no packaged
// C/C++ QMP library on Debian, so this is our own: one connection, synchronous commands matched to
// replies by "id", asynchronous events queued (with the host time they arrived) while a command
// waits, deadlines on every wait, and file descriptors passed with SCM_RIGHTS for `getfd`/`add-fd`.
//
// Not thread-safe: one owner issues commands and reads events.
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "core/result.hpp"

namespace crb::qmp {

using Millis = std::chrono::milliseconds;

struct Event {
  std::string name;  // "STOP", "RESUME", "MIGRATION", ...
  Json data = Json::object();
  int64_t hostMonoNs = 0;  // when crbench read it (CLOCK_MONOTONIC)
  double qemuTimestamp = 0;  // QEMU's own timestamp (seconds since the epoch, wall clock)
};

class QmpClient {
 public:
  // Connect to a QMP unix socket, retrying until `timeout` while QEMU has not created it yet, then
  // read the greeting and negotiate capabilities.
  static Result<std::unique_ptr<QmpClient>> connect(const std::filesystem::path& socketPath,
                                                    Millis timeout = Millis(10000));
  // Take over an already connected stream socket (tests use a socketpair) and negotiate.
  static Result<std::unique_ptr<QmpClient>> adopt(Fd fd, Millis timeout = Millis(10000),
                                                  std::string peerName = "QMP peer");

  // Run one command and return its "return" value. A QMP error reply becomes an Error carrying
  // QEMU's class and description. `passFd` >= 0 is sent with the command via SCM_RIGHTS.
  Result<Json> execute(const std::string& command, const Json& arguments = Json::object(),
                       Millis timeout = Millis(30000), int passFd = -1);

  // Wait for an event named `name` (an already queued one counts; it is removed from the queue).
  Result<Event> waitEvent(const std::string& name, Millis timeout);
  // Read whatever has arrived without blocking (queues events). Fails if the peer hung up.
  Status poll();
  // Events received so far and not yet taken.
  std::deque<Event> takeEvents();
  // Called for every event as it is read, before it is queued (e.g. to timestamp STOP/RESUME).
  void onEvent(std::function<void(const Event&)> cb) { onEvent_ = std::move(cb); }

  const Json& greeting() const { return greeting_; }
  // "10.0.2" from the greeting.
  std::string qemuVersion() const;
  bool connected() const { return fd_.valid(); }
  void close() { fd_.reset(); }

 private:
  QmpClient(Fd fd, std::string peer) : fd_(std::move(fd)), peer_(std::move(peer)) {}
  Status negotiate(Millis timeout);
  Status sendLine(const std::string& line, int passFd);
  // Read one JSON message, waiting until the deadline.
  Result<Json> readMessage(std::chrono::steady_clock::time_point deadline, const std::string& waitingFor);
  void queueEvent(const Json& msg);
  Error hangup(const std::string& waitingFor) const;

  Fd fd_;
  std::string peer_;
  std::string buf_;
  Json greeting_ = Json::object();
  std::deque<Event> events_;
  std::function<void(const Event&)> onEvent_;
  uint64_t nextId_ = 1;
};

}  // namespace crb::qmp
