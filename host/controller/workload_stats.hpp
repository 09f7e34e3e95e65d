#pragma once
// The workload's size and dirty rate, measured in every run before the checkpoint: downtime and
// image size only mean something next to how much memory the workload holds and how fast it
// writes it. Nothing here is taken from the scenario file: a figure is measured or it is reported
// `unsupported` with the reason.
#include "core/json.hpp"
#include "core/result.hpp"
#include "runtime/sandbox.hpp"

namespace crb {

// Memory of the workload's processes (the agent left out) from a state digest: PSS and RSS sums
// as the agent read them in the sandbox, plus the anonymous bytes of their mappings.
Json workloadMemory(const Json& digest);

// Dirty rate over `windowMs` while the workload runs:
// - vm: QEMU's own `calc-dirty-rate` in page-sampling mode (sampled guest pages hashed at the
//   start and end of the window; the whole guest, kernel included);
// - container: soft-dirty bits (clear_refs 4, then pagemap bit 55 of every mapped page of the
//   workload's processes) where the kernel has them; where it has not, `unsupported` with why.
Json measureDirtyRate(Sandbox& sb, int windowMs);

// Whether this kernel keeps soft-dirty bits: a page of our own written after clear_refs=4 must
// show pagemap bit 55. Cached; the reason says what was seen.
struct SoftDirty {
  bool works = false;
  std::string reason;
};
const SoftDirty& softDirtySupport();

}  // namespace crb
