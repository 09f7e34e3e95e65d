// The scenario files shipped in scenarios/ must load: a typo there would only show when someone
// runs that scenario.
#include <gtest/gtest.h>

#include "scenario/scenario.hpp"

namespace crb {
namespace {

class ShippedScenario : public ::testing::TestWithParam<const char*> {};

TEST_P(ShippedScenario, Loads) {
  auto s = loadScenario(GetParam());
  ASSERT_TRUE(s.ok()) << s.error().text();
  EXPECT_EQ(s->name, GetParam());
  EXPECT_FALSE(s->programs.empty());
  EXPECT_FALSE(s->checks.empty());
}

INSTANTIATE_TEST_SUITE_P(Scenarios, ShippedScenario,
                         ::testing::Values("memory", "compute", "tcp-kv", "shared-ipc", "editor-tty",
                                           "desktop-session"));

TEST(ShippedScenario, MemoryTakesSizeAndRateOverrides) {
  auto s = loadScenario("memory", {"size_mib=4096", "dirty_mib_s=256"});
  ASSERT_TRUE(s.ok()) << s.error().text();
  auto& argv = s->programs.at(0).argv;
  EXPECT_NE(std::find(argv.begin(), argv.end(), "4096"), argv.end());
  EXPECT_NE(std::find(argv.begin(), argv.end(), "256"), argv.end());
}

}  // namespace
}  // namespace crb
