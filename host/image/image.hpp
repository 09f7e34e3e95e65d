#pragma once
// The workload image: one rootfs directory per scenario content, cached by hash under
// <cache>/images/<hash>/rootfs. Carries busybox, the guest agent (/sbin/crbench-agent, also /init),
// the scenario's binaries with the shared libraries they need, its files, and
// /etc/crbench/scenario.json (the programs the agent starts).
#include <filesystem>
#include <string>

#include "core/result.hpp"
#include "scenario/scenario.hpp"

namespace crb {

struct WorkloadImage {
  std::filesystem::path rootfs;  // read-only after build; runtimes overlay it
  std::string hash;
  uint64_t bytes = 0;
  bool fromCache = false;
  double buildSeconds = 0;
};

Result<WorkloadImage> buildWorkloadImage(const Scenario& scenario);

}  // namespace crb
