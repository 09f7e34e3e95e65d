#include "engine/pause/pause_engine.hpp"

#include <vector>

namespace crb {

namespace {
std::vector<PauseBackendFactory>& backends() {
  static std::vector<PauseBackendFactory> v;
  return v;
}

constexpr const char* kModePause = "pause";

// Options arrive as strings from the command line ("200") or as JSON numbers.
Result<int> intOption(const Json& opts, const std::string& key, int fallback, int lo, int hi) {
  if (!opts.contains(key)) return fallback;
  const Json& v = opts[key];
  long n = 0;
  if (v.is_number_integer()) {
    n = v.get<long>();
  } else if (v.is_string()) {
    try {
      size_t used = 0;
      n = std::stol(v.get<std::string>(), &used);
      if (used != v.get<std::string>().size()) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      return makeError(fmt::format("engine option {}={} is not an integer", key, v.get<std::string>()),
                       fmt::format("use --engine-opt {}=<{}..{}>", key, lo, hi), 2);
    }
  } else {
    return makeError(fmt::format("engine option {} must be an integer", key), "", 2);
  }
  if (n < lo || n > hi)
    return makeError(fmt::format("engine option {}={} is out of range", key, n),
                     fmt::format("use {}..{}", lo, hi), 2);
  return static_cast<int>(n);
}
}  // namespace

PauseBackendRegistrar::PauseBackendRegistrar(PauseBackendFactory f) { backends().push_back(std::move(f)); }

class PauseEngine : public Engine {
 public:
  std::string name() const override { return "pause"; }

  Capabilities capabilities() override {
    Capabilities c;
    c.runtimes.clear();
    std::vector<std::string> why;
    for (auto& f : backends()) {
      auto b = f();
      std::string u = b->unavailable();
      if (u.empty()) {
        c.runtimes.push_back(b->kind());
        for (auto& [k, v] : b->versions().items()) c.versions[k] = v;
      } else {
        why.push_back(toString(b->kind()) + ": " + u);
      }
    }
    c.modes = {kModePause};
    for (auto m : {modes::kStopAndCopy, modes::kLeaveRunning, modes::kPreCopy, modes::kPostCopy, modes::kLazy,
                   modes::kIncremental, modes::kBackground, modes::kFileRam})
      c.unsupportedModes[m] = "the pause engine saves nothing; it only stops and resumes the sandbox";
    if (c.runtimes.empty()) {
      c.unavailable = "no pause backend can run here";
      for (auto& w : why) c.unavailable += "; " + w;
    }
    return c;
  }

  Result<PhaseReport> checkpoint(Sandbox& sandbox, const CheckpointContext& ctx) override {
    if (ctx.mode != kModePause)
      return makeError(fmt::format("the pause engine has no mode '{}'", ctx.mode), "use --mode pause", 2);
    CRB_ASSIGN(int pauseMs, intOption(ctx.options, "pause_ms", 200, 0, 600000));
    std::unique_ptr<PauseBackend> backend;
    for (auto& f : backends()) {
      auto b = f();
      if (b->kind() == sandbox.kind()) backend = std::move(b);
    }
    if (!backend)
      return makeError(fmt::format("the pause engine has no backend for the {} runtime", toString(sandbox.kind())));
    CRB_ASSIGN(PhaseReport report, backend->pause(sandbox, pauseMs, ctx));
    report.engineFigures["pause_ms_requested"] = pauseMs;
    report.notes.push_back("nothing is saved: the image directory stays empty");
    // Test hook: a checkpoint that fails after the pause, so the controller's failure path (and
    // "the workload is left running") can be exercised end to end.
    if (ctx.options.value("fail", "") == "checkpoint")
      return makeError("injected checkpoint failure (--engine-opt fail=checkpoint)");
    return report;
  }

  Result<PhaseReport> restore(Sandbox&, const CheckpointContext& ctx) override {
    if (ctx.options.value("fail", "") == "restore")
      return makeError("injected restore failure (--engine-opt fail=restore)");
    PhaseReport r;
    r.notes.push_back("nothing to restore: the pause engine never stops the workload for good");
    return r;
  }
};

CRB_REGISTER_ENGINE(PauseEngine, "pause");

}  // namespace crb
