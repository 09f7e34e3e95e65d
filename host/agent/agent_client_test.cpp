#include "agent/agent_client.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fsutil.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"

namespace crb {
namespace {

int freePort(int type) {
  Fd s(::socket(AF_INET, type, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

// A sandbox that is just a port on loopback: enough to exercise the client.
class LoopbackSandbox : public Sandbox {
 public:
  explicit LoopbackSandbox(int port) : port_(port) {}
  RuntimeKind kind() const override { return RuntimeKind::Container; }
  const std::string& id() const override { return id_; }
  Result<Fd> openProbeSocket() override { return makeError("not used"); }
  Result<Fd> openControlSocket() override {
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return sysError("connect", errno);
    return fd;
  }
  Json describe() const override { return Json::object(); }
  Status stop() override { return success(); }

 private:
  int port_;
  std::string id_ = "loopback-test";
};

TEST(AgentClient, TalksToARealAgent) {
  fs::path agent = guestAgentBinary();
  if (!fs::exists(agent)) GTEST_SKIP() << "guest agent not built: " << agent;
  fs::path dir = fs::temp_directory_path() / fmt::format("crb-agent-client-{}", ::getpid());
  fs::remove_all(dir);
  ASSERT_TRUE(makeDirs(dir).ok());
  ASSERT_TRUE(writeFileAtomic(dir / "cfg.json", R"({"programs":[{"name":"sleeper","argv":["sleep","30"]}]})").ok());
  int ctl = freePort(SOCK_STREAM), echo = freePort(SOCK_DGRAM);
  auto pid = spawnBackground({agent.string(), "--no-init", "--listen", "127.0.0.1", "--echo-port", std::to_string(echo),
                              "--control-port", std::to_string(ctl), "--config", (dir / "cfg.json").string()},
                             (dir / "agent.log").string());
  ASSERT_TRUE(pid.ok()) << pid.error().text();
  LoopbackSandbox sb(ctl);
  auto up = waitForAgent(sb, std::chrono::seconds(10));
  ASSERT_TRUE(up.ok()) << up.error().text();

  auto ping = agentCall(sb, {{"op", "ping"}});
  ASSERT_TRUE(ping.ok()) << ping.error().text();
  EXPECT_EQ((*ping)["pid"], *pid);
  auto ex = agentCall(sb, {{"op", "exec"}, {"argv", {"sh", "-c", "echo out; exit 4"}}});
  ASSERT_TRUE(ex.ok()) << ex.error().text();
  EXPECT_EQ((*ex)["exit"], 4);
  EXPECT_EQ((*ex)["stdout"], "out\n");
  auto bad = agentCall(sb, {{"op", "fly"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("unknown op 'fly'"), std::string::npos) << bad.error().message;
  auto st = agentCall(sb, {{"op", "status"}});
  ASSERT_TRUE(st.ok()) << st.error().text();
  EXPECT_EQ((*st)["programs"][0]["name"], "sleeper");

  auto down = agentCall(sb, {{"op", "shutdown"}});
  EXPECT_TRUE(down.ok());
  int status = waitOrKill(*pid, std::chrono::seconds(10));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  fs::remove_all(dir);
}

TEST(AgentClient, SilentPeerTimesOutWithAClearError) {
  // A listening socket that never accepts: the connection completes in the backlog, no reply comes.
  Fd s(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(s.get(), 4), 0);
  socklen_t len = sizeof a;
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
  LoopbackSandbox sb(ntohs(a.sin_port));
  auto r = agentCall(sb, {{"op", "ping"}}, std::chrono::milliseconds(200));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("no reply within 200 ms"), std::string::npos) << r.error().message;
}

TEST(AgentClient, WaitForAbsentAgentFails) {
  LoopbackSandbox sb(freePort(SOCK_STREAM));
  auto r = waitForAgent(sb, std::chrono::milliseconds(300));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("did not answer within 300 ms"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace crb
