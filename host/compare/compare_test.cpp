#include "compare/compare.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace crb {
namespace {

std::vector<EngineInfo> fakeEngines() {
  EngineInfo criu{"criu", {}};
  criu.caps.runtimes = {RuntimeKind::Container};
  criu.caps.modes = {"stop-and-copy", "leave-running"};
  criu.caps.unsupportedModes = {{"lazy", "userfaultfd unavailable"}};
  EngineInfo pause{"pause", {}};
  pause.caps.runtimes = {RuntimeKind::Container, RuntimeKind::Vm};
  pause.caps.modes = {"stop-and-copy"};
  EngineInfo qemu{"qemu", {}};
  qemu.caps.runtimes = {RuntimeKind::Vm};
  qemu.caps.unavailable = "qemu-system-x86_64 not found";
  return {criu, pause, qemu};
}

CompareRequest req() {
  CompareRequest r;
  r.scenario = "counter";
  r.repeats = 2;
  return r;
}

TEST(CompareMatrix, EveryValidCombinationWithReasonsForTheRest) {
  auto plan = planMatrix(req(), fakeEngines(), {"container", "vm"});
  ASSERT_TRUE(plan.ok()) << plan.error().text();
  std::vector<std::string> keys;
  for (auto& c : *plan) keys.push_back(c.key() + ":" + c.status);
  EXPECT_EQ(keys, (std::vector<std::string>{"container/criu/stop-and-copy:run", "container/criu/leave-running:run",
                                            "container/criu/lazy:unsupported", "container/pause/stop-and-copy:run",
                                            "vm/pause/stop-and-copy:run", "vm/qemu/-:unavailable"}));
  EXPECT_EQ(plan->back().reason, "qemu-system-x86_64 not found");
}

TEST(CompareMatrix, ScenarioRuntimeLimitsAreRows) {
  auto plan = planMatrix(req(), fakeEngines(), {"container"});
  ASSERT_TRUE(plan.ok());
  bool found = false;
  for (auto& c : *plan)
    if (c.key() == "vm/pause/-") found = c.status == "unsupported" && c.reason.find("does not run on the vm") != std::string::npos;
  EXPECT_TRUE(found);
}

TEST(CompareMatrix, BadInputIsRefusedWithTheValidChoices) {
  auto r = req();
  r.engines = {"crui"};
  auto e = planMatrix(r, fakeEngines(), {"container"});
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().exitCode, 2);
  EXPECT_NE(e.error().text().find("unknown engine 'crui'"), std::string::npos);
  EXPECT_NE(e.error().text().find("criu, pause, qemu"), std::string::npos);

  r = req();
  r.engines = {"criu", "pause"};
  r.modes = {"leave-running"};
  e = planMatrix(r, fakeEngines(), {"container"});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().text().find("engine pause has no mode 'leave-running'"), std::string::npos) << e.error().text();

  r = req();
  r.modes = {"teleport"};
  e = planMatrix(r, fakeEngines(), {"container"});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().text().find("no selected engine has mode 'teleport'"), std::string::npos);

  r = req();
  r.repeats = 0;
  e = planMatrix(r, fakeEngines(), {"container"});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().text().find("--repeats 0"), std::string::npos);

  r = req();
  r.runtimes = {"lxc"};
  EXPECT_FALSE(planMatrix(r, fakeEngines(), {"container"}).ok());
}

TEST(CompareMatrix, QuickKeepsOneModePerEngine) {
  auto r = req();
  r.quick = true;
  auto plan = planMatrix(r, fakeEngines(), {"container"});
  ASSERT_TRUE(plan.ok());
  for (auto& c : *plan) EXPECT_NE(c.mode, "leave-running");
}

TEST(CompareMatrix, QuickStillListsAnEngineWithNoModeHere) {
  auto engines = fakeEngines();
  EngineInfo native{"native", {}};
  native.caps.runtimes = {RuntimeKind::Container};
  native.caps.unsupportedModes = {{"stop-and-copy", "container restore is not implemented yet"}};
  engines.push_back(native);
  auto r = req();
  r.quick = true;
  auto plan = planMatrix(r, engines, {"container"});
  ASSERT_TRUE(plan.ok());
  bool found = false;
  for (auto& c : *plan)
    if (c.engine == "native") found = c.status == "unsupported" && c.reason == "container restore is not implemented yet";
  EXPECT_TRUE(found) << "an engine that cannot run must not vanish from a --quick table";
}

TEST(CompareSchedule, InterleavedRoundRobinWithWarmupFirst) {
  std::vector<Combination> combos = {{"container", "a", "m", "run", ""}, {"container", "b", "m", "unsupported", "x"},
                                     {"container", "c", "m", "run", ""}};
  auto s = schedule(combos, 2, true);
  std::vector<std::string> order;
  for (auto& x : s) order.push_back(std::to_string(x.combo) + "/" + std::to_string(x.repeat));
  EXPECT_EQ(order, (std::vector<std::string>{"0/0", "2/0", "0/1", "2/1", "0/2", "2/2"}));
  EXPECT_TRUE(s[0].warmup);
  EXPECT_FALSE(s[2].warmup);
}

Json fakeRecord(const Combination& c, const Slot& s, double downtime, bool ok) {
  Json r = {{"schema", "crbench-run"}, {"schema_version", 1}, {"run_id", c.key() + std::to_string(s.repeat)},
            {"status", ok ? "ok" : "failed"}, {"runtime", c.runtime}, {"engine", c.engine}, {"mode", c.mode},
            {"downtime_ms", downtime}, {"timings_ms", {{"checkpoint", 5.0}, {"restore", 7.0}}},
            {"image", {{"apparent_bytes", 2 << 20}}},
            {"fidelity", {{"verdict", "pass"}, {"checks", {{{"name", "a"}, {"result", "pass"}}, {{"name", "b"}, {"result", "not-applicable"}}}}}}};
  if (!ok) r["error"] = {{"message", "boom"}, {"phase", "restore"}};
  return r;
}

TEST(CompareRun, SummaryLeavesWarmupOutAndKeepsFailures) {
  std::vector<Combination> combos = {{"container", "a", "stop-and-copy", "run", ""},
                                     {"container", "b", "stop-and-copy", "run", ""},
                                     {"vm", "q", "-", "unavailable", "no qemu"}};
  CompareRequest r = req();
  r.repeats = 3;
  int calls = 0;
  auto res = runCompare(r, combos, [&](const Combination& c, const Slot& s) {
    if (s.refused) {
      Json rec = fakeRecord(c, s, 0, false);
      rec["status"] = "unsupported";
      return rec;
    }
    ++calls;
    if (c.engine == "b") return fakeRecord(c, s, 0, false);
    return fakeRecord(c, s, s.warmup ? 1000.0 : 10.0 * s.repeat, true);
  });
  EXPECT_EQ(calls, 8);  // (1 warm-up + 3) × 2 runnable combinations
  EXPECT_EQ(res.records.size(), 9u);  // + the unavailable combination's record
  EXPECT_TRUE(res.records[0]["compare"]["warmup"].get<bool>());
  auto& rows = res.summary["combinations"];
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["status"], "ok");
  EXPECT_EQ(rows[0]["n"], 3);
  EXPECT_DOUBLE_EQ(rows[0]["metrics"]["downtime_ms"]["median"].get<double>(), 20);  // warm-up's 1000 left out
  EXPECT_DOUBLE_EQ(rows[0]["metrics"]["downtime_ms"]["max"].get<double>(), 30);
  EXPECT_EQ(rows[0]["fidelity"]["passed"], 3);
  EXPECT_EQ(rows[0]["fidelity"]["total"], 3);
  EXPECT_EQ(rows[1]["status"], "failed");
  EXPECT_NE(rows[1]["reason"].get<std::string>().find("boom"), std::string::npos);
  EXPECT_EQ(rows[2]["status"], "unavailable");
  std::string table = formatTable(res.summary);
  EXPECT_NE(table.find("20.0 (10.0–30.0)"), std::string::npos) << table;
  EXPECT_NE(table.find("unavailable: no qemu"), std::string::npos) << table;
  EXPECT_NE(table.find("failed: boom"), std::string::npos) << table;
}

TEST(CompareRun, InterruptStopsBeforeTheNextRunAndIsNeitherFigureNorFailure) {
  std::vector<Combination> combos = {{"container", "a", "stop-and-copy", "run", ""},
                                     {"container", "b", "stop-and-copy", "run", ""},
                                     {"vm", "q", "-", "unavailable", "no qemu"}};
  CompareRequest r = req();
  r.repeats = 2;
  r.warmup = false;
  bool stop = false;
  r.cancelled = [&] { return stop; };
  int calls = 0;
  auto res = runCompare(r, combos, [&](const Combination& c, const Slot& s) {
    if (s.refused) {
      Json rec = fakeRecord(c, s, 0, false);
      rec["status"] = "unsupported";
      return rec;
    }
    ++calls;
    if (c.engine == "b") {
      stop = true;  // the signal arrives during b's first run, which its runner marks
      Json rec = fakeRecord(c, s, 0, false);
      rec["interrupted"] = true;
      return rec;
    }
    return fakeRecord(c, s, 10.0, true);
  });
  EXPECT_EQ(calls, 2);                // a#1, b#1; a#2 and b#2 never start
  EXPECT_EQ(res.records.size(), 3u);  // + the planned refusal, which starts nothing
  auto& rows = res.summary["combinations"];
  EXPECT_EQ(rows[0]["status"], "ok");
  EXPECT_EQ(rows[0]["n"], 1);
  EXPECT_EQ(rows[1]["status"], "interrupted");
  EXPECT_EQ(rows[1]["failed"], 0);
  EXPECT_EQ(rows[1]["interrupted"], 1);
  EXPECT_FALSE(rows[1]["metrics"].contains("downtime_ms"));
  EXPECT_EQ(rows[2]["status"], "unavailable");
  ASSERT_TRUE(res.summary.contains("interrupted"));
  EXPECT_EQ(res.summary["interrupted"]["runs_not_started"], 2);
  EXPECT_NE(formatTable(res.summary).find("interrupted"), std::string::npos);
}

TEST(CompareEngines, OnlyTheEnginesAskedForAreProbed) {
  // libvirt's probe starts a daemon: asked for the container runtime only, it must not run.
  auto all = EngineRegistry::instance().names();
  if (std::find(all.begin(), all.end(), "libvirt") == all.end()) GTEST_SKIP() << "libvirt engine not built";
  auto engines = registeredEngines({"libvirt", "pause"}, {"container"});
  EXPECT_EQ(engines.size(), all.size());  // every name stays known, for the unknown-engine error
  for (auto& e : engines) {
    if (e.name == "libvirt") {
      EXPECT_NE(e.caps.unavailable.find("not probed"), std::string::npos) << e.caps.unavailable;
      EXPECT_FALSE(e.caps.supportsRuntime(RuntimeKind::Container));
    } else if (e.name != "pause") {
      EXPECT_TRUE(e.caps.modes.empty() && e.caps.unsupportedModes.empty()) << e.name << " was probed";
    }
  }
  CompareRequest r = req();
  r.engines = {"libvirt", "pause"};
  r.runtimes = {"container"};
  r.modes = {"stop-and-copy"};
  auto plan = planMatrix(r, engines, {"container", "vm"});
  ASSERT_TRUE(plan.ok()) << plan.error().text();
  for (auto& c : *plan)
    if (c.engine == "libvirt") EXPECT_EQ(c.status, "unsupported") << c.key();
}

}  // namespace
}  // namespace crb
