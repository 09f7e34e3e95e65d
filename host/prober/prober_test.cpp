#include "prober/prober.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "core/clock.hpp"

namespace crb {
namespace {

// A local UDP echo (the agent's role) whose echoing can be paused for a known time.
class PausableEcho {
 public:
  PausableEcho() {
    fd_.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
  }
  ~PausableEcho() {
    stop_ = true;
    thread_.join();
  }
  int port() const { return port_; }
  // Stop echoing for `ms`; returns the CLOCK_MONOTONIC ns when echoing stopped and resumed.
  std::pair<int64_t, int64_t> pause(int ms) {
    pauseMs_ = ms;
    while (pauseMs_ != 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
    return {pausedAt_, resumedAt_};
  }
  std::atomic<int> dropEvery{0};  // drop every Nth datagram (0: none)

 private:
  void loop() {
    char buf[256];
    uint64_t n = 0;
    while (!stop_) {
      if (int ms = pauseMs_.load()) {
        pausedAt_ = monoNs();
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        resumedAt_ = monoNs();
        pauseMs_ = 0;
      }
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 1) <= 0) continue;
      sockaddr_in from{};
      socklen_t len = sizeof from;
      ssize_t r = ::recvfrom(fd_.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (r <= 0) continue;
      n++;
      if (dropEvery && n % static_cast<uint64_t>(dropEvery.load()) == 0) continue;
      ::sendto(fd_.get(), buf, static_cast<size_t>(r), 0, reinterpret_cast<sockaddr*>(&from), len);
    }
  }
  Fd fd_;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> pauseMs_{0};
  std::atomic<int64_t> pausedAt_{0}, resumedAt_{0};
  std::thread thread_;
};

Fd connectTo(int port) {
  Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  return fd;
}

}  // namespace

// Calibration: the prober must see an injected echo pause as a reply gap of that length.
// Bounds: the echo stops after its last reply and answers again only after sleeping >= P, so the
// gap cannot be shorter than P except for the few microseconds between the echo's clock reads and
// the prober's arrival stamps (allow 1 ms). It can be longer by up to one probe interval (the
// first probe after the resume may be sent up to 1 ms later at 1 kHz) plus scheduling delay of
// the three threads involved on a shared 2-core machine; 25 ms covers a CI box under load while
// still failing on any real error (a missed pause, a double count, a wrong clock or unit).
TEST(Prober, MeasuresAKnownPause) {
  PausableEcho echo;
  Prober prober(connectTo(echo.port()), ProberOptions{1000, 100});
  ASSERT_TRUE(prober.start().ok());
  ASSERT_TRUE(prober.waitForReplies(50, 0, 5000)) << "no replies from the local echo";
  int64_t before = prober.mark("pause-start");
  auto [pausedAt, resumedAt] = echo.pause(200);
  prober.mark("pause-end");
  ASSERT_TRUE(prober.waitForReplies(50, resumedAt, 5000));
  prober.stop();
  auto t = prober.trace();
  auto gap = t.longestGap(before, *t.markNs("pause-end"));
  ASSERT_TRUE(gap.valid);
  EXPECT_TRUE(gap.resumed);
  double gapMs = static_cast<double>(gap.gapNs) / 1e6;
  double pauseMs = static_cast<double>(resumedAt - pausedAt) / 1e6;
  EXPECT_GE(pauseMs, 200.0);
  EXPECT_GE(gapMs, pauseMs - 1.0) << "gap " << gapMs << " ms, pause " << pauseMs << " ms";
  EXPECT_LE(gapMs, pauseMs + 25.0) << "gap " << gapMs << " ms, pause " << pauseMs << " ms";
  // Probes sent during the pause queue in the echo's socket buffer (some may overflow it and
  // count as lost) and are answered after it.
  auto s = t.stats();
  EXPECT_GT(s.sent, 200u);
  EXPECT_GT(s.rttMaxMs, 150.0) << "probes queued during the pause have a long round trip";
}

TEST(Prober, CountsLossAndKeepsEverySample) {
  PausableEcho echo;
  echo.dropEvery = 10;
  Prober prober(connectTo(echo.port()), ProberOptions{2000, 100});
  ASSERT_TRUE(prober.start().ok());
  ASSERT_TRUE(prober.waitForReplies(200, 0, 5000));
  prober.stop();
  auto t = prober.trace();
  auto s = t.stats();
  EXPECT_EQ(s.sent, t.samples.size());
  EXPECT_EQ(s.sent, s.replied + s.lost);
  // Every 10th datagram is dropped by the echo, which saw every probe: loss is 1/10 of the
  // probes it received (the last few may be in flight at stop, hence the range).
  EXPECT_GE(s.lost, s.sent / 10 - 1);
  EXPECT_LE(s.lost, s.sent / 10 + 2);
  auto j = t.toJson();
  EXPECT_EQ(j["samples"]["send"].size(), t.samples.size());
  EXPECT_EQ(j["samples"]["recv"].size(), t.samples.size());
  EXPECT_EQ(j["clock"], "CLOCK_MONOTONIC");
}

TEST(Prober, GapWithoutResumeIsReportedAsNotResumed) {
  ProbeTrace t;
  t.startNs = 0;
  t.endNs = 1000;
  t.replyNs = {10, 20, 30};
  auto g = t.longestGap(25, 40);
  ASSERT_TRUE(g.valid);
  EXPECT_FALSE(g.resumed);
  EXPECT_EQ(g.gapNs, 970);
  t.replyNs = {10, 20, 30, 100, 105};
  g = t.longestGap(25, 40);
  EXPECT_TRUE(g.resumed);
  EXPECT_EQ(g.gapNs, 70);
  EXPECT_EQ(g.fromNs, 30);
  EXPECT_EQ(g.toNs, 100);
  // Only gaps overlapping the window count: the 70 ns one lies outside [101, 104].
  g = t.longestGap(101, 104);
  EXPECT_EQ(g.gapNs, 5);
  EXPECT_EQ(*t.firstReplyAfter(31), 100);
}

TEST(Prober, SurvivesAnEchoThatGoesAwayAndComesBack) {
  // A restore replaces the agent: for a while nothing listens (ICMP port unreachable turns into
  // ECONNREFUSED on our connected socket), then a new echo answers on the same port.
  int port;
  auto prober = std::make_unique<Prober>(Fd(), ProberOptions{});
  {
    PausableEcho first;
    port = first.port();
    prober = std::make_unique<Prober>(connectTo(port), ProberOptions{1000, 100});
    ASSERT_TRUE(prober->start().ok());
    ASSERT_TRUE(prober->waitForReplies(20, 0, 5000));
  }
  // The echo is gone; bind a new one to the same port.
  Fd again(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  int64_t back = monoNs();
  ASSERT_EQ(::bind(again.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  std::atomic<bool> stop{false};
  std::thread echo([&] {
    char buf[256];
    while (!stop) {
      pollfd p{again.get(), POLLIN, 0};
      if (::poll(&p, 1, 5) <= 0) continue;
      sockaddr_in from{};
      socklen_t len = sizeof from;
      ssize_t r = ::recvfrom(again.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
      if (r > 0) ::sendto(again.get(), buf, static_cast<size_t>(r), 0, reinterpret_cast<sockaddr*>(&from), len);
    }
  });
  EXPECT_TRUE(prober->waitForReplies(20, back, 5000)) << "replies did not resume";
  prober->stop();
  stop = true;
  echo.join();
  auto t = prober->trace();
  auto g = t.longestGap(t.startNs, back);
  EXPECT_TRUE(g.resumed);
  EXPECT_GE(g.gapNs, 50 * 1000000);
}

}  // namespace crb
