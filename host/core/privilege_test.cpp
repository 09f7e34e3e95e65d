#include "core/privilege.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

namespace crb {
namespace {
void expectRefusal(const Status& s) {
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("crbench run"), std::string::npos);
  EXPECT_NE(s.error().message.find("needs root"), std::string::npos);
  EXPECT_EQ(s.error().exitCode, 2);
}
}  // namespace

TEST(Privilege, RootIsAccepted) {
  if (::geteuid() != 0) GTEST_SKIP() << "not running as root";
  EXPECT_TRUE(requireRoot("crbench run").ok());
}

TEST(Privilege, NonRootIsRefusedWithReason) {
  if (::geteuid() != 0) {
    expectRefusal(requireRoot("crbench run"));
    return;
  }
  // As root: drop to nobody in a child so the refusal path is exercised too.
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::setresuid(65534, 65534, 65534) != 0) ::_exit(3);
    auto s = requireRoot("crbench run");
    bool good = !s.ok() && s.error().message.find("crbench run") != std::string::npos &&
                s.error().message.find("needs root") != std::string::npos && s.error().exitCode == 2;
    ::_exit(good ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "requireRoot did not refuse uid 65534 with a clear message";
}
}  // namespace crb
