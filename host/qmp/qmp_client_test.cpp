#include "qmp/qmp_client.hpp"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <thread>

namespace crb::qmp {
namespace {

// The QEMU side of a socketpair, scripted by each test.
class FakePeer {
 public:
  explicit FakePeer(int fd) : fd_(fd) {}
  ~FakePeer() { ::close(fd_); }
  void send(const std::string& s) { ASSERT_EQ(::write(fd_, s.data(), s.size()), (ssize_t)s.size()); }
  void greet() {
    send(R"({"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""},)"
         R"( "capabilities": ["oob"]}})"
         "\r\n");
  }
  // Read one request line; `fdOut` receives a descriptor passed with it, if any.
  Json recvRequest(int* fdOut = nullptr) {
    while (buf_.find('\n') == std::string::npos) {
      char data[4096];
      iovec iov{data, sizeof data};
      alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = ctrl;
      msg.msg_controllen = sizeof ctrl;
      ssize_t n = ::recvmsg(fd_, &msg, 0);
      if (n <= 0) return Json();
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_type == SCM_RIGHTS && fdOut) std::memcpy(fdOut, CMSG_DATA(c), sizeof(int));
      buf_.append(data, static_cast<size_t>(n));
    }
    auto nl = buf_.find('\n');
    Json j = Json::parse(buf_.substr(0, nl));
    buf_.erase(0, nl + 1);
    return j;
  }
  void reply(const Json& req, const Json& ret) {
    send(Json({{"return", ret}, {"id", req["id"]}}).dump() + "\r\n");
  }
  void handshake() {
    greet();
    auto caps = recvRequest();
    ASSERT_EQ(caps["execute"], "qmp_capabilities");
    reply(caps, Json::object());
  }
  int fd() const { return fd_; }

 private:
  int fd_;
  std::string buf_;
};

struct Pair {
  Fd client;
  int peer = -1;
  Pair() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    client.reset(sv[0]);
    peer = sv[1];
  }
};

TEST(QmpClient, NegotiatesAndReadsVersion) {
  Pair p;
  std::thread t([fd = p.peer] {
    FakePeer peer(fd);
    peer.handshake();
  });
  auto c = QmpClient::adopt(std::move(p.client), Millis(5000));
  t.join();
  ASSERT_TRUE(c.ok()) << c.error().text();
  EXPECT_EQ((*c)->qemuVersion(), "10.0.2");
}

TEST(QmpClient, MatchesRepliesByIdAndQueuesEventsInBetween) {
  Pair p;
  std::thread t([fd = p.peer] {
    FakePeer peer(fd);
    peer.handshake();
    auto req = peer.recvRequest();
    EXPECT_EQ(req["execute"], "stop");
    peer.send(R"({"return": {}, "id": "stale-id"})" "\r\n");  // a reply to someone else
    peer.send(R"({"timestamp": {"seconds": 100, "microseconds": 5}, "event": "STOP"})" "\r\n");
    peer.reply(req, Json::object());
    auto req2 = peer.recvRequest();
    EXPECT_EQ(req2["execute"], "query-status");
    EXPECT_EQ(req2["arguments"]["x"], 1);
    peer.send(R"({"event": "MIGRATION", "data": {"status": "active"}})" "\r\n");
    peer.reply(req2, Json{{"status", "paused"}, {"running", false}});
    peer.send(R"({"event": "RESUME"})" "\r\n");
  });
  auto c = QmpClient::adopt(std::move(p.client), Millis(5000));
  ASSERT_TRUE(c.ok()) << c.error().text();
  auto& q = **c;
  std::vector<std::string> seen;
  q.onEvent([&](const Event& e) { seen.push_back(e.name); });
  auto r = q.execute("stop");
  ASSERT_TRUE(r.ok()) << r.error().text();
  auto r2 = q.execute("query-status", Json{{"x", 1}});
  ASSERT_TRUE(r2.ok()) << r2.error().text();
  EXPECT_EQ((*r2)["status"], "paused");
  auto resume = q.waitEvent("RESUME", Millis(5000));
  ASSERT_TRUE(resume.ok()) << resume.error().text();
  t.join();
  auto stop = q.waitEvent("STOP", Millis(10));  // queued earlier, still there
  ASSERT_TRUE(stop.ok());
  EXPECT_DOUBLE_EQ(stop->qemuTimestamp, 100.000005);
  auto rest = q.takeEvents();
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].name, "MIGRATION");
  EXPECT_EQ(rest[0].data["status"], "active");
  EXPECT_EQ(seen, (std::vector<std::string>{"STOP", "MIGRATION", "RESUME"}));
}

TEST(QmpClient, ErrorReplyCarriesQemuDescription) {
  Pair p;
  std::thread t([fd = p.peer] {
    FakePeer peer(fd);
    peer.handshake();
    auto req = peer.recvRequest();
    peer.send(Json({{"error", {{"class", "GenericError"}, {"desc", "no such thing"}}},
                    {"id", req["id"]}}).dump() + "\n");
  });
  auto c = QmpClient::adopt(std::move(p.client), Millis(5000));
  ASSERT_TRUE(c.ok());
  auto r = (*c)->execute("bogus");
  t.join();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("no such thing"), std::string::npos);
  EXPECT_NE(r.error().message.find("bogus"), std::string::npos);
}

TEST(QmpClient, PeerDyingMidCommandIsReportedClearly) {
  Pair p;
  std::thread t([fd = p.peer] {
    FakePeer peer(fd);
    peer.handshake();
    peer.recvRequest();  // then hang up without answering, as a killed QEMU would
  });
  auto c = QmpClient::adopt(std::move(p.client), Millis(5000));
  ASSERT_TRUE(c.ok());
  auto r = (*c)->execute("migrate", Json{{"uri", "fd:x"}});
  t.join();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("closed the QMP connection"), std::string::npos) << r.error().text();
  EXPECT_NE(r.error().message.find("migrate"), std::string::npos);
  EXPECT_FALSE((*c)->connected());
  auto again = (*c)->execute("cont");
  EXPECT_FALSE(again.ok());
}

TEST(QmpClient, TimesOutWhenNoReply) {
  Pair p;
  std::thread t([fd = p.peer] {
    FakePeer peer(fd);
    peer.handshake();
    peer.recvRequest();
    std::this_thread::sleep_for(Millis(300));
  });
  auto c = QmpClient::adopt(std::move(p.client), Millis(5000));
  ASSERT_TRUE(c.ok());
  auto r = (*c)->execute("query-migrate", Json::object(), Millis(50));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("did not answer"), std::string::npos);
  t.join();
}

TEST(QmpClient, NoGreetingIsAnError) {
  Pair p;
  std::thread t([fd = p.peer] {
    FakePeer peer(fd);
    peer.send("{\"hello\": 1}\n");
  });
  auto c = QmpClient::adopt(std::move(p.client), Millis(2000));
  t.join();
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("greeting"), std::string::npos);
}

TEST(QmpClient, PassesDescriptorWithGetfd) {
  Pair p;
  int pipefd[2];
  ASSERT_EQ(::pipe(pipefd), 0);
  std::string got;
  std::thread t([fd = p.peer, &got] {
    FakePeer peer(fd);
    peer.handshake();
    int passed = -1;
    auto req = peer.recvRequest(&passed);
    EXPECT_EQ(req["execute"], "getfd");
    EXPECT_EQ(req["arguments"]["fdname"], "image");
    ASSERT_GE(passed, 0);
    // The descriptor we received is the write end of the test's pipe.
    ASSERT_EQ(::write(passed, "via-scm", 7), 7);
    ::close(passed);
    peer.reply(req, Json::object());
  });
  auto c = QmpClient::adopt(std::move(p.client), Millis(5000));
  ASSERT_TRUE(c.ok());
  auto r = (*c)->execute("getfd", Json{{"fdname", "image"}}, Millis(5000), pipefd[1]);
  t.join();
  ASSERT_TRUE(r.ok()) << r.error().text();
  ::close(pipefd[1]);
  char buf[16] = {};
  ASSERT_EQ(::read(pipefd[0], buf, sizeof buf), 7);
  EXPECT_STREQ(buf, "via-scm");
  ::close(pipefd[0]);
}

TEST(QmpClient, ConnectToMissingSocketTimesOutNamingIt) {
  auto c = QmpClient::connect("/nonexistent-crbench/qmp.sock", Millis(30));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("/nonexistent-crbench/qmp.sock"), std::string::npos);
}

}  // namespace
}  // namespace crb::qmp
