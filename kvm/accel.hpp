#pragma once
// Which QEMU accelerator this host can really use. /dev/kvm existing is not enough: on a host
// whose /dev/kvm comes from kvm_pvm (Pagetable-based VM, nested without hardware virtualisation)
// only PVM-enabled guest kernels run, so the probe runs a tiny real-mode guest and trusts only
// that.
#include <string>

#include "core/json.hpp"

namespace crb::kvm {

// Result of probing one KVM device.
struct KvmProbe {
  bool usable = false;            // a standard real-mode guest ran to the expected exits
  std::string reason;             // why (not) usable, one line
  Json details = Json::object();  // device, api version, caps, module, run exits ...
};

// Probe `path` (default /dev/kvm) with the minimal VMM. Never throws; every step is recorded.
KvmProbe probeKvm(const std::string& path = "/dev/kvm");

}  // namespace crb::kvm

namespace crb {

struct AccelChoice {
  std::string accel;              // "kvm" or "tcg"
  std::string reason;             // one line a user can act on
  Json details = Json::object();  // the probe's details; "forced" when $CRBENCH_ACCEL decided
  bool forced = false;
};

// The accelerator for QEMU on this host. $CRBENCH_ACCEL=kvm|tcg forces the choice (recorded as
// forced, the probe still runs and is reported). The probe result is cached per process.
AccelChoice chooseAccelerator();

}  // namespace crb
