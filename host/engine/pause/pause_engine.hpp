#pragma once
// The "pause" pseudo-engine: the baseline row of every comparison. It checkpoints nothing; it
// stops the sandbox's execution for --engine-opt pause_ms (default 200) and resumes it, so the
// prober's measured gap can be compared with a known pause (calibration) and every real engine's
// downtime can be read against "just stopping it".
//
// One backend per runtime kind, each in its own file of this folder, registered with
// CRB_REGISTER_PAUSE_BACKEND: pause_container.cpp freezes the cgroup; the VM backend
// (QMP stop/cont) registers the same way. Capabilities::runtimes lists the kinds that have one.
#include <functional>
#include <memory>

#include "engine/engine.hpp"

namespace crb {

class PauseBackend {
 public:
  virtual ~PauseBackend() = default;
  virtual RuntimeKind kind() const = 0;
  // Non-empty: this backend cannot work on this host, and why.
  virtual std::string unavailable() { return {}; }
  virtual Json versions() { return Json::object(); }
  // Stop the sandbox's execution, hold it for pauseMs, resume it. Call ctx.mark("frozen") when it
  // is stopped and ctx.mark("thawed") when it runs again; put the stop/resume latencies in
  // phasesMs. On any failure the sandbox must be left running.
  virtual Result<PhaseReport> pause(Sandbox& sandbox, int pauseMs, const CheckpointContext& ctx) = 0;
};

using PauseBackendFactory = std::function<std::unique_ptr<PauseBackend>()>;
struct PauseBackendRegistrar {
  explicit PauseBackendRegistrar(PauseBackendFactory f);
};

}  // namespace crb

#define CRB_REGISTER_PAUSE_BACKEND(ident, cls) \
  static ::crb::PauseBackendRegistrar crb_pause_backend_##ident([] { return std::make_unique<cls>(); })
