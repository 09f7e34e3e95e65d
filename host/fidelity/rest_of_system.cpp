#include "fidelity/rest_of_system.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

#include "agent/agent_client.hpp"
#include "core/log.hpp"
#include "runtime/container.hpp"
#include "runtime/vm.hpp"

namespace crb {

namespace {

using namespace std::chrono_literals;

int64_t monoNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

double wallMsNow() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) / 1e6;
}

double ms(int64_t ns) { return double(ns) / 1e6; }

Result<Fd> connectTcp(const sockaddr_in& addr, const std::string& what, std::chrono::milliseconds timeout) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) return sysError("socket(tcp)", errno);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno != EINPROGRESS) return sysError(what, errno);
    pollfd p{fd.get(), POLLOUT, 0};
    if (::poll(&p, 1, int(timeout.count())) != 1) return makeError(what + ": timed out");
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) return sysError(what, err);
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// A free loopback port for an extra VM forward (the kernel picks it; the short race with another
// binder shows up as a hostfwd_add error).
Result<int> freeLoopbackPort() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return sysError("socket(tcp)", errno);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return sysError("bind 127.0.0.1:0", errno);
  socklen_t len = sizeof a;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return int(ntohs(a.sin_port));
}

struct Route {
  sockaddr_in addr{};
  std::string via;
};

// How the host reaches `port` inside the sandbox: the container's veth address, or a user-net
// forward added to the VM's current QEMU (HMP hostfwd_add over QMP). Other sandboxes: unsupported.
Result<Route> routeTo(Sandbox& sb, int port, bool& unsupported) {
  unsupported = false;
  Route r;
  r.addr.sin_family = AF_INET;
  if (auto* c = dynamic_cast<ContainerSandbox*>(&sb)) {
    if (::inet_pton(AF_INET, c->containerAddress().c_str(), &r.addr.sin_addr) != 1)
      return makeError(fmt::format("container {} has no IPv4 address ('{}')", c->id(), c->containerAddress()));
    r.addr.sin_port = htons(uint16_t(port));
    r.via = fmt::format("container veth {}:{}", c->containerAddress(), port);
    return r;
  }
  if (auto* v = dynamic_cast<VmSandbox*>(&sb)) {
    CRB_ASSIGN(int hostPort, freeLoopbackPort());
    std::string line = fmt::format("hostfwd_add n0 tcp:127.0.0.1:{}-:{}", hostPort, port);
    CRB_ASSIGN(Json out, v->qmp().execute("human-monitor-command", Json{{"command-line", line}}, 5000ms));
    std::string text = out.is_string() ? out.get<std::string>() : std::string();
    if (text.find_first_not_of(" \r\n") != std::string::npos)
      return makeError(fmt::format("VM {}: HMP '{}' answered: {}", v->id(), line, text));
    r.addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r.addr.sin_port = htons(uint16_t(hostPort));
    r.via = fmt::format("QEMU user-net hostfwd 127.0.0.1:{} -> guest :{} (added to QEMU pid {})", hostPort, port,
                        v->qemuPid());
    return r;
  }
  unsupported = true;
  return makeError(fmt::format("the {} sandbox {} offers crbench no way to reach an arbitrary guest TCP port",
                               toString(sb.kind()), sb.id()),
                   "implemented for the container and vm runtimes");
}

Result<Json> agentExec(Sandbox& sb, const std::vector<std::string>& argv) {
  CRB_ASSIGN(Json r, agentCall(sb, Json{{"op", "exec"}, {"argv", argv}, {"timeout_ms", 10000}}, 15s));
  if (!r.value("ok", false)) return makeError(r.value("error", std::string("the agent refused the exec request")));
  return r;
}

std::string trimmed(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) i++;
  return s.substr(i);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Clock

Result<ClockOffset> measureClockOffset(Sandbox& sandbox, int samples) {
  std::optional<ClockOffset> best;
  std::string lastError;
  for (int i = 0; i < samples; i++) {
    double t0 = wallMsNow();
    auto r = agentCall(sandbox, Json{{"op", "ping"}}, 5s);
    double t1 = wallMsNow();
    if (!r.ok()) {
      lastError = r.error().message;
      continue;
    }
    if (!r->contains("wall_ns") || !(*r)["wall_ns"].is_number_integer()) {
      return makeError("the agent's ping reply carries no wall_ns (an agent older than this crbench?)",
                       "rebuild the workload image");
    }
    ClockOffset c;
    c.guestWallMs = double((*r)["wall_ns"].get<int64_t>()) / 1e6;
    c.hostWallMs = (t0 + t1) / 2;
    c.offsetMs = c.guestWallMs - c.hostWallMs;
    c.uncertaintyMs = (t1 - t0) / 2;
    if (!best || c.uncertaintyMs < best->uncertaintyMs) best = c;
  }
  if (!best) return makeError("no agent ping answered for the clock sample: " + lastError);
  return *best;
}

FidelityCheck judgeClock(const ClockOffset& before, const ClockOffset& after, double toleranceMs,
                         const std::optional<ClockOffset>& early) {
  FidelityCheck c{"rest:clock", Verdict::Pass, {}};
  double raw = after.offsetMs - before.offsetMs;
  double unc = before.uncertaintyMs + after.uncertaintyMs;
  double jump = raw;
  c.figures = {{"offset_before_ms", before.offsetMs},
               {"offset_after_ms", after.offsetMs},
               {"jump_ms", raw},
               {"uncertainty_ms", unc},
               {"tolerance_ms", toleranceMs},
               {"workload_elapsed_ms", after.guestWallMs - before.guestWallMs},
               {"host_elapsed_ms", after.hostWallMs - before.hostWallMs},
               {"measured", "guest CLOCK_REALTIME (agent ping wall_ns) minus the host's at the middle of the "
                            "shortest of 5 round trips, before the checkpoint and after the restore"}};
  std::string driftText;
  // A drift rate needs a base long against the samples' uncertainty to mean anything.
  double base = early ? before.hostWallMs - early->hostWallMs : 0;
  if (early && base > 0 && base >= 20 * (early->uncertaintyMs + before.uncertaintyMs)) {
    double rate = (before.offsetMs - early->offsetMs) / base;  // ms of offset per ms of host time
    double expected = before.offsetMs + rate * (after.hostWallMs - before.hostWallMs);
    jump = after.offsetMs - expected;
    unc += (early->uncertaintyMs + before.uncertaintyMs) / base * (after.hostWallMs - before.hostWallMs);
    c.figures["drift_ppm"] = rate * 1e6;
    c.figures["drift_base_ms"] = base;
    c.figures["jump_excluding_drift_ms"] = jump;
    c.figures["uncertainty_ms"] = unc;
    driftText = fmt::format(" ({:.1f} ms raw; the clock drifted {:.0f} ppm before the checkpoint)", raw, rate * 1e6);
  }
  bool ok = std::fabs(jump) <= toleranceMs + unc;
  c.verdict = ok ? Verdict::Pass : Verdict::Fail;
  c.detail = fmt::format("wall clock {} by {:.1f} ms (±{:.1f}) relative to the host across the checkpoint{} "
                         "(offset {:.1f} -> {:.1f} ms); tolerance {:.0f} ms",
                         jump >= 0 ? "ahead" : "behind", std::fabs(jump), unc, driftText, before.offsetMs,
                         after.offsetMs, toleranceMs);
  return c;
}

// ---------------------------------------------------------------------------------------------
// TCP peer

namespace peerproto {

std::string redisEchoRequest(uint64_t seq) {
  std::string payload = fmt::format("crb-peer-{}", seq);
  return fmt::format("*2\r\n$4\r\nECHO\r\n${}\r\n{}\r\n", payload.size(), payload);
}
std::string redisEchoReply(uint64_t seq) {
  std::string payload = fmt::format("crb-peer-{}", seq);
  return fmt::format("${}\r\n{}\r\n", payload.size(), payload);
}
std::string lineEchoRequest(uint64_t seq) { return fmt::format("crb-peer {}\n", seq); }

size_t redisReplyLength(const std::string& buf) {
  auto eol = buf.find("\r\n");
  if (eol == std::string::npos || buf.empty()) return 0;
  if (buf[0] == '$') {
    long n = std::strtol(buf.c_str() + 1, nullptr, 10);
    if (n < 0) return eol + 2;  // null bulk string
    size_t total = eol + 2 + size_t(n) + 2;
    return buf.size() >= total ? total : 0;
  }
  return eol + 2;  // +simple, -error, :integer
}

}  // namespace peerproto

TcpPeer::TcpPeer(std::string protocol, int guestPort, int intervalMs)
    : protocol_(std::move(protocol)), guestPort_(guestPort), intervalMs_(intervalMs) {}

TcpPeer::~TcpPeer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

// One request and its complete reply, waiting as long as it takes unless stop_ is set: a
// checkpoint in progress is exactly when replies are late. False on EOF, error or stop.
bool TcpPeer::roundTrip(const std::string& request, const std::function<bool(const std::string&)>& complete,
                        std::string& reply) {
  size_t off = 0;
  while (off < request.size()) {
    ssize_t n = ::send(fd_.get(), request.data() + off, request.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += size_t(n);
      bytesSent_ += uint64_t(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      pollfd p{fd_.get(), POLLOUT, 0};
      ::poll(&p, 1, 50);
      if (stop_) return false;
      continue;
    }
    error_ = fmt::format("send failed: {}", std::strerror(errno));
    errorNs_ = monoNs();
    return false;
  }
  reply.clear();
  char buf[4096];
  while (!complete(reply)) {
    pollfd p{fd_.get(), POLLIN, 0};
    int pr = ::poll(&p, 1, 50);
    if (stop_) return false;
    if (pr <= 0) continue;
    ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
    if (n > 0) {
      reply.append(buf, size_t(n));
      bytesReceived_ += uint64_t(n);
    } else if (n == 0) {
      error_ = "connection closed by the server side (EOF)";
      errorNs_ = monoNs();
      return false;
    } else if (errno != EAGAIN && errno != EINTR) {
      error_ = fmt::format("connection broken: {}", std::strerror(errno));
      errorNs_ = monoNs();
      return false;
    }
  }
  return true;
}

Status TcpPeer::start(Sandbox& sandbox, std::chrono::milliseconds timeout) {
  bool unsupported = false;
  CRB_ASSIGN(Route route, routeTo(sandbox, guestPort_, unsupported));
  return startAt(route.addr, route.via, timeout);
}

Status TcpPeer::startAt(const std::string& ipv4, int port, std::chrono::milliseconds timeout) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(uint16_t(port));
  if (::inet_pton(AF_INET, ipv4.c_str(), &a.sin_addr) != 1) return makeError(fmt::format("'{}' is not an IPv4 address", ipv4));
  return startAt(a, fmt::format("{}:{}", ipv4, port), timeout);
}

Status TcpPeer::startAt(const sockaddr_in& addr, const std::string& via, std::chrono::milliseconds timeout) {
  via_ = via;
  Route route;
  route.addr = addr;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool redis = protocol_ == "redis";
  std::string lastError;
  // The server may still be starting: retry until one verified round trip (through slirp a connect
  // succeeds before the guest side exists, so only a reply proves the connection).
  for (;;) {
    auto fd = connectTcp(route.addr, "connect to " + via_, 2000ms);
    if (fd.ok()) {
      fd_ = std::move(fd).value();
      std::string reply;
      error_.clear();
      if (redis) {
        if (roundTrip("*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n",
                      [](const std::string& b) { return peerproto::redisReplyLength(b) > 0; }, reply) &&
            reply.size() > 1 && reply[0] == ':') {
          serverConnId_ = trimmed(reply.substr(1));
          break;
        }
      } else {
        std::string req = peerproto::lineEchoRequest(0);
        if (roundTrip(req, [](const std::string& b) { return b.find('\n') != std::string::npos; }, reply) &&
            reply == req)
          break;
      }
      lastError = error_.empty() ? "unexpected first reply '" + trimmed(reply) + "'" : error_;
      fd_.reset();
    } else {
      lastError = fd.error().message;
    }
    if (std::chrono::steady_clock::now() >= deadline)
      return makeError(fmt::format("host-side TCP peer could not reach the {} server at {}: {}", protocol_, via_,
                                   lastError));
    std::this_thread::sleep_for(100ms);
  }
  error_.clear();
  startNs_ = lastReplyNs_ = monoNs();
  thread_ = std::thread([this] { run(); });
  return success();
}

void TcpPeer::markCheckpointStart() { ckStartNs_ = monoNs(); }
void TcpPeer::markRestoreEnd() { rsEndNs_ = monoNs(); }

void TcpPeer::run() {
  bool redis = protocol_ == "redis";
  auto redisComplete = [](const std::string& b) { return peerproto::redisReplyLength(b) > 0; };
  auto lineComplete = [](const std::string& b) { return b.find('\n') != std::string::npos; };
  for (uint64_t seq = 1; !stop_; seq++) {
    if (final_) {
      // The server's id for this connection at the end: the same id as at the start proves the
      // server side kept the very connection object (a reconnect would get a new one).
      std::string reply;
      if (redis && roundTrip("*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n", redisComplete, reply) && reply.size() > 1 &&
          reply[0] == ':')
        finalConnId_ = trimmed(reply.substr(1));
      break;
    }
    std::string req = redis ? peerproto::redisEchoRequest(seq) : peerproto::lineEchoRequest(seq);
    std::string want = redis ? peerproto::redisEchoReply(seq) : req;
    std::string reply;
    if (!roundTrip(req, redis ? std::function<bool(const std::string&)>(redisComplete) : lineComplete, reply)) break;
    if (reply != want) {
      error_ = fmt::format("round trip #{}: expected '{}', got '{}'", seq, trimmed(want), trimmed(reply).substr(0, 80));
      errorNs_ = monoNs();
      break;
    }
    int64_t now = monoNs();
    if (now - lastReplyNs_ > maxGapNs_) {
      maxGapNs_ = now - lastReplyNs_;
      maxGapFromNs_ = lastReplyNs_;
    }
    lastReplyNs_ = now;
    roundTrips_++;
    int64_t rs = rsEndNs_.load();
    if (rs != 0 && now > rs) repliesAfterRestore_++;
    for (int waited = 0; waited < intervalMs_ && !stop_ && !final_; waited += 5) std::this_thread::sleep_for(5ms);
  }
  done_ = true;
}

FidelityCheck TcpPeer::finish(std::chrono::milliseconds waitAfterRestore) {
  // Enough verified round trips after the restore to call it carried on, or the wait ends.
  auto deadline = std::chrono::steady_clock::now() + waitAfterRestore;
  while (!done_ && repliesAfterRestore_ < 5 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  int64_t endNs = monoNs();
  // Judged on what arrived by now: a reply that comes later is outside the wait the check allows.
  uint64_t afterRestore = repliesAfterRestore_;
  final_ = true;
  for (int i = 0; i < 400 && !done_ && afterRestore > 0; i++) std::this_thread::sleep_for(5ms);
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  // A connection still waiting at the end has a gap that is still open.
  int64_t openGap = error_.empty() ? endNs - lastReplyNs_ : 0;
  int64_t gapNs = std::max(maxGapNs_, openGap);
  int64_t gapFrom = openGap > maxGapNs_ ? lastReplyNs_ : maxGapFromNs_;
  int64_t ck = ckStartNs_.load(), rs = rsEndNs_.load();
  FidelityCheck c{"rest:tcp-peer", Verdict::Fail, {}};
  bool sameServerConn = serverConnId_.empty() || serverConnId_ == finalConnId_;
  bool survived = error_.empty() && afterRestore > 0;
  c.figures = {{"protocol", protocol_},
               {"guest_port", guestPort_},
               {"via", via_},
               {"survived", survived},
               {"round_trips", roundTrips_.load()},
               {"round_trips_after_restore", afterRestore},
               {"bytes_sent", bytesSent_},
               {"bytes_received", bytesReceived_},
               {"longest_gap_ms", ms(gapNs)},
               {"longest_gap_from_checkpoint_start_ms", ck ? Json(ms(gapFrom - ck)) : Json(nullptr)},
               {"checkpoint_to_restore_end_ms", ck && rs ? Json(ms(rs - ck)) : Json(nullptr)},
               {"error", error_.empty() ? Json(nullptr) : Json(error_)},
               {"error_after_checkpoint_start_ms", error_.empty() || !ck ? Json(nullptr) : Json(ms(errorNs_ - ck))}};
  if (!serverConnId_.empty())
    c.figures["server_connection_id"] = {{"before", serverConnId_},
                                         {"after", finalConnId_.empty() ? Json(nullptr) : Json(finalConnId_)}};
  if (!error_.empty()) {
    c.detail = fmt::format("the host's connection to the {} server ({}) was lost: {}{}; {} verified round trips before",
                           protocol_, via_, error_,
                           ck ? fmt::format(" {:.0f} ms after the checkpoint started", ms(errorNs_ - ck)) : "",
                           roundTrips_.load());
  } else if (afterRestore == 0) {
    c.detail = fmt::format("no reply on the host's connection ({}) within {} ms after the restore (no error either: "
                           "the server side is silent); {} verified round trips before, open gap {:.0f} ms",
                           via_, waitAfterRestore.count(), roundTrips_.load(), ms(openGap));
  } else if (!sameServerConn) {
    c.detail = fmt::format("round trips continued but redis reports another connection (CLIENT ID {} -> {})",
                           serverConnId_, finalConnId_.empty() ? "unknown" : finalConnId_);
  } else {
    c.verdict = Verdict::Pass;
    c.detail = fmt::format("the same connection ({}) kept verified round trips: {} in all, {} after the restore, "
                           "longest gap {:.1f} ms{}",
                           via_, roundTrips_.load(), afterRestore, ms(gapNs),
                           serverConnId_.empty() ? "" : fmt::format(", redis CLIENT ID {} unchanged", serverConnId_));
  }
  fd_.reset();
  return c;
}

// ---------------------------------------------------------------------------------------------
// The set of checks

RestOfSystem::RestOfSystem(Sandbox& sandbox, const RestOfSystemSpec& spec) : sandbox_(sandbox), spec_(spec) {}
RestOfSystem::~RestOfSystem() = default;

namespace {
std::vector<std::string> dbusOwnerArgv(const RestOfSystemSpec& s) {
  return {"dbus-send", "--bus=" + s.dbusBus, "--print-reply=literal", "--dest=org.freedesktop.DBus",
          "/org/freedesktop/DBus", "org.freedesktop.DBus.GetNameOwner", "string:" + s.dbusName};
}
Json dbusOwner(Sandbox& sb, const RestOfSystemSpec& s) {
  auto r = agentExec(sb, dbusOwnerArgv(s));
  if (!r.ok()) return Json{{"error", r.error().message}};
  Json j{{"exit", (*r).contains("exit") ? (*r)["exit"] : Json(nullptr)},
         {"owner", trimmed((*r).value("stdout", std::string()))}};
  if (j["exit"] != Json(0)) j["error"] = trimmed((*r).value("stderr", std::string()));
  return j;
}
}  // namespace

void RestOfSystem::begin() {
  if (spec_.tcpPeerPort > 0) {
    peer_ = std::make_unique<TcpPeer>(spec_.tcpPeerProtocol, spec_.tcpPeerPort);
    if (auto st = peer_->start(sandbox_, 10s); !st.ok()) {
      peerStartError_ = st.error().message;
      if (dynamic_cast<ContainerSandbox*>(&sandbox_) == nullptr && dynamic_cast<VmSandbox*>(&sandbox_) == nullptr)
        peerStartError_ = "unsupported: " + peerStartError_;
      peer_.reset();
    }
  }
  if (spec_.clock) {
    auto c = measureClockOffset(sandbox_);
    if (c.ok())
      clockBefore_ = *c;
    else
      clockBeforeError_ = c.error().message;
  }
  if (!spec_.dbusName.empty()) dbusBefore_ = dbusOwner(sandbox_, spec_);
}

void RestOfSystem::beforeCheckpoint() {
  if (!spec_.clock || !clockBefore_) return;
  if (auto c = measureClockOffset(sandbox_); c.ok()) {
    clockEarly_ = clockBefore_;
    clockBefore_ = *c;
  }
}

void RestOfSystem::checkpointStarting() {
  if (peer_) peer_->markCheckpointStart();
}

void RestOfSystem::restoreFinished() {
  if (peer_) peer_->markRestoreEnd();
}

std::vector<FidelityCheck> RestOfSystem::finish() {
  std::vector<FidelityCheck> out;
  if (spec_.tcpPeerPort > 0) {
    if (peer_) {
      out.push_back(peer_->finish(3s));
      peer_.reset();
    } else if (peerStartError_.rfind("unsupported: ", 0) == 0) {
      out.push_back({"rest:tcp-peer", Verdict::Unsupported, peerStartError_.substr(13)});
    } else {
      // The connection could not be set up before the checkpoint: nothing about the engine is
      // known, so the check does not count either way.
      out.push_back({"rest:tcp-peer", Verdict::NotApplicable, "before the checkpoint: " + peerStartError_});
    }
  }
  if (spec_.clock) {
    if (!clockBefore_) {
      out.push_back({"rest:clock", Verdict::NotApplicable, "no clock sample before the checkpoint: " + clockBeforeError_});
    } else if (auto after = measureClockOffset(sandbox_); !after.ok()) {
      out.push_back({"rest:clock", Verdict::Fail, "no clock sample after the restore: " + after.error().message});
    } else {
      out.push_back(judgeClock(*clockBefore_, *after, spec_.clockToleranceMs, clockEarly_));
    }
  }
  if (!spec_.dbusName.empty()) {
    Json after = dbusOwner(sandbox_, spec_);
    FidelityCheck c{"rest:dbus-name", Verdict::Fail, {}};
    c.figures = {{"bus", spec_.dbusBus}, {"name", spec_.dbusName}, {"before", dbusBefore_}, {"after", after}};
    std::string ob = dbusBefore_.value("owner", std::string()), oa = after.value("owner", std::string());
    if (dbusBefore_.contains("error") || ob.empty()) {
      c.verdict = Verdict::NotApplicable;
      c.detail = fmt::format("{} was not owned before the checkpoint: {}", spec_.dbusName,
                             dbusBefore_.value("error", std::string("no owner")));
    } else if (after.contains("error") || oa.empty()) {
      c.detail = fmt::format("{} (owned by {} before) has no owner after the restore: {}", spec_.dbusName, ob,
                             after.value("error", std::string("no owner")));
    } else if (oa != ob) {
      c.detail = fmt::format("{} changed owner: {} -> {} (the holder reconnected or was restarted)", spec_.dbusName, ob, oa);
    } else {
      c.verdict = Verdict::Pass;
      c.detail = fmt::format("{} still owned by {} on {}", spec_.dbusName, ob, spec_.dbusBus);
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace crb
