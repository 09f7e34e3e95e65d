#include "runtime/container.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <fstream>

#include "core/paths.hpp"
#include "scenario/scenario.hpp"

namespace crb {
namespace {

std::string skipReason() {
  if (::geteuid() != 0) return "needs root (namespaces, cgroups, mounts)";
  if (!fs::exists("/sys/fs/cgroup/freezer/cgroup.procs")) return "the cgroup v1 freezer is not mounted";
  if (!fs::exists(guestAgentBinary())) return "the guest agent is not built at " + guestAgentBinary().string();
  return {};
}

bool mounted(const fs::path& p) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.find(p.string()) != std::string::npos) return true;
  return false;
}

struct Traces {
  fs::path runtime, freezer, pids;
  std::string veth;
  pid_t init;
};
Traces tracesOf(const ContainerSandbox& sb) {
  return {sb.runtimeDir(), sb.freezerCgroupDir(), sb.pidsCgroupDir(), sb.hostVeth(), sb.initPid()};
}
void expectGone(const Traces& t) {
  EXPECT_FALSE(fs::exists(t.runtime)) << t.runtime;
  EXPECT_FALSE(fs::exists(t.freezer)) << t.freezer;
  EXPECT_FALSE(fs::exists(t.pids)) << t.pids;
  EXPECT_FALSE(fs::exists("/sys/class/net/" + t.veth)) << t.veth;
  EXPECT_FALSE(mounted(t.runtime)) << "a mount under " << t.runtime << " is left";
  EXPECT_NE(::kill(t.init, 0), 0) << "init " << t.init << " still exists";
}

Result<std::unique_ptr<ContainerSandbox>> startCounter() {
  auto sc = loadScenario("counter");
  if (!sc.ok()) return sc.error();
  return ContainerSandbox::start(*sc, {});
}

}  // namespace

// A frozen container (e.g. an engine failed between freeze and thaw) is still torn down fully.
TEST(ContainerSandbox, StopWhileFrozenLeavesNothing) {
  if (auto r = skipReason(); !r.empty()) GTEST_SKIP() << r;
  auto sb = startCounter();
  ASSERT_TRUE(sb.ok()) << sb.error().text();
  auto& c = **sb;
  EXPECT_GT(c.startMs(), 0);
  auto pids = c.pids();
  ASSERT_TRUE(pids.ok());
  EXPECT_GE(pids->size(), 2u) << "agent and workload";
  ASSERT_TRUE(c.freeze().ok());
  EXPECT_EQ(c.freezerState(), "FROZEN");
  auto t = tracesOf(c);
  auto st = c.stop();
  EXPECT_TRUE(st.ok()) << st.error().text();
  EXPECT_TRUE(c.stop().ok()) << "stop is idempotent";
  expectGone(t);
}

// After the original processes are gone (an engine replaced them, or they crashed), stop still
// removes the network namespace, mounts and cgroups; the netns outlived the processes meanwhile.
TEST(ContainerSandbox, NetnsOutlivesProcessesAndStopStillCleansUp) {
  if (auto r = skipReason(); !r.empty()) GTEST_SKIP() << r;
  auto sb = startCounter();
  ASSERT_TRUE(sb.ok()) << sb.error().text();
  auto& c = **sb;
  auto t = tracesOf(c);
  ASSERT_EQ(::kill(c.initPid(), SIGKILL), 0);
  for (int i = 0; i < 200 && !c.pids().value().empty(); i++) ::usleep(10000);
  EXPECT_TRUE(c.pids().value().empty());
  auto ns = c.openNetns();
  EXPECT_TRUE(ns.ok()) << "the netns is held by the host";
  EXPECT_TRUE(fs::exists("/sys/class/net/" + c.hostVeth())) << "the veth lives as long as the netns";
  ns = Fd();
  EXPECT_TRUE(c.stop().ok());
  expectGone(t);
}

TEST(ContainerSandbox, ExistingIdIsRefusedAndNotTouched) {
  if (auto r = skipReason(); !r.empty()) GTEST_SKIP() << r;
  auto first = startCounter();
  ASSERT_TRUE(first.ok()) << first.error().text();
  auto sc = loadScenario("counter");
  ASSERT_TRUE(sc.ok());
  SandboxOptions o;
  o.id = (*first)->id();
  auto second = ContainerSandbox::start(*sc, o);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.error().message.find(o.id), std::string::npos);
  EXPECT_TRUE(fs::exists((*first)->runtimeDir())) << "the failed start must not remove the other sandbox";
  EXPECT_TRUE(fs::exists((*first)->freezerCgroupDir()));
  EXPECT_EQ(::kill((*first)->initPid(), 0), 0);
  auto t = tracesOf(**first);
  EXPECT_TRUE((*first)->stop().ok());
  expectGone(t);
}

}  // namespace crb
