#include "scenario/scenario.hpp"

#include <gtest/gtest.h>

#include "core/fsutil.hpp"
#include "core/paths.hpp"

namespace crb {
namespace {

const char* kGood = R"(
name = "demo"
description = "a demo"
binaries = ["@build/scenarios/counter", "/bin/true"]
files = ["/etc/hostname"]
runtimes = ["container"]
digest = ["/usr/local/bin/counter", "--read", "{state}"]

[params]
hz = 100
state = "/tmp/demo.state"
[params.mib]
default = 4
description = "buffer size"
[params.ratio]
default = 0.5

[vm]
memory_mib = 512
cpus = 2

[[programs]]
name = "counter"
argv = ["/usr/local/bin/counter", "--hz", "{hz}", "--mib", "{mib}", "--r={ratio}", "{{literal}}"]
env = { STATE = "{state}" }
restart = true
start_delay = 0.5

[[checks]]
name = "count-increases"
argv = ["/usr/local/bin/counter", "--read", "{state}", "count"]
expect = "increases"
)";

std::string errOf(const std::string& text, const std::vector<std::string>& ov = {}) {
  auto r = parseScenario(text, "t.toml", ov);
  EXPECT_FALSE(r.ok()) << "expected an error for:\n" << text;
  return r.ok() ? std::string() : r.error().text();
}

TEST(Scenario, ParsesAGoodFile) {
  auto r = parseScenario(kGood, "t.toml");
  ASSERT_TRUE(r.ok()) << r.error().text();
  const Scenario& s = *r;
  EXPECT_EQ(s.name, "demo");
  EXPECT_EQ(s.description, "a demo");
  EXPECT_EQ(s.binaries.size(), 2u);
  EXPECT_EQ(s.runtimes, std::vector<std::string>{"container"});
  EXPECT_EQ(s.vmMemoryMiB, 512);
  EXPECT_EQ(s.vmCpus, 2);
  ASSERT_EQ(s.programs.size(), 1u);
  auto& p = s.programs[0];
  EXPECT_EQ(p.argv, (std::vector<std::string>{"/usr/local/bin/counter", "--hz", "100", "--mib", "4",
                                              "--r=0.5", "{literal}"}));
  EXPECT_EQ(p.env.at("STATE"), "/tmp/demo.state");
  EXPECT_TRUE(p.restartOnExit);
  EXPECT_DOUBLE_EQ(p.startDelaySeconds, 0.5);
  ASSERT_EQ(s.checks.size(), 1u);
  EXPECT_EQ(s.checks[0].expect, "increases");
  EXPECT_EQ(s.checks[0].argv[2], "/tmp/demo.state");
  EXPECT_EQ(s.digest[2], "/tmp/demo.state");
  EXPECT_EQ(s.paramSpecs.size(), 4u);
  EXPECT_EQ(s.params["mib"], 4);
  auto j = s.toJson();
  EXPECT_EQ(j["programs"][0]["argv"][2], "100");
  EXPECT_EQ(j["programs"][0]["restart_on_exit"], true);
}

TEST(Scenario, NameDefaultsToFileStem) {
  auto r = parseScenario("[[programs]]\nname='a'\nargv=['/bin/sleep','1']\n", "/x/mine.toml");
  ASSERT_TRUE(r.ok()) << r.error().text();
  EXPECT_EQ(r->name, "mine");
  EXPECT_EQ(r->runtimes, (std::vector<std::string>{"container", "vm"}));
}

TEST(Scenario, OverridesAreTypedAndSubstituted) {
  auto r = parseScenario(kGood, "t.toml", {"hz=250", "ratio=2", "state=/tmp/x"});
  ASSERT_TRUE(r.ok()) << r.error().text();
  EXPECT_EQ(r->programs[0].argv[2], "250");
  EXPECT_EQ(r->programs[0].argv[5], "--r=2.0");
  EXPECT_EQ(r->programs[0].env.at("STATE"), "/tmp/x");
  EXPECT_EQ(r->params["hz"], 250);
}

TEST(Scenario, OverrideOfUnknownParamNamesTheDeclaredOnes) {
  auto e = errOf(kGood, {"speed=3"});
  EXPECT_NE(e.find("speed"), std::string::npos) << e;
  EXPECT_NE(e.find("hz"), std::string::npos) << e;
}

TEST(Scenario, OverrideOfWrongTypeNamesTheType) {
  auto e = errOf(kGood, {"hz=fast"});
  EXPECT_NE(e.find("'fast' is not a valid integer"), std::string::npos) << e;
  e = errOf(kGood, {"hz"});
  EXPECT_NE(e.find("key=value"), std::string::npos) << e;
}

TEST(Scenario, MalformedTomlGivesLine) {
  auto e = errOf("name = \"x\"\nargv = [1,\n");
  EXPECT_NE(e.find("t.toml:"), std::string::npos) << e;
  EXPECT_NE(e.find("not valid TOML"), std::string::npos) << e;
}

TEST(Scenario, UnknownKeyNamesLineAndKey) {
  auto e = errOf("name='x'\n\n[[programs]]\nname='a'\nargs=['/bin/true']\n");
  EXPECT_NE(e.find("t.toml:5"), std::string::npos) << e;
  EXPECT_NE(e.find("programs[0].args"), std::string::npos) << e;
  EXPECT_NE(e.find("unknown key"), std::string::npos) << e;
  e = errOf("colour='x'\n[[programs]]\nname='a'\nargv=['/bin/true']\n");
  EXPECT_NE(e.find("t.toml:1: key 'colour'"), std::string::npos) << e;
}

TEST(Scenario, WrongTypeSaysWhatIsExpected) {
  auto e = errOf("[[programs]]\nname='a'\nargv=['/bin/sleep', 10]\n");
  EXPECT_NE(e.find("programs[0].argv[1]"), std::string::npos) << e;
  EXPECT_NE(e.find("expected a string, got an integer"), std::string::npos) << e;
  EXPECT_NE(e.find("t.toml:3"), std::string::npos) << e;
  e = errOf("[vm]\nmemory_mib='big'\n[[programs]]\nname='a'\nargv=['/bin/true']\n");
  EXPECT_NE(e.find("vm.memory_mib"), std::string::npos) << e;
  EXPECT_NE(e.find("expected an integer"), std::string::npos) << e;
  e = errOf("[vm]\ncpus=0\n[[programs]]\nname='a'\nargv=['/bin/true']\n");
  EXPECT_NE(e.find("out of range"), std::string::npos) << e;
}

TEST(Scenario, MissingArgvAndMissingPrograms) {
  auto e = errOf("[[programs]]\nname='a'\n");
  EXPECT_NE(e.find("programs[0].argv"), std::string::npos) << e;
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
  e = errOf("[[programs]]\nname='a'\nargv=[]\n");
  EXPECT_NE(e.find("is empty"), std::string::npos) << e;
  e = errOf("name='x'\n");
  EXPECT_NE(e.find("no [[programs]]"), std::string::npos) << e;
}

TEST(Scenario, UndeclaredParameterInArgv) {
  auto e = errOf("[[programs]]\nname='a'\nargv=['/bin/sleep','{secs}']\n");
  EXPECT_NE(e.find("{secs}"), std::string::npos) << e;
  EXPECT_NE(e.find("[params]"), std::string::npos) << e;
  EXPECT_NE(e.find("t.toml:3"), std::string::npos) << e;
}

TEST(Scenario, BadValuesInEnumsAndPaths) {
  auto e = errOf("runtimes=['docker']\n[[programs]]\nname='a'\nargv=['/bin/true']\n");
  EXPECT_NE(e.find("'docker' is not a runtime"), std::string::npos) << e;
  e = errOf("binaries=['counter']\n[[programs]]\nname='a'\nargv=['/bin/true']\n");
  EXPECT_NE(e.find("binaries[0]"), std::string::npos) << e;
  e = errOf("[[programs]]\nname='a'\nargv=['/bin/true']\n[[checks]]\nname='c'\nargv=['/bin/true']\nexpect='bigger'\n");
  EXPECT_NE(e.find("checks[0].expect"), std::string::npos) << e;
  EXPECT_NE(e.find("t.toml:7"), std::string::npos) << e;
  e = errOf("[[programs]]\nname='a'\nargv=['/bin/true']\n[[programs]]\nname='a'\nargv=['/bin/true']\n");
  EXPECT_NE(e.find("duplicate name 'a'"), std::string::npos) << e;
}

TEST(Scenario, UnknownScenarioListsKnownOnes) {
  auto r = loadScenario("no-such-scenario");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("unknown scenario 'no-such-scenario'"), std::string::npos);
  auto r2 = loadScenario("/nonexistent/x.toml");
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.error().message.find("/nonexistent/x.toml"), std::string::npos);
}

TEST(Scenario, EveryShippedScenarioLoads) {
  auto names = listScenarios();
  if (names.empty()) GTEST_SKIP() << "no scenarios under " << (projectRoot() / "scenarios");
  for (auto& n : names) {
    auto r = loadScenario(n);
    EXPECT_TRUE(r.ok()) << n << ": " << r.error().text();
  }
}

}  // namespace
}  // namespace crb
