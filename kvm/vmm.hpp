#pragma once
// A minimal KVM VMM: one memory slot, one vCPU, a few bytes of code, run in real mode or in 64-bit
// long mode with supervisor paging. It exists to answer "can this /dev/kvm run a standard
// (non-paravirtualised) guest?" by running the two CPU modes a stock kernel boots through. Real
// mode alone is not enough: kvm_pvm emulates it, but a stock kernel hangs once it enables paging in
// long mode at CPL 0 (seen with QEMU -accel kvm: SeaBIOS and the real-mode setup print, then
// nothing).
#include <cstdint>
#include <string>
#include <vector>

#include "core/fsutil.hpp"
#include "core/json.hpp"
#include "core/result.hpp"

namespace crb::kvm {

// What one KVM_RUN returned.
struct VcpuExit {
  uint32_t reason = 0;  // KVM_EXIT_*
  std::string name;     // "io", "hlt", "internal-error" ...
  uint16_t ioPort = 0;  // for KVM_EXIT_IO
  uint8_t ioValue = 0;  // first byte written, for KVM_EXIT_IO out
  bool ioOut = false;
  Json detail = Json::object();  // fail_entry / internal error codes
};

std::string exitReasonName(uint32_t reason);

// The whole state of a MiniVm: enough to continue it in another VM (the seed of a kvm/ engine).
struct VmState {
  std::vector<uint8_t> regs;    // struct kvm_regs, raw
  std::vector<uint8_t> sregs;   // struct kvm_sregs, raw
  std::vector<uint8_t> memory;  // the one memory slot
};

class MiniVm {
 public:
  static constexpr uint64_t kMemSize = 0x200000;  // one slot at guest-physical 0, one 2 MiB page
  static constexpr uint64_t kCodeAddr = 0x1000;
  static constexpr uint64_t kPageTables = 0x10000;  // PML4, PDPT, PD for Long64
  enum class Mode { Real, Long64 };

  // Opens kvmPath, checks the API version, creates the VM, one memory slot and one vCPU.
  static Result<MiniVm> create(const std::string& kvmPath = "/dev/kvm");

  // Copy `code` to kCodeAddr and point the vCPU at it in `mode`. Long64 builds identity page
  // tables for the slot and a flat CPL-0 64-bit code segment, as a kernel has after boot.
  Status load(const std::vector<uint8_t>& code, Mode mode = Mode::Real);
  // One KVM_RUN; interrupted with an error after `timeoutMs` if the guest never exits.
  Result<VcpuExit> run(int timeoutMs = 2000);

  // Completes a pending exit (an OUT waiting for KVM_RUN, via immediate_exit) and copies registers
  // and memory. The vCPU must be stopped at an exit.
  Result<VmState> saveState();
  // Loads a saved state into this (fresh) VM; the next run() continues where the saved VM stopped.
  Status restoreState(const VmState& state);

  int extension(long cap) const;  // KVM_CHECK_EXTENSION on the VM fd (system fd as fallback)
  int apiVersion() const { return apiVersion_; }
  const Json& setupNotes() const { return notes_; }

  MiniVm(MiniVm&&) noexcept;
  MiniVm& operator=(MiniVm&&) noexcept;
  MiniVm(const MiniVm&) = delete;
  MiniVm& operator=(const MiniVm&) = delete;
  ~MiniVm();

 private:
  MiniVm() = default;
  Fd sys_, vm_, vcpu_;
  void* run_ = nullptr;  // struct kvm_run, mmapped from the vCPU fd
  size_t runSize_ = 0;
  uint8_t* mem_ = nullptr;
  int apiVersion_ = 0;
  Json notes_ = Json::object();
};

// The probe program: mov al,0x42; out 0x10,al; hlt (the same bytes in real and 64-bit mode).
inline const std::vector<uint8_t> kProbeCode = {0xb0, 0x42, 0xe6, 0x10, 0xf4};
// A counted loop before the same exit, to time how fast guest code runs (64-bit mode only):
// mov ecx,N; 1: dec ecx; jnz 1b; mov al,0x42; out 0x10,al; hlt.
std::vector<uint8_t> loopCode(uint32_t iterations);
inline constexpr uint16_t kProbePort = 0x10;
inline constexpr uint8_t kProbeValue = 0x42;

}  // namespace crb::kvm
