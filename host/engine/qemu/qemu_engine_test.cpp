#include "engine/qemu/qemu_engine.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "agent/agent_client.hpp"
#include "core/fsutil.hpp"
#include "core/paths.hpp"
#include "core/proc.hpp"
#include "runtime/vm.hpp"

namespace crb {
namespace {

fs::path tempDir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / fmt::format("crb-qemueng-{}-{}", tag, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// verifyQemuImage needs no QEMU: damaged images are refused before anything starts.
TEST(QemuImage, TruncatedOrIncompleteImageIsRefused) {
  auto d = tempDir("verify");
  auto v = verifyQemuImage(d);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.error().message.find("manifest.json is missing"), std::string::npos) << v.error().text();
  std::string stream(100000, 'q');
  ASSERT_TRUE(writeFileAtomic(d / kQemuVmstateFile, stream).ok());
  Json m = {{"engine", "qemu"}, {"format", kQemuImageFormat}, {"vmstate_bytes", stream.size()},
            {"vmstate_crc32", crc32(stream)}};
  ASSERT_TRUE(writeFileAtomic(d / kQemuManifestFile, m.dump()).ok());
  auto good = verifyQemuImage(d);
  ASSERT_TRUE(good.ok()) << good.error().text();
  ASSERT_EQ(::truncate((d / kQemuVmstateFile).c_str(), 4096), 0);
  auto cut = verifyQemuImage(d);
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.error().message.find("truncated"), std::string::npos) << cut.error().text();
  EXPECT_NE(cut.error().hint.find("refused"), std::string::npos);
  std::string flipped = stream;
  flipped[5000] = 'x';
  ASSERT_TRUE(writeFileAtomic(d / kQemuVmstateFile, flipped).ok());
  auto bad = verifyQemuImage(d);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("CRC-32"), std::string::npos) << bad.error().text();
  fs::remove_all(d);
}

// file-ram images carry the guest's RAM file; a missing or truncated one is refused by size.
TEST(QemuImage, FileRamImageChecksItsRamFile) {
  auto d = tempDir("ramfile");
  std::string stream(5000, 'd');
  ASSERT_TRUE(writeFileAtomic(d / kQemuVmstateFile, stream).ok());
  Json m = {{"engine", "qemu"}, {"format", kQemuImageFormat}, {"vmstate_bytes", stream.size()},
            {"vmstate_crc32", crc32(stream)}, {"ram_file", kQemuRamFile}, {"ram_bytes", 1 << 20}};
  ASSERT_TRUE(writeFileAtomic(d / kQemuManifestFile, m.dump()).ok());
  auto missing = verifyQemuImage(d);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("guest-ram is missing or truncated"), std::string::npos)
      << missing.error().text();
  ASSERT_TRUE(writeFileAtomic(d / kQemuRamFile, std::string(1 << 20, 'r')).ok());
  auto good = verifyQemuImage(d);
  EXPECT_TRUE(good.ok()) << good.error().text();
  ASSERT_EQ(::truncate((d / kQemuRamFile).c_str(), 1 << 19), 0);
  auto cut = verifyQemuImage(d);
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.error().message.find("truncated"), std::string::npos) << cut.error().text();
  fs::remove_all(d);
}

// One boot, several engine operations on it (boots cost seconds under TCG): stop-and-copy
// checkpoint + restore with continuity checks, a truncated copy refused, then a live pre-copy
// migration to a second QEMU. Nothing is left behind at the end.
TEST(QemuEngineVm, SaveRestoreTruncatedAndLiveMigration) {
  if (!fs::exists(depsDir() / "kernel" / "vmlinuz")) GTEST_SKIP() << "guest kernel not unpacked: run scripts/setup.d/kernel.sh";
  if (!findQemuBinary().ok()) GTEST_SKIP() << findQemuBinary().error().text();
  fs::path agent = guestAgentBinary();
  if (!fs::exists(agent)) GTEST_SKIP() << "guest agent not built at " << agent;
  if (!fs::exists("/bin/busybox")) GTEST_SKIP() << "busybox-static not installed";
  auto d = tempDir("vm");
  fs::create_directories(d / "rootfs/bin");
  fs::create_directories(d / "rootfs/sbin");
  fs::create_directories(d / "rootfs/etc/crbench");
  fs::copy_file("/bin/busybox", d / "rootfs/bin/busybox");
  for (auto a : {"sh", "cat", "sleep", "mv"}) fs::create_symlink("busybox", d / "rootfs/bin" / a);
  fs::copy_file(agent, d / "rootfs/sbin/crbench-agent");
  fs::create_symlink("/sbin/crbench-agent", d / "rootfs/init");
  ASSERT_TRUE(writeFileAtomic(d / "rootfs/etc/crbench/scenario.json",
                              R"({"programs":[{"name":"count","argv":["/bin/sh","-c",)"
                              R"("i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.05; done"]}]})")
                  .ok());
  ::setenv("CRBENCH_VM_ROOTFS", (d / "rootfs").string().c_str(), 1);
  ::setenv("CRBENCH_CACHE", (d / "cache").string().c_str(), 1);
  Scenario sc;
  sc.name = "qemu-engine-unit";
  sc.vmMemoryMiB = 256;
  SandboxOptions o;
  o.id = fmt::format("unit-qemu-{}", ::getpid());
  auto started = VmSandbox::start(sc, o);
  ::unsetenv("CRBENCH_VM_ROOTFS");
  ::unsetenv("CRBENCH_CACHE");
  ASSERT_TRUE(started.ok()) << started.error().text();
  auto& vm = **started;
  auto count = [&]() -> long {
    auto r = agentCall(vm, Json{{"op", "exec"}, {"argv", {"/bin/cat", "/tmp/count"}}, {"timeout_ms", 5000}},
                       std::chrono::seconds(20));
    if (!r.ok()) return -1;
    return std::atol((*r).value("stdout", "").c_str());
  };
  auto uptime = [&]() -> long {
    auto r = agentCall(vm, Json{{"op", "ping"}}, std::chrono::seconds(20));
    return r.ok() ? (*r).value("uptime_ms", -1L) : -1;
  };
  // the counter has started
  long c0 = -1;
  for (int i = 0; i < 100 && c0 <= 0; i++, std::this_thread::sleep_for(std::chrono::milliseconds(100))) c0 = count();
  ASSERT_GT(c0, 0);
  long up0 = uptime();
  ASSERT_GT(up0, 0);

  auto engine = EngineRegistry::instance().create("qemu");
  ASSERT_TRUE(engine);
  EXPECT_TRUE(engine->capabilities().available());
  CheckpointContext ctx;
  ctx.mode = modes::kStopAndCopy;
  ctx.imageDir = d / "image";
  fs::create_directories(ctx.imageDir);
  std::vector<std::string> marks;
  ctx.mark = [&](const std::string& m) { marks.push_back(m); };
  pid_t srcPid = vm.qemuPid();
  auto cp = engine->checkpoint(vm, ctx);
  ASSERT_TRUE(cp.ok()) << cp.error().text();
  EXPECT_FALSE(processAlive(srcPid)) << "stop-and-copy ends the source QEMU";
  auto& qm = cp->engineFigures["query_migrate"];
  EXPECT_EQ(qm["status"], "completed");
  EXPECT_GT(qm["ram"]["transferred"].get<double>(), 0);
  EXPECT_GT(cp->engineFigures["image_bytes_apparent"].get<double>(), 1e6);
  std::printf("stop-and-copy: %s\n", cp->engineFigures.dump().c_str());
  for (auto& [k, v] : cp->phasesMs) std::printf("  checkpoint %s = %.1f ms\n", k.c_str(), v);

  // A truncated copy of the image is refused and starts nothing.
  fs::path cut = d / "image-cut";
  fs::create_directories(cut);
  fs::copy_file(ctx.imageDir / kQemuManifestFile, cut / kQemuManifestFile);
  fs::copy_file(ctx.imageDir / kQemuVmstateFile, cut / kQemuVmstateFile);
  ASSERT_EQ(::truncate((cut / kQemuVmstateFile).c_str(), 1 << 20), 0);
  CheckpointContext cutCtx = ctx;
  cutCtx.imageDir = cut;
  auto refused = engine->restore(vm, cutCtx);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("truncated"), std::string::npos) << refused.error().text();

  auto rs = engine->restore(vm, ctx);
  ASSERT_TRUE(rs.ok()) << rs.error().text();
  for (auto& [k, v] : rs->phasesMs) std::printf("  restore %s = %.1f ms\n", k.c_str(), v);
  // Same guest continues: the agent's uptime did not restart, the counter goes on from where it was.
  long up1 = uptime();
  EXPECT_GE(up1, up0) << "the guest rebooted instead of resuming";
  long c1 = count();
  EXPECT_GE(c1, c0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_GT(count(), c1) << "the workload does not progress after the restore";

  // Live pre-copy to a second QEMU; the agent ports follow the guest.
  CheckpointContext live;
  live.mode = modes::kPreCopy;
  live.imageDir = d / "live";
  fs::create_directories(live.imageDir);
  pid_t before = vm.qemuPid();
  auto lm = engine->checkpoint(vm, live);
  ASSERT_TRUE(lm.ok()) << lm.error().text();
  std::printf("pre-copy: %s\n", lm->engineFigures.dump().c_str());
  EXPECT_NE(vm.qemuPid(), before);
  EXPECT_FALSE(processAlive(before));
  long up2 = uptime();
  EXPECT_GE(up2, up1);
  long c2 = count();
  EXPECT_GE(c2, c1);

  // Leave-running (background-snapshot): the guest keeps its QEMU during the save; the restore
  // replaces it with one loaded from the stream.
  CheckpointContext bg;
  bg.mode = modes::kLeaveRunning;
  bg.imageDir = d / "bg";
  fs::create_directories(bg.imageDir);
  pid_t running = vm.qemuPid();
  auto bcp = engine->checkpoint(vm, bg);
  ASSERT_TRUE(bcp.ok()) << bcp.error().text();
  std::printf("leave-running: %s\n", bcp->engineFigures.dump().c_str());
  EXPECT_EQ(vm.qemuPid(), running);
  EXPECT_TRUE(processAlive(running));
  auto brs = engine->restore(vm, bg);
  ASSERT_TRUE(brs.ok()) << brs.error().text();
  EXPECT_GE(uptime(), up2);

  // Post-copy to a second QEMU.
  CheckpointContext pc;
  pc.mode = modes::kPostCopy;
  pc.imageDir = d / "pc";
  fs::create_directories(pc.imageDir);
  auto pcm = engine->checkpoint(vm, pc);
  ASSERT_TRUE(pcm.ok()) << pcm.error().text();
  std::printf("post-copy: %s\n", pcm->engineFigures.dump().c_str());
  EXPECT_GE(uptime(), up2);
  EXPECT_GE(count(), c2);

  fs::path run = vm.runDir();
  pid_t last = vm.qemuPid();
  ASSERT_TRUE(vm.stop().ok());
  EXPECT_FALSE(processAlive(last));
  EXPECT_FALSE(fs::exists(run));
  fs::remove_all(d);
}

}  // namespace
}  // namespace crb
