#include "results/results.hpp"

#include <gtest/gtest.h>

#include "core/fsutil.hpp"

namespace crb {
namespace {
Json minimalRecord() {
  Json r = newRunRecord(newRunId("counter", "container", "pause"));
  r["environment"] = Json::object();
  r["runtime"] = "container";
  r["engine"] = "pause";
  r["timings_ms"] = Json::object();
  r["fidelity"] = Json::object();
  return r;
}
}  // namespace

TEST(Results, RunIdIsAFileName) {
  auto id = newRunId("../x y", "container", "pause");
  EXPECT_EQ(id.find('/'), std::string::npos);
  EXPECT_EQ(id.find(' '), std::string::npos);
  EXPECT_NE(id.find("-container-pause-"), std::string::npos);
}

TEST(Results, FailedRecordNeedsAnError) {
  Json r = minimalRecord();
  EXPECT_FALSE(checkRunRecord(r).ok()) << "status failed without an error object";
  r["error"] = {{"message", "boom"}, {"phase", "checkpoint"}};
  EXPECT_TRUE(checkRunRecord(r).ok()) << checkRunRecord(r).error().message;
  r["status"] = "maybe";
  EXPECT_FALSE(checkRunRecord(r).ok());
}

TEST(Results, WritesAtomicallyByRunId) {
  auto dir = fs::temp_directory_path() / "crb-results-test";
  fs::remove_all(dir);
  Json r = minimalRecord();
  r["status"] = "ok";
  auto p = writeRunRecord(r, dir);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->filename().string(), r["run_id"].get<std::string>() + ".json");
  auto back = Json::parse(readFile(*p).value());
  EXPECT_EQ(back["schema_version"], kResultsSchemaVersion);
  EXPECT_EQ(back["crbench"]["version"], r["crbench"]["version"]);
  fs::remove_all(dir);
}
TEST(Results, RecordsLoadAverageAtStartAndEnd) {
  Json r = minimalRecord();
  r["environment"] = environmentFacts();
  noteRunEnd(r);
  // /proc/loadavg always exists on Linux: both must be real numbers, not null.
  ASSERT_TRUE(r["environment"]["load_avg_1m_start"].is_number()) << r["environment"].dump();
  ASSERT_TRUE(r["environment"]["load_avg_1m_end"].is_number()) << r["environment"].dump();
  EXPECT_GE(r["environment"]["load_avg_1m_start"].get<double>(), 0.0);
  Json bare = Json::object();
  noteRunEnd(bare);  // a record without an environment gets one instead of a crash
  EXPECT_TRUE(bare["environment"].contains("load_avg_1m_end"));
}
}  // namespace crb
