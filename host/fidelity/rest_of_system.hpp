#pragma once
// "Rest of the system" fidelity checks: what lives outside the checkpointed processes and must
// keep working after a restore (docs/results.md, "Rest-of-system checks"). The scenario declares
// which apply ([rest_of_system] in its file):
//   rest:tcp-peer   a client on the HOST keeps one TCP connection to a server in the workload,
//                   through the sandbox's own network (container veth, VM user-net hostfwd), doing
//                   sequence-numbered round trips through the checkpoint; the connection must carry
//                   verified round trips after the restore without having been closed or reset.
//   rest:clock      the workload's CLOCK_REALTIME against the host's, measured before and after
//                   (agent ping carrying wall_ns, bounded by the round trip); the change of the
//                   offset is the wall-clock jump the restore caused.
//   rest:dbus-name  a bus name owned before is owned by the same connection after.
// Everything is measured in the run; nothing is assumed about an engine or runtime.
#include <netinet/in.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "core/result.hpp"
#include "fidelity/fidelity.hpp"
#include "runtime/sandbox.hpp"
#include "scenario/scenario.hpp"

namespace crb {

// The guest's CLOCK_REALTIME minus the host's, from the agent ping with the shortest round trip
// of a few: the guest read its clock somewhere inside [send, receive], so the offset is known to
// within half that round trip.
struct ClockOffset {
  double offsetMs = 0;
  double uncertaintyMs = 0;
  double guestWallMs = 0;  // guest CLOCK_REALTIME at the sample (ms since the epoch)
  double hostWallMs = 0;   // host CLOCK_REALTIME at the middle of the round trip
};
Result<ClockOffset> measureClockOffset(Sandbox& sandbox, int samples = 5);

// Judge two clock samples: pass when the offset moved by at most tolerance + the uncertainty.
// `early` (optional) is a sample taken earlier than `before`: the offset's drift between the two
// (an emulated guest's clock can run slow or fast on its own) is extrapolated to `after` and
// taken out of the jump the verdict uses; the raw jump is reported too.
FidelityCheck judgeClock(const ClockOffset& before, const ClockOffset& after, double toleranceMs,
                         const std::optional<ClockOffset>& early = std::nullopt);

// Wire protocols of the host-side TCP peer. Exposed for unit tests.
namespace peerproto {
// One request carrying `seq`, and the exact reply it must get.
std::string redisEchoRequest(uint64_t seq);
std::string redisEchoReply(uint64_t seq);
std::string lineEchoRequest(uint64_t seq);
// Parses one RESP reply at the start of buf: returns its length in bytes, 0 when incomplete.
size_t redisReplyLength(const std::string& buf);
}  // namespace peerproto

// A TCP connection from the host to a server in the sandbox, doing round trips in a thread.
class TcpPeer {
 public:
  TcpPeer(std::string protocol, int guestPort, int intervalMs = 10);
  ~TcpPeer();
  TcpPeer(const TcpPeer&) = delete;
  TcpPeer& operator=(const TcpPeer&) = delete;

  // Connect through the sandbox's network and wait for the first verified round trip.
  Status start(Sandbox& sandbox, std::chrono::milliseconds timeout);
  // The same to a plain address (unit tests, and sandboxes that already know it).
  Status startAt(const std::string& ipv4, int port, std::chrono::milliseconds timeout);
  void markCheckpointStart();
  void markRestoreEnd();
  // Wait (bounded) for round trips after the restore, stop, and judge.
  FidelityCheck finish(std::chrono::milliseconds waitAfterRestore);

 private:
  Status startAt(const sockaddr_in& addr, const std::string& via, std::chrono::milliseconds timeout);
  void run();
  bool roundTrip(const std::string& request, const std::function<bool(const std::string&)>& complete,
                 std::string& reply);
  std::string protocol_;
  int guestPort_;
  int intervalMs_;
  Fd fd_;
  std::string via_;  // how the host reaches the guest port, for the record
  std::string serverConnId_;  // redis CLIENT ID at the start
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> done_{false};
  std::atomic<bool> final_{false};  // finish(): one last exchange (redis CLIENT ID), then end
  std::atomic<int64_t> ckStartNs_{0}, rsEndNs_{0};
  // Written by the thread, read after join (and repliesAfterRestore_ while running).
  std::atomic<uint64_t> roundTrips_{0}, repliesAfterRestore_{0};
  uint64_t bytesSent_ = 0, bytesReceived_ = 0;
  int64_t startNs_ = 0, lastReplyNs_ = 0, maxGapNs_ = 0, maxGapFromNs_ = 0;
  std::string error_;
  int64_t errorNs_ = 0;
  std::string finalConnId_;
};

// All rest-of-system checks of one run, driven by the controller around the checkpoint.
class RestOfSystem {
 public:
  RestOfSystem(Sandbox& sandbox, const RestOfSystemSpec& spec);
  ~RestOfSystem();
  bool any() const { return spec_.any(); }
  // Before the "before" digest: connect the peer (so the workload's state includes it), take the
  // clock and bus-name samples. Failures are kept and reported by finish(), never thrown.
  void begin();
  // Just before the controller starts timing the checkpoint: the last clock sample before it.
  void beforeCheckpoint();
  void checkpointStarting();
  void restoreFinished();
  // After the restore settled: the "after" samples and the verdicts.
  std::vector<FidelityCheck> finish();

 private:
  Sandbox& sandbox_;
  RestOfSystemSpec spec_;
  std::unique_ptr<TcpPeer> peer_;
  std::string peerStartError_;
  std::optional<ClockOffset> clockEarly_, clockBefore_;
  std::string clockBeforeError_;
  Json dbusBefore_;
};

}  // namespace crb
