#include "engine/criu/criu_probe.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "core/fsutil.hpp"
#include "core/paths.hpp"

namespace crb::criu {

namespace {
// Set-up caches these (scripts/setup.d/criu.sh); the tests skip with the reason when absent.
std::string depsCriu(const char* dir) {
  auto p = depsDir() / dir / "bin" / "criu";
  return ::access(p.c_str(), X_OK) == 0 ? p.string() : std::string();
}
#define REQUIRE_ROOT() \
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (CRIU dumps a canary process)"
}  // namespace

TEST(CriuProbe, FindCriuHonoursEngineOptionAndRejectsBadPath) {
  auto r = findCriu(Json{{"criu", "/nonexistent/criu"}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("/nonexistent/criu"), std::string::npos);
  auto ok = findCriu(Json{{"criu", "/bin/sh"}});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->source, "--engine-opt criu");
}

TEST(CriuProbe, HardwareBreakpointSelfTestGivesAVerdict) {
  std::string v = hardwareBreakpointSelfTest();
  EXPECT_TRUE(v == "fire" || v == "do not fire" || v.rfind("rejected", 0) == 0) << v;
  RecordProperty("hw_breakpoints", v);
}

TEST(CriuProbe, CurrentCriuIsUsable) {
  REQUIRE_ROOT();
  std::string bin = depsCriu("criu");
  if (bin.empty()) {
    auto f = findCriu();
    if (!f.ok()) GTEST_SKIP() << "no criu: " << f.error().text();
    bin = f->path;
  }
  ProbeOptions o;
  o.useCache = false;
  ProbeResult r = probeCriu({bin, "test"}, o);
  if (!r.version.empty() && r.version < "4.2") GTEST_SKIP() << "criu " << r.version << " is older than 4.2";
  EXPECT_TRUE(r.usable) << r.reason;
  EXPECT_TRUE(r.canaryReleased);
  EXPECT_GT(r.canaryDumpMs, 0);
  EXPECT_GT(r.canaryRestoreMs, 0);
  // A second probe comes from the cache.
  ProbeResult again = probeCriu({bin, "test"});
  EXPECT_TRUE(again.fromCache);
  EXPECT_EQ(again.usable, r.usable);
}

// Debian 12's criu 3.17.1 cannot even initialise on this kernel's vDSO layout.
TEST(CriuProbe, Criu317IsRejectedWithItsReason) {
  REQUIRE_ROOT();
  std::string bin = depsCriu("criu-old");
  if (bin.empty()) GTEST_SKIP() << ".deps/criu-old absent: run scripts/setup.d/criu.sh";
  ProbeOptions o;
  o.useCache = false;
  o.dumpTimeout = std::chrono::seconds(5);
  ProbeResult r = probeCriu({bin, "test"}, o);
  EXPECT_FALSE(r.usable);
  EXPECT_EQ(r.version, "3.17.1");
  EXPECT_NE(r.reason.find("criu >= 4.2 needed"), std::string::npos) << r.reason;
  EXPECT_TRUE(r.canaryReleased);
  RecordProperty("reason", r.reason);
}

// criu 4.1.x passes `criu check` but, where hardware breakpoints never fire, hangs in every dump
// (the project's issue #3). With trixie's 4.1.1 cached by set-up: if it works on this host the
// probe must say usable; if it hangs, the probe must kill it and release the canary.
TEST(CriuProbe, Criu41IsJudgedByItsCanary) {
  REQUIRE_ROOT();
  std::string bin = depsCriu("criu-4.1");
  if (bin.empty()) GTEST_SKIP() << ".deps/criu-4.1 absent: run scripts/setup.d/criu.sh";
  ProbeOptions o;
  o.useCache = false;
  o.dumpTimeout = std::chrono::seconds(10);
  ProbeResult r = probeCriu({bin, "test"}, o);
  RecordProperty("reason", r.reason);
  EXPECT_TRUE(r.canaryReleased) << r.reason;
  if (!r.usable) EXPECT_NE(r.reason.find("criu >= 4.2 needed"), std::string::npos) << r.reason;
}

// The hang itself, made deterministic: a stand-in "criu" that passes --version and check, then on
// dump seizes and interrupts the canary with ptrace and never returns. The probe must give up
// within its timeout, kill it, leave the canary neither traced nor stopped, and say why.
TEST(CriuProbe, HangingDumpIsKilledAndCanaryReleased) {
  REQUIRE_ROOT();
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "needs /usr/bin/python3 for the stand-in criu";
  char tmpl[] = "/tmp/crbench-fake-criu-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  std::filesystem::path dir = tmpl;
  std::string script = R"(#!/usr/bin/python3
import ctypes, sys, time
a = sys.argv[1:]
if a[:1] == ["--version"]:
    print("Version: 4.1.1")
    sys.exit(0)
if a[:1] == ["check"]:
    print("Looks good.")
    sys.exit(0)
if a[:1] == ["dump"]:
    pid = int(a[a.index("-t") + 1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace(0x4206, pid, 0, 0)  # PTRACE_SEIZE
    libc.ptrace(0x4207, pid, 0, 0)  # PTRACE_INTERRUPT
    open(a[a.index("-D") + 1] + "/dump.log", "w").write("(00.000100) Seized the canary, waiting forever\n")
    time.sleep(3600)
sys.exit(1)
)";
  auto fake = dir / "criu";
  ASSERT_TRUE(writeFileAtomic(fake, script, 0755).ok());
  ProbeOptions o;
  o.useCache = false;
  o.dumpTimeout = std::chrono::seconds(3);
  ProbeResult r = probeCriu({fake.string(), "test"}, o);
  RecordProperty("reason", r.reason);
  EXPECT_FALSE(r.usable);
  EXPECT_TRUE(r.canaryReleased) << r.reason;
  EXPECT_NE(r.reason.find("hung in dump"), std::string::npos) << r.reason;
  EXPECT_NE(r.reason.find("Seized the canary"), std::string::npos) << "last log line quoted: " << r.reason;
  EXPECT_NE(r.reason.find("criu >= 4.2 needed"), std::string::npos) << r.reason;
  if (hardwareBreakpointSelfTest() == "do not fire")
    EXPECT_NE(r.reason.find("hardware breakpoints do not fire"), std::string::npos) << r.reason;
  std::filesystem::remove_all(dir);
}

}  // namespace crb::criu
