#include "fidelity/fidelity.hpp"

#include <gtest/gtest.h>

namespace crb {
namespace {
Json digest(long counterPid, const std::string& cwd, long pos, const std::string& mapsHash) {
  return Json{{"ok", true},
              {"processes",
               {{{"pid", 1}, {"ppid", 0}, {"name", "crbench-agent"}, {"fds", {{{"fd", 9}, {"kind", "socket"}, {"path", "socket"}}}}},
                {{"pid", counterPid},
                 {"ppid", 1},
                 {"name", "crb-counter"},
                 {"cwd", cwd},
                 {"limits_hash", "abc"},
                 {"maps", {{"count", 10}, {"bytes", 4096}, {"hash", mapsHash}}},
                 {"fds", {{{"fd", 3}, {"kind", "file"}, {"path", "/tmp/log"}, {"pos", pos}}}}}}},
              {"workload", "count 5\n"}};
}
const FidelityCheck& find(const std::vector<FidelityCheck>& v, const std::string& n) {
  for (auto& c : v)
    if (c.name == n) return c;
  static FidelityCheck none{"missing", Verdict::Fail, "no such check"};
  return none;
}
}  // namespace

TEST(Fidelity, IdenticalDigestsPass) {
  auto checks = compareDigests(digest(2, "/", 10, "h"), digest(2, "/", 12, "h"));
  EXPECT_EQ(overallVerdict(checks), "pass");
  EXPECT_EQ(find(checks, "process-tree").verdict, Verdict::Pass);
  EXPECT_EQ(find(checks, "fd-offsets").verdict, Verdict::Pass) << "offsets moving forward are a live workload";
}

TEST(Fidelity, DifferencesAreNamed) {
  auto checks = compareDigests(digest(2, "/", 10, "h"), digest(3, "/tmp", 0, "x"));
  EXPECT_EQ(overallVerdict(checks), "fail");
  auto& tree = find(checks, "process-tree");
  EXPECT_EQ(tree.verdict, Verdict::Fail);
  EXPECT_NE(tree.detail.find("crb-counter(2) is gone"), std::string::npos) << tree.detail;
  // pid 2 vanished, so per-process checks have nothing to compare for it.
  EXPECT_EQ(find(checks, "cwd").verdict, Verdict::NotApplicable);
  auto same = compareDigests(digest(2, "/", 10, "h"), digest(2, "/tmp", 0, "x"));
  EXPECT_EQ(find(same, "cwd").verdict, Verdict::Fail);
  EXPECT_EQ(find(same, "fd-offsets").verdict, Verdict::Fail);
  EXPECT_EQ(find(same, "memory-maps").verdict, Verdict::Fail);
}

TEST(Fidelity, MissingDigestIsNotApplicable) {
  auto checks = compareDigests(Json(), digest(2, "/", 0, "h"));
  for (auto& c : checks) EXPECT_EQ(c.verdict, Verdict::NotApplicable) << c.name;
}

TEST(Fidelity, ScenarioExpectations) {
  auto run = [](const std::string& out, int exit = 0) {
    CheckRun r;
    r.ran = true;
    r.exitCode = exit;
    r.out = out;
    return r;
  };
  ScenarioCheck c{"count", {"x"}, "increases", ""};
  EXPECT_EQ(judgeScenarioCheck(c, run("5\n"), run("9\n")).verdict, Verdict::Pass);
  EXPECT_EQ(judgeScenarioCheck(c, run("5\n"), run("5\n")).verdict, Verdict::Fail);
  EXPECT_EQ(judgeScenarioCheck(c, run("5\n"), run("five\n")).verdict, Verdict::Fail);
  c.expect = "same";
  EXPECT_EQ(judgeScenarioCheck(c, run("42"), run("42\n")).verdict, Verdict::Pass);
  EXPECT_EQ(judgeScenarioCheck(c, run("42"), run("43")).verdict, Verdict::Fail);
  c.expect = "changed";
  EXPECT_EQ(judgeScenarioCheck(c, run("a"), run("b")).verdict, Verdict::Pass);
  c.expect = "exit-zero";
  EXPECT_EQ(judgeScenarioCheck(c, run("", 0), run("", 0)).verdict, Verdict::Pass);
  EXPECT_EQ(judgeScenarioCheck(c, run("", 0), run("bad", 1)).verdict, Verdict::Fail);
  CheckRun notRun;
  notRun.error = "agent gone";
  auto f = judgeScenarioCheck(c, run(""), notRun);
  EXPECT_EQ(f.verdict, Verdict::Fail);
  EXPECT_NE(f.detail.find("agent gone"), std::string::npos);
  EXPECT_EQ(judgeScenarioCheck(c, notRun, run("")).verdict, Verdict::NotApplicable);
}
}  // namespace crb

namespace crb {
// A live program's heap end and anonymous arenas move between the two digests: with the agent's
// layout hash that is not a difference, while a changed file-backed layout still is.
TEST(Fidelity, LayoutHashToleratesHeapGrowth) {
  auto withMaps = [](const std::string& full, const std::string& layout, bool agentFlag) {
    Json d = digest(2, "/", 10, full);
    d["processes"][1]["maps"]["layout_hash"] = layout;
    // In the VM the agent is /init: it is known by its flag, not its name.
    d["processes"][0]["name"] = "init";
    if (agentFlag) d["processes"][0]["agent"] = true;
    d["processes"][0]["maps"] = Json{{"hash", full}};
    return d;
  };
  auto grown = compareDigests(withMaps("h1", "L", true), withMaps("h2", "L", true));
  EXPECT_EQ(find(grown, "memory-maps").verdict, Verdict::Pass) << find(grown, "memory-maps").detail;
  auto moved = compareDigests(withMaps("h1", "L", true), withMaps("h2", "M", true));
  EXPECT_EQ(find(moved, "memory-maps").verdict, Verdict::Fail);
  // Without the flag the agent's own maps (its heap grows too) would be compared.
  auto unflagged = compareDigests(withMaps("h1", "L", false), withMaps("h2", "L", false));
  EXPECT_EQ(find(unflagged, "memory-maps").verdict, Verdict::Fail);
}
}  // namespace crb
