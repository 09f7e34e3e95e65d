#include "kvm/accel.hpp"

#include <gtest/gtest.h>
#include <linux/kvm.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "kvm/vmm.hpp"

namespace crb {
namespace {
bool haveKvm() {
  return ::access("/dev/kvm", R_OK | W_OK) == 0;
}

// Restores $CRBENCH_ACCEL when a test that sets it ends.
class AccelEnv {
 public:
  AccelEnv() {
    if (const char* v = std::getenv("CRBENCH_ACCEL")) saved_ = v, had_ = true;
  }
  ~AccelEnv() {
    if (had_)
      ::setenv("CRBENCH_ACCEL", saved_.c_str(), 1);
    else
      ::unsetenv("CRBENCH_ACCEL");
  }

 private:
  std::string saved_;
  bool had_ = false;
};
}  // namespace

TEST(KvmProbe, MissingDeviceIsReported) {
  auto p = kvm::probeKvm("/nonexistent/kvm");
  EXPECT_FALSE(p.usable);
  EXPECT_NE(p.reason.find("/nonexistent/kvm does not exist"), std::string::npos) << p.reason;
  EXPECT_EQ(p.details["present"], false);
}

TEST(KvmProbe, NonKvmDeviceFailsAtApiVersion) {
  auto p = kvm::probeKvm("/dev/null");
  EXPECT_FALSE(p.usable);
  EXPECT_NE(p.reason.find("KVM_GET_API_VERSION"), std::string::npos) << p.reason;
}

TEST(KvmProbe, RealDeviceEitherRunsTheGuestOrSaysWhy) {
  if (!haveKvm()) GTEST_SKIP() << "no usable /dev/kvm on this host";
  auto p = kvm::probeKvm();
  ASSERT_EQ(p.details["api_version"], KVM_API_VERSION) << p.details.dump();
  ASSERT_FALSE(p.reason.empty());
  if (p.usable) {
    for (const char* stage : {"real_mode", "long_mode"}) {
      const Json& exits = p.details["stages"][stage]["exits"];
      ASSERT_EQ(exits.size(), 2u) << p.details.dump();
      EXPECT_EQ(exits[0]["reason"], "io");
      EXPECT_EQ(exits[0]["detail"]["value"], kvm::kProbeValue);
      EXPECT_EQ(exits[1]["reason"], "hlt");
    }
  } else {
    EXPECT_TRUE(p.details.contains("failure")) << p.details.dump();
    if (std::filesystem::exists("/sys/module/kvm_pvm")) {
      EXPECT_EQ(p.reason.rfind("kvm_pvm loaded:", 0), 0u) << p.reason;
    }
  }
}

// Drives MiniVm directly in each mode in which the probe's guest reached hlt (fast or emulated), so
// the VMM itself is covered (exit decoding, register set-up) and not only through probeKvm's
// summary.
TEST(MiniVm, RunsProbeCodeInEveryWorkingMode) {
  if (!haveKvm()) GTEST_SKIP() << "no usable /dev/kvm on this host";
  auto probe = kvm::probeKvm();
  int ran = 0;
  for (auto [stage, mode] : {std::pair{"real_mode", kvm::MiniVm::Mode::Real},
                             std::pair{"long_mode", kvm::MiniVm::Mode::Long64}}) {
    const Json& stages = probe.details["stages"];
    if (!stages.contains(stage) || stages[stage]["exits"].size() != 2) continue;
    auto vm = kvm::MiniVm::create();
    ASSERT_TRUE(vm.ok()) << vm.error().text();
    ASSERT_TRUE(vm->load(kvm::kProbeCode, mode).ok());
    auto e1 = vm->run();
    ASSERT_TRUE(e1.ok()) << e1.error().text();
    EXPECT_EQ(e1->reason, static_cast<uint32_t>(KVM_EXIT_IO)) << stage;
    EXPECT_EQ(e1->ioPort, kvm::kProbePort);
    EXPECT_EQ(e1->ioValue, kvm::kProbeValue);
    auto e2 = vm->run();
    ASSERT_TRUE(e2.ok()) << e2.error().text();
    EXPECT_EQ(e2->reason, static_cast<uint32_t>(KVM_EXIT_HLT)) << stage;
    ran++;
  }
  if (ran == 0) GTEST_SKIP() << "KVM runs no test guest here: " << probe.reason;
}

TEST(MiniVm, LoopCodeCountsDownThenExits) {
  if (!haveKvm()) GTEST_SKIP() << "no usable /dev/kvm on this host";
  auto vm = kvm::MiniVm::create();
  if (!vm.ok()) GTEST_SKIP() << "cannot create a VM here: " << vm.error().text();
  ASSERT_TRUE(vm->load(kvm::loopCode(1000), kvm::MiniVm::Mode::Long64).ok());
  auto e = vm->run();
  if (!e.ok()) GTEST_SKIP() << "64-bit guest does not run here: " << e.error().text();
  EXPECT_EQ(e->reason, static_cast<uint32_t>(KVM_EXIT_IO));
  EXPECT_EQ(e->ioValue, kvm::kProbeValue);
}

// A guest that counts in memory and reports each count: save it after three counts, let the
// original run once more (4), then restore the saved state into a fresh VM: it must also say 4,
// which needs both the registers (RIP after the OUT) and the memory (the counter) restored.
TEST(MiniVm, SavedStateContinuesInAFreshVm) {
  if (!haveKvm()) GTEST_SKIP() << "no usable /dev/kvm on this host";
  // 1: inc byte [0x3000]; mov al, [0x3000]; out 0x10, al; jmp 1b
  const std::vector<uint8_t> counter = {0xfe, 0x04, 0x25, 0x00, 0x30, 0x00, 0x00, 0x8a, 0x04,
                                        0x25, 0x00, 0x30, 0x00, 0x00, 0xe6, 0x10, 0xeb, 0xee};
  auto vm = kvm::MiniVm::create();
  if (!vm.ok()) GTEST_SKIP() << "cannot create a VM here: " << vm.error().text();
  ASSERT_TRUE(vm->load(counter, kvm::MiniVm::Mode::Long64).ok());
  for (int i = 1; i <= 3; ++i) {
    auto e = vm->run();
    if (!e.ok()) GTEST_SKIP() << "64-bit guest does not run here: " << e.error().text();
    ASSERT_EQ(e->reason, static_cast<uint32_t>(KVM_EXIT_IO));
    ASSERT_EQ(e->ioValue, i);
  }
  auto saved = vm->saveState();
  ASSERT_TRUE(saved.ok()) << saved.error().text();
  auto next = vm->run();
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->ioValue, 4);

  auto copy = kvm::MiniVm::create();
  ASSERT_TRUE(copy.ok()) << copy.error().text();
  ASSERT_TRUE(copy->restoreState(*saved).ok());
  auto resumed = copy->run();
  ASSERT_TRUE(resumed.ok()) << resumed.error().text();
  EXPECT_EQ(resumed->reason, static_cast<uint32_t>(KVM_EXIT_IO));
  EXPECT_EQ(resumed->ioValue, 4) << "restored VM did not continue from the saved count";
}

TEST(Accel, ChoiceFollowsProbe) {
  AccelEnv keep;
  ::unsetenv("CRBENCH_ACCEL");
  auto c = chooseAccelerator();
  EXPECT_FALSE(c.forced);
  EXPECT_EQ(c.accel, c.details["kvm_usable"].get<bool>() ? "kvm" : "tcg") << c.details.dump();
  EXPECT_FALSE(c.reason.empty());
}

TEST(Accel, EnvironmentForcesAndIsRecorded) {
  AccelEnv keep;
  for (std::string want : {"tcg", "kvm"}) {
    ::setenv("CRBENCH_ACCEL", want.c_str(), 1);
    auto c = chooseAccelerator();
    EXPECT_EQ(c.accel, want);
    EXPECT_TRUE(c.forced);
    EXPECT_EQ(c.details["forced"], want);
    EXPECT_NE(c.reason.find("forced by CRBENCH_ACCEL=" + want), std::string::npos) << c.reason;
  }
  ::setenv("CRBENCH_ACCEL", "warp-drive", 1);
  auto c = chooseAccelerator();
  EXPECT_FALSE(c.forced);
  EXPECT_EQ(c.details["ignored_env"], "CRBENCH_ACCEL=warp-drive");
}
}  // namespace crb
