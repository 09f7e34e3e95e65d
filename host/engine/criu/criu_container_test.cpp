// The criu engine on the real container runtime with the counter scenario: stop-and-copy,
// leave-running, lazy restore, an established TCP connection kept across the restore, the
// refusal of pre-copy with CRIU's words, and CRIU killed mid-dump. Needs root, the container
// runtime and a CRIU that passes the probe; skips (77) with the reason otherwise.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <thread>

#include "agent/agent_client.hpp"
#include "core/clock.hpp"
#include "engine/criu/criu_engine.hpp"
#include "runtime/container.hpp"
#include "scenario/scenario.hpp"

namespace crb {
namespace {

using namespace std::chrono_literals;

class CriuContainer : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (namespaces, cgroups, CRIU)";
    auto caps = engine_.capabilities();
    if (!caps.available()) GTEST_SKIP() << "criu engine unavailable: " << caps.unavailable;
    auto sc = loadScenario("counter", {"hz=50", "buffer_mib=1"});
    if (!sc.ok()) GTEST_SKIP() << "counter scenario: " << sc.error().text();
    scenario_ = *sc;
    SandboxOptions o;
    auto sb = ContainerSandbox::start(scenario_, o);
    if (!sb.ok()) GTEST_SKIP() << "container runtime cannot start here: " << sb.error().text();
    sandbox_ = std::move(*sb);
    char tmpl[] = "/var/tmp/crbench-criu-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    images_ = tmpl;
  }
  void TearDown() override {
    if (sandbox_) EXPECT_TRUE(sandbox_->stop().ok());
    if (!images_.empty()) std::filesystem::remove_all(images_);
  }

  // The counter's value, read inside the container by the agent.
  long count() {
    auto r = agentCall(*sandbox_, Json{{"op", "exec"},
                                       {"argv", {"/usr/local/bin/crb-counter", "--read", "/tmp/counter.state", "count"}},
                                       {"timeout_ms", 5000}});
    if (!r.ok() || !(*r).value("ok", false)) return -1;
    return std::atol((*r).value("stdout", "").c_str());
  }
  long countAfterTicks() {
    long a = count();
    for (int i = 0; i < 200; i++) {
      std::this_thread::sleep_for(20ms);
      long b = count();
      if (b > a) return b;
    }
    return a;
  }
  std::filesystem::path freshImageDir(const char* name) {
    auto d = images_ / name;
    std::filesystem::create_directories(d);
    ::chmod(d.c_str(), 0700);
    return d;
  }
  CheckpointContext ctx(const std::string& mode, const char* dir) {
    CheckpointContext c;
    c.mode = mode;
    c.imageDir = freshImageDir(dir);
    c.mark = [this](const std::string& e) { marks_.push_back(e); };
    return c;
  }
  bool initGone(pid_t pid) {
    auto st = readFile(fmt::format("/proc/{}/stat", pid));
    if (!st.ok()) return true;
    auto p = st->rfind(')');
    return p != std::string::npos && p + 2 < st->size() && ((*st)[p + 2] == 'Z' || (*st)[p + 2] == 'X');
  }
  void expectNothingTraced() {
    for (pid_t p : sandbox_->pids().valueOr({})) {
      auto ts = criu::traceState(p);
      EXPECT_EQ(ts.tracer, 0) << "pid " << p << " still traced";
      EXPECT_FALSE(ts.stopped) << "pid " << p << " still stopped";
    }
    EXPECT_EQ(sandbox_->freezerState(), "THAWED");
  }

  CriuEngine engine_;
  Scenario scenario_;
  std::unique_ptr<ContainerSandbox> sandbox_;
  std::filesystem::path images_;
  std::vector<std::string> marks_;
};

TEST_F(CriuContainer, StopAndCopyRestoresTheTreeInAFreshPidNamespace) {
  long before = countAfterTicks();
  ASSERT_GT(before, 0);
  pid_t oldInit = sandbox_->initPid();
  auto c = ctx(modes::kStopAndCopy, "sac");
  auto ck = engine_.checkpoint(*sandbox_, c);
  ASSERT_TRUE(ck.ok()) << ck.error().text();
  EXPECT_TRUE(initGone(oldInit));
  ASSERT_TRUE(ck->engineFigures.contains("stats_dump")) << ck->engineFigures.dump();
  EXPECT_GT(ck->engineFigures["stats_dump"].value("frozen_time_us", 0), 0);
  EXPECT_GT(ck->engineFigures["stats_dump"].value("pages_written", 0), 0);
  EXPECT_NE(std::find(marks_.begin(), marks_.end(), "frozen"), marks_.end());
  auto rs = engine_.restore(*sandbox_, c);
  ASSERT_TRUE(rs.ok()) << rs.error().text();
  EXPECT_NE(sandbox_->initPid(), oldInit);
  ASSERT_TRUE(sandbox_->waitForAgentPing(10s).ok());
  EXPECT_TRUE(rs->engineFigures.contains("stats_restore")) << rs->engineFigures.dump();
  long after = countAfterTicks();
  EXPECT_GT(after, before) << "the counter restarted or stopped";
  expectNothingTraced();
}

TEST_F(CriuContainer, LeaveRunningKeepsTheWorkloadAndRestoreReplacesIt) {
  long before = countAfterTicks();
  auto c = ctx(modes::kLeaveRunning, "lr");
  auto ck = engine_.checkpoint(*sandbox_, c);
  ASSERT_TRUE(ck.ok()) << ck.error().text();
  ASSERT_TRUE(sandbox_->waitForAgentPing(5s).ok()) << "workload stopped after a leave-running dump";
  expectNothingTraced();
  long during = countAfterTicks();
  EXPECT_GT(during, before);
  auto rs = engine_.restore(*sandbox_, c);
  ASSERT_TRUE(rs.ok()) << rs.error().text();
  ASSERT_TRUE(sandbox_->waitForAgentPing(10s).ok());
  // Restored from the image: the count continues from the checkpointed value, not from `during`.
  long after = countAfterTicks();
  EXPECT_GT(after, before);
}

TEST_F(CriuContainer, LazyRestoreServesPagesOnDemand) {
  auto caps = engine_.capabilities();
  if (std::find(caps.modes.begin(), caps.modes.end(), modes::kLazy) == caps.modes.end())
    GTEST_SKIP() << "lazy unsupported: " << caps.unsupportedModes[modes::kLazy];
  long before = countAfterTicks();
  auto c = ctx(modes::kLazy, "lazy");
  auto ck = engine_.checkpoint(*sandbox_, c);
  ASSERT_TRUE(ck.ok()) << ck.error().text();
  auto rs = engine_.restore(*sandbox_, c);
  ASSERT_TRUE(rs.ok()) << rs.error().text();
  ASSERT_TRUE(sandbox_->waitForAgentPing(10s).ok());
  EXPECT_TRUE(rs->phasesMs.count("lazy_pages_served"));
  EXPECT_EQ(rs->engineFigures.value("lazy_daemon_exit", ""), "exit 0") << rs->engineFigures.dump();
  EXPECT_GT(countAfterTicks(), before);
}

TEST_F(CriuContainer, PreCopyIsRefusedWithCriusReason) {
  auto caps = engine_.capabilities();
  auto c = ctx(modes::kPreCopy, "pre");
  auto ck = engine_.checkpoint(*sandbox_, c);
  if (caps.unsupportedModes.count(modes::kPreCopy) &&
      caps.unsupportedModes[modes::kPreCopy].find("CRIU says") == std::string::npos)
    GTEST_SKIP() << "this kernel has soft-dirty tracking: " << caps.unsupportedModes[modes::kPreCopy];
  ASSERT_FALSE(ck.ok());
  EXPECT_NE(ck.error().message.find("CRIU says"), std::string::npos) << ck.error().text();
  EXPECT_NE(ck.error().message.find("Dirty tracking"), std::string::npos) << ck.error().text();
  // Nothing happened to the workload.
  EXPECT_TRUE(sandbox_->waitForAgentPing(5s).ok());
  expectNothingTraced();
}

// A TCP connection from the host to the agent's control port, open across checkpoint and restore.
TEST_F(CriuContainer, EstablishedTcpConnectionSurvivesWithTcpEstablished) {
  auto sock = sandbox_->openControlSocket();
  ASSERT_TRUE(sock.ok()) << sock.error().text();
  auto ask = [&](const std::string& req) -> std::string {
    std::string line = req + "\n";
    if (::send(sock->get(), line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size()))
      return "send failed: " + std::string(std::strerror(errno));
    std::string got;
    char buf[4096];
    auto deadline = Clock::now() + 10s;
    while (got.find('\n') == std::string::npos && Clock::now() < deadline) {
      pollfd p{sock->get(), POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      ssize_t n = ::recv(sock->get(), buf, sizeof buf, 0);
      if (n <= 0) return "connection closed";
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  };
  std::string first = ask(R"({"op":"ping"})");
  ASSERT_NE(first.find("\"ok\":true"), std::string::npos) << first;
  auto c = ctx(modes::kStopAndCopy, "tcp");
  c.options = Json{{"tcp-established", "1"}};
  auto ck = engine_.checkpoint(*sandbox_, c);
  ASSERT_TRUE(ck.ok()) << ck.error().text();
  auto rs = engine_.restore(*sandbox_, c);
  ASSERT_TRUE(rs.ok()) << rs.error().text();
  std::string again = ask(R"({"op":"ping"})");
  EXPECT_NE(again.find("\"ok\":true"), std::string::npos) << "same connection after restore: " << again;
}

// CRIU killed at several points of a dump: the workload must be thawed, untraced and running.
TEST_F(CriuContainer, CriuKilledMidDumpLeavesTheWorkloadRunning) {
  int n = 0;
  for (int killMs : {5, 25, 60}) {
    auto c = ctx(modes::kStopAndCopy, fmt::format("kill{}", n++).c_str());
    c.options = Json{{"kill-after-ms", std::to_string(killMs)}};
    pid_t init = sandbox_->initPid();
    auto ck = engine_.checkpoint(*sandbox_, c);
    if (ck.ok()) {
      // The dump finished before the kill: the workload is gone by design; bring it back.
      auto rs = engine_.restore(*sandbox_, c);
      ASSERT_TRUE(rs.ok()) << rs.error().text();
      ASSERT_TRUE(sandbox_->waitForAgentPing(10s).ok());
      continue;
    }
    SCOPED_TRACE(fmt::format("killed after {} ms: {}", killMs, ck.error().message));
    if (initGone(init)) {
      // Acceptable only when reported.
      EXPECT_NE(ck.error().message.find("workload is gone"), std::string::npos) << ck.error().message;
      break;
    }
    EXPECT_NE(ck.error().message.find("thawed and running"), std::string::npos) << ck.error().message;
    expectNothingTraced();
    EXPECT_TRUE(sandbox_->waitForAgentPing(5s).ok());
    long a = count();
    EXPECT_GT(countAfterTicks(), a) << "counter not progressing after the failed dump";
  }
}

}  // namespace
}  // namespace crb
