#include "doctor/checks.hpp"

#include <gtest/gtest.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>

namespace crb::doctor {
namespace {
// Kernel version as major*100+minor, from uname.
int kernelVersion() {
  utsname u{};
  ::uname(&u);
  int major = 0, minor = 0;
  std::sscanf(u.release, "%d.%d", &major, &minor);
  return major * 100 + minor;
}
}  // namespace

TEST(DoctorChecks, NamespacesListEveryKindWithAReasonWhenMissing) {
  Json n = namespaceInfo();
  for (const char* k : {"user", "pid", "mnt", "net", "ipc", "uts", "cgroup", "time"}) {
    ASSERT_TRUE(n.contains(k)) << k;
    if (!n[k]["available"].get<bool>()) {
      EXPECT_FALSE(n[k]["error"].get<std::string>().empty()) << k;
    }
  }
  if (::geteuid() == 0) {
    EXPECT_TRUE(n["pid"]["available"].get<bool>()) << n.dump();
  }
}

TEST(DoctorChecks, PagemapScanMatchesKernelVersion) {
  Json p = pagemapScanInfo();
  // The ioctl arrived in 6.7; on older kernels the check must say why, not claim support.
  if (kernelVersion() >= 607) {
    EXPECT_TRUE(p["available"].get<bool>()) << p.dump();
  } else {
    EXPECT_FALSE(p["reason"].get<std::string>().empty());
  }
}

TEST(DoctorChecks, UserfaultfdReportsWpAsyncOnNewKernels) {
  Json u = userfaultfdInfo();
  if (!u["available"].get<bool>()) GTEST_SKIP() << "userfaultfd unavailable here: " << u["reason"];
  if (kernelVersion() >= 607) {
    EXPECT_TRUE(u["wp_async"].get<bool>()) << u.dump();
  }
}

TEST(DoctorChecks, TableNamesEverySection) {
  Json r = collectAll();
  std::string t = renderTable(r);
  for (const char* s : {"kernel", "accelerator", "qemu", "libvirt", "namespaces", "cgroup freezer",
                        "PAGEMAP_SCAN", "userfaultfd", "engines"})
    EXPECT_NE(t.find(s), std::string::npos) << s << "\n" << t;
}
}  // namespace crb::doctor
