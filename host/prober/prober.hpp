#pragma once
// The host-side prober: a thread sends sequence-numbered, timestamped UDP probes to the guest
// agent's echo port at a fixed rate (>= 1 kHz by default) and records every send and every reply
// (CLOCK_MONOTONIC ns). Events (checkpoint-start, frozen, restore-end ...) are marked on the same
// clock. Downtime = the longest gap between consecutive replies that overlaps an event window: it
// is measured outside every engine, the same way for all of them.
//
// The socket is a connected UDP socket (Sandbox::openProbeSocket()). It keeps working across a
// restore that replaces the agent, since the address (container netns, VM hostfwd) stays: the
// prober just keeps sending and the replies resume.
#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "core/result.hpp"

namespace crb {

struct ProberOptions {
  double rateHz = 1000;  // probes per second
  // After stop(): how long to keep receiving replies to probes already sent (they count as lost
  // if none arrives by then).
  int drainMs = 200;
};

struct ProbeSample {
  uint64_t seq = 0;
  int64_t sendNs = 0;
  int64_t recvNs = -1;  // -1: no reply
};

struct ProbeMark {
  std::string name;
  int64_t ns = 0;
};

struct ReplyGap {
  int64_t gapNs = 0;     // longest interval without a reply overlapping the window
  int64_t fromNs = 0;    // reply before the gap (or the window start when no reply came before it)
  int64_t toNs = 0;      // reply after the gap (or the end of the trace when none came)
  bool resumed = true;   // false: no reply after the window until the trace ended
  bool valid = false;    // false: no reply at all in or around the window
};

struct ProbeStats {
  uint64_t sent = 0;
  uint64_t replied = 0;
  uint64_t lost = 0;
  double lossRatio = 0;
  double rttP50Ms = 0, rttP90Ms = 0, rttP99Ms = 0, rttMaxMs = 0;
};

// A copy of what the prober recorded; all analysis works on it.
struct ProbeTrace {
  double rateHz = 0;
  int64_t startNs = 0;
  int64_t endNs = 0;  // when the prober stopped receiving (or the snapshot was taken)
  std::vector<ProbeSample> samples;  // by seq
  std::vector<int64_t> replyNs;      // arrival times of replies, in arrival order
  std::vector<ProbeMark> marks;
  uint64_t sendErrors = 0;
  uint64_t duplicates = 0;
  uint64_t foreign = 0;  // datagrams that were not replies to this prober's probes

  std::optional<int64_t> markNs(const std::string& name) const;  // first mark with that name
  // Longest gap between consecutive replies that overlaps [fromNs, toNs].
  ReplyGap longestGap(int64_t fromNs, int64_t toNs) const;
  // First reply arriving at or after `ns`.
  std::optional<int64_t> firstReplyAfter(int64_t ns) const;
  // Stats over probes sent in [fromNs, toNs] (defaults: the whole trace).
  ProbeStats stats(int64_t fromNs = INT64_MIN, int64_t toNs = INT64_MAX) const;
  // Every raw sample (send/recv ns relative to start_ns) and the marks, for results and plots.
  Json toJson() const;
};

class Prober {
 public:
  explicit Prober(Fd socket, ProberOptions opts = {});
  ~Prober();
  Prober(const Prober&) = delete;
  Prober& operator=(const Prober&) = delete;

  Status start();
  // Stop sending, wait opts.drainMs for late replies, join the thread. Idempotent.
  void stop();
  bool running() const { return running_.load(); }

  // Record an event at the current CLOCK_MONOTONIC time (or at `ns`). Thread-safe.
  int64_t mark(const std::string& name);
  void markAt(const std::string& name, int64_t ns);
  // Swap the socket (e.g. a VM whose forwarded port changed after a restore). Thread-safe.
  void replaceSocket(Fd socket);

  // Wait until `count` replies arrived after `sinceNs`; false on timeout.
  bool waitForReplies(size_t count, int64_t sinceNs, int timeoutMs) const;
  ProbeTrace trace() const;

 private:
  void loop();
  void drainReplies(int fd);

  ProberOptions opts_;
  Fd socket_;
  Fd pendingSocket_;
  uint32_t nonce_ = 0;
  std::atomic<bool> running_{false};
  std::atomic<bool> sending_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  ProbeTrace trace_;
};

}  // namespace crb
