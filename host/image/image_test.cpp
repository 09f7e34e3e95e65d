#include "image/image.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "core/fsutil.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"

namespace crb {
namespace {

// Points the image cache at a fresh directory for the test and restores it afterwards.
class ImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(guestAgentBinary())) GTEST_SKIP() << "guest agent not built: " << guestAgentBinary();
    if (!fs::exists(buildDir() / "scenarios" / "crb-counter")) GTEST_SKIP() << "crb-counter not built";
    if (!fs::exists("/bin/busybox")) GTEST_SKIP() << "busybox-static not installed";
    if (const char* c = std::getenv("CRBENCH_CACHE")) oldCache_ = c;
    cache_ = fs::temp_directory_path() / fmt::format("crb-image-test-{}", ::getpid());
    fs::remove_all(cache_);
    ::setenv("CRBENCH_CACHE", cache_.c_str(), 1);
  }
  void TearDown() override {
    if (cache_.empty()) return;
    if (oldCache_.empty()) ::unsetenv("CRBENCH_CACHE");
    else ::setenv("CRBENCH_CACHE", oldCache_.c_str(), 1);
    std::error_code ec;
    fs::remove_all(cache_, ec);
  }
  fs::path cache_;
  std::string oldCache_;
};

TEST_F(ImageTest, CounterImageHasWhatItNeedsAndIsCached) {
  auto sc = loadScenario("counter");
  ASSERT_TRUE(sc.ok()) << sc.error().text();
  auto img = buildWorkloadImage(*sc);
  ASSERT_TRUE(img.ok()) << img.error().text();
  EXPECT_FALSE(img->fromCache);
  EXPECT_EQ(img->rootfs, cache_ / "images" / img->hash / "rootfs");
  EXPECT_GT(img->bytes, 1000000u);
  const fs::path& r = img->rootfs;
  for (auto p : {"init", "sbin/crbench-agent", "bin/busybox", "usr/local/bin/crb-counter", "etc/crbench/scenario.json",
                 "etc/passwd", "etc/group", "etc/hosts", "lib64/ld-linux-x86-64.so.2",
                 "lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libstdc++.so.6"})
    EXPECT_TRUE(fs::exists(r / p)) << p;  // exists() follows the image's own (relative) links
  for (auto d : {"proc", "sys", "dev", "tmp", "run"}) EXPECT_TRUE(fs::is_directory(r / d)) << d;
  EXPECT_TRUE(fs::is_symlink(r / "bin" / "sh"));
  EXPECT_TRUE(fs::equivalent(r / "bin" / "sh", r / "bin" / "busybox"));
  // Only relative links: a host-side tool walking the rootfs must never be led to host files.
  for (auto& e : fs::recursive_directory_iterator(r))
    if (e.is_symlink()) EXPECT_FALSE(fs::read_symlink(e.path()).is_absolute()) << e.path();
  EXPECT_EQ(fs::status(r / "tmp").permissions() & fs::perms::sticky_bit, fs::perms::sticky_bit);
  auto cfg = Json::parse(readFile(r / "etc/crbench/scenario.json").value());
  EXPECT_EQ(cfg["programs"][0]["argv"][0], "/usr/local/bin/crb-counter");
  EXPECT_EQ(cfg["digest"][0], "/usr/local/bin/crb-counter");

  auto again = buildWorkloadImage(*sc);
  ASSERT_TRUE(again.ok()) << again.error().text();
  EXPECT_TRUE(again->fromCache);
  EXPECT_EQ(again->hash, img->hash);

  // Another parameter value is another image (the config differs).
  auto sc2 = loadScenario("counter", {"hz=50"});
  ASSERT_TRUE(sc2.ok());
  auto img2 = buildWorkloadImage(*sc2);
  ASSERT_TRUE(img2.ok()) << img2.error().text();
  EXPECT_NE(img2->hash, img->hash);
  EXPECT_FALSE(img2->fromCache);
}

TEST_F(ImageTest, ConcurrentBuildersAgree) {
  auto sc = loadScenario("counter", {"buffer_mib=2"});
  ASSERT_TRUE(sc.ok()) << sc.error().text();
  Result<WorkloadImage> a = makeError("not run"), b = makeError("not run");
  std::thread t1([&] { a = buildWorkloadImage(*sc); });
  std::thread t2([&] { b = buildWorkloadImage(*sc); });
  t1.join();
  t2.join();
  ASSERT_TRUE(a.ok()) << a.error().text();
  ASSERT_TRUE(b.ok()) << b.error().text();
  EXPECT_EQ(a->hash, b->hash);
  EXPECT_TRUE(fs::exists(a->rootfs / "init"));
  int entries = 0;
  for (auto& e : fs::directory_iterator(cache_ / "images")) {
    EXPECT_EQ(e.path().filename().string().rfind(".build-", 0), std::string::npos) << "left over: " << e.path();
    entries++;
  }
  EXPECT_EQ(entries, 1);
}

TEST_F(ImageTest, WorkloadRunsInsideTheImage) {
  if (::geteuid() != 0) GTEST_SKIP() << "chroot needs root";
  auto sc = loadScenario("counter");
  ASSERT_TRUE(sc.ok());
  auto img = buildWorkloadImage(*sc);
  ASSERT_TRUE(img.ok()) << img.error().text();
  // Only the image's own loader and libraries are visible: usage text means they were complete.
  auto r = runCommand({"chroot", img->rootfs.string(), "/bin/sh", "-c", "/usr/local/bin/crb-counter --bad"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->exitCode, 2) << r->err;
  EXPECT_NE(r->err.find("usage: crb-counter"), std::string::npos) << r->err;
}

TEST_F(ImageTest, MissingBinaryIsAClearError) {
  auto sc = parseScenario("binaries=['/nonexistent/tool']\n[[programs]]\nname='a'\nargv=['/bin/true']\n", "x.toml");
  ASSERT_TRUE(sc.ok()) << sc.error().text();
  auto img = buildWorkloadImage(*sc);
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.error().message.find("/nonexistent/tool"), std::string::npos) << img.error().text();
}

}  // namespace
}  // namespace crb
