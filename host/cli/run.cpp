// crbench run <scenario> --runtime container|vm [--engine pause] [--mode M] [--engine-opt k=v]
//                        [--param k=v] [--results DIR] [--json]
#include <cstdio>

#include "cli/command.hpp"
#include "controller/controller.hpp"
#include "core/interrupt.hpp"
#include "core/privilege.hpp"
#include "core/result.hpp"

namespace crb {
namespace {

std::string fmtMs(const Json& v) { return v.is_number() ? fmt::format("{:.1f} ms", v.get<double>()) : "n/a"; }

std::string fmtBytes(const Json& v) {
  if (!v.is_number()) return "n/a";
  double b = v.get<double>();
  if (b >= 1 << 20) return fmt::format("{:.1f} MiB", b / (1 << 20));
  if (b >= 1 << 10) return fmt::format("{:.1f} KiB", b / (1 << 10));
  return fmt::format("{:.0f} B", b);
}

void printSummary(const RunOutcome& o) {
  const Json& r = o.record;
  auto get = [&](std::initializer_list<const char*> path) {
    const Json* j = &r;
    for (auto k : path) {
      if (!j->is_object() || !j->contains(k)) return Json(nullptr);
      j = &(*j)[k];
    }
    return *j;
  };
  std::printf("run %s: %s\n", o.runId.c_str(), o.status.c_str());
  std::printf("  scenario %s, runtime %s, engine %s, mode %s\n", get({"scenario", "name"}).dump().c_str(),
              r.value("runtime", std::string()).c_str(), r.value("engine", std::string()).c_str(),
              r["mode"].is_string() ? r["mode"].get<std::string>().c_str() : "-");
  if (r["status"] != "ok" && r["error"].is_object())
    std::printf("  error (%s): %s\n", r["error"].value("phase", std::string()).c_str(),
                r["error"].value("message", std::string()).c_str());
  Json start = get({"sandbox", "start_ms"});
  if (start.is_null()) start = get({"sandbox", "boot_ms"});
  std::printf("  sandbox start:   %s (agent answering)\n", fmtMs(start).c_str());
  Json sent = get({"probe", "stats", "sent"}), lost = get({"probe", "stats", "lost"});
  std::printf("  downtime:        %s (longest probe-reply gap; %s probes, %s lost)\n", fmtMs(r["downtime_ms"]).c_str(),
              sent.is_null() ? "no" : sent.dump().c_str(), lost.is_null() ? "-" : lost.dump().c_str());
  std::printf("  checkpoint:      %s\n", fmtMs(get({"timings_ms", "checkpoint"})).c_str());
  std::printf("  restore:         %s\n", fmtMs(get({"timings_ms", "restore"})).c_str());
  std::printf("  first reply after restore: %s\n", fmtMs(get({"timings_ms", "first_reply_after_restore"})).c_str());
  std::printf("  image size:      %s apparent, %s allocated\n", fmtBytes(get({"image", "apparent_bytes"})).c_str(),
              fmtBytes(get({"image", "allocated_bytes"})).c_str());
  Json verdict = get({"fidelity", "verdict"});
  std::printf("  fidelity:        %s\n", verdict.is_string() ? verdict.get<std::string>().c_str() : "none");
  for (auto& c : get({"fidelity", "checks"}).is_array() ? r["fidelity"]["checks"] : Json::array())
    std::printf("    %-15s %-26s %s\n", c.value("result", std::string()).c_str(), c.value("name", std::string()).c_str(),
                c.value("detail", std::string()).c_str());
  if (!o.recordPath.empty()) std::printf("  record: %s\n", o.recordPath.c_str());
}

struct RunArgs {
  RunSpec spec;
  std::vector<std::string> engineOpts;
  std::string results;
  bool json = false;
  bool noWrite = false;
};

std::function<int()> setupRun(CLI::App& app, GlobalOptions& global) {
  auto a = std::make_shared<RunArgs>();
  app.add_option("scenario", a->spec.scenario, "scenario name (scenarios/<name>.toml) or file")->required();
  app.add_option("--runtime", a->spec.runtime, "container or vm")->required();
  app.add_option("--engine", a->spec.engine, "checkpoint/restore engine (default: pause)");
  app.add_option("--mode", a->spec.mode, "engine mode (default: the engine's first mode)");
  app.add_option("--engine-opt", a->engineOpts, "engine option key=value (repeatable)");
  app.add_option("--param", a->spec.params, "scenario parameter override key=value (repeatable)");
  app.add_option("--results", a->results, "directory for <run-id>.json (default: results/runs)");
  app.add_option("--probe-hz", a->spec.probeRateHz, "probe rate (default 1000)");
  auto* warmup = app.add_option("--warmup-ms", a->spec.warmupMs,
                                "probing before the checkpoint (default 300 ms, or 2 s past the scenario's last program start delay)");
  app.add_flag("--keep-image", a->spec.keepImage, "keep the checkpoint image directory");
  app.add_flag("--no-record", a->noWrite, "do not write the result file");
  app.add_flag("--json", a->json, "print the run record as JSON on stdout");
  return [a, &global, warmup]() -> int {
    RunSpec& spec = a->spec;
    spec.warmupPastStartDelays = warmup->count() == 0;
    spec.verbose = global.verbose;
    spec.writeRecord = !a->noWrite;
    if (!a->results.empty()) spec.resultsDir = a->results;
    for (auto& kv : a->engineOpts) {
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0)
        return reportError(makeError(fmt::format("--engine-opt '{}' is not key=value", kv), "e.g. --engine-opt pause_ms=200", 2));
      spec.engineOptions[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    if (auto st = requireRoot("crbench run"); !st.ok()) return reportError(st.error());
    // Ctrl-C / SIGTERM / SIGHUP: finish the current step, tear the sandbox down, write the record.
    // Installed before validation too: probing an engine may start a daemon (libvirt).
    InterruptGuard guard;
    if (auto st = validateRunSpec(spec); !st.ok()) return reportError(st.error());
    if (interrupted()) return signalExitCode(interruptSignal());
    if (!a->json) spec.progress = [](const std::string& s) { std::fprintf(stderr, "crbench: %s\n", s.c_str()); };
    spec.cancelled = [] { return interrupted(); };
    RunOutcome o = runOnce(spec);
    if (a->json)
      std::printf("%s\n", o.record.dump(1).c_str());
    else
      printSummary(o);
    if (!o.writeError.empty()) {
      std::fprintf(stderr, "crbench: error: could not write the run record: %s\n", o.writeError.c_str());
      return 1;
    }
    if (interrupted()) return signalExitCode(interruptSignal());
    if (o.status == "ok") return 0;
    return o.status == "unsupported" ? 3 : 1;
  };
}

}  // namespace
CRB_REGISTER_COMMAND(run, "run", "run one scenario in a sandbox, checkpoint and restore it, write the result", setupRun);
}  // namespace crb
