#include "core/proc.hpp"

#include <gtest/gtest.h>

namespace crb {
TEST(Proc, CapturesOutputAndExitCode) {
  auto r = runCommand({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exitCode, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
}

TEST(Proc, TimeoutKills) {
  RunOptions o;
  o.timeout = std::chrono::milliseconds(200);
  auto r = runCommand({"sleep", "10"}, o);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->timedOut);
  EXPECT_FALSE(r->succeeded());
}

TEST(Proc, MissingProgramIsAnErrorNamingIt) {
  auto r = runCommand({"crbench-no-such-program"});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("crbench-no-such-program"), std::string::npos);
}

TEST(Proc, StdinIsFed) {
  RunOptions o;
  o.stdinData = "hello";
  auto r = runCommand({"cat"}, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->out, "hello");
}
}  // namespace crb
