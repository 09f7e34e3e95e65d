#include "fidelity/rest_of_system.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "scenario/scenario.hpp"

namespace crb {
namespace {

using namespace std::chrono_literals;

// A line-echo server on 127.0.0.1 for one client; `pauseAfter` lines it stops answering for
// `pauseMs` (a checkpoint as the peer sees it), `closeAfter` lines it closes the connection.
class EchoServer {
 public:
  EchoServer(int pauseAfter, int pauseMs, int closeAfter) {
    listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    ::listen(listen_, 4);
    thread_ = std::thread([=, this] {
      int c = ::accept(listen_, nullptr, nullptr);
      if (c < 0) return;
      std::string buf;
      char b[256];
      int lines = 0;
      while (!stop_) {
        ssize_t n = ::recv(c, b, sizeof b, 0);
        if (n <= 0) break;
        buf.append(b, size_t(n));
        size_t eol;
        while ((eol = buf.find('\n')) != std::string::npos) {
          std::string line = buf.substr(0, eol + 1);
          buf.erase(0, eol + 1);
          if (++lines == closeAfter) {
            ::close(c);
            return;
          }
          if (lines == pauseAfter) std::this_thread::sleep_for(std::chrono::milliseconds(pauseMs));
          ::send(c, line.data(), line.size(), MSG_NOSIGNAL);
        }
      }
      ::close(c);
    });
  }
  ~EchoServer() {
    stop_ = true;
    ::shutdown(listen_, SHUT_RDWR);
    ::close(listen_);
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }

 private:
  int listen_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(RestOfSystem, RedisProtocolFraming) {
  EXPECT_EQ(peerproto::redisEchoRequest(7), "*2\r\n$4\r\nECHO\r\n$10\r\ncrb-peer-7\r\n");
  EXPECT_EQ(peerproto::redisEchoReply(7), "$10\r\ncrb-peer-7\r\n");
  EXPECT_EQ(peerproto::redisReplyLength("$10\r\ncrb-peer-7\r"), 0u);  // incomplete
  EXPECT_EQ(peerproto::redisReplyLength("$10\r\ncrb-peer-7\r\n"), 17u);
  EXPECT_EQ(peerproto::redisReplyLength(":12\r\n"), 5u);
  EXPECT_EQ(peerproto::redisReplyLength("-ERR x\r\n"), 8u);
  EXPECT_EQ(peerproto::redisReplyLength(""), 0u);
}

TEST(RestOfSystem, PeerKeepsConnectionThroughAPause) {
  EchoServer srv(/*pauseAfter=*/20, /*pauseMs=*/300, /*closeAfter=*/-1);
  TcpPeer peer("line-echo", srv.port(), 2);
  ASSERT_TRUE(peer.startAt("127.0.0.1", srv.port(), 2s).ok());
  std::this_thread::sleep_for(20ms);
  peer.markCheckpointStart();
  std::this_thread::sleep_for(400ms);
  peer.markRestoreEnd();
  FidelityCheck c = peer.finish(3s);
  EXPECT_EQ(c.verdict, Verdict::Pass) << c.detail;
  EXPECT_TRUE(c.figures["survived"].get<bool>());
  EXPECT_GE(c.figures["round_trips_after_restore"].get<int>(), 1);
  // The server's 300 ms silence is the longest gap.
  EXPECT_GE(c.figures["longest_gap_ms"].get<double>(), 290.0);
  EXPECT_GT(c.figures["bytes_received"].get<int>(), 0);
}

TEST(RestOfSystem, PeerReportsALostConnection) {
  EchoServer srv(-1, 0, /*closeAfter=*/10);
  TcpPeer peer("line-echo", srv.port(), 2);
  ASSERT_TRUE(peer.startAt("127.0.0.1", srv.port(), 2s).ok());
  peer.markCheckpointStart();
  std::this_thread::sleep_for(100ms);
  peer.markRestoreEnd();
  FidelityCheck c = peer.finish(500ms);
  EXPECT_EQ(c.verdict, Verdict::Fail);
  EXPECT_FALSE(c.figures["survived"].get<bool>());
  EXPECT_NE(c.detail.find("EOF"), std::string::npos) << c.detail;
}

TEST(RestOfSystem, PeerReportsSilenceAfterRestore) {
  EchoServer srv(/*pauseAfter=*/5, /*pauseMs=*/1000, -1);
  TcpPeer peer("line-echo", srv.port(), 2);
  ASSERT_TRUE(peer.startAt("127.0.0.1", srv.port(), 2s).ok());
  peer.markCheckpointStart();
  std::this_thread::sleep_for(50ms);
  peer.markRestoreEnd();
  FidelityCheck c = peer.finish(200ms);
  EXPECT_EQ(c.verdict, Verdict::Fail);
  EXPECT_NE(c.detail.find("no reply"), std::string::npos) << c.detail;
}

TEST(RestOfSystem, ClockJudgement) {
  ClockOffset b{1.0, 0.5, 1000.0, 999.0}, a{1.5, 0.5, 3000.0, 2998.5};
  auto c = judgeClock(b, a, 100);
  EXPECT_EQ(c.verdict, Verdict::Pass) << c.detail;
  EXPECT_DOUBLE_EQ(c.figures["jump_ms"].get<double>(), 0.5);
  ClockOffset late{-2500.0, 0.5, 3000.0, 5500.0};  // guest clock 2.5 s behind after the restore
  auto f = judgeClock(b, late, 100);
  EXPECT_EQ(f.verdict, Verdict::Fail);
  EXPECT_NE(f.detail.find("behind by 2501.0 ms"), std::string::npos) << f.detail;
  // A guest clock running 10% slow on its own: 1000 ms before the checkpoint it lost 100 ms, over
  // the next 2000 ms it loses 200 more; that is drift, not a jump caused by the restore.
  ClockOffset early{0.0, 0.5, 0.0, 0.0}, before{-100.0, 0.5, 900.0, 1000.0}, after{-300.0, 0.5, 2700.0, 3000.0};
  auto d = judgeClock(before, after, 100, early);
  EXPECT_EQ(d.verdict, Verdict::Pass) << d.detail;
  EXPECT_NEAR(d.figures["jump_excluding_drift_ms"].get<double>(), 0.0, 1e-6);
  EXPECT_NEAR(d.figures["drift_ppm"].get<double>(), -100000.0, 1e-3);
  EXPECT_DOUBLE_EQ(d.figures["jump_ms"].get<double>(), -200.0);
}

TEST(RestOfSystem, ScenarioDeclaresChecks) {
  const char* text = R"(
name = "x"
[params.port]
default = 6379
[rest_of_system]
tcp_peer_port = "{port}"
tcp_peer_protocol = "redis"
clock = true
clock_tolerance_ms = 50
dbus_bus = "unix:path=/tmp/b"
dbus_name = "org.x.Y"
[[programs]]
name = "p"
argv = ["/bin/true"]
)";
  auto s = parseScenario(text, "x.toml", {"port=7000"});
  ASSERT_TRUE(s.ok()) << s.error().text();
  EXPECT_EQ(s->restOfSystem.tcpPeerPort, 7000);
  EXPECT_EQ(s->restOfSystem.tcpPeerProtocol, "redis");
  EXPECT_TRUE(s->restOfSystem.clock);
  EXPECT_EQ(s->restOfSystem.clockToleranceMs, 50);
  EXPECT_EQ(s->restOfSystem.dbusName, "org.x.Y");

  auto bad = parseScenario("name=\"x\"\n[rest_of_system]\ntcp_peer_port = 70000\n[[programs]]\nname=\"p\"\nargv=[\"/bin/true\"]\n",
                           "x.toml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().text().find("rest_of_system.tcp_peer_port"), std::string::npos) << bad.error().text();
  auto proto = parseScenario(
      "name=\"x\"\n[rest_of_system]\ntcp_peer_port = 1\ntcp_peer_protocol = \"http\"\n[[programs]]\nname=\"p\"\nargv=[\"/bin/true\"]\n",
      "x.toml");
  ASSERT_FALSE(proto.ok());
  EXPECT_NE(proto.error().text().find("redis"), std::string::npos);
}

}  // namespace
}  // namespace crb
