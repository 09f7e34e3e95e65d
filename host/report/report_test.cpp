#include "report/report.hpp"

#include <gtest/gtest.h>

#include <cstdlib>

#include "core/fsutil.hpp"

namespace crb {
namespace {

Json record(const std::string& scenario, const std::string& engine, const std::string& status, double downtime,
            int sizeMib = 64) {
  static int seq = 0;
  Json r = {{"schema", "crbench-run"},
            {"schema_version", 1},
            {"run_id", "run-" + std::to_string(++seq)},
            {"crbench", {{"version", "0.1.0"}, {"commit", "abc"}}},
            {"environment", {{"cpu_model", "Test CPU"}, {"cores", 2}, {"kernel", "Linux 6.18"},
                             {"accelerator", {{"accel", "tcg"}, {"reason", "test"}}}}},
            {"status", status},
            {"runtime", "container"},
            {"engine", engine},
            {"mode", "stop-and-copy"},
            {"scenario", {{"name", scenario}, {"params", {{"size_mib", sizeMib}}}}},
            {"timings_ms", {{"checkpoint", downtime * 0.8}, {"restore", downtime * 0.3}, {"first_reply_after_restore", 1.5}}},
            {"downtime_ms", downtime},
            {"image", {{"apparent_bytes", 1 << 20}, {"allocated_bytes", 1 << 20}}},
            {"fidelity", {{"verdict", "pass"}, {"checks", {{{"name", "pid-same"}, {"result", "pass"}, {"detail", ""}}}}}}};
  r["probe"] = {{"trace", {{"samples", {{"send", {0, 1000000, 2000000, 3000000}}, {"recv", {100000, nullptr, 30000000, 3100000}}}},
                            {"marks", {{{"name", "checkpoint-start"}, {"ns", 1500000}}, {{"name", "restore-end"}, {"ns", 2900000}}}}}}};
  if (status != "ok") r["error"] = {{"message", "engine said no"}, {"phase", "checkpoint"}};
  return r;
}

fs::path tempDir() {
  char tmpl[] = "/tmp/crb-report-test-XXXXXX";
  return fs::path(mkdtemp(tmpl));
}

TEST(Report, RendersTablesChartsFidelityAndFailedRuns) {
  RunSet set;
  for (double d : {10.0, 12.0, 11.0}) ASSERT_EQ(addRecord(set, record("counter", "criu", "ok", d), "f"), "");
  for (double d : {100.0, 120.0}) ASSERT_EQ(addRecord(set, record("counter", "pause", "ok", d), "f"), "");
  ASSERT_EQ(addRecord(set, record("counter", "native", "failed", 0), "f"), "");
  std::vector<std::string> problems;
  std::string html = renderHtml(set, {}, problems);
  EXPECT_TRUE(problems.empty());
  EXPECT_NE(html.find("data-metric=\"downtime_ms\""), std::string::npos);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("probe trace"), std::string::npos);
  EXPECT_NE(html.find("engine said no"), std::string::npos);  // failed run listed with its reason
  EXPECT_NE(html.find("pass 3/3"), std::string::npos);       // fidelity matrix cell for criu
  EXPECT_NE(html.find("Test CPU"), std::string::npos);
  EXPECT_NE(html.find("10.00×"), std::string::npos);  // pause median 110 over criu median 11
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org"));  // no network references but the SVG namespace
  std::string md = renderMarkdown(set, {}, problems);
  EXPECT_NE(md.find("| container | criu | stop-and-copy | 11.00 | n/a (n=3 < 6)"), std::string::npos) << md;
}

TEST(Report, BadInputsAreReportedAndTheRestRendered) {
  fs::path dir = tempDir();
  ASSERT_TRUE(writeFileAtomic(dir / "good.json", record("counter", "criu", "ok", 5).dump()).ok());
  Json other = record("counter", "criu", "ok", 5);
  other["schema_version"] = 2;
  ASSERT_TRUE(writeFileAtomic(dir / "v2.json", other.dump()).ok());
  std::string full = record("counter", "criu", "ok", 5).dump();
  ASSERT_TRUE(writeFileAtomic(dir / "truncated.json", full.substr(0, full.size() / 2)).ok());
  ASSERT_TRUE(writeFileAtomic(dir / "mixed.json", record("memory", "criu", "ok", 7).dump()).ok());
  RunSet set = loadRuns({dir, dir / "missing.json"});
  ASSERT_EQ(set.problems.size(), 3u);
  std::string all;
  for (auto& p : set.problems) all += p + "\n";
  EXPECT_NE(all.find("schema version 2 is not 1"), std::string::npos) << all;
  EXPECT_NE(all.find("truncated"), std::string::npos) << all;
  EXPECT_NE(all.find("missing.json: no such file"), std::string::npos) << all;
  auto out = writeReport(set, {}, dir / "out");
  ASSERT_TRUE(out.ok()) << out.error().text();
  std::string problems;
  for (auto& p : out->problems) problems += p + "\n";
  EXPECT_NE(problems.find("different scenarios are mixed"), std::string::npos) << problems;
  auto html = readFile(out->html);
  ASSERT_TRUE(html.ok());
  EXPECT_NE(html->find("Input problems"), std::string::npos);
  EXPECT_NE(html->find("data-metric=\"downtime_ms\""), std::string::npos);
  EXPECT_TRUE(fs::exists(out->markdown));
  fs::remove_all(dir);
}

TEST(Report, NothingReadableIsAnError) {
  RunSet set = loadRuns({"/nonexistent/crbench/results"});
  auto out = writeReport(set, {}, "/tmp/unused");
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.error().message.find("no readable run records"), std::string::npos);
}

TEST(Report, VaryingParameterSplitsGroupsAndDrawsScaling) {
  RunSet set;
  for (int size : {64, 256, 1024})
    for (double d : {1.0, 2.0}) ASSERT_EQ(addRecord(set, record("memory", "criu", "ok", d * size / 64, size), "f"), "");
  EXPECT_EQ(varyingParams(set.runs), std::vector<std::string>{"size_mib"});
  EXPECT_EQ(groupRuns(set.runs).size(), 3u);
  std::vector<std::string> problems;
  std::string html = renderHtml(set, {}, problems);
  EXPECT_NE(html.find("against size_mib"), std::string::npos);
}

TEST(Report, RefusedCombinationsAreListedOnceNotAsFidelityColumns) {
  RunSet set;
  ASSERT_EQ(addRecord(set, record("counter", "criu", "ok", 10), "f"), "");
  Json refused = record("counter", "native", "unsupported", 0);
  refused["error"] = {{"message", "container restore is not implemented yet"}, {"phase", "capabilities"}};
  refused["fidelity"] = {{"verdict", "none"}, {"checks", Json::array()}};
  ASSERT_EQ(addRecord(set, refused, "f"), "");
  ASSERT_EQ(addRecord(set, record("counter", "pause", "failed", 0), "f"), "");
  std::vector<std::string> problems;
  std::string md = renderMarkdown(set, {}, problems);
  EXPECT_NE(md.find("## Not supported here\n\n| runtime/engine/mode | reason |\n|---|---|\n"
                    "| container/native/stop-and-copy | container restore is not implemented yet |"),
            std::string::npos) << md;
  // The fidelity header names the combinations that ran (criu ok, pause failed), not native.
  EXPECT_NE(md.find("| check | container/criu/stop-and-copy | container/pause/stop-and-copy |\n"), std::string::npos) << md;
  EXPECT_NE(md.find("## Failed runs"), std::string::npos);
  EXPECT_NE(md.find("engine said no"), std::string::npos);
}

TEST(Report, ShowsMachineLoadAndHowToReproduce) {
  RunSet set;
  int i = 0;
  for (double d : {10.0, 12.0, 11.0}) {
    Json r = record("counter", "criu", "ok", d);
    r["crbench"]["commit"] = "0123456789ab-dirty";
    r["environment"]["load_avg_1m_start"] = 2.0 + i;
    r["environment"]["load_avg_1m_end"] = 4.5 + i++;
    ASSERT_EQ(addRecord(set, r, "f"), "");
  }
  Json old = record("counter", "pause", "ok", 100);  // written before the load fields existed
  old["crbench"]["commit"] = "0123456789ab-dirty";
  ASSERT_EQ(addRecord(set, old, "f"), "");
  set.compareSummaries.push_back({{"schema", "crbench-compare"}, {"scenario", "counter"},
                                  {"command", "crbench compare counter --repeats 3 --runtimes container"}});
  set.compareSummaries.push_back({{"schema", "crbench-compare"}, {"scenario", "memory"},
                                  {"command", "crbench compare memory --repeats 3"}});
  set.compareSummaries.push_back({{"schema", "crbench-compare"}, {"scenario", "counter"},
                                  {"command", "crbench compare counter --repeats 2 --runtimes vm"}});
  ReportOptions opts;
  opts.wrapperCommand = "scripts/publish.sh counter --host h";
  std::vector<std::string> problems;
  std::string md = renderMarkdown(set, opts, problems);
  EXPECT_NE(md.find("| 1-min load average at run start | 2.00 … 4.00 (median 3.00) over 3 runs |"), std::string::npos) << md;
  EXPECT_NE(md.find("| container/criu/stop-and-copy | 2.00 … 4.00 (median 3.00) over 3 runs | 4.50 … 6.50 (median 5.50) over 3 runs |"),
            std::string::npos) << md;
  EXPECT_NE(md.find("| container/pause/stop-and-copy | not recorded | not recorded |"), std::string::npos) << md;
  EXPECT_NE(md.find("git checkout 0123456789ab   # the build had uncommitted changes"), std::string::npos) << md;
  EXPECT_NE(md.find("scripts/publish.sh counter --host h"), std::string::npos) << md;
  // Both compares of this scenario, as runnable commands; not the other scenario's.
  EXPECT_NE(md.find("build/crbench compare counter --repeats 3 --runtimes container\nbuild/crbench compare counter --repeats 2 --runtimes vm"),
            std::string::npos) << md;
  EXPECT_EQ(md.find("compare memory"), std::string::npos) << md;
  std::string html = renderHtml(set, opts, problems);
  EXPECT_NE(html.find("id=\"load\""), std::string::npos);
  // The mixed summary belongs to another scenario, whose runs are absent: it must not leak in once
  // scenarios are split either.
  ASSERT_EQ(addRecord(set, record("memory", "criu", "ok", 7), "f"), "");
  md = renderMarkdown(set, opts, problems);
  EXPECT_EQ(md.find("compare memory"), std::string::npos) << md;
}

}  // namespace
}  // namespace crb
