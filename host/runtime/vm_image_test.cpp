#include "runtime/vm_image.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "core/fsutil.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"

namespace crb {
namespace {

struct EnvGuard {
  std::string name;
  std::string old;
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

fs::path tempDir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / fmt::format("crb-vmimg-{}-{}", tag, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

TEST(VmImage, MissingKernelNamesPathAndFix) {
  EnvGuard g("CRBENCH_KERNEL", "/nonexistent/vmlinuz-crbench");
  auto k = findGuestKernel();
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.error().message.find("/nonexistent/vmlinuz-crbench"), std::string::npos);
  EXPECT_NE(k.error().message.find("missing"), std::string::npos);
  EXPECT_NE(k.error().hint.find("--kernel"), std::string::npos);
}

TEST(VmImage, NonKernelFileIsRefused) {
  auto d = tempDir("notkernel");
  ASSERT_TRUE(writeFileAtomic(d / "vmlinuz", std::string(4096, 'x')).ok());
  EnvGuard g("CRBENCH_KERNEL", (d / "vmlinuz").string());
  auto k = findGuestKernel();
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.error().message.find("bzImage"), std::string::npos) << k.error().text();
  fs::remove_all(d);
}

TEST(VmImage, UnreadableKernelIsRefused) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads mode-000 files; unreadable cannot be simulated";
  auto d = tempDir("unreadable");
  ASSERT_TRUE(writeFileAtomic(d / "vmlinuz", "x", 0000).ok());
  EnvGuard g("CRBENCH_KERNEL", (d / "vmlinuz").string());
  auto k = findGuestKernel();
  ASSERT_FALSE(k.ok());
  EXPECT_NE(k.error().message.find("not readable"), std::string::npos);
  fs::remove_all(d);
}

TEST(VmImage, ModuleOrderFromModinfoPutsDependenciesFirst) {
  fs::path kdir = depsDir() / "kernel" / "vmlinuz";
  if (!fs::exists(kdir)) GTEST_SKIP() << "guest kernel not unpacked: run scripts/setup.d/kernel.sh";
  ::unsetenv("CRBENCH_KERNEL");
  auto k = findGuestKernel();
  ASSERT_TRUE(k.ok()) << k.error().text();
  ASSERT_FALSE(k->modulesDir.empty());
  auto net = readKernelModule(k->modulesDir / "kernel/drivers/net/virtio_net.ko");
  ASSERT_TRUE(net.ok()) << net.error().text();
  EXPECT_EQ(net->name, "virtio_net");
  EXPECT_NE(std::find(net->depends.begin(), net->depends.end(), "net_failover"), net->depends.end());
  auto order = moduleLoadOrder(k->modulesDir, {"virtio_pci", "virtio_net"});
  ASSERT_TRUE(order.ok()) << order.error().text();
  std::vector<std::string> names;
  for (auto& m : *order) names.push_back(m.name);
  auto pos = [&](const std::string& n) {
    auto it = std::find(names.begin(), names.end(), n);
    EXPECT_NE(it, names.end()) << n;
    return it - names.begin();
  };
  EXPECT_LT(pos("virtio_ring"), pos("virtio"));
  EXPECT_LT(pos("virtio"), pos("virtio_pci"));
  EXPECT_LT(pos("failover"), pos("net_failover"));
  EXPECT_LT(pos("net_failover"), pos("virtio_net"));
  // each module once
  std::set<std::string> uniq(names.begin(), names.end());
  EXPECT_EQ(uniq.size(), names.size());
}

TEST(VmImage, MissingModuleNamesWhoNeedsIt) {
  fs::path kdir = depsDir() / "kernel" / "vmlinuz";
  if (!fs::exists(kdir)) GTEST_SKIP() << "guest kernel not unpacked: run scripts/setup.d/kernel.sh";
  ::unsetenv("CRBENCH_KERNEL");
  auto k = findGuestKernel();
  ASSERT_TRUE(k.ok());
  auto order = moduleLoadOrder(k->modulesDir, {"crbench_no_such_module"});
  ASSERT_FALSE(order.ok());
  EXPECT_NE(order.error().message.find("crbench_no_such_module"), std::string::npos);
}

TEST(VmImage, InitramfsIsNewcCpioWithOverlayAndConsole) {
  auto d = tempDir("cpio");
  fs::create_directories(d / "rootfs/bin");
  fs::create_directories(d / "rootfs/etc/crbench");
  ASSERT_TRUE(writeFileAtomic(d / "rootfs/init", "#!/bin/sh\n", 0755).ok());
  ASSERT_TRUE(writeFileAtomic(d / "rootfs/etc/crbench/scenario.json", "{}").ok());
  fs::create_symlink("/init", d / "rootfs/bin/agent");
  ASSERT_TRUE(writeFileAtomic(d / "rootfs/bin/busybox", "bb", 0755).ok());
  fs::create_symlink("busybox", d / "rootfs/bin/sh");
  // merged /usr: the module overlay goes under /lib, which must stay a symlink
  fs::create_directories(d / "rootfs/usr/lib");
  fs::create_symlink("usr/lib", d / "rootfs/lib");
  std::vector<CpioExtraFile> extra = {{"/etc/crbench/modules.list", {}, "/lib/modules/crbench/a.ko\n", 0644},
                                      {"/lib/modules/crbench/a.ko", {}, "module-bytes", 0644}};
  ASSERT_TRUE(writeInitramfs(d / "rootfs", extra, d / "out/initrd.gz").ok());
  auto r = runCommand({"sh", "-c", "zcat '" + (d / "out/initrd.gz").string() + "' | cpio -itv 2>/dev/null"});
  ASSERT_TRUE(r.ok());
  if (r->exitCode != 0 || r->out.empty()) GTEST_SKIP() << "cpio not installed: " << r->describe();
  for (auto name : {"init", "etc/crbench/scenario.json", "etc/crbench/modules.list",
                    "lib/modules/crbench/a.ko", "dev/console", "bin/agent -> /init", "bin/sh -> busybox"})
    EXPECT_NE(r->out.find(name), std::string::npos) << name << "\n" << r->out;
  EXPECT_NE(r->out.find("lib -> usr/lib"), std::string::npos) << r->out;
  EXPECT_EQ(r->out.find(" lib\n"), std::string::npos) << "a directory entry 'lib' would replace the symlink\n" << r->out;
  // Same input, same bytes (cache keys rely on it).
  ASSERT_TRUE(writeInitramfs(d / "rootfs", extra, d / "out/again.gz").ok());
  EXPECT_EQ(*readFile(d / "out/initrd.gz"), *readFile(d / "out/again.gz"));
  fs::remove_all(d);
}

}  // namespace
}  // namespace crb
