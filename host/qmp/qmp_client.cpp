#include "qmp/qmp_client.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "core/clock.hpp"

namespace crb::qmp {

namespace {
int msLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}
}  // namespace

Result<std::unique_ptr<QmpClient>> QmpClient::connect(const std::filesystem::path& socketPath,
                                                      Millis timeout) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socketPath.native().size() >= sizeof addr.sun_path)
    return makeError("QMP socket path too long: " + socketPath.string(),
                     "use a shorter runtime directory ($CRBENCH_RUNTIME_DIR)");
  std::strcpy(addr.sun_path, socketPath.c_str());
  auto deadline = Clock::now() + timeout;
  int lastErr = 0;
  // QEMU creates the socket some milliseconds after exec: retry until the deadline.
  for (;;) {
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return sysError("socket for QMP", errno);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0)
      return adopt(std::move(fd), Millis(msLeft(deadline) + 1000), "QEMU at " + socketPath.string());
    lastErr = errno;
    if (lastErr != ENOENT && lastErr != ECONNREFUSED && lastErr != EAGAIN)
      return sysError("connect to QMP socket " + socketPath.string(), lastErr);
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(Millis(5));
  }
  return makeError(fmt::format("QMP socket {} did not accept a connection within {} ms: {}",
                               socketPath.string(), timeout.count(), std::strerror(lastErr)),
                   "QEMU did not start; see its log in the same directory");
}

Result<std::unique_ptr<QmpClient>> QmpClient::adopt(Fd fd, Millis timeout, std::string peerName) {
  std::unique_ptr<QmpClient> c(new QmpClient(std::move(fd), std::move(peerName)));
  CRB_CHECK(c->negotiate(timeout));
  return c;
}

Status QmpClient::negotiate(Millis timeout) {
  auto deadline = Clock::now() + timeout;
  CRB_ASSIGN(Json hello, readMessage(deadline, "the QMP greeting"));
  if (!hello.contains("QMP"))
    return makeError(fmt::format("{} did not start with a QMP greeting: {}", peer_, hello.dump()));
  greeting_ = hello["QMP"];
  CRB_CHECK(execute("qmp_capabilities", Json::object(), Millis(msLeft(deadline) + 1)));
  return success();
}

std::string QmpClient::qemuVersion() const {
  try {
    auto& q = greeting_.at("version").at("qemu");
    return fmt::format("{}.{}.{}", q.at("major").get<int>(), q.at("minor").get<int>(),
                       q.at("micro").get<int>());
  } catch (const std::exception&) {
    return "unknown";
  }
}

Error QmpClient::hangup(const std::string& waitingFor) const {
  return makeError(fmt::format("{} closed the QMP connection while crbench waited for {}", peer_,
                               waitingFor),
                   "QEMU probably exited or crashed; see its log");
}

Status QmpClient::sendLine(const std::string& line, int passFd) {
  if (!fd_.valid()) return makeError(fmt::format("QMP connection to {} is closed", peer_));
  size_t off = 0;
  bool fdSent = passFd < 0;
  while (off < line.size()) {
    iovec iov{const_cast<char*>(line.data() + off), line.size() - off};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))];
    if (!fdSent) {
      // QEMU takes the descriptor from the same recvmsg that carries the command's first bytes.
      std::memset(ctrl, 0, sizeof ctrl);
      msg.msg_control = ctrl;
      msg.msg_controllen = sizeof ctrl;
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &passFd, sizeof(int));
    }
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) {
        fd_.reset();
        return hangup("a command to be sent");
      }
      return sysError("send to " + peer_, errno);
    }
    fdSent = true;
    off += static_cast<size_t>(n);
  }
  return success();
}

Result<Json> QmpClient::readMessage(Clock::time_point deadline, const std::string& waitingFor) {
  for (;;) {
    auto nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (line.empty()) continue;
      Json msg = Json::parse(line, nullptr, false);
      if (msg.is_discarded() || !msg.is_object())
        return makeError(fmt::format("{} sent something that is not a QMP message: {}", peer_,
                                     line.substr(0, 200)));
      return msg;
    }
    if (!fd_.valid()) return makeError(fmt::format("QMP connection to {} is closed", peer_));
    pollfd p{fd_.get(), POLLIN, 0};
    int r = ::poll(&p, 1, msLeft(deadline));
    if (r < 0) {
      if (errno == EINTR) continue;
      return sysError("poll on QMP socket of " + peer_, errno);
    }
    if (r == 0)
      return makeError(fmt::format("{} did not answer {} in time", peer_, waitingFor),
                       "QEMU is stuck or overloaded; see its log");
    char chunk[65536];
    ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      if (errno == ECONNRESET) {
        fd_.reset();
        return hangup(waitingFor);
      }
      return sysError("read from QMP socket of " + peer_, errno);
    }
    if (n == 0) {
      fd_.reset();
      return hangup(waitingFor);
    }
    buf_.append(chunk, static_cast<size_t>(n));
  }
}

void QmpClient::queueEvent(const Json& msg) {
  Event e;
  e.name = msg.value("event", "");
  e.data = msg.value("data", Json::object());
  e.hostMonoNs = monoNs();
  if (msg.contains("timestamp")) {
    auto& t = msg["timestamp"];
    e.qemuTimestamp = t.value("seconds", 0.0) + t.value("microseconds", 0.0) / 1e6;
  }
  if (onEvent_) onEvent_(e);
  events_.push_back(std::move(e));
}

Result<Json> QmpClient::execute(const std::string& command, const Json& arguments, Millis timeout,
                                int passFd) {
  std::string id = fmt::format("crb-{}", nextId_++);
  Json req = {{"execute", command}, {"id", id}};
  if (!arguments.is_null() && !arguments.empty()) req["arguments"] = arguments;
  auto deadline = Clock::now() + timeout;
  std::string what = fmt::format("the reply to '{}'", command);
  CRB_CHECK(sendLine(req.dump() + "\n", passFd));
  for (;;) {
    CRB_ASSIGN(Json msg, readMessage(deadline, what));
    if (msg.contains("event")) {
      queueEvent(msg);
      continue;
    }
    // Replies to commands we gave up on (timed out earlier) carry other ids: drop them.
    if (!msg.contains("id") || msg["id"] != id) continue;
    if (msg.contains("error")) {
      auto& e = msg["error"];
      return makeError(fmt::format("QEMU refused '{}': {} ({})", command, e.value("desc", "?"),
                                   e.value("class", "?")));
    }
    if (msg.contains("return")) return msg["return"];
    return makeError(fmt::format("{} sent a malformed reply to '{}': {}", peer_, command, msg.dump()));
  }
}

Result<Event> QmpClient::waitEvent(const std::string& name, Millis timeout) {
  auto deadline = Clock::now() + timeout;
  for (;;) {
    for (auto it = events_.begin(); it != events_.end(); ++it) {
      if (it->name == name) {
        Event e = std::move(*it);
        events_.erase(it);
        return e;
      }
    }
    CRB_ASSIGN(Json msg, readMessage(deadline, fmt::format("the event {}", name)));
    if (msg.contains("event")) queueEvent(msg);
  }
}

Status QmpClient::poll() {
  for (;;) {
    auto nl = buf_.find('\n');
    if (nl == std::string::npos) {
      if (!fd_.valid()) return makeError(fmt::format("QMP connection to {} is closed", peer_));
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) return success();
    }
    CRB_ASSIGN(Json msg, readMessage(Clock::now() + Millis(1000), "pending messages"));
    if (msg.contains("event")) queueEvent(msg);
  }
}

std::deque<Event> QmpClient::takeEvents() {
  std::deque<Event> out;
  out.swap(events_);
  return out;
}

}  // namespace crb::qmp
