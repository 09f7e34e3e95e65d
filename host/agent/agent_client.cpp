#include "agent/agent_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "core/clock.hpp"

namespace crb {

namespace {

int remainingMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

std::string opOf(const Json& request) {
  return request.is_object() && request.contains("op") && request["op"].is_string() ? request["op"].get<std::string>()
                                                                                    : std::string("?");
}

}  // namespace

Result<Json> agentCall(Sandbox& sandbox, const Json& request, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  std::string what = fmt::format("agent request '{}' in sandbox {}", opOf(request), sandbox.id());
  auto fdr = sandbox.openControlSocket();
  if (!fdr.ok()) return fdr.error().context(what);
  Fd fd = std::move(fdr).value();
  // Our own deadline covers the whole exchange, whatever blocking mode the sandbox handed us.
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);

  std::string out = request.dump() + "\n";
  size_t sent = 0;
  while (sent < out.size()) {
    pollfd p{fd.get(), POLLOUT, 0};
    int n = ::poll(&p, 1, remainingMs(deadline));
    if (n == 0) return makeError(fmt::format("{}: timed out after {} ms sending", what, timeout.count()));
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError(what + ": poll", errno);
    }
    ssize_t w = ::send(fd.get(), out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return sysError(what + ": send", errno);
    }
    sent += static_cast<size_t>(w);
  }

  std::string in;
  char buf[65536];
  for (;;) {
    if (in.find('\n') != std::string::npos) break;
    pollfd p{fd.get(), POLLIN, 0};
    int n = ::poll(&p, 1, remainingMs(deadline));
    if (n == 0)
      return makeError(fmt::format("{}: no reply within {} ms", what, timeout.count()),
                       "the agent may be frozen, stopped or busy; check the sandbox's agent log");
    if (n < 0) {
      if (errno == EINTR) continue;
      return sysError(what + ": poll", errno);
    }
    ssize_t r = ::recv(fd.get(), buf, sizeof buf, 0);
    if (r < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return sysError(what + ": receive", errno);
    }
    if (r == 0) break;
    in.append(buf, static_cast<size_t>(r));
  }
  fd.reset();  // engines dump the agent: no established connection may outlive the call
  auto nl = in.find('\n');
  if (nl == std::string::npos) {
    if (in.empty()) return makeError(what + ": the agent closed the connection without a reply");
    return makeError(fmt::format("{}: reply not terminated by a newline: {}", what, in.substr(0, 200)));
  }
  Json reply = Json::parse(in.substr(0, nl), nullptr, false);
  if (reply.is_discarded() || !reply.is_object())
    return makeError(fmt::format("{}: reply is not a JSON object: {}", what, in.substr(0, std::min<size_t>(nl, 200))));
  if (!reply.value("ok", false))
    return makeError(fmt::format("{}: the agent answered: {}", what, reply.value("error", std::string("(no error text)"))));
  return reply;
}

Status waitForAgent(Sandbox& sandbox, std::chrono::milliseconds timeout) {
  auto start = Clock::now();
  auto deadline = start + timeout;
  Error last = makeError("no attempt made");
  do {
    auto per = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(std::max(remainingMs(deadline), 1)),
                                                   std::chrono::milliseconds(1000));
    auto r = agentCall(sandbox, Json{{"op", "ping"}}, per);
    if (r.ok()) return success();
    last = r.error();
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (Clock::now() < deadline);
  return makeError(fmt::format("the guest agent in sandbox {} did not answer within {} ms; last error: {}",
                               sandbox.id(), timeout.count(), last.text()),
                   "look at the sandbox's console/agent log; a slow TCG boot may need a longer timeout");
}

}  // namespace crb
