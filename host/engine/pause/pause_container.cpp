// Container half of the pause engine: freeze the sandbox's freezer cgroup, hold, thaw.
#include <thread>

#include "core/clock.hpp"
#include "engine/pause/pause_engine.hpp"
#include "runtime/container.hpp"

namespace crb {
namespace {

class ContainerPause : public PauseBackend {
 public:
  RuntimeKind kind() const override { return RuntimeKind::Container; }
  std::string unavailable() override {
    if (!std::filesystem::exists("/sys/fs/cgroup/freezer/cgroup.procs"))
      return "the cgroup v1 freezer is not mounted at /sys/fs/cgroup/freezer";
    return {};
  }
  Result<PhaseReport> pause(Sandbox& sandbox, int pauseMs, const CheckpointContext& ctx) override {
    auto* c = dynamic_cast<ContainerSandbox*>(&sandbox);
    if (!c) return makeError("the container pause backend got a sandbox that is not a ContainerSandbox");
    PhaseReport r;
    auto t0 = Clock::now();
    ctx.mark("freeze-start");
    CRB_CHECK(c->freeze());  // undoes itself (thaws) when it fails
    ctx.mark("frozen");
    r.phasesMs["freeze"] = msSince(t0);
    auto held = Clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(pauseMs));
    r.phasesMs["held"] = msSince(held);
    auto t1 = Clock::now();
    ctx.mark("thaw-start");
    auto st = c->thaw();
    if (!st.ok()) {
      // Never leave the workload frozen: retry once more, then report.
      auto again = c->thaw(std::chrono::seconds(10));
      if (!again.ok()) return st.error().context("pause: the container could not be thawed");
    }
    ctx.mark("thawed");
    r.phasesMs["thaw"] = msSince(t1);
    r.engineFigures["mechanism"] = "cgroup v1 freezer: FROZEN, wait, THAWED";
    return r;
  }
};

}  // namespace
CRB_REGISTER_PAUSE_BACKEND(container, ContainerPause);
}  // namespace crb
