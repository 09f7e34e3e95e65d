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
}  // namespace crb
