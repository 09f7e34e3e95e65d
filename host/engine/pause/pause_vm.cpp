// VM half of the pause engine: QMP `stop`, hold, `cont`. The STOP and RESUME events QEMU emits are
// recorded next to our own command latencies: `stop` returns after the vCPUs are paused, so the
// guest is certainly stopped when ctx.mark("frozen") is called.
#include <thread>

#include "core/clock.hpp"
#include "engine/pause/pause_engine.hpp"
#include "runtime/vm.hpp"

namespace crb {
namespace {

using std::chrono::milliseconds;

class VmPause : public PauseBackend {
 public:
  RuntimeKind kind() const override { return RuntimeKind::Vm; }
  std::string unavailable() override {
    auto q = findQemuBinary();
    return q.ok() ? std::string() : q.error().text();
  }
  Result<PhaseReport> pause(Sandbox& sandbox, int pauseMs, const CheckpointContext& ctx) override {
    auto* vm = dynamic_cast<VmSandbox*>(&sandbox);
    if (!vm) return makeError("the VM pause backend got a sandbox that is not a VmSandbox");
    auto& q = vm->qmp();
    q.takeEvents();  // only this pause's events below
    PhaseReport r;
    auto t0 = Clock::now();
    ctx.mark("freeze-start");
    auto st = q.execute("stop", Json::object(), milliseconds(10000));
    if (!st.ok()) {
      // A stop that failed half way must not leave the guest paused.
      (void)q.execute("cont", Json::object(), milliseconds(5000));
      return st.error().context("pause: QMP stop");
    }
    ctx.mark("frozen");
    r.phasesMs["stop"] = msSince(t0);
    auto held = Clock::now();
    std::this_thread::sleep_for(milliseconds(pauseMs));
    r.phasesMs["held"] = msSince(held);
    auto t1 = Clock::now();
    ctx.mark("thaw-start");
    auto c = q.execute("cont", Json::object(), milliseconds(10000));
    if (!c.ok()) {
      auto again = q.execute("cont", Json::object(), milliseconds(10000));
      if (!again.ok()) return c.error().context("pause: the VM could not be resumed (QMP cont)");
    }
    ctx.mark("thawed");
    r.phasesMs["cont"] = msSince(t1);
    (void)q.poll();
    double stopTs = 0, resumeTs = 0;
    for (auto& e : q.takeEvents()) {
      if (e.name == "STOP" && stopTs == 0) stopTs = e.qemuTimestamp;
      if (e.name == "RESUME") resumeTs = e.qemuTimestamp;
    }
    // QEMU's own view of the pause: from its STOP to its RESUME event (wall-clock timestamps).
    if (stopTs > 0 && resumeTs > stopTs) r.engineFigures["qemu_stop_to_resume_ms"] = (resumeTs - stopTs) * 1e3;
    r.engineFigures["mechanism"] = "QMP stop, wait, QMP cont";
    r.engineFigures["accelerator"] = vm->accelerator();
    r.engineFigures["qemu_version"] = vm->qemuVersion();
    return r;
  }
};

}  // namespace
CRB_REGISTER_PAUSE_BACKEND(vm, VmPause);
}  // namespace crb
