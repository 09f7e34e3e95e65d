#include "runtime/vm.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "core/fsutil.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"

namespace crb {
namespace {

struct EnvGuard {
  std::string name, old;
  bool had;
  EnvGuard(const char* n, const std::string& v) : name(n) {
    const char* o = std::getenv(n);
    had = o != nullptr;
    if (had) old = o;
    ::setenv(n, v.c_str(), 1);
  }
  ~EnvGuard() {
    if (had)
      ::setenv(name.c_str(), old.c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

Scenario tinyScenario() {
  Scenario s;
  s.name = "vm-unit";
  s.vmMemoryMiB = 64;
  return s;
}

TEST(VmRuntime, QemuMissingIsAClearError) {
  EnvGuard q("CRBENCH_QEMU", "/nonexistent/qemu-system-x86_64");
  auto vm = VmSandbox::start(tinyScenario(), SandboxOptions{});
  ASSERT_FALSE(vm.ok());
  EXPECT_NE(vm.error().message.find("/nonexistent/qemu-system-x86_64"), std::string::npos) << vm.error().text();
  EXPECT_NE(vm.error().hint.find("setup"), std::string::npos);
  EnvGuard q2("CRBENCH_QEMU", "crbench-no-such-qemu");
  auto vm2 = VmSandbox::start(tinyScenario(), SandboxOptions{});
  ASSERT_FALSE(vm2.ok());
  EXPECT_NE(vm2.error().message.find("not installed"), std::string::npos) << vm2.error().text();
}

TEST(VmRuntime, BusyExplicitPortIsAClearError) {
  Fd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
  int busy = ntohs(a.sin_port);
  EnvGuard p("CRBENCH_VM_UDP_PORT", std::to_string(busy));
  auto ports = chooseVmPorts();
  ASSERT_FALSE(ports.ok());
  EXPECT_NE(ports.error().message.find(std::to_string(busy)), std::string::npos);
  EXPECT_NE(ports.error().message.find("busy"), std::string::npos);
  EXPECT_NE(ports.error().hint.find("CRBENCH_VM_UDP_PORT"), std::string::npos);
}

TEST(VmRuntime, FreePortsAreChosenWhenNoneRequested) {
  ::unsetenv("CRBENCH_VM_UDP_PORT");
  ::unsetenv("CRBENCH_VM_TCP_PORT");
  auto ports = chooseVmPorts();
  ASSERT_TRUE(ports.ok()) << ports.error().text();
  EXPECT_GT(ports->udp, 0);
  EXPECT_GT(ports->tcp, 0);
  EXPECT_TRUE(ports->chosenByUs);
}

TEST(VmRuntime, QemuFailingAtStartupLeavesNothingBehind) {
  if (!fs::exists(depsDir() / "kernel" / "vmlinuz")) GTEST_SKIP() << "guest kernel not unpacked: run scripts/setup.d/kernel.sh";
  ::unsetenv("CRBENCH_KERNEL");
  fs::path d = fs::temp_directory_path() / fmt::format("crb-vmtest-{}", ::getpid());
  fs::remove_all(d);
  fs::create_directories(d / "rootfs");
  ASSERT_TRUE(writeFileAtomic(d / "rootfs/init", "#!/bin/sh\n", 0755).ok());
  // A "QEMU" that complains and exits at once, like a real one given a bad option.
  ASSERT_TRUE(writeFileAtomic(d / "fake-qemu", "#!/bin/sh\necho 'fake-qemu: cannot start' >&2\nexit 1\n", 0755).ok());
  EnvGuard r("CRBENCH_VM_ROOTFS", (d / "rootfs").string());
  EnvGuard q("CRBENCH_QEMU", (d / "fake-qemu").string());
  EnvGuard c("CRBENCH_CACHE", (d / "cache").string());
  EnvGuard rt("CRBENCH_RUNTIME_DIR", (d / "run").string());
  SandboxOptions o;
  o.id = "unit-fail";
  o.accel = "tcg";
  auto vm = VmSandbox::start(tinyScenario(), o);
  ASSERT_FALSE(vm.ok());
  EXPECT_NE(vm.error().message.find("exited at start-up"), std::string::npos) << vm.error().text();
  EXPECT_NE(vm.error().message.find("cannot start"), std::string::npos) << vm.error().text();
  EXPECT_FALSE(fs::exists(d / "run" / "unit-fail"));
  // The initramfs was built and cached, with the module list the agent reads.
  EXPECT_FALSE(fs::is_empty(d / "cache" / "initramfs"));
  fs::remove_all(d);
}

}  // namespace
}  // namespace crb

namespace crb {
namespace {

// One real boot (seconds under TCG): a rootfs of busybox + the guest agent as /init, so this test
// does not depend on the image builder. Checks the agent answers over the forwarded ports, the QMP
// socket is private, and stop() leaves no QEMU, socket or directory behind.
TEST(VmBoot, AgentAnswersAndStopLeavesNothing) {
  if (!fs::exists(depsDir() / "kernel" / "vmlinuz")) GTEST_SKIP() << "guest kernel not unpacked: run scripts/setup.d/kernel.sh";
  if (!findQemuBinary().ok()) GTEST_SKIP() << findQemuBinary().error().text();
  fs::path agent = guestAgentBinary();
  if (!fs::exists(agent)) GTEST_SKIP() << "guest agent not built at " << agent;
  if (!fs::exists("/bin/busybox")) GTEST_SKIP() << "busybox-static not installed";
  ::unsetenv("CRBENCH_KERNEL");
  fs::path d = fs::temp_directory_path() / fmt::format("crb-vmboot-{}", ::getpid());
  fs::remove_all(d);
  fs::create_directories(d / "rootfs/bin");
  fs::create_directories(d / "rootfs/sbin");
  fs::create_directories(d / "rootfs/etc/crbench");
  fs::copy_file("/bin/busybox", d / "rootfs/bin/busybox");
  fs::create_symlink("busybox", d / "rootfs/bin/sh");
  fs::copy_file(agent, d / "rootfs/sbin/crbench-agent");
  fs::create_symlink("/sbin/crbench-agent", d / "rootfs/init");
  ASSERT_TRUE(writeFileAtomic(d / "rootfs/etc/crbench/scenario.json",
                              R"({"programs":[{"name":"idle","argv":["/bin/sh","-c","while :; do sleep 1; done"]}]})").ok());
  EnvGuard r("CRBENCH_VM_ROOTFS", (d / "rootfs").string());
  EnvGuard c("CRBENCH_CACHE", (d / "cache").string());
  SandboxOptions o;
  o.id = fmt::format("unit-boot-{}", ::getpid());
  Scenario sc = tinyScenario();
  sc.vmMemoryMiB = 256;  // Debian's 6.1 kernel does not get far in 64 MiB
  auto vm = VmSandbox::start(sc, o);
  ASSERT_TRUE(vm.ok()) << vm.error().text();
  auto& v = **vm;
  Json desc = v.describe();
  EXPECT_GT(desc["boot_ms"].get<double>(), 0);
  EXPECT_FALSE(desc["accelerator"].get<std::string>().empty());
  EXPECT_FALSE(desc["accelerator_reason"].get<std::string>().empty());
  struct stat st {};
  ASSERT_EQ(::stat(v.qmpSocketPath().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(v.runDir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  auto status = v.qmp().execute("query-status");
  ASSERT_TRUE(status.ok()) << status.error().text();
  EXPECT_EQ((*status)["status"], "running");
  // UDP echo through the forward.
  auto probe = v.openProbeSocket();
  ASSERT_TRUE(probe.ok());
  bool echoed = false;
  for (int i = 0; i < 50 && !echoed; i++) {
    ASSERT_EQ(::send(probe->get(), "crb-probe", 9, 0), 9);
    pollfd p{probe->get(), POLLIN, 0};
    if (::poll(&p, 1, 100) == 1) {
      char buf[64];
      echoed = ::recv(probe->get(), buf, sizeof buf, 0) > 0;
    }
  }
  EXPECT_TRUE(echoed) << "no UDP echo from the guest agent";
  pid_t pid = v.qemuPid();
  fs::path run = v.runDir();
  ASSERT_TRUE(v.stop().ok());
  EXPECT_FALSE(processAlive(pid));
  EXPECT_FALSE(fs::exists(run));
  fs::remove_all(d);
}

}  // namespace
}  // namespace crb
