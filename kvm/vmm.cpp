#include "kvm/vmm.hpp"

#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace crb::kvm {

std::string exitReasonName(uint32_t reason) {
  switch (reason) {
    case KVM_EXIT_UNKNOWN:
      return "unknown";
    case KVM_EXIT_EXCEPTION:
      return "exception";
    case KVM_EXIT_IO:
      return "io";
    case KVM_EXIT_HYPERCALL:
      return "hypercall";
    case KVM_EXIT_DEBUG:
      return "debug";
    case KVM_EXIT_HLT:
      return "hlt";
    case KVM_EXIT_MMIO:
      return "mmio";
    case KVM_EXIT_SHUTDOWN:
      return "shutdown";
    case KVM_EXIT_FAIL_ENTRY:
      return "fail-entry";
    case KVM_EXIT_INTR:
      return "intr";
    case KVM_EXIT_INTERNAL_ERROR:
      return "internal-error";
    case KVM_EXIT_SYSTEM_EVENT:
      return "system-event";
    default:
      return "exit-" + std::to_string(reason);
  }
}

std::vector<uint8_t> loopCode(uint32_t n) {
  return {0xb9,
          uint8_t(n),
          uint8_t(n >> 8),
          uint8_t(n >> 16),
          uint8_t(n >> 24),  // mov ecx, n
          0xff,
          0xc9,  // dec ecx
          0x75,
          0xfc,  // jnz -4
          0xb0,
          kProbeValue,
          0xe6,
          uint8_t(kProbePort),
          0xf4};  // mov al; out; hlt
}

MiniVm::MiniVm(MiniVm&& o) noexcept {
  *this = std::move(o);
}

MiniVm& MiniVm::operator=(MiniVm&& o) noexcept {
  if (this == &o) return *this;
  if (run_) ::munmap(run_, runSize_);
  if (mem_) ::munmap(mem_, kMemSize);
  sys_ = std::move(o.sys_);
  vm_ = std::move(o.vm_);
  vcpu_ = std::move(o.vcpu_);
  run_ = std::exchange(o.run_, nullptr);
  runSize_ = std::exchange(o.runSize_, 0);
  mem_ = std::exchange(o.mem_, nullptr);
  apiVersion_ = o.apiVersion_;
  notes_ = std::move(o.notes_);
  return *this;
}

MiniVm::~MiniVm() {
  if (run_) ::munmap(run_, runSize_);
  if (mem_) ::munmap(mem_, kMemSize);
}

int MiniVm::extension(long cap) const {
  int fd = vm_.valid() ? vm_.get() : sys_.get();
  int r = ::ioctl(fd, KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

Result<MiniVm> MiniVm::create(const std::string& kvmPath) {
  MiniVm m;
  m.sys_.reset(::open(kvmPath.c_str(), O_RDWR | O_CLOEXEC));
  if (!m.sys_.valid()) return sysError("open " + kvmPath, errno);
  m.apiVersion_ = ::ioctl(m.sys_.get(), KVM_GET_API_VERSION, 0);
  if (m.apiVersion_ != KVM_API_VERSION)
    return makeError(fmt::format("{}: KVM_GET_API_VERSION returned {}, expected {}", kvmPath,
                                 m.apiVersion_, KVM_API_VERSION));
  m.vm_.reset(::ioctl(m.sys_.get(), KVM_CREATE_VM, 0UL));
  if (!m.vm_.valid()) return sysError("KVM_CREATE_VM", errno);

  // Intel VMX needs a TSS region below 4 GiB to emulate real mode; harmless elsewhere. QEMU uses
  // the same address. Failure is recorded, not fatal: the run below is the real test.
  if (::ioctl(m.vm_.get(), KVM_SET_TSS_ADDR, 0xfffbd000UL) < 0)
    m.notes_["set_tss_addr"] = std::string(std::strerror(errno));

  void* mem = ::mmap(nullptr, kMemSize, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) return sysError("mmap guest memory", errno);
  m.mem_ = static_cast<uint8_t*>(mem);
  kvm_userspace_memory_region region{};
  region.slot = 0;
  region.guest_phys_addr = 0;
  region.memory_size = kMemSize;
  region.userspace_addr = reinterpret_cast<uint64_t>(mem);
  if (::ioctl(m.vm_.get(), KVM_SET_USER_MEMORY_REGION, &region) < 0)
    return sysError("KVM_SET_USER_MEMORY_REGION", errno);

  m.vcpu_.reset(::ioctl(m.vm_.get(), KVM_CREATE_VCPU, 0UL));
  if (!m.vcpu_.valid()) return sysError("KVM_CREATE_VCPU", errno);
  int runSize = ::ioctl(m.sys_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (runSize <= 0) return sysError("KVM_GET_VCPU_MMAP_SIZE", errno);
  void* run = ::mmap(nullptr, static_cast<size_t>(runSize), PROT_READ | PROT_WRITE, MAP_SHARED,
                     m.vcpu_.get(), 0);
  if (run == MAP_FAILED) return sysError("mmap kvm_run", errno);
  m.run_ = run;
  m.runSize_ = static_cast<size_t>(runSize);
  return m;
}

Status MiniVm::load(const std::vector<uint8_t>& code, Mode mode) {
  if (kCodeAddr + code.size() > kPageTables)
    return makeError("guest code does not fit below the page tables");
  std::memcpy(mem_ + kCodeAddr, code.data(), code.size());

  kvm_sregs sregs{};
  if (::ioctl(vcpu_.get(), KVM_GET_SREGS, &sregs) < 0) return sysError("KVM_GET_SREGS", errno);
  kvm_regs regs{};
  regs.rip = kCodeAddr;
  regs.rflags = 0x2;  // bit 1 is reserved and must be set
  if (mode == Mode::Real) {
    // Flat real mode: CS base 0 so RIP is the guest-physical address.
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
  } else {
    // PML4 -> PDPT -> PD with one 2 MiB page mapping guest-physical 0..2 MiB at the same address.
    auto* pml4 = reinterpret_cast<uint64_t*>(mem_ + kPageTables);
    auto* pdpt = reinterpret_cast<uint64_t*>(mem_ + kPageTables + 0x1000);
    auto* pd = reinterpret_cast<uint64_t*>(mem_ + kPageTables + 0x2000);
    constexpr uint64_t kPresentRw = 0x3, kPageSize = 0x80;
    pml4[0] = (kPageTables + 0x1000) | kPresentRw;
    pdpt[0] = (kPageTables + 0x2000) | kPresentRw;
    pd[0] = 0 | kPresentRw | kPageSize;
    sregs.cr3 = kPageTables;
    sregs.cr4 = 1u << 5;                  // PAE
    sregs.cr0 = 0x80050033;               // PG WP AM NE ET MP PE
    sregs.efer = (1u << 8) | (1u << 10);  // LME LMA
    kvm_segment seg{};
    seg.base = 0;
    seg.limit = 0xffffffff;
    seg.present = 1;
    seg.dpl = 0;  // supervisor: where a stock kernel runs
    seg.s = 1;
    seg.g = 1;
    seg.selector = 1 << 3;
    seg.type = 11;  // execute/read, accessed
    seg.l = 1;
    sregs.cs = seg;
    seg.selector = 2 << 3;
    seg.type = 3;  // read/write, accessed
    seg.l = 0;
    seg.db = 1;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
    regs.rsp = kMemSize;
  }
  if (::ioctl(vcpu_.get(), KVM_SET_SREGS, &sregs) < 0) return sysError("KVM_SET_SREGS", errno);
  if (::ioctl(vcpu_.get(), KVM_SET_REGS, &regs) < 0) return sysError("KVM_SET_REGS", errno);
  return success();
}

namespace {
// The timer handler only flips immediate_exit so a KVM_RUN entered after the signal still returns.
std::atomic<kvm_run*> gTimedRun{nullptr};
void onRunTimeout(int) {
  if (kvm_run* r = gTimedRun.load()) r->immediate_exit = 1;
}

// A one-shot timer that signals this thread (not the process), so the blocking KVM_RUN here is
// what gets interrupted with EINTR.
class RunWatchdog {
 public:
  RunWatchdog(kvm_run* run, int timeoutMs) {
    gTimedRun.store(run);
    struct sigaction sa {};
    sa.sa_handler = onRunTimeout;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must come back with EINTR
    ::sigaction(SIGALRM, &sa, &old_);
    sigevent sev{};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGALRM;
    sev._sigev_un._tid = static_cast<pid_t>(::syscall(SYS_gettid));
    if (::timer_create(CLOCK_MONOTONIC, &sev, &timer_) == 0) {
      armed_ = true;
      itimerspec its{};
      its.it_value.tv_sec = timeoutMs / 1000;
      its.it_value.tv_nsec = (timeoutMs % 1000) * 1000000L;
      ::timer_settime(timer_, 0, &its, nullptr);
    }
  }
  ~RunWatchdog() {
    if (armed_) ::timer_delete(timer_);
    ::sigaction(SIGALRM, &old_, nullptr);
    gTimedRun.store(nullptr);
  }
  RunWatchdog(const RunWatchdog&) = delete;
  RunWatchdog& operator=(const RunWatchdog&) = delete;

 private:
  struct sigaction old_ {};
  timer_t timer_{};
  bool armed_ = false;
};
}  // namespace

Result<VcpuExit> MiniVm::run(int timeoutMs) {
  auto* r = static_cast<kvm_run*>(run_);
  r->immediate_exit = 0;
  int rc;
  int err = 0;
  {
    RunWatchdog dog(r, timeoutMs);
    rc = ::ioctl(vcpu_.get(), KVM_RUN, 0);
    err = errno;
  }
  if (rc < 0) {
    if (err == EINTR)
      return makeError(
          fmt::format("KVM_RUN did not return within {} ms (the guest never exited)", timeoutMs));
    return sysError("KVM_RUN", err);
  }
  VcpuExit e;
  e.reason = r->exit_reason;
  e.name = exitReasonName(e.reason);
  switch (e.reason) {
    case KVM_EXIT_IO:
      e.ioPort = r->io.port;
      e.ioOut = r->io.direction == KVM_EXIT_IO_OUT;
      e.ioValue = *(reinterpret_cast<uint8_t*>(r) + r->io.data_offset);
      e.detail = {{"port", e.ioPort}, {"out", e.ioOut}, {"size", r->io.size}, {"value", e.ioValue}};
      break;
    case KVM_EXIT_FAIL_ENTRY:
      e.detail = {{"hardware_entry_failure_reason", r->fail_entry.hardware_entry_failure_reason}};
      break;
    case KVM_EXIT_INTERNAL_ERROR:
      e.detail = {{"suberror", r->internal.suberror}};
      break;
    case KVM_EXIT_EXCEPTION:
      e.detail = {{"exception", r->ex.exception}, {"error_code", r->ex.error_code}};
      break;
    case KVM_EXIT_MMIO:
      e.detail = {{"phys_addr", r->mmio.phys_addr}, {"is_write", r->mmio.is_write != 0}};
      break;
    default:
      break;
  }
  return e;
}

Result<VmState> MiniVm::saveState() {
  auto* r = static_cast<kvm_run*>(run_);
  // KVM finishes an I/O exit (e.g. advances RIP past OUT) only on the next KVM_RUN; immediate_exit
  // makes that KVM_RUN complete it and return EINTR without running guest code.
  r->immediate_exit = 1;
  int rc = ::ioctl(vcpu_.get(), KVM_RUN, 0);
  int err = errno;
  r->immediate_exit = 0;
  if (rc == 0 || err != EINTR)
    return makeError("KVM_RUN with immediate_exit did not return EINTR while saving state");
  kvm_regs regs{};
  kvm_sregs sregs{};
  if (::ioctl(vcpu_.get(), KVM_GET_REGS, &regs) < 0) return sysError("KVM_GET_REGS", errno);
  if (::ioctl(vcpu_.get(), KVM_GET_SREGS, &sregs) < 0) return sysError("KVM_GET_SREGS", errno);
  VmState st;
  auto* rp = reinterpret_cast<const uint8_t*>(&regs);
  auto* sp = reinterpret_cast<const uint8_t*>(&sregs);
  st.regs.assign(rp, rp + sizeof(regs));
  st.sregs.assign(sp, sp + sizeof(sregs));
  st.memory.assign(mem_, mem_ + kMemSize);
  return st;
}

Status MiniVm::restoreState(const VmState& st) {
  if (st.regs.size() != sizeof(kvm_regs) || st.sregs.size() != sizeof(kvm_sregs) ||
      st.memory.size() != kMemSize)
    return makeError("MiniVm state has the wrong size (saved by a different build?)");
  std::memcpy(mem_, st.memory.data(), kMemSize);
  kvm_regs regs{};
  kvm_sregs sregs{};
  std::memcpy(&regs, st.regs.data(), sizeof(regs));
  std::memcpy(&sregs, st.sregs.data(), sizeof(sregs));
  if (::ioctl(vcpu_.get(), KVM_SET_SREGS, &sregs) < 0) return sysError("KVM_SET_SREGS", errno);
  if (::ioctl(vcpu_.get(), KVM_SET_REGS, &regs) < 0) return sysError("KVM_SET_REGS", errno);
  return success();
}

}  // namespace crb::kvm
