#include "prober/prober.hpp"

#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <random>
#include <thread>

#include "core/clock.hpp"
#include "core/log.hpp"

namespace crb {

namespace {
constexpr uint32_t kMagic = 0x50425243;  // "CRBP"

// Wire format; the agent echoes the datagram unchanged.
struct ProbePacket {
  uint32_t magic;
  uint32_t nonce;  // per prober: replies to another prober's probes are not ours
  uint64_t seq;
  int64_t sendNs;
};
static_assert(sizeof(ProbePacket) == 24);

double percentile(std::vector<int64_t>& v, double p) {
  if (v.empty()) return 0;
  size_t k = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size()))) ;
  k = std::clamp<size_t>(k, 1, v.size()) - 1;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return static_cast<double>(v[k]) / 1e6;
}
}  // namespace

// ---- ProbeTrace ---------------------------------------------------------------------------------

std::optional<int64_t> ProbeTrace::markNs(const std::string& name) const {
  for (auto& m : marks)
    if (m.name == name) return m.ns;
  return std::nullopt;
}

ReplyGap ProbeTrace::longestGap(int64_t fromNs, int64_t toNs) const {
  ReplyGap g;
  if (replyNs.empty()) return g;
  // Consecutive replies (a, b) whose interval overlaps the window. The reply arrival list is in
  // arrival order, hence sorted.
  auto after = std::upper_bound(replyNs.begin(), replyNs.end(), fromNs);
  size_t i = 0;
  if (after == replyNs.begin()) {
    // No reply at or before the window start: the gap starts at the window start.
    g = ReplyGap{replyNs[0] - fromNs, fromNs, replyNs[0], true, true};
  } else {
    i = static_cast<size_t>(after - replyNs.begin()) - 1;  // last reply at or before fromNs
  }
  for (; i + 1 < replyNs.size() && replyNs[i] <= toNs; i++) {
    int64_t gap = replyNs[i + 1] - replyNs[i];
    if (!g.valid || gap > g.gapNs) g = ReplyGap{gap, replyNs[i], replyNs[i + 1], true, true};
  }
  if (replyNs.back() <= toNs) {
    // Replies never came back after the window: the gap lasts until the trace ended.
    int64_t gap = std::max(endNs, toNs) - replyNs.back();
    if (!g.valid || gap >= g.gapNs) g = ReplyGap{gap, replyNs.back(), std::max(endNs, toNs), false, true};
  }
  return g;
}

std::optional<int64_t> ProbeTrace::firstReplyAfter(int64_t ns) const {
  auto it = std::lower_bound(replyNs.begin(), replyNs.end(), ns);
  if (it == replyNs.end()) return std::nullopt;
  return *it;
}

ProbeStats ProbeTrace::stats(int64_t fromNs, int64_t toNs) const {
  ProbeStats s;
  std::vector<int64_t> rtts;
  for (auto& p : samples) {
    if (p.sendNs < fromNs || p.sendNs > toNs) continue;
    s.sent++;
    if (p.recvNs >= 0) {
      s.replied++;
      rtts.push_back(p.recvNs - p.sendNs);
    }
  }
  s.lost = s.sent - s.replied;
  s.lossRatio = s.sent ? static_cast<double>(s.lost) / static_cast<double>(s.sent) : 0;
  s.rttP50Ms = percentile(rtts, 50);
  s.rttP90Ms = percentile(rtts, 90);
  s.rttP99Ms = percentile(rtts, 99);
  s.rttMaxMs = rtts.empty() ? 0 : static_cast<double>(*std::max_element(rtts.begin(), rtts.end())) / 1e6;
  return s;
}

Json ProbeTrace::toJson() const {
  Json j;
  j["clock"] = "CLOCK_MONOTONIC";
  j["rate_hz"] = rateHz;
  j["start_ns"] = startNs;
  j["end_ns"] = endNs;
  j["send_errors"] = sendErrors;
  j["duplicates"] = duplicates;
  j["foreign"] = foreign;
  // Column arrays keep the file small: send/recv offsets in ns from start_ns, recv null = lost.
  Json send = Json::array(), recv = Json::array();
  for (auto& p : samples) {
    send.push_back(p.sendNs - startNs);
    recv.push_back(p.recvNs >= 0 ? Json(p.recvNs - startNs) : Json(nullptr));
  }
  j["samples"] = {{"unit", "ns since start_ns"}, {"send", std::move(send)}, {"recv", std::move(recv)}};
  Json marks_ = Json::array();
  for (auto& m : marks) marks_.push_back({{"name", m.name}, {"ns", m.ns - startNs}});
  j["marks"] = std::move(marks_);
  return j;
}

// ---- Prober -------------------------------------------------------------------------------------

Prober::Prober(Fd socket, ProberOptions opts) : opts_(opts), socket_(std::move(socket)) {
  nonce_ = std::random_device{}();
  trace_.rateHz = opts_.rateHz;
}

Prober::~Prober() { stop(); }

Status Prober::start() {
  if (running_) return makeError("prober already running");
  if (!socket_.valid()) return makeError("prober has no socket");
  if (!(opts_.rateHz > 0 && opts_.rateHz <= 100000))
    return makeError(fmt::format("probe rate {} Hz is out of range", opts_.rateHz), "use 1..100000 Hz");
  trace_.startNs = monoNs();
  running_ = sending_ = true;
  thread_ = std::thread([this] { loop(); });
  return success();
}

void Prober::stop() {
  if (!thread_.joinable()) return;
  sending_ = false;
  thread_.join();
  running_ = false;
}

int64_t Prober::mark(const std::string& name) {
  int64_t ns = monoNs();
  markAt(name, ns);
  return ns;
}

void Prober::markAt(const std::string& name, int64_t ns) {
  std::lock_guard lk(mu_);
  trace_.marks.push_back({name, ns});
}

void Prober::replaceSocket(Fd socket) {
  std::lock_guard lk(mu_);
  pendingSocket_ = std::move(socket);
}

bool Prober::waitForReplies(size_t count, int64_t sinceNs, int timeoutMs) const {
  int64_t deadline = monoNs() + static_cast<int64_t>(timeoutMs) * 1000000;
  while (monoNs() < deadline) {
    {
      std::lock_guard lk(mu_);
      auto it = std::lower_bound(trace_.replyNs.begin(), trace_.replyNs.end(), sinceNs);
      if (static_cast<size_t>(trace_.replyNs.end() - it) >= count) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return false;
}

ProbeTrace Prober::trace() const {
  std::lock_guard lk(mu_);
  ProbeTrace t = trace_;
  if (running_) t.endNs = monoNs();
  return t;
}

void Prober::drainReplies(int fd) {
  ProbePacket pkt;
  for (;;) {
    ssize_t n = ::recv(fd, &pkt, sizeof pkt, MSG_DONTWAIT);
    if (n < 0) {
      // ECONNREFUSED: an ICMP port-unreachable while the agent is being replaced; keep going.
      if (errno == EINTR || errno == ECONNREFUSED) continue;
      return;
    }
    int64_t now = monoNs();
    std::lock_guard lk(mu_);
    if (n != sizeof pkt || pkt.magic != kMagic || pkt.nonce != nonce_ || pkt.seq >= trace_.samples.size() ||
        trace_.samples[pkt.seq].sendNs != pkt.sendNs) {
      trace_.foreign++;
      continue;
    }
    auto& s = trace_.samples[pkt.seq];
    if (s.recvNs >= 0) {
      trace_.duplicates++;
      continue;
    }
    s.recvNs = now;
    trace_.replyNs.push_back(now);
  }
}

void Prober::loop() {
  // The default 50 us timer slack would blur sub-millisecond send times.
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  const int64_t period = static_cast<int64_t>(1e9 / opts_.rateHz);
  int64_t next = monoNs();
  int fd = socket_.get();
  while (sending_) {
    {
      std::lock_guard lk(mu_);
      if (pendingSocket_.valid()) {
        socket_ = std::move(pendingSocket_);
        fd = socket_.get();
      }
    }
    int64_t now = monoNs();
    if (now >= next) {
      ProbePacket pkt{kMagic, nonce_, 0, 0};
      {
        std::lock_guard lk(mu_);
        pkt.seq = trace_.samples.size();
        pkt.sendNs = monoNs();
        trace_.samples.push_back({pkt.seq, pkt.sendNs, -1});
      }
      if (::send(fd, &pkt, sizeof pkt, MSG_DONTWAIT) != sizeof pkt) {
        std::lock_guard lk(mu_);
        trace_.sendErrors++;
      }
      next += period;
      // If this thread itself was held up, skip the missed slots rather than sending a burst:
      // the trace shows the hole in send times, so the gap is not blamed on the sandbox.
      if (now - next > 10 * period) next = now + period;
    }
    drainReplies(fd);
    now = monoNs();
    int64_t wait = std::max<int64_t>(0, next - now);
    timespec ts{static_cast<time_t>(wait / 1000000000), static_cast<long>(wait % 1000000000)};
    pollfd p{fd, POLLIN, 0};
    ::ppoll(&p, 1, &ts, nullptr);
  }
  int64_t drainUntil = monoNs() + static_cast<int64_t>(opts_.drainMs) * 1000000;
  for (int64_t now = monoNs(); now < drainUntil; now = monoNs()) {
    int64_t wait = drainUntil - now;
    timespec ts{static_cast<time_t>(wait / 1000000000), static_cast<long>(wait % 1000000000)};
    pollfd p{fd, POLLIN, 0};
    ::ppoll(&p, 1, &ts, nullptr);
    drainReplies(fd);
  }
  std::lock_guard lk(mu_);
  trace_.endNs = monoNs();
}

}  // namespace crb
